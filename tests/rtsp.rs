//! RTSP cameras end to end (cargo feature `rtsp`), against a real RTSP server: GStreamer's
//! gst-rtsp-server run by `tests/rtsp_server.py`, serving one sample image per mount, looped and
//! encoded by ffmpeg at test time (MJPEG, H.264, H.265). The daemon runs in-process against a
//! real broker (see tests/daemon.rs); the command-line refusals run the binary.
//!
//! Needs Debian's ffmpeg, python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good and
//! gstreamer1.0-plugins-bad (scripts/test installs them).
#![cfg(feature = "rtsp")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use inspectd::config::Config;

mod common;
use common::{await_recovered, broker, collect, replay_config, root, Daemon};
#[path = "common/rtsp_server.rs"]
mod rtsp_server;
use rtsp_server::Server;

/// One still per label: the sample whose label the test expects back.
const STILLS: [(&str, &str); 5] = [
    ("ok", "ok/cast_metal_ok.png"),
    ("scratch", "scratch/cast_metal_scratch.png"),
    ("dent", "dent/cast_metal_dent.png"),
    ("stain", "stain/cast_metal_stain.png"),
    ("crack", "crack/cast_metal_crack.png"),
];

fn sample(rel: &str) -> PathBuf {
    root().join("models/samples").join(rel)
}

/// A daemon config whose `[source]` is `source` (the body of the table, with `kind`).
fn config(device: &str, host: &str, port: u16, source: &str, dir: &Path) -> Config {
    let text = replay_config(
        device,
        5,
        &format!("url = \"mqtt://{host}:{port}\"\nkeep_alive_s = 5"),
        &dir.join(format!("{device}.redb")),
        "[verdict]\ndefect_threshold = 0.5\n",
    );
    let mut c = Config::parse(&text, "test", Path::new(".")).unwrap();
    c.source = toml::from_str(source).unwrap();
    c
}

/// Every label over MJPEG and H.264 (TCP), and MJPEG over UDP: each camera's verdicts carry the
/// label of the still it serves, and the pictures the daemon did not take are counted dropped.
#[test]
fn mjpeg_and_h264_cameras_give_verdicts_with_the_labels_of_their_stills() {
    let dir = common::tmp("rtsp", "labels");
    let mut mounts = vec![];
    for (label, rel) in STILLS {
        for codec in ["mjpeg", "h264"] {
            mounts.push(format!(
                "/{codec}/{label}={codec}:{}",
                sample(rel).display()
            ));
        }
    }
    let server = Server::start(&dir.join("clips"), &mounts);
    let mut cameras = vec![];
    for (label, _) in STILLS {
        for codec in ["mjpeg", "h264"] {
            cameras.push((format!("rtsp-{codec}-{label}"), label, codec, "tcp"));
        }
    }
    cameras.push(("rtsp-udp-dent".into(), "dent", "mjpeg", "udp"));
    let rt = inspectd_contract::client::runtime().unwrap();
    // A few boxes per broker: eleven at once once made the embedded broker give up.
    for batch in cameras.chunks(4) {
        let (host, port) = broker();
        rt.block_on(async {
            let daemons: Vec<Daemon> = batch
                .iter()
                .map(|(device, label, codec, transport)| {
                    let url = server.url(&format!("/{codec}/{label}"));
                    let source = format!(
                        "kind = \"rtsp\"\nurl = \"{url}\"\ntransport = \"{transport}\"\nfps = 2"
                    );
                    Daemon::start(config(device, &host, port, &source, &dir))
                })
                .collect();
            let got = common::collect_raw(
                &host,
                port,
                "inspect/#",
                Duration::from_secs(90),
                vec![],
                |g| {
                    let per_device = by_device(g.get("verdict"));
                    let stats = by_device(g.get("stats"));
                    per_device.len() == batch.len()
                        && per_device.values().all(|v| v.len() >= 2)
                        && batch
                            .iter()
                            .filter(|c| c.3 == "tcp")
                            .all(|c| most_dropped(&stats, &c.0).is_some_and(|d| d > 0))
                },
            )
            .await;
            for d in daemons {
                d.stop().await;
            }
            let verdicts = by_device(got.get("verdict"));
            let stats = by_device(got.get("stats"));
            for (device, label, codec, transport) in batch {
                let vs = verdicts
                    .get(device.as_str())
                    .unwrap_or_else(|| panic!("{device}: no verdict; got {:?}", verdicts.keys()));
                for v in vs {
                    assert_eq!(v["label"], *label, "{device}: {v}");
                    let want = if *label == "ok" { "ok" } else { "defect" };
                    assert_eq!(v["verdict"], want, "{device}: {v}");
                    assert_eq!(
                        v["frame"]["origin"],
                        server.url(&format!("/{codec}/{label}")),
                        "{device}"
                    );
                    assert_eq!(
                        (v["frame"]["width"].as_u64(), v["frame"]["height"].as_u64()),
                        (Some(128), Some(128))
                    );
                }
                // The server sends 10 pictures a second, the daemon takes 2: the rest are
                // dropped and counted.
                if *transport == "tcp" {
                    let dropped = most_dropped(&stats, device);
                    assert!(
                        dropped.is_some_and(|d| d > 0),
                        "{device}: dropped {dropped:?}"
                    );
                }
            }
        });
    }
}

/// The highest `dropped_frames` in a device's stats.
fn most_dropped(stats: &BTreeMap<String, Vec<serde_json::Value>>, device: &str) -> Option<u64> {
    stats
        .get(device)?
        .iter()
        .filter_map(|s| s["dropped_frames"].as_u64())
        .max()
}

/// JSON payloads of `(topic, payload)` messages by device (the topic's second level).
fn by_device(msgs: Option<&Vec<(String, Vec<u8>)>>) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut out: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (topic, payload) in msgs.into_iter().flatten() {
        let device = topic.split('/').nth(1).unwrap_or("").to_string();
        if let Ok(v) = serde_json::from_slice(payload) {
            out.entry(device).or_default().push(v);
        }
    }
    out
}

/// A camera that wants a login (the password from `source.password_file`): verdicts flow;
/// killing the server is `camera_lost` within 2 s, naming the camera; starting it again is
/// `camera_recovered` and verdicts again. A wrong password is a lost camera that says so.
#[test]
fn an_rtsp_camera_going_down_raises_an_alert_and_recovers() {
    let dir = common::tmp("rtsp", "lost");
    let pw = dir.join("camera.pw");
    std::fs::write(&pw, "Cam-Pa55\n").unwrap();
    let wrong = dir.join("wrong.pw");
    std::fs::write(&wrong, "guess\n").unwrap();
    let still = sample("dent/cast_metal_dent.png");
    let mut server = Server::start(
        &dir.join("clips"),
        &[
            "--user".into(),
            "viewer".into(),
            "--password-file".into(),
            pw.display().to_string(),
            format!("/cam=h264:{}", still.display()),
        ],
    );
    let (host, port) = broker();
    let url = server.url("/cam").replace("rtsp://", "rtsp://viewer@");
    let source = |pw: &Path| {
        format!(
            "kind = \"rtsp\"\nurl = \"{url}\"\npassword_file = \"{}\"\nfps = 5",
            pw.display()
        )
    };
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        // Watches the intruder from before it starts: its one camera_lost alert comes early.
        let (h, p) = (host.clone(), port);
        let intruder_lost = tokio::spawn(async move {
            collect(
                &h,
                p,
                "inspect/rtsp-wrong-pw/alert",
                Duration::from_secs(60),
                vec![],
                |g| {
                    g.get("alert")
                        .is_some_and(|a| a.iter().any(|x| x["kind"] == "camera_lost"))
                },
            )
            .await
        });
        let daemon = Daemon::start(config("rtsp-lost", &host, port, &source(&pw), &dir));
        let intruder = Daemon::start(config("rtsp-wrong-pw", &host, port, &source(&wrong), &dir));
        let got = collect(
            &host,
            port,
            "inspect/rtsp-lost/verdict",
            Duration::from_secs(60),
            vec![],
            |g| g.get("verdict").map_or(0, Vec::len) >= 3,
        )
        .await;
        let v = &got["verdict"][0];
        assert_eq!(
            (v["label"].as_str(), v["verdict"].as_str()),
            (Some("dent"), Some("defect")),
            "{v}"
        );
        let got = intruder_lost.await.unwrap();
        let alert = got
            .get("alert")
            .and_then(|a| a.iter().find(|x| x["kind"] == "camera_lost"))
            .unwrap_or_else(|| panic!("a wrong password: no camera_lost: {got:?}"));
        let m = alert["message"].as_str().unwrap();
        assert!(m.contains("401") || m.contains("nauthorized"), "{m}");
        assert!(!m.contains("guess"), "{m}");
        intruder.stop().await;

        // The observer is subscribed once the retained status reaches it; then the server dies.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (h, p) = (host.clone(), port);
        let observer = tokio::spawn(async move {
            let mut tx = Some(tx);
            collect(
                &h,
                p,
                "inspect/rtsp-lost/#",
                Duration::from_secs(20),
                vec![],
                |g| {
                    if g.contains_key("status") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    g.get("alert")
                        .is_some_and(|a| a.iter().any(|x| x["kind"] == "camera_lost"))
                },
            )
            .await
        });
        rx.await.expect("the observer saw the retained status");
        let killed = std::time::Instant::now();
        server.kill();
        let got = observer.await.unwrap();
        let lost_after = killed.elapsed();
        let alert = got
            .get("alert")
            .and_then(|a| a.iter().find(|x| x["kind"] == "camera_lost"))
            .unwrap_or_else(|| panic!("no camera_lost after the server died: {got:?}"));
        let m = alert["message"].as_str().unwrap();
        assert!(m.contains(&server.url("/cam")), "{m}");
        assert!(!m.contains("Cam-Pa55"), "{m}");
        assert!(
            lost_after < Duration::from_secs(2),
            "alert after {lost_after:?}: {m}"
        );
        server.restart();
        await_recovered(&host, port, "rtsp-lost").await;
        daemon.stop().await;
    });
}

fn inspectd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_inspectd"))
        .args(args)
        .output()
        .unwrap()
}

/// Exit code 2 and one stderr line holding every needle.
fn assert_bad_input(out: &std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err.trim_end().lines().collect();
    let last = lines.last().copied().unwrap_or("");
    for n in needles {
        assert!(last.contains(n), "{n:?} not in {last:?} (stderr: {err})");
    }
    assert!(
        lines
            .iter()
            .all(|l| l == &last || l.contains(" WARN ") || l.contains(" INFO ")),
        "one error line expected: {err}"
    );
}

/// `check-config` and `run` refuse a bad URL, a password file that is not there and a camera
/// that only offers a codec we do not decode (H.265 here), each naming the key, with exit 2.
#[test]
fn bad_rtsp_settings_exit_2_naming_the_key() {
    let dir = common::tmp("rtsp", "cli");
    let server = Server::start(
        &dir.join("clips"),
        &[format!(
            "/hevc=h265:{}",
            sample("ok/cast_metal_ok.png").display()
        )],
    );
    let write = |name: &str, source: &str| -> PathBuf {
        let text = replay_config(
            "rtsp-cli",
            5,
            "url = \"mqtt://127.0.0.1:1883\"",
            &dir.join("spool.redb"),
            "",
        );
        // The replay table becomes the RTSP one.
        let start = text.find("[source]").unwrap();
        let end = text.find("[model]").unwrap();
        let text = format!("{}[source]\n{source}\n{}", &text[..start], &text[end..]);
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let bad_url = write(
        "bad-url.toml",
        "kind = \"rtsp\"\nurl = \"rtsp://cam:99999/x\"",
    );
    let no_pw = write(
        "no-pw.toml",
        &format!(
            "kind = \"rtsp\"\nurl = \"{}\"\npassword_file = \"/nonexistent/camera.pw\"",
            server.url("/hevc").replace("rtsp://", "rtsp://viewer@")
        ),
    );
    let hevc = write(
        "hevc.toml",
        &format!("kind = \"rtsp\"\nurl = \"{}\"", server.url("/hevc")),
    );
    let pw_in_url = write(
        "pw-in-url.toml",
        "kind = \"rtsp\"\nurl = \"rtsp://admin:hunter2@cam/x\"",
    );
    for cmd in ["check-config", "run"] {
        let args = |p: &Path| -> Vec<String> {
            if cmd == "run" {
                vec!["run".into(), "--config".into(), p.display().to_string()]
            } else {
                vec![cmd.into(), p.display().to_string()]
            }
        };
        let go = |p: &Path| {
            let a = args(p);
            inspectd(&a.iter().map(String::as_str).collect::<Vec<_>>())
        };
        assert_bad_input(&go(&bad_url), &["bad-url.toml", "source.url", "bad port"]);
        assert_bad_input(&go(&pw_in_url), &["source.url", "password_file"]);
        assert_bad_input(
            &go(&no_pw),
            &["source.password_file", "/nonexistent/camera.pw"],
        );
        assert_bad_input(
            &go(&hevc),
            &["source.url", "unsupported codec", "video/h265"],
        );
    }
}
