//! RTSP IP cameras (`kind = "rtsp"`). What every build knows — the URL, the credentials, the
//! transport, checked once with errors that name their key — lives here; the client itself
//! (retina for RTSP/RTP, our JPEG decoder for MJPEG, openh264 for H.264) is behind the cargo
//! feature `rtsp` in [`client`].

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::source::SourceLimits;

#[cfg(feature = "rtsp")]
pub mod client;
#[cfg(feature = "rtsp")]
mod h264;

/// How RTP reaches us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Interleaved on the RTSP TCP connection: through firewalls and NAT, no loss.
    #[default]
    Tcp,
    /// RTP/UDP on ports the camera is told: less latency on a clean LAN; no reordering, so a
    /// reordered or lost packet costs its picture.
    Udp,
}

/// An `rtsp://` URL split for the client: the URL without any user (retina takes credentials
/// separately, and the password is never part of it), and the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtspUrl {
    /// `rtsp://host[:port]/path`: what is logged and put in alerts.
    pub url: String,
    pub user: Option<String>,
}

/// Parses `rtsp://[user@]host[:port][/path]`. A password in the URL is refused: it belongs in
/// `source.password_file`, so it never shows in logs, alerts or `ps`.
pub fn parse_url(url: &str) -> Result<RtspUrl, String> {
    let rest = url
        .strip_prefix("rtsp://")
        .ok_or_else(|| format!("{url:?} must be an rtsp:// URL"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if let Some(u) = user {
        if u.contains(':') {
            return Err(format!(
                "{url:?} carries a password: put it in source.password_file and leave only the user in the URL"
            ));
        }
        if u.is_empty() {
            return Err(format!("{url:?} has an empty user before '@'"));
        }
    }
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
        if !(after.is_empty() || after.starts_with(':')) {
            return Err(format!("{url:?}: bad host"));
        }
        h
    } else {
        hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if let Some((_, port)) = hostport.rsplit_once(':').filter(|(_, p)| !p.contains(']')) {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{url:?}: bad port {port:?}"));
        }
    }
    if host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("{url:?}: bad host {host:?}"));
    }
    Ok(RtspUrl {
        url: format!("rtsp://{hostport}{path}"),
        user: user.map(str::to_string),
    })
}

/// Everything the client needs, resolved from `[source]` (the password read from its file).
#[derive(Clone)]
pub struct RtspSettings {
    pub url: RtspUrl,
    pub password: Option<String>,
    pub transport: Transport,
    /// Connecting (through PLAY) and the gap between two pictures are each bounded by this; past
    /// it the camera is lost.
    pub timeout: Duration,
    pub limits: SourceLimits,
}

impl std::fmt::Debug for RtspSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtspSettings")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("transport", &self.transport)
            .field("timeout", &self.timeout)
            .field("limits", &self.limits)
            .finish()
    }
}

impl RtspSettings {
    /// Resolves the `[source]` keys; every error names its key (`source.url`,
    /// `source.password_file`).
    pub fn new(
        url: &str,
        password_file: Option<&Path>,
        transport: Transport,
        timeout: Duration,
        limits: SourceLimits,
    ) -> Result<RtspSettings, String> {
        let parsed = parse_url(url).map_err(|e| format!("source.url: {e}"))?;
        let password = match password_file {
            None => None,
            Some(f) => {
                if parsed.user.is_none() {
                    return Err(format!(
                        "source.password_file {}: needs a user in source.url (rtsp://user@host/...)",
                        f.display()
                    ));
                }
                let text = std::fs::read_to_string(f).map_err(|e| {
                    format!("source.password_file {}: cannot read: {e}", f.display())
                })?;
                Some(text.trim_end_matches(['\r', '\n']).to_string())
            }
        };
        Ok(RtspSettings {
            url: parsed,
            password,
            transport,
            timeout,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_the_user_and_a_url_without_it() {
        let u = parse_url("rtsp://viewer@10.0.0.7:554/Streaming/Channels/101").unwrap();
        assert_eq!(u.url, "rtsp://10.0.0.7:554/Streaming/Channels/101");
        assert_eq!(u.user.as_deref(), Some("viewer"));
        let u = parse_url("rtsp://cam.local/stream?profile=1").unwrap();
        assert_eq!(
            (u.url.as_str(), u.user),
            ("rtsp://cam.local/stream?profile=1", None)
        );
        assert_eq!(
            parse_url("rtsp://[::1]:8554/x").unwrap().url,
            "rtsp://[::1]:8554/x"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, why) in [
            ("http://cam/stream", "rtsp://"),
            ("rtsp:///stream", "no host"),
            ("rtsp://cam:99999/x", "bad port"),
            ("rtsp://cam:0/x", "bad port"),
            ("rtsp://admin:hunter2@cam/x", "password_file"),
            ("rtsp://@cam/x", "empty user"),
            ("rtsp://[::1/x", "unclosed"),
        ] {
            let e = parse_url(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        // The refusal of a password in the URL does not show it more than the URL itself does.
        let e = parse_url("rtsp://admin:hunter2@cam/x").unwrap_err();
        assert_eq!(e.matches("hunter2").count(), 1, "{e}");
    }

    #[test]
    fn the_password_comes_from_its_file_and_never_shows_in_debug() {
        let dir = std::env::temp_dir().join(format!("inspectd-rtsp-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "Pa55-word\n").unwrap();
        let s = RtspSettings::new(
            "rtsp://viewer@127.0.0.1:8554/cam",
            Some(&pw),
            Transport::Tcp,
            Duration::from_secs(2),
            SourceLimits::default(),
        )
        .unwrap();
        assert_eq!(s.password.as_deref(), Some("Pa55-word"));
        assert!(!format!("{s:?}").contains("Pa55"));
        let missing = RtspSettings::new(
            "rtsp://viewer@127.0.0.1/cam",
            Some(Path::new("/nonexistent/rtsp-pw")),
            Transport::Tcp,
            Duration::from_secs(2),
            SourceLimits::default(),
        )
        .unwrap_err();
        assert!(
            missing.starts_with("source.password_file /nonexistent/rtsp-pw: cannot read"),
            "{missing}"
        );
        let no_user = RtspSettings::new(
            "rtsp://127.0.0.1/cam",
            Some(&pw),
            Transport::Tcp,
            Duration::from_secs(2),
            SourceLimits::default(),
        )
        .unwrap_err();
        assert!(no_user.contains("needs a user in source.url"), "{no_user}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
