//! Helpers shared by the end-to-end test files: paths, a broker, temp folders, the daemon.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inspectd::config::Config;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A port for a server a test starts, taken from this process's own block below the ephemeral
/// range. A port found by binding port 0 and letting go of it could be handed to another
/// test's `bind(":0")` (a camera, a proxy) before the server took it: an observer then talked
/// MQTT to an HTTP camera. Test binaries run one at a time; within one, a counter keeps the
/// tests' ports apart, and a port still bound by anything else is skipped.
/// The `inspectd-supervisor` binary beside `inspectd` in the target folder: `cargo test
/// --workspace` (the README's test command) builds it with its package's tests.
pub fn supervisor_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_inspectd")).with_file_name("inspectd-supervisor");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p inspectd-supervisor` first)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 200) as u16 * 40;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::SeqCst) % 400;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A broker address: the one named by the environment, or a fresh embedded one.
pub fn broker() -> (String, u16) {
    if let Ok(addr) = std::env::var("INSPECTD_TEST_BROKER") {
        let (h, p) = addr
            .rsplit_once(':')
            .expect("INSPECTD_TEST_BROKER is host:port");
        return (h.to_string(), p.parse().unwrap());
    }
    let port = free_port();
    inspectd::broker::spawn(([127, 0, 0, 1], port).into()).unwrap();
    ("127.0.0.1".into(), port)
}

/// A daemon's config that replays the samples (looped) through the shipped int8 model (forced:
/// no variant timing at each start): `mqtt` is the body of its `[mqtt]` table, `more` any further
/// tables. Stats every second, no HTTP.
pub fn replay_config(device: &str, fps: u32, mqtt: &str, spool: &Path, more: &str) -> String {
    format!(
        r#"device_id = "{device}"
[source]
kind = "replay"
path = "{samples}"
fps = {fps}
loop = true
[model]
path = "{model}"
variant = "int8"
[mqtt]
{mqtt}
[spool]
path = "{spool}"
[stats]
interval_s = 1
[http]
listen = ""
{more}
"#,
        samples = root().join("models/samples").display(),
        model = root().join("models/surface-defect-int8.onnx").display(),
        spool = spool.display(),
    )
}

pub fn tmp(tag: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inspectd-{tag}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The daemon running in-process until `stop`.
pub struct Daemon {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    pub fn start(cfg: Config) -> Daemon {
        Daemon::start_with(cfg, Default::default())
    }

    pub fn start_with(cfg: Config, hooks: inspectd::daemon::Hooks) -> Daemon {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = rx.await;
        };
        let task = tokio::spawn(inspectd::daemon::run(cfg, shutdown, hooks));
        Daemon { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Collects publishes on `filter` until `done` says so or `timeout` passes, each payload read
/// as JSON (`null` if it is not), by topic leaf (`evidence` for every `evidence/{seq}`).
pub async fn collect(
    host: &str,
    port: u16,
    filter: &str,
    timeout: Duration,
    send: Vec<(String, Vec<u8>)>,
    done: impl FnMut(&BTreeMap<String, Vec<serde_json::Value>>) -> bool,
) -> BTreeMap<String, Vec<serde_json::Value>> {
    observe(
        host,
        port,
        filter,
        timeout,
        send,
        |_, p| json_or_null(p),
        done,
    )
    .await
}

/// As [`collect`], with each message's topic and payload bytes as they arrived.
pub async fn collect_raw(
    host: &str,
    port: u16,
    filter: &str,
    timeout: Duration,
    send: Vec<(String, Vec<u8>)>,
    done: impl FnMut(&BTreeMap<String, Vec<(String, Vec<u8>)>>) -> bool,
) -> BTreeMap<String, Vec<(String, Vec<u8>)>> {
    let read = |t: &str, p: &[u8]| (t.to_string(), p.to_vec());
    observe(host, port, filter, timeout, send, read, done).await
}

fn json_or_null(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null)
}

async fn observe<T>(
    host: &str,
    port: u16,
    filter: &str,
    timeout: Duration,
    mut send: Vec<(String, Vec<u8>)>,
    read: impl Fn(&str, &[u8]) -> T,
    mut done: impl FnMut(&BTreeMap<String, Vec<T>>) -> bool,
) -> BTreeMap<String, Vec<T>> {
    // Client ids must be unique per broker: tests run concurrently.
    // Unique per call too: a test that collects twice in a row on one filter reconnected with
    // the id of the observer it had just dropped, and the broker, still closing that one, reset
    // the new connection ("observer lost the broker").
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "observer-{}-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        filter.replace(['/', '#'], "")
    );
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(8 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let mut got: BTreeMap<String, Vec<T>> = BTreeMap::new();
    let t0 = Instant::now();
    while t0.elapsed() < timeout && !done(&got) {
        match tokio::time::timeout(Duration::from_millis(200), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let leaf = p.topic.rsplit('/').next().unwrap_or("").to_string();
                // Commands go out once the daemon is online (and so subscribed to them).
                if leaf == "status" && json_or_null(&p.payload)["state"] == "online" {
                    for (t, p) in send.drain(..) {
                        client.publish(t, QoS::AtLeastOnce, false, p).await.unwrap();
                    }
                }
                let key = if p.topic.contains("/evidence/") {
                    "evidence".to_string()
                } else {
                    leaf
                };
                got.entry(key).or_default().push(read(&p.topic, &p.payload));
            }
            Ok(Err(e)) => panic!("observer lost the broker: {e}"),
            _ => {}
        }
    }
    got
}

/// Waits for a device's `camera_lost` alert and `lost` status; returns the alert and how long
/// it took, asserting both arrived.
pub async fn await_lost(host: &str, port: u16, device: &str) -> (serde_json::Value, Duration) {
    let t0 = Instant::now();
    let got = collect(
        host,
        port,
        &format!("inspect/{device}/#"),
        Duration::from_secs(10),
        vec![],
        |g| {
            g.get("alert")
                .is_some_and(|a| a.iter().any(|x| x["kind"] == "camera_lost"))
                && g.get("status")
                    .is_some_and(|s| s.iter().any(|x| x["camera"] == "lost"))
        },
    )
    .await;
    let took = t0.elapsed();
    let alert = got
        .get("alert")
        .and_then(|a| a.iter().find(|a| a["kind"] == "camera_lost"))
        .unwrap_or_else(|| panic!("{device}: no camera_lost alert: {got:?}"))
        .clone();
    assert!(
        got["status"].iter().any(|s| s["camera"] == "lost"),
        "{device}: no lost status: {got:?}"
    );
    (alert, took)
}

/// Waits for a device's `camera_recovered` alert, an `ok` status and verdicts flowing again.
pub async fn await_recovered(host: &str, port: u16, device: &str) {
    let got = collect(
        host,
        port,
        &format!("inspect/{device}/#"),
        Duration::from_secs(15),
        vec![],
        |g| {
            g.get("alert")
                .is_some_and(|a| a.iter().any(|x| x["kind"] == "camera_recovered"))
                && g.contains_key("verdict")
                && g.get("status")
                    .is_some_and(|s| s.iter().any(|x| x["camera"] == "ok"))
        },
    )
    .await;
    assert!(
        got.get("alert")
            .is_some_and(|a| a.iter().any(|a| a["kind"] == "camera_recovered")),
        "{device}: no camera_recovered alert: {got:?}"
    );
    assert!(
        got.contains_key("verdict"),
        "{device}: verdicts do not resume"
    );
    assert!(
        got["status"].iter().any(|s| s["camera"] == "ok"),
        "{device}: status not ok"
    );
}
