//! Data-movement and shape ops. Each movement op describes, for every output element, which
//! input element it copies (or that it is padding); forward gathers along that map and backward
//! scatters the gradient back along it, so one mechanism serves Reshape, Transpose, Concat,
//! Slice, Gather, Expand, Split, Pad and friends, on float and integer tensors alike.

use anyhow::{anyhow, bail, Result};

use super::{axis, ints, out_numel, ConstInputs, Op};
use crate::graph::{Attr, Node};
use crate::tensor::{broadcast_index, broadcast_shape, numel, strides, ITensor, Tensor, Value};

pub fn build(
    op: &str,
    node: &Node,
    _consts: &ConstInputs,
    opset: i64,
) -> Option<Result<Box<dyn Op>>> {
    let mv = |k: Kind| -> Option<Result<Box<dyn Op>>> { Some(Ok(Box::new(Move(k)))) };
    match op {
        "Identity" => mv(Kind::Identity),
        "Dropout" => mv(Kind::Identity),
        "Flatten" => mv(Kind::Flatten(node.int("axis").unwrap_or(1))),
        "Reshape" => mv(Kind::Reshape {
            allow_zero: node.int("allowzero").unwrap_or(0) != 0,
        }),
        "Squeeze" => mv(Kind::Squeeze(node.ints("axes").map(<[i64]>::to_vec))),
        "Unsqueeze" => mv(Kind::Unsqueeze(node.ints("axes").map(<[i64]>::to_vec))),
        "Transpose" => mv(Kind::Transpose(node.ints("perm").map(<[i64]>::to_vec))),
        "Concat" => match node.int("axis") {
            Some(a) => mv(Kind::Concat(a)),
            None => Some(Err(anyhow!("Concat without an axis attribute"))),
        },
        "Gather" => mv(Kind::Gather(node.int("axis").unwrap_or(0))),
        "Slice" => {
            if opset < 10 {
                let (Some(s), Some(e)) = (node.ints("starts"), node.ints("ends")) else {
                    return Some(Err(anyhow!("Slice without starts/ends")));
                };
                mv(Kind::SliceAttr {
                    starts: s.to_vec(),
                    ends: e.to_vec(),
                    axes: node.ints("axes").map(<[i64]>::to_vec),
                })
            } else {
                mv(Kind::Slice)
            }
        }
        "Expand" => mv(Kind::Expand),
        "Split" => mv(Kind::Split {
            axis: node.int("axis").unwrap_or(0),
            split: node.ints("split").map(<[i64]>::to_vec),
            outputs: node.outputs.len(),
        }),
        "Pad" => {
            let mode = node.string("mode").unwrap_or("constant");
            if mode != "constant" {
                return Some(Err(anyhow!(
                    "Pad mode {mode:?} is not supported (only constant)"
                )));
            }
            mv(Kind::Pad {
                pads: node.ints("pads").map(<[i64]>::to_vec),
                value: node.float("value").unwrap_or(0.0),
            })
        }
        "Shape" => Some(Ok(Box::new(ShapeOp {
            start: node.int("start").unwrap_or(0),
            end: node.int("end"),
        }))),
        "Constant" => Some(constant(node).map(|v| Box::new(Const(v)) as Box<dyn Op>)),
        "ConstantOfShape" => Some(Ok(Box::new(ConstantOfShape(
            match node.attrs.get("value") {
                Some(Attr::Tensor(v)) => v.clone(),
                _ => Value::F(Tensor::new(vec![1], vec![0.0])),
            },
        )))),
        "Cast" => match node.int("to") {
            Some(to) => Some(Ok(Box::new(Cast {
                to_float: matches!(to, 1 | 10 | 11 | 16),
            }))),
            None => Some(Err(anyhow!("Cast without a `to` attribute"))),
        },
        _ => None,
    }
}

fn constant(node: &Node) -> Result<Value> {
    Ok(
        match node.attrs.iter().next().map(|(k, v)| (k.as_str(), v)) {
            Some(("value", Attr::Tensor(v))) => v.clone(),
            Some(("value_float", Attr::Float(f))) => Value::F(Tensor::scalar(*f)),
            Some(("value_floats", Attr::Floats(f))) => {
                Value::F(Tensor::new(vec![f.len()], f.clone()))
            }
            Some(("value_int", Attr::Int(i))) => Value::I(ITensor::new(vec![], vec![*i])),
            Some(("value_ints", Attr::Ints(i))) => Value::I(ITensor::vector(i.clone())),
            other => bail!("Constant with unsupported value {:?}", other.map(|o| o.0)),
        },
    )
}

/// One output of a movement: its shape and, per element, `Some((input, flat index))` or `None`
/// for a padded element.
struct Map {
    shape: Vec<usize>,
    src: Vec<Option<(usize, usize)>>,
}

fn identity_map(input: usize, shape: Vec<usize>) -> Map {
    let n = numel(&shape);
    Map {
        shape,
        src: (0..n).map(|i| Some((input, i))).collect(),
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Identity,
    Flatten(i64),
    Reshape {
        allow_zero: bool,
    },
    Squeeze(Option<Vec<i64>>),
    Unsqueeze(Option<Vec<i64>>),
    Transpose(Option<Vec<i64>>),
    Concat(i64),
    Gather(i64),
    Slice,
    SliceAttr {
        starts: Vec<i64>,
        ends: Vec<i64>,
        axes: Option<Vec<i64>>,
    },
    Expand,
    Split {
        axis: i64,
        split: Option<Vec<i64>>,
        outputs: usize,
    },
    Pad {
        pads: Option<Vec<i64>>,
        value: f32,
    },
}

impl Kind {
    /// Inputs that carry data (the rest are parameters such as shapes and indices).
    fn data_inputs(&self, n: usize) -> Vec<usize> {
        match self {
            Kind::Concat(_) => (0..n).collect(),
            _ => vec![0],
        }
    }

    fn maps(&self, inputs: &[Option<&Value>]) -> Result<Vec<Map>> {
        let x = inputs[0].ok_or_else(|| anyhow!("missing data input"))?;
        let shape = x.shape().to_vec();
        let rank = shape.len();
        Ok(match self {
            Kind::Identity => vec![identity_map(0, shape)],
            Kind::Flatten(a) => {
                let a = if *a < 0 {
                    (*a + rank as i64) as usize
                } else {
                    *a as usize
                };
                if a > rank {
                    bail!("Flatten axis {a} out of range for rank {rank}");
                }
                let outer = shape[..a].iter().product();
                vec![identity_map(0, vec![outer, shape[a..].iter().product()])]
            }
            Kind::Reshape { allow_zero } => {
                let spec = ints(inputs, 1, "Reshape shape")?;
                vec![identity_map(0, reshape_target(&shape, &spec, *allow_zero)?)]
            }
            Kind::Squeeze(attr) => {
                let axes = match attr {
                    Some(a) => Some(a.clone()),
                    None if inputs.get(1).copied().flatten().is_some() => {
                        Some(ints(inputs, 1, "Squeeze axes")?)
                    }
                    None => None,
                };
                let out = match axes {
                    None => shape.iter().copied().filter(|&d| d != 1).collect(),
                    Some(axes) => {
                        let axes: Vec<usize> =
                            axes.iter().map(|&a| axis(a, rank)).collect::<Result<_>>()?;
                        for &a in &axes {
                            if shape[a] != 1 {
                                bail!("Squeeze axis {a} has size {}", shape[a]);
                            }
                        }
                        shape
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !axes.contains(i))
                            .map(|(_, &d)| d)
                            .collect()
                    }
                };
                vec![identity_map(0, out)]
            }
            Kind::Unsqueeze(attr) => {
                let axes = match attr {
                    Some(a) => a.clone(),
                    None => ints(inputs, 1, "Unsqueeze axes")?,
                };
                let out_rank = rank + axes.len();
                let mut axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| axis(a, out_rank))
                    .collect::<Result<_>>()?;
                axes.sort_unstable();
                let mut out = shape.clone();
                for a in axes {
                    out.insert(a, 1);
                }
                vec![identity_map(0, out)]
            }
            Kind::Transpose(perm) => {
                let perm: Vec<usize> = match perm {
                    Some(p) => p.iter().map(|&a| axis(a, rank)).collect::<Result<_>>()?,
                    None => (0..rank).rev().collect(),
                };
                let idx = Tensor::new(
                    shape.clone(),
                    (0..numel(&shape)).map(|i| i as f32).collect(),
                )
                .transpose(&perm);
                let out_shape = idx.shape().to_vec();
                vec![Map {
                    shape: out_shape,
                    src: idx.data().iter().map(|&i| Some((0, i as usize))).collect(),
                }]
            }
            Kind::Concat(a) => {
                let a = axis(*a, rank)?;
                let parts: Vec<&Value> = inputs.iter().flatten().copied().collect();
                let mut out = shape.clone();
                out[a] = 0;
                for p in &parts {
                    let s = p.shape();
                    if s.len() != rank || (0..rank).any(|i| i != a && s[i] != shape[i]) {
                        bail!("Concat inputs {:?} and {:?} do not match", shape, s);
                    }
                    out[a] += s[a];
                }
                let outer: usize = shape[..a].iter().product();
                let inner: usize = shape[a + 1..].iter().product();
                let mut src = Vec::with_capacity(numel(&out));
                for o in 0..outer {
                    for (pi, p) in parts.iter().enumerate() {
                        let len = p.shape()[a] * inner;
                        src.extend((0..len).map(|k| Some((pi, o * len + k))));
                    }
                }
                vec![Map { shape: out, src }]
            }
            Kind::Gather(a) => {
                let a = axis(*a, rank)?;
                let Some(Value::I(idx)) = inputs.get(1).copied().flatten() else {
                    bail!("Gather indices must be an integer tensor");
                };
                let mut out = shape[..a].to_vec();
                out.extend(&idx.shape);
                out.extend(&shape[a + 1..]);
                let outer: usize = shape[..a].iter().product();
                let inner: usize = shape[a + 1..].iter().product();
                let mut src = Vec::with_capacity(out_numel(&out, "Gather")?);
                for o in 0..outer {
                    for &i in &idx.data {
                        let i = if i < 0 { i + shape[a] as i64 } else { i };
                        if i < 0 || i as usize >= shape[a] {
                            bail!("Gather index {i} out of range for size {}", shape[a]);
                        }
                        let base = (o * shape[a] + i as usize) * inner;
                        src.extend((0..inner).map(|k| Some((0, base + k))));
                    }
                }
                vec![Map { shape: out, src }]
            }
            Kind::Slice | Kind::SliceAttr { .. } => {
                let (starts, ends, axes, steps) = match self {
                    Kind::SliceAttr { starts, ends, axes } => {
                        (starts.clone(), ends.clone(), axes.clone(), None)
                    }
                    _ => (
                        ints(inputs, 1, "Slice starts")?,
                        ints(inputs, 2, "Slice ends")?,
                        inputs
                            .get(3)
                            .copied()
                            .flatten()
                            .map(|_| ints(inputs, 3, "Slice axes"))
                            .transpose()?,
                        inputs
                            .get(4)
                            .copied()
                            .flatten()
                            .map(|_| ints(inputs, 4, "Slice steps"))
                            .transpose()?,
                    ),
                };
                let axes: Vec<usize> = match axes {
                    Some(a) => a.iter().map(|&a| axis(a, rank)).collect::<Result<_>>()?,
                    None => (0..starts.len()).collect(),
                };
                let mut begin = vec![0i64; rank];
                let mut step = vec![1i64; rank];
                let mut count: Vec<usize> = shape.clone();
                for (k, &ax) in axes.iter().enumerate() {
                    let d = shape[ax] as i64;
                    let st = steps.as_ref().map(|s| s[k]).unwrap_or(1);
                    if st == 0 {
                        bail!("Slice step 0");
                    }
                    let clampi = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
                    let mut s = starts[k];
                    let mut e = ends[k];
                    if s < 0 {
                        s += d;
                    }
                    if e < 0 {
                        e += d;
                    }
                    let n = if st > 0 {
                        s = clampi(s, 0, d);
                        e = clampi(e, 0, d);
                        ((e - s).max(0) + st - 1) / st
                    } else {
                        s = clampi(s, -1, d - 1);
                        e = clampi(e, -1, d - 1);
                        ((s - e).max(0) + (-st) - 1) / (-st)
                    };
                    begin[ax] = s;
                    step[ax] = st;
                    count[ax] = n as usize;
                }
                let st = strides(&shape);
                let total = numel(&count);
                let mut src = Vec::with_capacity(total);
                let mut idx = vec![0usize; rank];
                for _ in 0..total {
                    let flat: i64 = (0..rank)
                        .map(|i| (begin[i] + step[i] * idx[i] as i64) * st[i] as i64)
                        .sum();
                    src.push(Some((0, flat as usize)));
                    for ax in (0..rank).rev() {
                        idx[ax] += 1;
                        if idx[ax] < count[ax] {
                            break;
                        }
                        idx[ax] = 0;
                    }
                }
                vec![Map { shape: count, src }]
            }
            Kind::Expand => {
                let target: Vec<usize> = ints(inputs, 1, "Expand shape")?
                    .iter()
                    .map(|&d| d.max(0) as usize)
                    .collect();
                let out = broadcast_shape(&shape, &target)
                    .ok_or_else(|| anyhow!("Expand {shape:?} to {target:?} does not broadcast"))?;
                out_numel(&out, "Expand")?;
                let src = broadcast_index(&shape, &out)
                    .into_iter()
                    .map(|i| Some((0, i)))
                    .collect();
                vec![Map { shape: out, src }]
            }
            Kind::Split {
                axis: a,
                split,
                outputs,
            } => {
                let a = axis(*a, rank)?;
                let sizes: Vec<usize> = match split {
                    Some(s) => s.iter().map(|&v| v as usize).collect(),
                    None if inputs.get(1).copied().flatten().is_some() => {
                        ints(inputs, 1, "Split sizes")?
                            .iter()
                            .map(|&v| v as usize)
                            .collect()
                    }
                    None => {
                        let n = *outputs;
                        let each = shape[a].div_ceil(n);
                        (0..n)
                            .map(|i| each.min(shape[a].saturating_sub(i * each)))
                            .collect()
                    }
                };
                if sizes.iter().sum::<usize>() != shape[a] {
                    bail!("Split sizes {sizes:?} do not add up to {}", shape[a]);
                }
                let outer: usize = shape[..a].iter().product();
                let inner: usize = shape[a + 1..].iter().product();
                let mut maps = vec![];
                let mut offset = 0;
                for &sz in &sizes {
                    let mut out = shape.clone();
                    out[a] = sz;
                    let mut src = Vec::with_capacity(numel(&out));
                    for o in 0..outer {
                        let base = (o * shape[a] + offset) * inner;
                        src.extend((0..sz * inner).map(|k| Some((0, base + k))));
                    }
                    offset += sz;
                    maps.push(Map { shape: out, src });
                }
                maps
            }
            Kind::Pad { pads, .. } => {
                let pads = match pads {
                    Some(p) => p.clone(),
                    None => ints(inputs, 1, "Pad pads")?,
                };
                let axes: Vec<usize> = if inputs.get(3).copied().flatten().is_some() {
                    ints(inputs, 3, "Pad axes")?
                        .iter()
                        .map(|&a| axis(a, rank))
                        .collect::<Result<_>>()?
                } else {
                    (0..rank).collect()
                };
                if pads.len() != 2 * axes.len() {
                    bail!("Pad pads {pads:?} do not fit rank {rank}");
                }
                let mut before = vec![0i64; rank];
                let mut out = shape.clone();
                for (k, &ax) in axes.iter().enumerate() {
                    before[ax] = pads[k];
                    let size = (shape[ax] as i64)
                        .checked_add(pads[k])
                        .and_then(|s| s.checked_add(pads[k + axes.len()]))
                        .ok_or_else(|| anyhow!("Pad pads {pads:?} overflow"))?;
                    if size < 0 {
                        bail!("Pad makes axis {ax} negative");
                    }
                    out[ax] = size as usize;
                }
                let st = strides(&shape);
                let total = out_numel(&out, "Pad")?;
                let mut src = Vec::with_capacity(total);
                let mut idx = vec![0usize; rank];
                for _ in 0..total {
                    let mut flat = 0usize;
                    let mut inside = true;
                    for i in 0..rank {
                        let s = idx[i] as i64 - before[i];
                        if s < 0 || s >= shape[i] as i64 {
                            inside = false;
                            break;
                        }
                        flat += s as usize * st[i];
                    }
                    src.push(inside.then_some((0, flat)));
                    for ax in (0..rank).rev() {
                        idx[ax] += 1;
                        if idx[ax] < out[ax] {
                            break;
                        }
                        idx[ax] = 0;
                    }
                }
                vec![Map { shape: out, src }]
            }
        })
    }

    fn pad_value(&self, inputs: &[Option<&Value>]) -> f32 {
        match self {
            Kind::Pad { value, .. } => match inputs.get(2).copied().flatten() {
                Some(Value::F(t)) if !t.is_empty() => t.data()[0],
                Some(Value::I(t)) if !t.data.is_empty() => t.data[0] as f32,
                _ => *value,
            },
            _ => 0.0,
        }
    }
}

fn reshape_target(shape: &[usize], spec: &[i64], allow_zero: bool) -> Result<Vec<usize>> {
    let total = numel(shape);
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(
                *shape
                    .get(i)
                    .ok_or_else(|| anyhow!("Reshape copies missing dimension {i}"))?,
            ),
            d if d >= 0 => out.push(d as usize),
            _ => bail!("Reshape shape {spec:?} is invalid"),
        }
    }
    if let Some(i) = infer {
        let known = out
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .try_fold(1usize, |n, (_, &d)| n.checked_mul(d))
            .unwrap_or(0);
        if known == 0 || !total.is_multiple_of(known) {
            bail!("Reshape {shape:?} to {spec:?} does not divide");
        }
        out[i] = total / known;
    }
    if out.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(total) {
        bail!("Reshape {shape:?} to {spec:?} changes the element count");
    }
    Ok(out)
}

struct Move(Kind);

impl Op for Move {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let maps = self.0.maps(inputs)?;
        let data = self.0.data_inputs(inputs.len());
        let all_int = data
            .iter()
            .all(|&i| matches!(inputs.get(i).copied().flatten(), Some(Value::I(_)) | None));
        Ok(maps
            .into_iter()
            .map(|m| {
                if all_int {
                    let d = m
                        .src
                        .iter()
                        .map(|s| match s {
                            Some((i, k)) => match inputs[data[*i]] {
                                Some(Value::I(t)) => t.data[*k],
                                _ => 0,
                            },
                            None => self.0.pad_value(inputs) as i64,
                        })
                        .collect();
                    Value::I(ITensor::new(m.shape, d))
                } else {
                    let pad = self.0.pad_value(inputs);
                    let d = m
                        .src
                        .iter()
                        .map(|s| match s {
                            Some((i, k)) => match inputs[data[*i]] {
                                Some(Value::F(t)) => t.data()[*k],
                                Some(Value::I(t)) => t.data[*k] as f32,
                                None => 0.0,
                            },
                            None => pad,
                        })
                        .collect();
                    Value::F(Tensor::new(m.shape, d))
                }
            })
            .collect())
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _outputs: &[Value],
        grads: &[Option<Tensor>],
        need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let maps = self.0.maps(inputs)?;
        let data = self.0.data_inputs(inputs.len());
        let mut out: Vec<Option<Tensor>> = vec![None; inputs.len()];
        for &d in &data {
            if need[d] {
                if let Some(v) = inputs[d] {
                    out[d] = Some(Tensor::zeros(v.shape()));
                }
            }
        }
        for (m, g) in maps.iter().zip(grads) {
            let Some(g) = g else { continue };
            for (s, &gv) in m.src.iter().zip(g.data()) {
                if let Some((i, k)) = s {
                    if let Some(t) = out[data[*i]].as_mut() {
                        t.data_mut()[*k] += gv;
                    }
                }
            }
        }
        Ok(out)
    }
}

struct ShapeOp {
    start: i64,
    end: Option<i64>,
}

impl Op for ShapeOp {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let s = inputs[0]
            .ok_or_else(|| anyhow!("Shape without input"))?
            .shape();
        let r = s.len() as i64;
        let norm = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (a, b) = (norm(self.start), norm(self.end.unwrap_or(r)));
        let dims: Vec<i64> = s[a..b.max(a)].iter().map(|&d| d as i64).collect();
        Ok(vec![Value::I(ITensor::vector(dims))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _: &[Value],
        _: &[Option<Tensor>],
        _: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![None; inputs.len()])
    }
}

struct Const(Value);

impl Op for Const {
    fn forward(&self, _: &[Option<&Value>]) -> Result<Vec<Value>> {
        Ok(vec![self.0.clone()])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _: &[Value],
        _: &[Option<Tensor>],
        _: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![None; inputs.len()])
    }
}

struct ConstantOfShape(Value);

impl Op for ConstantOfShape {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let shape: Vec<usize> = ints(inputs, 0, "ConstantOfShape shape")?
            .iter()
            .map(|&d| d.max(0) as usize)
            .collect();
        let n = out_numel(&shape, "ConstantOfShape")?;
        Ok(vec![match &self.0 {
            Value::F(t) => Value::F(Tensor::new(shape, vec![t.data()[0]; n])),
            Value::I(t) => Value::I(ITensor::new(shape, vec![t.data[0]; n])),
        }])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _: &[Value],
        _: &[Option<Tensor>],
        _: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![None; inputs.len()])
    }
}

struct Cast {
    to_float: bool,
}

impl Op for Cast {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = inputs[0].ok_or_else(|| anyhow!("Cast without input"))?;
        Ok(vec![match (x, self.to_float) {
            (Value::F(t), true) => Value::F(t.clone()),
            (Value::I(t), true) => Value::F(t.to_f32()),
            (Value::I(t), false) => Value::I(t.clone()),
            (Value::F(t), false) => Value::I(ITensor::new(
                t.shape().to_vec(),
                t.data().iter().map(|&v| v as i64).collect(),
            )),
        }])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _: &[Value],
        grads: &[Option<Tensor>],
        need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        // Float → float casts pass the gradient; casts to integers stop it.
        let mut out = vec![None; inputs.len()];
        if self.to_float && need[0] {
            out[0] = grads[0].clone();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_grad, rt};
    use super::*;

    fn iv(v: Vec<i64>) -> Value {
        Value::I(ITensor::vector(v))
    }

    #[test]
    fn reshape_infers_and_copies_dimensions() {
        assert_eq!(
            reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert!(reshape_target(&[2, 3, 4], &[5, -1], false).is_err());
    }

    #[test]
    fn movements_scatter_gradients_back() {
        let x = Value::F(rt(1, &[2, 3, 4]));
        check_grad(
            &Move(Kind::Transpose(Some(vec![2, 0, 1]))),
            vec![x.clone()],
            &[true],
        );
        check_grad(&Move(Kind::Flatten(1)), vec![x.clone()], &[true]);
        check_grad(
            &Move(Kind::Reshape { allow_zero: false }),
            vec![x.clone(), iv(vec![4, -1])],
            &[true, false],
        );
        check_grad(
            &Move(Kind::Gather(1)),
            vec![x.clone(), iv(vec![2, 0, 2])],
            &[true, false],
        );
        check_grad(
            &Move(Kind::Slice),
            vec![
                x.clone(),
                iv(vec![1, -1]),
                iv(vec![3, 0]),
                iv(vec![2, 2]),
                iv(vec![1, -1]),
            ],
            &[true, false, false, false, false],
        );
        check_grad(
            &Move(Kind::Expand),
            vec![Value::F(rt(2, &[3, 1])), iv(vec![2, 3, 5])],
            &[true, false],
        );
        check_grad(
            &Move(Kind::Concat(1)),
            vec![x.clone(), Value::F(rt(3, &[2, 2, 4]))],
            &[true, true],
        );
        check_grad(
            &Move(Kind::Pad {
                pads: Some(vec![0, 1, 0, 0, 2, 1]),
                value: 0.5,
            }),
            vec![x],
            &[true],
        );
    }

    #[test]
    fn slice_with_negative_step_reverses() {
        let x = Value::I(ITensor::vector(vec![0, 1, 2, 3, 4]));
        let out = Move(Kind::Slice)
            .forward(&[
                Some(&x),
                Some(&iv(vec![-1])),
                Some(&iv(vec![-6])),
                None,
                Some(&iv(vec![-2])),
            ])
            .unwrap();
        assert_eq!(out[0], iv(vec![4, 2, 0]));
    }

    #[test]
    fn split_into_equal_parts() {
        let x = Value::F(rt(4, &[2, 6]));
        let out = Move(Kind::Split {
            axis: 1,
            split: None,
            outputs: 3,
        })
        .forward(&[Some(&x)])
        .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].shape(), &[2, 2]);
    }

    #[test]
    fn shape_ops_compute_flatten_shapes_like_torch_views() {
        // x.view(x.size(0), -1): Shape → Gather(0) → Unsqueeze → Concat([n, -1]) → Reshape.
        let x = Value::F(rt(5, &[1, 4, 2, 2]));
        let s = ShapeOp {
            start: 0,
            end: None,
        }
        .forward(&[Some(&x)])
        .unwrap()
        .remove(0);
        let n = Move(Kind::Gather(0))
            .forward(&[Some(&s), Some(&Value::I(ITensor::new(vec![], vec![0])))])
            .unwrap()
            .remove(0);
        let n = Move(Kind::Unsqueeze(Some(vec![0])))
            .forward(&[Some(&n)])
            .unwrap()
            .remove(0);
        let spec = Move(Kind::Concat(0))
            .forward(&[Some(&n), Some(&iv(vec![-1]))])
            .unwrap()
            .remove(0);
        assert_eq!(spec, iv(vec![1, -1]));
    }
}
