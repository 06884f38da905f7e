//! Deployment gate for `inspectd validate`: criteria (a small TOML file and/or flags) checked
//! against the validation metrics, each PASS or FAIL with its value and limit. A failed gate
//! exits 1 (the data was fine, the model is not); a bad gate file exits 2 naming its key.

use std::path::Path;

use serde::{Deserialize, Serialize};

use inspectd_cam::error::bad_input;

use crate::validate::Metrics;

/// Criteria; every one is optional, absent ones are not checked. All are shares in 0..1.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Least top-1 accuracy over all images.
    pub min_accuracy: Option<f64>,
    /// Least recall of every class (checked per class).
    pub min_recall: Option<f64>,
    /// Largest share of defect images the deployment's rules decide `ok`.
    pub max_escape_rate: Option<f64>,
    /// Largest share of ok images the rules decide `defect` or `suspect`.
    pub max_false_reject_rate: Option<f64>,
    /// Least pointing game over the images with a defect mask.
    pub min_pointing_game: Option<f64>,
    /// Largest share of images the rules decide `suspect`.
    pub max_suspect_rate: Option<f64>,
    /// Largest share of watermark-annotated images whose evidence sits mostly on the watermark.
    pub max_nuisance_rate: Option<f64>,
}

/// The keys of a gate file, in the order they are reported.
pub const KEYS: [&str; 7] = [
    "min_accuracy",
    "min_recall",
    "max_escape_rate",
    "max_false_reject_rate",
    "min_pointing_game",
    "max_suspect_rate",
    "max_nuisance_rate",
];

/// Line (1-based) of the first `key = ...` in a TOML text.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

impl Gate {
    /// Parses a gate text; `origin` names the file in errors, which name the key and its line.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Gate> {
        let g: Gate = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim();
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            // The key on that line, unless the message names it already.
            let key = line
                .and_then(|l| text.lines().nth(l - 1))
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !msg.contains(&format!("`{k}`")))
                .map(|k| format!("{k}: "))
                .unwrap_or_default();
            // An unknown key's message lists the known ones.
            bad_input(format!("gate {origin}{at}: {key}{msg}"))
        })?;
        for (key, v) in g.values() {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    let at = line_of_key(text, key)
                        .map(|l| format!(" (line {l})"))
                        .unwrap_or_default();
                    return Err(bad_input(format!(
                        "gate {origin}{at}: {key} = {v} must be within 0..1 (a share, not a percent)"
                    )));
                }
            }
        }
        Ok(g)
    }

    pub fn load(path: &Path) -> anyhow::Result<Gate> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad_input(format!("gate {}: cannot read: {e}", path.display())))?;
        Gate::parse(&text, &path.display().to_string())
    }

    fn values(&self) -> [(&'static str, Option<f64>); 7] {
        [
            (KEYS[0], self.min_accuracy),
            (KEYS[1], self.min_recall),
            (KEYS[2], self.max_escape_rate),
            (KEYS[3], self.max_false_reject_rate),
            (KEYS[4], self.min_pointing_game),
            (KEYS[5], self.max_suspect_rate),
            (KEYS[6], self.max_nuisance_rate),
        ]
    }

    /// This gate with the criteria `over` sets replacing its own (flags over the file).
    pub fn overridden_by(&self, over: &Gate) -> Gate {
        Gate {
            min_accuracy: over.min_accuracy.or(self.min_accuracy),
            min_recall: over.min_recall.or(self.min_recall),
            max_escape_rate: over.max_escape_rate.or(self.max_escape_rate),
            max_false_reject_rate: over.max_false_reject_rate.or(self.max_false_reject_rate),
            min_pointing_game: over.min_pointing_game.or(self.min_pointing_game),
            max_suspect_rate: over.max_suspect_rate.or(self.max_suspect_rate),
            max_nuisance_rate: over.max_nuisance_rate.or(self.max_nuisance_rate),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values().iter().all(|(_, v)| v.is_none())
    }

    /// Checks every set criterion against `m`. A criterion the data cannot measure (no masks
    /// for the pointing game, no ok images for the false-reject rate, ...) fails: a gate asks
    /// for evidence, and there is none.
    pub fn check(&self, m: &Metrics) -> Vec<Criterion> {
        let d = &m.decision;
        let mut out = vec![];
        let mut at_least = |name: String, value: Option<f64>, limit: f64| {
            out.push(Criterion::new(name, value, limit, true))
        };
        if let Some(l) = self.min_accuracy {
            at_least("accuracy".into(), Some(m.accuracy), l);
        }
        if let Some(l) = self.min_recall {
            for c in &m.per_class {
                at_least(format!("recall {}", c.label), c.recall, l);
            }
        }
        if let Some(l) = self.min_pointing_game {
            at_least("pointing game".into(), m.localization.pointing_game, l);
        }
        let mut at_most = |name: &str, value: Option<f64>, limit: f64| {
            out.push(Criterion::new(name.into(), value, limit, false))
        };
        if let Some(l) = self.max_escape_rate {
            at_most("escape rate", d.escape_rate, l);
        }
        if let Some(l) = self.max_false_reject_rate {
            at_most("false-reject rate", d.false_reject_rate, l);
        }
        if let Some(l) = self.max_suspect_rate {
            at_most("suspect rate", d.suspect_rate, l);
        }
        if let Some(l) = self.max_nuisance_rate {
            at_most("nuisance rate", m.nuisance.rate, l);
        }
        out
    }
}

/// One checked criterion.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Criterion {
    pub name: String,
    /// Measured value; none when the data cannot measure it (then it fails).
    pub value: Option<f64>,
    pub limit: f64,
    /// `>=` (a least value) or `<=` (a largest value).
    pub op: &'static str,
    pub pass: bool,
}

impl Criterion {
    fn new(name: String, value: Option<f64>, limit: f64, at_least: bool) -> Criterion {
        let pass = value.is_some_and(|v| if at_least { v >= limit } else { v <= limit });
        Criterion {
            name,
            value,
            limit,
            op: if at_least { ">=" } else { "<=" },
            pass,
        }
    }

    pub fn verdict(&self) -> &'static str {
        if self.pass {
            "PASS"
        } else {
            "FAIL"
        }
    }

    pub fn value_text(&self) -> String {
        self.value
            .map(|v| format!("{:.2} %", 100.0 * v))
            .unwrap_or_else(|| "not measured".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_file_parses_and_flags_override_it() {
        let g = Gate::parse("min_accuracy = 0.9\nmax_escape_rate = 0.01\n", "g.toml").unwrap();
        assert_eq!(g.min_accuracy, Some(0.9));
        let f = Gate {
            min_accuracy: Some(0.95),
            ..Gate::default()
        };
        let o = g.overridden_by(&f);
        assert_eq!(o.min_accuracy, Some(0.95));
        assert_eq!(o.max_escape_rate, Some(0.01));
    }

    #[test]
    fn bad_gate_files_name_the_key_and_line() {
        let e = format!(
            "{:#}",
            Gate::parse("min_accuracy = 0.9\nmin_acuracy = 0.9\n", "g.toml").unwrap_err()
        );
        assert!(e.contains("min_acuracy") && e.contains("line 2"), "{e}");
        let e = format!(
            "{:#}",
            Gate::parse("\nmax_escape_rate = 5\n", "g.toml").unwrap_err()
        );
        assert!(
            e.contains("max_escape_rate = 5") && e.contains("line 2"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            Gate::parse("min_recall = \"high\"\n", "g.toml").unwrap_err()
        );
        assert!(e.contains("line 1") && e.contains("min_recall: "), "{e}");
    }

    #[test]
    fn an_unmeasurable_criterion_fails() {
        let c = Criterion::new("pointing game".into(), None, 0.8, true);
        assert!(!c.pass);
        assert!(Criterion::new("x".into(), Some(0.01), 0.01, false).pass);
        assert!(!Criterion::new("x".into(), Some(0.5), 0.9, true).pass);
    }
}
