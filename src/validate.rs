//! `inspectd validate`: a labelled folder → accuracy, per-class precision/recall, confusion
//! matrix, CAM localization against masks (pointing game, energy-in-mask), and a self-contained
//! HTML report. The metrics are plain functions of per-image records, unit-tested below.
//!
//! Every image is also decided as the daemon would (ok / defect / suspect, [`verdict::decide`]
//! under the `[verdict]` rules of a daemon config, or the defaults), which gives the escape,
//! false-reject and suspect rates a deployment gate ([`crate::gate`]) checks.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;
use base64::Engine;
use image::{GrayImage, RgbImage};
use serde::Serialize;

use inspectd_cam::error::bad_input;
use inspectd_cam::heatmap;
use inspectd_cam::model::preprocess::{fit, load_image, to_tensor, Crop};
use inspectd_cam::tensor::Tensor;
use inspectd_cam::{ClassChoice, Explainer, Method};

use crate::gate::{Criterion, Gate};
use crate::verdict::{self, Kind, Rules};

/// One labelled image of the data folder.
#[derive(Clone, Debug)]
pub struct Item {
    pub path: PathBuf,
    pub label: usize,
    pub mask: Option<PathBuf>,
    /// `<stem>.watermark.png`: where a nuisance (a burned-in watermark) is on the image.
    pub watermark: Option<PathBuf>,
}

/// Scans `dir`: one sub-folder per label (names must be model labels), images inside, optional
/// `<stem>.mask.png` beside each image.
pub fn scan(dir: &Path, labels: &[String]) -> Result<Vec<Item>> {
    if !dir.is_dir() {
        return Err(bad_input(format!(
            "data folder {}: not a directory",
            dir.display()
        )));
    }
    let mut items = vec![];
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad_input(format!("data folder {}: cannot read: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    if folders.is_empty() {
        return Err(bad_input(format!(
            "data folder {}: no label folders (expected one sub-folder per label: {})",
            dir.display(),
            labels.join(", ")
        )));
    }
    for f in folders {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(label) = labels.iter().position(|l| *l == name) else {
            return Err(bad_input(format!(
                "data folder {}: {name:?} is not a label of the model ({})",
                f.display(),
                labels.join(", ")
            )));
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&f)
            .map_err(|e| bad_input(format!("folder {}: cannot read: {e}", f.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && crate::source::is_image(p))
            .collect();
        files.sort();
        for path in files {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mask = path.with_file_name(format!("{stem}.mask.png"));
            let watermark = path.with_file_name(format!("{stem}.watermark.png"));
            items.push(Item {
                path,
                label,
                mask: mask.exists().then_some(mask),
                watermark: watermark.exists().then_some(watermark),
            });
        }
    }
    if items.is_empty() {
        return Err(bad_input(format!(
            "data folder {}: no images in the label folders",
            dir.display()
        )));
    }
    Ok(items)
}

/// What validation learned about one image.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub path: String,
    pub truth: usize,
    pub predicted: usize,
    pub confidence: f32,
    /// Pointing game hit and energy-in-mask (feature cells the mask touches), where a mask exists.
    pub pointing: Option<bool>,
    pub energy: Option<f32>,
    /// Energy-in-mask at pixel level (map up-sampled to the image).
    pub energy_pixels: Option<f32>,
    /// What the deployment's rules decide on this image, and why when suspect.
    pub decided: Kind,
    /// The class the verdict is about (its map is the one the rules judged and the report shows).
    pub decided_class: usize,
    pub decided_label: String,
    pub reasons: Vec<String>,
    /// Share of the decision's map (pixel level) on the `<stem>.watermark.png` nuisance.
    pub watermark_energy: Option<f32>,
    /// Whether the evidence sits mostly on that nuisance (see [`NUISANCE_SHARE`]).
    pub on_nuisance: Option<bool>,
}

/// Cells of an `h`×`w` feature grid that hold at least one mask pixel.
pub(crate) fn covered_cells(mask: &GrayImage, crop: Crop, h: usize, w: usize) -> Vec<bool> {
    let mut cells = vec![false; h * w];
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] < 128 {
            continue;
        }
        let fx = (x as f32 + 0.5 - crop.x) / crop.w;
        let fy = (y as f32 + 0.5 - crop.y) / crop.h;
        if !(0.0..1.0).contains(&fx) || !(0.0..1.0).contains(&fy) {
            continue;
        }
        cells[(fy * h as f32) as usize * w + (fx * w as f32) as usize] = true;
    }
    cells
}

fn dilate(cells: &[bool], h: usize, w: usize) -> Vec<bool> {
    let mut dilated = cells.to_vec();
    for y in 0..h {
        for x in 0..w {
            if !cells[y * w + x] {
                continue;
            }
            for dy in -1i32..=1 {
                for dx in -1i32..=1 {
                    let (yy, xx) = (y as i32 + dy, x as i32 + dx);
                    if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                        dilated[yy as usize * w + xx as usize] = true;
                    }
                }
            }
        }
    }
    dilated
}

/// Pointing game: is the map's peak cell inside the (dilated) mask cells?
pub(crate) fn pointing_hit(map: &Tensor, cells: &[bool]) -> bool {
    cells[map.argmax()]
}

/// Share of the map's mass (at feature resolution) in the cells the mask touches.
pub(crate) fn energy_in_cells(map: &Tensor, cells: &[bool]) -> f32 {
    let total: f32 = map.data().iter().map(|v| v.max(0.0)).sum();
    if total == 0.0 {
        return 0.0;
    }
    map.data()
        .iter()
        .zip(cells)
        .filter(|(_, &c)| c)
        .map(|(v, _)| v.max(0.0))
        .sum::<f32>()
        / total
}

/// Share of the map's mass inside the mask, with the map up-sampled (bilinear) over the crop
/// of the mask image (a stricter, pixel-level variant).
pub(crate) fn energy_in_mask(map: &Tensor, mask: &GrayImage, crop: Crop) -> f32 {
    let (h, w) = (map.shape()[0], map.shape()[1]);
    let (cw, ch) = (
        crop.w.round().max(1.0) as usize,
        crop.h.round().max(1.0) as usize,
    );
    let up = heatmap::resize_bilinear(map.data(), h, w, ch, cw);
    let (mut inside, mut total) = (0f64, 0f64);
    for y in 0..ch {
        for x in 0..cw {
            let v = up[y * cw + x].max(0.0) as f64;
            total += v;
            let (mx, my) = (
                x as u32 + crop.x.round() as u32,
                y as u32 + crop.y.round() as u32,
            );
            if mx < mask.width() && my < mask.height() && mask.get_pixel(mx, my).0[0] >= 128 {
                inside += v;
            }
        }
    }
    if total == 0.0 {
        0.0
    } else {
        (inside / total) as f32
    }
}

/// Aggregate metrics.
#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    pub images: usize,
    pub accuracy: f64,
    pub labels: Vec<String>,
    /// confusion[truth][predicted].
    pub confusion: Vec<Vec<usize>>,
    pub per_class: Vec<ClassMetrics>,
    pub localization: Localization,
    pub decision: DecisionMetrics,
    pub nuisance: Nuisance,
}

/// The deployment's decisions (ok / defect / suspect) against the truth (ok / defect).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DecisionMetrics {
    /// The model's ok label; none = every image counts as a defect image.
    pub ok_label: Option<String>,
    /// confusion[truth][decided]: truth ok, defect × decided ok, defect, suspect.
    pub confusion: [[usize; 3]; 2],
    /// Defect images decided ok, over the defect images.
    pub escape_rate: Option<f64>,
    /// Ok images decided defect or suspect, over the ok images.
    pub false_reject_rate: Option<f64>,
    /// Images decided suspect, over all images.
    pub suspect_rate: Option<f64>,
}

/// Evidence on a nuisance: images with a `<stem>.watermark.png` annotation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Nuisance {
    pub images: usize,
    pub mean_energy_on_watermark: Option<f64>,
    /// Share of those images whose evidence sits mostly on the watermark: at least
    /// [`NUISANCE_SHARE`] of the map on it, or more of the map on it than on the defect mask.
    pub rate: Option<f64>,
    pub threshold: f64,
}

/// An image's evidence "sits mostly on a nuisance" from this share of its map on it (or when
/// the nuisance holds more of the map than the defect mask does).
pub const NUISANCE_SHARE: f32 = 0.5;

/// Row of the decision confusion for a truth, column for a decision.
fn truth_row(truth: usize, ok: Option<usize>) -> usize {
    usize::from(Some(truth) != ok)
}

fn kind_col(k: Kind) -> usize {
    match k {
        Kind::Ok => 0,
        Kind::Defect => 1,
        Kind::Suspect => 2,
    }
}

/// Share `num / den`, none when nothing was counted.
fn share(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub support: usize,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Localization {
    pub method: String,
    /// Images with a mask.
    pub images: usize,
    pub pointing_game: Option<f64>,
    /// Mean share of map mass in the feature cells the mask touches.
    pub mean_energy_in_mask: Option<f64>,
    /// Mean share of map mass inside the pixel mask, map up-sampled bilinearly.
    pub mean_energy_in_mask_pixels: Option<f64>,
}

pub fn metrics(
    records: &[Record],
    labels: &[String],
    ok: Option<usize>,
    method: Method,
) -> Metrics {
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for r in records {
        confusion[r.truth][r.predicted] += 1;
    }
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let per_class = (0..k)
        .map(|i| {
            let support: usize = confusion[i].iter().sum();
            let predicted: usize = (0..k).map(|t| confusion[t][i]).sum();
            ClassMetrics {
                label: labels[i].clone(),
                support,
                precision: (predicted > 0).then(|| confusion[i][i] as f64 / predicted as f64),
                recall: (support > 0).then(|| confusion[i][i] as f64 / support as f64),
            }
        })
        .collect();
    let masked: Vec<&Record> = records.iter().filter(|r| r.energy.is_some()).collect();
    let n = masked.len();
    let mut dc = [[0usize; 3]; 2];
    for r in records {
        dc[truth_row(r.truth, ok)][kind_col(r.decided)] += 1;
    }
    let decision = DecisionMetrics {
        ok_label: ok.and_then(|o| labels.get(o).cloned()),
        confusion: dc,
        escape_rate: share(dc[1][0], dc[1].iter().sum()),
        false_reject_rate: share(dc[0][1] + dc[0][2], dc[0].iter().sum()),
        suspect_rate: share(dc[0][2] + dc[1][2], records.len()),
    };
    let wm: Vec<f32> = records.iter().filter_map(|r| r.watermark_energy).collect();
    let nuisance = Nuisance {
        images: wm.len(),
        mean_energy_on_watermark: (!wm.is_empty())
            .then(|| wm.iter().map(|&v| v as f64).sum::<f64>() / wm.len() as f64),
        rate: share(
            records
                .iter()
                .filter(|r| r.on_nuisance == Some(true))
                .count(),
            records.iter().filter(|r| r.on_nuisance.is_some()).count(),
        ),
        threshold: NUISANCE_SHARE as f64,
    };
    Metrics {
        images: records.len(),
        accuracy: if records.is_empty() {
            0.0
        } else {
            correct as f64 / records.len() as f64
        },
        labels: labels.to_vec(),
        confusion,
        per_class,
        localization: Localization {
            method: method.name().into(),
            images: n,
            pointing_game: (n > 0).then(|| {
                masked.iter().filter(|r| r.pointing == Some(true)).count() as f64 / n as f64
            }),
            mean_energy_in_mask: (n > 0).then(|| {
                masked
                    .iter()
                    .map(|r| r.energy.unwrap_or(0.0) as f64)
                    .sum::<f64>()
                    / n as f64
            }),
            mean_energy_in_mask_pixels: (n > 0).then(|| {
                masked
                    .iter()
                    .map(|r| r.energy_pixels.unwrap_or(0.0) as f64)
                    .sum::<f64>()
                    / n as f64
            }),
        },
        decision,
        nuisance,
    }
}

/// Energy below this share marks an image's evidence as "outside the mask" in the report.
pub(crate) const LOW_ENERGY: f32 = 0.5;

/// Examples shown per cell of the decision confusion, and per true class in a cell.
const EXAMPLES_PER_CELL: usize = 8;
const EXAMPLES_PER_CLASS: usize = 2;

#[derive(Clone)]
struct Shown {
    record: Record,
    overlay_png: Vec<u8>,
}

/// Options for a validation run.
pub struct ValidateOptions {
    pub method: Method,
    pub report: Option<PathBuf>,
    /// Largest number of gallery entries per section.
    pub gallery_limit: usize,
    /// The deployment's verdict rules, and where they come from (a config path, or "defaults").
    pub rules: Rules,
    pub rules_source: String,
    /// Criteria to check; none = no gate.
    pub gate: Option<Gate>,
    /// The data folder, as given (for the sign-off).
    pub data: PathBuf,
}

/// Who validated what, when: the report's sign-off block.
#[derive(Clone, Debug, Serialize)]
pub struct SignOff {
    pub inspectd_version: String,
    pub model: String,
    pub model_name: String,
    pub model_version: String,
    pub model_sha256: String,
    pub data: String,
    pub rules: String,
    /// UTC, RFC 3339.
    pub date: String,
}

/// A checked gate.
#[derive(Clone, Debug, Serialize)]
pub struct GateResult {
    pub pass: bool,
    pub criteria: Vec<Criterion>,
}

/// Everything a validation run reports (`--json` prints this; the metrics stay top-level).
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub metrics: Metrics,
    pub gate: Option<GateResult>,
    pub sign_off: SignOff,
}

/// Runs validation over `items`. Shows a progress bar when stderr is a terminal.
pub fn run(ex: &Explainer, items: &[Item], opts: &ValidateOptions) -> Result<Outcome> {
    let spec = &ex.model.input;
    let labels = &ex.model.output.labels;
    let ok_idx = ex
        .model
        .output
        .ok_label
        .as_ref()
        .and_then(|l| labels.iter().position(|x| x == l));
    let progress = std::io::stderr().is_terminal();
    let mut records = Vec::with_capacity(items.len());
    let mut wrong: Vec<Shown> = vec![];
    let mut off_mask: Vec<Shown> = vec![];
    let mut cells: Vec<Vec<Shown>> = vec![vec![]; 6];
    let zones = heatmap::Zones {
        roi: opts.rules.roi.as_ref().map(|p| p.0.as_slice()),
        ignore: opts
            .rules
            .ignore_zones
            .iter()
            .map(|z| z.polygon.0.as_slice())
            .collect(),
    };
    for (i, item) in items.iter().enumerate() {
        let img = load_image(&item.path)?;
        let mask = load_annotation(item.mask.as_deref(), "mask", &img)?;
        let watermark = load_annotation(item.watermark.as_deref(), "watermark", &img)?;
        let (fitted, crop) = fit(&img, spec);
        let input = to_tensor(&fitted, spec);
        let fwd = ex.forward(&input)?;
        // Localization is judged on the explanation of the true class (where the model sees
        // the defect), as in the pointing game's definition.
        let e = ex.explain_forward(&input, &fwd, &ClassChoice::Index(item.label), opts.method)?;
        let predicted = inspectd_cam::tensor::argmax(&e.logits);
        let (h, w) = (e.map.shape()[0], e.map.shape()[1]);
        let (pointing, energy, energy_pixels) = match &mask {
            Some(m) if m.pixels().any(|p| p.0[0] >= 128) => {
                let covered = covered_cells(m, crop, h, w);
                (
                    Some(pointing_hit(&e.map, &dilate(&covered, h, w))),
                    Some(energy_in_cells(&e.map, &covered)),
                    Some(energy_in_mask(&e.map, m, crop)),
                )
            }
            _ => (None, None, None),
        };
        // The deployment's decision: as the daemon's pipeline, the class the verdict is about
        // first, then its map, then the rules.
        let (class, _, _) = verdict::target(&opts.rules, &e.scores, ok_idx);
        let other;
        let de = if class == item.label {
            &e
        } else {
            other = ex.explain_forward(&input, &fwd, &ClassChoice::Index(class), opts.method)?;
            &other
        };
        let (dh, dw) = (de.map.shape()[0], de.map.shape()[1]);
        let d = verdict::decide(
            &opts.rules,
            &de.scores,
            labels,
            ok_idx,
            de.map.data(),
            dh,
            dw,
        );
        // Evidence on a nuisance: the decision's map on the watermark annotation. It sits
        // mostly there when that is at least NUISANCE_SHARE of the map, or more than the map
        // holds on the defect itself.
        let (watermark_energy, on_nuisance) = match &watermark {
            Some(wm) if wm.pixels().any(|p| p.0[0] >= 128) => {
                let on_wm = energy_in_mask(&de.map, wm, crop);
                let on_defect = match &mask {
                    Some(m) if energy.is_some() => Some(energy_in_mask(&de.map, m, crop)),
                    _ => None,
                };
                let mostly = on_wm >= NUISANCE_SHARE || on_defect.is_some_and(|d| on_wm > d);
                (Some(on_wm), Some(mostly))
            }
            _ => (None, None),
        };
        let record = Record {
            path: item.path.display().to_string(),
            truth: item.label,
            predicted,
            confidence: e.scores[predicted],
            pointing,
            energy,
            energy_pixels,
            decided: d.kind,
            decided_class: class,
            decided_label: d.label.clone(),
            reasons: d.reasons.iter().map(|r| r.to_string()).collect(),
            watermark_energy,
            on_nuisance,
        };
        let bad_class = predicted != item.label;
        let bad_place = energy.is_some_and(|v| v < LOW_ENERGY) || pointing == Some(false);
        let room = |v: &Vec<Shown>| opts.report.is_some() && v.len() < opts.gallery_limit;
        // What the daemon would show (its rendering, the configured zones) plus the annotations
        // (mask white, watermark yellow): the map of the class the verdict is about, and where
        // that is not the true class, the true class's map beside it.
        let render = |first: &Tensor, second: Option<&Tensor>| -> Result<Vec<u8>> {
            let one = |map: &Tensor| {
                let mut ov = heatmap::render_overlay(&img, map, crop, &zones);
                if let Some(m) = &mask {
                    outline(&mut ov, m, WHITE);
                }
                if let Some(m) = &watermark {
                    outline(&mut ov, m, YELLOW);
                }
                heatmap::thumbnail(&ov, 256)
            };
            let pic = match second {
                Some(t) => side_by_side(&one(first), &one(t)),
                None => one(first),
            };
            heatmap::png(&pic)
        };
        let truth_beside = (class != item.label).then_some(&e.map);
        if (bad_class && room(&wrong)) || (bad_place && room(&off_mask)) {
            let shown = Shown {
                record: record.clone(),
                overlay_png: render(&de.map, truth_beside)?,
            };
            if bad_class && room(&wrong) {
                wrong.push(shown.clone());
            }
            if bad_place && room(&off_mask) {
                off_mask.push(shown);
            }
        }
        let cell = truth_row(item.label, ok_idx) * 3 + kind_col(d.kind);
        // A few examples per true class in each cell, so that a cell shows its variety.
        if opts.report.is_some()
            && cells[cell].len() < EXAMPLES_PER_CELL
            && cells[cell]
                .iter()
                .filter(|s| s.record.truth == item.label)
                .count()
                < EXAMPLES_PER_CLASS
        {
            cells[cell].push(Shown {
                record: record.clone(),
                overlay_png: render(&de.map, truth_beside)?,
            });
        }
        records.push(record);
        if progress {
            let done = i + 1;
            let width = 30;
            let filled = done * width / items.len();
            eprint!(
                "\r[{}{}] {done}/{} images",
                "#".repeat(filled),
                " ".repeat(width - filled),
                items.len()
            );
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    let m = metrics(&records, labels, ok_idx, opts.method);
    let gate = opts.gate.as_ref().map(|g| {
        let criteria = g.check(&m);
        GateResult {
            pass: criteria.iter().all(|c| c.pass),
            criteria,
        }
    });
    let outcome = Outcome {
        metrics: m,
        gate,
        sign_off: SignOff {
            inspectd_version: env!("CARGO_PKG_VERSION").into(),
            model: ex.model.path.display().to_string(),
            model_name: ex.model.name.clone(),
            model_version: ex.model.version.clone(),
            model_sha256: ex.model.sha256.clone(),
            data: std::path::absolute(&opts.data)
                .unwrap_or_else(|_| opts.data.clone())
                .display()
                .to_string(),
            rules: opts.rules_source.clone(),
            date: inspectd_contract::timefmt::rfc3339(std::time::SystemTime::now()),
        },
    };
    if let Some(path) = &opts.report {
        let html = report_html(ex, &outcome, &opts.rules, &cells, &wrong, &off_mask);
        std::fs::write(path, html)
            .map_err(|e| bad_input(format!("report {}: cannot write: {e}", path.display())))?;
    }
    Ok(outcome)
}

/// Reads a `<stem>.<what>.png` annotation, which must have its image's size.
fn load_annotation(path: Option<&Path>, what: &str, img: &RgbImage) -> Result<Option<GrayImage>> {
    let Some(m) = path else {
        return Ok(None);
    };
    let mi = image::open(m)
        .map_err(|e| bad_input(format!("{what} {}: cannot decode: {e}", m.display())))?
        .into_luma8();
    if mi.dimensions() != img.dimensions() {
        return Err(bad_input(format!(
            "{what} {}: size {}×{} differs from its image {}×{}",
            m.display(),
            mi.width(),
            mi.height(),
            img.width(),
            img.height()
        )));
    }
    Ok(Some(mi))
}

const WHITE: image::Rgb<u8> = image::Rgb([255, 255, 255]);
const YELLOW: image::Rgb<u8> = image::Rgb([255, 220, 0]);

/// Two pictures of one height side by side with a dark 4-pixel gap.
fn side_by_side(a: &RgbImage, b: &RgbImage) -> RgbImage {
    const GAP: u32 = 4;
    let h = a.height().max(b.height());
    let mut out = RgbImage::from_pixel(a.width() + GAP + b.width(), h, image::Rgb([32, 32, 32]));
    image::imageops::replace(&mut out, a, 0, 0);
    image::imageops::replace(&mut out, b, (a.width() + GAP) as i64, 0);
    out
}

/// Draws the outline of an annotation mask over an overlay.
fn outline(img: &mut RgbImage, mask: &GrayImage, colour: image::Rgb<u8>) {
    let (w, h) = mask.dimensions();
    let on = |x: i64, y: i64| {
        x >= 0
            && y >= 0
            && x < w as i64
            && y < h as i64
            && mask.get_pixel(x as u32, y as u32).0[0] >= 128
    };
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            if on(x, y) && (!on(x - 1, y) || !on(x + 1, y) || !on(x, y - 1) || !on(x, y + 1)) {
                img.put_pixel(x as u32, y as u32, colour);
            }
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1} %", 100.0 * v))
        .unwrap_or_else(|| "–".into())
}

fn report_html(
    ex: &Explainer,
    o: &Outcome,
    rules: &Rules,
    cells: &[Vec<Shown>],
    wrong: &[Shown],
    off: &[Shown],
) -> String {
    let m = &o.metrics;
    let so = &o.sign_off;
    let mut h = String::new();
    let labels = &m.labels;
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>inspectd validation: {}</title><style>\
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}\
.diag{{background:#d9f2d9}}.off{{background:#fde2e2}}.g{{display:flex;flex-wrap:wrap;gap:12px}}\
figure{{margin:0;width:256px;font-size:12px}}figure.pair{{width:516px}}figure img{{width:100%;border:1px solid #999}}\
.pass{{background:#d9f2d9;font-weight:bold}}.fail{{background:#f8c4c4;font-weight:bold}}\
.banner{{font-size:1.4em;padding:.4em .8em;display:inline-block;border-radius:4px}}\
.cell{{border:1px solid #ccc;padding:.5em;margin:.5em 0}}figcaption code{{word-break:break-all}}\
</style></head><body>",
        esc(&ex.model.name)
    );
    let _ = write!(
        h,
        "<h1>Validation of {} <small>{}</small></h1><p>model <code>{}</code> sha256 <code>{}</code><br>\
         CAM: {} on layer <code>{}</code></p>",
        esc(&ex.model.name),
        esc(&ex.model.version),
        esc(&ex.model.path.display().to_string()),
        &ex.model.sha256[..16],
        esc(&m.localization.method),
        esc(&ex.layer.name)
    );
    let _ = write!(
        h,
        "<h2>Sign-off</h2><table><tr><th>inspectd version</th><td>{}</td></tr>\
         <tr><th>model</th><td><code>{}</code> ({} {})</td></tr>\
         <tr><th>model sha256</th><td><code>{}</code></td></tr>\
         <tr><th>data</th><td><code>{}</code></td></tr>\
         <tr><th>verdict rules</th><td><code>{}</code></td></tr>\
         <tr><th>date (UTC)</th><td>{}</td></tr></table>",
        esc(&so.inspectd_version),
        esc(&so.model),
        esc(&so.model_name),
        esc(&so.model_version),
        esc(&so.model_sha256),
        esc(&so.data),
        esc(&so.rules),
        esc(&so.date)
    );
    h.push_str("<h2>Deployment gate</h2>");
    match &o.gate {
        None => h.push_str("<p>No gate criteria given (<code>--gate FILE</code> or flags such as <code>--min-accuracy</code>).</p>"),
        Some(g) => {
            let (class, word) = if g.pass {
                ("pass", "PASS: the gate's criteria are met")
            } else {
                ("fail", "FAIL: do not deploy")
            };
            let _ = write!(h, "<p class=\"banner {class}\">{word}</p>");
            h.push_str("<table><tr><th>criterion</th><th>value</th><th>limit</th><th>result</th></tr>");
            for c in &g.criteria {
                let _ = write!(
                    h,
                    "<tr><th>{}</th><td>{}</td><td>{} {:.2} %</td><td class=\"{}\">{}</td></tr>",
                    esc(&c.name),
                    esc(&c.value_text()),
                    if c.op == ">=" { "≥" } else { "≤" },
                    100.0 * c.limit,
                    if c.pass { "pass" } else { "fail" },
                    c.verdict()
                );
            }
            h.push_str("</table>");
        }
    }
    let d = &m.decision;
    let _ = write!(
        h,
        "<h2>Summary</h2><table><tr><th>images</th><td>{}</td></tr><tr><th>accuracy</th><td>{}</td></tr>\
         <tr><th>escape rate (defect images decided ok)</th><td>{}</td></tr>\
         <tr><th>false-reject rate (ok images decided defect or suspect)</th><td>{}</td></tr>\
         <tr><th>suspect rate</th><td>{}</td></tr>\
         <tr><th>images with masks</th><td>{}</td></tr><tr><th>pointing game</th><td>{}</td></tr>\
         <tr><th>mean energy in mask (feature cells)</th><td>{}</td></tr>\
         <tr><th>mean energy in mask (pixels)</th><td>{}</td></tr>\
         <tr><th>images with a watermark annotation</th><td>{}</td></tr>\
         <tr><th>mean energy on the watermark</th><td>{}</td></tr>\
         <tr><th>nuisance rate (≥ {:.0} % of the map on the watermark, or more than on the defect)</th><td>{}</td></tr></table>",
        m.images,
        pct(Some(m.accuracy)),
        pct(d.escape_rate),
        pct(d.false_reject_rate),
        pct(d.suspect_rate),
        m.localization.images,
        pct(m.localization.pointing_game),
        m.localization.mean_energy_in_mask.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into()),
        m.localization.mean_energy_in_mask_pixels.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into()),
        m.nuisance.images,
        m.nuisance.mean_energy_on_watermark.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into()),
        100.0 * m.nuisance.threshold,
        pct(m.nuisance.rate),
    );
    // The deployment's decision against the truth.
    let ok_name = d.ok_label.clone().unwrap_or_else(|| "ok".into());
    let truths = [format!("{ok_name} (good part)"), "defect".to_string()];
    let kinds = ["ok", "defect", "suspect"];
    let _ = write!(
        h,
        "<h2>Decision confusion (the daemon's ok / defect / suspect)</h2>\
         <p>Each image decided by <code>verdict::decide</code> under the rules of <code>{}</code>: \
         defect threshold {:.2}{}, {} ignore zone(s), max {:.0} % of the map on one, max spread {}.</p>\
         <table><tr><th>truth \\ decided</th>",
        esc(&so.rules),
        rules.defect_threshold,
        rules
            .suspect_band
            .map(|[a, b]| format!(", suspect band [{a:.2}, {b:.2}]"))
            .unwrap_or_default(),
        rules.ignore_zones.len(),
        100.0 * rules.max_ignore_fraction,
        rules
            .max_spread
            .map(|s| format!("{:.0} %", 100.0 * s))
            .unwrap_or_else(|| "none".into())
    );
    for k in kinds {
        let _ = write!(h, "<th>{k}</th>");
    }
    h.push_str("</tr>");
    for (t, row) in d.confusion.iter().enumerate() {
        let _ = write!(h, "<tr><th>{}</th>", esc(&truths[t]));
        for (k, &n) in row.iter().enumerate() {
            // Right: ok parts decided ok, defects decided defect. A suspect goes to a person.
            let class = match (t, k) {
                (0, 0) | (1, 1) => " class=\"diag\"",
                _ if n > 0 => " class=\"off\"",
                _ => "",
            };
            let _ = write!(h, "<td{class}>{n}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</table><h3>Examples per cell</h3><p><small>The map of the class each verdict is about \
         (where that is not the true class, the true class's map on the right), drawn as the daemon \
         draws it: heat above 0.2, white contours at 0.5 and 0.8, legend bottom left; \
         green: ROI, dashed magenta: ignore zones, white: defect mask, yellow: watermark annotation.</small></p>");
    for t in 0..2 {
        for (k, kind) in kinds.iter().enumerate() {
            let shown = &cells[t * 3 + k];
            let _ = write!(
                h,
                "<div class=\"cell\"><b>truth {} → decided {kind}</b> ({} image(s))",
                esc(&truths[t]),
                d.confusion[t][k]
            );
            if shown.is_empty() {
                h.push_str(" — none.</div>");
                continue;
            }
            h.push_str("<div class=\"g\">");
            for s in shown {
                figure(&mut h, s, labels);
            }
            h.push_str("</div></div>");
        }
    }
    h.push_str("<h2>Per class</h2><table><tr><th>label</th><th>support</th><th>precision</th><th>recall</th></tr>");
    for c in &m.per_class {
        let _ = write!(
            h,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.label),
            c.support,
            pct(c.precision),
            pct(c.recall)
        );
    }
    h.push_str("</table><h2>Confusion matrix</h2><table><tr><th>truth \\ predicted</th>");
    for l in labels {
        let _ = write!(h, "<th>{}</th>", esc(l));
    }
    h.push_str("</tr>");
    for (t, row) in m.confusion.iter().enumerate() {
        let _ = write!(h, "<tr><th>{}</th>", esc(&labels[t]));
        for (p, &n) in row.iter().enumerate() {
            let class = if t == p {
                " class=\"diag\""
            } else if n > 0 {
                " class=\"off\""
            } else {
                ""
            };
            let _ = write!(h, "<td{class}>{n}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    let gallery = |h: &mut String, title: &str, items: &[Shown], empty: &str| {
        let _ = write!(h, "<h2>{}</h2>", esc(title));
        if items.is_empty() {
            let _ = write!(h, "<p>{}</p>", esc(empty));
            return;
        }
        h.push_str("<div class=\"g\">");
        for s in items {
            figure(h, s, labels);
        }
        h.push_str("</div>");
    };
    gallery(&mut h, "Misclassified", wrong, "None.");
    gallery(
        &mut h,
        "Evidence outside the mask",
        off,
        "None: every masked image's evidence is on its defect.",
    );
    h.push_str("<p><small>As above: the decided class's map, the true class's map on its right where they differ; white: the defect mask. Pointing and energy figures are measured on the true class's map.</small></p></body></html>");
    h
}

fn figure(h: &mut String, s: &Shown, labels: &[String]) {
    let r = &s.record;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&s.overlay_png);
    let loc = match (r.pointing, r.energy) {
        (Some(p), Some(e)) => format!(
            "<br>peak {} mask · energy in mask {e:.2}",
            if p { "inside" } else { "outside" }
        ),
        _ => String::new(),
    };
    let wm = r
        .watermark_energy
        .map(|v| {
            let mostly = if r.on_nuisance == Some(true) {
                ": <b>evidence on the nuisance</b>"
            } else {
                ""
            };
            format!("<br>{:.0} % of the map on the watermark{mostly}", 100.0 * v)
        })
        .unwrap_or_default();
    let why = if r.reasons.is_empty() {
        String::new()
    } else {
        format!("<br>suspect: {}", esc(&r.reasons.join("; ")))
    };
    // Two maps when the verdict is about another class than the true one.
    let (pair, alt) = if r.decided_class != r.truth {
        (
            " class=\"pair\"",
            format!(
                "map of {} (the verdict's class), map of {} (the true class)",
                esc(&labels[r.decided_class]),
                esc(&labels[r.truth])
            ),
        )
    } else {
        ("", format!("map of {}", esc(&labels[r.truth])))
    };
    let kind = match r.decided {
        Kind::Ok => "ok",
        Kind::Defect => "defect",
        Kind::Suspect => "suspect",
    };
    let _ = write!(
        h,
        "<figure{pair}><img src=\"data:image/png;base64,{b64}\" alt=\"{alt}\"><figcaption><b>{}</b> → {} ({:.1} %) · decided {kind} ({}){}{}{}<br><code>{}</code></figcaption></figure>",
        esc(&labels[r.truth]),
        esc(&labels[r.predicted]),
        100.0 * r.confidence,
        esc(&r.decided_label),
        loc,
        wm,
        why,
        esc(&r.path)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(truth: usize, predicted: usize, pointing: Option<bool>, energy: Option<f32>) -> Record {
        Record {
            path: String::new(),
            truth,
            predicted,
            confidence: 0.9,
            pointing,
            energy,
            energy_pixels: energy,
            decided: if predicted == 0 {
                Kind::Ok
            } else {
                Kind::Defect
            },
            decided_class: predicted,
            decided_label: String::new(),
            reasons: vec![],
            watermark_energy: None,
            on_nuisance: None,
        }
    }

    #[test]
    fn metrics_count_confusion_precision_and_recall() {
        let labels = vec!["ok".to_string(), "scratch".to_string()];
        let r = vec![
            rec(0, 0, None, None),
            rec(0, 1, None, None),
            rec(1, 1, Some(true), Some(0.8)),
            rec(1, 1, Some(false), Some(0.2)),
        ];
        let m = metrics(&r, &labels, Some(0), Method::GradCam);
        assert_eq!(m.confusion, vec![vec![1, 1], vec![0, 2]]);
        assert!((m.accuracy - 0.75).abs() < 1e-12);
        assert_eq!(m.per_class[1].precision, Some(2.0 / 3.0));
        assert_eq!(m.per_class[0].recall, Some(0.5));
        assert_eq!(m.localization.images, 2);
        assert_eq!(m.localization.pointing_game, Some(0.5));
        assert!((m.localization.mean_energy_in_mask.unwrap() - 0.5).abs() < 1e-6);
    }

    #[test]
    fn mask_cells_are_dilated_by_one_cell() {
        let mut mask = GrayImage::new(8, 8);
        mask.put_pixel(0, 0, image::Luma([255]));
        let crop = Crop {
            x: 0.0,
            y: 0.0,
            w: 8.0,
            h: 8.0,
        };
        let cells = dilate(&covered_cells(&mask, crop, 4, 4), 4, 4);
        let set: Vec<usize> = cells
            .iter()
            .enumerate()
            .filter(|(_, &c)| c)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(set, vec![0, 1, 4, 5]);
    }

    #[test]
    fn energy_of_a_map_inside_its_mask_is_one() {
        let mut mask = GrayImage::new(4, 4);
        for y in 0..2 {
            for x in 0..2 {
                mask.put_pixel(x, y, image::Luma([255]));
            }
        }
        let map = Tensor::new(vec![2, 2], vec![1.0, 0.0, 0.0, 0.0]);
        let e = energy_in_mask(
            &map,
            &mask,
            Crop {
                x: 0.0,
                y: 0.0,
                w: 4.0,
                h: 4.0,
            },
        );
        // Bilinear up-sampling leaks a little mass across the cell edge.
        assert!(e > 0.75, "{e}");
        let far = Tensor::new(vec![2, 2], vec![0.0, 0.0, 0.0, 1.0]);
        assert!(
            energy_in_mask(
                &far,
                &mask,
                Crop {
                    x: 0.0,
                    y: 0.0,
                    w: 4.0,
                    h: 4.0
                }
            ) < 0.1
        );
    }
}
