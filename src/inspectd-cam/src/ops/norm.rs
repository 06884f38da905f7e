//! BatchNormalization (inference statistics) and LayerNormalization.

use anyhow::{bail, Result};

use super::{axis, float, ConstInputs, Op};
use crate::graph::Node;
use crate::tensor::{broadcast_index, Tensor, Value};

pub fn build(
    op: &str,
    node: &Node,
    _consts: &ConstInputs,
    _opset: i64,
) -> Option<Result<Box<dyn Op>>> {
    match op {
        "BatchNormalization" => {
            if node.int("training_mode").unwrap_or(0) != 0 {
                return Some(Err(anyhow::anyhow!(
                    "BatchNormalization in training mode (export the model with .eval())"
                )));
            }
            Some(Ok(Box::new(BatchNorm {
                eps: node.float("epsilon").unwrap_or(1e-5),
            })))
        }
        "LayerNormalization" => Some(Ok(Box::new(LayerNorm {
            axis: node.int("axis").unwrap_or(-1),
            eps: node.float("epsilon").unwrap_or(1e-5),
        }))),
        _ => None,
    }
}

struct BatchNorm {
    eps: f32,
}

impl BatchNorm {
    /// Per-channel (a, b) such that y = a·x + b.
    fn affine(&self, inputs: &[Option<&Value>]) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = float(inputs, 1, "BatchNormalization scale")?;
        let b = float(inputs, 2, "BatchNormalization bias")?;
        let m = float(inputs, 3, "BatchNormalization mean")?;
        let v = float(inputs, 4, "BatchNormalization var")?;
        let c = s.len();
        if b.len() != c || m.len() != c || v.len() != c {
            bail!("BatchNormalization parameters have different lengths");
        }
        let a: Vec<f32> = (0..c)
            .map(|i| s.data()[i] / (v.data()[i] + self.eps).sqrt())
            .collect();
        let off = (0..c).map(|i| b.data()[i] - m.data()[i] * a[i]).collect();
        Ok((a, off))
    }
}

fn channel_of(shape: &[usize]) -> Vec<usize> {
    // Channel index (axis 1) of every element.
    let c = shape.get(1).copied().unwrap_or(1);
    let mut cs = vec![1; shape.len()];
    if shape.len() > 1 {
        cs[1] = c;
    }
    broadcast_index(&cs, shape)
}

impl Op for BatchNorm {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = float(inputs, 0, "BatchNormalization X")?;
        let (a, b) = self.affine(inputs)?;
        if x.rank() < 2 || x.shape()[1] != a.len() {
            bail!(
                "BatchNormalization: input {:?} does not have {} channels",
                x.shape(),
                a.len()
            );
        }
        let ch = channel_of(x.shape());
        let y = x
            .data()
            .iter()
            .zip(&ch)
            .map(|(&v, &c)| a[c] * v + b[c])
            .collect();
        Ok(vec![Value::F(Tensor::new(x.shape().to_vec(), y))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _outputs: &[Value],
        grads: &[Option<Tensor>],
        _need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let x = float(inputs, 0, "BatchNormalization X")?;
        let Some(g) = &grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let (a, _) = self.affine(inputs)?;
        let ch = channel_of(x.shape());
        let gx = g.data().iter().zip(&ch).map(|(&v, &c)| a[c] * v).collect();
        let mut out = vec![None; inputs.len()];
        out[0] = Some(Tensor::new(x.shape().to_vec(), gx));
        Ok(out)
    }
}

struct LayerNorm {
    axis: i64,
    eps: f32,
}

impl LayerNorm {
    fn group(&self, x: &Tensor) -> Result<usize> {
        let a = axis(self.axis, x.rank())?;
        Ok(x.shape()[a..].iter().product())
    }

    /// Scale and bias broadcast to one normalized group.
    fn params(
        &self,
        inputs: &[Option<&Value>],
        x: &Tensor,
        n: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let a = axis(self.axis, x.rank())?;
        let inner = &x.shape()[a..];
        let expand = |t: &Tensor| -> Vec<f32> {
            broadcast_index(t.shape(), inner)
                .into_iter()
                .map(|i| t.data()[i])
                .collect()
        };
        let s = expand(float(inputs, 1, "LayerNormalization scale")?);
        let b = match inputs.get(2).copied().flatten() {
            Some(Value::F(b)) => expand(b),
            _ => vec![0.0; n],
        };
        Ok((s, b))
    }
}

impl Op for LayerNorm {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = float(inputs, 0, "LayerNormalization X")?;
        let n = self.group(x)?;
        let (s, b) = self.params(inputs, x, n)?;
        let mut y = Vec::with_capacity(x.len());
        let mut means = vec![];
        let mut inv = vec![];
        for grp in x.data().chunks(n) {
            let mean = grp.iter().sum::<f32>() / n as f32;
            let var = grp.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let r = 1.0 / (var + self.eps).sqrt();
            y.extend(
                grp.iter()
                    .enumerate()
                    .map(|(i, &v)| (v - mean) * r * s[i] + b[i]),
            );
            means.push(mean);
            inv.push(r);
        }
        let groups = x.len() / n.max(1);
        Ok(vec![
            Value::F(Tensor::new(x.shape().to_vec(), y)),
            Value::F(Tensor::new(vec![groups], means)),
            Value::F(Tensor::new(vec![groups], inv)),
        ])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _outputs: &[Value],
        grads: &[Option<Tensor>],
        _need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        if grads.iter().skip(1).any(Option::is_some) {
            bail!("LayerNormalization mean/inv-std outputs used downstream are not supported");
        }
        let x = float(inputs, 0, "LayerNormalization X")?;
        let Some(g) = &grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let n = self.group(x)?;
        let (s, _) = self.params(inputs, x, n)?;
        let mut gx = Vec::with_capacity(x.len());
        for (grp, gg) in x.data().chunks(n).zip(g.data().chunks(n)) {
            let nf = n as f32;
            let mean = grp.iter().sum::<f32>() / nf;
            let var = grp.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / nf;
            let r = 1.0 / (var + self.eps).sqrt();
            let xhat: Vec<f32> = grp.iter().map(|v| (v - mean) * r).collect();
            let gh: Vec<f32> = gg.iter().zip(&s).map(|(g, s)| g * s).collect();
            let m1 = gh.iter().sum::<f32>() / nf;
            let m2 = gh.iter().zip(&xhat).map(|(g, x)| g * x).sum::<f32>() / nf;
            gx.extend(gh.iter().zip(&xhat).map(|(g, x)| r * (g - m1 - x * m2)));
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

    #[test]
    fn batch_norm_matches_finite_differences() {
        let var = rt(4, &[3]).map(|v| v.abs() + 0.5);
        check_grad(
            &BatchNorm { eps: 1e-5 },
            vec![
                Value::F(rt(1, &[1, 3, 2, 2])),
                Value::F(rt(2, &[3])),
                Value::F(rt(3, &[3])),
                Value::F(rt(5, &[3])),
                Value::F(var),
            ],
            &[true, false, false, false, false],
        );
    }

    #[test]
    fn layer_norm_matches_finite_differences() {
        for ax in [-1, 1] {
            check_grad(
                &LayerNorm {
                    axis: ax,
                    eps: 1e-5,
                },
                vec![
                    Value::F(rt(1, &[2, 3, 4])),
                    Value::F(rt(2, &[4]).map(|v| v + 1.5)),
                    Value::F(rt(3, &[4])),
                ],
                &[true, false, false],
            );
        }
    }
}
