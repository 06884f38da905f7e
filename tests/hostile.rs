//! Hostile traffic on the command topics: whatever a client allowed to publish commands sends
//! (names cut inside a UTF-8 character, right-to-left overrides, 5000-byte levels, `..`, junk
//! and 1 MiB payloads, a 1.5 MiB retained command), the daemon answers each with an error `cmd_result`
//! and its verdicts keep arriving with contiguous `seq`. A panic in the publisher used to stop
//! every verdict while the process looked healthy.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use inspectd::config::Config;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

mod common;
use common::{broker, replay_config, Daemon};

/// The hostile command topic levels (each must get exactly one error answer).
fn hostile_levels() -> Vec<String> {
    let mut v = vec![];
    // Multi-byte characters at every byte boundary around the 64-character limit.
    for n in [62, 63, 64, 65] {
        for c in ['é', '€', '𝄞', '\u{202e}'] {
            v.push(format!("{}{c}b", "a".repeat(n)));
        }
    }
    v.push("\u{202e}esuap".into()); // right-to-left override + "pause" reversed
    v.push("pa\u{202e}use".into());
    v.push("x".repeat(5000));
    v.push("..".into());
    v.push("%2e%2e".into());
    v.push("trigger\u{0301}".into()); // combining accent: not "trigger"
    v.push("ＰＡＵＳＥ".into()); // full-width
    v.push(" ".into());
    v
}

#[test]
fn hostile_command_topics_get_error_answers_and_verdicts_keep_flowing() {
    let (host, port) = broker();
    let dir = common::tmp("hostile", "topics");
    let device = "hostile";
    let text = replay_config(
        device,
        20,
        &format!("url = \"mqtt://{host}:{port}\"\nkeep_alive_s = 5"),
        &dir.join("spool.redb"),
        "",
    );
    let cfg = Config::parse(&text, "test", Path::new(".")).unwrap();
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let mut opts = MqttOptions::new(format!("hostile-{}", std::process::id()), &host, port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(8 << 20, 4 << 20);
        let (client, mut el) = AsyncClient::new(opts, 256);
        let p = format!("inspect/{device}");
        client
            .subscribe(format!("{p}/+"), QoS::AtLeastOnce)
            .await
            .unwrap();

        // (topic, payload, retain): what an attacker sends once the daemon is online.
        let mut send: Vec<(String, Vec<u8>, bool)> = hostile_levels()
            .into_iter()
            .map(|l| (format!("{p}/cmd/{l}"), b"{}".to_vec(), false))
            .collect();
        for junk in [
            vec![0xff, 0xfe, 0x00, 0x80],
            b"{\"part_id\": \"\xc3\x28\"}".to_vec(),
            vec![b'{'; 1 << 20],
            b"null".to_vec(),
            b"{\"part_id\":\"A\",\"id\":{\"deep\":[1,2,3]}}".to_vec(),
        ] {
            send.push((format!("{p}/cmd/trigger"), junk, false));
        }
        // A valid trigger on a box that inspects continuously.
        send.push((
            format!("{p}/cmd/trigger"),
            br#"{"part_id":"P-1"}"#.to_vec(),
            false,
        ));
        // A stale retained pause, there before the daemon subscribes (a broker hands a retained
        // message to a new subscription with the retain flag; to existing ones without).
        // Over 1 MiB: the client's old packet limit closed the connection on it and the broker
        // handed it over again on every subscribe (a reconnect loop, no verdicts).
        let mut big = b"{\"pad\":\"".to_vec();
        big.resize(1_500_000, b'x');
        big.extend_from_slice(b"\"}");
        client
            .publish(format!("{p}/cmd/pause"), QoS::AtLeastOnce, true, big)
            .await
            .unwrap();
        let expected = send.len() + 1;
        let daemon = Daemon::start(cfg);
        assert!(expected >= 30, "{expected} hostile messages");

        let mut results = vec![];
        let mut seqs_after: Vec<u64> = vec![];
        let mut all_seqs = BTreeSet::new();
        let mut sent = false;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if results.len() >= expected && seqs_after.len() >= 20 {
                break;
            }
            let ev = match tokio::time::timeout(Duration::from_millis(200), el.poll()).await {
                Ok(Ok(ev)) => ev,
                Ok(Err(e)) => panic!("observer lost the broker: {e}"),
                Err(_) => continue,
            };
            let Event::Incoming(Packet::Publish(m)) = ev else {
                continue;
            };
            let v: serde_json::Value =
                serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null);
            match m.topic.rsplit('/').next().unwrap_or("") {
                "status" if v["state"] == "online" && !sent => {
                    sent = true;
                    for (t, payload, retain) in send.drain(..) {
                        client
                            .publish(t, QoS::AtLeastOnce, retain, payload)
                            .await
                            .unwrap();
                    }
                }
                "cmd_result" => results.push(v),
                "verdict" => {
                    let seq = v["seq"].as_u64().unwrap();
                    assert!(all_seqs.insert(seq), "seq {seq} twice");
                    if results.len() >= expected {
                        seqs_after.push(seq);
                    }
                }
                _ => {}
            }
        }
        // Clear the retained command for other tests on a shared broker.
        client
            .publish(format!("{p}/cmd/pause"), QoS::AtLeastOnce, true, Vec::new())
            .await
            .unwrap();
        assert!(sent, "the daemon never came online");
        let paused = results.iter().filter(|r| r["ok"] == true).count();
        assert_eq!(
            paused, 0,
            "a hostile or retained command was obeyed: {results:#?}"
        );
        assert_eq!(
            results.len(),
            expected,
            "one answer per hostile message: {results:#?}"
        );
        for r in &results {
            assert_eq!(r["ok"], false, "{r}");
            let name = r["command"].as_str().unwrap();
            assert!(
                name.chars().count() <= 65,
                "echoed name {} chars",
                name.len()
            );
        }
        let errors: Vec<&str> = results
            .iter()
            .map(|r| r["error"].as_str().unwrap())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains("inspects continuously")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains("retained")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("limit")), "{errors:?}");
        // Verdicts kept flowing after every answer, with contiguous seq throughout.
        assert!(
            seqs_after.len() >= 20,
            "{} verdicts after the attack",
            seqs_after.len()
        );
        let (lo, hi) = (*all_seqs.first().unwrap(), *all_seqs.last().unwrap());
        assert_eq!(all_seqs.len() as u64, hi - lo + 1, "gaps in {all_seqs:?}");
        daemon.stop().await;
    });
}
