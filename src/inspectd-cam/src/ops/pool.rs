//! Pooling and reductions: global pools, ReduceMean/Sum/Max, AveragePool and MaxPool (2-D).

use anyhow::{anyhow, bail, Result};

use super::{axis, const_input, float, ints, out_numel, ConstInputs, Op, MAX_WINDOW_ATTR};
use crate::graph::Node;
use crate::tensor::{numel, strides, Tensor, Value};

pub fn build(
    op: &str,
    node: &Node,
    consts: &ConstInputs,
    opset: i64,
) -> Option<Result<Box<dyn Op>>> {
    let keep = node.int("keepdims").unwrap_or(1) != 0;
    let noop_empty = node.int("noop_with_empty_axes").unwrap_or(0) != 0;
    let reduce = |kind: ReduceKind, axes_as_input: bool| -> Option<Result<Box<dyn Op>>> {
        let axes = if axes_as_input {
            match node.input(1) {
                None => Ok(None),
                Some(_) => match const_input(consts, 1) {
                    Some(v) => ints(&[Some(v)], 0, "reduce axes").map(Some),
                    None => Err(anyhow!("{op} axes must be constant")),
                },
            }
        } else {
            Ok(node.ints("axes").map(<[i64]>::to_vec))
        };
        Some(axes.map(|axes| {
            Box::new(Reduce {
                kind,
                axes,
                keep,
                noop_empty,
            }) as Box<dyn Op>
        }))
    };
    match op {
        "GlobalAveragePool" => Some(Ok(Box::new(Reduce {
            kind: ReduceKind::Mean,
            axes: Some(vec![2, 3]),
            keep: true,
            noop_empty: false,
        }))),
        "GlobalMaxPool" => Some(Ok(Box::new(Reduce {
            kind: ReduceKind::Max,
            axes: Some(vec![2, 3]),
            keep: true,
            noop_empty: false,
        }))),
        "ReduceMean" => reduce(ReduceKind::Mean, opset >= 18),
        "ReduceMax" => reduce(ReduceKind::Max, opset >= 18),
        "ReduceSum" => reduce(ReduceKind::Sum, opset >= 13),
        "AveragePool" | "MaxPool" => {
            Some(Pool::from_node(node, op == "MaxPool").map(|p| Box::new(p) as Box<dyn Op>))
        }
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ReduceKind {
    Mean,
    Sum,
    Max,
}

struct Reduce {
    kind: ReduceKind,
    axes: Option<Vec<i64>>,
    keep: bool,
    noop_empty: bool,
}

impl Reduce {
    /// Reduced axes (as a mask) and the output shape for an input shape.
    fn plan(&self, shape: &[usize]) -> Result<(Vec<bool>, Vec<usize>)> {
        let rank = shape.len();
        let mut mask = vec![false; rank];
        match &self.axes {
            Some(a) if !a.is_empty() => {
                for &ax in a {
                    mask[axis(ax, rank)?] = true;
                }
            }
            _ if self.noop_empty => {}
            _ => mask.iter_mut().for_each(|m| *m = true),
        }
        let out: Vec<usize> = shape
            .iter()
            .zip(&mask)
            .filter_map(|(&d, &m)| match (m, self.keep) {
                (true, true) => Some(1),
                (true, false) => None,
                (false, _) => Some(d),
            })
            .collect();
        Ok((mask, out))
    }

    /// For every input element, the flat index of the output element it reduces into.
    fn targets(shape: &[usize], mask: &[bool]) -> Vec<usize> {
        let kept: Vec<usize> = shape
            .iter()
            .zip(mask)
            .map(|(&d, &m)| if m { 1 } else { d })
            .collect();
        let ks = strides(&kept);
        let n = numel(shape);
        let mut idx = vec![0usize; shape.len()];
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(
                idx.iter()
                    .zip(&ks)
                    .zip(mask)
                    .map(|((&i, &s), &m)| if m { 0 } else { i * s })
                    .sum(),
            );
            for ax in (0..shape.len()).rev() {
                idx[ax] += 1;
                if idx[ax] < shape[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        out
    }
}

impl Op for Reduce {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = float(inputs, 0, "reduce")?;
        let (mask, out_shape) = self.plan(x.shape())?;
        if let Some(group) = suffix_group(x.shape(), &mask) {
            // Global pooling: every output reduces one contiguous chunk.
            let out = x
                .data()
                .chunks(group)
                .map(|c| match self.kind {
                    ReduceKind::Max => c.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    ReduceKind::Sum => c.iter().sum(),
                    ReduceKind::Mean => c.iter().sum::<f32>() / group as f32,
                })
                .collect();
            return Ok(vec![Value::F(Tensor::new(out_shape, out))]);
        }
        let t = Self::targets(x.shape(), &mask);
        let count = (x.len() / numel(&out_shape).max(1)) as f32;
        let init = if self.kind == ReduceKind::Max {
            f32::NEG_INFINITY
        } else {
            0.0
        };
        let mut out = vec![init; numel(&out_shape)];
        for (&v, &o) in x.data().iter().zip(&t) {
            match self.kind {
                ReduceKind::Max => out[o] = out[o].max(v),
                _ => out[o] += v,
            }
        }
        if self.kind == ReduceKind::Mean {
            out.iter_mut().for_each(|v| *v /= count);
        }
        Ok(vec![Value::F(Tensor::new(out_shape, out))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        outputs: &[Value],
        grads: &[Option<Tensor>],
        _need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let x = float(inputs, 0, "reduce")?;
        let Some(g) = &grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let Value::F(y) = &outputs[0] else {
            bail!("reduce output is not float")
        };
        let (mask, out_shape) = self.plan(x.shape())?;
        let t = match suffix_group(x.shape(), &mask) {
            Some(group) => (0..x.len()).map(|k| k / group).collect(),
            None => Self::targets(x.shape(), &mask),
        };
        let count = (x.len() / numel(&out_shape).max(1)) as f32;
        let mut gx = vec![0f32; x.len()];
        match self.kind {
            ReduceKind::Mean => gx
                .iter_mut()
                .zip(&t)
                .for_each(|(v, &o)| *v = g.data()[o] / count),
            ReduceKind::Sum => gx.iter_mut().zip(&t).for_each(|(v, &o)| *v = g.data()[o]),
            ReduceKind::Max => {
                // The gradient goes to the first maximal element, as in PyTorch's max pooling.
                let mut taken = vec![false; y.len()];
                for (k, &o) in t.iter().enumerate() {
                    if !taken[o] && x.data()[k] == y.data()[o] {
                        gx[k] = g.data()[o];
                        taken[o] = true;
                    }
                }
            }
        }
        let mut out = vec![None; inputs.len()];
        out[0] = Some(Tensor::new(x.shape().to_vec(), gx));
        Ok(out)
    }
}

/// When the reduced axes are exactly the trailing ones, the size of each contiguous group.
fn suffix_group(shape: &[usize], mask: &[bool]) -> Option<usize> {
    let first = mask.iter().position(|&m| m)?;
    if mask[first..].iter().all(|&m| m) {
        Some(shape[first..].iter().product::<usize>().max(1))
    } else {
        None
    }
}

/// 2-D average or max pooling over NCHW.
struct Pool {
    max: bool,
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    /// Explicit pads (top, left, bottom, right), or an auto_pad rule.
    pads: [usize; 4],
    auto_pad: String,
    ceil: bool,
    count_include_pad: bool,
}

impl Pool {
    fn from_node(node: &Node, max: bool) -> Result<Pool> {
        let k = node
            .ints("kernel_shape")
            .ok_or_else(|| anyhow!("pool without kernel_shape"))?;
        if k.len() != 2 {
            bail!("only 2-D pooling is supported (kernel_shape {k:?})");
        }
        if !k.iter().all(|&x| (1..=MAX_WINDOW_ATTR).contains(&x)) {
            bail!("pool kernel_shape {k:?} is invalid");
        }
        let two = |key: &str| -> Result<[usize; 2]> {
            match node.ints(key) {
                None => Ok([1, 1]),
                Some(v)
                    if v.len() == 2 && v.iter().all(|&x| (1..=MAX_WINDOW_ATTR).contains(&x)) =>
                {
                    Ok([v[0] as usize, v[1] as usize])
                }
                Some(v) => bail!("pool {key} {v:?} is invalid"),
            }
        };
        let pads = match node.ints("pads") {
            None => [0; 4],
            Some(p) if p.len() == 4 && p.iter().all(|&x| (0..=MAX_WINDOW_ATTR).contains(&x)) => {
                [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
            }
            Some(p) => bail!("pool pads {p:?} are invalid"),
        };
        Ok(Pool {
            max,
            kernel: [k[0] as usize, k[1] as usize],
            strides: two("strides")?,
            dilations: two("dilations")?,
            pads,
            auto_pad: node.string("auto_pad").unwrap_or("NOTSET").to_string(),
            ceil: node.int("ceil_mode").unwrap_or(0) != 0,
            count_include_pad: node.int("count_include_pad").unwrap_or(0) != 0,
        })
    }

    /// (output size, pad before) along one axis.
    fn geometry(&self, size: usize, ax: usize) -> (usize, usize) {
        let (k, s, d) = (self.kernel[ax], self.strides[ax], self.dilations[ax]);
        let ek = (k - 1) * d + 1;
        match self.auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let out = size.div_ceil(s);
                let total = ((out - 1) * s + ek).saturating_sub(size);
                let before = if self.auto_pad == "SAME_UPPER" {
                    total / 2
                } else {
                    total - total / 2
                };
                (out, before)
            }
            "VALID" => ((size.saturating_sub(ek)) / s + 1, 0),
            _ => {
                let (pb, pe) = (self.pads[ax], self.pads[ax + 2]);
                let span = size + pb + pe;
                let span = span.saturating_sub(ek);
                let mut out = if self.ceil {
                    span.div_ceil(s) + 1
                } else {
                    span / s + 1
                };
                // A window that would start in the end padding is dropped (PyTorch / ONNX rule).
                if self.ceil && (out - 1) * s >= size + pb {
                    out -= 1;
                }
                (out, pb)
            }
        }
    }

    /// For every output element, the input positions of its window (flat, within one plane)
    /// and the divisor for averaging.
    fn windows(&self, h: usize, w: usize) -> (usize, usize, Vec<(Vec<usize>, f32)>) {
        let (oh, pt) = self.geometry(h, 0);
        let (ow, pl) = self.geometry(w, 1);
        let mut out = Vec::with_capacity(oh * ow);
        for oy in 0..oh {
            for ox in 0..ow {
                let mut cells = vec![];
                let mut padded = 0usize;
                for ky in 0..self.kernel[0] {
                    for kx in 0..self.kernel[1] {
                        let y =
                            (oy * self.strides[0] + ky * self.dilations[0]) as isize - pt as isize;
                        let x =
                            (ox * self.strides[1] + kx * self.dilations[1]) as isize - pl as isize;
                        if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                            cells.push(y as usize * w + x as usize);
                        } else {
                            // Count only padding inside the explicitly padded extent.
                            let in_pad = y >= -(pt as isize)
                                && x >= -(pl as isize)
                                && y < (h + self.pads[2]) as isize
                                && x < (w + self.pads[3]) as isize;
                            if in_pad {
                                padded += 1;
                            }
                        }
                    }
                }
                let div = if self.count_include_pad {
                    cells.len() + padded
                } else {
                    cells.len()
                };
                out.push((cells, div.max(1) as f32));
            }
        }
        (oh, ow, out)
    }
}

impl Op for Pool {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = float(inputs, 0, "pool")?;
        if x.rank() != 4 {
            bail!("pooling expects NCHW, got {:?}", x.shape());
        }
        let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        if h == 0 || w == 0 {
            bail!("pooling an empty plane {:?}", x.shape());
        }
        let ((oh, _), (ow, _)) = (self.geometry(h, 0), self.geometry(w, 1));
        out_numel(&[n, c, oh, ow], "pool output")?;
        out_numel(&[oh, ow, self.kernel[0], self.kernel[1]], "pool windows")?;
        let (oh, ow, wins) = self.windows(h, w);
        let mut out = Vec::with_capacity(n * c * oh * ow);
        for plane in x.data().chunks(h * w) {
            for (cells, div) in &wins {
                out.push(if self.max {
                    cells
                        .iter()
                        .map(|&i| plane[i])
                        .fold(f32::NEG_INFINITY, f32::max)
                } else {
                    cells.iter().map(|&i| plane[i]).sum::<f32>() / div
                });
            }
        }
        Ok(vec![Value::F(Tensor::new(vec![n, c, oh, ow], out))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _outputs: &[Value],
        grads: &[Option<Tensor>],
        _need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let x = float(inputs, 0, "pool")?;
        let Some(g) = &grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let (h, w) = (x.shape()[2], x.shape()[3]);
        let (oh, ow, wins) = self.windows(h, w);
        let mut gx = vec![0f32; x.len()];
        for (p, (plane, gplane)) in x
            .data()
            .chunks(h * w)
            .zip(g.data().chunks(oh * ow))
            .enumerate()
        {
            let base = p * h * w;
            for ((cells, div), &gv) in wins.iter().zip(gplane) {
                if self.max {
                    // First maximal element of the window takes the gradient.
                    let mut best: Option<usize> = None;
                    for &i in cells {
                        if best.is_none_or(|b| plane[i] > plane[b]) {
                            best = Some(i);
                        }
                    }
                    if let Some(b) = best {
                        gx[base + b] += gv;
                    }
                } else {
                    for &i in cells {
                        gx[base + i] += gv / div;
                    }
                }
            }
        }
        let mut out = vec![None; inputs.len()];
        out[0] = Some(Tensor::new(x.shape().to_vec(), gx));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_grad, rt};
    use super::*;

    fn pool(max: bool, k: usize, s: usize, pads: [usize; 4], ceil: bool, cip: bool) -> Pool {
        Pool {
            max,
            kernel: [k, k],
            strides: [s, s],
            dilations: [1, 1],
            pads,
            auto_pad: "NOTSET".into(),
            ceil,
            count_include_pad: cip,
        }
    }

    #[test]
    fn reductions_match_finite_differences() {
        let x = Value::F(rt(1, &[1, 3, 4, 5]));
        let distinct = Value::F(Tensor::new(
            vec![1, 3, 4, 5],
            (0..60).map(|k| ((k * 23) % 60) as f32 * 0.05).collect(),
        ));
        for kind in [ReduceKind::Mean, ReduceKind::Sum, ReduceKind::Max] {
            let x = if kind == ReduceKind::Max {
                distinct.clone()
            } else {
                x.clone()
            };
            for keep in [true, false] {
                let r = Reduce {
                    kind,
                    axes: Some(vec![2, -1]),
                    keep,
                    noop_empty: false,
                };
                check_grad(&r, vec![x.clone()], &[true]);
            }
        }
    }

    #[test]
    fn global_average_pool_averages_each_plane() {
        let x = Value::F(Tensor::new(vec![1, 2, 1, 2], vec![1., 3., 5., 7.]));
        let r = Reduce {
            kind: ReduceKind::Mean,
            axes: Some(vec![2, 3]),
            keep: true,
            noop_empty: false,
        };
        assert_eq!(
            r.forward(&[Some(&x)]).unwrap()[0],
            Value::F(Tensor::new(vec![1, 2, 1, 1], vec![2., 6.]))
        );
    }

    #[test]
    fn pools_match_finite_differences() {
        // Distinct values 0.05 apart, so finite differences never cross a max-pool tie.
        let n = 2 * 7 * 6;
        let x = Value::F(Tensor::new(
            vec![1, 2, 7, 6],
            (0..n).map(|k| ((k * 37) % n) as f32 * 0.05 - 2.0).collect(),
        ));
        for p in [
            pool(false, 2, 2, [0; 4], false, false),
            pool(false, 3, 2, [1, 1, 1, 1], true, true),
            pool(false, 3, 2, [1, 1, 1, 1], true, false),
            pool(true, 2, 2, [0; 4], false, false),
            pool(true, 3, 2, [1, 1, 1, 1], true, false),
        ] {
            check_grad(&p, vec![x.clone()], &[true]);
        }
    }

    #[test]
    fn ceil_mode_output_size_follows_pytorch() {
        // PyTorch: MaxPool2d(3, 2, ceil_mode=True) on 7 → 3, on 6 → 3 (last window starts at 4 < 6).
        let p = pool(true, 3, 2, [0; 4], true, false);
        assert_eq!(p.geometry(7, 0).0, 3);
        assert_eq!(p.geometry(6, 0).0, 3);
        assert_eq!(pool(true, 2, 2, [0; 4], true, false).geometry(5, 0).0, 3);
    }
}
