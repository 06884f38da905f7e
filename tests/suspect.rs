//! The shipped suspect rules catch a model that is right for the wrong reason: the shortcut model
//! (trained to look at the camera's watermark) has ≥ 90 % of its defect verdicts on
//! `models/samples-shortcut` flagged suspect for the watermark zone, while ≤ 5 % of the shipped
//! model's correct defect verdicts on `models/samples` are. Rules: `Rules::default()` plus the
//! watermark zone of `deploy/inspectd.toml`, and that file's whole `[verdict]` section. The
//! thresholds come from held-out measurements (models/MODEL_CARD.md, "Suspect rules").

use std::path::{Path, PathBuf};

use inspectd::config::Config;
use inspectd::verdict::{decide, target, Decision, Kind, Reason, Rules};
use inspectd_cam::model::preprocess::{fit, load_image, to_tensor};
use inspectd_cam::{ClassChoice, Method};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// `deploy/inspectd.toml` running `model` (a file in models/), with `variant` forced.
fn deploy_config(model: &str, variant: Option<&str>) -> Config {
    let models = root().join("models");
    let text = std::fs::read_to_string(root().join("deploy/inspectd.toml"))
        .unwrap()
        .replace("../models", models.to_str().unwrap())
        .replace(
            "surface-defect-int8.onnx\"",
            &format!(
                "{model}\"{}",
                variant
                    .map(|v| format!("\nvariant = \"{v}\""))
                    .unwrap_or_default()
            ),
        );
    Config::parse(&text, "deploy/inspectd.toml", &root().join("deploy")).unwrap()
}

/// The verdict the daemon gives each image of `dir` (one sub-folder per true label), as the
/// inference loop decides it: the class first, then the map of that class.
fn verdicts(cfg: &Config, rules: &Rules, dir: &Path) -> Vec<(String, String, Decision)> {
    let state = std::env::temp_dir().join(format!("inspectd-suspect-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let ex = inspectd::daemon::load_explainer_in(cfg, None, Some(&state)).unwrap();
    let method: Method = cfg.cam.method;
    let labels = &ex.model.output.labels;
    let ok = ex
        .model
        .output
        .ok_label
        .as_ref()
        .and_then(|l| labels.iter().position(|x| x == l));
    let mut out = vec![];
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    for f in folders {
        let truth = f.file_name().unwrap().to_string_lossy().into_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&f)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| inspectd::source::is_image(p))
            .collect();
        files.sort();
        for p in files {
            let img = load_image(&p).unwrap();
            let (fitted, _) = fit(&img, &ex.model.input);
            let input = to_tensor(&fitted, &ex.model.input);
            let fwd = ex.forward(&input).unwrap();
            let (class, _, _) = target(rules, &ex.scores(&fwd.logits), ok);
            let e = ex
                .explain_forward(&input, &fwd, &ClassChoice::Index(class), method)
                .unwrap();
            let (h, w) = (e.map.shape()[0], e.map.shape()[1]);
            let d = decide(rules, &e.scores, labels, ok, e.map.data(), h, w);
            out.push((p.display().to_string(), truth.clone(), d));
        }
    }
    out
}

fn on_watermark(d: &Decision) -> bool {
    d.reasons
        .iter()
        .any(|r| matches!(r, Reason::OnIgnoreZone { zone, .. } if zone == "watermark"))
}

/// The rule sets under test: the defaults with the deployed zone, and the deployed section.
fn rule_sets(cfg: &Config) -> Vec<(&'static str, Rules)> {
    let defaults = Rules {
        ignore_zones: cfg.verdict.ignore_zones.clone(),
        ..Rules::default()
    };
    vec![
        ("Rules::default + watermark zone", defaults),
        ("deploy/inspectd.toml", cfg.verdict.clone()),
    ]
}

#[test]
fn the_deployed_thresholds_are_the_defaults() {
    let cfg = deploy_config("surface-defect-int8.onnx", None);
    let d = Rules::default();
    assert_eq!(cfg.verdict.max_ignore_fraction, d.max_ignore_fraction);
    assert_eq!(cfg.verdict.max_spread, d.max_spread);
    assert_eq!(cfg.verdict.ignore_zones[0].name, "watermark");
}

#[test]
fn the_shortcut_models_defects_are_flagged_for_the_watermark() {
    let cfg = deploy_config("shortcut-f32.onnx", None);
    for (name, rules) in rule_sets(&cfg) {
        let all = verdicts(&cfg, &rules, &root().join("models/samples-shortcut"));
        let defects: Vec<_> = all.iter().filter(|(_, _, d)| d.kind != Kind::Ok).collect();
        let flagged = defects
            .iter()
            .filter(|(_, _, d)| d.kind == Kind::Suspect && on_watermark(d))
            .count();
        let shown: Vec<String> = defects
            .iter()
            .map(|(p, _, d)| format!("{p}: {:?} {:?}", d.kind, d.reasons))
            .collect();
        assert!(defects.len() >= 8, "{name}: {shown:#?}");
        assert!(
            flagged * 10 >= defects.len() * 9,
            "{name}: {flagged} of {} defect verdicts flagged on the watermark: {shown:#?}",
            defects.len()
        );
    }
}

#[test]
fn the_shipped_models_correct_defects_are_rarely_suspect() {
    for variant in ["int8", "f32"] {
        let cfg = deploy_config("surface-defect-int8.onnx", Some(variant));
        for (name, rules) in rule_sets(&cfg) {
            let all = verdicts(&cfg, &rules, &root().join("models/samples"));
            let correct: Vec<_> = all
                .iter()
                .filter(|(_, truth, d)| d.kind != Kind::Ok && *truth != "ok" && d.label == *truth)
                .collect();
            let suspect: Vec<String> = correct
                .iter()
                .filter(|(_, _, d)| d.kind == Kind::Suspect)
                .map(|(p, _, d)| format!("{p}: {:?}", d.reasons))
                .collect();
            assert!(correct.len() >= 20, "{variant}, {name}: {}", correct.len());
            assert!(
                suspect.len() * 20 <= correct.len(),
                "{variant}, {name}: {} of {} correct defects suspect: {suspect:#?}",
                suspect.len(),
                correct.len()
            );
        }
    }
}
