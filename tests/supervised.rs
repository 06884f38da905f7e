//! Every thread and task of the daemon is supervised: kill each in turn (the test hook
//! `INSPECTD_TEST_FAULT=<task>@<ms>` makes it panic) and the process exits non-zero within 2 s
//! with a log line naming the task, so systemd can restart it; the restarted daemon continues
//! `seq` and nothing it stored is lost. Before, a dead publisher left a process that looked
//! healthy and never published again.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

mod common;
use common::{broker, replay_config};

/// Runs the daemon binary with `fault`, returns (exit status, seconds from the fault's log line
/// to the exit, stderr).
fn run_until_exit(cfg: &Path, fault: &str, http_port: u16) -> (i32, f64, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inspectd"))
        .args(["run", "--config"])
        .arg(cfg)
        .env("INSPECTD_TEST_FAULT", fault)
        .env("RUST_LOG", "info")
        .env("INSPECTD_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let l2 = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l2.lock().unwrap().push((Instant::now(), line));
        }
    });
    // The HTTP task turns only on a connection: knock until the process is gone.
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("fault {fault}: still running after 60 s");
        }
        let _ = std::net::TcpStream::connect(("127.0.0.1", http_port));
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited = Instant::now();
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    let fault_at = lines
        .iter()
        .find(|(_, l)| l.contains("injected fault"))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("fault {fault}: no panic logged:\n{text}"));
    (
        status.code().unwrap_or(-1),
        exited.duration_since(fault_at).as_secs_f64(),
        text,
    )
}

#[test]
fn killing_any_task_ends_the_process_non_zero_and_a_restart_continues_seq() {
    let (host, port) = broker();
    let dir = common::tmp("supervised", "tasks");
    let http_port = common::free_port();
    let device = "supervised";
    let text = replay_config(
        device,
        20,
        &format!("url = \"mqtt://{host}:{port}\"\nkeep_alive_s = 5"),
        &dir.join("spool.redb"),
        "",
    )
    .replace(
        "[http]\nlisten = \"\"",
        &format!("[http]\nlisten = \"127.0.0.1:{http_port}\""),
    );
    let cfg = dir.join("inspectd.toml");
    std::fs::write(&cfg, text).unwrap();

    // The observer: every verdict delivered, by seq (payload kept to compare redeliveries).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Arc<Mutex<BTreeMap<u64, Vec<String>>>> = Arc::default();
    let s2 = seen.clone();
    let (h2, topic) = (host.clone(), format!("inspect/{device}/verdict"));
    rt.spawn(async move {
        let mut opts = MqttOptions::new(format!("sup-obs-{}", std::process::id()), h2, port);
        opts.set_max_packet_size(8 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(opts, 64);
        client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = el.poll().await {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                let id = format!("{} {}", v["ts"], v["frame"]["origin"]);
                s2.lock()
                    .unwrap()
                    .entry(v["seq"].as_u64().unwrap())
                    .or_default()
                    .push(id);
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    let tasks = ["publisher", "inference", "source", "spool", "http"];
    for task in tasks {
        let (code, secs, log) = run_until_exit(&cfg, &format!("{task}@1500"), http_port);
        eprintln!("task {task}: exit status {code}, {secs:.2} s after the fault");
        assert_ne!(code, 0, "{task}: exit status 0\n{log}");
        assert!(
            secs < 2.0,
            "{task}: exited {secs:.2} s after the fault\n{log}"
        );
        assert!(
            log.contains(&format!("task {task} panicked")),
            "{task}: no line naming the task\n{log}"
        );
    }

    // A clean run afterwards delivers everything left and continues seq.
    let mut child = Command::new(env!("CARGO_BIN_EXE_inspectd"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    unsafe_term(child.id());
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));

    let seen = seen.lock().unwrap();
    assert!(seen.len() > 20, "{} verdicts", seen.len());
    for (seq, ids) in seen.iter() {
        assert!(
            ids.iter().all(|i| i == &ids[0]),
            "seq {seq} delivered with different content: {ids:?}"
        );
    }
    // Gaps only where a process died (a crash may skip the rest of a reserved block of seqs).
    let seqs: Vec<u64> = seen.keys().copied().collect();
    let gaps = seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert!(gaps <= tasks.len(), "{gaps} gaps in {seqs:?}");
}

/// SIGTERM: the daemon's clean stop.
fn unsafe_term(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

/// GET /healthz: (status code, JSON body).
fn healthz(port: u16) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, serde_json::Value::Null); // not listening yet
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    let code = r
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let body = r.split("\r\n\r\n").nth(1).unwrap_or("null");
    (
        code,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls /healthz until `want` holds; the seconds it took.
fn wait_health(port: u16, limit: Duration, want: impl Fn(u16, &serde_json::Value) -> bool) -> f64 {
    let t0 = Instant::now();
    loop {
        let (code, body) = healthz(port);
        if want(code, &body) {
            return t0.elapsed().as_secs_f64();
        }
        assert!(t0.elapsed() < limit, "healthz stayed {code} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn healthz_turns_unhealthy_within_2_s_when_inference_or_the_publisher_stalls() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (host, port) = broker();
    let dir = common::tmp("supervised", "healthz");
    let http_port = common::free_port();
    let text = replay_config(
        "healthz",
        20,
        &format!("url = \"mqtt://{host}:{port}\"\nkeep_alive_s = 5"),
        &dir.join("spool.redb"),
        "",
    )
    .replace(
        "[http]\nlisten = \"\"",
        &format!("[http]\nlisten = \"127.0.0.1:{http_port}\""),
    );
    let cfg = inspectd::config::Config::parse(&text, "test", Path::new(".")).unwrap();
    let stall = Arc::new(AtomicBool::new(false));
    let hold = Arc::new(AtomicBool::new(false));
    let s2 = stall.clone();
    let hooks = inspectd::daemon::Hooks {
        on_verdict: Some(Box::new(
            move |_v: &inspectd_contract::v1::Verdict, _ms: f64| {
                while s2.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            },
        )),
        hold_publisher: Some(hold.clone()),
        ..Default::default()
    };
    let rt = inspectd_contract::client::runtime().unwrap();
    let daemon = rt.block_on(async { common::Daemon::start_with(cfg, hooks) });
    let healthy = |code: u16, b: &serde_json::Value| {
        code == 200
            && b["inference"]["state"] == "running"
            && b["publisher"]["state"] == "connected"
            && b["last_verdict_age_s"].is_number()
    };
    wait_health(http_port, Duration::from_secs(30), healthy);

    stall.store(true, Ordering::SeqCst);
    let t = wait_health(http_port, Duration::from_secs(5), |c, b| {
        c == 503 && b["inference"]["state"] == "stalled"
    });
    eprintln!("/healthz: inference stall seen after {t:.2} s");
    assert!(t < 2.0, "inference stall seen after {t:.2} s");
    stall.store(false, Ordering::SeqCst);
    wait_health(http_port, Duration::from_secs(10), healthy);

    hold.store(true, Ordering::SeqCst);
    let t = wait_health(http_port, Duration::from_secs(5), |c, b| {
        c == 503 && b["publisher"]["state"] == "stalled"
    });
    eprintln!("/healthz: publisher stall seen after {t:.2} s");
    assert!(t < 2.0, "publisher stall seen after {t:.2} s");
    hold.store(false, Ordering::SeqCst);
    wait_health(http_port, Duration::from_secs(10), healthy);
    rt.block_on(daemon.stop());
}
