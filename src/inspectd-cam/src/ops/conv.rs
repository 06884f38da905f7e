//! 2-D convolution (any kernel, stride, padding, dilation, group) by im2col + GEMM; backward
//! to the input by GEMM + col2im. Shared with QLinearConv, which runs it on dequantized weights.

use anyhow::{anyhow, bail, Result};

use super::linear::matmul;
use super::{float, out_numel, ConstInputs, Op, MAX_WINDOW_ATTR};
use crate::graph::Node;
use crate::tensor::{Tensor, Value};

pub fn build(
    op: &str,
    node: &Node,
    _consts: &ConstInputs,
    _opset: i64,
) -> Option<Result<Box<dyn Op>>> {
    match op {
        "Conv" => Some(ConvAttrs::from_node(node).map(|a| Box::new(Conv(a)) as Box<dyn Op>)),
        _ => None,
    }
}

/// Convolution attributes as written in the node.
#[derive(Clone, Debug)]
pub struct ConvAttrs {
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub pads: [usize; 4],
    pub auto_pad: String,
    pub group: usize,
}

impl ConvAttrs {
    pub fn from_node(node: &Node) -> Result<ConvAttrs> {
        let two = |key: &str| -> Result<[usize; 2]> {
            match node.ints(key) {
                None => Ok([1, 1]),
                Some(v)
                    if v.len() == 2 && v.iter().all(|&x| (1..=MAX_WINDOW_ATTR).contains(&x)) =>
                {
                    Ok([v[0] as usize, v[1] as usize])
                }
                Some(v) if v.len() == 2 => {
                    bail!("Conv {key} {v:?} are invalid (1 to {MAX_WINDOW_ATTR})")
                }
                Some(v) => bail!("Conv {key} {v:?}: only 2-D convolutions are supported"),
            }
        };
        if let Some(k) = node.ints("kernel_shape") {
            if k.len() != 2 {
                bail!("only 2-D convolutions are supported (kernel_shape {k:?})");
            }
        }
        let pads = match node.ints("pads") {
            None => [0; 4],
            Some(p) if p.len() == 4 && p.iter().all(|&x| (0..=MAX_WINDOW_ATTR).contains(&x)) => {
                [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
            }
            Some(p) => bail!("Conv pads {p:?} are invalid"),
        };
        let group = node.int("group").unwrap_or(1);
        if group < 1 {
            bail!("Conv group {group} is invalid");
        }
        Ok(ConvAttrs {
            strides: two("strides")?,
            dilations: two("dilations")?,
            pads,
            auto_pad: node.string("auto_pad").unwrap_or("NOTSET").to_string(),
            group: group as usize,
        })
    }
}

/// Concrete geometry of one convolution.
#[derive(Clone, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    pt: usize,
    pl: usize,
    group: usize,
    a: ConvAttrs,
}

impl Geom {
    fn new(a: &ConvAttrs, x: &[usize], wt: &[usize]) -> Result<Geom> {
        if x.len() != 4 || wt.len() != 4 {
            bail!("Conv expects NCHW input and MCkk weights, got {x:?} and {wt:?}");
        }
        let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
        let (m, cg, kh, kw) = (wt[0], wt[1], wt[2], wt[3]);
        if [h, w, kh, kw].contains(&0) {
            bail!("Conv input {x:?} or weights {wt:?} have an empty spatial axis");
        }
        if c != cg * a.group || m % a.group != 0 {
            bail!(
                "Conv channels do not fit: input {x:?}, weights {wt:?}, group {}",
                a.group
            );
        }
        let axis = |size: usize, k: usize, ax: usize| -> Result<(usize, usize)> {
            let (s, d) = (a.strides[ax], a.dilations[ax]);
            let ek = (k - 1) * d + 1;
            Ok(match a.auto_pad.as_str() {
                "SAME_UPPER" | "SAME_LOWER" => {
                    let out = size.div_ceil(s);
                    let total = ((out - 1) * s + ek).saturating_sub(size);
                    let before = if a.auto_pad == "SAME_UPPER" {
                        total / 2
                    } else {
                        total - total / 2
                    };
                    (out, before)
                }
                "VALID" => (
                    size.checked_sub(ek)
                        .ok_or_else(|| anyhow!("Conv kernel larger than input"))?
                        / s
                        + 1,
                    0,
                ),
                _ => {
                    let span = (size + a.pads[ax] + a.pads[ax + 2])
                        .checked_sub(ek)
                        .ok_or_else(|| anyhow!("Conv kernel larger than padded input"))?;
                    (span / s + 1, a.pads[ax])
                }
            })
        };
        let (oh, pt) = axis(h, kh, 0)?;
        let (ow, pl) = axis(w, kw, 1)?;
        out_numel(&[n, m, oh, ow], "Conv output")?;
        out_numel(&[cg, kh, kw, oh, ow], "Conv im2col")?;
        Ok(Geom {
            n,
            c,
            h,
            w,
            m,
            kh,
            kw,
            oh,
            ow,
            pt,
            pl,
            group: a.group,
            a: a.clone(),
        })
    }

    fn cg(&self) -> usize {
        self.c / self.group
    }

    /// Input position (flat within a plane) read by kernel tap (ky, kx) at output (oy, ox).
    fn tap(&self, ky: usize, kx: usize, oy: usize, ox: usize) -> Option<usize> {
        let y = (oy * self.a.strides[0] + ky * self.a.dilations[0]) as isize - self.pt as isize;
        let x = (ox * self.a.strides[1] + kx * self.a.dilations[1]) as isize - self.pl as isize;
        if y >= 0 && x >= 0 && (y as usize) < self.h && (x as usize) < self.w {
            Some(y as usize * self.w + x as usize)
        } else {
            None
        }
    }

    /// im2col of one group of one image: [cg·kh·kw, oh·ow].
    fn im2col(&self, planes: &[f32]) -> Vec<f32> {
        let (cg, hw, ohw) = (self.cg(), self.h * self.w, self.oh * self.ow);
        let mut cols = vec![0f32; cg * self.kh * self.kw * ohw];
        for ci in 0..cg {
            let plane = &planes[ci * hw..(ci + 1) * hw];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = ((ci * self.kh + ky) * self.kw + kx) * ohw;
                    for oy in 0..self.oh {
                        for ox in 0..self.ow {
                            if let Some(p) = self.tap(ky, kx, oy, ox) {
                                cols[row + oy * self.ow + ox] = plane[p];
                            }
                        }
                    }
                }
            }
        }
        cols
    }

    /// Adjoint of im2col: scatter-adds columns back into planes.
    fn col2im(&self, cols: &[f32], planes: &mut [f32]) {
        let (cg, hw, ohw) = (self.cg(), self.h * self.w, self.oh * self.ow);
        for ci in 0..cg {
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = ((ci * self.kh + ky) * self.kw + kx) * ohw;
                    for oy in 0..self.oh {
                        for ox in 0..self.ow {
                            if let Some(p) = self.tap(ky, kx, oy, ox) {
                                planes[ci * hw + p] += cols[row + oy * self.ow + ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// y = conv(x, w) + b.
pub fn conv_forward(a: &ConvAttrs, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let g = Geom::new(a, x.shape(), w.shape())?;
    if let Some(b) = b {
        if b.len() != g.m {
            bail!(
                "Conv bias has {} values for {} output channels",
                b.len(),
                g.m
            );
        }
    }
    let (cg, mg, ohw) = (g.cg(), g.m / g.group, g.oh * g.ow);
    let kk = cg * g.kh * g.kw;
    let mut y = vec![0f32; g.n * g.m * ohw];
    for n in 0..g.n {
        for gi in 0..g.group {
            let xs =
                &x.data()[(n * g.c + gi * cg) * g.h * g.w..(n * g.c + (gi + 1) * cg) * g.h * g.w];
            let cols = g.im2col(xs);
            let ws = &w.data()[gi * mg * kk..(gi + 1) * mg * kk];
            let out = matmul(mg, kk, ohw, ws, false, &cols, false);
            let dst = &mut y[(n * g.m + gi * mg) * ohw..(n * g.m + (gi + 1) * mg) * ohw];
            dst.copy_from_slice(&out);
        }
        if let Some(b) = b {
            for mi in 0..g.m {
                let bias = b.data()[mi];
                y[(n * g.m + mi) * ohw..(n * g.m + mi + 1) * ohw]
                    .iter_mut()
                    .for_each(|v| *v += bias);
            }
        }
    }
    Ok(Tensor::new(vec![g.n, g.m, g.oh, g.ow], y))
}

/// ∂L/∂x given ∂L/∂y.
pub fn conv_backward_input(
    a: &ConvAttrs,
    x_shape: &[usize],
    w: &Tensor,
    gy: &Tensor,
) -> Result<Tensor> {
    let g = Geom::new(a, x_shape, w.shape())?;
    let (cg, mg, ohw) = (g.cg(), g.m / g.group, g.oh * g.ow);
    let kk = cg * g.kh * g.kw;
    let mut gx = vec![0f32; g.n * g.c * g.h * g.w];
    for n in 0..g.n {
        for gi in 0..g.group {
            let ws = &w.data()[gi * mg * kk..(gi + 1) * mg * kk];
            let gys = &gy.data()[(n * g.m + gi * mg) * ohw..(n * g.m + (gi + 1) * mg) * ohw];
            let cols = matmul(kk, mg, ohw, ws, true, gys, false);
            let dst =
                &mut gx[(n * g.c + gi * cg) * g.h * g.w..(n * g.c + (gi + 1) * cg) * g.h * g.w];
            g.col2im(&cols, dst);
        }
    }
    Ok(Tensor::new(x_shape.to_vec(), gx))
}

struct Conv(ConvAttrs);

impl Op for Conv {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = float(inputs, 0, "Conv X")?;
        let w = float(inputs, 1, "Conv W")?;
        let b = match inputs.get(2).copied().flatten() {
            Some(Value::F(b)) => Some(b),
            Some(Value::I(_)) => bail!("Conv bias must be float"),
            None => None,
        };
        Ok(vec![Value::F(conv_forward(&self.0, x, w, b)?)])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _outputs: &[Value],
        grads: &[Option<Tensor>],
        need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        if need.get(1).copied().unwrap_or(false) || need.get(2).copied().unwrap_or(false) {
            bail!("Conv with computed weights is not supported");
        }
        let x = float(inputs, 0, "Conv X")?;
        let w = float(inputs, 1, "Conv W")?;
        let Some(g) = &grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let mut out = vec![None; inputs.len()];
        out[0] = Some(conv_backward_input(&self.0, x.shape(), w, g)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_grad, rt};
    use super::*;

    fn attrs(s: usize, d: usize, pads: [usize; 4], group: usize, auto: &str) -> ConvAttrs {
        ConvAttrs {
            strides: [s, s],
            dilations: [d, d],
            pads,
            auto_pad: auto.into(),
            group,
        }
    }

    #[test]
    fn convolutions_match_finite_differences() {
        let x = Value::F(rt(1, &[1, 4, 7, 6]));
        for (a, wshape) in [
            (attrs(1, 1, [1, 1, 1, 1], 1, "NOTSET"), [3, 4, 3, 3]),
            (attrs(2, 1, [0, 1, 2, 0], 1, "NOTSET"), [2, 4, 3, 2]),
            (attrs(1, 2, [2, 2, 2, 2], 2, "NOTSET"), [4, 2, 3, 3]),
            (attrs(1, 1, [1, 1, 1, 1], 4, "NOTSET"), [4, 1, 3, 3]),
            (attrs(2, 1, [0; 4], 1, "SAME_UPPER"), [2, 4, 3, 3]),
            (attrs(1, 1, [0; 4], 1, "VALID"), [5, 4, 1, 1]),
        ] {
            let w = Value::F(rt(2, &wshape));
            let b = Value::F(rt(3, &[wshape[0]]));
            check_grad(&Conv(a), vec![x.clone(), w, b], &[true, false, false]);
        }
    }

    #[test]
    fn a_one_by_one_conv_is_a_channel_mix() {
        let x = Tensor::new(vec![1, 2, 1, 2], vec![1., 2., 3., 4.]);
        let w = Tensor::new(vec![1, 2, 1, 1], vec![10., 1.]);
        let y = conv_forward(&attrs(1, 1, [0; 4], 1, "NOTSET"), &x, &w, None).unwrap();
        assert_eq!(y.data(), &[13., 24.]);
    }
}
