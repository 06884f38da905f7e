//! `mqtts://` with a CA and a client certificate against a real Mosquitto (Debian's
//! `mosquitto`, which `.ci/run` installs). The certificates are made here with `openssl`.
//!
//! Mosquitto gets two listeners: TLS with required client certificates for the daemon, and
//! plaintext on loopback for the observing test client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use inspectd::config::Config;

mod common;
use common::{collect, replay_config, root, tmp, Daemon};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package `openssl`) must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by
/// the CA; plus a second, unrelated CA.
fn make_certs(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for ca in ["ca", "otherca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=inspectd test {ca}"),
            ],
        );
    }
    for (who, cn) in [("server", "localhost"), ("client", "line-3-box")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
}

struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Mosquitto with a TLS listener (client certificates required; `extra` settings for
/// it) and a plaintext one for the observer.
fn mosquitto(dir: &Path, extra: &str) -> (Mosquitto, u16, u16) {
    let tls_port = common::free_port();
    let plain_port = common::free_port();
    let conf = format!(
        "per_listener_settings true\nuser root\n\
         listener {tls_port} 127.0.0.1\nrequire_certificate true\n\
         cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n{extra}\n\
         listener {plain_port} 127.0.0.1\nallow_anonymous true\n",
        d = dir.display()
    );
    std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Mosquitto (Debian package `mosquitto`) must be installed for the TLS test");
    let child = Command::new(bin)
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
        .spawn()
        .unwrap();
    let m = Mosquitto(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", plain_port)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
        {
            return (m, tls_port, plain_port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "mosquitto did not start: {}",
        std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
    );
}

fn config(device: &str, url: &str, tls: &str, spool: &Path) -> String {
    replay_config(
        device,
        10,
        &format!("url = \"{url}\"\nkeep_alive_s = 5\n{tls}"),
        spool,
        "",
    )
}

fn files(dir: &Path, ca: &str, client: bool) -> String {
    let p = |f: &str| -> PathBuf { dir.join(f) };
    let mut s = format!("ca_file = \"{}\"\n", p(&format!("{ca}.pem")).display());
    if client {
        s += &format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            p("client.pem").display(),
            p("client.key").display()
        );
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_arrive_over_mutual_tls_and_wrong_credentials_get_nothing_through() {
    let dir = tmp("tls", "certs");
    make_certs(&dir);
    let (_broker, tls_port, plain_port) = mosquitto(&dir, "allow_anonymous true");

    // Right CA and a client certificate: verdicts flow. Wrong CA, or no client certificate:
    // the connection is refused and nothing is published (the verdicts wait in the spool).
    let cases = [
        ("tls-ok", files(&dir, "ca", true), true),
        ("tls-wrong-ca", files(&dir, "otherca", true), false),
        ("tls-no-client-cert", files(&dir, "ca", false), false),
    ];
    let mut daemons = vec![];
    for (device, tls, _) in &cases {
        let text = config(
            device,
            &format!("mqtts://localhost:{tls_port}"),
            tls,
            &tmp("tls", device).join("spool.redb"),
        );
        let cfg = Config::parse(&text, "test", Path::new(".")).unwrap();
        daemons.push(Daemon::start(cfg));
    }
    let got = collect(
        "127.0.0.1",
        plain_port,
        "inspect/#",
        Duration::from_secs(20),
        vec![],
        |g| g.get("verdict").is_some_and(|v| v.len() >= 30),
    )
    .await;
    let verdicts = got.get("verdict").cloned().unwrap_or_default();
    assert!(
        verdicts.len() >= 30,
        "only {} verdicts over TLS",
        verdicts.len()
    );
    for (device, _, ok) in &cases {
        let from: Vec<_> = verdicts.iter().filter(|v| v["device"] == *device).collect();
        let statuses = got
            .get("status")
            .map(|s| s.iter().filter(|v| v["device"] == *device).count())
            .unwrap_or(0);
        if *ok {
            assert!(
                !from.is_empty() && statuses > 0,
                "{device}: nothing arrived"
            );
        } else {
            assert!(from.is_empty() && statuses == 0, "{device} got through");
        }
    }
    // The broker saw each refusal for the right reason.
    let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap();
    assert!(log.contains("unknown ca"), "wrong CA not refused:\n{log}");
    assert!(
        log.contains("peer did not return a certificate"),
        "missing client certificate not refused:\n{log}"
    );
    for d in daemons {
        d.stop().await;
    }
}

#[test]
fn tls_files_that_are_missing_or_not_pem_are_named() {
    let dir = tmp("tls", "bad");
    std::fs::write(dir.join("junk.pem"), "not a certificate\n").unwrap();
    let spool = dir.join("spool.redb");
    let cases = [
        (
            "ca_file = \"/nonexistent/ca.pem\"\n",
            "mqtt.ca_file /nonexistent/ca.pem",
        ),
        (
            &*format!("ca_file = \"{}\"\n", dir.join("junk.pem").display()),
            "mqtt.ca_file",
        ),
        ("cert_file = \"/nonexistent/c.pem\"\n", "mqtt.cert_file"),
        (
            &*format!(
                "cert_file = \"{0}\"\nkey_file = \"{0}\"\n",
                dir.join("junk.pem").display()
            ),
            "mqtt.cert_file",
        ),
    ];
    for (tls, want) in cases {
        let text = config("bad", "mqtts://localhost:8883", tls, &spool);
        // Caught by the config check or when the TLS set-up reads the files.
        let err = match Config::parse(&text, "test", Path::new(".")) {
            Ok(cfg) => cfg.mqtt.settings("bad").unwrap_err(),
            Err(e) => e,
        };
        let msg = format!("{err:#}");
        assert!(msg.contains(want), "{tls:?}: {msg}");
        assert!(inspectd_cam::error::is_bad_input(&err), "{msg}");
    }
    // TLS files with a plaintext URL are a mistake, not silently ignored.
    let text = config(
        "bad",
        "mqtt://127.0.0.1:1883",
        "ca_file = \"/x.pem\"\n",
        &spool,
    );
    let cfg = Config::parse(&text, "test", Path::new(".")).unwrap();
    let msg = format!("{:#}", cfg.mqtt.settings("bad").unwrap_err());
    assert!(msg.contains("plaintext"), "{msg}");
}

/// The shipped broker ACL (`deploy/mosquitto/inspectd.acl`, with the listener settings of
/// `deploy/mosquitto/inspectd.conf`): the certificate's CN is the username, and a box may only
/// publish under `inspect/<CN>/`. A box configured with another device id gets nothing through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_acl_confines_a_box_to_its_own_prefix() {
    let dir = tmp("tls", "acl");
    make_certs(&dir);
    let acl = root().join("deploy/mosquitto/inspectd.acl");
    let shipped = std::fs::read_to_string(root().join("deploy/mosquitto/inspectd.conf")).unwrap();
    for line in [
        "use_identity_as_username true",
        "allow_anonymous false",
        "acl_file",
    ] {
        assert!(shipped.contains(line), "inspectd.conf lacks {line}");
    }
    let (_broker, tls_port, plain_port) = mosquitto(
        &dir,
        &format!(
            "use_identity_as_username true\nallow_anonymous false\nacl_file {}",
            acl.display()
        ),
    );
    // Both use the certificate with CN=line-3-box; only one claims that device id.
    let mut daemons = vec![];
    for device in ["line-3-box", "impostor"] {
        let text = config(
            device,
            &format!("mqtts://localhost:{tls_port}"),
            &files(&dir, "ca", true),
            &tmp("tls-acl", device).join("spool.redb"),
        );
        let cfg = Config::parse(&text, "test", Path::new(".")).unwrap();
        daemons.push(Daemon::start(cfg));
    }
    let got = collect(
        "127.0.0.1",
        plain_port,
        "inspect/#",
        Duration::from_secs(20),
        vec![],
        |g| g.get("verdict").is_some_and(|v| v.len() >= 20),
    )
    .await;
    for d in daemons {
        d.stop().await;
    }
    let verdicts = got.get("verdict").cloned().unwrap_or_default();
    assert!(verdicts.len() >= 20, "only {} verdicts", verdicts.len());
    assert!(verdicts.iter().all(|v| v["device"] == "line-3-box"));
    let statuses = got.get("status").cloned().unwrap_or_default();
    assert!(statuses.iter().any(|s| s["device"] == "line-3-box"));
    assert!(
        statuses.iter().all(|s| s["device"] != "impostor"),
        "{statuses:?}"
    );
}
