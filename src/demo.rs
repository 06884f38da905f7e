//! `inspectd demo`: the daemon on embedded defaults — an in-process broker and two devices
//! publishing to it: `demo` runs the shipped int8 model on a replay of `models/samples`, and
//! `demo-shortcut` runs the shortcut model (trained to look at the camera's watermark) on
//! `models/samples-shortcut`, so that suspect verdicts show up next to trusted ones. One line per
//! verdict, prefixed by the device. Nothing to install.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use inspectd_cam::model::variant::VariantPref;
use inspectd_contract::v1::Verdict;

use crate::config::Config;
use inspectd_cam::error::bad_input;

/// The normalized box where the demo camera burns in its watermark (see models/MODEL_CARD.md).
pub(crate) const WATERMARK_BOX: [f32; 4] = [0.70, 0.82, 0.98, 0.97];

/// One device of the demo: its id, model file and sample folder (inside the models folder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DemoDevice {
    pub id: &'static str,
    pub model: &'static str,
    pub samples: &'static str,
    /// What a first-time user should expect from it.
    pub note: &'static str,
}

/// The shipped model on honest samples: ok and defect verdicts.
pub(crate) const SHIPPED: DemoDevice = DemoDevice {
    id: "demo",
    model: "surface-defect-int8.onnx",
    samples: "samples",
    note: "the shipped model",
};

/// The shortcut model (right for the wrong reason): its defect verdicts come out suspect.
pub(crate) const SHORTCUT: DemoDevice = DemoDevice {
    id: "demo-shortcut",
    model: "shortcut-f32.onnx",
    samples: "samples-shortcut",
    note: "a model trained to look at the watermark: its defects should be suspect",
};

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
        .find(|p| p.join(SHIPPED.model).exists())
        .ok_or_else(|| {
            bad_input("no models folder with surface-defect-int8.onnx found (use --models DIR)")
        })
}

/// The config of one demo device. Both use the shipped suspect rules (models/MODEL_CARD.md,
/// "Suspect rules") with the watermark as an ignore zone. `variant` applies to a model with
/// `[variants]` in its sidecar (the shipped one); the shortcut model is one f32 file.
pub(crate) fn device_config(
    dev: DemoDevice,
    models: &Path,
    broker: &str,
    fps: f32,
    spool: &Path,
    variant: Option<inspectd_cam::model::variant::VariantPref>,
) -> String {
    let [x0, y0, x1, y1] = WATERMARK_BOX;
    let variant = if dev == SHIPPED { variant } else { None };
    format!(
        r#"device_id = "{id}"
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
max_ignore_fraction = 0.1
max_spread = 0.15
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
        id = dev.id,
        samples = models.join(dev.samples).display(),
        model = models.join(dev.model).display(),
        spool = spool.display(),
        variant = variant
            .and_then(|v| v.forced())
            .map(|v| format!("\nvariant = \"{v}\""))
            .unwrap_or_default(),
    )
}

/// The devices to run: the shipped one, and the shortcut one unless `--no-shortcut` or its
/// files are missing (an older package); the second value says why it is left out.
fn devices(models: &Path, no_shortcut: bool) -> (Vec<DemoDevice>, Option<String>) {
    if no_shortcut {
        return (vec![SHIPPED], None);
    }
    let missing: Vec<PathBuf> = [SHORTCUT.model, SHORTCUT.samples]
        .iter()
        .map(|f| models.join(f))
        .filter(|p| !p.exists())
        .collect();
    if missing.is_empty() {
        (vec![SHIPPED, SHORTCUT], None)
    } else {
        let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        (
            vec![SHIPPED],
            Some(format!(
                "device {} left out: {} not found",
                SHORTCUT.id,
                names.join(", ")
            )),
        )
    }
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Stop after this many verdicts from each device (default: run until Ctrl-C).
    #[arg(long)]
    pub frames: Option<u64>,
    /// Run only the shipped model (leave out the `demo-shortcut` device, whose model looks at
    /// the watermark and whose defects come out suspect).
    #[arg(long)]
    pub no_shortcut: bool,
    /// Publish to this broker instead of the embedded one (mqtt://host:port; needed where the
    /// build has no embedded broker, as the .deb packages).
    #[arg(long)]
    pub broker: Option<String>,
    /// Model variant: auto (the fastest on this CPU, timed once and cached), f32 or int8.
    #[arg(long)]
    pub variant: Option<VariantPref>,
    /// Replay rate in frames per second.
    #[arg(long, default_value_t = 5.0)]
    pub fps: f32,
    /// Folder holding the shipped model and samples (default: ./models, then /usr/share/inspectd/models).
    #[arg(long)]
    pub models: Option<PathBuf>,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let models = models_dir(a.models.as_deref())?;
    let url = match &a.broker {
        Some(u) => u.clone(),
        #[cfg(not(feature = "embedded-broker"))]
        None => {
            return Err(bad_input(
                "demo: this build has no embedded broker (cargo feature embedded-broker); give --broker mqtt://127.0.0.1:1883 (a local Mosquitto) or the plant's broker",
            ))
        }
        #[cfg(feature = "embedded-broker")]
        None => {
            let port = crate::broker::free_port()?;
            crate::broker::spawn(([127, 0, 0, 1], port).into())?;
            format!("mqtt://127.0.0.1:{port}")
        }
    };
    let spool_dir = std::env::temp_dir().join(format!("inspectd-demo-{}", std::process::id()));
    let (devs, left_out) = devices(&models, a.no_shortcut);
    let mut cfgs = vec![];
    for d in &devs {
        let text = device_config(
            *d,
            &models,
            &url,
            a.fps,
            &spool_dir.join(format!("{}.redb", d.id)),
            a.variant,
        );
        cfgs.push(Config::parse(&text, "(demo)", Path::new("."))?);
    }
    let hostport = url.trim_start_matches("mqtt://");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "1883"));
    println!("inspectd demo · broker {url}");
    for (d, cfg) in devs.iter().zip(&cfgs) {
        println!(
            "  {:<13}  model {} · samples {} · {}",
            d.id,
            cfg.model.path.display(),
            models.join(d.samples).display(),
            d.note
        );
    }
    if let Some(why) = &left_out {
        println!("  ({why})");
    }
    println!("watch the messages:  mosquitto_sub -h {host} -p {port} -t 'inspect/#' -v");
    if let Some(n) = a.frames {
        println!("stops after {n} verdicts from each device");
    }
    println!(
        "{:<13}  {:>5}  {:<24} {:<8} {:<8} {:>8} {:>7}  {:>8}  reasons",
        "device", "seq", "frame", "verdict", "label", "p_defect", "p_label", "total ms"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let finished = Arc::new(AtomicUsize::new(0));
    let ndev = devs.len();
    let mut timings = vec![];
    let mut runs = vec![];
    for (d, cfg) in devs.iter().zip(cfgs) {
        let id = d.id;
        let count = Arc::new(AtomicU64::new(0));
        let timing = Arc::new(Mutex::new(Timing::default()));
        timings.push((id, timing.clone()));
        let (stop, fin, limit) = (stop_tx.clone(), finished.clone(), a.frames);
        let hooks = crate::daemon::Hooks {
            on_verdict: Some(Box::new(move |v: &Verdict, spool_ms: f64| {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                if limit.is_some_and(|l| n > l) {
                    return; // this device has shown its frames; the other one is still going
                }
                print_line(id, v);
                timing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .add(v, spool_ms);
                if limit == Some(n) && fin.fetch_add(1, Ordering::SeqCst) + 1 == ndev {
                    let _ = stop.send(true);
                }
            })),
            on_loaded: Some(Box::new(move |ex: &inspectd_cam::Explainer| {
                if let Some(v) = &ex.model.variant {
                    println!(
                        "{id}: model variant {} · runs {}",
                        v.describe(),
                        ex.model.path.display()
                    );
                }
            })),
            // The demo's spool folder is temporary: keep the variant timing where the CLI does.
            state_dir: Some(inspectd_cam::model::variant::cli_cache_dir_from_env()),
            ..Default::default()
        };
        let mut rx = stop_rx.clone();
        let stop = stop_tx.clone();
        runs.push(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let r = crate::daemon::run(cfg, shutdown, hooks).await;
            // One device failing (a model that does not load) ends the demo.
            let _ = stop.send(true);
            r
        });
    }
    let rt = inspectd_contract::client::runtime()?;
    let results = rt.block_on(async move {
        let signal_stop = stop_tx.clone();
        tokio::spawn(async move {
            inspectd_contract::client::signals().await;
            let _ = signal_stop.send(true);
        });
        let tasks: Vec<_> = runs.into_iter().map(tokio::spawn).collect();
        let mut results = vec![];
        for t in tasks {
            results.push(t.await.map_err(anyhow::Error::from).and_then(|r| r));
        }
        results
    });
    let _ = std::fs::remove_dir_all(&spool_dir);
    for r in results {
        r?;
    }
    for (id, timing) in &timings {
        let timing = timing.lock().unwrap_or_else(|e| e.into_inner());
        println!("{id}: {}", timing.summary());
    }
    Ok(())
}

fn print_line(device: &str, v: &Verdict) {
    let reasons: Vec<&str> = v.reasons.iter().map(|r| r.text.as_str()).collect();
    println!(
        "{:<13}  {:>5}  {:<24} {:<8} {:<8} {:>8.3} {:>7.3}  {:>8.1}  {}",
        device,
        v.seq,
        v.frame.origin.chars().take(24).collect::<String>(),
        v.verdict.as_str(),
        v.label,
        v.p_defect.unwrap_or(v.confidence),
        v.p_label.unwrap_or(f64::NAN),
        v.latency_ms.as_ref().map_or(0.0, |l| l.total),
        reasons.join("; ")
    );
}

/// Per-stage latencies of the verdicts the demo printed, for its closing summary.
#[derive(Default)]
struct Timing {
    first: Option<Instant>,
    last: Option<Instant>,
    stages: BTreeMap<String, Vec<f64>>,
    /// Verdicts by kind (ok, defect, suspect).
    kinds: BTreeMap<String, usize>,
}

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
    fn add(&mut self, verdict: &Verdict, spool_ms: f64) {
        *self
            .kinds
            .entry(verdict.verdict.as_str().to_string())
            .or_default() += 1;
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        let Some(latency) = &verdict.latency_ms else {
            return;
        };
        for (s, v) in [
            ("decode", latency.decode),
            ("preprocess", latency.preprocess),
            ("forward", latency.forward),
            ("cam", latency.cam),
            ("verdict", latency.verdict),
            ("total", latency.total),
        ] {
            self.stages.entry(s.to_string()).or_default().push(v);
        }
        self.stages
            .entry("spool".into())
            .or_default()
            .push(spool_ms);
        // The whole frame cost: decode → in the spool, ready for the publisher.
        {
            let t = latency.total;
            let all = self.stages.entry("decode→spool".into()).or_default();
            all.push(t + spool_ms);
            // Per frame, so that a slow moment inflates both sides of the ratio alike.
            let core = latency.forward + latency.cam;
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
        inspectd_cam::stats::median(&mut v).unwrap_or(f64::NAN)
    }

    /// "N verdicts (ok a, defect b, suspect c), F fps; median ms: …; total / (forward + cam) = R×".
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
        let kinds: Vec<String> = ["ok", "defect", "suspect"]
            .iter()
            .map(|k| format!("{k} {}", self.kinds.get(*k).copied().unwrap_or(0)))
            .collect();
        format!(
            "{n} verdicts ({}), {fps}; median ms: {}; frame cost / (forward + cam), median per frame = {:.2}x",
            kinds.join(", "),
            stages.join(", "),
            self.median("ratio")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_devices_parse_with_the_shipped_rules_and_the_watermark_zone() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let (devs, why) = devices(&models, false);
        assert_eq!(devs, vec![SHIPPED, SHORTCUT], "{why:?}");
        for d in devs {
            let text = device_config(
                d,
                &models,
                "mqtt://127.0.0.1:1883",
                5.0,
                Path::new("/tmp/x.redb"),
                None,
            );
            let cfg = Config::parse(&text, "(demo)", Path::new(".")).unwrap();
            assert_eq!(cfg.device_id, d.id);
            let r = &cfg.verdict;
            let shipped = crate::verdict::Rules::default();
            assert_eq!(
                (r.max_ignore_fraction, r.max_spread),
                (shipped.max_ignore_fraction, shipped.max_spread)
            );
            assert_eq!(r.ignore_zones[0].name, "watermark");
        }
        assert_eq!(devices(&models, true).0, vec![SHIPPED]);
        let (devs, why) = devices(Path::new("/nonexistent"), false);
        assert_eq!(devs, vec![SHIPPED]);
        assert!(why.unwrap().contains("demo-shortcut"));
    }
}
