//! Several cameras on one box (`[[source]]`), end to end: a replay folder and an RTSP camera
//! (the real RTSP server of tests/rtsp.rs) feeding one inference thread, against a real broker.
//! Each verdict names its camera, each camera's own zones apply to its verdicts only, a camera
//! that floods does not starve the other, and a trigger addressed to one camera gets exactly one
//! verdict from it.
//!
//! Needs what tests/rtsp.rs needs (scripts/test installs it).
#![cfg(feature = "rtsp")]

use std::path::Path;
use std::time::Duration;

use inspectd::config::Config;
use serde_json::Value;

mod common;
use common::{broker, root, Daemon};
#[path = "common/rtsp_server.rs"]
mod rtsp_server;
use rtsp_server::Server;

/// An ignore zone over the whole frame: every defect the model finds is on it.
const EVERYWHERE: &str = r#"ignore_zones = [{ name = "everywhere", polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]] }]"#;

/// A box `device` whose `[[source]]` entries are `sources` (their bodies, with `camera` and
/// `kind`).
fn config(device: &str, host: &str, port: u16, sources: &[String], dir: &Path) -> Config {
    let text = config_text(device, host, port, sources, dir);
    Config::parse(&text, "test", Path::new(".")).unwrap_or_else(|e| panic!("{e:#}\n{text}"))
}

/// The text of [`config`].
fn config_text(device: &str, host: &str, port: u16, sources: &[String], dir: &Path) -> String {
    let sources: String = sources
        .iter()
        .map(|s| format!("[[source]]\n{s}\n"))
        .collect();
    format!(
        r#"device_id = "{device}"
{sources}[model]
path = "{model}"
variant = "int8"
[mqtt]
url = "mqtt://{host}:{port}"
keep_alive_s = 5
[spool]
path = "{spool}"
[stats]
interval_s = 1
[http]
listen = ""
[verdict]
defect_threshold = 0.5
"#,
        model = root().join("models/surface-defect-int8.onnx").display(),
        spool = dir.join(format!("{device}.redb")).display(),
    )
}

fn replay(camera: &str, folder: &str, keys: &str) -> String {
    format!(
        "camera = \"{camera}\"\nkind = \"replay\"\npath = \"{}\"\nloop = true\n{keys}",
        root().join("models/samples").join(folder).display()
    )
}

/// A Modbus client of the box's PLC server (tokio-modbus, as a PLC would speak it).
async fn modbus_connect(addr: std::net::SocketAddr) -> tokio_modbus::client::Context {
    let t0 = std::time::Instant::now();
    loop {
        match tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(1)).await {
            Ok(c) => return c,
            Err(e) if t0.elapsed() > Duration::from_secs(60) => panic!("Modbus {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Once `ready`, writes `part_id` and `trigger_seq` in one request and polls the input
/// registers until `result_seq` equals it; returns them.
async fn modbus_trigger(c: &mut tokio_modbus::client::Context, seq: u16, part: &str) -> Vec<u16> {
    use tokio_modbus::prelude::*;
    let t0 = std::time::Instant::now();
    while c.read_input_registers(0, 10).await.unwrap().unwrap()[0] != 1 {
        assert!(t0.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut words = vec![seq];
    words.extend(inspectd::plc::registers::part_id_registers(part));
    c.write_multiple_registers(0, &words)
        .await
        .unwrap()
        .unwrap();
    loop {
        let r = c.read_input_registers(0, 10).await.unwrap().unwrap();
        if r[1] == seq {
            return r;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no result: {r:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn of_camera<'a>(vs: &'a [Value], camera: &str) -> Vec<&'a Value> {
    vs.iter().filter(|v| v["camera"] == camera).collect()
}

/// The newest stats' counters of one camera.
fn camera_stats<'a>(stats: Option<&'a Vec<Value>>, camera: &str) -> Option<&'a Value> {
    stats?
        .iter()
        .rev()
        .flat_map(|s| s["cameras"].as_array())
        .flatten()
        .find(|c| c["name"] == camera)
}

fn verdicts_of(c: &Value) -> u64 {
    ["ok", "defect", "suspect"]
        .iter()
        .map(|k| c["verdicts"][k].as_u64().unwrap_or(0))
        .sum()
}

/// A replay camera at fps 0 (as fast as inference allows: it always has a frame ready) with an
/// ignore zone over everything, and an RTSP camera serving the dent still at 5 fps, without
/// zones. Every verdict names its camera; the replay's defects turn suspect on its zone while
/// the RTSP camera's dents stay defects; and the RTSP camera gets (nearly) every frame it takes
/// inspected although the other floods.
#[test]
fn two_cameras_name_their_verdicts_keep_their_own_zones_and_a_flood_starves_neither() {
    let dir = common::tmp("multicam", "zones");
    let dent = root().join("models/samples/dent/cast_metal_dent.png");
    let server = Server::start(
        &dir.join("clips"),
        &[format!("/dent=mjpeg:{}", dent.display())],
    );
    let rt = inspectd_contract::client::runtime().unwrap();
    let (host, port) = broker();
    rt.block_on(async {
        let cfg = config(
            "mc-zones",
            &host,
            port,
            &[
                replay("line", "", &format!("fps = 0\n{EVERYWHERE}")),
                format!(
                    "camera = \"dock\"\nkind = \"rtsp\"\nurl = \"{}\"\nfps = 5",
                    server.url("/dent")
                ),
            ],
            &dir,
        );
        let daemon = Daemon::start(cfg);
        let got = common::collect(
            &host,
            port,
            "inspect/mc-zones/#",
            Duration::from_secs(90),
            vec![],
            |g| {
                let vs = g.get("verdict").map_or(&[][..], Vec::as_slice);
                of_camera(vs, "dock").len() >= 8
                    && of_camera(vs, "line").len() >= 8
                    && camera_stats(g.get("stats"), "dock")
                        .is_some_and(|c| c["frames"].as_u64() >= Some(8))
            },
        )
        .await;
        daemon.stop().await;
        let vs = got.get("verdict").expect("no verdicts");
        let (line, dock) = (of_camera(vs, "line"), of_camera(vs, "dock"));
        assert_eq!(
            line.len() + dock.len(),
            vs.len(),
            "every verdict names one of the two cameras"
        );
        assert!(dock.len() >= 8, "dock: {} verdicts", dock.len());
        assert!(line.len() >= 8, "line: {} verdicts", line.len());
        // Per-camera zones: the line's ignore zone covers everything, so each of its defect
        // predictions is suspect for that zone; the dock has no zone: its dents are defects.
        let on_zone = |v: &Value| {
            v["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["code"] == "on_ignore_zone" && r["zone"] == "everywhere")
        };
        let line_flagged: Vec<_> = line.iter().filter(|v| v["verdict"] != "ok").collect();
        assert!(!line_flagged.is_empty(), "the samples have defects");
        for v in line_flagged {
            assert_eq!(v["verdict"], "suspect", "line: {v}");
            assert!(on_zone(v), "line, not on its zone: {v}");
        }
        for v in &dock {
            assert_eq!(
                (&v["verdict"], &v["label"]),
                (&"defect".into(), &"dent".into())
            );
            assert!(!on_zone(v), "the line's zone applied to the dock: {v}");
            assert_eq!(v["frame"]["origin"], server.url("/dent"));
        }
        // Fairness: the line always has a frame ready, yet nearly every frame the dock took
        // was inspected (its frames replaced in the slot before inference took them count in
        // its dropped_frames, together with the pictures the RTSP source let go).
        let c = camera_stats(got.get("stats"), "dock").expect("per-camera stats");
        let (frames, inspected) = (c["frames"].as_u64().unwrap(), verdicts_of(c));
        assert!(
            inspected * 10 >= frames * 8,
            "dock: {inspected} of {frames} frames inspected while the line floods: {c}"
        );
        let l = camera_stats(got.get("stats"), "line").unwrap();
        assert!(l["frames"].as_u64() > Some(frames), "the line floods: {l}");
        // The status names both cameras with their state and trigger mode.
        let st = got["status"].last().unwrap();
        let cams: Vec<(&str, &str, &str)> = st["cameras"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap();
                (s("name"), s("camera"), s("trigger"))
            })
            .collect();
        assert_eq!(
            cams,
            [("line", "ok", "continuous"), ("dock", "ok", "continuous")]
        );
    });
}

/// Three cameras: the line replays continuously (and floods), the dock (RTSP) and the bench
/// (replay of the scratch samples) inspect on triggers. A trigger addressed to one camera gets
/// exactly one verdict, from that camera, in trigger order; a trigger without a camera on a box
/// with two triggered cameras, one for a continuous camera and one for a camera the box does not
/// have are refused with a reason; the line's verdicts go on meanwhile. The PLC's Modbus trigger
/// inspects with `plc.camera`.
#[test]
fn a_trigger_addressed_to_one_camera_gets_one_verdict_from_that_camera() {
    let dir = common::tmp("multicam", "trigger");
    let dent = root().join("models/samples/dent/cast_metal_dent.png");
    let server = Server::start(
        &dir.join("clips"),
        &[format!("/dent=mjpeg:{}", dent.display())],
    );
    let rt = inspectd_contract::client::runtime().unwrap();
    let (host, port) = broker();
    rt.block_on(async {
        let modbus: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
        let mut text = config_text(
            "mc-trig",
            &host,
            port,
            &[
                replay("line", "ok", "fps = 0"),
                format!(
                    "camera = \"dock\"\nkind = \"rtsp\"\nurl = \"{}\"\nfps = 5\ntrigger = \"triggered\"",
                    server.url("/dent")
                ),
                replay("bench", "scratch", "fps = 5\ntrigger = \"triggered\""),
            ],
            &dir,
        );
        // The PLC triggers the bench (not the first triggered camera, the dock).
        text.push_str(&format!("[plc]\nmodbus_listen = \"{modbus}\"\ncamera = \"bench\"\n"));
        let cfg = Config::parse(&text, "test", Path::new(".")).unwrap();
        let daemon = Daemon::start(cfg);
        let plc = tokio::spawn(async move {
            let mut c = modbus_connect(modbus).await;
            modbus_trigger(&mut c, 1, "M-1").await
        });
        let trigger = |body: &str| {
            (
                "inspect/mc-trig/cmd/trigger".to_string(),
                body.as_bytes().to_vec(),
            )
        };
        let send = vec![
            trigger(r#"{"id":"t1","part_id":"P-1","camera":"dock"}"#),
            trigger(r#"{"id":"t2","part_id":"P-2","camera":"bench"}"#),
            trigger(r#"{"id":"t3","part_id":"P-3"}"#),
            trigger(r#"{"id":"t4","part_id":"P-4","camera":"line"}"#),
            trigger(r#"{"id":"t5","part_id":"P-5","camera":"nope"}"#),
            trigger(r#"{"id":"t6","part_id":"P-6","camera":"dock"}"#),
        ];
        let got = common::collect(
            &host,
            port,
            "inspect/mc-trig/#",
            Duration::from_secs(60),
            send,
            |g| {
                g.get("cmd_result").map_or(0, Vec::len) >= 6
                    && g.get("verdict")
                        .is_some_and(|v| v.iter().any(|v| v["part_id"] == "M-1"))
            },
        )
        .await;
        let registers = tokio::time::timeout(Duration::from_secs(30), plc)
            .await
            .expect("the PLC's trigger was answered")
            .unwrap();
        daemon.stop().await;
        let result = |id: &str| {
            got["cmd_result"]
                .iter()
                .find(|r| r["id"] == id)
                .unwrap_or_else(|| panic!("no cmd_result {id}: {:?}", got.get("cmd_result")))
        };
        let vs = &got["verdict"];
        let of_part = |p: &str| -> Vec<&Value> { vs.iter().filter(|v| v["part_id"] == p).collect() };
        for (id, part, camera) in [("t1", "P-1", "dock"), ("t2", "P-2", "bench"), ("t6", "P-6", "dock")] {
            let r = result(id);
            assert_eq!(r["ok"], true, "{r}");
            let v = of_part(part);
            assert_eq!(v.len(), 1, "{part}: exactly one verdict: {v:?}");
            assert_eq!(v[0]["camera"], camera, "{part}: {}", v[0]);
            let detail = r["detail"].as_str().unwrap();
            assert!(
                detail.starts_with(&format!("part {part}: "))
                    && detail.ends_with(&format!("(seq {})", v[0]["seq"])),
                "{detail}"
            );
        }
        assert_eq!(of_part("P-1")[0]["label"], "dent");
        let bench_origin = of_part("P-2")[0]["frame"]["origin"].as_str().unwrap().to_string();
        assert!(
            root().join("models/samples/scratch").join(&bench_origin).is_file(),
            "P-2 came from the bench's folder: {bench_origin}"
        );
        // The PLC's trigger: one verdict, from plc.camera, its seq in the result registers.
        let m = of_part("M-1");
        assert_eq!(m.len(), 1, "M-1: {m:?}");
        assert_eq!(m[0]["camera"], "bench", "{}", m[0]);
        let seq_regs = (u64::from(registers[6]) << 16) | u64::from(registers[7]);
        assert_eq!((registers[5], Some(seq_regs)), (0, m[0]["seq"].as_u64()), "{registers:?}");
        // In trigger order.
        let seq = |p: &str| of_part(p)[0]["seq"].as_u64().unwrap();
        assert!(seq("P-1") < seq("P-2") && seq("P-2") < seq("P-6"));
        for (id, part, why) in [
            ("t3", "P-3", "several triggered cameras: name one (dock, bench)"),
            ("t4", "P-4", "inspects continuously"),
            ("t5", "P-5", "no camera \"nope\" on this box"),
        ] {
            let r = result(id);
            assert_eq!(r["ok"], false, "{r}");
            assert!(r["error"].as_str().unwrap().contains(why), "{id}: {r}");
            assert!(of_part(part).is_empty(), "{part} got a verdict");
        }
        // Only the triggered cameras' verdicts carry part ids; the line went on.
        assert!(vs.iter().any(|v| v["camera"] == "line" && v["part_id"].is_null()));
        assert!(vs
            .iter()
            .filter(|v| v["camera"] != "line")
            .all(|v| v["part_id"].is_string()));
    });
}

/// `check-config` on bad camera entries: exit 2 and one line naming the key, `source[i].key`.
#[test]
fn bad_camera_entries_exit_2_naming_the_key() {
    let dir = common::tmp("multicam", "check");
    let cfg = |sources: &[String], more: &str| {
        let mut text = config_text("mc-check", "127.0.0.1", 1883, sources, &dir);
        text.push_str(more);
        let p = dir.join("inspectd.toml");
        std::fs::write(&p, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_inspectd"))
            .args(["check-config", p.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let top = replay("top", "ok", "");
    for (sources, more, key) in [
        (
            vec![top.clone(), replay("top", "dent", "")],
            "",
            "source[1].camera: \"top\" names two cameras",
        ),
        (
            vec![top.clone(), replay("Top Cam", "dent", "")],
            "",
            "source[1].camera: \"Top Cam\" must be",
        ),
        (
            vec![
                top.clone(),
                replay("x", "dent", "").replace("camera = \"x\"\n", ""),
            ],
            "",
            "source[1].camera: missing",
        ),
        (
            vec![top.clone(), replay("side", "nowhere", "")],
            "",
            "source[1].path",
        ),
        (
            vec![top.clone(), replay("side", "dent", "")],
            "[plc]\ncamera = \"side\"\n",
            "plc.camera: camera \"side\" inspects continuously",
        ),
    ] {
        let (code, err) = cfg(&sources, more);
        assert_eq!(code, Some(2), "{key}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(key), "{key} not in {err}");
    }
    // A good two-camera file passes.
    let (code, err) = cfg(&[top, replay("side", "dent", "")], "");
    assert_eq!(code, Some(0), "{err}");
}
