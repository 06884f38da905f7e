//! The plant supervisor end to end: a real broker, real daemons (`inspectd run` on the samples),
//! the supervisor process, and headless Chromium driven over the DevTools protocol. Also:
//! redeliveries stored once, malformed messages counted and dropped, history kept across a
//! supervisor restart, and a broker restart survived.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{broker, replay_config, root, tmp};
use rumqttc::{Client, MqttOptions, QoS};
use serde_json::{json, Value};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_inspectd"))
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    common::free_port()
}

/// The topic prefix of one test: tests sharing a broker (`INSPECTD_TEST_BROKER`) stay apart.
fn prefix(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

/// Starts `inspectd-supervisor` and waits for its web UI.
fn supervisor(host: &str, port: u16, db: &Path, tag: &str) -> (Proc, String) {
    let web = format!("127.0.0.1:{}", free_port());
    let child = Command::new(common::supervisor_bin())
        .args([
            "--broker",
            &format!("mqtt://{host}:{port}"),
            "--listen",
            &web,
        ])
        .arg("--db")
        .arg(db)
        .args(["--prefix", &prefix(tag)])
        .args([
            "--client-id",
            &format!("supervisor-{tag}-{}", std::process::id()),
        ])
        .env("INSPECTD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_for(Duration::from_secs(20), "the supervisor's web UI", || {
        get(&web, "/api/stats")
            .ok()
            .filter(|s| s["connected"] == true)
    });
    (p, web)
}

/// `inspectd run` on the samples as `device`.
fn daemon(device: &str, host: &str, port: u16, dir: &Path, rules: &str, prefix: &str) -> Proc {
    let cfg = dir.join(format!(
        "{}.toml",
        device.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    std::fs::write(
        &cfg,
        replay_config(
            device,
            4,
            &format!("url = \"mqtt://{host}:{port}\"\nprefix = \"{prefix}\"\nkeep_alive_s = 2"),
            &cfg.with_extension("redb"),
            &format!("[verdict]\ndefect_threshold = 0.5\n{rules}"),
        ),
    )
    .unwrap();
    let child = bin()
        .arg("run")
        .arg("-c")
        .arg(&cfg)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

/// `inspectd broker` (embedded rumqttd) in a process of its own, listening on `port`.
fn broker_process(port: u16) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let p = Proc(
        bin()
            .args(["broker", "--listen", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    inspectd::broker::wait_listening(listen.parse().unwrap(), Duration::from_secs(10)).unwrap();
    p
}

/// The broker named by the environment, or one of our own in its own process (an in-process
/// rumqttd beside other tests' brokers once missed a keep-alive and once a subscription here).
fn test_broker() -> (Option<Proc>, String, u16) {
    if std::env::var("INSPECTD_TEST_BROKER").is_ok() {
        let (h, p) = broker();
        return (None, h, p);
    }
    let port = free_port();
    (Some(broker_process(port)), "127.0.0.1".into(), port)
}

/// GET on the supervisor (HTTP/1.0, one request per connection).
fn get(addr: &str, path: &str) -> anyhow::Result<Value> {
    inspectd_supervisor::loadgen::get_json(addr, path)
}

fn get_text(addr: &str, path: &str) -> (u16, String) {
    let (code, _, body) = http(addr, "GET", path, &[], "");
    (code, body)
}

/// One HTTP/1.0 request: (status, head, body). `headers` are whole lines; a body is a form.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    (
        head[9..12].parse().unwrap(),
        head.to_string(),
        body.to_string(),
    )
}

fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mqtt(host: &str, port: u16, id: &str) -> Client {
    let mut o = MqttOptions::new(format!("{id}-{}", std::process::id()), host, port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(8 << 20, 8 << 20);
    let (c, mut conn) = Client::new(o, 100);
    // Reconnects for a while (the broker-restart test), then gives up.
    std::thread::spawn(move || {
        let mut errors = 0;
        for ev in conn.iter() {
            if ev.is_err() {
                errors += 1;
                if errors > 100 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    c
}

fn verdict(device: &str, seq: u64, kind: &str, label: &str) -> Vec<u8> {
    let reasons = if kind == "suspect" {
        json!([{"code": "marginal", "text": format!("{label} is marginal")}])
    } else {
        json!([])
    };
    json!({"schema": "inspect.verdict/1", "device": device, "seq": seq, "ts": inspectd_contract::timefmt::now(), "part_id": format!("P-{seq}"),
           "verdict": kind, "label": label, "confidence": 0.6, "reasons": reasons, "model": {"name": "m"}})
    .to_string()
    .into_bytes()
}

// ---- a minimal DevTools protocol client -------------------------------------------------

struct Browser {
    _proc: Proc,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        let chromium = std::env::var("INSPECTD_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let child = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {chromium} (Debian's chromium package): {e}"));
        let proc = Proc(child);
        let port: u16 = wait_for(
            Duration::from_secs(30),
            "chromium's DevToolsActivePort",
            || {
                let f = std::fs::File::open(profile.join("DevToolsActivePort")).ok()?;
                BufReader::new(f).lines().next()?.ok()?.trim().parse().ok()
            },
        );
        let addr = format!("127.0.0.1:{port}");
        let ws_url = wait_for(Duration::from_secs(20), "a chromium page target", || {
            // Chromium keeps the connection open: read the headers, then Content-Length bytes.
            let mut s = TcpStream::connect(&addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET /json/list HTTP/1.1\r\nHost: {addr}\r\n\r\n").ok()?;
            let mut r = BufReader::new(s);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).ok()?;
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().ok()?;
                    }
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).ok()?;
            let list: Value = serde_json::from_slice(&body).ok()?;
            list.as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
        });
        let (ws, _) = tungstenite::connect(ws_url.as_str()).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Browser {
            _proc: proc,
            ws,
            next: 0,
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        self.ws
            .send(tungstenite::Message::Text(
                json!({"id": id, "method": method, "params": params})
                    .to_string()
                    .into(),
            ))
            .unwrap();
        loop {
            if let tungstenite::Message::Text(t) = self.ws.read().unwrap() {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    return match v.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(v["result"].clone()),
                    };
                }
            }
        }
    }

    fn goto(&mut self, url: &str) {
        eprintln!("browser: {url}");
        self.call("Page.navigate", json!({"url": url}));
        self.wait_true(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        );
    }

    fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// Fails while a navigation replaces the page, or when the expression throws.
    fn try_eval(&mut self, expr: &str) -> Result<Value, Value> {
        let r = self.try_call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        )?;
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    fn wait_true(&mut self, expr: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.try_eval(expr).is_ok_and(|v| v == true) {
                return t0.elapsed();
            }
            if t0.elapsed() >= timeout {
                let diag = self.try_eval("JSON.stringify({url: location.href, title: document.title, state: document.readyState, pushed: document.body.dataset.pushed, conn: (document.getElementById('conn') || {}).className, fleet: (document.getElementById('fleet') || {}).innerText})");
                panic!("the page never satisfied `{expr}` within {timeout:?}; page: {diag:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

fn artifacts() -> PathBuf {
    let d = root().join("target/supervisor-e2e");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_dashboard_shows_the_fleet_live_verdicts_alerts_and_a_dead_box_in_a_real_browser() {
    let (_own_broker, host, port) = test_broker();
    let dir = tmp("sup", "e2e");
    let pid = std::process::id();
    let (a, b) = (format!("line1-{pid}"), format!("line2-{pid}"));
    let (_sup, web) = supervisor(&host, port, &dir.join("sup.sqlite"), "e2e");
    // Line 1 calls every confidence under 0.999 marginal: suspect verdicts and alerts.
    let _da = daemon(
        &a,
        &host,
        port,
        &dir,
        "suspect_band = [0.5, 0.999]",
        &prefix("e2e"),
    );
    let mut db = daemon(&b, &host, port, &dir, "", &prefix("e2e"));
    // Both online with verdicts stored, and a suspect alert.
    wait_for(
        Duration::from_secs(90),
        "both daemons online with verdicts",
        || {
            let fleet = get(&web, "/api/fleet").ok()?;
            let online = |d: &str| {
                fleet
                    .as_array()?
                    .iter()
                    .find(|r| r["device"] == d)
                    .map(|r| r["state"] == "online" && r["inspected_1h"].as_i64() >= Some(4))
            };
            let stats = get(&web, "/api/stats").ok()?;
            (online(&a)?
                && online(&b)?
                && stats["rows"]["open_alerts"].as_i64()? >= 1
                && stats["rows"]["evidence"].as_i64()? >= 2)
                .then_some(())
        },
    );
    // Hostile strings from a box: the device id and the label carry markup and script.
    // (A topic level cannot hold a `/`, so the device id's script tag stays open: unescaped, it
    // would swallow the rest of the page.)
    let evil_dev = format!("<script>window.__xss=1;<b onclick=x>{pid}");
    let evil_label = "<img src=x onerror=\"window.__xss=2\"><script>window.__xss=3</script>";
    let c = mqtt(&host, port, "evil");
    c.publish(
        format!("{}/{evil_dev}/verdict", prefix("e2e")),
        QoS::AtLeastOnce,
        false,
        verdict(&evil_dev, 1, "suspect", evil_label),
    )
    .unwrap();
    c.publish(format!("{}/{evil_dev}/alert", prefix("e2e")), QoS::AtLeastOnce, false,
        json!({"schema": "inspect.alert/1", "device": evil_dev, "ts": inspectd_contract::timefmt::now(), "kind": "suspect", "severity": "warning",
               "message": evil_label, "seq": 1}).to_string()).unwrap();
    wait_for(
        Duration::from_secs(20),
        "the hostile verdict stored",
        || {
            get_text(
                &web,
                &format!(
                    "/history?device={}",
                    inspectd_supervisor::web::enc(&evil_dev)
                ),
            )
            .1
            .contains("&lt;img src=x")
            .then_some(())
        },
    );

    let mut br = Browser::start(&dir.join("chromium"));
    let out = artifacts();
    let url = |p: &str| format!("http://{web}{p}");

    // Fleet: both boxes online, with model, fps and rates.
    br.goto(&url("/"));
    let both = format!(
        "['{a}', '{b}'].every(d => {{ const r = document.querySelector(`tr.device[data-device='${{d}}']`); return r && r.dataset.state === 'online'; }})"
    );
    br.wait_true(&both, Duration::from_secs(30));
    assert_eq!(br.eval(&format!("document.querySelector(\"tr.device[data-device='{a}']\").innerText.includes('surface-defect')")), true);
    br.screenshot(&out.join("fleet.png"));

    // Live: rows with pictures that loaded, and rows pushed by the server without a reload.
    br.goto(&url("/live"));
    br.eval("window.__same_page = 1");
    br.wait_true(
        "Number(document.body.dataset.pushed || 0) >= 3 && window.__same_page === 1",
        Duration::from_secs(20),
    );
    br.wait_true(
        "[...document.querySelectorAll('#live tr.verdict img.evidence')].filter(i => i.complete && i.naturalWidth > 0).length >= 2",
        Duration::from_secs(20),
    );
    let kinds = br.eval("[...document.querySelectorAll('#live tr.verdict')].map(r => r.className)");
    let kinds = kinds.as_array().unwrap();
    assert!(
        kinds
            .iter()
            .all(|k| k.as_str().unwrap().starts_with("verdict v-")),
        "{kinds:?}"
    );
    // Every defect or suspect row from the boxes shows its picture and confidence; suspect rows
    // their reasons.
    assert_eq!(br.eval("[...document.querySelectorAll('#live tr.v-defect, #live tr.v-suspect')].filter(r => r.dataset.device.startsWith('line')).every(r => r.querySelector('img.evidence') && /0\\.\\d{3}|1\\.000/.test(r.innerText))"), true);
    assert_eq!(br.eval("[...document.querySelectorAll('#live tr.v-suspect')].every(r => r.querySelectorAll('ul.reasons li').length > 0)"), true);
    br.screenshot(&out.join("live.png"));

    // Alerts: a suspect alert from line 1, highlighted, with its evidence.
    br.goto(&url("/alerts"));
    br.wait_true(&format!("[...document.querySelectorAll('#alerts tr.alert.kind-suspect')].some(r => r.dataset.device === '{a}' && r.querySelector('img.evidence'))"), Duration::from_secs(30));
    br.screenshot(&out.join("alerts.png"));
    // Acknowledge the newest open alert as "Dana": it moves to the acknowledged list with the
    // name and time, and the count of open alerts drops.
    let id = br.eval("const f = document.querySelector('#alerts form.ack'); f.querySelector('input[name=by]').value = 'Dana'; const id = f.closest('tr').dataset.id; f.submit(); id");
    let id = id.as_str().unwrap().to_string();
    br.wait_true(
        &format!("document.readyState === 'complete' && [...document.querySelectorAll('table.done tr.alert')].some(r => r.dataset.id === '{id}' && r.innerText.includes('acknowledged by Dana'))
                  && !document.querySelector(\"#alerts tr.alert[data-id='{id}']\")"),
        Duration::from_secs(30),
    );

    // The hostile strings are shown as text and never run, on every page that shows them.
    for page in [
        "/",
        "/live",
        "/alerts",
        &format!(
            "/history?device={}",
            inspectd_supervisor::web::enc(&evil_dev)
        ),
    ] {
        br.goto(&url(page));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            br.eval("typeof window.__xss"),
            "undefined",
            "script ran on {page}"
        );
        assert_eq!(
            br.eval("document.querySelectorAll('img[src=\"x\"], img[src$=\"/x\"]').length"),
            0,
            "{page}"
        );
    }
    assert_eq!(
        br.eval(&format!(
            "document.body.innerText.includes({})",
            json!(evil_label)
        )),
        true
    );
    assert_eq!(
        br.eval(&format!(
            "document.body.innerText.includes({})",
            json!(evil_dev)
        )),
        true
    );

    // A command from the UI: pause line 2, see the device's result, then resume.
    br.goto(&url(&format!("/device/{b}")));
    br.eval("document.querySelector('select[name=command]').value = 'pause'; document.querySelector('form.command').submit(); 1");
    br.wait_true(
        "document.readyState === 'complete' && !!document.querySelector('#commands tr.command')",
        Duration::from_secs(30),
    );
    br.wait_true(
        "document.querySelector('#commands tr.command td.result').innerText.includes('paused')",
        Duration::from_secs(30),
    );
    br.screenshot(&out.join("device.png"));
    wait_for(Duration::from_secs(30), "line 2 shown paused", || {
        get(&web, "/api/fleet")
            .ok()?
            .as_array()?
            .iter()
            .find(|r| r["device"] == b.as_str())
            .filter(|r| r["paused"] == true)
            .map(|_| ())
    });
    br.eval("document.querySelector('select[name=command]').value = 'resume'; document.querySelector('form.command').submit(); 1");
    br.wait_true("document.readyState === 'complete' && [...document.querySelectorAll('#commands td.result')].some(t => t.innerText.includes('resumed'))", Duration::from_secs(30));

    // Freeze line 2 (SIGSTOP: its socket stays open but silent, like a box whose network
    // vanished): the broker gives up after 1.5 × its keep-alive of 2 s and sends the last will;
    // the fleet page turns it offline without a reload.
    br.goto(&url("/"));
    br.eval("window.__same_page = 1");
    // An observer of line 2's status notes when the broker sends the will.
    let will_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    {
        let mut o = MqttOptions::new(format!("will-watch-{pid}"), host.as_str(), port);
        o.set_keep_alive(Duration::from_secs(5));
        let (c, mut conn) = Client::new(o, 10);
        c.subscribe(format!("{}/{b}/status", prefix("e2e")), QoS::AtLeastOnce)
            .unwrap();
        let will_at = will_at.clone();
        std::thread::spawn(move || {
            let _keep = c;
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if v["state"] == "offline" {
                            *will_at.lock().unwrap() = Some(Instant::now());
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let frozen_at = Instant::now();
    let frozen = Command::new("kill")
        .args(["-STOP", &db.0.id().to_string()])
        .status()
        .unwrap();
    assert!(frozen.success());
    // First the broker's part (it once never came on a loaded CI machine: say whose fault).
    wait_for(
        Duration::from_secs(15),
        "the broker to send the frozen line 2's will (keep-alive 2 s)",
        || will_at.lock().unwrap().map(|_| ()),
    );
    br.wait_true(
        &format!("document.querySelector(\"tr.device[data-device='{b}']\").dataset.state === 'offline' && window.__same_page === 1"),
        Duration::from_secs(30),
    );
    let shown = frozen_at.elapsed();
    let will = will_at
        .lock()
        .unwrap()
        .expect("the broker sent line 2's will")
        .duration_since(frozen_at);
    // The broker sends the will after 1.5 × the keep-alive of 2 s (rumqttd at ~3.2 s; Mosquitto
    // checks coarsely: 3.5 to 8 s here). The supervisor's part is from the will to the page.
    assert!(
        will < Duration::from_secs(12),
        "the broker sent the will {will:?} after the freeze"
    );
    assert!(
        shown - will < Duration::from_millis(2500),
        "the will came {will:?} after the freeze, the page showed offline at {shown:?}"
    );
    let _ = db.0.kill();
    let _ = db.0.wait();
    assert_eq!(
        br.eval(&format!(
            "document.querySelector(\"tr.device[data-device='{a}']\").dataset.state"
        )),
        "online"
    );
    // The lost box tops the fleet, and the supervisor raised a critical device_offline alert.
    br.wait_true(
        &format!("document.querySelector('tr.device').dataset.device === '{b}'"),
        Duration::from_secs(10),
    );
    wait_for(
        Duration::from_secs(10),
        "line 2's device_offline alert",
        || {
            get_text(&web, &format!("/alerts?device={b}&kind=device_offline"))
                .1
                .contains("class=\"alert group kind-device_offline sev-critical\"")
                .then_some(())
        },
    );
    br.screenshot(&out.join("fleet-offline.png"));
    eprintln!(
        "line 2 froze; its will came after {will:?}, the page showed it offline after {shown:?}; screenshots in {}",
        out.display()
    );

    // History and CSV export, filtered.
    let (code, csv) = get_text(&web, &format!("/history.csv?device={a}&verdict=suspect"));
    assert_eq!(code, 200);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("device,seq,ts,part_id,verdict,label,confidence,reasons,model,latency_ms")
    );
    let rows: Vec<&str> = lines.collect();
    assert!(
        !rows.is_empty()
            && rows
                .iter()
                .all(|r| r.starts_with(&format!("{a},")) && r.contains(",suspect,")),
        "{csv}"
    );
}

#[test]
fn a_killed_box_raises_a_critical_alert_and_tops_the_fleet_and_a_clean_stop_does_not() {
    let (_own_broker, host, port) = test_broker();
    let dir = tmp("sup", "gone");
    let pid = std::process::id();
    let (a, b) = (format!("killed-{pid}"), format!("stopped-{pid}"));
    let (_sup, web) = supervisor(&host, port, &dir.join("sup.sqlite"), "gone");
    let mut da = daemon(&a, &host, port, &dir, "", &prefix("gone"));
    let mut db = daemon(&b, &host, port, &dir, "", &prefix("gone"));
    let fleet = |w: &str| {
        get(w, "/api/fleet")
            .ok()
            .and_then(|f| f.as_array().cloned())
    };
    let state_of = |f: &[Value], d: &str| {
        f.iter()
            .find(|r| r["device"] == d)
            .map(|r| r["state"].as_str().unwrap_or("").to_string())
    };
    wait_for(Duration::from_secs(90), "both boxes online", || {
        let f = fleet(&web)?;
        (state_of(&f, &a)? == "online" && state_of(&f, &b)? == "online").then_some(())
    });
    let alerts_of = |d: &str| get_text(&web, &format!("/alerts?device={d}")).1;
    assert!(!alerts_of(&a).contains("kind-device_offline"));

    // SIGKILL: the broker sends the box's last will.
    let _ = da.0.kill();
    let _ = da.0.wait();
    wait_for(
        Duration::from_secs(20),
        "the killed box offline, on top",
        || {
            let f = fleet(&web)?;
            (f.first()?["device"] == a.as_str() && f[0]["state"] == "offline").then_some(())
        },
    );
    let page = wait_for(Duration::from_secs(10), "a device_offline alert", || {
        let p = alerts_of(&a);
        p.contains("kind-device_offline").then_some(p)
    });
    assert!(page.contains("sev-critical"), "{page}");
    assert_eq!(page.matches("kind-device_offline").count(), 1, "{page}");

    // A clean stop (SIGTERM): `stopped`, and no alert.
    let term = Command::new("kill")
        .args(["-TERM", &db.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    wait_for(
        Duration::from_secs(30),
        "the stopped box shown stopped",
        || (state_of(&fleet(&web)?, &b)? == "stopped").then_some(()),
    );
    wait_for(Duration::from_secs(30), "the daemon's exit", || {
        db.0.try_wait().ok().flatten()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state_of(&fleet(&web).unwrap(), &b).unwrap(), "stopped");
    let page = alerts_of(&b);
    assert!(!page.contains("kind-device_offline"), "{page}");
    // Still one alert for the killed box: its will is not counted twice.
    assert_eq!(alerts_of(&a).matches("kind-device_offline").count(), 1);
}

#[test]
fn when_the_supervisor_loses_the_broker_every_page_says_so_and_states_turn_unknown() {
    // A broker of our own: this test stops it.
    let port = free_port();
    let broker = broker_process(port);
    let host = "127.0.0.1";
    let dir = tmp("sup", "blind");
    let dev = format!("blind-{}", std::process::id());
    let (_sup, web) = supervisor(host, port, &dir.join("sup.sqlite"), "blind");
    let c = mqtt(host, port, "blind-pub");
    c.publish(
        format!("{}/{dev}/status", prefix("blind")),
        QoS::AtLeastOnce,
        false,
        json!({"schema": "inspect.status/1", "state": "online", "ts": inspectd_contract::timefmt::now()})
            .to_string(),
    )
    .unwrap();
    wait_for(Duration::from_secs(20), "the box online", || {
        let f = get(&web, "/api/fleet").ok()?;
        (f[0]["state"] == "online").then_some(())
    });
    let mut br = Browser::start(&dir.join("chromium"));
    let out = artifacts();
    br.goto(&format!("http://{web}/"));
    br.wait_true(
        "document.getElementById('conn').className === 'conn up' && document.getElementById('link-banner').hidden",
        Duration::from_secs(20),
    );
    let t0 = Instant::now();
    drop(broker);
    br.wait_true(
        "!document.getElementById('link-banner').hidden && document.getElementById('link-banner').innerText.includes('supervisor lost the broker since')",
        Duration::from_secs(5),
    );
    let shown = t0.elapsed();
    assert!(shown < Duration::from_secs(5), "banner after {shown:?}");
    assert_eq!(
        br.eval("document.getElementById('conn').className"),
        "conn half"
    );
    br.wait_true(
        &format!("document.querySelector(\"tr.device[data-device='{dev}']\").dataset.state === 'unknown' && document.querySelector(\"tr.device[data-device='{dev}']\").innerText.includes('since')"),
        Duration::from_secs(5),
    );
    br.screenshot(&out.join("fleet-broker-lost.png"));
    // Another page, rendered while the broker is gone: the banner too.
    br.goto(&format!("http://{web}/alerts"));
    br.wait_true(
        "!document.getElementById('link-banner').hidden",
        Duration::from_secs(5),
    );
    br.screenshot(&out.join("alerts-broker-lost.png"));
    // The broker back: the banner goes.
    let _broker = broker_process(port);
    br.wait_true(
        "document.getElementById('link-banner').hidden && document.getElementById('conn').className === 'conn up'",
        Duration::from_secs(30),
    );
}

type Running = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    String,
);

/// The supervisor in-process on a fresh database.
async fn start(host: &str, port: u16, db: &Path, tag: &str) -> Running {
    start_with(host, port, db, tag, None).await
}

/// The same, with logins: the users file and the `Authorization` header line to wait with.
async fn start_with(
    host: &str,
    port: u16,
    db: &Path,
    tag: &str,
    login: Option<(PathBuf, String)>,
) -> Running {
    let (users_file, auth) = match login {
        Some((f, a)) => (Some(f), Some(a)),
        None => (None, None),
    };
    let args = inspectd_supervisor::SuperviseArgs {
        broker: format!("mqtt://{host}:{port}"),
        listen: "127.0.0.1:0".into(),
        users_file,
        allow_anonymous_ui: false,
        db: db.to_path_buf(),
        prefix: prefix(tag),
        client_id: format!("sup-{tag}-{}", std::process::id()),
        username: None,
        password_file: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
        allow_insecure: false,
        retain_days: 30,
        max_verdicts: 1_000_000,
        stale_after_s: 30,
        db_password_file: None,
        share_group: None,
        evidence_dir: None,
    };
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let (btx, brx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(inspectd_supervisor::serve(
        args,
        async {
            let _ = rx.await;
        },
        Some(btx),
    ));
    let addr = brx.await.unwrap().to_string();
    let a = addr.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(20), "the broker connection", || {
            let h: Vec<&str> = auth.iter().map(String::as_str).collect();
            let (code, _, body) = http(&a, "GET", "/api/stats", &h, "");
            let s: Value = serde_json::from_str(&body).ok()?;
            (code == 200 && s["connected"] == true).then_some(s)
        })
    })
    .await
    .unwrap();
    (stop, task, addr)
}

async fn stats_when(
    addr: &str,
    what: &'static str,
    f: impl Fn(&Value) -> bool + Send + 'static,
) -> Value {
    let a = addr.to_string();
    tokio::task::spawn_blocking(move || {
        let mut last = Value::Null;
        let t0 = Instant::now();
        loop {
            if let Ok(s) = get(&a, "/api/stats") {
                if f(&s) {
                    return s;
                }
                last = s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}; last stats: {last}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap()
}

#[test]
fn redeliveries_are_stored_once_malformed_messages_are_counted_and_history_survives_a_restart() {
    let dir = tmp("sup", "dedupe");
    redeliveries_and_malformed_messages(dir.join("sup.sqlite"), "dedupe");
}

/// The same on PostgreSQL (a throwaway cluster of this test process).
#[test]
fn on_postgresql_redeliveries_are_stored_once_malformed_messages_are_counted_and_history_survives_a_restart(
) {
    let url = inspectd_supervisor::pgtest::cluster().create_db("sup_dedupe");
    redeliveries_and_malformed_messages(PathBuf::from(url), "dedupepg");
}

fn redeliveries_and_malformed_messages(db: PathBuf, tag: &'static str) {
    let (_own_broker, host, port) = test_broker();
    let dev = format!("dup-{tag}-{}", std::process::id());
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,rumqttd=off")
        .with_test_writer()
        .try_init();
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (stop, task, web) = start(&host, port, &db, tag).await;
        let c = mqtt(&host, port, &format!("{tag}-pub"));
        let p = prefix(tag);
        let t = format!("{p}/{dev}/verdict");
        // Seq 1 three times (a redelivery storm: the same bytes), seq 2 once: two verdicts.
        let (one, two) = (
            verdict(&dev, 1, "defect", "scratch"),
            verdict(&dev, 2, "defect", "scratch"),
        );
        for p in [&one, &one, &two, &one] {
            c.publish(&t, QoS::AtLeastOnce, false, p.clone()).unwrap();
        }
        // Malformed: bad JSON, wrong schema, a spoofed device, an unknown kind, a huge payload,
        // an evidence that is not a JPEG. None may stop the next good message.
        let bad: Vec<(String, Vec<u8>)> = vec![
            (t.clone(), b"{\"schema\": \"inspect.verdict/1\", ".to_vec()),
            (
                t.clone(),
                json!({"schema": "inspect.verdict/1", "device": dev, "seq": "three"})
                    .to_string()
                    .into_bytes(),
            ),
            (t.clone(), verdict("someone-else", 9, "ok", "ok")),
            (format!("{p}/{dev}/firmware"), b"{}".to_vec()),
            (t.clone(), vec![b'{'; 3 << 20]),
            (format!("{p}/{dev}/evidence/1"), b"<html>".to_vec()),
        ];
        for (topic, p) in bad {
            c.publish(topic, QoS::AtLeastOnce, false, p).unwrap();
        }
        c.publish(
            &t,
            QoS::AtLeastOnce,
            false,
            verdict(&dev, 3, "suspect", "dent"),
        )
        .unwrap();
        let s = stats_when(&web, "3 verdicts and 6 drops", |s| {
            s["rows"]["verdicts"] == 3
                && s["dropped"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|v| v.as_u64().unwrap())
                    .sum::<u64>()
                    == 6
        })
        .await;
        assert_eq!(s["duplicates"]["verdict"], 2, "{s}");
        assert_eq!(
            s["dropped"],
            json!({"bad_json": 1, "bad_schema": 3, "bad_topic": 1, "too_large": 1}),
            "{s}"
        );
        let (code, metrics) = tokio::task::spawn_blocking({
            let w = web.clone();
            move || get_text(&w, "/metrics")
        })
        .await
        .unwrap();
        assert_eq!(code, 200);
        for line in [
            "inspectd_supervisor_duplicates_total{kind=\"verdict\"} 2",
            "inspectd_supervisor_dropped_total{reason=\"too_large\"} 1",
            "inspectd_supervisor_rows{table=\"verdicts\"} 3",
        ] {
            assert!(metrics.contains(line), "{line} missing from\n{metrics}");
        }
        assert!(metrics.contains("inspectd_supervisor_db_bytes "));
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();

        // Restarted on the same database: the history is there, and seq 2 once more is a
        // duplicate. (The broker may also replay the old session's messages: all duplicates.)
        let (stop, task, web) = start(&host, port, &db, tag).await;
        c.publish(&t, QoS::AtLeastOnce, false, two).unwrap();
        c.publish(&t, QoS::AtLeastOnce, false, verdict(&dev, 4, "ok", "ok"))
            .unwrap();
        stats_when(&web, "the fourth verdict and the duplicate", |s| {
            s["rows"]["verdicts"] == 4 && s["duplicates"]["verdict"].as_u64() >= Some(1)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = stats_when(&web, "stats", |_| true).await;
        assert_eq!(s["rows"]["verdicts"], 4, "{s}");
        let (_, page) = tokio::task::spawn_blocking({
            let w = web.clone();
            let d = dev.clone();
            move || get_text(&w, &format!("/history?device={d}"))
        })
        .await
        .unwrap();
        assert_eq!(page.matches("<tr class=\"verdict").count(), 4, "{page}");
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    });
}

/// Issue #13 item 7: verdicts with other content under a stored seq were dropped as
/// duplicates, and seq gaps were never shown.
#[test]
fn a_conflicting_redelivery_is_kept_and_alerted_and_seq_gaps_show_until_filled() {
    let (_own_broker, host, port) = test_broker();
    let dir = tmp("sup", "integrity");
    let dev = format!("int-{}", std::process::id());
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (stop, task, web) = start(&host, port, &dir.join("sup.sqlite"), "integrity").await;
        let c = mqtt(&host, port, "integrity-pub");
        let t = format!("{}/{dev}/verdict", prefix("integrity"));
        let first = verdict(&dev, 1, "ok", "ok");
        let other = verdict(&dev, 1, "defect", "scratch");
        // Seq 1, the same bytes again (a redelivery), other content twice (one conflict and its
        // redelivery), then seqs 2 and 5: 3 and 4 are missing.
        for p in [
            first.clone(),
            first,
            other.clone(),
            other,
            verdict(&dev, 2, "ok", "ok"),
            verdict(&dev, 5, "ok", "ok"),
        ] {
            c.publish(&t, QoS::AtLeastOnce, false, p).unwrap();
        }
        let s = stats_when(&web, "3 verdicts and a conflict", |s| {
            s["rows"]["verdicts"] == 3 && s["conflicts"] == 1
        })
        .await;
        assert_eq!(s["duplicates"]["verdict"], 2, "{s}");
        let get_at = |path: String| {
            let w = web.clone();
            tokio::task::spawn_blocking(move || get_text(&w, &path))
        };
        let (code, page) = get_at(format!("/device/{dev}")).await.unwrap();
        assert_eq!(code, 200);
        for want in [
            "data-seq-missing=\"2\"",
            "seq 3–4 (2 missing",
            "data-conflicts=\"1\"",
            "data-parts-1h=\"3\"",
            "<tr class=\"conflict\" data-seq=\"1\">",
        ] {
            assert!(
                page.contains(want),
                "{want} missing from the device page:\n{page}"
            );
        }
        let (_, metrics) = get_at("/metrics".into()).await.unwrap();
        for want in [
            format!("inspectd_supervisor_seq_missing{{device=\"{dev}\"}} 2"),
            "inspectd_supervisor_seq_conflicts_total 1".into(),
            "inspectd_supervisor_rows{table=\"conflicts\"} 1".into(),
            "inspectd_supervisor_duplicates_total{kind=\"verdict\"} 2".into(),
        ] {
            assert!(metrics.contains(&want), "{want} missing from\n{metrics}");
        }
        let (_, alerts) = get_at(format!("/alerts?device={dev}")).await.unwrap();
        assert_eq!(alerts.matches("kind-seq_conflict").count(), 1, "{alerts}");
        assert!(alerts.contains("sev-warning"), "{alerts}");
        // The fleet's parts (1 h) are the verdicts stored.
        let fleet = get(&web, "/api/fleet").unwrap();
        assert_eq!(fleet[0]["inspected_1h"], 3, "{fleet}");

        // The missing ones arrive late (a spool resend), out of order: no gap left.
        for seq in [4, 3] {
            c.publish(&t, QoS::AtLeastOnce, false, verdict(&dev, seq, "ok", "ok"))
                .unwrap();
        }
        stats_when(&web, "5 verdicts", |s| s["rows"]["verdicts"] == 5).await;
        let (_, page) = get_at(format!("/device/{dev}")).await.unwrap();
        assert!(page.contains("data-seq-missing=\"0\""), "{page}");
        let (_, metrics) = get_at("/metrics".into()).await.unwrap();
        let want = format!("inspectd_supervisor_seq_missing{{device=\"{dev}\"}} 0");
        assert!(metrics.contains(&want), "{want} missing from\n{metrics}");
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    });
}

#[test]
fn the_supervisor_resubscribes_after_a_broker_restart() {
    // A broker process of our own, killed and started again on the same port.
    let port = free_port();
    let start_broker = || broker_process(port);
    let dir = tmp("sup", "restart");
    let dev = format!("rs-{}", std::process::id());
    let t = format!("{}/{dev}/verdict", prefix("restart"));
    let rt = inspectd_contract::client::runtime().unwrap();
    let mut brk = Some(start_broker());
    rt.block_on(async {
        let (stop, task, web) = start("127.0.0.1", port, &dir.join("sup.sqlite"), "restart").await;
        let c = mqtt("127.0.0.1", port, "restart-pub-1");
        c.publish(&t, QoS::AtLeastOnce, false, verdict(&dev, 1, "ok", "ok"))
            .unwrap();
        stats_when(&web, "the first verdict", |s| s["rows"]["verdicts"] == 1).await;
        brk = None;
        stats_when(&web, "the supervisor to notice", |s| {
            s["connected"] == false
        })
        .await;
        brk = Some(start_broker());
        // The broker forgot every session: the supervisor must subscribe again by itself.
        stats_when(&web, "the supervisor back", |s| s["connected"] == true).await;
        let c = mqtt("127.0.0.1", port, "restart-pub-2");
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.publish(&t, QoS::AtLeastOnce, false, verdict(&dev, 2, "ok", "ok"))
            .unwrap();
        stats_when(&web, "the verdict after the restart", |s| {
            s["rows"]["verdicts"] == 2
        })
        .await;
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    });
    drop(brk);
}

/// One server-sent event: (event, id, data).
type Sse = (String, String, String);

/// Reads `/events` (with `?after=` in `path` and/or a `Last-Event-ID`) until `done` holds.
fn sse_until(
    addr: &str,
    path: &str,
    last_id: Option<&str>,
    done: impl Fn(&[Sse]) -> bool,
) -> Vec<Sse> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let last = last_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{last}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // The head.
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim_end().is_empty() {
            break;
        }
    }
    let mut got: Vec<Sse> = Vec::new();
    let mut ev = (String::new(), String::new(), String::new());
    while !done(&got) {
        line.clear();
        let n = r
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{path}: {e}; events so far: {got:?}"));
        assert!(n > 0, "{path}: the stream ended; events so far: {got:?}");
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            // Every stream begins with the supervisor's broker link state (`link`): not a row.
            if !ev.0.is_empty() && ev.0 != "link" {
                got.push(std::mem::take(&mut ev));
            }
            ev = Default::default();
        } else if let Some(v) = l.strip_prefix("event:") {
            ev.0 = v.trim().into();
        } else if let Some(v) = l.strip_prefix("id:") {
            ev.1 = v.trim().into();
        } else if let Some(v) = l.strip_prefix("data:") {
            ev.2.push_str(v.trim_start());
        }
    }
    got
}

/// The verdict rows among `events`, as their seq numbers.
fn seqs(events: &[Sse]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.0 == "verdict")
        .map(|e| {
            let at = e.2.find("data-seq=\"").unwrap() + 10;
            e.2[at..at + e.2[at..].find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

#[test]
fn a_live_page_gets_what_arrived_after_it_was_rendered_and_a_reconnect_what_it_missed() {
    let (_own_broker, host, port) = test_broker();
    let dir = tmp("sup", "catchup");
    let db = dir.join("sup.sqlite");
    let dev = format!("cu-{}", std::process::id());
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (stop, task, web) = start(&host, port, &db, "catchup").await;
        let c = mqtt(&host, port, "catchup-pub");
        let p = prefix("catchup");
        let t = format!("{p}/{dev}/verdict");
        let publish = |seq: u64, kind: &str| {
            c.publish(&t, QoS::AtLeastOnce, false, verdict(&dev, seq, kind, "dent"))
                .unwrap()
        };
        publish(1, "ok");
        stats_when(&web, "the first verdict", |s| s["rows"]["verdicts"] == 1).await;
        let w = web.clone();
        let d = dev.clone();
        let (c2, t2, dev2) = (c.clone(), t.clone(), dev.clone());
        tokio::task::spawn_blocking(move || {
            // The page as rendered: one row, and where it stands.
            let (code, page) = get_text(&w, &format!("/live?device={d}"));
            assert_eq!(code, 200);
            assert_eq!(page.matches("<tr class=\"verdict").count(), 1, "{page}");
            let at = page.find("data-cursor=\"").unwrap() + 13;
            let cursor = page[at..at + page[at..].find('"').unwrap()].to_string();
            // Stored before the page's script connects: two verdicts and an alert.
            for (seq, kind) in [(2, "defect"), (3, "suspect")] {
                c2.publish(&t2, QoS::AtLeastOnce, false, verdict(&dev2, seq, kind, "dent"))
                    .unwrap();
            }
            c2.publish(
                format!("{}/{dev2}/alert", prefix("catchup")),
                QoS::AtLeastOnce,
                false,
                json!({"schema": "inspect.alert/1", "ts": inspectd_contract::timefmt::now(), "kind": "suspect",
                       "message": "<script>marginal</script>", "seq": 3})
                .to_string(),
            )
            .unwrap();
            wait_for(Duration::from_secs(20), "3 verdicts and an alert", || {
                get(&w, "/api/stats").ok().filter(|s| {
                    s["rows"]["verdicts"] == 3 && s["rows"]["open_alerts"] == 1
                })
            });
            let first = sse_until(&w, &format!("/events?after={cursor}"), None, |e| e.len() >= 3);
            assert_eq!(seqs(&first), [2, 3], "{first:?}");
            assert_eq!(first[2].0, "alert", "{first:?}");
            assert!(first[2].2.contains("&lt;script&gt;marginal"), "{first:?}");
            let ids: Vec<&str> = first.iter().map(|e| e.1.as_str()).collect();
            let (v0, a0) = cursor.split_once('.').unwrap();
            let (v0, a0): (i64, i64) = (v0.parse().unwrap(), a0.parse().unwrap());
            assert_eq!(
                ids,
                [
                    format!("{}.{a0}", v0 + 1),
                    format!("{}.{a0}", v0 + 2),
                    format!("{}.{}", v0 + 2, a0 + 1)
                ],
                "{first:?}"
            );
            // The browser reconnects with the last id it got (its URL still says `after` the
            // page's cursor): only what it missed comes, then what is new.
            c2.publish(&t2, QoS::AtLeastOnce, false, verdict(&dev2, 4, "defect", "dent"))
                .unwrap();
            let again = sse_until(&w, &format!("/events?after={cursor}"), Some(ids[2]), |e| {
                !seqs(e).is_empty()
            });
            assert_eq!(seqs(&again), [4], "{again:?}");
            c2.publish(&t2, QoS::AtLeastOnce, false, verdict(&dev2, 5, "ok", "ok"))
                .unwrap();
            // A cursor from another database (ahead of this one) starts over from the beginning.
            let fresh = sse_until(&w, "/events?after=99999999.99999999", None, |e| {
                seqs(e).len() >= 5
            });
            assert_eq!(seqs(&fresh), [1, 2, 3, 4, 5], "{fresh:?}");
        })
        .await
        .unwrap();
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    });
}

#[test]
fn with_a_users_file_every_page_needs_a_login_and_the_name_is_recorded() {
    let (_own_broker, host, port) = test_broker();
    let dir = tmp("sup", "login");
    let db = dir.join("sup.sqlite");
    let users = dir.join("users");
    std::fs::write(
        &users,
        "# operators\nanna:correct horse battery\nbo:staple staple\n",
    )
    .unwrap();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let anna = format!("Authorization: Basic {}", b64("anna:correct horse battery"));
    let wrong = format!("Authorization: Basic {}", b64("anna:staple staple"));
    let dev = format!("login-{}", std::process::id());
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (stop, task, web) = start_with(
            &host,
            port,
            &db,
            "login",
            Some((users.clone(), anna.clone())),
        )
        .await;
        let c = mqtt(&host, port, "login-pub");
        c.publish(
            format!("{}/{dev}/alert", prefix("login")),
            QoS::AtLeastOnce,
            false,
            json!({"schema": "inspect.alert/1", "ts": inspectd_contract::timefmt::now(), "kind": "suspect",
                   "message": "evidence on the background"})
            .to_string(),
        )
        .unwrap();
        let (w, d) = (web.clone(), dev.clone());
        tokio::task::spawn_blocking(move || {
            let a: &[&str] = &[&anna];
            for path in [
                "/",
                "/alerts",
                "/events",
                "/metrics",
                "/api/stats",
                "/static/app.js",
            ] {
                for h in [&[][..], &[wrong.as_str()][..]] {
                    let (code, head, _) = http(&w, "GET", path, h, "");
                    assert_eq!(code, 401, "{path} with {h:?}");
                    assert!(
                        head.contains("www-authenticate: Basic realm=\"inspectd supervisor\""),
                        "{head}"
                    );
                }
            }
            let id = wait_for(Duration::from_secs(20), "the alert", || {
                let (_, _, page) = http(&w, "GET", "/alerts", a, "");
                let at = page.find("data-id=\"")? + 9;
                let id: i64 = page[at..at + page[at..].find('"')?].parse().ok()?;
                assert!(page.contains("Acknowledge as anna"), "{page}");
                assert!(!page.contains("name=\"by\""), "no name to type: {page}");
                Some(id)
            });
            // A form on another site, sent with anna's browser and credentials: refused.
            let (code, _, _) = http(
                &w,
                "POST",
                &format!("/alerts/{id}/ack"),
                &[
                    &anna,
                    "Origin: https://evil.example",
                    "Sec-Fetch-Site: cross-site",
                ],
                "by=mallory",
            );
            assert_eq!(code, 403);
            let (code, _, _) = http(
                &w,
                "POST",
                &format!("/alerts/{id}/ack"),
                &[
                    &anna,
                    &format!("Origin: http://{w}"),
                    "Sec-Fetch-Site: same-origin",
                ],
                "by=mallory",
            );
            assert_eq!(code, 303);
            let (_, _, page) = http(&w, "GET", "/alerts", a, "");
            assert!(
                page.contains("acknowledged by <strong>anna</strong>"),
                "{page}"
            );
            assert!(!page.contains("mallory"), "{page}");
            let (code, _, _) = http(&w, "POST", &format!("/device/{d}/cmd"), a, "command=pause");
            assert_eq!(code, 303);
            // 100 characters, 200 bytes: over the device's limit, which counts bytes.
            let long = "%C3%A9".repeat(100);
            let (code, head, _) = http(
                &w,
                "POST",
                &format!("/device/{d}/cmd"),
                a,
                &format!("command=trigger&part_id={long}"),
            );
            assert_eq!(code, 303);
            assert!(head.contains("at%20most%20128%20bytes"), "{head}");
            let (_, _, page) = http(&w, "GET", &format!("/device/{d}"), a, "");
            assert!(page.contains("by <strong>anna</strong>"), "{page}");
        })
        .await
        .unwrap();
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    });
}

#[test]
fn a_thousand_repeated_alerts_are_one_row_acknowledged_in_one_click() {
    let (_own_broker, host, port) = test_broker();
    let dir = tmp("sup", "group");
    let db = dir.join("sup.sqlite");
    let dev = format!("noisy-{}", std::process::id());
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (stop, task, web) = start(&host, port, &db, "group").await;
        let c = mqtt(&host, port, "group-pub");
        for i in 0..1000 {
            c.publish(
                format!("{}/{dev}/alert", prefix("group")),
                QoS::AtLeastOnce,
                false,
                json!({"schema": "inspect.alert/1", "ts": format!("2026-11-30T05:00:{:02}.{:03}Z", i / 1000, i % 1000),
                       "kind": "suspect", "severity": "warning", "seq": i,
                       "message": format!("part P-{i}: confidence 0.{:03} is marginal", i % 997)})
                .to_string(),
            )
            .unwrap();
        }
        let (w, d) = (web.clone(), dev.clone());
        tokio::task::spawn_blocking(move || {
            wait_for(Duration::from_secs(60), "1000 open alerts", || {
                (get(&w, "/api/stats").ok()?["rows"]["open_alerts"] == 1000).then_some(())
            });
            let (code, page) = get_text(&w, "/alerts");
            assert_eq!(code, 200);
            assert!(page.len() < 1 << 20, "alerts page of {} bytes", page.len());
            let rows = page.matches("<tr class=\"alert group ").count();
            assert_eq!(rows, 1, "one grouped row: {page}");
            assert!(page.contains("data-count=\"1000\""), "{page}");
            assert!(page.contains("Acknowledge all 1000"), "{page}");
            let at = page.find("data-id=\"").unwrap() + 9;
            let id: i64 = page[at..at + page[at..].find('"').unwrap()].parse().unwrap();
            // Filters: another device shows nothing; this one its group.
            let (_, other) = get_text(&w, "/alerts?device=nobody");
            assert!(other.contains("No open alerts."), "{other}");
            let (_, mine) = get_text(&w, &format!("/alerts?device={d}&severity=warning"));
            assert!(mine.contains("data-count=\"1000\""));
            // One click: the group's form.
            let (code, _, _) = http(
                &w,
                "POST",
                &format!("/alerts/{id}/ack"),
                &["Sec-Fetch-Site: same-origin"],
                "scope=group&by=Dana",
            );
            assert_eq!(code, 303);
            assert_eq!(get(&w, "/api/stats").unwrap()["rows"]["open_alerts"], 0);
            let (_, page) = get_text(&w, "/alerts");
            assert!(page.contains("No open alerts."), "{page}");
            assert!(page.len() < 1 << 20);
        })
        .await
        .unwrap();
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
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

/// The status of a GET whose body may be binary.
fn status_of(addr: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[9..12]).parse().unwrap()
}

/// A verdict whose map is a valid PNG of under 64 KiB declaring 7000×7000 pixels (a 196 MB
/// decode, four times that as floats): eight renders of it at once are refused before decoding
/// and the supervisor stays small.
#[test]
fn eight_renders_of_an_oversized_map_stay_small() {
    use base64::Engine as _;
    let (_broker, host, port) = test_broker();
    let dir = tmp("sup", "bigmap");
    let (sup, web) = supervisor(&host, port, &dir.join("db.sqlite"), "bigmap");
    let side = 7000;
    let mut png = Vec::new();
    let img = image::GrayImage::from_pixel(side, side, image::Luma([200]));
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new_with_quality(
            &mut png,
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::Up,
        ),
        &img,
        side,
        side,
        image::ExtendedColorType::L8,
    )
    .unwrap();
    drop(img);
    assert!(png.len() < 64 * 1024, "map PNG of {} bytes", png.len());
    let device = "bigmap-1";
    let mut v: Value = serde_json::from_slice(&verdict(device, 1, "defect", "dent")).unwrap();
    v["cam"] = json!({"png": base64::engine::general_purpose::STANDARD.encode(&png), "w": side, "h": side});
    let c = mqtt(&host, port, "bigmap");
    c.publish(
        format!("{}/{device}/verdict", prefix("bigmap")),
        QoS::AtLeastOnce,
        false,
        v.to_string(),
    )
    .unwrap();
    let path = format!("/heatmap/{device}/1");
    wait_for(Duration::from_secs(20), "the verdict stored", || {
        (get_text(&web, &format!("/verdict/{device}/1")).0 == 200).then_some(())
    });
    let before = peak_rss_mb(sup.0.id());
    let codes: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8).map(|_| s.spawn(|| status_of(&web, &path))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let peak = peak_rss_mb(sup.0.id());
    eprintln!(
        "8 renders of a {side}x{side} map: peak RSS {before:.0} MB before, {peak:.0} MB after"
    );
    assert!(codes.iter().all(|&c| c == 422), "{codes:?}");
    assert!(peak < 300.0, "peak RSS {peak:.0} MB");
    // A map of a sane size still renders.
    let ok = inspectd_cam::heatmap::map_png(&inspectd_cam::tensor::Tensor::new(
        vec![8, 8],
        vec![0.5; 64],
    ))
    .unwrap();
    v["seq"] = json!(2);
    v["cam"] =
        json!({"png": base64::engine::general_purpose::STANDARD.encode(&ok), "w": 8, "h": 8});
    c.publish(
        format!("{}/{device}/verdict", prefix("bigmap")),
        QoS::AtLeastOnce,
        false,
        v.to_string(),
    )
    .unwrap();
    wait_for(Duration::from_secs(20), "a sane map rendered", || {
        (status_of(&web, &format!("/heatmap/{device}/2")) == 200).then_some(())
    });
    let (_, page) = get_text(&web, &format!("/verdict/{device}/2"));
    assert!(
        page.contains("class=\"big\"") && page.contains("class=\"legend\""),
        "{page}"
    );
    // An ok verdict, map or not, has no picture on its page: nothing there is defect evidence.
    let mut ok_v: Value = serde_json::from_slice(&verdict(device, 3, "ok", "ok")).unwrap();
    ok_v["cam"] = v["cam"].clone();
    c.publish(
        format!("{}/{device}/verdict", prefix("bigmap")),
        QoS::AtLeastOnce,
        false,
        ok_v.to_string(),
    )
    .unwrap();
    let page = wait_for(Duration::from_secs(20), "the ok verdict stored", || {
        let (code, page) = get_text(&web, &format!("/verdict/{device}/3"));
        (code == 200).then_some(page)
    });
    assert!(page.contains("no defect evidence"), "{page}");
    assert!(!page.contains("<img"), "{page}");
}

/// The broker publishes a box's last will (`offline`, no `stopped`) whenever a connection that
/// sent CONNECT ends without DISCONNECT. A box must never do that when it starts or stops
/// cleanly: the fleet would flash `offline` and the supervisor would raise "the box is gone".
/// Seen against Mosquitto: the daemon dropped its first connection right after CONNACK (a
/// connect cancelled half-way), and on SIGTERM it closed the socket with the broker's last
/// PUBACK unread, which makes the socket send a reset that discards its DISCONNECT.
#[test]
fn a_starting_or_cleanly_stopping_box_never_triggers_its_last_will() {
    let (_own_broker, host, port) = test_broker();
    let dir = tmp("sup", "will");
    let pid = std::process::id();
    let pfx = prefix("will");
    for round in 0..3 {
        let dev = format!("will{round}-{pid}");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let mut o = MqttOptions::new(format!("will-watch{round}-{pid}"), host.as_str(), port);
        o.set_keep_alive(Duration::from_secs(5));
        let (c, mut conn) = Client::new(o, 10);
        c.subscribe(format!("{pfx}/{dev}/status"), QoS::AtLeastOnce)
            .unwrap();
        let subscribed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (seen, subscribed) = (seen.clone(), subscribed.clone());
            std::thread::spawn(move || {
                let _keep = c;
                for ev in conn.iter() {
                    match ev {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            subscribed.store(true, std::sync::atomic::Ordering::SeqCst)
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => seen
                            .lock()
                            .unwrap()
                            .push(serde_json::from_slice(&p.payload).unwrap_or(Value::Null)),
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
        }
        wait_for(Duration::from_secs(10), "the status watcher", || {
            subscribed
                .load(std::sync::atomic::Ordering::SeqCst)
                .then_some(())
        });
        let mut d = daemon(&dev, &host, port, &dir, "", &pfx);
        let states = || -> Vec<String> {
            seen.lock()
                .unwrap()
                .iter()
                .map(|v| {
                    let s = v["state"].as_str().unwrap_or("?").to_string();
                    if v["stopped"] == true {
                        format!("{s}(stopped)")
                    } else {
                        s
                    }
                })
                .collect()
        };
        wait_for(Duration::from_secs(60), "the box online", || {
            states().iter().any(|s| s == "online").then_some(())
        });
        // A few verdicts in flight when the stop comes.
        std::thread::sleep(Duration::from_millis(1500 + 500 * round));
        let term = Command::new("kill")
            .args(["-TERM", &d.0.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        wait_for(Duration::from_secs(30), "the daemon's exit", || {
            d.0.try_wait().ok().flatten()
        });
        // A will would follow the closed socket at once.
        std::thread::sleep(Duration::from_secs(2));
        let s = states();
        assert!(
            !s.iter().any(|s| s == "offline"),
            "round {round}: the broker published the box's last will: {s:?}"
        );
        assert_eq!(
            s.last().map(String::as_str),
            Some("offline(stopped)"),
            "{s:?}"
        );
    }
}

/// Runs in the page: every visible element with its own text whose contrast against the
/// background it is drawn on is below WCAG AA (4.5:1; 3:1 for large text). Returns
/// `[{text, fg, bg, ratio}]`, empty when all pass.
const CONTRAST_AUDIT: &str = r#"(() => {
  const parse = c => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 }; };
  const over = (top, base) => ({ r: top.r * top.a + base.r * (1 - top.a), g: top.g * top.a + base.g * (1 - top.a),
                                 b: top.b * top.a + base.b * (1 - top.a), a: 1 });
  const lum = c => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
                     return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const background = el => { const layers = [];
    for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; } }
    let base = { r: 255, g: 255, b: 255, a: 1 };
    for (let i = layers.length - 1; i >= 0; i--) base = over(layers[i], base);
    return base; };
  const bad = [];
  for (const el of document.querySelectorAll('body *')) {
    const s = getComputedStyle(el);
    if (s.visibility === 'hidden' || s.display === 'none' || el.closest('[hidden]')) continue;
    const r = el.getBoundingClientRect(); if (r.width === 0 || r.height === 0) continue;
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const bg = background(el); const fg = over(parse(s.color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const px = parseFloat(s.fontSize), bold = Number(s.fontWeight) >= 700;
    const need = (px >= 24 || (px >= 18.66 && bold)) ? 3 : 4.5;
    if (ratio < need) bad.push({ text: el.textContent.trim().slice(0, 40), fg: s.color, bg: `rgb(${Math.round(bg.r)}, ${Math.round(bg.g)}, ${Math.round(bg.b)})`, ratio: Math.round(ratio * 100) / 100 });
  }
  return bad;
})()"#;

/// An operator reads every page on a desk screen (1440 px) and on a phone (412 px): text at
/// WCAG AA contrast, no sideways scrolling of the page, an alert acknowledged on the phone, and
/// times in the browser's own zone with the zone named (here Asia/Kolkata, UTC+05:30).
#[test]
fn every_page_reads_on_a_desk_and_a_phone_with_aa_contrast_and_local_times() {
    let (_own_broker, host, port) = test_broker();
    let dir = tmp("sup", "read");
    let pid = std::process::id();
    let pfx = prefix("read");
    let (a, b) = (format!("press-{pid}"), format!("lathe-{pid}"));
    let (_sup, web) = supervisor(&host, port, &dir.join("sup.sqlite"), "read");
    // Every verdict kind (a suspect band), and a box stopped cleanly.
    let _da = daemon(&a, &host, port, &dir, "suspect_band = [0.5, 0.999]", &pfx);
    let mut db = daemon(&b, &host, port, &dir, "", &pfx);
    wait_for(Duration::from_secs(90), "verdicts of every kind", || {
        let h = get_text(&web, "/history").1;
        (h.contains("v-suspect") && h.contains("v-ok")).then_some(())
    });
    wait_for(Duration::from_secs(60), "the second box online", || {
        get(&web, "/api/fleet")
            .ok()?
            .as_array()?
            .iter()
            .any(|r| r["device"] == b.as_str() && r["state"] == "online")
            .then_some(())
    });
    let term = Command::new("kill")
        .args(["-TERM", &db.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    wait_for(Duration::from_secs(30), "the daemon's exit", || {
        db.0.try_wait().ok().flatten()
    });
    // One alert of each severity.
    let c = mqtt(&host, port, "read-pub");
    for (kind, sev) in [("camera_lost", "critical"), ("model_reloaded", "info")] {
        c.publish(
            format!("{pfx}/{a}/alert"),
            QoS::AtLeastOnce,
            false,
            json!({"schema": "inspect.alert/1", "ts": inspectd_contract::timefmt::now(),
                   "kind": kind, "severity": sev, "message": format!("a {sev} alert")})
            .to_string(),
        )
        .unwrap();
    }
    wait_for(
        Duration::from_secs(20),
        "alerts of three severities",
        || {
            let p = get_text(&web, "/alerts").1;
            (p.contains("sev-critical") && p.contains("sev-info") && p.contains("sev-warning"))
                .then_some(())
        },
    );
    let seq = {
        let h = get_text(&web, &format!("/history?device={a}&verdict=suspect")).1;
        let at = h.find("data-seq=\"").expect("a suspect verdict") + 10;
        h[at..at + h[at..].find('"').unwrap()]
            .parse::<u64>()
            .unwrap()
    };

    let mut br = Browser::start(&dir.join("chromium"));
    br.call(
        "Emulation.setTimezoneOverride",
        json!({"timezoneId": "Asia/Kolkata"}),
    );
    let out = artifacts();
    let pages = [
        ("fleet", "/".to_string()),
        ("live", "/live".to_string()),
        ("alerts", "/alerts".to_string()),
        ("history", "/history".to_string()),
        ("device", format!("/device/{a}")),
        ("verdict", format!("/verdict/{a}/{seq}")),
    ];
    for (w, h, mobile) in [(1440, 900, false), (412, 915, true)] {
        br.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": w, "height": h, "deviceScaleFactor": 1, "mobile": mobile}),
        );
        for (name, path) in &pages {
            br.goto(&format!("http://{web}{path}"));
            std::thread::sleep(Duration::from_millis(300));
            br.screenshot(&out.join(format!("{name}-{w}.png")));
            let bad = br.eval(CONTRAST_AUDIT);
            assert_eq!(
                bad.as_array().map(Vec::len),
                Some(0),
                "{name} at {w} px: text below WCAG AA contrast: {bad:#}"
            );
            let sideways = br.eval("document.documentElement.scrollWidth - window.innerWidth");
            assert!(
                sideways.as_i64().unwrap_or(1) <= 0,
                "{name} at {w} px scrolls sideways by {sideways} px"
            );
            // Every absolute time is in the browser's zone (IST, UTC+05:30), and says so.
            let times = br.eval("[...document.querySelectorAll('time')].map(t => t.innerText)");
            let times = times.as_array().unwrap();
            if matches!(*name, "live" | "alerts" | "history" | "verdict") {
                assert!(!times.is_empty(), "{name}: no <time> element");
            }
            for t in times {
                let t = t.as_str().unwrap();
                assert!(
                    t.contains("GMT+5:30") || t.contains("IST"),
                    "{name}: time {t:?} does not name the browser's zone"
                );
            }
        }
    }
    // On the phone: the critical alert's acknowledge button is on screen and works.
    br.goto(&format!("http://{web}/alerts"));
    let btn = br.eval(
        "(() => { const b = document.querySelector('#alerts tr.alert.sev-critical form.ack button'); if (!b) return null; \
           const r = b.getBoundingClientRect(); return {left: r.left, right: r.right, w: window.innerWidth}; })()",
    );
    assert!(
        btn["left"].as_f64().unwrap() >= 0.0
            && btn["right"].as_f64().unwrap() <= btn["w"].as_f64().unwrap(),
        "the acknowledge button is off screen at 412 px: {btn}"
    );
    // Without logins the name is typed (tapped) into the row's field first.
    br.eval(
        "(() => { const f = document.querySelector('#alerts tr.alert.sev-critical form.ack'); \
           const n = f.querySelector('input[name=by]'); if (n) n.value = 'Priya'; f.querySelector('button').click(); })()",
    );
    br.wait_true(
        "document.readyState === 'complete' && !document.querySelector('#alerts tr.alert.sev-critical') \
         && [...document.querySelectorAll('table.done tr.alert.sev-critical')].some(r => r.innerText.includes('Priya'))",
        Duration::from_secs(10),
    );
    br.screenshot(&out.join("alerts-412-acked.png"));
    // The same row's second button: everything still open on the box, in one tap. (New alerts
    // keep coming from its suspect band: only those up to the tapped one are acknowledged.)
    let id = br.eval(
        "(() => { const f = document.querySelector('#alerts tr.alert form.ack'); \
           const n = f.querySelector('input[name=by]'); if (n) n.value = 'Priya'; \
           const id = f.closest('tr').dataset.id; f.querySelector('button.ack-device').click(); return id; })()",
    );
    let id: i64 = id.as_str().unwrap().parse().unwrap();
    br.wait_true(
        &format!("document.readyState === 'complete' && [...document.querySelectorAll('#alerts tr.alert')].every(r => Number(r.dataset.id) > {id})"),
        Duration::from_secs(10),
    );
}

/// What a watcher on `{prefix}/{dev}/status` and `…/alert` saw, in order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// Subscribes to a device's status and alerts; returns once subscribed.
fn watch_device(host: &str, port: u16, pfx: &str, dev: &str, id: &str) -> Seen {
    let seen: Seen = Default::default();
    let mut o = MqttOptions::new(format!("{id}-{}", std::process::id()), host, port);
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut conn) = Client::new(o, 10);
    for leaf in ["status", "alert"] {
        c.subscribe(format!("{pfx}/{dev}/{leaf}"), QoS::AtLeastOnce)
            .unwrap();
    }
    let subscribed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (seen, subscribed) = (seen.clone(), subscribed.clone());
        std::thread::spawn(move || {
            let _keep = c;
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        subscribed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let leaf = p.topic.rsplit('/').next().unwrap_or("").to_string();
                        let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        seen.lock().unwrap().push((leaf, v));
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    }
    wait_for(Duration::from_secs(10), "the device watcher", || {
        (subscribed.load(std::sync::atomic::Ordering::SeqCst) == 2).then_some(())
    });
    seen
}

/// The instances of the `online` statuses seen: one per connection (and per status change).
fn onlines(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(leaf, v)| leaf == "status" && v["state"] == "online")
        .map(|(_, v)| v["instance"].as_str().unwrap_or("").to_string())
        .collect()
}

fn twin_alerts(seen: &Seen) -> Vec<Value> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(leaf, v)| leaf == "alert" && v["kind"] == "duplicate_device_id")
        .map(|(_, v)| v.clone())
        .collect()
}

/// Issue #13 item 7: two boxes with one device_id kicked each other off the broker several
/// times a second, unnoticed. A crashed box restarted at once is no twin; a second live one is
/// alerted (by the boxes and by the supervisor) and the two stop fighting for the connection.
#[test]
fn a_second_live_box_with_the_same_device_id_is_alerted_and_does_not_fight() {
    let (_own_broker, host, port) = test_broker();
    let dir = tmp("sup", "twins");
    let dev = format!("twin-{}", std::process::id());
    let pfx = prefix("twins");
    let (_sup, web) = supervisor(&host, port, &dir.join("sup.sqlite"), "twins");
    let seen = watch_device(&host, port, &pfx, &dev, "twins-watch");
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    // The n-th process seen online.
    let online_of = |n: usize, what: &str| {
        wait_for(Duration::from_secs(60), what, || {
            let mut distinct: Vec<String> = Vec::new();
            for i in onlines(&seen) {
                if !distinct.contains(&i) {
                    distinct.push(i);
                }
            }
            distinct.get(n - 1).cloned()
        })
    };
    let parts = || {
        get(&web, "/api/fleet")
            .ok()
            .and_then(|f| f[0]["inspected_1h"].as_i64())
    };
    let mut a = daemon(&dev, &host, port, &dir_a, "", &pfx);
    let first = online_of(1, "the box online");
    assert_eq!(first.len(), 16, "a status names its process: {first:?}");

    // A crash and a quick restart: the old process's will and online are not a twin's.
    let _ = a.0.kill();
    let _ = a.0.wait();
    let _a2 = daemon(&dev, &host, port, &dir_a, "", &pfx);
    let second = online_of(2, "the restarted box online");
    assert_ne!(first, second);
    let alerts_page = || get_text(&web, &format!("/alerts?device={dev}")).1;
    let base = parts().unwrap_or(0);
    wait_for(
        Duration::from_secs(30),
        "verdicts of the restarted box",
        || (parts()? >= base + 4).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(twin_alerts(&seen).is_empty(), "{:?}", seen.lock().unwrap());
    assert!(!alerts_page().contains("kind-duplicate_device_id"));

    // A second box with the same id.
    let _b = daemon(&dev, &host, port, &dir_b, "", &pfx);
    let alert = wait_for(
        Duration::from_secs(60),
        "a duplicate_device_id alert from a box",
        || twin_alerts(&seen).first().cloned(),
    );
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("two boxes share a device_id"),
        "{alert}"
    );
    let page = wait_for(
        Duration::from_secs(60),
        "the supervisor's duplicate_device_id alert",
        || {
            let p = alerts_page();
            p.contains("kind-duplicate_device_id").then_some(p)
        },
    );
    assert!(page.contains("sev-critical"), "{page}");
    // No reconnect storm from here on: each box reconnects at most once a minute (each
    // connection publishes one `online`); kicking each other as before, it was every few
    // seconds each.
    let before = onlines(&seen).len();
    std::thread::sleep(Duration::from_secs(30));
    let connects = onlines(&seen).len() - before;
    assert!(
        connects <= 4,
        "{connects} connections in 30 s after the alert: {:?}",
        &onlines(&seen)[before..]
    );
}
