//! The command line as a user meets it: `explain`, `layers`, and every kind of bad input
//! answered with exit code 2 and one line that names the culprit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_inspectd"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/inspectd-cam/tests/fixtures")
        .join(name)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inspectd-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run inspectd")
}

/// Asserts exit code 2 and a single stderr line containing every `needle`.
fn assert_bad_input(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn explain_json_has_the_documented_fields_and_writes_the_overlay() {
    let dir = tmpdir("json");
    let overlay = dir.join("cam.png");
    let model = fixture("resnet_gap.onnx");
    let image = fixture("resnet_gap.png");
    let out = run(&[
        "explain",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--method",
        "gradcam++",
        "--json",
        "--overlay",
        s(&overlay),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "model",
        "layer",
        "method",
        "class",
        "label",
        "top1",
        "scores",
        "logits",
        "cam",
        "timing_ms",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["method"], "gradcam++");
    let (w, h) = (
        v["cam"]["width"].as_u64().unwrap(),
        v["cam"]["height"].as_u64().unwrap(),
    );
    assert_eq!((w, h), (8, 8));
    let values = v["cam"]["values"].as_array().unwrap();
    assert_eq!(values.len() as u64, w * h);
    assert!(values
        .iter()
        .all(|x| (0.0..=1.0).contains(&x.as_f64().unwrap())));
    let scores: f64 = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!(
        (scores - 1.0).abs() < 1e-4,
        "softmax scores sum to {scores}"
    );
    for k in ["preprocess", "forward", "cam"] {
        assert!(v["timing_ms"][k].as_f64().unwrap() >= 0.0);
    }
    let img = image::open(&overlay).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
}

#[test]
fn explain_overlay_size_scales_the_overlay_and_draws_the_legend() {
    let dir = tmpdir("size");
    let overlay = dir.join("cam.png");
    let model = fixture("resnet_gap.onnx");
    let image = fixture("resnet_gap.png");
    let out = run(&[
        "explain",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--overlay",
        s(&overlay),
        "--overlay-size",
        "256",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&overlay).unwrap().into_rgb8();
    assert_eq!(img.dimensions(), (256, 256));
    // The legend's white frame sits in the bottom-left corner, just above the last 2 rows.
    let row = 256 - 2;
    assert!(
        (1..60).all(|x| img.get_pixel(x, row).0 == [255, 255, 255]),
        "no legend frame on row {row}"
    );
    // Out of range sizes are bad input.
    let bad = run(&[
        "explain",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--overlay",
        s(&overlay),
        "--overlay-size",
        "0",
    ]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn explain_by_label_and_human_summary() {
    let model = fixture("resnet_gap.onnx");
    let image = fixture("resnet_gap.png");
    let out = run(&[
        "explain",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--class",
        "class_2",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gradcam of class 2"), "{text}");
}

#[test]
fn layers_lists_candidates_and_marks_the_default() {
    let out = run(&[
        "layers",
        "--model",
        s(&fixture("resnet_midblock.onnx")),
        "--json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert!(list.len() > 3);
    let defaults: Vec<_> = list.iter().filter(|c| c["default"] == true).collect();
    assert_eq!(defaults.len(), 1);
    // The auto layer is the last feature map before pooling.
    assert_eq!(defaults[0]["name"], list.last().unwrap()["name"]);
    assert!(list
        .iter()
        .any(|c| c["name"] == "/layer2/layer2.0/relu_1/Relu_output_0"));
}

#[test]
fn a_folder_with_one_bad_image_still_explains_the_rest() {
    let dir = tmpdir("folder");
    std::fs::copy(fixture("resnet_gap.png"), dir.join("a.png")).unwrap();
    std::fs::write(dir.join("b.png"), b"not a png at all").unwrap();
    std::fs::copy(fixture("resnet_gap.png"), dir.join("c.png")).unwrap();
    let out = run(&[
        "explain",
        "--model",
        s(&fixture("resnet_gap.onnx")),
        "--dir",
        s(&dir),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "both good images explained");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("b.png"), "{err}");
}

#[test]
fn a_missing_model_is_named() {
    let out = run(&[
        "explain",
        "--model",
        "/nonexistent/m.onnx",
        "--image",
        s(&fixture("resnet_gap.png")),
    ]);
    assert_bad_input(&out, &["/nonexistent/m.onnx", "cannot read"]);
}

#[test]
fn a_file_that_is_not_onnx_is_named() {
    let image = fixture("resnet_gap.png");
    let out = run(&["explain", "--model", s(&image), "--image", s(&image)]);
    assert_bad_input(&out, &["resnet_gap.png", "ONNX"]);
}

#[test]
fn an_image_that_does_not_decode_is_named() {
    let dir = tmpdir("badimg");
    let bad = dir.join("broken.jpg");
    std::fs::write(&bad, [0xff, 0xd8, 0xff, 0x00, 0x12]).unwrap();
    let out = run(&[
        "explain",
        "--model",
        s(&fixture("resnet_gap.onnx")),
        "--image",
        s(&bad),
    ]);
    assert_bad_input(&out, &["broken.jpg", "decode"]);
}

#[test]
fn an_unknown_layer_lists_the_candidates() {
    let out = run(&[
        "explain",
        "--model",
        s(&fixture("resnet_gap.onnx")),
        "--image",
        s(&fixture("resnet_gap.png")),
        "--layer",
        "no_such_tensor",
    ]);
    assert_bad_input(
        &out,
        &[
            "no_such_tensor",
            "candidates",
            "/layer3/layer3.0/relu_1/Relu_output_0",
        ],
    );
}

#[test]
fn a_class_out_of_range_is_refused() {
    let out = run(&[
        "explain",
        "--model",
        s(&fixture("resnet_gap.onnx")),
        "--image",
        s(&fixture("resnet_gap.png")),
        "--class",
        "99",
    ]);
    assert_bad_input(&out, &["class 99", "out of range"]);
}

#[test]
fn an_unsupported_head_op_names_the_op_and_suggests_a_way_out() {
    let model = fixture("unsupported_head.onnx");
    let image = fixture("resnet_gap.png");
    let out = run(&["explain", "--model", s(&model), "--image", s(&image)]);
    assert_bad_input(
        &out,
        &["Einsum", "classifier_einsum", "--layer", "eigencam"],
    );
    // A gradient-free method still works on that model.
    let out = run(&[
        "explain",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--method",
        "eigencam",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_arguments_exit_2() {
    let out = run(&["explain", "--model", s(&fixture("resnet_gap.onnx"))]);
    assert_eq!(out.status.code(), Some(2), "missing --image/--dir");
    let out = run(&[
        "explain",
        "--model",
        s(&fixture("resnet_gap.onnx")),
        "--image",
        s(&fixture("resnet_gap.png")),
        "--method",
        "magic",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("magic"));
    let out = run(&[
        "layers",
        "--model",
        s(&fixture("resnet_gap.onnx")),
        "--mean",
        "1,2",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_sidecar_with_a_typo_is_named() {
    let dir = tmpdir("sidecar");
    let model = dir.join("m.onnx");
    std::fs::copy(fixture("resnet_gap.onnx"), &model).unwrap();
    std::fs::write(dir.join("m.toml"), "[input]\nwidht = 64\n").unwrap();
    let out = run(&["layers", "--model", s(&model)]);
    assert_bad_input(&out, &["m.toml", "widht"]);
}

#[test]
fn the_example_config_checks_out_and_a_broken_one_names_its_key() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/inspectd.toml");
    let out = run(&["check-config", s(&cfg)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let dir = tmpdir("config");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let write = |name: &str, body: String| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let model_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let fixed = text.replace("../models", model_dir.to_str().unwrap());
    let typo = write("typo.toml", fixed.replace("keep_alive_s", "keepalive_s"));
    assert_bad_input(
        &run(&["check-config", s(&typo)]),
        &["typo.toml", "keepalive_s"],
    );
    let missing = write(
        "missing.toml",
        fixed.replace("surface-defect-int8.onnx", "nope.onnx"),
    );
    assert_bad_input(&run(&["check-config", s(&missing)]), &["nope.onnx"]);
    let remote = write(
        "remote.toml",
        fixed.replace("mqtt://127.0.0.1:1883", "mqtt://10.0.0.5:1883"),
    );
    assert_bad_input(
        &run(&["check-config", s(&remote)]),
        &["mqtt.url", "allow_insecure"],
    );
}

/// The deployment examples and the package's default config are valid configs: with the
/// installed paths mapped onto this checkout, `check-config` accepts them (the camera ones need
/// the `camera` feature; without it they must fail on exactly that, naming the device).
#[test]
fn deployment_examples_check_out() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tmpdir("examples");
    for name in [
        "deploy/debian/inspectd.toml",
        "deploy/examples/camera-continuous.toml",
        "deploy/examples/plc-triggered.toml",
        "deploy/examples/http-snapshot.toml",
    ] {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        // Installed paths → this checkout / a scratch folder; TLS and password files → stand-ins.
        let pw = dir.join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        let text = text
            .replace(
                "/usr/share/inspectd/models",
                root.join("models").to_str().unwrap(),
            )
            .replace("/var/lib/inspectd", dir.to_str().unwrap())
            .replace("/etc/inspectd/mqtt.password", pw.to_str().unwrap())
            .replace("/etc/inspectd/tls", tls.to_str().unwrap());
        let has_tls = text.contains("ca_file =");
        if has_tls {
            // A throwaway self-signed certificate and key, so the TLS set-up has real PEM to read.
            let out = std::process::Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=t",
                ])
                .arg("-keyout")
                .arg(tls.join("k.pem"))
                .arg("-out")
                .arg(tls.join("c.pem"))
                .output()
                .expect("openssl");
            assert!(out.status.success());
            for f in ["ca.pem", "line2-cam1.pem", "line1-station3.pem"] {
                std::fs::copy(tls.join("c.pem"), tls.join(f)).unwrap();
            }
            for f in ["line2-cam1.key", "line1-station3.key"] {
                std::fs::copy(tls.join("k.pem"), tls.join(f)).unwrap();
            }
        }
        let cfg = dir.join(Path::new(name).file_name().unwrap());
        std::fs::write(&cfg, text.as_bytes()).unwrap();
        let out = run(&["check-config", s(&cfg)]);
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("kind = \"camera\"") && !cfg!(feature = "camera") {
            assert_bad_input(&out, &["/dev/video0", "camera"]);
        } else {
            assert!(out.status.success(), "{name}: {err}");
        }
    }
}

#[test]
fn supervise_moved_to_its_own_program_and_says_so() {
    let out = run(&[
        "supervise",
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--db",
        "x.sqlite",
    ]);
    assert_bad_input(&out, &["inspectd-supervisor"]);
}

/// The example config with `edit` applied, written to `dir/name` with the model path fixed.
fn example_config(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/inspectd.toml"))
        .unwrap()
        .replace("../models", root.join("models").to_str().unwrap());
    let p = dir.join(name);
    std::fs::write(&p, edit(text)).unwrap();
    p
}

#[test]
fn check_config_refuses_out_of_range_and_mistyped_values_naming_the_key() {
    let dir = tmpdir("ranges");
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples");
    for (name, from, to, key) in [
        ("tiny-fps.toml", "fps = 5", "fps = 1e-30", "source.fps"),
        ("string-fps.toml", "fps = 5", "fps = \"5\"", "source.fps"),
        ("huge-fps.toml", "fps = 5", "fps = 1e6", "source.fps"),
        (
            "zero-width.toml",
            "fps = 5",
            "fps = 5\nmax_width = 0",
            "source.max_width",
        ),
        (
            "zero-bad.toml",
            "fps = 5",
            "fps = 5\nmax_bad_frames = 0",
            "source.max_bad_frames",
        ),
        (
            "no-folder.toml",
            samples.to_str().unwrap(),
            "/nonexistent/frames",
            "source.path",
        ),
    ] {
        let cfg = example_config(&dir, name, |t| t.replacen(from, to, 1));
        let out = run(&["check-config", s(&cfg)]);
        assert_bad_input(&out, &[name, key]);
    }
    // An HTTP camera without time to answer is refused too.
    let cfg = example_config(&dir, "http.toml", |t| {
        t.replace(
            "kind = \"replay\"",
            "kind = \"http\"\nurl = \"http://127.0.0.1:9/snap.jpg\"\ntimeout_ms = 0",
        )
        .replace("loop = true\n", "")
        .lines()
        .filter(|l| !l.starts_with("path = ") || !l.contains("samples"))
        .map(|l| format!("{l}\n"))
        .collect()
    });
    assert_bad_input(&run(&["check-config", s(&cfg)]), &["source.timeout_ms"]);
}

#[test]
fn rust_log_turns_on_debug_lines_and_a_pipe_gets_no_colours() {
    let dir = tmpdir("logs");
    // A daemon that cannot reach its broker still logs, and stops on its own with `timeout`.
    let spool = dir.join("spool.redb");
    let cfg = example_config(&dir, "log.toml", |t| {
        t.replace("/var/lib/inspectd/spool.redb", spool.to_str().unwrap())
            .replace("listen = \"127.0.0.1:9898\"", "listen = \"\"")
    });
    let logs = |var: &str| {
        let out = Command::new("timeout")
            .args(["-s", "INT", "3"])
            .arg(env!("CARGO_BIN_EXE_inspectd"))
            .args(["run", "--config", s(&cfg)])
            .env_remove("RUST_LOG")
            .env_remove("INSPECTD_LOG")
            .env(var, "debug")
            .output()
            .expect("run inspectd");
        out.stderr
    };
    for var in ["RUST_LOG", "INSPECTD_LOG"] {
        let err = logs(var);
        let text = String::from_utf8_lossy(&err);
        assert!(
            text.contains("DEBUG"),
            "{var}=debug: no debug line in {text}"
        );
        assert!(
            !err.contains(&0x1b),
            "{var}: ANSI escapes on a pipe: {text}"
        );
    }
}
