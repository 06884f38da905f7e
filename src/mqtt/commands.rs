//! `{p}/cmd/{name}` payloads: parsed and validated before anything changes. A bad command gets
//! an error `cmd_result` and changes nothing.

use serde_json::{Map, Value};

use crate::verdict::Rules;

/// Largest accepted command payload.
pub const MAX_PAYLOAD: usize = 4096;

/// A validated command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Trigger {
        part_id: String,
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

/// A command with its optional request id (echoed in the result).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: Option<String>,
    pub command: Command,
}

fn obj(payload: &[u8], name: &str) -> Result<Map<String, Value>, String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "payload of {} bytes is over the {MAX_PAYLOAD}-byte limit",
            payload.len()
        ));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{name}: payload must be a JSON object")),
        Err(e) => Err(format!("{name}: invalid JSON: {e}")),
    }
}

fn allow(m: &Map<String, Value>, name: &str, keys: &[&str]) -> Result<(), String> {
    for k in m.keys() {
        if k != "id" && !keys.contains(&k.as_str()) {
            return Err(format!("{name}: unknown key {k:?}"));
        }
    }
    Ok(())
}

fn number(v: &Value, key: &str) -> Result<f32, String> {
    v.as_f64()
        .map(|x| x as f32)
        .ok_or_else(|| format!("set: {key} must be a number"))
}

/// Parses `payload` for command `name` against the current `rules`.
pub fn parse(
    name: &str,
    payload: &[u8],
    rules: &Rules,
) -> (Option<String>, Result<Command, String>) {
    let m = match obj(payload, name) {
        Ok(m) => m,
        Err(e) => return (None, Err(e)),
    };
    let id = match m.get("id") {
        None => None,
        Some(Value::String(s)) if s.len() <= 128 => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return (
                None,
                Err(format!(
                    "{name}: id must be a string of at most 128 bytes or a number"
                )),
            )
        }
    };
    let cmd = (|| -> Result<Command, String> {
        match name {
            "trigger" => {
                allow(&m, name, &["part_id"])?;
                match m.get("part_id") {
                    Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => {
                        Ok(Command::Trigger { part_id: s.clone() })
                    }
                    Some(Value::String(_)) => Err("trigger: part_id must be 1 to 128 bytes".into()),
                    Some(_) => Err("trigger: part_id must be a string".into()),
                    None => Err("trigger: part_id is required".into()),
                }
            }
            "set" => {
                let keys = [
                    "defect_threshold",
                    "suspect_band",
                    "min_roi_fraction",
                    "max_ignore_fraction",
                    "max_spread",
                    "check_ok_evidence",
                ];
                allow(&m, name, &keys)?;
                let mut r = rules.clone();
                let mut changed = false;
                for (k, v) in &m {
                    if k == "id" {
                        continue;
                    }
                    changed = true;
                    match k.as_str() {
                        "defect_threshold" => r.defect_threshold = number(v, k)?,
                        "min_roi_fraction" => r.min_roi_fraction = number(v, k)?,
                        "max_ignore_fraction" => r.max_ignore_fraction = number(v, k)?,
                        "max_spread" => {
                            r.max_spread = if v.is_null() {
                                None
                            } else {
                                Some(number(v, k)?)
                            }
                        }
                        "check_ok_evidence" => {
                            r.check_ok_evidence = v
                                .as_bool()
                                .ok_or("set: check_ok_evidence must be true or false")?
                        }
                        "suspect_band" => {
                            r.suspect_band = match v {
                                Value::Null => None,
                                Value::Array(a) if a.len() == 2 => {
                                    Some([number(&a[0], k)?, number(&a[1], k)?])
                                }
                                _ => {
                                    return Err(
                                        "set: suspect_band must be [low, high] or null".into()
                                    )
                                }
                            }
                        }
                        _ => unreachable!("keys were checked"),
                    }
                }
                if !changed {
                    return Err("set: nothing to change".into());
                }
                r.validate().map_err(|e| format!("set: {e}"))?;
                Ok(Command::Set(Box::new(r)))
            }
            "reload_model" => {
                allow(&m, name, &["sha256"])?;
                let sha256 = match m.get("sha256") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(h))
                        if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) =>
                    {
                        Some(h.to_ascii_lowercase())
                    }
                    Some(_) => {
                        return Err("reload_model: sha256 must be 64 hex digits".into());
                    }
                };
                Ok(Command::ReloadModel { sha256 })
            }
            "pause" | "resume" | "rebirth" => {
                allow(&m, name, &[])?;
                Ok(match name {
                    "pause" => Command::Pause,
                    "resume" => Command::Resume,
                    _ => Command::Rebirth,
                })
            }
            other => Err(format!(
                "unknown command {other:?} (trigger, set, pause, resume, reload_model, rebirth)"
            )),
        }
    })();
    (id, cmd)
}

/// Longest command name (topic level after `cmd/`) shown in a `cmd_result`, in characters.
pub const MAX_NAME_CHARS: usize = 64;

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
                part_id: "A-17".into()
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
            ("trigger", "{}", "required"),
            ("set", r#"{"defect_threshold":"high"}"#, "number"),
            ("set", r#"{"defect_threshold":3}"#, "defect_threshold"),
            ("set", r#"{"colour":1}"#, "unknown key"),
            ("set", "{}", "nothing"),
            ("pause", r#"{"now":true}"#, "unknown key"),
            ("explode", "{}", "unknown command"),
            ("reload_model", r#"{"sha256":"abc"}"#, "64 hex digits"),
            ("reload_model", r#"{"sha256":7}"#, "64 hex digits"),
            ("reload_model", r#"{"path":"/etc/passwd"}"#, "unknown key"),
        ] {
            let e = p(name, payload).unwrap_err();
            assert!(e.contains(needle), "{name} {payload}: {e}");
        }
        let big = format!(r#"{{"part_id":"{}"}}"#, "x".repeat(5000));
        assert!(p("trigger", &big).unwrap_err().contains("limit"));
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
