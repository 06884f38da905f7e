//! The v1 wire format, pinned: each file in `tests/golden/` is a payload as the edge published it
//! (captured from `inspectd demo` with `mosquitto_sub`; the `command-*` files as the supervisor
//! sends them). Each must decode into its type and encode back to the same bytes: a renamed,
//! reordered, added or dropped key fails here.

use std::path::Path;

use inspectd_contract::v1::{Alert, CmdResult, Command, Stats, Status, Verdict};
use serde::{de::DeserializeOwned, Serialize};

fn golden(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let mut b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(b.pop(), Some(b'\n'), "{name} ends with one newline");
    b
}

fn round_trip<T: DeserializeOwned + Serialize>(name: &str) -> T {
    let bytes = golden(name);
    let v: T = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again),
        String::from_utf8_lossy(&bytes),
        "{name} does not encode back to its bytes"
    );
    v
}

#[test]
fn every_golden_file_is_checked() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "alert-camera.json",
            "alert-camera_lost.json",
            "alert.json",
            "cmd_result-error.json",
            "cmd_result.json",
            "command-pause.json",
            "command-reload_model.json",
            "command-set.json",
            "command-trigger-camera.json",
            "command-trigger.json",
            "stats-cameras.json",
            "stats.json",
            "status-cameras.json",
            "status-instance.json",
            "status-stopped.json",
            "status.json",
            "verdict-camera.json",
            "verdict-ok.json",
            "verdict.json",
        ]
    );
}

#[test]
fn a_status_encodes_back_to_its_bytes() {
    let s: Status = round_trip("status.json");
    assert_eq!(s.state.as_str(), "online");
    assert_eq!(s.model.variant.unwrap().name, "int8");
    assert!(!s.stopped, "only a clean stop's last status says stopped");
    assert_eq!(s.instance, "", "a status from an older box has no instance");
}

#[test]
fn a_status_names_the_process_that_sent_it() {
    let s: Status = round_trip("status-instance.json");
    assert_eq!(s.instance, "5f0c2a9e41d7b386");
}

#[test]
fn a_clean_stops_last_status_says_stopped_and_a_last_will_does_not() {
    let s: Status = round_trip("status-stopped.json");
    assert_eq!((s.state.as_str(), s.stopped), ("offline", true));
    // The last will (and every status from an older box) has no `stopped`: lost, not stopped.
    let will = String::from_utf8(golden("status-stopped.json"))
        .unwrap()
        .replace(",\"stopped\":true", "");
    let w: Status = serde_json::from_str(&will).unwrap();
    assert!(!w.stopped);
}

#[test]
fn verdicts_encode_back_to_their_bytes() {
    let v: Verdict = round_trip("verdict.json");
    assert_eq!((v.seq, v.verdict.as_str()), (11, "suspect"));
    assert_eq!(v.reasons[0].zone.as_deref(), Some("watermark"));
    assert_eq!(v.part_id, None);
    let ok: Verdict = round_trip("verdict-ok.json");
    assert!(ok.reasons.is_empty());
    assert!(ok.latency_ms.unwrap().total > 0.0);
}

#[test]
fn an_alert_encodes_back_to_its_bytes() {
    let a: Alert = round_trip("alert.json");
    assert_eq!(a.kind, "suspect");
    assert_eq!(a.part_id, Some(None), "a suspect alert says part_id: null");
    assert_eq!(a.seq, Some(Some(11)));
}

#[test]
fn stats_encode_back_to_their_bytes() {
    let s: Stats = round_trip("stats.json");
    assert!(s.latency_ms["total"].p95.is_some());
    assert_eq!(s.verdicts.defect, 28);
}

#[test]
fn a_box_with_one_unnamed_camera_names_none() {
    let v: Verdict = round_trip("verdict.json");
    assert_eq!(v.camera, None);
    let s: Status = round_trip("status.json");
    assert!(s.cameras.is_empty());
    let st: Stats = round_trip("stats.json");
    assert!(st.cameras.is_empty());
    let a: Alert = round_trip("alert.json");
    assert_eq!(a.camera, None);
}

#[test]
fn messages_of_a_box_with_named_cameras_name_theirs_and_encode_back() {
    let v: Verdict = round_trip("verdict-camera.json");
    assert_eq!(v.camera.as_deref(), Some("station-2"));
    let a: Alert = round_trip("alert-camera.json");
    assert_eq!(
        (a.kind.as_str(), a.camera.as_deref()),
        ("suspect", Some("station-2"))
    );
    let lost: Alert = round_trip("alert-camera_lost.json");
    assert_eq!(lost.camera.as_deref(), Some("station-2"));
    let s: Status = round_trip("status-cameras.json");
    let names: Vec<(&str, &str, &str)> = s
        .cameras
        .iter()
        .map(|c| (c.name.as_str(), c.camera.as_str(), c.trigger.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("top", "ok", "continuous"),
            ("station-2", "lost", "triggered")
        ]
    );
    assert_eq!(
        s.camera, "lost",
        "one lost camera makes the box's camera lost"
    );
    let st: Stats = round_trip("stats-cameras.json");
    assert_eq!(st.cameras.iter().map(|c| c.frames).sum::<u64>(), st.frames);
    // A v1 receiver that knows nothing of cameras still reads them (unknown keys are ignored).
    let old = String::from_utf8(golden("verdict-camera.json")).unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&old).unwrap()["seq"].is_u64());
}

#[test]
fn command_results_encode_back_to_their_bytes() {
    let ok: CmdResult = round_trip("cmd_result.json");
    assert_eq!((ok.ok, ok.detail.as_deref()), (true, Some("paused")));
    let err: CmdResult = round_trip("cmd_result-error.json");
    assert!(!err.ok && err.detail.is_none() && err.id.is_none());
}

#[test]
fn commands_encode_back_to_their_bytes() {
    for (name, file) in [
        ("trigger", "command-trigger.json"),
        ("trigger", "command-trigger-camera.json"),
        ("set", "command-set.json"),
        ("pause", "command-pause.json"),
        ("reload_model", "command-reload_model.json"),
    ] {
        let bytes = golden(file);
        let c = Command::from_json(name, &bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(c.name(), name);
        assert_eq!(
            String::from_utf8_lossy(&c.to_json()),
            String::from_utf8_lossy(&bytes),
            "{file}"
        );
    }
    let Ok(Command::Set(s)) = Command::from_json("set", &golden("command-set.json")) else {
        panic!()
    };
    assert_eq!(s.max_spread, Some(None), "null switches max_spread off");
    assert_eq!(s.min_roi_fraction, None, "an absent key changes nothing");
}

#[test]
fn a_renamed_or_missing_key_does_not_decode() {
    let v = String::from_utf8(golden("verdict.json")).unwrap();
    for (from, to) in [
        ("\"seq\"", "\"sequence\""),
        ("inspect.verdict/1", "inspect.verdict/2"),
    ] {
        let bad = v.replacen(from, to, 1);
        assert!(serde_json::from_str::<Verdict>(&bad).is_err(), "{to}");
    }
    let s = String::from_utf8(golden("stats.json")).unwrap();
    let bad = s.replacen("\"verdicts\"", "\"counts\"", 1);
    assert!(serde_json::from_str::<Stats>(&bad).is_err());
    assert!(Command::from_json("pause", br#"{"now":true}"#).is_err());
    assert!(Command::from_json("explode", b"{}").is_err());
    assert_eq!(
        Command::from_json("rebirth", b"  ").unwrap(),
        Command::Rebirth(Default::default())
    );
}

#[test]
fn a_command_id_may_be_a_number_and_errors_name_their_key() {
    let Ok(Command::Pause(p)) = Command::from_json("pause", br#"{"id":17}"#) else {
        panic!()
    };
    assert_eq!(p.id.as_deref(), Some("17"), "echoed as its decimal text");
    let e = Command::from_json("pause", br#"{"id":[1]}"#).unwrap_err();
    assert!(
        e.contains("id") && e.contains("a string or a number"),
        "{e}"
    );
    let e = Command::from_json("set", br#"{"defect_threshold":"high"}"#).unwrap_err();
    assert!(e.starts_with("set: defect_threshold: invalid type"), "{e}");
    let e = Command::from_json("trigger", br#"{"part_id":"A"} x"#).unwrap_err();
    assert!(e.contains("trailing"), "{e}");
}
