//! Command-line interface: argument parsing and the one-shot commands (`explain`, `layers`,
//! `bench`). Exit codes: 0 ok, 2 bad input (the message names it), 1 anything else.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use inspectd_cam::error::{bad_input, is_bad_input};
use inspectd_cam::heatmap;
use inspectd_cam::model::preprocess::{fit, load_image, to_tensor};
use inspectd_cam::model::variant::VariantPref;
use inspectd_cam::model::{LoadOptions, Model};
use inspectd_cam::stats::median;
use inspectd_cam::{
    layer_candidates, resolve_layer, ClassChoice, Explainer, ExplainerOptions, Method,
};

#[derive(Parser, Debug)]
#[command(
    name = "inspectd",
    version,
    about = "Edge inspection daemon: CNN verdicts explained with Grad-CAM, published over MQTT"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Explain one image or a folder: prediction + class activation map (JSON and/or overlay).
    Explain(ExplainArgs),
    /// List the candidate CAM target layers of a model (the default is marked).
    Layers(LayersArgs),
    /// Time the forward pass and the CAM step of a model (medians).
    Bench(BenchArgs),
    /// Validate a model on a labelled folder: accuracy, confusion, CAM localization, HTML report.
    Validate(ValidateArgs),
    /// Run the daemon: frames → explained verdicts → MQTT.
    Run(RunArgs),
    /// Check a daemon config (keys, model, source, broker URL) and exit 0, or 2 naming the fault.
    CheckConfig(CheckConfigArgs),
    /// Zero-setup demo: embedded broker, shipped model, replayed samples, one line per verdict.
    Demo(crate::demo::DemoArgs),
    /// Plant dashboard: subscribe to every device, store history in SQLite, serve the web UI.
    #[command(hide = true)]
    Supervise(MovedArgs),
    /// Run the embedded MQTT broker in the foreground (for tests and trials).
    #[command(hide = true)]
    Broker(BrokerArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Config file (TOML).
    #[arg(long, short = 'c')]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct CheckConfigArgs {
    /// Config file (TOML).
    pub config: PathBuf,
}

/// Whatever was given to a command that moved to another program.
#[derive(Args, Debug)]
pub struct MovedArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BrokerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub listen: std::net::SocketAddr,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder with one sub-folder per label; optional `<stem>.mask.png` beside images.
    #[arg(long, short = 'd')]
    pub data: PathBuf,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the metrics as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// CAM method used for localization and the decisions (default: the --config's cam.method,
    /// else gradcam).
    #[arg(long, value_parser = parse_method)]
    pub method: Option<Method>,
    /// Target layer (default: the --config's cam.layer, else the sidecar's or auto).
    #[arg(long, short = 'l')]
    pub layer: Option<String>,
    /// Most images shown per report gallery.
    #[arg(long, default_value_t = 48)]
    pub gallery: usize,
    /// A daemon config whose `[verdict]` rules (thresholds, ROI, ignore zones, suspect rules)
    /// decide every image as the deployment would (default: the built-in rules).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Deployment gate: a TOML file of criteria (min_accuracy, min_recall, max_escape_rate,
    /// max_false_reject_rate, min_pointing_game, max_suspect_rate, max_nuisance_rate; shares in
    /// 0..1). Any FAIL exits 1. The flags below override the file's values.
    #[arg(long)]
    pub gate: Option<PathBuf>,
    /// Gate: least accuracy (0..1).
    #[arg(long, value_parser = parse_share)]
    pub min_accuracy: Option<f64>,
    /// Gate: least recall of every class (0..1).
    #[arg(long, value_parser = parse_share)]
    pub min_recall: Option<f64>,
    /// Gate: largest share of defect images decided ok (0..1).
    #[arg(long, value_parser = parse_share)]
    pub max_escape_rate: Option<f64>,
    /// Gate: largest share of ok images decided defect or suspect (0..1).
    #[arg(long, value_parser = parse_share)]
    pub max_false_reject_rate: Option<f64>,
    /// Gate: least pointing game over the masked images (0..1).
    #[arg(long, value_parser = parse_share)]
    pub min_pointing_game: Option<f64>,
    /// Gate: largest share of images decided suspect (0..1).
    #[arg(long, value_parser = parse_share)]
    pub max_suspect_rate: Option<f64>,
    /// Gate: largest share of watermark-annotated images whose evidence is mostly on it (0..1).
    #[arg(long, value_parser = parse_share)]
    pub max_nuisance_rate: Option<f64>,
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number (a share in 0..1)"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} must be within 0..1 (a share, not a percent)"))
    }
}

/// Model selection and input contract overrides shared by the commands.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// ONNX model file (a sidecar `<stem>.toml` beside it is read when present).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Sidecar file to use instead of `<stem>.toml`.
    #[arg(long)]
    pub sidecar: Option<PathBuf>,
    /// Per-channel mean on the 0..1 scale, `r,g,b` (overrides the sidecar).
    #[arg(long, value_parser = parse_triple)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel std on the 0..1 scale, `r,g,b` (overrides the sidecar).
    #[arg(long, value_parser = parse_triple)]
    pub std: Option<[f32; 3]>,
    /// Which of the sidecar's [variants] runs: auto (explain, validate: the default; the fastest
    /// on this CPU, timed once and cached in ~/.cache/inspectd), f32 or int8. `bench` times the
    /// --model file itself unless this is given.
    #[arg(long, value_parser = parse_variant)]
    pub variant: Option<VariantPref>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Model> {
        Model::load(
            &self.model,
            &LoadOptions {
                mean: self.mean,
                std: self.std,
                sidecar: self.sidecar.clone(),
            },
        )
    }

    /// The explainer of the model, or of the variant the `--variant` rule picks (default auto),
    /// named on stderr when the model has variants.
    pub fn explainer(&self, opts: &ExplainerOptions) -> Result<Explainer> {
        let cache = inspectd_cam::model::variant::cli_cache_dir_from_env();
        let ex = inspectd_cam::model::variant::load_explainer(
            &self.model,
            &LoadOptions {
                mean: self.mean,
                std: self.std,
                sidecar: self.sidecar.clone(),
            },
            self.variant.unwrap_or_default(),
            Some(&cache),
            opts,
        )?;
        if let Some(v) = &ex.model.variant {
            eprintln!(
                "inspectd: model variant {} · {}",
                v.describe(),
                ex.model.path.display()
            );
        }
        Ok(ex)
    }
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One image to explain.
    #[arg(
        long,
        short = 'i',
        conflicts_with = "dir",
        required_unless_present = "dir"
    )]
    pub image: Option<PathBuf>,
    /// A folder of images (searched recursively; `*.mask.png` files are skipped).
    #[arg(long, short = 'd')]
    pub dir: Option<PathBuf>,
    /// Target layer: `auto` (default: sidecar, else the last feature map) or an ONNX tensor name.
    #[arg(long, short = 'l')]
    pub layer: Option<String>,
    /// CAM method: gradcam, gradcam++, xgradcam, layercam, hirescam, eigencam, scorecam.
    #[arg(long, value_parser = parse_method)]
    pub method: Option<Method>,
    /// Class to explain, by index or label (default: the top-1 prediction).
    #[arg(long, short = 'c')]
    pub class: Option<String>,
    /// Score-CAM: score only the N channels with the most activation mass (default: all).
    #[arg(long)]
    pub topk: Option<usize>,
    /// Print one JSON object per image on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the overlay (heatmap over the image) to this PNG file (with --image).
    #[arg(long, conflicts_with = "out")]
    pub overlay: Option<PathBuf>,
    /// Write one overlay PNG per image into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Longest side of the written overlay in pixels (the image is scaled up or down to it;
    /// default: the image's own size).
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=4096))]
    pub overlay_size: Option<u32>,
}

#[derive(Args, Debug)]
pub struct LayersArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image to run on (default: a mid-grey frame).
    #[arg(long, short = 'i')]
    pub image: Option<PathBuf>,
    /// Number of timed runs (after 3 warm-up runs).
    #[arg(long, default_value_t = 30)]
    pub runs: usize,
    /// CAM method to time.
    #[arg(long, value_parser = parse_method, default_value = "gradcam")]
    pub method: Method,
    /// Target layer (default auto).
    #[arg(long)]
    pub layer: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// A second model timed in the same run, alternating run by run, for a fair ratio.
    #[arg(long)]
    pub against: Option<PathBuf>,
}

fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .map_err(|_| format!("{p:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;
    <[f32; 3]>::try_from(v)
        .map_err(|v| format!("expected 3 comma-separated numbers, got {}", v.len()))
}

fn parse_method(s: &str) -> Result<Method, String> {
    s.parse()
}

fn parse_variant(s: &str) -> Result<VariantPref, String> {
    s.parse()
}

/// Entry point used by `main`: runs the command and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A daemon says that it started, what it runs and what goes wrong: `info` by default. The
    // one-shot commands print their results and keep the log to warnings.
    let daemon = matches!(cli.command, Command::Run(_));
    inspectd_contract::client::init_logging(if daemon { "info" } else { "warn" });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inspectd: error: {e:#}");
            ExitCode::from(if is_bad_input(&e) { 2 } else { 1 })
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Explain(a) => explain(a),
        Command::Layers(a) => layers(a),
        Command::Bench(a) => bench(a),
        Command::Validate(a) => validate(a),
        Command::Run(a) => run_daemon(a),
        Command::CheckConfig(a) => check_config(a),
        Command::Demo(a) => crate::demo::run(a),
        Command::Supervise(_) => Err(bad_input(
            "inspectd supervise: the plant dashboard is its own program now: run `inspectd-supervisor` with the same flags (package inspectd-supervisor)",
        )),
        #[cfg(feature = "embedded-broker")]
        Command::Broker(a) => crate::broker::run_foreground(a.listen),
        #[cfg(not(feature = "embedded-broker"))]
        Command::Broker(_) => Err(bad_input(
            "broker: this build has no embedded broker (cargo feature embedded-broker)",
        )),
    }
}

fn explain(a: ExplainArgs) -> Result<()> {
    // Gradient-free default methods from the sidecar must not require a differentiable head:
    // only an explicit gradient method fails early; a sidecar one fails at its first image.
    let explainer = a.model.explainer(&ExplainerOptions {
        layer: a.layer.clone(),
        topk: a.topk,
        gradients: a.method.is_some_and(|m| m.needs_gradients()),
    })?;
    let model = &explainer.model;
    let method = match a.method {
        Some(m) => m,
        None => match &model.default_method {
            Some(s) => s
                .parse()
                .map_err(|e| bad_input(format!("sidecar cam.method: {e}")))?,
            None => Method::GradCam,
        },
    };
    let class = match &a.class {
        Some(c) => ClassChoice::parse(c, &model.output.labels)?,
        None => ClassChoice::Top1,
    };
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)
            .map_err(|e| bad_input(format!("folder {}: cannot create: {e}", out.display())))?;
    }
    let images = match (&a.image, &a.dir) {
        (Some(i), _) => vec![i.clone()],
        (None, Some(d)) => crate::source::image_files(d)?,
        (None, None) => unreachable!("clap requires one of --image/--dir"),
    };
    if images.is_empty() {
        return Err(bad_input(format!(
            "folder {}: no images",
            a.dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        )));
    }
    let stdout = std::io::stdout();
    let mut failed: Option<anyhow::Error> = None;
    let mut nfailed = 0;
    for path in &images {
        match explain_one(&explainer, path, &class, method, &a) {
            Ok(line) => {
                let mut out = stdout.lock();
                writeln!(out, "{line}")?;
            }
            Err(e) if a.dir.is_some() && is_bad_input(&e) => {
                // Keep going: one bad file must not lose the rest of the folder.
                eprintln!("inspectd: error: {e:#}");
                nfailed += 1;
                failed.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match failed {
        Some(e) => Err(e.context(format!("{nfailed} of {} images failed", images.len()))),
        None => Ok(()),
    }
}

/// `img` scaled (up or down) so its longer side is `side` pixels.
fn resize_to_side(img: &image::RgbImage, side: u32) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let s = side as f32 / w.max(h).max(1) as f32;
    let (nw, nh) = (
        ((w as f32 * s).round() as u32).max(1),
        ((h as f32 * s).round() as u32).max(1),
    );
    image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle)
}

fn explain_one(
    ex: &Explainer,
    path: &Path,
    class: &ClassChoice,
    method: Method,
    a: &ExplainArgs,
) -> Result<String> {
    let t0 = Instant::now();
    let img = load_image(path)?;
    let (fitted, crop) = fit(&img, &ex.model.input);
    let input = to_tensor(&fitted, &ex.model.input);
    let preprocess = t0.elapsed().as_secs_f64() * 1e3;
    let e = ex.explain(&input, class, method)?;
    let labels = &ex.model.output.labels;
    let top = inspectd_cam::tensor::argmax(&e.logits);

    let overlay_path = match (&a.overlay, &a.out) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(dir)) => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Some(dir.join(format!("{stem}.cam.png")))
        }
        _ => None,
    };
    if let Some(p) = &overlay_path {
        // The daemon's rendering: heat above the floor, contours, legend (no zones: explain
        // has no verdict rules).
        let (base, crop) = match a.overlay_size {
            Some(side) => {
                let base = resize_to_side(&img, side);
                let crop = heatmap::scale_crop(crop, img.dimensions(), base.dimensions());
                (base, crop)
            }
            None => (img.clone(), crop),
        };
        let ov = heatmap::render_overlay(&base, &e.map, crop, &heatmap::Zones::default());
        ov.save(p)
            .map_err(|err| bad_input(format!("overlay {}: cannot write: {err}", p.display())))?;
    }
    let (h, w) = (e.map.shape()[0], e.map.shape()[1]);
    if a.json {
        let v = json!({
            "image": path.display().to_string(),
            "model": ex.model.name,
            "model_sha256": ex.model.sha256,
            "layer": ex.layer.name,
            "method": e.method.name(),
            "class": e.class,
            "label": labels[e.class],
            "top1": {"class": top, "label": labels[top], "score": e.scores[top]},
            // The explained class's probability, named as the verdicts name it.
            "p_label": e.scores[e.class],
            "scores": e.scores,
            "logits": e.logits,
            "cam": {"width": w, "height": h, "values": e.map.data(), "raw_max": e.raw_max},
            "overlay": overlay_path.map(|p| p.display().to_string()),
            "timing_ms": {"preprocess": preprocess, "forward": e.timing.forward, "cam": e.timing.cam},
        });
        Ok(v.to_string())
    } else {
        let peak = e.map.argmax();
        Ok(format!(
            "{}: {} p_label {:.3} (top-1 {} {:.3}) · {} of class {} on {} [{}×{}], peak at ({}, {}) · {:.1} ms forward, {:.2} ms cam",
            path.display(),
            labels[e.class],
            e.scores[e.class],
            labels[top],
            e.scores[top],
            e.method,
            e.class,
            ex.layer.name,
            h,
            w,
            peak % w,
            peak / w,
            e.timing.forward,
            e.timing.cam
        ))
    }
}

fn layers(a: LayersArgs) -> Result<()> {
    let model = a.model.load()?;
    let cands = layer_candidates(&model);
    let default = resolve_layer(&model, None).ok().map(|c| c.name);
    if a.json {
        let v: Vec<_> = cands
            .iter()
            .map(|c| {
                json!({"name": c.name, "shape": c.shape, "op": c.op, "node": c.node,
                       "default": Some(&c.name) == default.as_ref()})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if cands.is_empty() {
        println!("no candidate layers (no [1,C,H,W] feature map with H·W > 1 feeds the output)");
        return Ok(());
    }
    let width = cands.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
    println!("  {:<width$}  {:>16}  op", "layer", "shape [C,H,W]");
    for c in &cands {
        let mark = if Some(&c.name) == default.as_ref() {
            "*"
        } else {
            " "
        };
        let shape = format!("[{},{},{}]", c.shape[0], c.shape[1], c.shape[2]);
        println!(
            "{mark} {:<width$}  {:>16}  {} ({})",
            c.name, shape, c.op, c.node
        );
    }
    println!("* default target layer");
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let ex_opts = ExplainerOptions {
        layer: a.layer.clone(),
        topk: None,
        gradients: a.method.needs_gradients(),
    };
    // The --model file itself, unless --variant asks for the variant rule.
    let explainer = match a.model.variant {
        Some(_) => a.model.explainer(&ex_opts)?,
        None => Explainer::new(a.model.load()?, &ex_opts)?,
    };
    let spec = explainer.model.input.clone();
    let img = match &a.image {
        Some(p) => load_image(p)?,
        None => image::RgbImage::from_pixel(spec.width, spec.height, image::Rgb([128, 128, 128])),
    };
    let input = to_tensor(&fit(&img, &spec).0, &spec);
    if a.runs == 0 {
        return Err(bad_input("--runs must be at least 1"));
    }
    for _ in 0..3 {
        explainer
            .explain(&input, &ClassChoice::Top1, a.method)
            .context("warm-up run")?;
    }
    let (mut fwd, mut cam) = (vec![], vec![]);
    for _ in 0..a.runs {
        let e = explainer.explain(&input, &ClassChoice::Top1, a.method)?;
        fwd.push(e.timing.forward);
        cam.push(e.timing.cam);
    }
    if let Some(other) = &a.against {
        return bench_pair(&explainer, &input, other, a.runs, a.json);
    }
    let (f, c) = (
        median(&mut fwd).unwrap_or(0.0),
        median(&mut cam).unwrap_or(0.0),
    );
    if a.json {
        println!(
            "{}",
            json!({"model": explainer.model.name, "method": a.method.name(), "layer": explainer.layer.name,
                   "runs": a.runs, "forward_ms_median": f, "cam_ms_median": c, "cam_over_forward": c / f})
        );
    } else {
        println!(
            "{} · {} on {} · {} runs: forward median {:.3} ms, cam median {:.3} ms ({:.2}% of forward)",
            explainer.model.name,
            a.method,
            explainer.layer.name,
            a.runs,
            f,
            c,
            100.0 * c / f
        );
    }
    Ok(())
}

fn validate(a: ValidateArgs) -> Result<()> {
    let flags = crate::gate::Gate {
        min_accuracy: a.min_accuracy,
        min_recall: a.min_recall,
        max_escape_rate: a.max_escape_rate,
        max_false_reject_rate: a.max_false_reject_rate,
        min_pointing_game: a.min_pointing_game,
        max_suspect_rate: a.max_suspect_rate,
        max_nuisance_rate: a.max_nuisance_rate,
    };
    // Bad input first: a gate file or config at fault is named before minutes of inference.
    let gate = match &a.gate {
        Some(p) => Some(crate::gate::Gate::load(p)?.overridden_by(&flags)),
        None => (!flags.is_empty()).then_some(flags),
    };
    // With a daemon config, its verdict rules and CAM decide as the deployment would.
    let cfg = a
        .config
        .as_ref()
        .map(|p| crate::config::Config::load(p))
        .transpose()?;
    let (rules, rules_source) = match (&cfg, &a.config) {
        (Some(c), Some(p)) => (c.verdict.clone(), p.display().to_string()),
        _ => (
            crate::verdict::Rules::default(),
            "built-in defaults (no --config)".to_string(),
        ),
    };
    let method = a
        .method
        .or(cfg.as_ref().map(|c| c.cam.method))
        .unwrap_or(Method::GradCam);
    let layer = a.layer.clone().or_else(|| {
        cfg.as_ref()
            .and_then(|c| c.cam.layer.name().map(str::to_string))
    });
    if let Some(c) = &cfg {
        let same = |p: &std::path::Path| std::fs::canonicalize(p).ok();
        if same(&c.model.path) != same(&a.model.model) {
            eprintln!(
                "inspectd: note: validating {}, while the config deploys {}",
                a.model.model.display(),
                c.model.path.display()
            );
        }
    }
    let explainer = a.model.explainer(&ExplainerOptions {
        layer,
        topk: None,
        gradients: method.needs_gradients(),
    })?;
    let items = crate::validate::scan(&a.data, &explainer.model.output.labels)?;
    let opts = crate::validate::ValidateOptions {
        method,
        report: a.report.clone(),
        gallery_limit: a.gallery,
        rules,
        rules_source,
        gate,
        data: a.data.clone(),
    };
    let o = crate::validate::run(&explainer, &items, &opts)?;
    let m = &o.metrics;
    if a.json {
        println!("{}", serde_json::to_string(&o)?);
    } else {
        println!("{} images · accuracy {:.2} %", m.images, 100.0 * m.accuracy);
        for c in &m.per_class {
            let f = |v: Option<f64>| {
                v.map(|v| format!("{:.1} %", 100.0 * v))
                    .unwrap_or_else(|| "–".into())
            };
            println!(
                "  {:<12} support {:>5}  precision {:>8}  recall {:>8}",
                c.label,
                c.support,
                f(c.precision),
                f(c.recall)
            );
        }
        let l = &m.localization;
        if let (Some(p), Some(e), Some(ep)) = (
            l.pointing_game,
            l.mean_energy_in_mask,
            l.mean_energy_in_mask_pixels,
        ) {
            println!(
                "localization ({}, {} masked images): pointing game {:.1} %, mean energy in mask {:.3} (feature cells), {:.3} (pixels)",
                l.method, l.images, 100.0 * p, e, ep
            );
        }
        let d = &m.decision;
        let f = |v: Option<f64>| {
            v.map(|v| format!("{:.1} %", 100.0 * v))
                .unwrap_or_else(|| "–".into())
        };
        println!(
            "decisions ({}): ok/defect/suspect on ok images {:?}, on defect images {:?} · escape rate {}, false-reject rate {}, suspect rate {}",
            o.sign_off.rules,
            d.confusion[0],
            d.confusion[1],
            f(d.escape_rate),
            f(d.false_reject_rate),
            f(d.suspect_rate)
        );
        let n = &m.nuisance;
        if n.images > 0 {
            println!(
                "nuisance ({} watermark-annotated images): mean energy on the watermark {:.3}, evidence mostly on it (>= {:.0} % of the map, or more than on the defect) in {}",
                n.images,
                n.mean_energy_on_watermark.unwrap_or(0.0),
                100.0 * n.threshold,
                f(n.rate)
            );
        }
        if let Some(g) = &o.gate {
            println!("gate:");
            for c in &g.criteria {
                println!(
                    "  {}  {:<24} {:>12}  (limit {} {:.2} %)",
                    c.verdict(),
                    c.name,
                    c.value_text(),
                    c.op,
                    100.0 * c.limit
                );
            }
            println!("gate: {}", if g.pass { "PASS" } else { "FAIL" });
        }
        if let Some(r) = &a.report {
            println!("report: {}", r.display());
        }
    }
    if let Some(g) = &o.gate {
        if !g.pass {
            let failed: Vec<&str> = g
                .criteria
                .iter()
                .filter(|c| !c.pass)
                .map(|c| c.name.as_str())
                .collect();
            // Exit 1: the input was fine, the model does not meet the gate.
            return Err(anyhow::anyhow!(
                "gate FAILED: {} (do not deploy)",
                failed.join(", ")
            ));
        }
    }
    Ok(())
}

fn run_daemon(a: RunArgs) -> Result<()> {
    let cfg = crate::config::Config::load(&a.config)?;
    let rt = inspectd_contract::client::runtime()?;
    let res = rt.block_on(crate::daemon::run(
        cfg,
        inspectd_contract::client::signals(),
        Default::default(),
    ));
    // A supervised task that failed may have left a task or a thread behind: do not wait for
    // it, the exit status must reach systemd now.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    res
}

fn check_config(a: CheckConfigArgs) -> Result<()> {
    let cfg = crate::config::Config::load(&a.config)?;
    let ex = crate::daemon::check(&cfg)?;
    println!(
        "{}: ok · device {} · model {} {} ({}) · layer {} · broker {}",
        a.config.display(),
        cfg.device_id,
        ex.model.name,
        ex.model.version,
        &ex.model.sha256[..12],
        ex.layer.name,
        cfg.mqtt.url
    );
    Ok(())
}

/// Times two models' forward passes alternately (ABAB…), so machine noise hits both alike.
fn bench_pair(
    a: &Explainer,
    input: &inspectd_cam::tensor::Tensor,
    other: &Path,
    runs: usize,
    json_out: bool,
) -> Result<()> {
    let m = Model::load(other, &LoadOptions::default())?;
    let spec = m.input.clone();
    if spec != a.model.input {
        return Err(bad_input(format!(
            "--against {}: its input contract differs from --model's",
            other.display()
        )));
    }
    let b = Explainer::new(m, &ExplainerOptions::default())?;
    for _ in 0..3 {
        a.forward(input)?;
        b.forward(input)?;
    }
    let (mut ta, mut tb) = (vec![], vec![]);
    for _ in 0..runs {
        ta.push(a.forward(input)?.ms);
        tb.push(b.forward(input)?.ms);
    }
    let (ma, mb) = (
        median(&mut ta).unwrap_or(0.0),
        median(&mut tb).unwrap_or(0.0),
    );
    if json_out {
        println!(
            "{}",
            json!({"a": a.model.path.display().to_string(), "b": b.model.path.display().to_string(), "runs": runs,
                   "a_forward_ms_median": ma, "b_forward_ms_median": mb, "a_over_b": ma / mb})
        );
    } else {
        println!(
            "{runs} alternating runs: {} forward median {ma:.3} ms · {} forward median {mb:.3} ms · ratio {:.2}×",
            a.model.path.display(),
            b.model.path.display(),
            ma / mb
        );
    }
    Ok(())
}
