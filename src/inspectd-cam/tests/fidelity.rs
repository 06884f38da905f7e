//! Fidelity against pytorch-grad-cam 1.5.7: every fixture in tests/fixtures (made by
//! make_fixtures.py) is explained with every method and compared with the library's map.

use std::path::{Path, PathBuf};

use inspectd_cam::methods::normalize;
use inspectd_cam::model::preprocess::{fit, load_image, to_tensor};
use inspectd_cam::model::{LoadOptions, Model};
use inspectd_cam::tensor::pearson;
use inspectd_cam::{ClassChoice, Explainer, ExplainerOptions, Method};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Fixture {
    json: Value,
    explainer: Explainer,
    input: inspectd_cam::tensor::Tensor,
}

fn load(name: &str) -> Fixture {
    let dir = fixtures();
    let text =
        std::fs::read_to_string(dir.join(format!("{name}.ref.json"))).expect("reference json");
    let json: Value = serde_json::from_str(&text).unwrap();
    let model = Model::load(
        &dir.join(json["model"].as_str().unwrap()),
        &LoadOptions::default(),
    )
    .expect("model loads");
    let opts = ExplainerOptions {
        layer: Some(json["layer"].as_str().unwrap().to_string()),
        topk: None,
        gradients: true,
    };
    let explainer = Explainer::new(model, &opts).expect("explainer builds");
    let img = load_image(&dir.join(json["image"].as_str().unwrap())).unwrap();
    let spec = &explainer.model.input;
    assert_eq!(
        img.dimensions(),
        (spec.width, spec.height),
        "fixture image must not be resized"
    );
    let input = to_tensor(&fit(&img, spec).0, spec);
    Fixture {
        json,
        explainer,
        input,
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Checks logits, the head's own forward pass, and every reference map of a fixture.
fn check(name: &str) {
    let f = load(name);
    let class = f.json["class"].as_u64().unwrap() as usize;
    let ref_logits = floats(&f.json["logits"]);

    // tract's logits equal PyTorch's; the Rust head recomputes the same logits from A.
    let (_, _, head_logits, tract_logits) = f.explainer.gradients(&f.input, class).unwrap();
    let scale = ref_logits.iter().fold(1f32, |m, v| m.max(v.abs()));
    assert!(
        max_abs_diff(&tract_logits, &ref_logits) <= 1e-3 * scale,
        "{name}: tract logits {tract_logits:?} vs {ref_logits:?}"
    );
    assert!(
        max_abs_diff(&head_logits, &tract_logits) <= 1e-3 * scale,
        "{name}: head logits {head_logits:?} vs {tract_logits:?}"
    );

    let mut checked = 0;
    for (key, reference) in f.json["maps"].as_object().unwrap() {
        let method: Method = key.parse().unwrap();
        let reference = floats(reference);
        let e = f
            .explainer
            .explain(&f.input, &ClassChoice::Index(class), method)
            .unwrap();
        assert_eq!(e.class, class);
        let ours = e.map.data();
        assert_eq!(ours.len(), reference.len(), "{name}/{key}: map size");
        match method {
            Method::EigenCam => {
                // The SVD sign is arbitrary: compare the signed projections, then the maps with
                // our sign aligned to the reference's.
                let ref_raw = floats(&f.json["eigencam_raw"]);
                let r_raw = pearson(e.raw.data(), &ref_raw);
                assert!(
                    r_raw.abs() >= 0.99,
                    "{name}/eigencam: |r| of projections {r_raw}"
                );
                let signed: Vec<f32> = e
                    .raw
                    .data()
                    .iter()
                    .map(|v| v * r_raw.signum() as f32)
                    .collect();
                let map = normalize(&signed);
                let r = pearson(&map, &reference);
                assert!(r >= 0.99, "{name}/eigencam: r = {r}");
            }
            Method::ScoreCam => {
                let r = pearson(ours, &reference);
                assert!(r >= 0.99, "{name}/scorecam: r = {r}");
            }
            _ => {
                let r = pearson(ours, &reference);
                let d = max_abs_diff(ours, &reference);
                assert!(
                    r >= 0.995 && d <= 0.05,
                    "{name}/{key}: r = {r}, max diff = {d}"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 7, "{name}: every method has a reference");

    // Explanations of a class other than the top-1.
    if let Some(alt) = f.json.get("alt_class").and_then(Value::as_u64) {
        for (key, reference) in f.json["alt_maps"].as_object().unwrap() {
            let method: Method = key.parse().unwrap();
            let e = f
                .explainer
                .explain(&f.input, &ClassChoice::Index(alt as usize), method)
                .unwrap();
            let reference = floats(reference);
            let r = pearson(e.map.data(), &reference);
            let d = max_abs_diff(e.map.data(), &reference);
            assert!(
                r >= 0.995 && d <= 0.05,
                "{name}/alt/{key}: r = {r}, max diff = {d}"
            );
        }
    }
}

macro_rules! fidelity {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*
        const COVERED: &[&str] = &[$(stringify!($name)),*];
    };
}

fidelity!(
    resnet_gap,
    mbv3_hswish,
    shufflenet_mean,
    squeezenet_conv,
    densenet_bnrelu,
    convnext_ln,
    sigmoid_single,
    resnet_midblock,
    resnet_int8_f32,
    vgg_maxpool,
    vgg_maxpool_dynbatch,
    effnet_silu,
    inception_concat,
);

#[test]
fn int8_gradcam_follows_its_f32_twin() {
    let q = load("resnet_int8");
    let twin = q.json["twin"].as_str().unwrap();
    let f = load(twin);
    let class = q.json["class"].as_u64().unwrap() as usize;
    assert_eq!(
        f.json["class"].as_u64().unwrap() as usize,
        class,
        "int8 and f32 agree on the class"
    );
    let eq = q
        .explainer
        .explain(&q.input, &ClassChoice::Top1, Method::GradCam)
        .unwrap();
    assert_eq!(eq.class, class, "tract's int8 top-1");
    let ef = f
        .explainer
        .explain(&f.input, &ClassChoice::Index(class), Method::GradCam)
        .unwrap();
    let r = pearson(eq.map.data(), ef.map.data());
    assert!(r >= 0.95, "int8 vs f32 Grad-CAM r = {r}");
    // The head of the quantized model reproduces tract's int8 logits.
    let (_, _, head, tract) = q.explainer.gradients(&q.input, class).unwrap();
    let ref_logits = floats(&q.json["logits"]);
    let scale = ref_logits.iter().fold(1f32, |m, v| m.max(v.abs()));
    assert!(
        max_abs_diff(&head, &tract) <= 0.02 * scale,
        "int8 head {head:?} vs tract {tract:?}"
    );
    assert!(
        max_abs_diff(&tract, &ref_logits) <= 0.05 * scale,
        "tract int8 {tract:?} vs onnxruntime {ref_logits:?}"
    );
}

#[test]
fn every_fixture_is_checked() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.strip_suffix(".ref.json").map(str::to_string)
        })
        .collect();
    names.sort();
    for n in &names {
        assert!(
            COVERED.contains(&n.as_str()) || n == "resnet_int8",
            "fixture {n} has no test"
        );
    }
    assert!(names.len() >= 14, "fixtures missing: {names:?}");
}
