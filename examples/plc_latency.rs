//! Benchmark (not a test): PLC trigger → result registers set, end to end, next to forward +
//! CAM (issue #15 item 4). Runs the daemon in-process on an embedded broker with the f32
//! model, triggers it over Modbus TCP with tokio-modbus's client as a PLC does (write
//! `part_id` + `trigger_seq`, poll the input registers until `result_seq` follows) and prints
//! p50/p99 of each measure.
//!
//! ```sh
//! cargo run -p inspectd --example plc_latency -- [TRIGGERS] [FPS]
//! cargo run -p inspectd --features opcua --example plc_latency -- [TRIGGERS] [FPS] opcua
//! ```
//!
//! TRIGGERS (default 300, the first 10 are warm-up and not counted); FPS of the replayed
//! camera (default 0: a frame as soon as the last is taken, so the wait for the trigger's
//! frame is one decode; a real camera adds up to one frame period). With `opcua` the PLC is
//! an OPC UA client instead (Python asyncua, `tests/opcua_client.py`, one session): each
//! `Trigger(partId)` call is timed from request to answer.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inspectd::config::Config;
use inspectd::plc::registers::part_id_registers;
use tokio_modbus::prelude::*;

const WARM_UP: usize = 10;

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    inspectd_cam::stats::percentile(&mut s, p).unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(Ok(300), |a| a.parse())?;
    let fps: f32 = args.get(1).map_or(Ok(0.0), |a| a.parse())?;
    let opcua = match args.get(2).map(String::as_str) {
        None => false,
        Some("opcua") => true,
        Some(other) => anyhow::bail!("third argument {other:?}: only `opcua`"),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("inspectd-plc-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mqtt_port = free_port();
    inspectd::broker::spawn(([127, 0, 0, 1], mqtt_port).into())?;
    let modbus_port = free_port();
    let opcua_port = free_port();
    let text = format!(
        r#"device_id = "bench"
[source]
kind = "replay"
path = "{samples}"
fps = {fps}
trigger = "triggered"
[model]
path = "{model}"
variant = "f32"
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
[spool]
path = "{spool}"
[http]
listen = ""
[plc]
modbus_listen = "127.0.0.1:{modbus_port}"
{opcua_listen}
"#,
        opcua_listen = if opcua {
            format!("opcua_listen = \"opc.tcp://127.0.0.1:{opcua_port}/\"")
        } else {
            String::new()
        },
        samples = root.join("models/samples").display(),
        model = root.join("models/surface-defect-f32.onnx").display(),
        spool = dir.join("spool.redb").display(),
    );
    let cfg = Config::parse(&text, "plc_latency", &dir)?;
    // forward + CAM and the spool write of every verdict, from the inference thread.
    let stages: Arc<Mutex<Vec<(f64, f64, f64)>>> = Arc::default();
    let s2 = stages.clone();
    let hooks = inspectd::daemon::Hooks {
        on_verdict: Some(Box::new(move |v, spool_ms| {
            let l = v.latency_ms.as_ref().expect("latency");
            s2.lock().unwrap().push((l.forward, l.cam, spool_ms));
        })),
        ..Default::default()
    };
    let rt = inspectd_contract::client::runtime()?;
    let (e2e, boxed) = rt.block_on(async {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(inspectd::daemon::run(
            cfg,
            async {
                let _ = rx.await;
            },
            hooks,
        ));
        if opcua {
            let r = opcua_triggers(root, opcua_port, n).await;
            let _ = stop.send(());
            daemon.await??;
            return r.map(|e2e| (e2e, vec![]));
        }
        let addr = ([127, 0, 0, 1], modbus_port).into();
        let mut c = loop {
            match tokio_modbus::client::tcp::connect_slave(addr, Slave(1)).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        while c.read_input_registers(0, 1).await??[0] != 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (mut e2e, mut boxed) = (vec![], vec![]);
        for i in 0..n {
            let seq = i as u16 + 1;
            let mut words = vec![seq];
            words.extend(part_id_registers(&format!("B-{i}")));
            let t0 = Instant::now();
            c.write_multiple_registers(0, &words).await??;
            let r = loop {
                let r = c.read_input_registers(0, 10).await??;
                if r[1] == seq {
                    break r;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            };
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            anyhow::ensure!(r[5] == 0, "trigger {seq}: error_code {}", r[5]);
            if i >= WARM_UP {
                e2e.push(ms);
                boxed.push(r[8] as f64);
            }
        }
        let _ = stop.send(());
        daemon.await??;
        anyhow::Ok((e2e, boxed))
    })?;
    let st = stages.lock().unwrap();
    let st = &st[WARM_UP.min(st.len())..];
    let fwd: Vec<f64> = st.iter().map(|s| s.0).collect();
    let cam: Vec<f64> = st.iter().map(|s| s.1).collect();
    let fc: Vec<f64> = st.iter().map(|s| s.0 + s.1).collect();
    let spool: Vec<f64> = st.iter().map(|s| s.2).collect();
    let over: Vec<f64> = e2e.iter().zip(&fc).map(|(e, f)| e - f).collect();
    println!(
        "{} triggers (after {WARM_UP} warm-up), f32 model, replay fps {fps}, {}",
        e2e.len(),
        if opcua { "OPC UA" } else { "Modbus TCP" }
    );
    println!("{:<44} {:>9} {:>9}", "ms", "p50", "p99");
    let (e2e_name, boxed_name) = if opcua {
        ("Trigger() call -> answer (asyncua client)", "")
    } else {
        (
            "trigger -> result registers (PLC client)",
            "latency_ms register (box's own clock)",
        )
    };
    for (name, v) in [
        (e2e_name, &e2e),
        (boxed_name, &boxed),
        ("forward", &fwd),
        ("cam", &cam),
        ("forward + cam", &fc),
        ("spool write (fsync)", &spool),
        ("overhead: e2e - (forward + cam), per trigger", &over),
    ] {
        if v.is_empty() {
            continue;
        }
        println!("{name:<44} {:>9.2} {:>9.2}", pct(v, 50.0), pct(v, 99.0));
    }
    let target = pct(&fc, 99.0) + 10.0;
    println!(
        "target p99(e2e) <= p99(forward + cam) + 10 ms = {target:.2}: {}",
        if pct(&e2e, 99.0) <= target {
            "met"
        } else {
            "NOT met"
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `n` `Trigger` calls in one OPC UA session (the Python client of the tests): each call's
/// time from request to answer, in ms, after the warm-up.
async fn opcua_triggers(root: &Path, port: u16, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut args = vec![
        root.join("tests/opcua_client.py").display().to_string(),
        format!("opc.tcp://127.0.0.1:{port}/"),
        "--ns-uri".into(),
        "urn:inspectd:bench".into(),
        "wait-ready:true".into(),
    ];
    args.extend((0..n).map(|i| format!("trigger:B-{i}")));
    let t0 = Instant::now();
    let out = loop {
        let mut cmd = std::process::Command::new("python3");
        cmd.args(&args);
        let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
        // The daemon loads its model before it listens: retry a refused connection.
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.code() == Some(3) && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        anyhow::ensure!(
            out.status.success(),
            "OPC UA client: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        break text.into_owned();
    };
    let mut e2e = vec![];
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l)?;
        if v["action"] != "trigger" {
            continue;
        }
        let code = &v["outputs"][4];
        anyhow::ensure!(code == 0, "{}: errorCode {code}", v["part_id"]);
        e2e.push(v["call_ms"].as_f64().unwrap_or(f64::NAN));
    }
    anyhow::ensure!(e2e.len() == n, "{} answers for {n} triggers", e2e.len());
    Ok(e2e.split_off(WARM_UP.min(n)))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
