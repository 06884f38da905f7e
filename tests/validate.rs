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
