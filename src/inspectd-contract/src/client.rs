//! What a long-running client of the broker needs (feature `client`): the broker settings
//! (URL, credentials, TLS) checked and resolved once, a capped reconnect backoff, and the process
//! glue both inspectd programs share (async runtime, stop signals, log set-up).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How to reach the broker: the `[mqtt]` keys both programs share. Paths are read by
/// [`settings`], which names the key of every file it cannot use.
#[derive(Clone, Debug, Default)]
pub struct BrokerConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Client id; [`settings`] takes its default when unset.
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// File holding the password (never the password itself).
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) for `mqtts://`; the system's roots when unset.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// MQTT keep-alive in seconds.
    pub keep_alive_s: u64,
    /// Allow plaintext MQTT to a host that is not loopback.
    pub allow_insecure: bool,
}

/// A broker setting that cannot be used; the message names the key (`mqtt.url`, …).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadSetting(pub String);

fn bad(msg: impl Into<String>) -> BadSetting {
    BadSetting(msg.into())
}

/// Connection settings resolved from the config. Its `Debug` never shows the password.
#[derive(Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
    /// TLS client configuration for `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .field("password", &self.credentials.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Parses `mqtt://host:port`, reads the password file, and refuses plaintext to a host that is
/// not loopback unless `allow_insecure`.
pub fn settings(cfg: &BrokerConfig, default_client_id: &str) -> Result<Settings, BadSetting> {
    let (tls, rest) = if let Some(r) = cfg.url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = cfg.url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad(format!(
            "mqtt.url {:?}: must start with mqtt:// or mqtts://",
            cfg.url
        )));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| bad(format!("mqtt.url {:?}: bad port", cfg.url)))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad(format!("mqtt.url {:?}: no host", cfg.url)));
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|a| a.is_loopback())
            .unwrap_or(false);
    if !tls && !loopback && !cfg.allow_insecure {
        return Err(bad(format!(
            "mqtt.url {:?}: plaintext MQTT to a non-loopback host is refused; use mqtts:// or set mqtt.allow_insecure = true",
            cfg.url
        )));
    }
    let credentials = match (&cfg.username, &cfg.password_file) {
        (Some(u), Some(f)) => {
            let p = std::fs::read_to_string(f).map_err(|e| {
                bad(format!(
                    "mqtt.password_file {}: cannot read: {e}",
                    f.display()
                ))
            })?;
            Some((u.clone(), p.trim_end_matches(['\r', '\n']).to_string()))
        }
        (Some(u), None) => Some((u.clone(), String::new())),
        (None, Some(_)) => return Err(bad("mqtt.password_file needs mqtt.username")),
        (None, None) => None,
    };
    let tls = if tls {
        Some(tls_config(cfg)?)
    } else {
        if cfg.ca_file.is_some() || cfg.cert_file.is_some() || cfg.key_file.is_some() {
            return Err(bad(format!(
                "mqtt.url {:?}: ca_file/cert_file/key_file are set but the URL is plaintext; use mqtts://",
                cfg.url
            )));
        }
        None
    };
    Ok(Settings {
        tls,
        host: host.to_string(),
        port,
        client_id: cfg
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id.to_string()),
        credentials,
        keep_alive: Duration::from_secs(cfg.keep_alive_s),
    })
}

/// The rustls client configuration: the CA file (or the system's roots), and the client
/// certificate and key for mutual TLS. Every unreadable or malformed file is named.
fn tls_config(cfg: &BrokerConfig) -> Result<Arc<rustls::ClientConfig>, BadSetting> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs =
        |key: &str, path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, BadSetting> {
            let bytes = std::fs::read(path)
                .map_err(|e| bad(format!("mqtt.{key} {}: cannot read: {e}", path.display())))?;
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("mqtt.{key} {}: bad PEM: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(bad(format!(
                    "mqtt.{key} {}: no certificate in the file",
                    path.display()
                )));
            }
            Ok(certs)
        };
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            for c in certs("ca_file", path)? {
                roots.add(c).map_err(|e| {
                    bad(format!("mqtt.ca_file {}: unusable CA: {e}", path.display()))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(bad(
                    "mqtt.ca_file: not set and no system CA certificates found; set mqtt.ca_file",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots);
    let config = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs("cert_file", cert)?;
            let bytes = std::fs::read(key)
                .map_err(|e| bad(format!("mqtt.key_file {}: cannot read: {e}", key.display())))?;
            let pk = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                bad(format!(
                    "mqtt.key_file {}: no usable private key: {e}",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, pk).map_err(|e| {
                bad(format!(
                    "mqtt.cert_file {} / key_file {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(bad("mqtt.cert_file needs mqtt.key_file")),
        (None, Some(_)) => return Err(bad("mqtt.key_file needs mqtt.cert_file")),
    };
    Ok(Arc::new(config))
}

/// Capped exponential backoff: 100 ms doubling to `max`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
            max,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

/// A tokio runtime for a daemon: two workers (I/O only; CPU work has its own threads).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signals() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The log filter: `RUST_LOG` (as the systemd unit and every Rust tool reads it), or
/// `INSPECTD_LOG`, which wins when both are set (it names inspectd only, so it can override a
/// `RUST_LOG` set for a whole environment). Colours only when stderr is a terminal: journald
/// and pipes get plain text.
pub fn init_logging(default_level: &str) {
    use std::io::IsTerminal;
    // The embedded broker logs every probe and disconnect as an error: keep it quiet by default.
    let filter = ["INSPECTD_LOG", "RUST_LOG"]
        .iter()
        .filter(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
        .find_map(|v| tracing_subscriber::EnvFilter::try_from_env(v).ok())
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new(format!(
                "{default_level},rumqttd=off,tract_linalg=warn"
            ))
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mqtt(url: &str, extra: &str) -> BrokerConfig {
        let mut c = BrokerConfig {
            url: url.into(),
            keep_alive_s: 10,
            ..Default::default()
        };
        for line in extra.lines() {
            let (k, v) = line.split_once(" = ").unwrap();
            let v = v.trim_matches('"').to_string();
            match k {
                "username" => c.username = Some(v),
                "password_file" => c.password_file = Some(v.into()),
                "ca_file" => c.ca_file = Some(v.into()),
                "allow_insecure" => c.allow_insecure = v == "true",
                _ => panic!("{k}"),
            }
        }
        c
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let d: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn password_comes_from_its_file_and_never_shows_in_debug() {
        let dir = std::env::temp_dir().join(format!("inspectd-mqtt-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cret-Pa55\n").unwrap();
        let cfg = mqtt(
            "mqtt://127.0.0.1:1884",
            &format!("username = \"box\"\npassword_file = \"{}\"\n", pw.display()),
        );
        let s = settings(&cfg, "inspectd-dev").unwrap();
        assert_eq!(s.credentials, Some(("box".into(), "s3cret-Pa55".into())));
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 1884));
        assert!(!format!("{s:?}").contains("s3cret"));
        let missing = mqtt(
            "mqtt://127.0.0.1",
            "username = \"box\"\npassword_file = \"/nonexistent/pw\"\n",
        );
        let e = format!("{:#}", settings(&missing, "inspectd-dev").unwrap_err());
        assert!(e.contains("mqtt.password_file /nonexistent/pw"), "{e}");
    }

    #[test]
    fn plaintext_only_on_loopback_unless_allowed() {
        for url in ["mqtt://10.0.0.5:1883", "mqtt://broker.plant.local"] {
            let e = format!("{:#}", settings(&mqtt(url, ""), "d").unwrap_err());
            assert!(
                e.contains("plaintext MQTT to a non-loopback host is refused"),
                "{e}"
            );
            assert!(settings(&mqtt(url, "allow_insecure = true\n"), "d").is_ok());
        }
        for url in [
            "mqtt://localhost",
            "mqtt://127.0.0.1:1883",
            "mqtt://[::1]:1883",
        ] {
            assert!(settings(&mqtt(url, ""), "d").is_ok(), "{url}");
        }
        // TLS to a remote host is fine, on 8883 by default.
        let ca = std::env::temp_dir().join(format!("inspectd-mqtt-ca-{}", std::process::id()));
        std::fs::write(&ca, "junk").unwrap();
        let e = format!(
            "{:#}",
            settings(
                &mqtt(
                    "mqtts://10.0.0.5",
                    &format!("ca_file = \"{}\"\n", ca.display())
                ),
                "d"
            )
            .unwrap_err()
        );
        assert!(e.contains("no certificate in the file"), "{e}");
    }
}
