//! `inspectd validate` on the shipped model and samples, and its refusals of bad data layouts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inspectd"))
        .args(args)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inspectd-val-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn metrics(model: &str, data: &str) -> serde_json::Value {
    metrics_with(model, data, &[])
}

fn metrics_with(model: &str, data: &str, extra: &[&str]) -> serde_json::Value {
    let m = root().join(model);
    let d = root().join(data);
    let mut args = vec![
        "validate",
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_shipped_int8_model_classifies_every_sample_and_looks_at_the_defects() {
    // The int8 variant itself, whatever auto would pick on this CPU.
    let m = metrics_with(
        "models/surface-defect-int8.onnx",
        "models/samples",
        &["--variant", "int8"],
    );
    assert_eq!(m["images"], 30);
    assert_eq!(m["accuracy"], 1.0, "{m}");
    let loc = &m["localization"];
    assert_eq!(loc["images"], 24);
    assert!(loc["pointing_game"].as_f64().unwrap() >= 0.9, "{loc}");
    assert!(loc["mean_energy_in_mask"].as_f64().unwrap() >= 0.5, "{loc}");
}

#[test]
fn the_shortcut_model_shows_its_evidence_off_the_defects() {
    let m = metrics("models/shortcut-f32.onnx", "models/samples-shortcut");
    let e = m["localization"]["mean_energy_in_mask"].as_f64().unwrap();
    assert!(e < 0.2, "shortcut energy in mask {e}");
}

#[test]
fn the_html_report_is_one_self_contained_file() {
    let dir = tmp("report");
    let report = dir.join("r.html");
    let m = root().join("models/shortcut-f32.onnx");
    let d = root().join("models/samples-shortcut");
    let out = run(&[
        "validate",
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("Confusion matrix") && html.contains("Evidence outside the mask"));
    assert!(
        html.contains("data:image/png;base64,"),
        "images are inlined"
    );
    assert!(
        !html.contains("src=\"http"),
        "nothing is fetched from elsewhere"
    );
    // As the daemon does, each picture explains the class the verdict is about; where that is
    // not the true class (the shortcut model calls a crack a scratch), the true class's map is
    // beside it. Correct calls show one map.
    assert!(
        html.contains(
            "alt=\"map of scratch (the verdict's class), map of crack (the true class)\""
        ),
        "no crack→scratch pair in the report"
    );
    assert!(html.contains("<figure class=\"pair\">"));
    assert!(
        html.contains("alt=\"map of dent\""),
        "a correct dent call shows one map"
    );
}

fn assert_bad(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn bad_data_layouts_are_named() {
    let model = root().join("models/surface-defect-int8.onnx");
    let m = model.to_str().unwrap();
    let sample = root()
        .join("models/samples/ok")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();

    let flat = tmp("flat");
    std::fs::copy(&sample, flat.join("a.png")).unwrap();
    assert_bad(
        &run(&["validate", "--model", m, "--data", flat.to_str().unwrap()]),
        "no label folders",
    );

    let unknown = tmp("unknown");
    std::fs::create_dir(unknown.join("rust")).unwrap();
    assert_bad(
        &run(&[
            "validate",
            "--model",
            m,
            "--data",
            unknown.to_str().unwrap(),
        ]),
        "\"rust\" is not a label",
    );

    let broken = tmp("broken");
    std::fs::create_dir(broken.join("ok")).unwrap();
    std::fs::write(broken.join("ok/bad.png"), b"garbage").unwrap();
    assert_bad(
        &run(&["validate", "--model", m, "--data", broken.to_str().unwrap()]),
        "bad.png",
    );

    let mask = tmp("mask");
    std::fs::create_dir(mask.join("ok")).unwrap();
    std::fs::copy(&sample, mask.join("ok/a.png")).unwrap();
    image::GrayImage::new(7, 7)
        .save(mask.join("ok/a.mask.png"))
        .unwrap();
    assert_bad(
        &run(&["validate", "--model", m, "--data", mask.to_str().unwrap()]),
        "a.mask.png",
    );
}

/// `validate` with a gate, the shipped config's rules and `extra` flags: (exit code, stdout,
/// stderr).
fn gate_run(model: &str, data: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let m = root().join(model);
    let d = root().join(data);
    let c = root().join("deploy/inspectd.toml");
    let mut args = vec![
        "validate",
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--config",
        c.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A release gate as a quality engineer would write it (deploy/gate.toml's criteria).
const GATE: &str = "\
# inspectd validate --gate: shares in 0..1
min_accuracy = 0.95
min_recall = 0.9
max_escape_rate = 0.01
max_false_reject_rate = 0.05
min_pointing_game = 0.8
max_suspect_rate = 0.05
";

#[test]
fn the_shipped_model_passes_a_release_gate_under_the_shipped_rules() {
    let dir = tmp("gate-pass");
    // The gate shipped beside the daemon config.
    let gate = root().join("deploy/gate.toml");
    let report = dir.join("r.html");
    let (code, out, err) = gate_run(
        "models/surface-defect-int8.onnx",
        "models/samples",
        &[
            "--variant",
            "int8",
            "--gate",
            gate.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["gate"]["pass"], true, "{v}");
    // accuracy, 5 recalls, pointing game, escape, false-reject, suspect.
    assert_eq!(v["gate"]["criteria"].as_array().unwrap().len(), 10);
    let d = &v["decision"];
    assert_eq!(
        d["confusion"],
        serde_json::json!([[6, 0, 0], [0, 24, 0]]),
        "{d}"
    );
    assert_eq!(d["escape_rate"], 0.0);
    assert!(v["sign_off"]["rules"]
        .as_str()
        .unwrap()
        .ends_with("inspectd.toml"));
    assert_eq!(v["sign_off"]["model_sha256"].as_str().unwrap().len(), 64);
    assert!(v["sign_off"]["date"].as_str().unwrap().ends_with('Z'));
    // The old top-level metrics are still there.
    assert_eq!(v["accuracy"], 1.0);
    let html = std::fs::read_to_string(&report).unwrap();
    for needle in [
        "Deployment gate",
        "PASS",
        "Decision confusion",
        "truth defect → decided defect",
        "model sha256",
        "date (UTC)",
        "inspectd version",
    ] {
        assert!(html.contains(needle), "{needle:?} not in the report");
    }
}

#[test]
fn a_gate_the_model_misses_exits_1_naming_the_criterion() {
    // The shipped config with a suspect band over every confidence: each verdict goes to a
    // person, which a gate on the suspect rate must refuse (the model is fine, the rules not).
    let dir = tmp("gate-fail");
    let gate = dir.join("gate.toml");
    std::fs::write(&gate, GATE).unwrap();
    let models = root().join("models");
    let config = std::fs::read_to_string(root().join("deploy/inspectd.toml"))
        .unwrap()
        .replace("\"../models/", &format!("\"{}/", models.display()))
        .replace("suspect_band = [0.5, 0.65]", "suspect_band = [0.0, 1.0]");
    let cfg = dir.join("inspectd.toml");
    std::fs::write(&cfg, config).unwrap();
    let m = root().join("models/surface-defect-int8.onnx");
    let d = root().join("models/samples");
    let out = run(&[
        "validate",
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--variant",
        "int8",
        "--config",
        cfg.to_str().unwrap(),
        "--gate",
        gate.to_str().unwrap(),
        "--max-nuisance-rate",
        "0.1",
    ]);
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{err}\n{stdout}");
    assert!(stdout.contains("PASS  accuracy"), "{stdout}");
    assert!(stdout.contains("FAIL  suspect rate"), "{stdout}");
    // The samples carry no watermark annotations: the nuisance rate cannot be measured, and a
    // gate that asks for it fails rather than passes on no evidence.
    assert!(
        stdout.contains("FAIL  nuisance rate") && stdout.contains("not measured"),
        "{stdout}"
    );
    assert!(stdout.contains("gate: FAIL"), "{stdout}");
    assert!(
        err.contains("gate FAILED") && err.contains("suspect rate"),
        "{err}"
    );
}

#[test]
fn the_shortcut_model_fails_the_gate_on_its_nuisance_evidence() {
    let (code, out, err) = gate_run(
        "models/shortcut-f32.onnx",
        "models/samples-shortcut",
        &[
            "--max-nuisance-rate",
            "0.1",
            "--max-suspect-rate",
            "0.05",
            "--max-escape-rate",
            "0.01",
            "--json",
        ],
    );
    assert_eq!(code, Some(1), "{err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let n = &v["nuisance"];
    assert_eq!(n["images"], 10, "{n}");
    assert!(n["rate"].as_f64().unwrap() >= 0.5, "{n}");
    // deploy/inspectd.toml's watermark zone catches the shortcut's defects as suspect: they
    // do not escape, but most of them go to a person.
    let d = &v["decision"];
    assert!(d["suspect_rate"].as_f64().unwrap() >= 0.5, "{d}");
    assert_eq!(d["escape_rate"], 0.0, "{d}");
    let failed: Vec<&str> = v["gate"]["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pass"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["suspect rate", "nuisance rate"], "{v}");
    assert!(err.contains("nuisance rate"), "{err}");
}

#[test]
fn bad_gates_exit_2_naming_the_key() {
    let dir = tmp("gate-bad");
    let model = "models/surface-defect-int8.onnx";
    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "min_accuracy = 0.9\nmax_escapes = 0.01\n").unwrap();
    let (code, _, err) = gate_run(
        model,
        "models/samples",
        &["--gate", unknown.to_str().unwrap()],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("max_escapes") && err.contains("line 2"),
        "{err}"
    );

    let range = dir.join("range.toml");
    std::fs::write(&range, "min_accuracy = 95\n").unwrap();
    let (code, _, err) = gate_run(
        model,
        "models/samples",
        &["--gate", range.to_str().unwrap()],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("min_accuracy = 95") && err.contains("line 1"),
        "{err}"
    );

    let (code, _, err) = gate_run(model, "models/samples", &["--max-escape-rate", "5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--max-escape-rate"), "{err}");

    let missing = dir.join("missing.toml");
    let (code, _, err) = gate_run(
        model,
        "models/samples",
        &["--gate", missing.to_str().unwrap()],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}
