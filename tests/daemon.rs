//! End to end against a real broker over TCP: the embedded rumqttd by default, or the broker at
//! `INSPECTD_TEST_BROKER` (host:port, e.g. Mosquitto in CI). The daemon runs in-process.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use inspectd::config::Config;

mod common;
use common::{await_lost, await_recovered, broker, collect, replay_config, root, Daemon};

fn config(device: &str, host: &str, port: u16, extra_verdict: &str, spool: &Path) -> Config {
    let text = replay_config(
        device,
        20,
        &format!("url = \"mqtt://{host}:{port}\"\nkeep_alive_s = 5"),
        spool,
        &format!("[verdict]\ndefect_threshold = 0.5\n{extra_verdict}"),
    );
    Config::parse(&text, "test", Path::new(".")).unwrap()
}

/// The label a sample file stands for (`…_<label>.png`).
fn label_of(file: &str) -> &str {
    file.trim_end_matches(".png").rsplit('_').next().unwrap()
}

#[test]
fn verdicts_for_the_samples_arrive_with_labels_maps_and_contiguous_seq() {
    let (host, port) = broker();
    let dir = common::tmp("e2e", "samples");
    let cfg = config("e2e-samples", &host, port, "", &dir.join("spool.redb"));
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let bad = vec![
            (
                "inspect/e2e-samples/cmd/trigger".to_string(),
                b"{not json".to_vec(),
            ),
            (
                "inspect/e2e-samples/cmd/explode".to_string(),
                b"{}".to_vec(),
            ),
            (
                "inspect/e2e-samples/cmd/set".to_string(),
                br#"{"defect_threshold":"high"}"#.to_vec(),
            ),
            (
                "inspect/e2e-samples/cmd/set".to_string(),
                vec![b' '; 10_000],
            ),
        ];
        let got = collect(
            &host,
            port,
            "inspect/e2e-samples/#",
            Duration::from_secs(60),
            bad,
            |g| {
                g.get("verdict").map_or(0, Vec::len) >= 30
                    && g.get("cmd_result").map_or(0, Vec::len) >= 4
                    && g.contains_key("stats")
            },
        )
        .await;
        daemon.stop().await;

        let verdicts = &got["verdict"];
        assert!(verdicts.len() >= 30, "only {} verdicts", verdicts.len());
        // Contiguous sequence numbers, starting at 1 on a fresh spool.
        let seqs: Vec<u64> = verdicts
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        for v in verdicts.iter().take(30) {
            assert_eq!(v["schema"], "inspect.verdict/1");
            let file = v["frame"]["origin"].as_str().unwrap();
            assert_eq!(v["label"], label_of(file), "{file}");
            let want = if label_of(file) == "ok" {
                "ok"
            } else {
                "defect"
            };
            assert_eq!(v["verdict"], want, "{file}: {v}");
            let (w, h) = (
                v["cam"]["w"].as_u64().unwrap() as u32,
                v["cam"]["h"].as_u64().unwrap() as u32,
            );
            let png = base64::engine::general_purpose::STANDARD
                .decode(v["cam"]["png"].as_str().unwrap())
                .unwrap();
            assert!(png.len() <= 400, "map PNG is {} bytes", png.len());
            let img = image::load_from_memory(&png).unwrap().into_luma8();
            assert_eq!(img.dimensions(), (w, h));
        }
        // Every bad command got an error result, and the daemon kept going.
        let results = &got["cmd_result"];
        assert!(results.len() >= 4);
        assert!(results.iter().all(|r| r["ok"] == false), "{results:?}");
        assert!(got.contains_key("evidence"), "evidence JPEGs for defects");
        assert!(got["status"].iter().any(|s| s["state"] == "online"));
        let stats = got["stats"].last().unwrap();
        assert!(
            stats["latency_ms"]["forward"]["p50"].as_f64().is_some(),
            "{stats}"
        );
    });
}

#[test]
fn evidence_on_the_watermark_zone_is_flagged_suspect() {
    let (host, port) = broker();
    let dir = common::tmp("e2e", "suspect");
    // The shortcut model looks at the watermark; the zone is where the camera burns it in. The
    // thresholds are the shipped defaults (tests/suspect.rs counts how many are caught).
    let zone = r#"[[verdict.ignore_zones]]
name = "watermark"
polygon = [[0.70, 0.82], [0.98, 0.82], [0.98, 0.97], [0.70, 0.97]]"#;
    let mut cfg = config("e2e-suspect", &host, port, zone, &dir.join("spool.redb"));
    cfg.model.path = root().join("models/shortcut-f32.onnx");
    cfg.model.variant = Default::default(); // one file, no [variants]
    if let inspectd::config::SourceConfig::Replay { path, .. } = &mut cfg.source {
        *path = root().join("models/samples-shortcut");
    }
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let got = collect(
            &host,
            port,
            "inspect/e2e-suspect/#",
            Duration::from_secs(60),
            vec![],
            |g| g.get("verdict").map_or(0, Vec::len) >= 10,
        )
        .await;
        daemon.stop().await;
        let suspects: Vec<_> = got["verdict"]
            .iter()
            .filter(|v| v["verdict"] == "suspect")
            .collect();
        assert!(
            !suspects.is_empty(),
            "no suspect verdict among {:?}",
            got["verdict"]
                .iter()
                .map(|v| &v["verdict"])
                .collect::<Vec<_>>()
        );
        // With the shipped thresholds, (nearly) every defect part is flagged.
        let on_defects: Vec<_> = got["verdict"]
            .iter()
            .filter(|v| !v["frame"]["origin"].as_str().unwrap().contains("_ok_"))
            .collect();
        let flagged = on_defects
            .iter()
            .filter(|v| v["verdict"] == "suspect")
            .count();
        assert!(
            flagged * 10 >= on_defects.len() * 9,
            "{flagged} of {} defect frames suspect",
            on_defects.len()
        );
        for s in &suspects {
            let reasons = s["reasons"].as_array().unwrap();
            assert!(
                reasons
                    .iter()
                    .any(|r| r["code"] == "on_ignore_zone" && r["zone"] == "watermark"),
                "{s}"
            );
        }
        let alerts = got.get("alert").cloned().unwrap_or_default();
        assert!(
            alerts.iter().any(|a| a["kind"] == "suspect"),
            "a suspect alert is raised"
        );
    });
}

#[test]
fn marginal_confidence_and_evidence_outside_the_roi_are_suspect() {
    let (host, port) = broker();
    let dir = common::tmp("e2e", "roi");
    // The ROI is the top-left ninth of the frame: most defects lie elsewhere. The band makes
    // every confidence below 0.999 marginal.
    let rules = r#"suspect_band = [0.5, 0.999]
roi = [[0.0, 0.0], [0.33, 0.0], [0.33, 0.33], [0.0, 0.33]]
min_roi_fraction = 0.5"#;
    let cfg = config("e2e-roi", &host, port, rules, &dir.join("spool.redb"));
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let got = collect(&host, port, "inspect/e2e-roi/#", Duration::from_secs(60), vec![], |g| {
            g.get("verdict").map_or(0, Vec::len) >= 30
        })
        .await;
        daemon.stop().await;
        let codes = |v: &serde_json::Value| -> Vec<String> {
            v["reasons"].as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap().to_string()).collect()
        };
        let verdicts = &got["verdict"];
        assert!(verdicts.iter().any(|v| v["verdict"] == "suspect" && codes(v).contains(&"outside_roi".to_string())), "no outside_roi");
        assert!(verdicts.iter().any(|v| v["verdict"] == "suspect" && codes(v).contains(&"marginal".to_string())), "no marginal");
        for v in verdicts {
            if v["verdict"] == "suspect" {
                assert!(!codes(v).is_empty(), "a suspect verdict lists its reasons: {v}");
            }
            let c = v["confidence"].as_f64().unwrap();
            if (0.5..=0.999).contains(&c) {
                assert_eq!(v["verdict"], "suspect", "{v}");
            }
        }
    });
}

#[test]
fn a_vanishing_source_folder_raises_an_alert_and_recovers() {
    let (host, port) = broker();
    let dir = common::tmp("e2e", "lost");
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for f in ["ok/brushed_metal_ok.png", "dent/cast_metal_dent.png"] {
        let src = root().join("models/samples").join(f);
        std::fs::copy(&src, frames.join(src.file_name().unwrap())).unwrap();
    }
    let mut cfg = config("e2e-lost", &host, port, "", &dir.join("spool.redb"));
    if let inspectd::config::SourceConfig::Replay { path, .. } = &mut cfg.source {
        *path = frames.clone();
    }
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        // Verdicts flow; then the folder disappears.
        let got = collect(
            &host,
            port,
            "inspect/e2e-lost/verdict",
            Duration::from_secs(30),
            vec![],
            |g| g.get("verdict").map_or(0, Vec::len) >= 3,
        )
        .await;
        assert!(got["verdict"].len() >= 3);
        let hidden = dir.join("hidden");
        std::fs::rename(&frames, &hidden).unwrap();
        let (_, lost_after) = await_lost(&host, port, "e2e-lost").await;
        assert!(
            lost_after < Duration::from_secs(2),
            "alert after {lost_after:?}"
        );
        // The folder comes back: recovery is announced and verdicts resume.
        std::fs::rename(&hidden, &frames).unwrap();
        await_recovered(&host, port, "e2e-lost").await;
        daemon.stop().await;
    });
}

/// A snapshot camera on 127.0.0.1: serves `frame` on every GET while `up`, and closes its
/// listening socket (connection refused, like an unplugged camera) while not.
fn http_camera(frame: Vec<u8>, up: Arc<AtomicBool>) -> u16 {
    let port = common::free_port();
    std::thread::spawn(move || {
        let mut listener: Option<TcpListener> = None;
        loop {
            if !up.load(Ordering::SeqCst) {
                listener = None;
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let l = listener.get_or_insert_with(|| {
                let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
                l.set_nonblocking(true).unwrap();
                l
            });
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let mut req = [0u8; 1024];
                    let _ = s.read(&mut req);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        frame.len()
                    );
                    let _ = s.write_all(head.as_bytes());
                    let _ = s.write_all(&frame);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    port
}

/// An HTTP `[source]` table from its keys (besides `kind`), every other key at its default.
fn http_source(keys: &str) -> inspectd::config::SourceConfig {
    toml::from_str(&format!("kind = \"http\"\n{keys}")).unwrap()
}

/// What [`misbehaving_camera`] answers.
const GOOD: u8 = 0;
const EMPTY: u8 = 1;
const GARBAGE: u8 = 2;
const TRICKLE: u8 = 3;

/// A snapshot camera that serves `frame` in mode GOOD, and otherwise a 200 with an empty body, a
/// body of garbage, or a body announced at 100 kB and sent one byte a second.
fn misbehaving_camera(frame: Vec<u8>, mode: Arc<std::sync::atomic::AtomicU8>) -> u16 {
    // Below the ephemeral range: a port another test's broker picked with free_port() (bound,
    // released, bound again by rumqttd) must never become this camera's — an observer once
    // talked MQTT to the camera.
    let listener = (20_000 + std::process::id() as u16 % 5000..30_000)
        .find_map(|p| TcpListener::bind(("127.0.0.1", p)).ok())
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let (frame, mode) = (frame.clone(), mode.load(Ordering::SeqCst));
            std::thread::spawn(move || {
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req);
                let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
                let body: &[u8] = match mode {
                    GOOD => &frame,
                    EMPTY => b"",
                    GARBAGE => &garbage,
                    _ => &[],
                };
                let len = if mode == TRICKLE { 100_000 } else { body.len() };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                if mode == TRICKLE {
                    for _ in 0..len {
                        if s.write_all(b"x").is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                } else {
                    let _ = s.write_all(body);
                }
            });
        }
    });
    port
}

/// Empty, garbage and trickled snapshots are a broken camera: each is reported lost within 5 s
/// with the default source settings, and a good frame brings it back.
#[test]
fn an_http_camera_serving_empty_garbage_or_trickled_bodies_is_reported_lost() {
    let dir = common::tmp("e2e", "http-bad");
    let frame = std::fs::read(root().join("models/samples/dent/cast_metal_dent.png")).unwrap();
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(GOOD));
    let cam = misbehaving_camera(frame, mode.clone());
    let (host, port) = broker();
    let mut cfg = config("e2e-http-bad", &host, port, "", &dir.join("spool.redb"));
    cfg.source = http_source(&format!("url = \"http://127.0.0.1:{cam}/snapshot.png\""));
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let got = collect(
            &host,
            port,
            "inspect/e2e-http-bad/verdict",
            Duration::from_secs(30),
            vec![],
            |g| g.contains_key("verdict"),
        )
        .await;
        assert!(got.contains_key("verdict"), "no verdict from a good camera");
        for (bad, what) in [
            (EMPTY, "empty"),
            (GARBAGE, "garbage"),
            (TRICKLE, "1 byte/s"),
        ] {
            mode.store(bad, Ordering::SeqCst);
            let (alert, after) = await_lost(&host, port, "e2e-http-bad").await;
            eprintln!("{what}: camera_lost after {after:?}");
            assert!(
                after < Duration::from_secs(5),
                "{what}: lost after {after:?}"
            );
            assert!(
                alert["message"].as_str().unwrap().contains("snapshot.png"),
                "{what}: {alert}"
            );
            mode.store(GOOD, Ordering::SeqCst);
            await_recovered(&host, port, "e2e-http-bad").await;
        }
        daemon.stop().await;
    });
}

#[test]
fn an_http_camera_going_down_raises_an_alert_and_recovers() {
    let (host, port) = broker();
    let dir = common::tmp("e2e", "http");
    let frame = std::fs::read(root().join("models/samples/dent/cast_metal_dent.png")).unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let cam = http_camera(frame, up.clone());
    let mut cfg = config("e2e-http", &host, port, "", &dir.join("spool.redb"));
    cfg.source = http_source(&format!(
        "url = \"http://127.0.0.1:{cam}/snapshot.png\"\nfps = 10\ntimeout_ms = 500"
    ));
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let got = collect(
            &host,
            port,
            "inspect/e2e-http/verdict",
            Duration::from_secs(30),
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
        assert!(v["frame"]["origin"]
            .as_str()
            .unwrap()
            .ends_with("/snapshot.png"));

        up.store(false, Ordering::SeqCst);
        let (alert, lost_after) = await_lost(&host, port, "e2e-http").await;
        assert!(
            alert["message"].as_str().unwrap().contains("snapshot.png"),
            "{alert}"
        );
        assert!(
            lost_after < Duration::from_secs(2),
            "alert after {lost_after:?}"
        );
        up.store(true, Ordering::SeqCst);
        await_recovered(&host, port, "e2e-http").await;
        daemon.stop().await;
    });
}

#[test]
fn mqtt_trigger_inspects_one_frame_per_part_and_names_it() {
    let (host, port) = broker();
    let dir = common::tmp("e2e", "trigger");
    let mut cfg = config("e2e-trig", &host, port, "", &dir.join("spool.redb"));
    if let inspectd::config::SourceConfig::Replay { trigger, .. } = &mut cfg.source {
        *trigger = inspectd::config::Trigger::Triggered;
    }
    let parts = ["P-0001", "P-0002", "P-0003"];
    let send = parts
        .iter()
        .map(|p| {
            (
                "inspect/e2e-trig/cmd/trigger".to_string(),
                format!(r#"{{"part_id":"{p}","id":"{p}"}}"#).into_bytes(),
            )
        })
        .collect();
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        // Wait for the three verdicts, then two more seconds: no frame is inspected untriggered.
        let mut settled: Option<Instant> = None;
        let got = collect(
            &host,
            port,
            "inspect/e2e-trig/#",
            Duration::from_secs(30),
            send,
            |g| {
                if g.get("verdict").map_or(0, Vec::len) >= 3 {
                    settled.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(2)
                } else {
                    false
                }
            },
        )
        .await;
        daemon.stop().await;
        let verdicts = &got["verdict"];
        let ids: Vec<&str> = verdicts
            .iter()
            .map(|v| v["part_id"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            ids, parts,
            "one verdict per trigger, in order, nothing else"
        );
        let results = &got["cmd_result"];
        assert_eq!(results.len(), 3, "{results:?}");
        assert!(
            results
                .iter()
                .all(|r| r["ok"] == true && r["command"] == "trigger"),
            "{results:?}"
        );
    });
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(std::fs::read(path).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn reload_model_swaps_the_model_and_refuses_a_wrong_hash() {
    let (host, port) = broker();
    let dir = common::tmp("e2e", "reload");
    let models = root().join("models");
    let model = dir.join("model.onnx");
    std::fs::copy(models.join("surface-defect-int8.onnx"), &model).unwrap();
    // A lone model file: its sidecar without the [variants] that name the shipped files.
    let lone_sidecar = |from: &str| {
        let text = std::fs::read_to_string(models.join(from)).unwrap();
        let cut = text.find("[variants]").unwrap_or(text.len());
        std::fs::write(dir.join("model.toml"), &text[..cut]).unwrap();
    };
    lone_sidecar("surface-defect-int8.toml");
    let int8 = sha256_hex(&model);
    let mut cfg = config("e2e-reload", &host, port, "", &dir.join("spool.redb"));
    cfg.model.path = model.clone();
    cfg.model.variant = Default::default();
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let got = collect(
            &host,
            port,
            "inspect/e2e-reload/verdict",
            Duration::from_secs(30),
            vec![],
            |g| g.get("verdict").is_some_and(|v| !v.is_empty()),
        )
        .await;
        assert_eq!(got["verdict"][0]["model"]["sha256"], int8);

        // The file is replaced (a new model is deployed) …
        std::fs::copy(models.join("surface-defect-f32.onnx"), &model).unwrap();
        lone_sidecar("surface-defect-f32.toml");
        let f32 = sha256_hex(&model);
        assert_ne!(int8, f32);
        // … a reload that expects another hash is refused, one that expects this hash works,
        // and a second one sent while it runs is answered busy (one reload at a time).
        let wrong = collect(
            &host,
            port,
            "inspect/e2e-reload/#",
            Duration::from_secs(60),
            vec![(
                "inspect/e2e-reload/cmd/reload_model".to_string(),
                format!(r#"{{"id":"wrong","sha256":"{int8}"}}"#).into_bytes(),
            )],
            |g| g.get("cmd_result").is_some_and(|r| !r.is_empty()),
        )
        .await;
        let send = vec![
            (
                "inspect/e2e-reload/cmd/reload_model".to_string(),
                format!(r#"{{"id":"right","sha256":"{f32}"}}"#).into_bytes(),
            ),
            (
                "inspect/e2e-reload/cmd/reload_model".to_string(),
                format!(r#"{{"id":"again","sha256":"{f32}"}}"#).into_bytes(),
            ),
        ];
        let got = collect(
            &host,
            port,
            "inspect/e2e-reload/#",
            Duration::from_secs(60),
            send,
            |g| {
                g.get("verdict")
                    .is_some_and(|v| v.iter().any(|x| x["model"]["sha256"] == f32.as_str()))
                    && g.get("status")
                        .is_some_and(|s| s.iter().any(|x| x["model"]["sha256"] == f32.as_str()))
                    && g.get("cmd_result")
                        .is_some_and(|r| r.iter().filter(|x| x["id"] != "wrong").count() >= 2)
            },
        )
        .await;
        daemon.stop().await;
        let mut results = wrong["cmd_result"].clone();
        results.extend(got["cmd_result"].iter().cloned());
        let by_id = |id: &str| {
            results
                .iter()
                .find(|r| r["id"] == id)
                .unwrap_or_else(|| panic!("no result {id}: {results:?}"))
        };
        assert_eq!(by_id("wrong")["ok"], false);
        assert!(
            by_id("wrong")["error"]
                .as_str()
                .unwrap()
                .contains("does not match"),
            "{results:?}"
        );
        assert_eq!(by_id("right")["ok"], true, "{results:?}");
        assert_eq!(by_id("again")["ok"], false, "{results:?}");
        assert!(
            by_id("again")["error"].as_str().unwrap().contains("busy"),
            "{results:?}"
        );
        assert!(got["status"]
            .iter()
            .any(|s| s["model"]["sha256"] == f32.as_str()));
        // Verdicts switch from one model to the other and never go back.
        let shas: Vec<&str> = got["verdict"]
            .iter()
            .map(|v| v["model"]["sha256"].as_str().unwrap())
            .collect();
        let first_new = shas
            .iter()
            .position(|s| *s == f32)
            .expect("a verdict from the new model");
        assert!(shas[first_new..].iter().all(|s| *s == f32), "{shas:?}");
    });
}

/// With the `camera` feature: a V4L2 device that is not there is a lost camera (alert and
/// status within 2 s), retried with backoff, and the daemon keeps running.
#[cfg(feature = "camera")]
#[test]
fn a_missing_v4l2_camera_is_reported_lost() {
    let (host, port) = broker();
    let dir = common::tmp("e2e", "v4l2");
    let mut cfg = config("e2e-v4l2", &host, port, "", &dir.join("spool.redb"));
    cfg.source = inspectd::config::SourceConfig::Camera {
        device: "/dev/video63".into(),
        width: Some(640),
        height: Some(480),
        fps: 10.0,
        format: Some("yuyv".into()),
        trigger: Default::default(),
        max_width: 4096,
        max_height: 4096,
        max_bad_frames: 3,
    };
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let (alert, after) = await_lost(&host, port, "e2e-v4l2").await;
        daemon.stop().await;
        assert!(
            alert["message"].as_str().unwrap().contains("/dev/video63"),
            "{alert}"
        );
        assert!(after < Duration::from_secs(3), "lost after {after:?}");
    });
}

/// The peak resident memory of a process (VmHWM), in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb / 1024.0
}

/// Runs the daemon binary on a folder holding one `w`×`h` gray PNG until `done` says so (or
/// 40 s pass); returns its peak RSS in MB, whether it was still running, and its stderr.
fn daemon_binary_on_one_frame(
    tag: &str,
    w: u32,
    h: u32,
    done: impl Fn(&std::collections::BTreeMap<String, Vec<serde_json::Value>>) -> bool,
) -> (
    f64,
    bool,
    String,
    std::collections::BTreeMap<String, Vec<serde_json::Value>>,
) {
    let (host, port) = broker();
    let dir = common::tmp("mem", tag);
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let png = frames.join(format!("big_{w}x{h}.png"));
    {
        // A constant gray compresses about 1000:1.
        let f = std::io::BufWriter::new(std::fs::File::create(&png).unwrap());
        let enc = image::codecs::png::PngEncoder::new_with_quality(
            f,
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::Up,
        );
        if tag == "huge" {
            let img = image::GrayImage::from_pixel(w, h, image::Luma([128]));
            image::ImageEncoder::write_image(enc, &img, w, h, image::ExtendedColorType::L8)
                .unwrap();
        } else {
            // The dent sample blown up: a defect, so the evidence picture is made too.
            let dent = image::open(root().join("models/samples/dent/cast_metal_dent.png"))
                .unwrap()
                .into_rgb8();
            let img = image::imageops::resize(&dent, w, h, image::imageops::FilterType::Nearest);
            image::ImageEncoder::write_image(enc, &img, w, h, image::ExtendedColorType::Rgb8)
                .unwrap();
        }
    }
    let device = format!("e2e-mem-{tag}");
    let text = replay_config(
        &device,
        5,
        &format!("url = \"mqtt://{host}:{port}\""),
        &dir.join("spool.redb"),
        "",
    )
    .replace(
        root().join("models/samples").to_str().unwrap(),
        frames.to_str().unwrap(),
    );
    let cfg = dir.join("inspectd.toml");
    std::fs::write(&cfg, text).unwrap();
    let log = dir.join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inspectd"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let rt = inspectd_contract::client::runtime().unwrap();
    let got = rt.block_on(collect(
        &host,
        port,
        &format!("inspect/{device}/#"),
        Duration::from_secs(40),
        vec![],
        done,
    ));
    let peak = peak_rss_mb(child.id());
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    (peak, alive, std::fs::read_to_string(&log).unwrap(), got)
}

/// A 14000×14000 frame (a ~200 KB PNG) is refused before it is decoded: named in a warning,
/// counted, reported lost after `max_bad_frames` of them, and the daemon stays small and up.
#[test]
fn a_huge_frame_is_refused_before_it_is_decoded() {
    let (peak, alive, log, got) = daemon_binary_on_one_frame("huge", 14000, 14000, |g| {
        g.get("alert")
            .is_some_and(|a| a.iter().any(|x| x["kind"] == "camera_lost"))
    });
    eprintln!("14000x14000: peak RSS {peak:.0} MB");
    assert!(alive, "the daemon died: {log}");
    assert!(peak < 300.0, "peak RSS {peak:.0} MB");
    assert!(
        log.contains("big_14000x14000.png") && log.contains("4096x4096"),
        "no warning naming the frame: {log}"
    );
    assert!(got.contains_key("alert"), "no camera_lost: {got:?}");
}

/// A 4000×3000 frame is within the limits: it gets a verdict and its evidence picture, and
/// memory stays bounded.
#[test]
fn a_large_frame_within_limits_gets_a_verdict_with_bounded_memory() {
    let (peak, alive, log, got) = daemon_binary_on_one_frame("large", 4000, 3000, |g| {
        g.contains_key("verdict") && g.contains_key("evidence")
    });
    eprintln!("4000x3000: peak RSS {peak:.0} MB");
    assert!(alive, "the daemon died: {log}");
    let v = &got
        .get("verdict")
        .unwrap_or_else(|| panic!("no verdict: {log}"))[0];
    assert_eq!(
        (v["verdict"].as_str(), v["frame"]["width"].as_u64()),
        (Some("defect"), Some(4000)),
        "{v}"
    );
    assert!(got.contains_key("evidence"), "no evidence: {log}");
    assert!(peak < 300.0, "peak RSS {peak:.0} MB");
}
