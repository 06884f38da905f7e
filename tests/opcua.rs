//! The PLC's OPC UA side of a box, end to end (cargo feature `opcua`): the daemon runs
//! in-process with its OPC UA server, driven by a real OPC UA client (Python asyncua, through
//! `tests/opcua_client.py`: not our encoder), while an MQTT observer on the embedded broker
//! sees what the plant sees.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use inspectd::config::Config;
use serde_json::Value;

mod common;
use common::{broker, collect, replay_config, Daemon};

/// A triggered box with its OPC UA server on a port of its own; `more` adds `[plc]` keys.
fn config(device: &str, host: &str, port: u16, dir: &Path, more: &str) -> (Config, String) {
    let listen: SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let url = format!("opc.tcp://{listen}/");
    let text = replay_config(
        device,
        50,
        &format!("url = \"mqtt://{host}:{port}\"\nkeep_alive_s = 5"),
        &dir.join("spool.redb"),
        &format!("[plc]\nopcua_listen = \"{url}\"\ntrigger_timeout_ms = 3000\n{more}"),
    )
    .replace("loop = true", "loop = true\ntrigger = \"triggered\"");
    (Config::parse(&text, "test", dir).unwrap(), url)
}

/// Runs the Python client against `url` (namespace of `device`) with `args` (login, security)
/// and `actions`; returns its exit code and its JSON lines. Retries a refused connection for a
/// while: the daemon loads its model before it listens.
async fn client(url: &str, device: &str, args: &[&str], actions: &[&str]) -> (i32, Vec<Value>) {
    let script = common::root().join("tests/opcua_client.py");
    let ns = format!("urn:inspectd:{device}");
    let t0 = std::time::Instant::now();
    loop {
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg(url)
            .args(["--ns-uri", &ns])
            .args(args)
            .args(actions);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("python3 (with asyncua: python3 -m pip install asyncua==2.1.0)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("No module named 'asyncua'"),
            "python3 -m pip install asyncua==2.1.0"
        );
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
            .collect();
        let code = out.status.code().unwrap_or(-1);
        let refused = lines.first().is_some_and(|l| {
            l["action"] == "connect"
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("Connect call failed") || e.contains("refused"))
        });
        if refused && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        assert!(
            code == 0 || code == 3,
            "client exit {code}: {lines:?}\n{stderr}"
        );
        return (code, lines);
    }
}

fn line<'a>(lines: &'a [Value], action: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["action"] == action)
        .unwrap_or_else(|| panic!("no {action} in {lines:?}"))
}

#[test]
fn a_plc_browses_the_inspection_object_triggers_p1_and_reads_the_same_verdict_as_mqtt() {
    let (host, port) = broker();
    let dir = common::tmp("opcua", "trigger");
    let (cfg, url) = config("opcua-1", &host, port, &dir, "");
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (h, p) = (host.clone(), port);
        let observer = tokio::spawn(async move {
            collect(
                &h,
                p,
                "inspect/opcua-1/verdict",
                Duration::from_secs(120),
                vec![],
                |g| g.get("verdict").is_some_and(|v| !v.is_empty()),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let daemon = Daemon::start(cfg);
        let (code, lines) = client(
            &url,
            "opcua-1",
            &[],
            &[
                "browse",
                "wait-ready:true",
                "trigger:P-1",
                "sleep:1.2",
                "read",
            ],
        )
        .await;
        assert_eq!(code, 0, "{lines:?}");
        // Every documented node, by its documented id, with its documented type.
        let b = line(&lines, "browse");
        let ns = b["ns"].as_u64().unwrap();
        assert_eq!(ns, 1, "the README's node ids are ns=1");
        assert_eq!(b["object"], format!("ns={ns};s=Inspection"));
        for (name, ty) in [
            ("Ready", "Boolean"),
            ("LastVerdict", "String"),
            ("LastLabel", "String"),
            ("LastConfidence", "Double"),
            ("LastPartId", "String"),
            ("LastSeq", "UInt64"),
            ("LatencyMs", "Double"),
            ("Heartbeat", "UInt32"),
            ("ErrorCode", "UInt16"),
        ] {
            let c = &b["children"][name];
            assert_eq!(c["node_id"], format!("ns={ns};s=Inspection.{name}"), "{b}");
            assert_eq!(
                (&c["class"], &c["type"]),
                (&"Variable".into(), &ty.into()),
                "{name}"
            );
        }
        assert_eq!(b["children"]["Trigger"]["class"], "Method");
        assert_eq!(
            b["children"]["Trigger"]["node_id"],
            format!("ns={ns};s=Inspection.Trigger")
        );
        // The call's answer is the verdict MQTT carries for P-1.
        let got = observer.await.unwrap();
        let v = &got["verdict"][0];
        assert_eq!(v["part_id"], "P-1", "{v}");
        let out = line(&lines, "trigger")["outputs"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(out.len(), 5, "{out:?}");
        assert_eq!(out[0], v["verdict"]);
        assert_eq!(out[1], v["label"]);
        let p_defect = v["p_defect"].as_f64().unwrap();
        assert!(
            (out[2].as_f64().unwrap() - p_defect).abs() < 1e-6,
            "{out:?} vs {v}"
        );
        assert_eq!(out[3], v["seq"]);
        assert_eq!(out[4], 0, "errorCode");
        // The variables hold the same answer; the heartbeat turns.
        let r = &line(&lines, "read")["values"];
        assert_eq!(r["Ready"], true);
        assert_eq!(r["LastVerdict"], v["verdict"]);
        assert_eq!(r["LastLabel"], v["label"]);
        assert_eq!(r["LastPartId"], "P-1");
        assert_eq!(r["LastSeq"], v["seq"]);
        assert_eq!(r["ErrorCode"], 0);
        assert!(r["LatencyMs"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["Heartbeat"].as_u64().unwrap() >= 1, "{r}");

        // A verdict triggered over MQTT shows in the variables too.
        let got = collect(
            &host,
            port,
            "inspect/opcua-1/#",
            Duration::from_secs(60),
            vec![(
                "inspect/opcua-1/cmd/trigger".into(),
                br#"{"part_id":"M-2"}"#.to_vec(),
            )],
            |g| g.get("cmd_result").is_some_and(|v| !v.is_empty()),
        )
        .await;
        let m = got["verdict"]
            .iter()
            .find(|v| v["part_id"] == "M-2")
            .unwrap_or_else(|| panic!("no verdict for M-2: {got:?}"));
        assert_eq!(m["part_id"], "M-2");
        let (_, lines) = client(&url, "opcua-1", &[], &["sleep:0.3", "read"]).await;
        let r = &line(&lines, "read")["values"];
        assert_eq!(
            (&r["LastPartId"], &r["LastSeq"]),
            (&"M-2".into(), &m["seq"])
        );
        daemon.stop().await;
    });
}

#[test]
fn a_trigger_during_pause_returns_error_code_4_not_silence() {
    let (host, port) = broker();
    let dir = common::tmp("opcua", "pause");
    let (cfg, url) = config("opcua-pause", &host, port, &dir, "");
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (h, p) = (host.clone(), port);
        let observer = tokio::spawn(async move {
            collect(
                &h,
                p,
                "inspect/opcua-pause/#",
                Duration::from_secs(120),
                vec![("inspect/opcua-pause/cmd/pause".into(), b"{}".to_vec())],
                |g| g.get("cmd_result").is_some_and(|r| !r.is_empty()),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let daemon = Daemon::start(cfg);
        let got = observer.await.unwrap();
        assert_eq!(got["cmd_result"][0]["ok"], true, "{got:?}");
        let (code, lines) = client(
            &url,
            "opcua-pause",
            &[],
            &["wait-ready:false", "trigger:P-PAUSED", "sleep:0.3", "read"],
        )
        .await;
        assert_eq!(code, 0, "{lines:?}");
        let out = &line(&lines, "trigger")["outputs"];
        assert_eq!(out[0], "error", "{out}");
        assert_eq!(out[4], 4, "errorCode busy: {out}");
        assert_eq!(out[3], 0, "no seq: {out}");
        let r = &line(&lines, "read")["values"];
        assert_eq!(
            (
                &r["LastVerdict"],
                &r["ErrorCode"],
                &r["LastPartId"],
                &r["Ready"]
            ),
            (
                &"error".into(),
                &4.into(),
                &"P-PAUSED".into(),
                &false.into()
            ),
            "{r}"
        );
        daemon.stop().await;
    });
}

#[test]
fn with_anonymous_off_only_a_listed_user_with_the_right_password_gets_in() {
    let (host, port) = broker();
    let dir = common::tmp("opcua", "users");
    std::fs::write(dir.join("users"), "# PLCs of line 3\nplc3:Line3-s3cret\n").unwrap();
    let (cfg, url) = config(
        "opcua-users",
        &host,
        port,
        &dir,
        "opcua_anonymous = false\nopcua_users_file = \"users\"",
    );
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let dev = "opcua-users";
        let (code, lines) = client(&url, dev, &[], &["read"]).await;
        assert_eq!(code, 3, "anonymous refused: {lines:?}");
        let (code, lines) = client(
            &url,
            dev,
            &["--user", "plc3", "--password", "wrong"],
            &["read"],
        )
        .await;
        assert_eq!(code, 3, "wrong password refused: {lines:?}");
        let (code, lines) = client(
            &url,
            dev,
            &["--user", "nobody", "--password", "Line3-s3cret"],
            &["read"],
        )
        .await;
        assert_eq!(code, 3, "unknown user refused: {lines:?}");
        let (code, lines) = client(
            &url,
            dev,
            &["--user", "plc3", "--password", "Line3-s3cret"],
            &["wait-ready:true", "trigger:U-1"],
        )
        .await;
        assert_eq!(code, 0, "{lines:?}");
        let out = &line(&lines, "trigger")["outputs"];
        assert_eq!(out[4], 0, "{out}");
        assert!(
            ["ok", "defect", "suspect"].contains(&out[0].as_str().unwrap()),
            "{out}"
        );
        daemon.stop().await;
    });
}

/// A certificate and key made by openssl: `<name>.der` and `<name>.pem`, with `uri` and the
/// loopback names as subject alternative names.
fn certificate(dir: &Path, name: &str, uri: &str) -> (PathBuf, PathBuf) {
    let (pem_cert, der, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.der")),
        dir.join(format!("{name}.pem")),
    );
    let ok = |c: &mut Command| {
        let out = c.output().expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-sha256"])
        .arg("-keyout").arg(&key).arg("-out").arg(&pem_cert)
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=URI:{uri},DNS:localhost,IP:127.0.0.1")])
        .args(["-addext", "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,dataEncipherment,keyCertSign"])
        .args(["-addext", "extendedKeyUsage=serverAuth,clientAuth"]));
    ok(Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(&pem_cert)
        .arg("-out")
        .arg(&der));
    (der, key)
}

#[test]
fn sign_and_encrypt_with_basic256sha256_serves_a_trusted_client_and_refuses_others() {
    let (host, port) = broker();
    let dir = common::tmp("opcua", "encrypt");
    let dev = "opcua-enc";
    let (server_cert, server_key) =
        certificate(&dir, "server", &format!("urn:inspectd:{dev}:server"));
    let client_uri = "urn:inspectd:test:plc";
    let (client_cert, client_key) = certificate(&dir, "client", client_uri);
    let (stranger_cert, stranger_key) = certificate(&dir, "stranger", client_uri);
    let (cfg, url) = config(
        dev,
        &host,
        port,
        &dir,
        "opcua_cert = \"server.der\"\nopcua_key = \"server.pem\"\nopcua_pki_dir = \"pki\"",
    );
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let s = |p: &PathBuf| p.to_str().unwrap().to_string();
        let secure = |cert: &PathBuf, key: &PathBuf| {
            vec![
                "--cert".to_string(),
                s(cert),
                "--key".into(),
                s(key),
                "--server-cert".into(),
                s(&server_cert),
                "--app-uri".into(),
                client_uri.into(),
            ]
        };
        let args = secure(&client_cert, &client_key);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Unknown at first: refused, its certificate left in rejected/ ...
        let (code, lines) = client(&url, dev, &args, &["read"]).await;
        assert_eq!(code, 3, "unknown client refused: {lines:?}");
        let rejected: Vec<PathBuf> = std::fs::read_dir(dir.join("pki/rejected"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        // ... where the operator finds it and moves it to trusted/.
        let name = rejected[0].file_name().unwrap();
        assert!(name.to_str().unwrap().contains("client ["), "{name:?}");
        std::fs::rename(&rejected[0], dir.join("pki/trusted").join(name)).unwrap();
        let (code, lines) = client(&url, dev, &args, &["wait-ready:true", "trigger:E-1"]).await;
        assert_eq!(code, 0, "{lines:?}");
        let out = &line(&lines, "trigger")["outputs"];
        assert_eq!(out[4], 0, "{out}");
        assert!(out[3].as_u64().unwrap() > 0, "{out}");
        // No None endpoint beside it, and an unknown client certificate is refused.
        let (code, lines) = client(&url, dev, &[], &["read"]).await;
        assert_eq!(code, 3, "SecurityPolicy None refused: {lines:?}");
        let args = secure(&stranger_cert, &stranger_key);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, lines) = client(&url, dev, &args, &["read"]).await;
        assert_eq!(code, 3, "untrusted client refused: {lines:?}");
        daemon.stop().await;
        let _ = server_key;
    });
}

#[test]
fn bad_opcua_files_exit_2_with_one_line_naming_the_key() {
    let dir = common::tmp("opcua", "badfiles");
    std::fs::write(dir.join("users"), "plc3 Line3-s3cret\n").unwrap();
    std::fs::write(dir.join("cert.der"), "not a certificate").unwrap();
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    for (keys, key) in [
        (
            "opcua_anonymous = false\nopcua_users_file = \"users\"",
            "plc.opcua_users_file",
        ),
        ("opcua_users_file = \"missing\"", "plc.opcua_users_file"),
        (
            "opcua_cert = \"cert.der\"\nopcua_key = \"key.pem\"",
            "plc.opcua_cert",
        ),
    ] {
        let port = common::free_port();
        let text = replay_config(
            "opcua-bad",
            5,
            // Nobody listens there: the daemon stops at the OPC UA server, before any broker.
            &format!("url = \"mqtt://127.0.0.1:{}\"", common::free_port()),
            &dir.join("s.redb"),
            &format!("[plc]\nopcua_listen = \"opc.tcp://127.0.0.1:{port}\"\n{keys}"),
        )
        .replace("loop = true", "loop = true\ntrigger = \"triggered\"");
        let file = dir.join("inspectd.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_inspectd"))
            .args(["run", "--config", file.to_str().unwrap()])
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{keys}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{keys}: {err}");
        assert!(err.contains(key), "{keys}: {key} not in {err}");
        assert!(!err.contains("Line3-s3cret"), "no password in {err}");
    }
}
