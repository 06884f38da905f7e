//! Verdict rules: ok / defect / suspect from scores and the CAM map. Pure functions — the
//! pipeline feeds them, tests pin them. Zones are polygons in normalized coordinates (0..1) of
//! the model's view of the frame (the whole frame with `resize = "stretch"`).

use serde::{Deserialize, Serialize};

/// A polygon in normalized image coordinates, `[[x, y], ...]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Polygon(pub Vec<[f32; 2]>);

impl Polygon {
    /// Even-odd rule point-in-polygon test.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let p = &self.0;
        let mut inside = false;
        let mut j = p.len().wrapping_sub(1);
        for i in 0..p.len() {
            let ([xi, yi], [xj, yj]) = (p[i], p[j]);
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                inside = !inside;
            }
            j = i;
        }
        inside
    }

    /// Checks the polygon is usable: ≥ 3 finite points within 0..1.
    pub fn validate(&self) -> Result<(), String> {
        if self.0.len() < 3 {
            return Err(format!(
                "a polygon needs at least 3 points, got {}",
                self.0.len()
            ));
        }
        for [x, y] in &self.0 {
            if !(0.0..=1.0).contains(x) || !(0.0..=1.0).contains(y) {
                return Err(format!(
                    "point [{x}, {y}] is outside 0..1 (coordinates are normalized)"
                ));
            }
        }
        Ok(())
    }
}

/// A named area whose evidence makes a prediction suspect (a label sticker, a watermark).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub name: String,
    pub polygon: Polygon,
}

/// Verdict rules (the `[verdict]` config section).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// A non-ok top-1 label is a defect when its probability is at least this.
    pub defect_threshold: f32,
    /// Confidence band `[low, high]` (probability of the top-1 label) that is marginal: suspect.
    pub suspect_band: Option<[f32; 2]>,
    /// Region where evidence for a defect belongs (the part); none = whole frame.
    pub roi: Option<Polygon>,
    /// Least share of map mass inside `roi` for a trusted defect.
    pub min_roi_fraction: f32,
    /// Areas where evidence must not sit (labels, watermarks, fixture edges).
    pub ignore_zones: Vec<Zone>,
    /// Largest share of map mass on any ignore zone for a trusted defect.
    pub max_ignore_fraction: f32,
    /// Largest share of map cells at ≥ half the peak for a defect map (a diffuse map means the
    /// model did not localize anything); none = no check.
    pub max_spread: Option<f32>,
    /// Apply the evidence checks (roi, ignore zones, spread) to `ok` predictions too.
    pub check_ok_evidence: bool,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            defect_threshold: 0.5,
            suspect_band: None,
            roi: None,
            min_roi_fraction: 0.5,
            ignore_zones: vec![],
            // Measured (models/MODEL_CARD.md, "Suspect rules"): on held-out images 0.10 flags
            // 97 % of the shortcut model's defects and 0.1 % of the shipped model's correct ones;
            // 0.15 is twice the widest map of a correct defect (0.074).
            max_ignore_fraction: 0.1,
            max_spread: Some(0.15),
            check_ok_evidence: false,
        }
    }
}

impl Rules {
    /// Checks ranges; the error names the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |k: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("verdict.{k} = {v} must be within 0..1"))
            }
        };
        unit("defect_threshold", self.defect_threshold)?;
        unit("min_roi_fraction", self.min_roi_fraction)?;
        unit("max_ignore_fraction", self.max_ignore_fraction)?;
        if let Some(s) = self.max_spread {
            unit("max_spread", s)?;
        }
        if let Some([lo, hi]) = self.suspect_band {
            unit("suspect_band", lo)?;
            unit("suspect_band", hi)?;
            if lo > hi {
                return Err(format!(
                    "verdict.suspect_band [{lo}, {hi}] must be [low, high]"
                ));
            }
        }
        if let Some(r) = &self.roi {
            r.validate().map_err(|e| format!("verdict.roi: {e}"))?;
        }
        for z in &self.ignore_zones {
            z.polygon
                .validate()
                .map_err(|e| format!("verdict.ignore_zones {:?}: {e}", z.name))?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ok,
    Defect,
    Suspect,
}

/// Why a prediction is suspect.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// The confidence sits in the marginal band.
    Marginal { confidence: f32, band: [f32; 2] },
    /// Too little evidence inside the ROI.
    OutsideRoi { fraction: f32, min: f32 },
    /// Too much evidence on an ignore zone.
    OnIgnoreZone {
        zone: String,
        fraction: f32,
        max: f32,
    },
    /// The map is spread out instead of localized.
    Diffuse { spread: f32, max: f32 },
}

/// A fraction as a percentage beside its limit: whole percents, or one decimal where whole ones
/// would read the same as the limit ("15% (max 15%)" said of 15.3%, which an operator reads as a
/// false alarm).
fn pct(x: f32, limit: f32) -> String {
    let (a, b) = (x * 100.0, limit * 100.0);
    if format!("{a:.0}") == format!("{b:.0}") {
        format!("{a:.1}%")
    } else {
        format!("{a:.0}%")
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Marginal { confidence, band } => {
                write!(
                    f,
                    "marginal confidence {confidence:.2} in [{:.2}, {:.2}]",
                    band[0], band[1]
                )
            }
            Reason::OutsideRoi { fraction, min } => {
                write!(
                    f,
                    "only {} of the evidence inside the ROI (min {:.0}%)",
                    pct(*fraction, *min),
                    min * 100.0
                )
            }
            Reason::OnIgnoreZone {
                zone,
                fraction,
                max,
            } => {
                write!(
                    f,
                    "{} of the evidence on ignore zone {zone:?} (max {:.0}%)",
                    pct(*fraction, *max),
                    max * 100.0
                )
            }
            Reason::Diffuse { spread, max } => {
                write!(
                    f,
                    "diffuse map: {} of cells above half the peak (max {:.0}%)",
                    pct(*spread, *max),
                    max * 100.0
                )
            }
        }
    }
}

/// A reason as published: its code, its numbers and its text.
impl From<&Reason> for inspectd_contract::v1::Reason {
    fn from(r: &Reason) -> Self {
        let base = inspectd_contract::v1::Reason {
            text: r.to_string(),
            ..Default::default()
        };
        match r {
            Reason::Marginal { confidence, band } => Self {
                code: "marginal".into(),
                confidence: Some(*confidence as f64),
                band: Some([band[0] as f64, band[1] as f64]),
                ..base
            },
            Reason::OutsideRoi { fraction, min } => Self {
                code: "outside_roi".into(),
                fraction: Some(*fraction as f64),
                min: Some(*min as f64),
                ..base
            },
            Reason::OnIgnoreZone {
                zone,
                fraction,
                max,
            } => Self {
                code: "on_ignore_zone".into(),
                zone: Some(zone.clone()),
                fraction: Some(*fraction as f64),
                max: Some(*max as f64),
                ..base
            },
            Reason::Diffuse { spread, max } => Self {
                code: "diffuse".into(),
                spread: Some(*spread as f64),
                max: Some(*max as f64),
                ..base
            },
        }
    }
}

impl From<Kind> for inspectd_contract::v1::Kind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Ok => Self::Ok,
            Kind::Defect => Self::Defect,
            Kind::Suspect => Self::Suspect,
        }
    }
}

/// The decision for one frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub kind: Kind,
    pub class: usize,
    pub label: String,
    /// The probability of the decision: `p_defect` for a defect, P(ok) for an ok part.
    pub confidence: f32,
    /// The probability that the part is defective (what `defect_threshold` is compared with):
    /// 1 − P(ok) with an ok label, a single sigmoid score, P(top-1) otherwise.
    pub p_defect: f32,
    /// The probability of the class `label` names.
    pub p_label: f32,
    pub reasons: Vec<Reason>,
    /// Share of map mass inside the ROI (whole frame = 1 when no ROI).
    pub roi_fraction: f32,
}

/// Share of the map's mass inside `poly`, sampling each feature cell on a 4×4 sub-grid.
pub(crate) fn mass_fraction(map: &[f32], h: usize, w: usize, poly: &Polygon) -> f32 {
    const SUB: usize = 4;
    let (mut inside, mut total) = (0f64, 0f64);
    for y in 0..h {
        for x in 0..w {
            let v = map[y * w + x].max(0.0) as f64;
            if v == 0.0 {
                continue;
            }
            let mut hits = 0;
            for sy in 0..SUB {
                for sx in 0..SUB {
                    let px = (x as f32 + (sx as f32 + 0.5) / SUB as f32) / w as f32;
                    let py = (y as f32 + (sy as f32 + 0.5) / SUB as f32) / h as f32;
                    hits += poly.contains(px, py) as usize;
                }
            }
            inside += v * hits as f64 / (SUB * SUB) as f64;
            total += v;
        }
    }
    if total == 0.0 {
        0.0
    } else {
        (inside / total) as f32
    }
}

/// Share of cells at or above half the map's peak.
pub(crate) fn spread(map: &[f32]) -> f32 {
    let peak = map.iter().copied().fold(0f32, f32::max);
    if peak <= 0.0 || map.is_empty() {
        return 0.0;
    }
    map.iter().filter(|&&v| v >= 0.5 * peak).count() as f32 / map.len() as f32
}

/// The class a verdict is about and whether it is a defect: (class, confidence, is_defect).
///
/// With an ok label, the defect probability is 1 − P(ok): a part is defective when that reaches
/// `defect_threshold`, and the verdict names the most likely defect class, whatever way the
/// probability is split among defect kinds. Without one, the top-1 class decides; a single
/// sigmoid score is the defect probability itself.
pub fn target(rules: &Rules, scores: &[f32], ok: Option<usize>) -> (usize, f32, bool) {
    let argmax = |skip: Option<usize>| {
        let mut best: Option<usize> = None;
        for (i, &v) in scores.iter().enumerate() {
            if Some(i) != skip && best.is_none_or(|b| v > scores[b]) {
                best = Some(i);
            }
        }
        best.unwrap_or(0)
    };
    if scores.len() == 1 {
        return (
            0,
            scores[0].max(1.0 - scores[0]),
            scores[0] >= rules.defect_threshold,
        );
    }
    match ok {
        Some(o) if o < scores.len() => {
            let p_defect = 1.0 - scores[o];
            if p_defect >= rules.defect_threshold {
                (argmax(Some(o)), p_defect, true)
            } else {
                (o, scores[o], false)
            }
        }
        _ => {
            let c = argmax(None);
            (c, scores[c], scores[c] >= rules.defect_threshold)
        }
    }
}

/// Decides a verdict from the scores (probabilities), labels, the ok label and the map of the
/// class [`target`] chose.
pub fn decide(
    rules: &Rules,
    scores: &[f32],
    labels: &[String],
    ok: Option<usize>,
    map: &[f32],
    h: usize,
    w: usize,
) -> Decision {
    let (class, confidence, is_defect) = target(rules, scores, ok);
    let label = if scores.len() == 1 && !is_defect {
        ok.and_then(|i| labels.get(i))
            .cloned()
            .unwrap_or_else(|| "ok".into())
    } else {
        labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class_{class}"))
    };
    let mut reasons = vec![];
    if let Some(band) = rules.suspect_band {
        if confidence >= band[0] && confidence <= band[1] {
            reasons.push(Reason::Marginal { confidence, band });
        }
    }
    let roi_fraction = rules
        .roi
        .as_ref()
        .map(|r| mass_fraction(map, h, w, r))
        .unwrap_or(1.0);
    if is_defect || rules.check_ok_evidence {
        if rules.roi.is_some() && roi_fraction < rules.min_roi_fraction {
            reasons.push(Reason::OutsideRoi {
                fraction: roi_fraction,
                min: rules.min_roi_fraction,
            });
        }
        for z in &rules.ignore_zones {
            let f = mass_fraction(map, h, w, &z.polygon);
            if f > rules.max_ignore_fraction {
                reasons.push(Reason::OnIgnoreZone {
                    zone: z.name.clone(),
                    fraction: f,
                    max: rules.max_ignore_fraction,
                });
            }
        }
        if let Some(max) = rules.max_spread {
            let s = spread(map);
            if s > max {
                reasons.push(Reason::Diffuse { spread: s, max });
            }
        }
    }
    let kind = if !reasons.is_empty() {
        Kind::Suspect
    } else if is_defect {
        Kind::Defect
    } else {
        Kind::Ok
    };
    let p_defect = match ok {
        _ if scores.len() == 1 => scores[0],
        Some(o) if o < scores.len() => 1.0 - scores[o],
        _ => scores.get(class).copied().unwrap_or(0.0),
    };
    let p_label = if scores.len() == 1 {
        confidence
    } else {
        scores.get(class).copied().unwrap_or(0.0)
    };
    Decision {
        kind,
        class,
        label,
        confidence,
        p_defect,
        p_label,
        reasons,
        roi_fraction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_reason_is_the_tagged_reason_with_its_text() {
        for r in [
            Reason::Marginal {
                confidence: 0.61,
                band: [0.5, 0.7],
            },
            Reason::OutsideRoi {
                fraction: 0.2,
                min: 0.5,
            },
            Reason::OnIgnoreZone {
                zone: "watermark".into(),
                fraction: 0.26,
                max: 0.1,
            },
            Reason::Diffuse {
                spread: 0.16,
                max: 0.15,
            },
        ] {
            // The v1 bytes as first published: the serde form with `text` added, through Value.
            let mut old = serde_json::to_value(&r).unwrap();
            old["text"] = serde_json::json!(r.to_string());
            let new = serde_json::to_string(&inspectd_contract::v1::Reason::from(&r)).unwrap();
            assert_eq!(new, old.to_string());
        }
    }

    fn labels() -> Vec<String> {
        ["ok", "scratch", "dent"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn square(x0: f32, y0: f32, x1: f32, y1: f32) -> Polygon {
        Polygon(vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    }

    /// A 4×4 map with all its mass in one cell.
    fn peak_at(x: usize, y: usize) -> Vec<f32> {
        let mut m = vec![0.0; 16];
        m[y * 4 + x] = 1.0;
        m
    }

    #[test]
    fn a_confident_defect_with_evidence_on_the_part_is_a_defect() {
        let rules = Rules {
            roi: Some(square(0.0, 0.0, 0.5, 0.5)),
            ..Rules::default()
        };
        let d = decide(
            &rules,
            &[0.05, 0.9, 0.05],
            &labels(),
            Some(0),
            &peak_at(1, 1),
            4,
            4,
        );
        assert_eq!(d.kind, Kind::Defect);
        assert_eq!(d.label, "scratch");
        assert!(d.reasons.is_empty());
        assert_eq!(d.roi_fraction, 1.0);
    }

    #[test]
    fn marginal_confidence_is_suspect_with_its_reason() {
        let rules = Rules {
            suspect_band: Some([0.4, 0.7]),
            ..Rules::default()
        };
        let d = decide(
            &rules,
            &[0.45, 0.55, 0.0],
            &labels(),
            Some(0),
            &peak_at(0, 0),
            4,
            4,
        );
        assert_eq!(d.kind, Kind::Suspect);
        assert!(matches!(d.reasons[0], Reason::Marginal { .. }));
    }

    #[test]
    fn p_defect_is_what_the_threshold_sees_and_p_label_the_named_class() {
        // P(ok) 0.3: the part is defective with 0.7, split between two defect kinds; the
        // verdict names the likelier one, whose own probability is only 0.42.
        let d = decide(
            &Rules::default(),
            &[0.3, 0.28, 0.42],
            &labels(),
            Some(0),
            &peak_at(0, 0),
            4,
            4,
        );
        assert_eq!((d.kind, d.class), (Kind::Defect, 2));
        assert!((d.p_defect - 0.7).abs() < 1e-6);
        assert!((d.p_label - 0.42).abs() < 1e-6);
        assert!((d.confidence - d.p_defect).abs() < 1e-6);
        // An ok part: p_defect stays the defect probability, p_label is P(ok).
        let d = decide(
            &Rules::default(),
            &[0.8, 0.1, 0.1],
            &labels(),
            Some(0),
            &peak_at(0, 0),
            4,
            4,
        );
        assert_eq!(d.kind, Kind::Ok);
        assert!((d.p_defect - 0.2).abs() < 1e-6);
        assert!((d.p_label - 0.8).abs() < 1e-6);
    }

    #[test]
    fn evidence_outside_the_roi_is_suspect() {
        let rules = Rules {
            roi: Some(square(0.0, 0.0, 0.5, 0.5)),
            ..Rules::default()
        };
        let d = decide(
            &rules,
            &[0.0, 1.0, 0.0],
            &labels(),
            Some(0),
            &peak_at(3, 3),
            4,
            4,
        );
        assert_eq!(d.kind, Kind::Suspect);
        assert_eq!(
            d.reasons,
            vec![Reason::OutsideRoi {
                fraction: 0.0,
                min: 0.5
            }]
        );
    }

    #[test]
    fn evidence_on_a_watermark_is_suspect_and_names_the_zone() {
        let rules = Rules {
            ignore_zones: vec![Zone {
                name: "watermark".into(),
                polygon: square(0.7, 0.8, 1.0, 1.0),
            }],
            ..Rules::default()
        };
        let d = decide(
            &rules,
            &[0.0, 1.0, 0.0],
            &labels(),
            Some(0),
            &peak_at(3, 3),
            4,
            4,
        );
        assert_eq!(d.kind, Kind::Suspect);
        match &d.reasons[0] {
            Reason::OnIgnoreZone { zone, fraction, .. } => {
                assert_eq!(zone, "watermark");
                assert!(*fraction > 0.3);
            }
            r => panic!("unexpected reason {r:?}"),
        }
    }

    #[test]
    fn a_diffuse_defect_map_is_suspect() {
        let rules = Rules {
            max_spread: Some(0.5),
            ..Rules::default()
        };
        let d = decide(
            &rules,
            &[0.0, 1.0, 0.0],
            &labels(),
            Some(0),
            &[1.0; 16],
            4,
            4,
        );
        assert!(matches!(d.reasons[0], Reason::Diffuse { .. }));
    }

    #[test]
    fn ok_predictions_skip_evidence_checks_unless_asked() {
        let rules = Rules {
            roi: Some(square(0.0, 0.0, 0.5, 0.5)),
            ..Rules::default()
        };
        let d = decide(
            &rules,
            &[0.9, 0.1, 0.0],
            &labels(),
            Some(0),
            &peak_at(3, 3),
            4,
            4,
        );
        assert_eq!(d.kind, Kind::Ok);
        let strict = Rules {
            check_ok_evidence: true,
            ..rules
        };
        assert_eq!(
            decide(
                &strict,
                &[0.9, 0.1, 0.0],
                &labels(),
                Some(0),
                &peak_at(3, 3),
                4,
                4
            )
            .kind,
            Kind::Suspect
        );
    }

    #[test]
    fn a_single_sigmoid_score_is_the_defect_probability() {
        let l = vec!["defect".to_string()];
        assert_eq!(
            decide(&Rules::default(), &[0.8], &l, None, &peak_at(0, 0), 4, 4).kind,
            Kind::Defect
        );
        let d = decide(&Rules::default(), &[0.2], &l, None, &peak_at(0, 0), 4, 4);
        assert_eq!((d.kind, d.label.as_str()), (Kind::Ok, "ok"));
    }

    #[test]
    fn defect_probability_split_among_kinds_still_makes_a_defect() {
        // No single defect kind reaches 0.5, but P(defect) = 0.8 does.
        let d = decide(
            &Rules::default(),
            &[0.2, 0.3, 0.25, 0.25],
            &[labels(), vec!["stain".into()]].concat(),
            Some(0),
            &peak_at(1, 1),
            4,
            4,
        );
        assert_eq!((d.kind, d.label.as_str()), (Kind::Defect, "scratch"));
        assert!((d.confidence - 0.8).abs() < 1e-6);
    }

    #[test]
    fn polygons_are_validated_by_key() {
        let rules = Rules {
            roi: Some(Polygon(vec![[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])),
            ..Rules::default()
        };
        assert!(rules.validate().unwrap_err().contains("verdict.roi"));
        let rules = Rules {
            suspect_band: Some([0.8, 0.2]),
            ..Rules::default()
        };
        assert!(rules.validate().unwrap_err().contains("suspect_band"));
    }

    #[test]
    fn mass_fraction_of_half_a_frame() {
        let m = vec![1.0; 16];
        assert!((mass_fraction(&m, 4, 4, &square(0.0, 0.0, 0.5, 1.0)) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn a_value_just_over_its_limit_is_not_printed_equal_to_it() {
        let r = Reason::Diffuse {
            spread: 0.153,
            max: 0.15,
        };
        assert_eq!(
            r.to_string(),
            "diffuse map: 15.3% of cells above half the peak (max 15%)"
        );
        let r = Reason::Diffuse {
            spread: 0.26,
            max: 0.15,
        };
        assert!(r.to_string().starts_with("diffuse map: 26% "), "{r}");
    }
}
