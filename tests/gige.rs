//! GigE Vision cameras end to end (cargo feature `gige`), against Debian's GigE Vision camera
//! simulator `arv-fake-gv-camera-0.8` (package aravis-tools) on 127.0.0.1. It only listens on an
//! address an interface has and GVCP's port (3956) is fixed, so one simulator runs at a time:
//! the tests take turns (a lock), each starting its own with its own serial number. The simulator sends its own test pattern (it cannot serve our samples), so verdicts
//! carry whatever label the model gives it: what is checked is that real frames flow from the
//! camera through the model into verdicts. The daemon runs in-process against a real broker (see
//! tests/daemon.rs); the command-line refusals run the binary.
#![cfg(feature = "gige")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inspectd::config::Config;

mod common;
use common::{await_recovered, broker, collect, replay_config, Daemon};

const SIMULATOR: &str = "arv-fake-gv-camera-0.8";

/// Where the simulator listens.
const IP: &str = "127.0.0.1";

/// Held by the test that runs the simulator.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A running simulator; killed (SIGKILL, like a camera losing power) on drop.
struct Simulator {
    child: Option<Child>,
    ip: String,
    serial: String,
}

impl Simulator {
    fn start(serial: &str) -> Simulator {
        let mut s = Simulator {
            child: None,
            ip: IP.into(),
            serial: serial.into(),
        };
        s.restart();
        s
    }

    /// (Re)starts it; returns once its GVCP port answers a discovery.
    fn restart(&mut self) {
        let child = Command::new(SIMULATOR)
            .args(["-i", &self.ip, "-s", &self.serial])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {SIMULATOR} (Debian's aravis-tools; scripts/test installs it): {e}"
                )
            });
        self.child = Some(child);
        let t0 = Instant::now();
        while !discovery_answered(&self.ip) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{SIMULATOR} on {} does not answer",
                self.ip
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one GVCP DISCOVERY_CMD (GigE Vision 2.0, §15.1) to `ip`:3956 and waits briefly for
/// the ACK: the simulator is up and serving.
fn discovery_answered(ip: &str) -> bool {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // Key 0x42, flags "ack required", command 0x0002, no payload, request id 1.
    let cmd = [0x42, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01];
    if sock.send_to(&cmd, (ip, 3956)).is_err() {
        return false;
    }
    let mut buf = [0u8; 600];
    // DISCOVERY_ACK is command 0x0003.
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 8 && buf[2..4] == [0x00, 0x03])
}

/// A daemon config whose `[source]` is `source` (the body of the table, with `kind`).
fn config(device: &str, host: &str, port: u16, source: &str, dir: &Path) -> Config {
    let text = replay_config(
        device,
        5,
        &format!("url = \"mqtt://{host}:{port}\"\nkeep_alive_s = 5"),
        &dir.join(format!("{device}.redb")),
        "",
    );
    let mut c = Config::parse(&text, "test", Path::new(".")).unwrap();
    c.source = toml::from_str(source).unwrap();
    c
}

/// The highest value of `key` in a device's stats.
fn most(got: &BTreeMap<String, Vec<serde_json::Value>>, key: &str) -> Option<u64> {
    got.get("stats")?
        .iter()
        .filter_map(|s| s[key].as_u64())
        .max()
}

/// A free-running camera in each pixel format we convert that the simulator offers: its frames
/// (512×512) go through the model into verdicts, and the frames it sends faster than the daemon
/// takes them are dropped and counted.
#[test]
fn a_free_running_camera_feeds_verdicts_in_every_pixel_format() {
    let dir = common::tmp("gige", "formats");
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // By address: a camera found by discovery (serial, device id) may answer the broadcast on
    // another interface than loopback, and aravis then listens for its stream there (README,
    // GigE limits); the discovery forms are checked by `bad_gige_settings_exit_2_naming_the_key`.
    let cases = [
        ("Mono8", "GVMONO"),
        ("RGB8", "GVRGB"),
        ("BayerRG8", "GVBAYER"),
    ];
    let (host, port) = broker();
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        for (format, serial) in cases {
            let _sim = Simulator::start(serial);
            let id = IP;
            let device = format!("gige-{}", format.to_lowercase());
            let source = format!(
                "kind = \"gige\"\ncamera_id = \"{id}\"\npixel_format = \"{format}\"\nexposure_us = 2000\nfps = 2"
            );
            let daemon = Daemon::start(config(&device, &host, port, &source, &dir));
            let got = collect(
                &host,
                port,
                &format!("inspect/{device}/#"),
                Duration::from_secs(60),
                vec![],
                |g| {
                    g.get("verdict").map_or(0, Vec::len) >= 3
                        && most(g, "dropped_frames").is_some_and(|n| n > 0)
                },
            )
            .await;
            daemon.stop().await;
            let verdicts = got
                .get("verdict")
                .unwrap_or_else(|| panic!("{device}: no verdict: {got:?}"));
            assert!(verdicts.len() >= 3, "{device}: {verdicts:?}");
            for v in verdicts {
                assert_eq!(v["frame"]["origin"], format!("gige {id}"), "{device}: {v}");
                assert_eq!(
                    (v["frame"]["width"].as_u64(), v["frame"]["height"].as_u64()),
                    (Some(512), Some(512)),
                    "{device}"
                );
                assert!(v["label"].is_string() && v["cam"]["png"].is_string(), "{v}");
            }
            // What converting a taken frame to RGB cost (README, GigE; `-- --nocapture`).
            let mut ms: Vec<f64> = verdicts
                .iter()
                .filter_map(|v| v["latency_ms"]["decode"].as_f64())
                .collect();
            ms.sort_by(f64::total_cmp);
            eprintln!(
                "{format} 512x512 to RGB: median {:.3} ms over {} frames",
                ms[ms.len() / 2],
                ms.len()
            );
            // The simulator streams faster than the 2 frames a second the daemon takes.
            let dropped = most(&got, "dropped_frames");
            assert!(dropped.is_some_and(|d| d > 0), "{device}: dropped {dropped:?}");
        }
    });
}

/// In software trigger mode the camera exposes only when the box is triggered: three MQTT
/// `cmd/trigger`s are three exposures and three verdicts carrying their part ids, and nothing
/// else in the two seconds after (not even a frame).
#[test]
fn software_trigger_over_mqtt_exposes_once_per_trigger() {
    let dir = common::tmp("gige", "trigger");
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let _sim = Simulator::start("GVTRIG");
    let (host, port) = broker();
    let source = "kind = \"gige\"\ncamera_id = \"127.0.0.1\"\ntrigger_mode = \"software\"\ntrigger = \"triggered\"\npixel_format = \"Mono8\"";
    let parts = ["G-0001", "G-0002", "G-0003"];
    let send = parts
        .iter()
        .map(|p| {
            (
                "inspect/gige-trig/cmd/trigger".to_string(),
                format!(r#"{{"part_id":"{p}","id":"{p}"}}"#).into_bytes(),
            )
        })
        .collect();
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(config("gige-trig", &host, port, source, &dir));
        let mut settled: Option<Instant> = None;
        let got = collect(
            &host,
            port,
            "inspect/gige-trig/#",
            Duration::from_secs(60),
            send,
            |g| {
                if g.get("verdict").map_or(0, Vec::len) >= 3 {
                    // Stats every second: two more seconds show what the camera sent.
                    settled.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(2)
                } else {
                    false
                }
            },
        )
        .await;
        daemon.stop().await;
        let ids: Vec<&str> = got
            .get("verdict")
            .map(|v| {
                v.iter()
                    .map(|v| v["part_id"].as_str().unwrap_or("?"))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(ids, parts, "one verdict per trigger, in order: {got:?}");
        let results = &got["cmd_result"];
        assert!(
            results.len() == 3 && results.iter().all(|r| r["ok"] == true),
            "{results:?}"
        );
        // The camera was fired three times and sent three frames: none while nobody asked.
        assert_eq!(most(&got, "frames"), Some(3), "{:?}", got.get("stats"));
        assert_eq!(
            most(&got, "dropped_frames"),
            Some(0),
            "{:?}",
            got.get("stats")
        );
    });
}

/// In hardware trigger mode a camera whose line never fires (the simulator's `Line0` has
/// nothing wired to it) sends nothing and is still fine: it answers its control reads, so the
/// box stays `camera: ok` with no `camera_lost`, and no verdict is made up.
#[test]
fn a_hardware_triggered_camera_that_is_silent_is_not_lost() {
    let dir = common::tmp("gige", "line");
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let _sim = Simulator::start("GVLINE");
    let (host, port) = broker();
    let source =
        "kind = \"gige\"\ncamera_id = \"127.0.0.1\"\ntrigger_mode = \"line0\"\ntimeout_ms = 500";
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(config("gige-line", &host, port, source, &dir));
        // Six stats, a second apart: twelve times the silence that makes a free-running one lost.
        let got = collect(
            &host,
            port,
            "inspect/gige-line/#",
            Duration::from_secs(30),
            vec![],
            |g| g.get("stats").map_or(0, Vec::len) >= 6,
        )
        .await;
        daemon.stop().await;
        assert!(!got.contains_key("verdict"), "{:?}", got.get("verdict"));
        assert!(!got.contains_key("alert"), "{:?}", got.get("alert"));
        assert_eq!(most(&got, "frames"), Some(0));
        let last = got["status"].last().unwrap();
        assert_eq!(last["camera"], "ok", "{last}");
    });
}

/// Killing the simulator is `camera_lost` within 2 s, naming the camera; starting it again is
/// `camera_recovered` and verdicts again. In free run the silence gives it away; in software
/// trigger mode, where silence is normal, the control read does.
#[test]
fn a_camera_going_down_raises_camera_lost_and_recovers() {
    let dir = common::tmp("gige", "lost");
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let ip = IP;
    for (device, mode) in [
        ("gige-lost", "trigger_mode = \"free_run\"\nfps = 5"),
        (
            "gige-lost-sw",
            "trigger_mode = \"software\"\ntrigger = \"triggered\"",
        ),
    ] {
        let mut sim = Simulator::start(device);
        let (host, port) = broker();
        let source = format!("kind = \"gige\"\ncamera_id = \"{ip}\"\n{mode}");
        let rt = inspectd_contract::client::runtime().unwrap();
        rt.block_on(async {
            let daemon = Daemon::start(config(device, &host, port, &source, &dir));
            let triggered = mode.contains("software");
            let trigger = || {
                vec![(
                    format!("inspect/{device}/cmd/trigger"),
                    br#"{"part_id":"L-1"}"#.to_vec(),
                )]
            };
            let got = collect(
                &host,
                port,
                &format!("inspect/{device}/#"),
                Duration::from_secs(30),
                if triggered { trigger() } else { vec![] },
                |g| g.contains_key("verdict"),
            )
            .await;
            assert!(got.contains_key("verdict"), "{device}: no verdict: {got:?}");

            // The observer is subscribed once the retained status reaches it; then the camera dies.
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let (h, d) = (host.clone(), device.to_string());
            let observer = tokio::spawn(async move {
                let mut tx = Some(tx);
                collect(
                    &h,
                    port,
                    &format!("inspect/{d}/#"),
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
            let killed = Instant::now();
            sim.kill();
            let got = observer.await.unwrap();
            let lost_after = killed.elapsed();
            let alert = got
                .get("alert")
                .and_then(|a| a.iter().find(|x| x["kind"] == "camera_lost"))
                .unwrap_or_else(|| panic!("{device}: no camera_lost: {got:?}"));
            let m = alert["message"].as_str().unwrap();
            assert!(m.contains(ip), "{m}");
            assert!(
                lost_after < Duration::from_secs(2),
                "{device}: alert after {lost_after:?}: {m}"
            );
            if triggered {
                // Triggers are refused while the camera is lost: trigger once it is back.
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let (h, d) = (host.clone(), device.to_string());
                let observer = tokio::spawn(async move {
                    let mut tx = Some(tx);
                    collect(
                        &h,
                        port,
                        &format!("inspect/{d}/#"),
                        Duration::from_secs(15),
                        vec![],
                        |g| {
                            if g.contains_key("status") {
                                if let Some(tx) = tx.take() {
                                    let _ = tx.send(());
                                }
                            }
                            g.get("alert")
                                .is_some_and(|a| a.iter().any(|x| x["kind"] == "camera_recovered"))
                        },
                    )
                    .await
                });
                rx.await.expect("the observer saw the retained status");
                sim.restart();
                let got = observer.await.unwrap();
                assert!(
                    got.contains_key("alert"),
                    "{device}: not recovered: {got:?}"
                );
                let got = collect(
                    &host,
                    port,
                    &format!("inspect/{device}/#"),
                    Duration::from_secs(15),
                    trigger(),
                    |g| g.contains_key("verdict"),
                )
                .await;
                assert!(
                    got.contains_key("verdict"),
                    "{device}: no verdict after: {got:?}"
                );
            } else {
                sim.restart();
                await_recovered(&host, port, device).await;
            }
            daemon.stop().await;
        });
    }
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

/// `check-config` and `run` refuse bad `[source]` values, and settings the camera cannot take
/// (the simulator has no dB `Gain`, no `Line1`, exposures from 10 µs), each naming the key,
/// with exit 2.
#[test]
fn bad_gige_settings_exit_2_naming_the_key() {
    let dir = common::tmp("gige", "cli");
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let _sim = Simulator::start("GVCLI");
    let write = |name: &str, keys: &str| -> PathBuf {
        let text = replay_config(
            "gige-cli",
            5,
            "url = \"mqtt://127.0.0.1:1883\"",
            &dir.join("spool.redb"),
            "",
        );
        let start = text.find("[source]").unwrap();
        let end = text.find("[model]").unwrap();
        let text = format!(
            "{}[source]\nkind = \"gige\"\ncamera_id = \"GVCLI\"\n{keys}\n{}",
            &text[..start],
            &text[end..]
        );
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases: [(&str, &str, &[&str]); 8] = [
        (
            "format.toml",
            "pixel_format = \"YUV422\"",
            &["source.pixel_format", "YUV422"],
        ),
        (
            "mode.toml",
            "trigger_mode = \"hardware\"",
            &["source.trigger_mode", "line0"],
        ),
        (
            "sw.toml",
            "trigger_mode = \"software\"",
            &["source.trigger_mode", "triggered"],
        ),
        ("exp.toml", "exposure_us = -1", &["source.exposure_us"]),
        ("timeout.toml", "timeout_ms = 0", &["source.timeout_ms"]),
        // What the camera cannot do, found when it is opened.
        ("gain.toml", "gain_db = 6", &["source.gain_db", "GainRaw"]),
        (
            "line.toml",
            "trigger_mode = \"line1\"",
            &["source.trigger_mode", "Line1", "Line0"],
        ),
        (
            "short.toml",
            "exposure_us = 5",
            &["source.exposure_us", "10"],
        ),
    ];
    for (name, keys, needles) in cases {
        let p = write(name, keys);
        for cmd in ["check-config", "run"] {
            let path = p.display().to_string();
            let out = if cmd == "run" {
                inspectd(&["run", "--config", &path])
            } else {
                inspectd(&[cmd, &path])
            };
            assert_bad_input(&out, needles);
        }
    }
    // The simulator takes valid settings, and is found (discovered) by its serial number, its
    // aravis device id, and as the first camera when none is named.
    for (name, keys) in [
        (
            "serial.toml",
            "pixel_format = \"BayerGB8\"\nexposure_us = 500",
        ),
        (
            "id.toml",
            "camera_id = \"Aravis-Fake-GVCLI\"\ntrigger_mode = \"line0\"",
        ),
        (
            "first.toml",
            "camera_id = \"\"\ntrigger_mode = \"software\"\ntrigger = \"triggered\"",
        ),
    ] {
        // A second camera_id line would be a TOML error: the first line is replaced.
        let p = write(name, "");
        let text = std::fs::read_to_string(&p).unwrap().replace(
            "camera_id = \"GVCLI\"\n",
            &if keys.starts_with("camera_id = \"\"") {
                keys.replacen("camera_id = \"\"\n", "", 1)
            } else if keys.starts_with("camera_id") {
                keys.to_string()
            } else {
                format!("camera_id = \"GVCLI\"\n{keys}")
            },
        );
        std::fs::write(&p, text).unwrap();
        let out = inspectd(&["check-config", &p.display().to_string()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        // Found and set up: a camera that is not found is only a warning ("retrying").
        assert!(!err.contains("retrying"), "{name}: {err}");
    }
}
