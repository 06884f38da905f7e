//! What arrives on `{prefix}/+/#`: every message is checked against the MQTT contract before
//! anything is stored. A message that breaks it (too large, not JSON, wrong schema, a payload
//! claiming another device than its topic) is counted under its reason and dropped.

use base64::Engine as _;
use inspectd_contract::v1;
use serde_json::Value;

/// Largest JSON message accepted (a verdict with its PNG map is a few KiB).
pub const MAX_JSON: usize = 256 * 1024;
/// Largest evidence picture accepted.
pub const MAX_EVIDENCE: usize = 4 * 1024 * 1024;
/// Largest decoded CAM map accepted.
pub const MAX_MAP_PNG: usize = 64 * 1024;
/// Longest device id, label, part id or other short string kept.
pub const MAX_SHORT: usize = 256;

/// Why a message was dropped (the label of the counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    TooLarge,
    BadJson,
    BadSchema,
    BadTopic,
}

impl Reject {
    pub const ALL: [Reject; 4] = [
        Reject::TooLarge,
        Reject::BadJson,
        Reject::BadSchema,
        Reject::BadTopic,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::BadJson => "bad_json",
            Reject::BadSchema => "bad_schema",
            Reject::BadTopic => "bad_topic",
        }
    }
}

/// A dropped message: the reason and a one-line description for the log.
#[derive(Debug, PartialEq)]
pub struct Dropped {
    pub reason: Reject,
    pub detail: String,
}

fn drop_(reason: Reject, detail: impl Into<String>) -> Dropped {
    Dropped {
        reason,
        detail: detail.into(),
    }
}

/// A verdict as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub device: String,
    pub seq: i64,
    /// The device's time of the frame, and the same in ms since the epoch.
    pub ts: String,
    pub ts_ms: i64,
    pub part_id: Option<String>,
    pub verdict: String,
    pub label: String,
    pub confidence: f64,
    /// The reasons' texts (why suspect).
    pub reasons: Vec<String>,
    pub model: String,
    pub latency_ms: Option<f64>,
    /// The CAM map: 8-bit grayscale PNG at feature resolution.
    pub map_png: Vec<u8>,
    /// The payload without the map (shown on the verdict's page).
    pub raw: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub device: String,
    pub ts: String,
    pub kind: String,
    pub severity: String,
    pub message: String,
    pub seq: Option<i64>,
    pub raw: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CmdResult {
    pub device: String,
    pub ts: String,
    pub command: String,
    pub id: Option<String>,
    pub ok: bool,
    pub detail: String,
}

/// One accepted message.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// `state` is online, offline, stopping or stopped (the end of a clean stop); `ts_ms` its `ts`, when it has one; `raw` the
    /// whole status.
    Status {
        device: String,
        state: String,
        ts_ms: Option<i64>,
        /// The process that sent it (absent from older boxes).
        instance: Option<String>,
        raw: String,
    },
    /// A retained status was cleared (empty payload): the device is decommissioned.
    Forget {
        device: String,
    },
    Verdict(Box<Verdict>),
    Evidence {
        device: String,
        seq: i64,
        jpeg: Vec<u8>,
    },
    Alert(Alert),
    /// Counters for the rates: cumulative ok/defect/suspect verdicts, and the whole message.
    Stats {
        device: String,
        counts: [i64; 3],
        raw: String,
    },
    CmdResult(CmdResult),
}

impl Incoming {
    pub fn device(&self) -> &str {
        match self {
            Incoming::Status { device, .. }
            | Incoming::Forget { device }
            | Incoming::Evidence { device, .. }
            | Incoming::Stats { device, .. } => device,
            Incoming::Verdict(v) => &v.device,
            Incoming::Alert(a) => &a.device,
            Incoming::CmdResult(c) => &c.device,
        }
    }

    /// The counter label of the message kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Incoming::Status { .. } | Incoming::Forget { .. } => "status",
            Incoming::Verdict(_) => "verdict",
            Incoming::Evidence { .. } => "evidence",
            Incoming::Alert(_) => "alert",
            Incoming::Stats { .. } => "stats",
            Incoming::CmdResult(_) => "cmd_result",
        }
    }
}

/// The message kinds counted (`Incoming::kind`).
pub const KINDS: [&str; 6] = [
    "status",
    "verdict",
    "evidence",
    "alert",
    "stats",
    "cmd_result",
];

/// Parses a JSON object with the expected schema tag and the topic's device.
fn object(payload: &[u8], schema: &str, device: &str) -> Result<Value, Dropped> {
    if payload.len() > MAX_JSON {
        return Err(drop_(
            Reject::TooLarge,
            format!("{schema}: {} bytes (limit {MAX_JSON})", payload.len()),
        ));
    }
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| drop_(Reject::BadJson, format!("{schema}: {e}")))?;
    if !v.is_object() {
        return Err(drop_(Reject::BadSchema, format!("{schema}: not an object")));
    }
    match v.get("schema").and_then(Value::as_str) {
        Some(s) if s == schema => {}
        other => {
            return Err(drop_(
                Reject::BadSchema,
                format!("expected schema {schema}, got {other:?}"),
            ))
        }
    }
    match v.get("device") {
        None => {}
        Some(Value::String(d)) if d == device => {}
        Some(other) => {
            return Err(drop_(
                Reject::BadSchema,
                format!("{schema}: device {other} is not the topic's {device:?}"),
            ))
        }
    }
    Ok(v)
}

/// The message as its contract type (`v` passed [`object`]); a key of the wrong type is a
/// broken contract.
fn typed<'a, T: serde::Deserialize<'a>>(v: &'a Value, what: &str) -> Result<T, Dropped> {
    T::deserialize(v).map_err(|e| drop_(Reject::BadSchema, format!("{what}: {e}")))
}

/// At most [`MAX_SHORT`] bytes.
fn bounded(s: &str, key: &str, what: &str) -> Result<(), Dropped> {
    if s.len() > MAX_SHORT {
        return Err(drop_(
            Reject::BadSchema,
            format!("{what}: {key} is over {MAX_SHORT} bytes"),
        ));
    }
    Ok(())
}

/// Checks one message. `Ok(None)`: a topic of the contract that the supervisor does not store
/// (commands, its own or another operator's).
pub fn classify(prefix: &str, topic: &str, payload: &[u8]) -> Result<Option<Incoming>, Dropped> {
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| drop_(Reject::BadTopic, format!("{topic:?} is outside {prefix}/")))?;
    let (device, leaf) = rest
        .split_once('/')
        .ok_or_else(|| drop_(Reject::BadTopic, format!("{topic:?} has no message kind")))?;
    if device.is_empty() || device.len() > MAX_SHORT {
        return Err(drop_(Reject::BadTopic, format!("{topic:?}: bad device id")));
    }
    let device = device.to_string();
    let what = |s: &str| format!("{s} from {device:?}");
    match leaf {
        "status" => {
            if payload.is_empty() {
                return Ok(Some(Incoming::Forget { device }));
            }
            let v = object(payload, v1::StatusSchema::SCHEMA, &device)?;
            let s: v1::Status = typed(&v, &what("status"))?;
            bounded(&s.instance, "instance", &what("status"))?;
            Ok(Some(Incoming::Status {
                instance: Some(s.instance).filter(|i| !i.is_empty()),
                // A clean stop's final `offline` is told apart from the last will.
                state: if s.state == v1::State::Offline && s.stopped {
                    "stopped".to_string()
                } else {
                    s.state.as_str().to_string()
                },
                ts_ms: inspectd_contract::timefmt::parse_ms(&s.ts),
                raw: v.to_string(),
                device,
            }))
        }
        "verdict" => {
            let mut v = object(payload, v1::VerdictSchema::SCHEMA, &device)?;
            let w = what("verdict");
            let t: v1::Verdict = typed(&v, &w)?;
            let seq = i64::try_from(t.seq).map_err(|_| {
                drop_(
                    Reject::BadSchema,
                    format!("{w}: seq is missing or not a non-negative integer"),
                )
            })?;
            bounded(&t.label, "label", &w)?;
            bounded(&t.ts, "ts", &w)?;
            let ts_ms = inspectd_contract::timefmt::parse_ms(&t.ts).ok_or_else(|| {
                drop_(
                    Reject::BadSchema,
                    format!("{w}: ts {:?} is not RFC 3339", t.ts),
                )
            })?;
            if !(0.0..=1.0).contains(&t.confidence) {
                return Err(drop_(
                    Reject::BadSchema,
                    format!("{w}: confidence is not in [0, 1]"),
                ));
            }
            if let Some(p) = &t.part_id {
                bounded(p, "part_id", &w)?;
            }
            let reasons: Vec<String> = t.reasons.iter().map(|r| r.shown().to_string()).collect();
            if t.verdict == v1::Kind::Suspect && reasons.is_empty() {
                return Err(drop_(
                    Reject::BadSchema,
                    format!("{w}: a suspect verdict without reasons"),
                ));
            }
            let model = t.model.name.chars().take(MAX_SHORT).collect();
            let latency_ms = t.latency_ms.as_ref().map(|l| l.total);
            let map_png = match &t.cam.png {
                None => vec![],
                Some(b64) => {
                    let png = base64::engine::general_purpose::STANDARD
                        .decode(b64.as_bytes())
                        .map_err(|e| drop_(Reject::BadSchema, format!("{w}: cam.png: {e}")))?;
                    if png.len() > MAX_MAP_PNG || !png.starts_with(b"\x89PNG\r\n\x1a\n") {
                        return Err(drop_(
                            Reject::BadSchema,
                            format!("{w}: cam.png is not a PNG of at most {MAX_MAP_PNG} bytes"),
                        ));
                    }
                    png
                }
            };
            let (verdict, label, ts, part_id) =
                (t.verdict.as_str().to_string(), t.label, t.ts, t.part_id);
            if let Some(cam) = v.get_mut("cam").and_then(Value::as_object_mut) {
                cam.remove("png");
            }
            Ok(Some(Incoming::Verdict(Box::new(Verdict {
                seq,
                ts,
                ts_ms,
                part_id,
                verdict,
                label,
                confidence: t.confidence,
                reasons,
                model,
                latency_ms,
                map_png,
                raw: v.to_string(),
                device,
            }))))
        }
        "alert" => {
            let v = object(payload, v1::AlertSchema::SCHEMA, &device)?;
            let w = what("alert");
            let a: v1::Alert = typed(&v, &w)?;
            bounded(&a.kind, "kind", &w)?;
            bounded(&a.ts, "ts", &w)?;
            bounded(&a.severity, "severity", &w)?;
            let (kind, ts, severity) = (a.kind, a.ts, a.severity);
            let message = a.message.chars().take(4096).collect();
            let seq = a.seq.flatten().map(|s| s.min(i64::MAX as u64) as i64);
            Ok(Some(Incoming::Alert(Alert {
                kind,
                ts,
                severity,
                message,
                seq,
                raw: v.to_string(),
                device,
            })))
        }
        "stats" => {
            let v = object(payload, v1::StatsSchema::SCHEMA, &device)?;
            let st: v1::Stats = typed(&v, &what("stats"))?;
            let c = st.verdicts;
            let counts = [c.ok, c.defect, c.suspect].map(|n| n.min(i64::MAX as u64) as i64);
            Ok(Some(Incoming::Stats {
                counts,
                raw: v.to_string(),
                device,
            }))
        }
        "cmd_result" => {
            let v = object(payload, v1::CmdResultSchema::SCHEMA, &device)?;
            let w = what("cmd_result");
            let r: v1::CmdResult = typed(&v, &w)?;
            bounded(&r.ts, "ts", &w)?;
            bounded(&r.command, "command", &w)?;
            if let Some(id) = &r.id {
                bounded(id, "id", &w)?;
            }
            let detail = if r.ok { r.detail } else { r.error };
            Ok(Some(Incoming::CmdResult(CmdResult {
                ts: r.ts,
                command: r.command,
                id: r.id,
                ok: r.ok,
                detail: detail.unwrap_or_default().chars().take(4096).collect(),
                device,
            })))
        }
        _ if leaf.starts_with("evidence/") => {
            let seq: i64 = leaf["evidence/".len()..]
                .parse::<u64>()
                .ok()
                .filter(|&s| s <= i64::MAX as u64)
                .map(|s| s as i64)
                .ok_or_else(|| {
                    drop_(Reject::BadTopic, format!("{topic:?}: bad sequence number"))
                })?;
            if payload.len() > MAX_EVIDENCE {
                return Err(drop_(
                    Reject::TooLarge,
                    format!(
                        "evidence from {device:?}: {} bytes (limit {MAX_EVIDENCE})",
                        payload.len()
                    ),
                ));
            }
            if !payload.starts_with(&[0xFF, 0xD8, 0xFF]) {
                return Err(drop_(
                    Reject::BadSchema,
                    format!("evidence from {device:?} is not a JPEG"),
                ));
            }
            Ok(Some(Incoming::Evidence {
                device,
                seq,
                jpeg: payload.to_vec(),
            }))
        }
        _ if leaf.starts_with("cmd/") => Ok(None),
        _ => Err(drop_(
            Reject::BadTopic,
            format!("{topic:?}: unknown message kind"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verdict(device: &str) -> Value {
        json!({"schema": "inspect.verdict/1", "device": device, "seq": 7, "ts": "2026-11-26T10:00:00.000Z",
               "part_id": "P-1", "verdict": "suspect", "label": "scratch", "confidence": 0.61,
               "reasons": [{"code": "marginal", "text": "confidence 0.61 is marginal"}],
               "cam": {"png": base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nrest"), "w": 16},
               "model": {"name": "surface-defect"}, "latency_ms": {"total": 12.5}})
    }

    fn cls(topic: &str, v: &Value) -> Result<Option<Incoming>, Dropped> {
        classify("inspect", topic, v.to_string().as_bytes())
    }

    #[test]
    fn a_verdict_is_read_and_its_map_taken_out_of_the_raw_payload() {
        let Some(Incoming::Verdict(v)) = cls("inspect/a/verdict", &verdict("a")).unwrap() else {
            panic!()
        };
        assert_eq!(
            (v.device.as_str(), v.seq, v.verdict.as_str()),
            ("a", 7, "suspect")
        );
        assert_eq!(v.reasons, vec!["confidence 0.61 is marginal".to_string()]);
        assert_eq!(v.part_id.as_deref(), Some("P-1"));
        assert_eq!(v.latency_ms, Some(12.5));
        assert!(v.map_png.starts_with(b"\x89PNG"));
        assert!(!v.raw.contains("\"png\""), "{}", v.raw);
        assert_eq!(
            v.ts_ms,
            inspectd_contract::timefmt::parse_ms("2026-11-26T10:00:00Z").unwrap()
        );
    }

    #[test]
    fn contract_violations_are_dropped_under_their_reason() {
        let reason =
            |topic: &str, payload: &[u8]| classify("inspect", topic, payload).unwrap_err().reason;
        assert_eq!(reason("inspect/a/verdict", b"{not json"), Reject::BadJson);
        assert_eq!(
            reason("inspect/a/verdict", &vec![b' '; MAX_JSON + 1]),
            Reject::TooLarge
        );
        assert_eq!(reason("inspect/a/verdict", b"[1,2]"), Reject::BadSchema);
        assert_eq!(
            reason("inspect/a/evidence/x", b"\xFF\xD8\xFF"),
            Reject::BadTopic
        );
        assert_eq!(reason("inspect/a/evidence/3", b"GIF89a"), Reject::BadSchema);
        assert_eq!(reason("inspect/a/whatever", b"{}"), Reject::BadTopic);
        assert_eq!(reason("other/a/verdict", b"{}"), Reject::BadTopic);
        // A box publishing as another device.
        assert_eq!(
            reason("inspect/b/verdict", verdict("a").to_string().as_bytes()),
            Reject::BadSchema
        );
        for (key, bad) in [
            ("seq", json!(-1)),
            ("seq", json!("7")),
            ("verdict", json!("maybe")),
            ("confidence", json!(1.5)),
            ("ts", json!("yesterday")),
            ("label", json!("x".repeat(MAX_SHORT + 1))),
            ("reasons", json!([])),
            ("schema", json!("inspect.verdict/2")),
        ] {
            let mut v = verdict("a");
            v[key] = bad.clone();
            assert_eq!(
                reason("inspect/a/verdict", v.to_string().as_bytes()),
                Reject::BadSchema,
                "{key} = {bad}"
            );
        }
        let mut v = verdict("a");
        v["cam"]["png"] = json!("not base64!");
        assert_eq!(
            reason("inspect/a/verdict", v.to_string().as_bytes()),
            Reject::BadSchema
        );
    }

    #[test]
    fn status_alert_stats_results_and_commands() {
        let s = cls(
            "inspect/a/status",
            &json!({"schema": "inspect.status/1", "state": "offline"}),
        )
        .unwrap();
        assert!(matches!(s, Some(Incoming::Status { ref state, .. }) if state == "offline"));
        assert_eq!(
            classify("inspect", "inspect/a/status", b"").unwrap(),
            Some(Incoming::Forget { device: "a".into() })
        );
        let a = cls("inspect/a/alert", &json!({"schema": "inspect.alert/1", "ts": "t", "kind": "suspect", "message": "m", "seq": 3})).unwrap();
        assert!(matches!(
            a,
            Some(Incoming::Alert(Alert { seq: Some(3), .. }))
        ));
        let st = cls(
            "inspect/a/stats",
            &json!({"schema": "inspect.stats/1", "verdicts": {"ok": 5, "defect": 2, "suspect": 1}}),
        )
        .unwrap();
        assert!(matches!(
            st,
            Some(Incoming::Stats {
                counts: [5, 2, 1],
                ..
            })
        ));
        let r = cls("inspect/a/cmd_result", &json!({"schema": "inspect.cmd_result/1", "ts": "t", "command": "pause", "id": "c1", "ok": false, "error": "no"})).unwrap();
        assert!(
            matches!(r, Some(Incoming::CmdResult(CmdResult { ok: false, ref detail, .. })) if detail == "no")
        );
        assert_eq!(
            classify("inspect", "inspect/a/cmd/trigger", b"{}").unwrap(),
            None
        );
        let e = classify("inspect", "inspect/a/evidence/9", b"\xFF\xD8\xFF\xE0").unwrap();
        assert!(matches!(e, Some(Incoming::Evidence { seq: 9, .. })));
    }
}
