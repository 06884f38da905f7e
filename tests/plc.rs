//! The PLC's side of a box, end to end: the daemon runs in-process with its Modbus TCP server,
//! driven by a real Modbus client (tokio-modbus's, not our encoder), while an MQTT observer on
//! the embedded broker sees what the plant sees.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use inspectd::config::Config;
use inspectd::plc::registers::part_id_registers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;

mod common;
use common::{broker, collect, replay_config, Daemon};

/// A triggered box with its Modbus server on a port of its own.
fn config(device: &str, host: &str, port: u16, dir: &Path) -> (Config, SocketAddr) {
    let modbus: SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let text = replay_config(
        device,
        50,
        &format!("url = \"mqtt://{host}:{port}\"\nkeep_alive_s = 5"),
        &dir.join("spool.redb"),
        &format!("[plc]\nmodbus_listen = \"{modbus}\"\nunit_id = 1\ntrigger_timeout_ms = 3000"),
    )
    .replace("loop = true", "loop = true\ntrigger = \"triggered\"");
    (
        Config::parse(&text, "test", Path::new(".")).unwrap(),
        modbus,
    )
}

async fn connect(addr: SocketAddr) -> Context {
    let t0 = Instant::now();
    loop {
        match tokio_modbus::client::tcp::connect_slave(addr, Slave(1)).await {
            Ok(c) => return c,
            Err(e) if t0.elapsed() > Duration::from_secs(60) => panic!("Modbus {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn inputs(c: &mut Context) -> Vec<u16> {
    c.read_input_registers(0, 10).await.unwrap().unwrap()
}

/// Waits until `ready` (input 0) reads `want`.
async fn await_ready(c: &mut Context, want: u16) {
    let t0 = Instant::now();
    while inputs(c).await[0] != want {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "ready never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `part_id` and `trigger_seq` in one request (as a PLC does) and polls the input
/// registers until `result_seq` equals it; returns them and the coils read right after.
async fn trigger(c: &mut Context, seq: u16, part: &str) -> (Vec<u16>, Vec<bool>) {
    let mut words = vec![seq];
    words.extend(part_id_registers(part));
    c.write_multiple_registers(0, &words)
        .await
        .unwrap()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let r = inputs(c).await;
        if r[1] == seq {
            let coils = c.read_coils(0, 4).await.unwrap().unwrap();
            return (r, coils);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no result for trigger_seq {seq}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn verdict_code(v: &str) -> u16 {
    match v {
        "ok" => 1,
        "defect" => 2,
        "suspect" => 3,
        other => panic!("verdict {other:?}"),
    }
}

#[test]
fn two_hundred_modbus_triggers_get_two_hundred_verdicts_in_order_on_both_sides() {
    const N: usize = 200;
    let (host, port) = broker();
    let dir = common::tmp("plc", "200");
    let (cfg, modbus) = config("plc-200", &host, port, &dir);
    let labels: Vec<String> = ["ok", "scratch", "dent", "stain", "crack"]
        .map(String::from)
        .to_vec();
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (h, p) = (host.clone(), port);
        let observer = tokio::spawn(async move {
            collect(
                &h,
                p,
                "inspect/plc-200/verdict",
                Duration::from_secs(300),
                vec![],
                |g| g.get("verdict").map_or(0, Vec::len) >= N,
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let daemon = Daemon::start(cfg);
        let mut c = connect(modbus).await;
        await_ready(&mut c, 1).await;
        // trigger_seq is a u16 that wraps: start close to the top.
        let first: u16 = 65_450;
        let mut results = vec![];
        for i in 0..N {
            let seq = first.wrapping_add(i as u16);
            let part = format!("P-{i:04}");
            let (r, coils) = trigger(&mut c, seq, &part).await;
            assert_eq!(r[5], 0, "error_code for {part}: {r:?}");
            assert!((1..=3).contains(&r[2]), "verdict for {part}: {r:?}");
            assert!(r[4] <= 1000, "{r:?}");
            assert_eq!(
                coils[..3],
                [r[2] == 1, r[2] == 2, r[2] == 3],
                "coils for {part}: {r:?}"
            );
            // The PLC acknowledges what it consumed.
            c.write_single_register(9, seq).await.unwrap().unwrap();
            results.push((part, r));
        }
        let holding = c.read_holding_registers(0, 10).await.unwrap().unwrap();
        assert_eq!(holding[0], first.wrapping_add(N as u16 - 1));
        assert_eq!(holding[9], holding[0], "result_ack kept");
        let got = observer.await.unwrap();
        daemon.stop().await;
        let verdicts = &got["verdict"];
        assert_eq!(
            verdicts.len(),
            N,
            "one MQTT verdict per trigger, nothing else"
        );
        let mut last_seq = 0;
        for ((part, r), v) in results.iter().zip(verdicts) {
            assert_eq!(v["part_id"], part.as_str(), "in order");
            let seq = v["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "seq rises");
            last_seq = seq;
            assert_eq!(
                (r[6] as u64) << 16 | r[7] as u64,
                seq & 0xffff_ffff,
                "verdict_seq of {part}"
            );
            assert_eq!(r[2], verdict_code(v["verdict"].as_str().unwrap()), "{part}");
            assert_eq!(labels[r[3] as usize], v["label"], "class of {part}");
            let permille = (v["p_defect"].as_f64().unwrap() * 1000.0).round() as u16;
            assert_eq!(r[4], permille, "confidence_permille of {part}");
        }
        assert!(
            results.iter().any(|(_, r)| r[2] == 1) && results.iter().any(|(_, r)| r[2] != 1),
            "the samples give ok and not-ok verdicts"
        );
    });
}

/// A complete frame a Modbus server must not take: (what, bytes).
fn garbage(i: usize) -> Vec<u8> {
    // A small LCG: the bytes differ per frame and per run of the test alike.
    let mut x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(12345);
    let mut next = || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (x >> 16) as u8
    };
    match i % 4 {
        // A protocol id other than 0.
        0 => {
            let mut b: Vec<u8> = (0..12).map(|_| next()).collect();
            b[2] = 0x12;
            b[4] = 0;
            b[5] = 6;
            b
        }
        // Length 0.
        1 => vec![0, 1, 0, 0, 0, 0, 1, 3],
        // Read holding registers with its body cut short.
        2 => vec![0, 2, 0, 0, 0, 2, 1, 3],
        // Someone speaking HTTP to the port.
        _ => b"GET / HTTP/1.1\r\nHost: plc\r\n\r\n".to_vec(),
    }
}

#[test]
fn box_owned_areas_refuse_writes_and_garbage_frames_do_not_disturb_a_good_client() {
    let (host, port) = broker();
    let dir = common::tmp("plc", "garbage");
    let (cfg, modbus) = config("plc-garbage", &host, port, &dir);
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let mut c = connect(modbus).await;
        await_ready(&mut c, 1).await;
        // The box's areas: coils cannot be written; nothing lies past holding 9 or input 9.
        use ExceptionCode::*;
        assert_eq!(
            c.write_single_coil(0, true).await.unwrap(),
            Err(IllegalDataAddress)
        );
        assert_eq!(
            c.write_multiple_coils(0, &[true, false]).await.unwrap(),
            Err(IllegalDataAddress)
        );
        assert_eq!(
            c.write_single_register(10, 1).await.unwrap(),
            Err(IllegalDataAddress)
        );
        assert_eq!(
            c.write_multiple_registers(8, &[1, 2, 3]).await.unwrap(),
            Err(IllegalDataAddress)
        );
        assert_eq!(
            c.read_input_registers(0, 11).await.unwrap(),
            Err(IllegalDataAddress)
        );
        assert_eq!(c.read_coils(0, 5).await.unwrap(), Err(IllegalDataAddress));
        assert_eq!(
            c.read_holding_registers(0, 0).await.unwrap(),
            Err(IllegalDataValue)
        );
        // A trigger without a part id is refused and leaves trigger_seq as it was.
        c.write_multiple_registers(1, &[0; 8])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            c.write_single_register(0, 5).await.unwrap(),
            Err(IllegalDataValue)
        );
        assert_eq!(c.read_holding_registers(0, 1).await.unwrap(), Ok(vec![0]));
        // Another unit id than the box's.
        let mut other = tokio_modbus::client::tcp::connect_slave(modbus, Slave(9))
            .await
            .unwrap();
        assert_eq!(
            other.read_input_registers(0, 1).await.unwrap(),
            Err(GatewayTargetDevice)
        );

        // 50 garbage frames, 10 connections at a time, while the good client triggers.
        let bad = tokio::spawn(async move {
            let mut closed = 0;
            for wave in 0..5 {
                let mut tasks = vec![];
                for k in 0..10 {
                    let frame = garbage(wave * 10 + k);
                    tasks.push(tokio::spawn(async move {
                        let mut s = tokio::net::TcpStream::connect(modbus).await.unwrap();
                        s.write_all(&frame).await.unwrap();
                        // The server closes this connection (EOF or reset), answering nothing.
                        let mut b = [0u8; 64];
                        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await;
                        matches!(r, Ok(Ok(0)) | Ok(Err(_)))
                    }));
                }
                for t in tasks {
                    closed += t.await.unwrap() as usize;
                }
            }
            closed
        });
        let mut seq = 0u16;
        while !bad.is_finished() || seq < 5 {
            seq += 1;
            let (r, _) = trigger(&mut c, seq, &format!("G-{seq}")).await;
            assert_eq!((r[1], r[5]), (seq, 0), "{r:?}");
            assert!((1..=3).contains(&r[2]), "{r:?}");
        }
        assert_eq!(bad.await.unwrap(), 50, "every garbage connection closed");
        // And a new client still gets in.
        let mut late = connect(modbus).await;
        assert_eq!(inputs(&mut late).await[1], seq);
        daemon.stop().await;
    });
}

#[test]
fn a_trigger_during_pause_is_answered_with_an_error_on_both_paths() {
    let (host, port) = broker();
    let dir = common::tmp("plc", "pause");
    let (mut cfg, modbus) = config("plc-pause", &host, port, &dir);
    let http: SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    cfg.http.listen = Some(http);
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (h, p) = (host.clone(), port);
        let cmd = |name: &str, body: &str| {
            (
                format!("inspect/plc-pause/cmd/{name}"),
                body.as_bytes().to_vec(),
            )
        };
        // Paused as soon as it is online, then an MQTT trigger.
        let send = vec![cmd("pause", "{}"), cmd("trigger", r#"{"part_id":"M-1"}"#)];
        let observer = tokio::spawn(async move {
            collect(
                &h,
                p,
                "inspect/plc-pause/#",
                Duration::from_secs(120),
                send,
                |g| g.get("cmd_result").map_or(0, Vec::len) >= 2,
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let daemon = Daemon::start(cfg);
        let mut c = connect(modbus).await;
        // Paused: not ready, and a trigger is answered with error_code 4 (busy/paused).
        let t0 = Instant::now();
        loop {
            let r = inputs(&mut c).await;
            let paused = c.read_coils(3, 1).await.unwrap().unwrap() == [false];
            if r[0] == 0 && paused && t0.elapsed() > Duration::from_secs(1) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "never paused: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = observer.await.unwrap();
        let results = &got["cmd_result"];
        assert_eq!(results[0]["command"], "pause");
        assert_eq!(results[1]["command"], "trigger");
        assert_eq!(results[1]["ok"], false, "{results:?}");
        assert!(
            results[1]["error"].as_str().unwrap().contains("paused"),
            "{results:?}"
        );
        let (r, coils) = trigger(&mut c, 1, "P-PAUSED").await;
        assert_eq!((r[0], r[1], r[2], r[5]), (0, 1, 4, 4), "{r:?}");
        assert_eq!(coils, [false; 4]);
        assert!(!got.contains_key("verdict"), "no verdict while paused");
        // Both refusals are counted.
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let paused = text
            .lines()
            .find(|l| l.starts_with("inspectd_trigger_answers") && l.contains("answer=\"paused\""))
            .unwrap_or_else(|| panic!("no paused answers in {text}"));
        assert!(paused.ends_with(" 2"), "{paused}");
        // Resumed, the next trigger gets its verdict.
        let got = collect(
            &host,
            port,
            "inspect/plc-pause/#",
            Duration::from_secs(30),
            vec![cmd("resume", "{}")],
            |g| g.get("cmd_result").is_some_and(|r| !r.is_empty()),
        )
        .await;
        assert_eq!(got["cmd_result"][0]["command"], "resume");
        await_ready(&mut c, 1).await;
        let (r, _) = trigger(&mut c, 2, "P-RESUMED").await;
        assert_eq!((r[0], r[1], r[5]), (1, 2, 0), "{r:?}");
        assert!((1..=3).contains(&r[2]), "{r:?}");
        daemon.stop().await;
    });
}

#[test]
fn a_bad_plc_config_exits_2_with_one_line_naming_the_key() {
    let dir = common::tmp("plc", "badcfg");
    let base = replay_config(
        "plc-bad",
        5,
        "url = \"mqtt://127.0.0.1:1883\"",
        &dir.join("s.redb"),
        "",
    )
    .replace("loop = true", "loop = true\ntrigger = \"triggered\"");
    for (plc, key) in [
        ("modbus_listen = \"0.0.0.0:502\"", "plc.modbus_listen"),
        ("modbus_listen = \"502\"", "plc.modbus_listen"),
        ("unit_id = 0", "plc.unit_id"),
        ("unit_id = -1", "plc.unit_id"),
        ("trigger_timeout_ms = 0", "plc.trigger_timeout_ms"),
        ("modbus_port = 502", "modbus_port"),
    ] {
        let file = dir.join("inspectd.toml");
        std::fs::write(&file, format!("{base}[plc]\n{plc}\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_inspectd"))
            .args(["check-config", file.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{plc}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{plc}: {err}");
        assert!(err.contains(key), "{plc}: {key} not in {err}");
    }
}

#[test]
fn no_frame_in_time_is_error_3_with_an_alert_and_a_lost_camera_is_error_1() {
    let (host, port) = broker();
    let dir = common::tmp("plc", "errors");
    // One frame at start, the next 100 s later: a trigger's frame cannot come in time.
    let (slow, slow_addr) = config("plc-slow", &host, port, &dir.join("slow"));
    let slow = {
        let mut c = slow;
        if let inspectd::config::SourceConfig::Replay { fps, .. } = &mut c.source {
            *fps = 0.01;
        }
        c.plc.trigger_timeout_ms = 300;
        c
    };
    // An empty folder: the camera is lost from the start.
    let (blind, blind_addr) = config("plc-blind", &host, port, &dir.join("blind"));
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let blind = {
        let mut c = blind;
        if let inspectd::config::SourceConfig::Replay { path, .. } = &mut c.source {
            *path = empty;
        }
        c
    };
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (h, p) = (host.clone(), port);
        let observer = tokio::spawn(async move {
            collect(
                &h,
                p,
                "inspect/plc-slow/alert",
                Duration::from_secs(120),
                vec![],
                |g| {
                    g.get("alert")
                        .is_some_and(|a| a.iter().any(|x| x["kind"] == "trigger_timeout"))
                },
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (a, b) = (Daemon::start(slow), Daemon::start(blind));
        let mut c = connect(slow_addr).await;
        await_ready(&mut c, 1).await;
        let (r, coils) = trigger(&mut c, 1, "T-1").await;
        assert_eq!((r[1], r[2], r[5]), (1, 4, 3), "{r:?}");
        assert_eq!(coils[..3], [false; 3]);
        let got = observer.await.unwrap();
        let alert = got["alert"]
            .iter()
            .find(|x| x["kind"] == "trigger_timeout")
            .unwrap();
        assert_eq!(alert["part_id"], "T-1", "{alert}");
        let mut c = connect(blind_addr).await;
        let t0 = Instant::now();
        for seq in 1u16.. {
            // Not ready while the camera is lost; a trigger is answered with error 1.
            let (r, _) = trigger(&mut c, seq, "B-1").await;
            assert_eq!(r[0], 0, "ready with the camera lost: {r:?}");
            if r[5] == 1 {
                assert_eq!(r[2], 4, "{r:?}");
                break;
            }
            // Only a trigger that times out before the source first reports the folder lost
            // may get 3 instead.
            assert_eq!(r[5], 3, "{r:?}");
            assert!(t0.elapsed() < Duration::from_secs(60), "camera never lost");
        }
        a.stop().await;
        b.stop().await;
    });
}
