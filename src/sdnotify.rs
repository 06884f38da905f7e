//! The systemd notify protocol (`Type=notify`, `WatchdogSec=`), written against sd_notify(3):
//! datagrams of `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET` (a path, or `@name`
//! in the abstract namespace). Without `NOTIFY_SOCKET` every call is a no-op.
//!
//! The watchdog is pinged from the inference loop ([`Watchdog::ping`]), so a pipeline that
//! stalls stops the pings and systemd restarts the service.

use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sends `state` (e.g. `"READY=1\nSTATUS=running"`) to systemd, if it is listening.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        abstract_send(&sock, name, state)
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
            .map(|_| ())
    };
    if let Err(e) = sent {
        tracing::debug!("sd_notify {state:?}: {e}");
    }
}

#[cfg(target_os = "linux")]
fn abstract_send(sock: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn abstract_send(_: &UnixDatagram, _: &[u8], _: &str) -> std::io::Result<()> {
    Err(std::io::Error::other("abstract sockets need Linux"))
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process per
/// `WATCHDOG_PID`), if any.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Rate-limited `WATCHDOG=1`: at most one ping per quarter interval, however often it is called.
pub struct Watchdog {
    every: Option<Duration>,
    last: Mutex<Option<Instant>>,
}

impl Watchdog {
    pub fn from_env() -> Watchdog {
        Watchdog {
            every: watchdog_interval().map(|d| d / 4),
            last: Mutex::new(None),
        }
    }

    pub fn ping(&self) {
        let Some(every) = self.every else { return };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= every) {
            *last = Some(Instant::now());
            notify("WATCHDOG=1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_socket() {
        let path = std::env::temp_dir().join(format!("inspectd-sdn-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // SAFETY-free: this unit test is the only one in the crate touching NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1\nSTATUS=ok");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");
        let _ = std::fs::remove_file(&path);
    }
}
