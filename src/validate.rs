//! `inspectd validate`: a labelled folder → accuracy, per-class precision/recall, confusion
//! matrix, CAM localization against masks (pointing game, energy-in-mask), and a self-contained
//! HTML report. The metrics are plain functions of per-image records, unit-tested below.

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

/// One labelled image of the data folder.
#[derive(Clone, Debug)]
pub struct Item {
    pub path: PathBuf,
    pub label: usize,
    pub mask: Option<PathBuf>,
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
            items.push(Item {
                path,
                label,
                mask: mask.exists().then_some(mask),
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

pub fn metrics(records: &[Record], labels: &[String], method: Method) -> Metrics {
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
    }
}

/// Energy below this share marks an image's evidence as "outside the mask" in the report.
pub(crate) const LOW_ENERGY: f32 = 0.5;

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
}

/// Runs validation over `items`. Shows a progress bar when stderr is a terminal.
pub fn run(
    ex: &Explainer,
    items: &[Item],
    opts: &ValidateOptions,
) -> Result<(Metrics, Vec<Record>)> {
    let spec = &ex.model.input;
    let progress = std::io::stderr().is_terminal();
    let mut records = Vec::with_capacity(items.len());
    let mut wrong: Vec<Shown> = vec![];
    let mut off_mask: Vec<Shown> = vec![];
    for (i, item) in items.iter().enumerate() {
        let img = load_image(&item.path)?;
        let mask = match &item.mask {
            None => None,
            Some(m) => {
                let mi = image::open(m)
                    .map_err(|e| bad_input(format!("mask {}: cannot decode: {e}", m.display())))?
                    .into_luma8();
                if mi.dimensions() != img.dimensions() {
                    return Err(bad_input(format!(
                        "mask {}: size {}×{} differs from its image {}×{}",
                        m.display(),
                        mi.width(),
                        mi.height(),
                        img.width(),
                        img.height()
                    )));
                }
                Some(mi)
            }
        };
        let (fitted, crop) = fit(&img, spec);
        let input = to_tensor(&fitted, spec);
        // Localization is judged on the explanation of the true class (where the model sees
        // the defect), as in the pointing game's definition.
        let e = ex.explain(&input, &ClassChoice::Index(item.label), opts.method)?;
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
        let record = Record {
            path: item.path.display().to_string(),
            truth: item.label,
            predicted,
            confidence: e.scores[predicted],
            pointing,
            energy,
            energy_pixels,
        };
        let bad_class = predicted != item.label;
        let bad_place = energy.is_some_and(|v| v < LOW_ENERGY) || pointing == Some(false);
        let room = |v: &Vec<Shown>| opts.report.is_some() && v.len() < opts.gallery_limit;
        if (bad_class && room(&wrong)) || (bad_place && room(&off_mask)) {
            let mut ov = heatmap::overlay(&img, &e.map, crop, 0.5);
            if let Some(m) = &mask {
                outline(&mut ov, m);
            }
            let shown = Shown {
                record: record.clone(),
                overlay_png: heatmap::png(&heatmap::thumbnail(&ov, 256))?,
            };
            if bad_class && room(&wrong) {
                wrong.push(shown.clone());
            }
            if bad_place && room(&off_mask) {
                off_mask.push(shown);
            }
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
    let m = metrics(&records, &ex.model.output.labels, opts.method);
    if let Some(path) = &opts.report {
        let html = report_html(ex, &m, &wrong, &off_mask);
        std::fs::write(path, html)
            .map_err(|e| bad_input(format!("report {}: cannot write: {e}", path.display())))?;
    }
    Ok((m, records))
}

/// Draws the mask's outline in white over an overlay.
fn outline(img: &mut RgbImage, mask: &GrayImage) {
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
                img.put_pixel(x as u32, y as u32, image::Rgb([255, 255, 255]));
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

fn report_html(ex: &Explainer, m: &Metrics, wrong: &[Shown], off: &[Shown]) -> String {
    let mut h = String::new();
    let labels = &m.labels;
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>inspectd validation: {}</title><style>\
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}\
.diag{{background:#d9f2d9}}.off{{background:#fde2e2}}.g{{display:flex;flex-wrap:wrap;gap:12px}}\
figure{{margin:0;width:256px;font-size:12px}}figure img{{width:256px;border:1px solid #999}}\
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
        "<h2>Summary</h2><table><tr><th>images</th><td>{}</td></tr><tr><th>accuracy</th><td>{}</td></tr>\
         <tr><th>images with masks</th><td>{}</td></tr><tr><th>pointing game</th><td>{}</td></tr>\
         <tr><th>mean energy in mask (feature cells)</th><td>{}</td></tr>\
         <tr><th>mean energy in mask (pixels)</th><td>{}</td></tr></table>",
        m.images,
        pct(Some(m.accuracy)),
        m.localization.images,
        pct(m.localization.pointing_game),
        m.localization.mean_energy_in_mask.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into()),
        m.localization.mean_energy_in_mask_pixels.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into())
    );
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
            let r = &s.record;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&s.overlay_png);
            let loc = match (r.pointing, r.energy) {
                (Some(p), Some(e)) => format!(
                    "<br>peak {} mask · energy in mask {e:.2}",
                    if p { "inside" } else { "outside" }
                ),
                _ => String::new(),
            };
            let _ = write!(
                h,
                "<figure><img src=\"data:image/png;base64,{b64}\" alt=\"overlay\"><figcaption><b>{}</b> → {} ({:.1} %){}<br><code>{}</code></figcaption></figure>",
                esc(&labels[r.truth]),
                esc(&labels[r.predicted]),
                100.0 * r.confidence,
                loc,
                esc(&r.path)
            );
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
    h.push_str("<p><small>Outlined in white: the defect mask. Maps are explanations of the true class.</small></p></body></html>");
    h
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
        let m = metrics(&r, &labels, Method::GradCam);
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
