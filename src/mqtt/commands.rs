//! `{p}/cmd/{name}` payloads: parsed and validated before anything changes. A bad command gets
//! an error `cmd_result` and changes nothing.

use inspectd_contract::limits::{MAX_COMMAND_PAYLOAD, MAX_ID_BYTES, MAX_PART_ID_BYTES};
use inspectd_contract::v1;
use serde_json::Value;

use crate::verdict::Rules;

/// A validated command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Trigger {
        part_id: String,
        /// The camera named by the command (checked against the box's cameras when queued).
        camera: Option<String>,
    },
    /// New verdict rules (the current ones with the given keys changed, already validated).
    Set(Box<Rules>),
    Pause,
    Resume,
    /// Reload the model file; with `sha256`, only if the file has that hash.
    ReloadModel {
        sha256: Option<String>,
    },
    Rebirth,
}

/// The request id, read on its own so that a command refused for its other keys still echoes
/// it. A bad id refuses the command, echoed without one.
fn request_id(name: &str, payload: &[u8]) -> Result<Option<String>, String> {
    if payload.len() > MAX_COMMAND_PAYLOAD {
        return Err(format!(
            "payload of {} bytes is over the {MAX_COMMAND_PAYLOAD}-byte limit",
            payload.len()
        ));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let id = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(mut m)) => m.remove("id"),
        Ok(_) => return Err(format!("{name}: payload must be a JSON object")),
        Err(e) => return Err(format!("{name}: invalid JSON: {e}")),
    };
    match id {
        None => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_ID_BYTES => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(format!(
            "{name}: id must be a string of at most {MAX_ID_BYTES} bytes or a number"
        )),
    }
}

/// The command's values checked (its shape is the contract's, [`v1::Command`]).
fn validate(command: v1::Command, rules: &Rules) -> Result<Command, String> {
    Ok(match command {
        v1::Command::Trigger(t) => {
            if t.part_id.is_empty() || t.part_id.len() > MAX_PART_ID_BYTES {
                return Err(format!(
                    "trigger: part_id must be 1 to {MAX_PART_ID_BYTES} bytes"
                ));
            }
            Command::Trigger {
                part_id: t.part_id,
                camera: t.camera,
            }
        }
        v1::Command::Set(s) => {
            let v1::Set {
                check_ok_evidence,
                defect_threshold,
                id: _,
                max_ignore_fraction,
                max_spread,
                min_roi_fraction,
                suspect_band,
            } = s;
            let mut r = rules.clone();
            let mut changed = false;
            let mut put = |slot: &mut f32, v: Option<f64>| {
                if let Some(v) = v {
                    *slot = v as f32;
                    changed = true;
                }
            };
            put(&mut r.defect_threshold, defect_threshold);
            put(&mut r.min_roi_fraction, min_roi_fraction);
            put(&mut r.max_ignore_fraction, max_ignore_fraction);
            if let Some(v) = max_spread {
                r.max_spread = v.map(|x| x as f32);
                changed = true;
            }
            if let Some(v) = suspect_band {
                r.suspect_band = v.map(|b| b.map(|x| x as f32));
                changed = true;
            }
            if let Some(v) = check_ok_evidence {
                r.check_ok_evidence = v;
                changed = true;
            }
            if !changed {
                return Err("set: nothing to change".into());
            }
            r.validate().map_err(|e| format!("set: {e}"))?;
            Command::Set(Box::new(r))
        }
        v1::Command::ReloadModel(m) => Command::ReloadModel {
            sha256: match m.sha256 {
                None => None,
                Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(h.to_ascii_lowercase())
                }
                Some(_) => return Err("reload_model: sha256 must be 64 hex digits".into()),
            },
        },
        v1::Command::Pause(_) => Command::Pause,
        v1::Command::Resume(_) => Command::Resume,
        v1::Command::Rebirth(_) => Command::Rebirth,
    })
}

/// Parses `payload` for command `name` against the current `rules`: the request id, and the
/// command read as the contract's [`v1::Command`] with its values checked, or why it is refused.
pub fn parse(
    name: &str,
    payload: &[u8],
    rules: &Rules,
) -> (Option<String>, Result<Command, String>) {
    let id = match request_id(name, payload) {
        Ok(id) => id,
        Err(e) => return (None, Err(e)),
    };
    if !v1::COMMANDS.contains(&name) {
        return (
            id,
            Err(format!(
                "unknown command {name:?} ({})",
                v1::COMMANDS.join(", ")
            )),
        );
    }
    let cmd = v1::Command::from_json(name, payload).and_then(|c| validate(c, rules));
    (id, cmd)
}

/// Longest command name (topic level after `cmd/`) shown in a `cmd_result`, in characters.
pub use inspectd_contract::limits::MAX_NAME_CHARS;

/// The command name as it may be echoed back: at most [`MAX_NAME_CHARS`] characters, cut on a
/// character boundary (a topic level is any UTF-8 a client cares to send).
pub fn shown_name(level: &str) -> String {
    match level.char_indices().nth(MAX_NAME_CHARS) {
        Some((cut, _)) => format!("{}…", &level[..cut]),
        None => level.to_string(),
    }
}

/// One incoming message on `{p}/cmd/{level}`, checked before anything is parsed: a retained
/// command is stale by definition (it would run again on every reconnect), and `level` is
/// echoed only in its shortened form. Returns the name to answer under, the request id and
/// the command or the reason it is refused.
pub fn route(
    level: &str,
    payload: &[u8],
    retained: bool,
    rules: &Rules,
) -> (String, Option<String>, Result<Command, String>) {
    let name = shown_name(level);
    if retained {
        return (
            name,
            None,
            Err("retained commands are ignored: publish commands with retain = false".into()),
        );
    }
    if level.chars().count() > MAX_NAME_CHARS {
        return (
            name,
            None,
            Err(format!(
                "unknown command (name over {MAX_NAME_CHARS} characters)"
            )),
        );
    }
    let (id, cmd) = parse(level, payload, rules);
    (name, id, cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, payload: &str) -> Result<Command, String> {
        parse(name, payload.as_bytes(), &Rules::default()).1
    }

    #[test]
    fn valid_commands_parse() {
        assert_eq!(
            p("trigger", r#"{"part_id":"A-17"}"#),
            Ok(Command::Trigger {
                part_id: "A-17".into(),
                camera: None
            })
        );
        assert_eq!(
            p("trigger", r#"{"part_id":"A-18","camera":"side"}"#),
            Ok(Command::Trigger {
                part_id: "A-18".into(),
                camera: Some("side".into())
            })
        );
        assert_eq!(p("pause", ""), Ok(Command::Pause));
        assert_eq!(p("rebirth", "{}"), Ok(Command::Rebirth));
        assert_eq!(
            p("reload_model", ""),
            Ok(Command::ReloadModel { sha256: None })
        );
        let h = "AB".repeat(32);
        assert_eq!(
            p("reload_model", &format!(r#"{{"sha256":"{h}"}}"#)),
            Ok(Command::ReloadModel {
                sha256: Some(h.to_ascii_lowercase())
            })
        );
        match p(
            "set",
            r#"{"defect_threshold":0.7,"suspect_band":[0.4,0.6]}"#,
        ) {
            Ok(Command::Set(r)) => {
                assert_eq!(r.defect_threshold, 0.7);
                assert_eq!(r.suspect_band, Some([0.4, 0.6]));
            }
            other => panic!("{other:?}"),
        }
        let (id, _) = parse("pause", br#"{"id":"req-1"}"#, &Rules::default());
        assert_eq!(id.as_deref(), Some("req-1"));
    }

    #[test]
    fn bad_commands_are_refused_with_a_reason() {
        for (name, payload, needle) in [
            ("trigger", "{not json", "invalid JSON"),
            ("trigger", "[1,2]", "JSON object"),
            ("trigger", r#"{"part_id":17}"#, "string"),
            ("trigger", "{}", "missing field `part_id`"),
            (
                "set",
                r#"{"defect_threshold":"high"}"#,
                "defect_threshold: invalid type",
            ),
            ("set", r#"{"defect_threshold":3}"#, "defect_threshold"),
            ("set", r#"{"colour":1}"#, "unknown field `colour`"),
            ("set", "{}", "nothing"),
            ("pause", r#"{"now":true}"#, "unknown field `now`"),
            ("explode", "{}", "unknown command"),
            ("reload_model", r#"{"sha256":"abc"}"#, "64 hex digits"),
            ("reload_model", r#"{"sha256":7}"#, "sha256: invalid type"),
            (
                "reload_model",
                r#"{"path":"/etc/passwd"}"#,
                "unknown field `path`",
            ),
        ] {
            let e = p(name, payload).unwrap_err();
            assert!(e.contains(needle), "{name} {payload}: {e}");
        }
        let big = format!(r#"{{"part_id":"{}"}}"#, "x".repeat(5000));
        assert!(p("trigger", &big).unwrap_err().contains("limit"));
        let long = format!(r#"{{"part_id":"{}"}}"#, "é".repeat(65));
        assert!(p("trigger", &long).unwrap_err().contains("1 to 128 bytes"));
        // A refused command still echoes its id (a number as its decimal text); a bad id is
        // refused without one.
        let (id, r) = parse("set", br#"{"id":"r-1","colour":1}"#, &Rules::default());
        assert_eq!((id.as_deref(), r.is_err()), (Some("r-1"), true));
        let (id, r) = parse("explode", br#"{"id":7}"#, &Rules::default());
        assert_eq!((id.as_deref(), r.is_err()), (Some("7"), true));
        let (id, r) = parse("pause", br#"{"id":[7]}"#, &Rules::default());
        assert_eq!(id, None);
        assert!(r.unwrap_err().contains("id must be"));
        let (id, r) = parse(
            "pause",
            format!(r#"{{"id":"{}"}}"#, "i".repeat(129)).as_bytes(),
            &Rules::default(),
        );
        assert_eq!(id, None);
        assert!(r.unwrap_err().contains("at most 128 bytes"));
    }

    #[test]
    fn a_command_name_is_cut_on_a_character_boundary_never_inside_one() {
        // 63 ASCII bytes then a 2-byte character straddling byte 64: the cut that panicked.
        let level = format!("{}éb", "a".repeat(63));
        assert_eq!(shown_name(&level), format!("{}é…", "a".repeat(63)));
        assert_eq!(shown_name("trigger"), "trigger");
        let long = format!("{}é{}", "a".repeat(63), "b".repeat(10));
        let shown = shown_name(&long);
        assert!(
            shown.starts_with(&"a".repeat(63)) && shown.ends_with('…'),
            "{shown}"
        );
        for n in 0..200 {
            for c in ['é', '€', '𝄞', '\u{202e}'] {
                let level = format!("{}{c}{}", "x".repeat(n), "y".repeat(n % 7));
                let (name, _, r) = route(&level, b"{}", false, &Rules::default());
                assert!(name.chars().count() <= MAX_NAME_CHARS + 1);
                assert!(r.is_err(), "{level:?} is no command");
            }
        }
    }

    #[test]
    fn retained_and_overlong_commands_are_refused_without_being_parsed() {
        let (_, _, r) = route("pause", b"", true, &Rules::default());
        assert!(r.unwrap_err().contains("retained"));
        let (name, _, r) = route(&"p".repeat(5000), b"", false, &Rules::default());
        assert!(r.unwrap_err().contains("over 64 characters"));
        assert!(name.len() < 100);
        let (_, _, r) = route("pause", b"", false, &Rules::default());
        assert_eq!(r, Ok(Command::Pause));
    }
}
