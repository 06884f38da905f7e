//! Cost of the CAM step against the forward pass, side by side in one run.
//! `cargo bench --bench cam` — reports `forward/<model>` and `cam-<method>/<model>`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use inspectd_cam::model::preprocess::{fit, load_image, to_tensor};
use inspectd_cam::model::{LoadOptions, Model};
use inspectd_cam::{ClassChoice, Explainer, ExplainerOptions, Method};

/// (model, image) pairs: the shipped model when present, and fixtures with GAP+Gemm heads.
const CASES: &[(&str, &str)] = &[
    (
        "../../models/surface-defect-int8.onnx",
        "../../models/samples",
    ),
    (
        "../../models/surface-defect-f32.onnx",
        "../../models/samples",
    ),
    (
        "tests/fixtures/resnet_gap.onnx",
        "tests/fixtures/resnet_gap.png",
    ),
];

fn first_image(p: &Path) -> Option<std::path::PathBuf> {
    if p.is_file() {
        return Some(p.to_path_buf());
    }
    let mut files: Vec<_> = std::fs::read_dir(p.join("ok"))
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "png") && !p.to_string_lossy().contains(".mask.")
        })
        .collect();
    files.sort();
    files.into_iter().next()
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (model, image) in CASES {
        let path = root.join(model);
        let Some(img) = first_image(&root.join(image)) else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        let m = Model::load(&path, &LoadOptions::default()).expect("model");
        let name = m.name.clone();
        let ex = Explainer::new(
            m,
            &ExplainerOptions {
                gradients: true,
                ..Default::default()
            },
        )
        .expect("explainer");
        let spec = ex.model.input.clone();
        let input = to_tensor(&fit(&load_image(&img).unwrap(), &spec).0, &spec);
        c.bench_function(&format!("forward/{name}"), |b| {
            b.iter(|| ex.forward(&input).unwrap())
        });
        let fwd = ex.forward(&input).unwrap();
        verdict_stage(c, &name, &ex, &img, &input, &fwd);
        for method in [Method::GradCam, Method::GradCamPlusPlus, Method::EigenCam] {
            c.bench_function(&format!("cam-{method}/{name}"), |b| {
                b.iter(|| {
                    ex.explain_forward(&input, &fwd, &ClassChoice::Top1, method)
                        .unwrap()
                })
            });
        }
    }
}

/// The rendering of the daemon's verdict stage on one frame: 8-bit PNG map, evidence JPEG (raw | overlay
/// with an ROI and one ignore zone outlined).
fn verdict_stage(
    c: &mut Criterion,
    name: &str,
    ex: &Explainer,
    img: &Path,
    input: &inspectd_cam::tensor::Tensor,
    fwd: &inspectd_cam::Forward,
) {
    use inspectd_cam::heatmap;
    let frame = load_image(img).unwrap();
    let (_, crop) = fit(&frame, &ex.model.input);
    let e = ex
        .explain_forward(input, fwd, &ClassChoice::Top1, Method::GradCam)
        .unwrap();
    // A verdict's zones as a configured line has them: an ROI and one ignore zone.
    let (roi, sticker) = (
        [[0.05, 0.05], [0.95, 0.05], [0.95, 0.95], [0.05, 0.95]],
        [[0.7, 0.0], [1.0, 0.0], [1.0, 0.2], [0.7, 0.2]],
    );
    let zones = heatmap::Zones {
        roi: Some(&roi),
        ignore: vec![&sticker],
    };
    c.bench_function(&format!("verdict-map-png/{name}"), |b| {
        b.iter(|| heatmap::map_png(&e.map).unwrap())
    });
    c.bench_function(&format!("verdict-evidence/{name}"), |b| {
        b.iter(|| heatmap::evidence_jpeg(&frame, &e.map, crop, &zones).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
