//! Two supervisors, one share group, one PostgreSQL database (issue #17): a real Mosquitto
//! (Debian's, started here by path) spreads `loadgen`'s 20 000 verdicts from 8 devices over
//! both; one is SIGKILLed half-way and started again (as systemd's `Restart=` does), and then
//! every verdict is stored exactly once: 20 000 distinct (device, seq) rows, no seq missing,
//! duplicates counted. Both UIs show the same fleet, and a live page on one instance shows the
//! verdicts the other one stored.
//!
//! Mosquitto keeps a killed member's persistent session (clean_session=false): the QoS 1
//! messages in flight to it, and its share of what arrives while it is away, wait in that
//! session (Mosquitto 2.0 does not hand them to the other member) and come when the same client
//! id connects again. The test measures how many were waiting.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Client, MqttOptions, QoS};
use serde_json::{json, Value};

/// A child process killed (SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path) -> (Proc, u16) {
    let port = common::free_port();
    // No limit on a session's queue: the killed member's share waits in it.
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 100\n"),
    )
    .unwrap();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Mosquitto (Debian package `mosquitto`) must be installed for the failover test");
    let child = Command::new(bin)
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
        .spawn()
        .unwrap();
    let p = Proc(child);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, port)
}

fn get(addr: &str, path: &str) -> Value {
    inspectd_supervisor::loadgen::get_json(addr, path)
        .unwrap_or_else(|e| panic!("{addr}{path}: {e:#}"))
}

fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One supervisor of share group `g` on `db`.
fn supervisor(port: u16, db: &str, prefix: &str, id: &str, web: &str) -> Proc {
    let child = Command::new(common::supervisor_bin())
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
        .args(["--listen", web, "--db", db, "--prefix", prefix])
        .args(["--client-id", id, "--share-group", "plant"])
        .env("INSPECTD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_for(
        Duration::from_secs(30),
        "the supervisor's broker link",
        || {
            inspectd_supervisor::loadgen::get_json(web, "/api/stats")
                .ok()
                .filter(|s| s["connected"] == true)
        },
    );
    p
}

fn stat(s: &Value, k: &str) -> u64 {
    s["duplicates"][k].as_u64().unwrap_or(0)
}

/// `/events` of `web`, read on a thread: (seq, when it arrived) of each verdict row of `device`.
fn follow_verdicts(web: &str, device: &str) -> std::sync::mpsc::Receiver<(u64, Instant)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET /events HTTP/1.0\r\nHost: {web}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let device = device.to_string();
    std::thread::spawn(move || {
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let mut event = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            let l = line.trim_end().to_string();
            line.clear();
            if let Some(e) = l.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = l.strip_prefix("data:") {
                if event == "verdict" && d.contains(&format!("data-device=\"{device}\"")) {
                    let at = d.find("data-seq=\"").unwrap() + 10;
                    let seq = d[at..at + d[at..].find('"').unwrap()].parse().unwrap();
                    if tx.send((seq, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn verdict(device: &str, seq: u64) -> Vec<u8> {
    json!({"schema": "inspect.verdict/1", "device": device, "seq": seq,
           "ts": inspectd_contract::timefmt::now(), "verdict": "defect", "label": "scratch",
           "confidence": 0.9, "reasons": [], "model": {"name": "m"}})
    .to_string()
    .into_bytes()
}

#[test]
fn two_supervisors_share_the_fleet_and_a_killed_one_loses_nothing() {
    let t_start = Instant::now();
    let dir = common::tmp("failover", "share");
    let (_broker, port) = mosquitto(&dir);
    let db = inspectd_supervisor::pgtest::cluster().create_db("failover");
    let prefix = format!("fo{}", std::process::id());
    let (web_a, web_b) = (
        format!("127.0.0.1:{}", common::free_port()),
        format!("127.0.0.1:{}", common::free_port()),
    );
    let id_b = format!("sup-b-{}", std::process::id());
    let _a = supervisor(
        port,
        &db,
        &prefix,
        &format!("sup-a-{}", std::process::id()),
        &web_a,
    );
    let mut b = Some(supervisor(port, &db, &prefix, &id_b, &web_b));

    // 20 000 verdicts from 8 devices, paced so that the kill lands half-way.
    let loadgen = Command::new(common::supervisor_bin())
        .args(["loadgen", "--broker", &format!("mqtt://127.0.0.1:{port}")])
        .args(["--verdicts", "20000", "--devices", "8", "--rate", "4000"])
        .args(["--prefix", &prefix])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rows = |web: &str| get(web, "/api/stats")["rows"]["verdicts"].as_i64().unwrap();
    wait_for(Duration::from_secs(60), "10 000 rows", || {
        (rows(&web_a) >= 10_000).then_some(())
    });
    let b_before = get(&web_b, "/api/stats");
    drop(b.take()); // SIGKILL
    let killed_at = rows(&web_a);
    let out = loadgen.wait_with_output().unwrap();
    assert!(out.status.success(), "loadgen failed");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    // What the survivor alone makes of the rest: B's share waits in B's session.
    std::thread::sleep(Duration::from_secs(3));
    let alone = rows(&web_a);
    eprintln!(
        "killed B at {killed_at} rows (B had stored {} and had {} duplicates); with A alone after the last publish: {alone} rows",
        b_before["stored"], stat(&b_before, "verdict")
    );
    // systemd restarts it: the same client id, its session's messages come.
    let _b2 = supervisor(port, &db, &prefix, &id_b, &web_b);
    let t0 = Instant::now();
    wait_for(Duration::from_secs(60), "20 000 rows", || {
        (rows(&web_a) >= 20_000).then_some(())
    });
    eprintln!(
        "B restarted: 20 000 rows {:.1} s later",
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));

    // Exactly 20 000 distinct (device, seq), none missing, none conflicting.
    use inspectd_supervisor::store;
    let pg = store::open(&store::Target::parse(Path::new(&db), None, false).unwrap()).unwrap();
    let n: i64 = pg.one("SELECT count(*) FROM verdicts", &[]).unwrap();
    let distinct: i64 = pg
        .one(
            "SELECT count(*) FROM (SELECT DISTINCT device, seq FROM verdicts) AS d",
            &[],
        )
        .unwrap();
    let devices: i64 = pg
        .one("SELECT count(DISTINCT device) FROM verdicts", &[])
        .unwrap();
    assert_eq!((n, distinct, devices), (20_000, 20_000, 8));
    let (lo, hi): (i64, i64) = (
        pg.one("SELECT min(seq) FROM verdicts", &[]).unwrap(),
        pg.one("SELECT max(seq) FROM verdicts", &[]).unwrap(),
    );
    let gaps: i64 = pg.one("SELECT count(*) FROM seq_gaps", &[]).unwrap();
    let conflicts: i64 = pg.one("SELECT count(*) FROM conflicts", &[]).unwrap();
    assert_eq!((lo, hi, gaps, conflicts), (1, 2500, 0, 0));
    let (sa, sb) = (get(&web_a, "/api/stats"), get(&web_b, "/api/stats"));
    eprintln!(
        "duplicates (stored already, acknowledged again): A {}, B before the kill {}, B after its restart {}; stored by A {}, B {} + {}",
        stat(&sa, "verdict"),
        stat(&b_before, "verdict"),
        stat(&sb, "verdict"),
        sa["stored"],
        b_before["stored"],
        sb["stored"]
    );

    // Both UIs show the same fleet.
    let fleet = |web: &str| -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = get(web, "/api/fleet")
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["device"].as_str().unwrap().to_string(),
                    r["inspected_1h"].as_i64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (fa, fb) = (fleet(&web_a), fleet(&web_b));
    assert_eq!(fa.len(), 8, "{fa:?}");
    assert_eq!(fa, fb);
    assert_eq!(fa.iter().map(|f| f.1).sum::<i64>(), 20_000);

    // A live page on A shows what B stores, and B's what A stores.
    let dev = format!("live-{}", std::process::id());
    let (live_a, live_b) = (follow_verdicts(&web_a, &dev), follow_verdicts(&web_b, &dev));
    std::thread::sleep(Duration::from_millis(300));
    let stored = |web: &str| get(web, "/api/stats")["stored"].as_u64().unwrap();
    let (sa0, sb0) = (stored(&web_a), stored(&web_b));
    let mut o = MqttOptions::new(format!("fo-pub-{}", std::process::id()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut conn) = Client::new(o, 100);
    std::thread::spawn(move || for _ in conn.iter() {});
    const LIVE: u64 = 40;
    for seq in 1..=LIVE {
        c.publish(
            format!("{prefix}/{dev}/verdict"),
            QoS::AtLeastOnce,
            false,
            verdict(&dev, seq),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(25));
    }
    let collect = |rx: &std::sync::mpsc::Receiver<(u64, Instant)>| {
        let mut got = std::collections::BTreeMap::new();
        let t0 = Instant::now();
        while (got.len() as u64) < LIVE && t0.elapsed() < Duration::from_secs(20) {
            if let Ok((seq, at)) = rx.recv_timeout(Duration::from_millis(200)) {
                got.insert(seq, at);
            }
        }
        got
    };
    let (ga, gb) = (collect(&live_a), collect(&live_b));
    let (da, db_) = (stored(&web_a) - sa0, stored(&web_b) - sb0);
    assert_eq!(da + db_, LIVE, "each verdict stored by one instance");
    assert!(
        da > 0 && db_ > 0,
        "the broker gave both some: A {da}, B {db_}"
    );
    assert_eq!(
        ga.keys().copied().collect::<Vec<_>>(),
        (1..=LIVE).collect::<Vec<_>>(),
        "A's live page"
    );
    assert_eq!(
        gb.keys().copied().collect::<Vec<_>>(),
        (1..=LIVE).collect::<Vec<_>>(),
        "B's live page"
    );
    // The delay between the two pages showing one verdict: the other instance's is the
    // notification's path (commit, NOTIFY, the follower's read).
    let mut d: Vec<f64> = (1..=LIVE)
        .map(|s| {
            let (a, b) = (ga[&s], gb[&s]);
            if a > b { a - b } else { b - a }.as_secs_f64() * 1000.0
        })
        .collect();
    d.sort_by(f64::total_cmp);
    eprintln!(
        "live page on the other instance: +{:.1} ms median, {:.1} ms max ({LIVE} verdicts, A stored {da}, B {db_})",
        d[d.len() / 2],
        d[d.len() - 1]
    );
    eprintln!("failover test: {:.1} s", t_start.elapsed().as_secs_f64());
}
