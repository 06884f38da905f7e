//! Model variants with the shipped surface-defect model: `model.variant` forces the f32 or the
//! int8 file, and `auto` with a pre-seeded timing cache runs the cached choice without timing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use inspectd::config::Config;
use inspectd_cam::model::variant::{self, How, Selection};
use inspectd_cam::model::{LoadOptions, Model};

fn config(variant: &str, spool_dir: &Path) -> Config {
    let text = format!(
        r#"device_id = "variant-test"
[source]
kind = "replay"
path = "{samples}"
[model]
path = "{model}"
{variant}
[mqtt]
url = "mqtt://127.0.0.1:1883"
[spool]
path = "{spool}"
"#,
        samples = common::root().join("models/samples").display(),
        model = common::root()
            .join("models/surface-defect-int8.onnx")
            .display(),
        spool = spool_dir.join("spool.redb").display(),
    );
    Config::parse(&text, "(test)", Path::new(".")).unwrap()
}

#[test]
fn model_variant_f32_and_int8_force_the_file_that_runs() {
    let dir = common::tmp("variant", "forced");
    for (v, file) in [
        ("f32", "surface-defect-f32.onnx"),
        ("int8", "surface-defect-int8.onnx"),
    ] {
        let cfg = config(&format!("variant = \"{v}\""), &dir);
        let ex = inspectd::daemon::load_explainer(&cfg, None).unwrap();
        assert!(ex.model.path.ends_with(file), "{}", ex.model.path.display());
        let sel = ex.model.variant.as_ref().unwrap();
        assert_eq!((sel.name.as_str(), sel.how), (v, How::Forced));
    }
    // Nothing was timed, so nothing was cached.
    let cached: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(cached.is_empty(), "{cached:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_with_a_pre_seeded_cache_runs_the_cached_choice_without_timing() {
    let dir = common::tmp("variant", "seeded");
    let primary = common::root().join("models/surface-defect-int8.onnx");
    let cands = Model::variants(&primary, &LoadOptions::default())
        .unwrap()
        .unwrap();
    let key = variant::cache_key(&cands, &variant::cpu_signature(), env!("CARGO_PKG_VERSION"));
    // Seeded with figures no real timing gives (the AVX2-only box's order of magnitude, with a
    // marker value): the result can only come from the cache.
    let seeded = Selection {
        name: "f32".into(),
        forward_ms: BTreeMap::from([("f32".into(), 11.125), ("int8".into(), 594.5)]),
        how: How::Timed,
    };
    std::fs::write(
        variant::cache_file(&dir, &key),
        variant::cache_text(&key, "seeded", &seeded),
    )
    .unwrap();
    let ex = inspectd::daemon::load_explainer(&config("", &dir), None).unwrap();
    let sel = ex.model.variant.as_ref().unwrap();
    assert_eq!((sel.name.as_str(), sel.how), ("f32", How::Cached));
    assert_eq!(sel.forward_ms, seeded.forward_ms);
    assert!(ex.model.path.ends_with("surface-defect-f32.onnx"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sidecar_variant_that_is_missing_names_the_file() {
    let dir = common::tmp("variant", "missing");
    let model = dir.join("m.onnx");
    std::fs::copy(
        common::root().join("models/surface-defect-int8.onnx"),
        &model,
    )
    .unwrap();
    std::fs::write(
        dir.join("m.toml"),
        "[variants]\nf32 = \"gone.onnx\"\nint8 = \"m.onnx\"\n",
    )
    .unwrap();
    let err = Model::variants(&model, &LoadOptions::default()).unwrap_err();
    assert!(inspectd_cam::error::is_bad_input(&err));
    assert!(format!("{err:#}").contains("gone.onnx"), "{err:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
