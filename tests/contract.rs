//! The MQTT v1 contract between a real daemon and the supervisor: a replay daemon runs against a
//! broker, is sent commands (one it runs, one it refuses) and raises suspect alerts; every
//! message it publishes (status, verdict, alert, stats, cmd_result, evidence) must decode into
//! its contract type, encode back to the very bytes that arrived (a key the producer adds,
//! renames or reorders outside the type fails here), and be accepted by the supervisor's
//! `ingest::classify`.

use std::path::Path;
use std::time::Duration;

use inspectd::config::Config;
use inspectd_contract::v1;
use inspectd_supervisor::ingest::{classify, Incoming};
use serde::{de::DeserializeOwned, Serialize};

mod common;
use common::{broker, collect_raw, replay_config, Daemon};

/// `payload` as `T`, which must encode back to the same bytes.
fn decode_exact<T: DeserializeOwned + Serialize>(topic: &str, payload: &[u8]) -> T {
    let text = String::from_utf8_lossy(payload);
    let t: T = serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("{topic}: does not decode: {e}\n{text}"));
    let again = serde_json::to_vec(&t).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again),
        text,
        "{topic}: the contract type does not encode back to the published bytes"
    );
    t
}

#[test]
fn every_message_the_edge_publishes_is_its_contract_type_and_the_supervisor_accepts_it() {
    let (host, port) = broker();
    let dir = common::tmp("contract", "roundtrip");
    let device = "contract";
    let text = replay_config(
        device,
        20,
        &format!("url = \"mqtt://{host}:{port}\"\nkeep_alive_s = 5"),
        &dir.join("spool.redb"),
        "",
    );
    let cfg = Config::parse(&text, "test", Path::new(".")).unwrap();
    let p = format!("inspect/{device}");
    // The commands, built as the contract's types: a `set` that makes nearly every confidence
    // marginal (suspect verdicts, suspect alerts), and a `trigger`, refused on a box that
    // inspects continuously (an error cmd_result).
    let set = v1::Command::Set(v1::Set {
        id: Some("contract-set".into()),
        suspect_band: Some(Some([0.5, 0.999])),
        ..Default::default()
    });
    let trigger = v1::Command::Trigger(v1::Trigger {
        camera: None,
        id: Some("contract-trigger".into()),
        part_id: "P-1".into(),
    });
    let send = [set, trigger]
        .iter()
        .map(|c| (format!("{p}/cmd/{}", c.name()), c.to_json()))
        .collect();
    let rt = inspectd_contract::client::runtime().unwrap();
    let got = rt.block_on(async {
        let daemon = Daemon::start(cfg);
        let got = collect_raw(
            &host,
            port,
            &format!("{p}/#"),
            Duration::from_secs(60),
            send,
            |g| {
                let n = |k: &str| g.get(k).map_or(0, Vec::len);
                n("cmd_result") >= 2 && n("alert") >= 1 && n("stats") >= 1 && n("verdict") >= 1
            },
        )
        .await;
        daemon.stop().await;
        got
    });

    let mut results = vec![];
    let mut alerts = vec![];
    for (topic, payload) in got.values().flatten() {
        let accepted = classify("inspect", topic, payload)
            .unwrap_or_else(|d| panic!("{topic}: the supervisor drops it: {d:?}"));
        let leaf = topic[p.len() + 1..].split('/').next().unwrap();
        match (leaf, accepted) {
            ("status", Some(Incoming::Status { .. })) => {
                decode_exact::<v1::Status>(topic, payload);
            }
            ("verdict", Some(Incoming::Verdict(_))) => {
                decode_exact::<v1::Verdict>(topic, payload);
            }
            ("alert", Some(Incoming::Alert(_))) => {
                alerts.push(decode_exact::<v1::Alert>(topic, payload));
            }
            ("stats", Some(Incoming::Stats { .. })) => {
                decode_exact::<v1::Stats>(topic, payload);
            }
            ("cmd_result", Some(Incoming::CmdResult(_))) => {
                results.push(decode_exact::<v1::CmdResult>(topic, payload));
            }
            ("evidence", Some(Incoming::Evidence { .. })) => {}
            // Our own commands: part of the contract, not stored by the supervisor.
            ("cmd", None) => {}
            (leaf, other) => panic!("{topic}: {leaf} classified as {other:?}"),
        }
    }
    for kind in ["status", "verdict", "alert", "stats", "cmd_result"] {
        assert!(got.contains_key(kind), "no {kind} among {:?}", got.keys());
    }
    let by_id = |id: &str| {
        results
            .iter()
            .find(|r| r.id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no cmd_result for {id}: {results:?}"))
    };
    assert!(by_id("contract-set").ok, "{results:?}");
    let refused = by_id("contract-trigger");
    assert!(!refused.ok && refused.error.is_some(), "{refused:?}");
    assert!(alerts.iter().any(|a| a.kind == "suspect"), "{alerts:?}");
}
