//! CAM formulas, as pytorch-grad-cam 1.5.7 computes them (its eps values included), and its
//! map normalization. Inputs are A and G for one image: `[C, H, W]` row-major slices.

use std::fmt;
use std::str::FromStr;

use crate::tensor::Tensor;

/// A class activation map method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    GradCam,
    GradCamPlusPlus,
    XGradCam,
    LayerCam,
    HiResCam,
    EigenCam,
    ScoreCam,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::GradCam,
        Method::GradCamPlusPlus,
        Method::XGradCam,
        Method::LayerCam,
        Method::HiResCam,
        Method::EigenCam,
        Method::ScoreCam,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::GradCamPlusPlus => "gradcam++",
            Method::XGradCam => "xgradcam",
            Method::LayerCam => "layercam",
            Method::HiResCam => "hirescam",
            Method::EigenCam => "eigencam",
            Method::ScoreCam => "scorecam",
        }
    }

    /// Whether the method needs ∂y/∂A (and so a differentiable head).
    pub fn needs_gradients(self) -> bool {
        !matches!(self, Method::EigenCam | Method::ScoreCam)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Method, String> {
        let k = s.to_ascii_lowercase().replace(['-', '_'], "");
        Ok(match k.as_str() {
            "gradcam" => Method::GradCam,
            "gradcam++" | "gradcampp" | "gradcamplusplus" => Method::GradCamPlusPlus,
            "xgradcam" => Method::XGradCam,
            "layercam" => Method::LayerCam,
            "hirescam" => Method::HiResCam,
            "eigencam" => Method::EigenCam,
            "scorecam" => Method::ScoreCam,
            _ => {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                return Err(format!(
                    "unknown CAM method {s:?} (one of: {})",
                    names.join(", ")
                ));
            }
        })
    }
}

/// Channel weights × activations, summed over channels.
fn weighted_sum(a: &[f32], weights: &[f32], hw: usize) -> Vec<f32> {
    let mut cam = vec![0f32; hw];
    for (plane, &w) in a.chunks(hw).zip(weights) {
        for (c, &v) in cam.iter_mut().zip(plane) {
            *c += w * v;
        }
    }
    cam
}

/// Grad-CAM: channel weights are the spatial mean of the gradients.
pub fn gradcam(a: &[f32], g: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let w: Vec<f32> = g
        .chunks(hw)
        .map(|p| p.iter().sum::<f32>() / hw as f32)
        .take(c)
        .collect();
    weighted_sum(a, &w, hw)
}

/// Grad-CAM++: α = g² / (2g² + ΣA·g³ + 1e-6), α = 0 where g = 0; w = Σ relu(g)·α.
pub(crate) fn gradcam_pp(a: &[f32], g: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let mut w = vec![0f32; c];
    for ch in 0..c {
        let ap = &a[ch * hw..(ch + 1) * hw];
        let gp = &g[ch * hw..(ch + 1) * hw];
        let sum_a: f32 = ap.iter().sum();
        let mut acc = 0f32;
        for &gv in gp {
            let g2 = gv * gv;
            let g3 = g2 * gv;
            let alpha = if gv != 0.0 {
                g2 / (2.0 * g2 + sum_a * g3 + 1e-6)
            } else {
                0.0
            };
            acc += gv.max(0.0) * alpha;
        }
        w[ch] = acc;
    }
    weighted_sum(a, &w, hw)
}

/// XGrad-CAM: w = Σ g·A / (ΣA + 1e-7).
pub fn xgradcam(a: &[f32], g: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let w: Vec<f32> = (0..c)
        .map(|ch| {
            let ap = &a[ch * hw..(ch + 1) * hw];
            let gp = &g[ch * hw..(ch + 1) * hw];
            let s: f32 = ap.iter().sum();
            ap.iter().zip(gp).map(|(&x, &y)| y * x / (s + 1e-7)).sum()
        })
        .collect();
    weighted_sum(a, &w, hw)
}

/// LayerCAM: Σ_c relu(g)·A.
pub fn layercam(a: &[f32], g: &[f32], hw: usize) -> Vec<f32> {
    let mut cam = vec![0f32; hw];
    for (ap, gp) in a.chunks(hw).zip(g.chunks(hw)) {
        for ((c, &x), &y) in cam.iter_mut().zip(ap).zip(gp) {
            *c += y.max(0.0) * x;
        }
    }
    cam
}

/// HiResCAM: Σ_c g·A.
pub fn hirescam(a: &[f32], g: &[f32], hw: usize) -> Vec<f32> {
    let mut cam = vec![0f32; hw];
    for (ap, gp) in a.chunks(hw).zip(g.chunks(hw)) {
        for ((c, &x), &y) in cam.iter_mut().zip(ap).zip(gp) {
            *c += y * x;
        }
    }
    cam
}

/// EigenCAM: projection of the (channel-centred) activations on their first principal
/// component. The SVD's sign is arbitrary; we pick the one that correlates positively with
/// the channel-summed activation, so the map lights up where the activations are strong.
pub fn eigencam(a: &[f32], c: usize, hw: usize) -> Vec<f32> {
    // X: [hw, c], centred per channel (column).
    let mut x = vec![0f64; hw * c];
    for ch in 0..c {
        let p = &a[ch * hw..(ch + 1) * hw];
        let mean = p.iter().map(|&v| v as f64).sum::<f64>() / hw as f64;
        for (i, &v) in p.iter().enumerate() {
            x[i * c + ch] = v as f64 - mean;
        }
    }
    // Principal direction from the smaller Gram matrix.
    let proj: Vec<f64> = if hw <= c {
        let gram = gram(&x, hw, c, true);
        let (u, lambda) = top_eigen(&gram, hw);
        u.iter().map(|v| v * lambda.max(0.0).sqrt()).collect()
    } else {
        let gram = gram(&x, hw, c, false);
        let (v, _) = top_eigen(&gram, c);
        (0..hw)
            .map(|i| (0..c).map(|k| x[i * c + k] * v[k]).sum())
            .collect()
    };
    let strength: Vec<f64> = (0..hw)
        .map(|i| (0..c).map(|ch| a[ch * hw + i] as f64).sum())
        .collect();
    let mean_s = strength.iter().sum::<f64>() / hw as f64;
    let dot: f64 = proj
        .iter()
        .zip(&strength)
        .map(|(p, s)| p * (s - mean_s))
        .sum();
    let sign = if dot < 0.0 { -1.0 } else { 1.0 };
    proj.iter().map(|&p| (sign * p) as f32).collect()
}

/// X·Xᵀ (`rows` = true, size r×r) or Xᵀ·X (size c×c) of a row-major r×c matrix.
fn gram(x: &[f64], r: usize, c: usize, rows: bool) -> Vec<f64> {
    if rows {
        let mut g = vec![0f64; r * r];
        for i in 0..r {
            for j in i..r {
                let v: f64 = (0..c).map(|k| x[i * c + k] * x[j * c + k]).sum();
                g[i * r + j] = v;
                g[j * r + i] = v;
            }
        }
        g
    } else {
        let mut g = vec![0f64; c * c];
        for i in 0..r {
            let row = &x[i * c..(i + 1) * c];
            for a in 0..c {
                if row[a] == 0.0 {
                    continue;
                }
                for b in a..c {
                    g[a * c + b] += row[a] * row[b];
                }
            }
        }
        for a in 0..c {
            for b in 0..a {
                g[a * c + b] = g[b * c + a];
            }
        }
        g
    }
}

/// Leading eigenpair of a symmetric positive semi-definite n×n matrix by power iteration.
fn top_eigen(m: &[f64], n: usize) -> (Vec<f64>, f64) {
    // Start from the row with the largest norm: never orthogonal to the leading eigenvector
    // unless the matrix is zero.
    let mut best = 0;
    let mut best_norm = -1.0;
    for i in 0..n {
        let s: f64 = m[i * n..(i + 1) * n].iter().map(|v| v * v).sum();
        if s > best_norm {
            best_norm = s;
            best = i;
        }
    }
    let mut v: Vec<f64> = m[best * n..(best + 1) * n].to_vec();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let n0 = norm(&v);
    if n0 == 0.0 {
        return (vec![0.0; n], 0.0);
    }
    v.iter_mut().for_each(|x| *x /= n0);
    let mut lambda = 0.0;
    for _ in 0..5000 {
        let mut w = vec![0f64; n];
        for i in 0..n {
            w[i] = m[i * n..(i + 1) * n]
                .iter()
                .zip(&v)
                .map(|(a, b)| a * b)
                .sum();
        }
        let nw = norm(&w);
        if nw == 0.0 {
            return (v, 0.0);
        }
        w.iter_mut().for_each(|x| *x /= nw);
        let diff: f64 = w
            .iter()
            .zip(&v)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        v = w;
        lambda = nw;
        if diff < 1e-12 {
            break;
        }
    }
    (v, lambda)
}

/// ReLU then (x − min) / (max + 1e-7), as pytorch-grad-cam's `scale_cam_image`.
fn relu_minmax(x: &[f32]) -> Vec<f32> {
    let r: Vec<f32> = x.iter().map(|&v| v.max(0.0)).collect();
    let min = r.iter().copied().fold(f32::INFINITY, f32::min);
    let shifted: Vec<f32> = r.iter().map(|&v| v - min).collect();
    let max = shifted.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    shifted.iter().map(|&v| v / (1e-7 + max)).collect()
}

/// The library's full post-processing for one target layer: ReLU + min-max per layer, then
/// ReLU, the (single-layer) mean and min-max again.
pub fn normalize(raw: &[f32]) -> Vec<f32> {
    relu_minmax(&relu_minmax(raw))
}

/// Bilinear up-sampling with align_corners = true (torch.nn.UpsamplingBilinear2d).
pub(crate) fn upsample_align_corners(
    plane: &[f32],
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; oh * ow];
    let sy = if oh > 1 {
        (h - 1) as f32 / (oh - 1) as f32
    } else {
        0.0
    };
    let sx = if ow > 1 {
        (w - 1) as f32 / (ow - 1) as f32
    } else {
        0.0
    };
    for y in 0..oh {
        let fy = y as f32 * sy;
        let y0 = (fy.floor() as usize).min(h - 1);
        let y1 = (y0 + 1).min(h - 1);
        let dy = fy - y0 as f32;
        for x in 0..ow {
            let fx = x as f32 * sx;
            let x0 = (fx.floor() as usize).min(w - 1);
            let x1 = (x0 + 1).min(w - 1);
            let dx = fx - x0 as f32;
            let top = plane[y0 * w + x0] * (1.0 - dx) + plane[y0 * w + x1] * dx;
            let bot = plane[y1 * w + x0] * (1.0 - dx) + plane[y1 * w + x1] * dx;
            out[y * ow + x] = top * (1.0 - dy) + bot * dy;
        }
    }
    out
}

/// Score-CAM masks: each channel up-sampled to the input size and min-max normalized
/// with the library's 1e-8.
pub fn scorecam_mask(plane: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let up = upsample_align_corners(plane, h, w, oh, ow);
    let max = up.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = up.iter().copied().fold(f32::INFINITY, f32::min);
    up.iter().map(|&v| (v - min) / (max - min + 1e-8)).collect()
}

/// Softmax of Score-CAM's channel scores.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// Channel-weighted sum used by Score-CAM (weights of unscored channels are 0).
pub fn scorecam_from_weights(a: &[f32], weights: &[f32], hw: usize) -> Vec<f32> {
    weighted_sum(a, weights, hw)
}

/// Raw map (before ReLU/normalization) for a gradient method.
pub fn gradient_map(method: Method, a: &Tensor, g: &Tensor) -> Vec<f32> {
    let s = a.shape();
    let (c, hw) = (s[1], s[2] * s[3]);
    match method {
        Method::GradCam => gradcam(a.data(), g.data(), c, hw),
        Method::GradCamPlusPlus => gradcam_pp(a.data(), g.data(), c, hw),
        Method::XGradCam => xgradcam(a.data(), g.data(), c, hw),
        Method::LayerCam => layercam(a.data(), g.data(), hw),
        Method::HiResCam => hirescam(a.data(), g.data(), hw),
        Method::EigenCam => eigencam(a.data(), c, hw),
        Method::ScoreCam => unreachable!("Score-CAM needs masked forward passes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        assert_eq!(
            "GradCAM-PP".parse::<Method>().unwrap(),
            Method::GradCamPlusPlus
        );
        assert!("smoothgrad"
            .parse::<Method>()
            .unwrap_err()
            .contains("gradcam"));
    }

    #[test]
    fn gradcam_weights_channels_by_mean_gradient() {
        // Two channels of 2 pixels: weights 1 and -1.
        let a = [1.0, 2.0, 3.0, 1.0];
        let g = [1.0, 1.0, -2.0, 0.0];
        assert_eq!(gradcam(&a, &g, 2, 2), vec![1.0 - 3.0, 2.0 - 1.0]);
    }

    #[test]
    fn gradcam_pp_alpha_is_zero_where_gradient_is_zero() {
        let a = [1.0, 1.0];
        let g = [0.0, 0.0];
        assert_eq!(gradcam_pp(&a, &g, 1, 2), vec![0.0, 0.0]);
    }

    #[test]
    fn normalization_matches_the_library() {
        let n = normalize(&[-1.0, 0.0, 2.0, 4.0]);
        // ReLU → [0,0,2,4]; /(4+1e-7) → [0,0,.5,1−]; second pass is near identity.
        assert!((n[2] - 0.5).abs() < 1e-6 && (n[3] - 1.0).abs() < 1e-6 && n[0] == 0.0);
        assert_eq!(normalize(&[-1.0, -2.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn eigencam_finds_the_dominant_spatial_pattern() {
        // Both channels carry the same spatial pattern (scaled): the projection is that pattern.
        let pattern = [0.0f32, 1.0, 4.0, 1.0, 0.0, 2.0];
        let mut a = vec![];
        for s in [1.0f32, 3.0] {
            a.extend(pattern.iter().map(|v| v * s));
        }
        let p = eigencam(&a, 2, 6);
        let r = crate::tensor::pearson(&p, &pattern);
        assert!(r > 0.999, "r = {r}");
    }

    #[test]
    fn align_corners_upsampling_keeps_the_corners() {
        let up = upsample_align_corners(&[0.0, 1.0, 2.0, 3.0], 2, 2, 3, 3);
        assert_eq!(up, vec![0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
    }
}
