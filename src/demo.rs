//! `inspectd demo`: the daemon on embedded defaults — an in-process broker, the shipped int8
//! model, a replay of `models/samples` — printing one line per verdict. Nothing to install.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;

use crate::cli::DemoArgs;
use crate::config::Config;
use crate::error::bad_input;

/// The normalized box where the demo camera burns in its watermark (see models/MODEL_CARD.md).
pub const WATERMARK_BOX: [f32; 4] = [0.70, 0.82, 0.98, 0.97];

fn models_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let candidates = [
        std::env::var_os("INSPECTD_MODELS").map(PathBuf::from),
        Some(PathBuf::from("models")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("models")),
        Some(PathBuf::from("/usr/share/inspectd/models")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("surface-defect-int8.onnx").exists())
        .ok_or_else(|| {
            bad_input("no models folder with surface-defect-int8.onnx found (use --models DIR)")
        })
}

/// The demo's config, as a TOML text so it goes through the same checks as a real one.
pub fn demo_config(models: &Path, broker: &str, fps: f32, spool: &Path) -> String {
    demo_config_variant(models, broker, fps, spool, None)
}

/// [`demo_config`] with `model.variant` set when `variant` is given.
pub fn demo_config_variant(
    models: &Path,
    broker: &str,
    fps: f32,
    spool: &Path,
    variant: Option<crate::model::variant::VariantPref>,
) -> String {
    let [x0, y0, x1, y1] = WATERMARK_BOX;
    format!(
        r#"device_id = "demo"
[source]
kind = "replay"
path = "{samples}"
fps = {fps}
loop = true
[model]
path = "{model}"{variant}
[cam]
method = "gradcam"
[verdict]
defect_threshold = 0.5
suspect_band = [0.0, 0.6]
max_ignore_fraction = 0.3
[[verdict.ignore_zones]]
name = "watermark"
polygon = [[{x0}, {y0}], [{x1}, {y0}], [{x1}, {y1}], [{x0}, {y1}]]
[mqtt]
url = "{broker}"
keep_alive_s = 5
[spool]
path = "{spool}"
fsync = "batch"
[stats]
interval_s = 5
[http]
listen = ""
"#,
        samples = models.join("samples").display(),
        model = models.join("surface-defect-int8.onnx").display(),
        spool = spool.display(),
        variant = variant
            .and_then(|v| v.forced())
            .map(|v| format!("\nvariant = \"{v}\""))
            .unwrap_or_default(),
    )
}

pub fn run(a: DemoArgs) -> Result<()> {
    let models = models_dir(a.models.as_deref())?;
    let url = match &a.broker {
        Some(u) => u.clone(),
        None => {
            let port = crate::broker::free_port()?;
            crate::broker::spawn(([127, 0, 0, 1], port).into())?;
            format!("mqtt://127.0.0.1:{port}")
        }
    };
    let spool_dir = std::env::temp_dir().join(format!("inspectd-demo-{}", std::process::id()));
    let text = demo_config_variant(
        &models,
        &url,
        a.fps,
        &spool_dir.join("spool.redb"),
        a.variant,
    );
    let cfg = Config::parse(&text, "(demo)", Path::new("."))?;
    let hostport = url.trim_start_matches("mqtt://");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "1883"));
    println!(
        "inspectd demo · model {} · samples {} · broker {url}",
        cfg.model.path.display(),
        models.join("samples").display()
    );
    println!("watch the messages:  mosquitto_sub -h {host} -p {port} -t 'inspect/#' -v");
    println!(
        "{:>5}  {:<24} {:<8} {:<8} {:>6}  {:>8}  reasons",
        "seq", "frame", "verdict", "label", "conf", "total ms"
    );

    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (c2, d2, limit) = (count.clone(), done.clone(), a.frames);
    let timing = Arc::new(Mutex::new(Timing::default()));
    let t2 = timing.clone();
    let hooks = crate::daemon::Hooks {
        on_verdict: Some(Box::new(move |v: &serde_json::Value, spool_ms: f64| {
            let reasons: Vec<&str> = v["reasons"]
                .as_array()
                .map(|r| r.iter().filter_map(|x| x["text"].as_str()).collect())
                .unwrap_or_default();
            println!(
                "{:>5}  {:<24} {:<8} {:<8} {:>6.3}  {:>8.1}  {}",
                v["seq"].as_u64().unwrap_or(0),
                v["frame"]["origin"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(24)
                    .collect::<String>(),
                v["verdict"].as_str().unwrap_or(""),
                v["label"].as_str().unwrap_or(""),
                v["confidence"].as_f64().unwrap_or(0.0),
                v["latency_ms"]["total"].as_f64().unwrap_or(0.0),
                reasons.join("; ")
            );
            t2.lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(&v["latency_ms"], spool_ms);
            let n = c2.fetch_add(1, Ordering::SeqCst) + 1;
            if limit.is_some_and(|l| n >= l) {
                d2.notify_one();
            }
        })),
        on_loaded: Some(Box::new(|ex: &crate::cam::Explainer| {
            if let Some(v) = &ex.model.variant {
                println!(
                    "model variant {} · runs {}",
                    v.describe(),
                    ex.model.path.display()
                );
            }
        })),
        // The demo's spool folder is temporary: keep the variant timing where the CLI does.
        state_dir: Some(crate::model::variant::cli_cache_dir_from_env()),
        ..Default::default()
    };
    let rt = crate::cli::runtime()?;
    let res = rt.block_on(crate::daemon::run(
        cfg,
        async move {
            tokio::select! {
                _ = crate::daemon::signals() => {}
                _ = done.notified() => {}
            }
        },
        hooks,
    ));
    let _ = std::fs::remove_dir_all(&spool_dir);
    res?;
    let timing = timing.lock().unwrap_or_else(|e| e.into_inner());
    println!("{}", timing.summary());
    Ok(())
}

/// Per-stage latencies of the verdicts the demo printed, for its closing summary.
#[derive(Default)]
struct Timing {
    first: Option<Instant>,
    last: Option<Instant>,
    stages: BTreeMap<String, Vec<f64>>,
}

const STAGES: [&str; 6] = ["decode", "preprocess", "forward", "cam", "verdict", "total"];
const SHOWN: [&str; 7] = [
    "decode",
    "preprocess",
    "forward",
    "cam",
    "verdict",
    "spool",
    "decode→spool",
];

impl Timing {
    fn add(&mut self, latency: &serde_json::Value, spool_ms: f64) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        for s in STAGES {
            if let Some(v) = latency[s].as_f64() {
                self.stages.entry(s.to_string()).or_default().push(v);
            }
        }
        self.stages
            .entry("spool".into())
            .or_default()
            .push(spool_ms);
        // The whole frame cost: decode → in the spool, ready for the publisher.
        if let Some(t) = latency["total"].as_f64() {
            let all = self.stages.entry("decode→spool".into()).or_default();
            all.push(t + spool_ms);
            // Per frame, so that a slow moment inflates both sides of the ratio alike.
            let core =
                latency["forward"].as_f64().unwrap_or(0.0) + latency["cam"].as_f64().unwrap_or(0.0);
            if core > 0.0 {
                self.stages
                    .entry("ratio".into())
                    .or_default()
                    .push((t + spool_ms) / core);
            }
        }
    }

    fn median(&self, stage: &str) -> f64 {
        let mut v = self.stages.get(stage).cloned().unwrap_or_default();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// "N verdicts, F fps; median ms: …; total / (forward + cam) = R×".
    fn summary(&self) -> String {
        let n = self.stages.get("total").map_or(0, Vec::len);
        let secs = match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let fps = if n > 1 && secs > 0.0 {
            format!("{:.1} fps", (n - 1) as f64 / secs)
        } else {
            "fps n/a".into()
        };
        let stages: Vec<String> = SHOWN
            .iter()
            .map(|s| format!("{s} {:.2}", self.median(s)))
            .collect();
        format!(
            "{n} verdicts, {fps}; median ms: {}; frame cost / (forward + cam), median per frame = {:.2}x",
            stages.join(", "),
            self.median("ratio")
        )
    }
}
