//! The systemd notify protocol, driven through a `NOTIFY_SOCKET` this test listens on:
//! `READY=1` once the pipeline runs, `WATCHDOG=1` pings from the inference loop, none while the
//! inference thread is stalled, pings again when it recovers, `STOPPING=1` at shutdown.
//! (Its own test binary: it sets process environment variables.)

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inspectd::config::Config;

mod common;
use common::{broker, root, tmp, Daemon};

/// Datagrams received so far, with their arrival times.
fn drain(sock: &UnixDatagram, into: &mut Vec<(Instant, String)>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        into.push((
            Instant::now(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        ));
    }
}

fn pings_between(msgs: &[(Instant, String)], from: Instant, to: Instant) -> usize {
    msgs.iter()
        .filter(|(t, m)| *t >= from && *t <= to && m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[test]
fn ready_then_watchdog_pings_that_stop_while_the_pipeline_is_stalled() {
    let dir = tmp("notify", "sd");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_nonblocking(true).unwrap();
    // 400 ms watchdog: the daemon pings at most every 100 ms.
    std::env::set_var("NOTIFY_SOCKET", &sock_path);
    std::env::set_var("WATCHDOG_USEC", "400000");
    std::env::remove_var("WATCHDOG_PID");

    let (host, port) = broker();
    let text = format!(
        r#"device_id = "notify"
[source]
kind = "replay"
path = "{samples}"
fps = 20
[model]
path = "{model}"
[mqtt]
url = "mqtt://{host}:{port}"
[spool]
path = "{spool}"
[http]
listen = ""
"#,
        samples = root().join("models/samples").display(),
        model = root().join("models/surface-defect-int8.onnx").display(),
        spool = dir.join("spool.redb").display(),
    );
    let cfg = Config::parse(&text, "test", Path::new(".")).unwrap();

    // The verdict hook runs on the inference thread: while `stall` is set it blocks there, as a
    // hung forward pass would.
    let stall = Arc::new(AtomicBool::new(false));
    let stalled_at = Arc::new(AtomicU64::new(0));
    let verdicts = Arc::new(AtomicU64::new(0));
    let (s2, v2, at2) = (stall.clone(), verdicts.clone(), stalled_at.clone());
    let t_origin = Instant::now();
    let hooks = inspectd::daemon::Hooks {
        on_verdict: Some(Box::new(
            move |_v: &inspectd_contract::v1::Verdict, _spool_ms: f64| {
                v2.fetch_add(1, Ordering::SeqCst);
                if s2.load(Ordering::SeqCst) {
                    at2.store(t_origin.elapsed().as_micros() as u64, Ordering::SeqCst);
                    while s2.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            },
        )),
        ..Default::default()
    };

    let rt = inspectd_contract::client::runtime().unwrap();
    let mut msgs: Vec<(Instant, String)> = vec![];
    rt.block_on(async {
        let daemon = Daemon::start_with(cfg, hooks);
        // Running: READY, then regular pings.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) && verdicts.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drain(&sock, &mut msgs);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        drain(&sock, &mut msgs);
        let first_ready = msgs
            .iter()
            .position(|(_, m)| m.lines().any(|l| l == "READY=1"))
            .expect("READY=1");
        assert!(
            msgs[first_ready].1.contains("STATUS="),
            "{:?}",
            msgs[first_ready]
        );
        let healthy_to = Instant::now();
        let healthy = pings_between(&msgs, healthy_to - Duration::from_millis(1000), healthy_to);
        assert!(healthy >= 5, "{healthy} pings in 1 s of a running pipeline");

        // Stalled: not a single ping for 2 s (five watchdog periods).
        stall.store(true, Ordering::SeqCst);
        while stalled_at.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Datagrams are queued when sent: whatever is in the socket now predates the stall.
        drain(&sock, &mut msgs);
        let from = Instant::now();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        drain(&sock, &mut msgs);
        let to = Instant::now();
        assert_eq!(pings_between(&msgs, from, to), 0, "pings while stalled");

        // Unstalled: pings come back; then a clean stop says STOPPING=1.
        stall.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(800)).await;
        drain(&sock, &mut msgs);
        let back = pings_between(&msgs, to, Instant::now());
        assert!(back >= 3, "{back} pings after recovery");
        daemon.stop().await;
        drain(&sock, &mut msgs);
        assert!(
            msgs.iter()
                .any(|(_, m)| m.lines().any(|l| l == "STOPPING=1")),
            "STOPPING=1"
        );
    });
}

/// `systemd-analyze verify` on the shipped unit (with ExecStart pointing at this build, since the
/// unit names the installed /usr/bin/inspectd) is clean, and the unit keeps the settings the
/// daemon relies on.
#[test]
fn the_systemd_unit_verifies_clean() {
    let unit = std::fs::read_to_string(root().join("systemd/inspectd.service")).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/usr/bin/inspectd check-config",
        "StateDirectory=inspectd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "DeviceAllow=char-video4linux rw",
        "SupplementaryGroups=video",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    assert!(
        !unit.contains("PrivateDevices=yes"),
        "PrivateDevices hides the camera"
    );
    let dir = tmp("notify", "unit");
    let copy = dir.join("inspectd.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/inspectd", env!("CARGO_BIN_EXE_inspectd")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package `systemd`) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
