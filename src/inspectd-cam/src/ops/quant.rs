//! Quantization ops in the real-valued domain. Run-time tensors are carried as their real
//! (dequantized) values; integer constants are dequantized where an op reads them. Forward
//! passes simulate quantization (round, clamp) so the head reproduces the int8 model's logits;
//! backward passes are straight-through, the usual gradient for quantized networks.

use anyhow::{anyhow, bail, Result};

use super::conv::{conv_backward_input, conv_forward, ConvAttrs};
use super::linear::matmul;
use super::{const_input, ConstInputs, Op};
use crate::graph::Node;
use crate::tensor::{broadcast_index, Tensor, Value};

pub fn build(
    op: &str,
    node: &Node,
    consts: &ConstInputs,
    _opset: i64,
) -> Option<Result<Box<dyn Op>>> {
    let axis = node.int("axis").unwrap_or(1);
    match op {
        "QuantizeLinear" => Some(Ok(Box::new(Quantize {
            axis,
            range: qrange(node, 2),
        }))),
        "DequantizeLinear" => Some(Ok(Box::new(Dequantize { axis }))),
        "QLinearConv" => Some(qlinear_conv(node, consts)),
        "QLinearMatMul" => Some(qlinear_matmul(node, consts)),
        _ => None,
    }
}

/// Integer range of the quantized type named by the zero-point input `zp` (uint8 by default).
fn qrange(node: &Node, zp: usize) -> (f32, f32) {
    match node.input_elem.get(zp).copied().flatten() {
        Some(3) => (-128.0, 127.0),
        Some(4) => (0.0, 65535.0),
        Some(5) => (-32768.0, 32767.0),
        Some(6) => (-2147483648.0, 2147483647.0),
        _ => (0.0, 255.0),
    }
}

fn as_f32(v: &Value) -> Tensor {
    match v {
        Value::F(t) => t.clone(),
        Value::I(t) => t.to_f32(),
    }
}

/// Scale and zero point broadcast over `shape` along `axis` (per-tensor when they are scalars).
fn params_for(
    shape: &[usize],
    axis: i64,
    scale: &Value,
    zp: Option<&Value>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let s = as_f32(scale);
    let z = zp.map(as_f32).unwrap_or_else(|| Tensor::scalar(0.0));
    let expand = |t: &Tensor| -> Result<Vec<f32>> {
        if t.len() == 1 {
            return Ok(vec![t.data()[0]; shape.iter().product()]);
        }
        let a = super::axis(axis, shape.len())?;
        if shape[a] != t.len() {
            bail!(
                "per-axis quantization parameters of length {} do not fit axis {a} of {shape:?}",
                t.len()
            );
        }
        let mut ps = vec![1; shape.len()];
        ps[a] = t.len();
        Ok(broadcast_index(&ps, shape)
            .into_iter()
            .map(|i| t.data()[i])
            .collect())
    };
    Ok((expand(&s)?, expand(&z)?))
}

fn round_half_even(x: f32) -> f32 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// Quantize then dequantize (the real value an integer tensor would hold).
fn fake_quant(x: f32, s: f32, z: f32, (lo, hi): (f32, f32)) -> f32 {
    let q = (round_half_even(x / s) + z).clamp(lo, hi);
    (q - z) * s
}

/// The real value of an input: raw integers are dequantized with (scale, zp); floats are real.
fn real(v: &Value, scale: &Value, zp: Option<&Value>, axis: i64) -> Result<Tensor> {
    match v {
        Value::F(t) => Ok(t.clone()),
        Value::I(t) => {
            let (s, z) = params_for(&t.shape, axis, scale, zp)?;
            Ok(Tensor::new(
                t.shape.clone(),
                t.data
                    .iter()
                    .zip(s.iter().zip(&z))
                    .map(|(&q, (s, z))| (q as f32 - z) * s)
                    .collect(),
            ))
        }
    }
}

fn input<'a>(inputs: &[Option<&'a Value>], i: usize, what: &str) -> Result<&'a Value> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| anyhow!("{what}: input {i} is missing"))
}

struct Quantize {
    axis: i64,
    range: (f32, f32),
}

impl Op for Quantize {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = as_f32(input(inputs, 0, "QuantizeLinear")?);
        let (s, z) = params_for(
            x.shape(),
            self.axis,
            input(inputs, 1, "QuantizeLinear")?,
            inputs.get(2).copied().flatten(),
        )?;
        let y = x
            .data()
            .iter()
            .zip(s.iter().zip(&z))
            .map(|(&v, (&s, &z))| fake_quant(v, s, z, self.range))
            .collect();
        Ok(vec![Value::F(Tensor::new(x.shape().to_vec(), y))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _: &[Value],
        grads: &[Option<Tensor>],
        _: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let mut out = vec![None; inputs.len()];
        out[0] = grads[0].clone();
        Ok(out)
    }
}

struct Dequantize {
    axis: i64,
}

impl Op for Dequantize {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = input(inputs, 0, "DequantizeLinear")?;
        let t = real(
            x,
            input(inputs, 1, "DequantizeLinear")?,
            inputs.get(2).copied().flatten(),
            self.axis,
        )?;
        Ok(vec![Value::F(t)])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _: &[Value],
        grads: &[Option<Tensor>],
        _: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let mut out = vec![None; inputs.len()];
        out[0] = grads[0].clone();
        Ok(out)
    }
}

/// Dequantized constant weights and bias, prepared once at build time.
struct QConv {
    attrs: ConvAttrs,
    w: Tensor,
    b: Option<Tensor>,
    range: (f32, f32),
}

fn qlinear_conv(node: &Node, consts: &ConstInputs) -> Result<Box<dyn Op>> {
    let c = |i: usize| {
        const_input(consts, i).ok_or_else(|| anyhow!("QLinearConv input {i} must be a constant"))
    };
    let w_raw = c(3)?;
    let (w_s, w_z) = (c(4)?, const_input(consts, 5));
    let x_s = as_f32(c(1)?);
    let w = real(w_raw, w_s, w_z, 0)?;
    let b = match node.input(8) {
        None => None,
        Some(_) => {
            let b = as_f32(c(8)?);
            let ws = as_f32(w_s);
            let xs = x_s.data()[0];
            Some(Tensor::new(
                b.shape().to_vec(),
                b.data()
                    .iter()
                    .enumerate()
                    .map(|(m, &v)| {
                        v * xs
                            * if ws.len() == 1 {
                                ws.data()[0]
                            } else {
                                ws.data()[m]
                            }
                    })
                    .collect(),
            ))
        }
    };
    Ok(Box::new(QConv {
        attrs: ConvAttrs::from_node(node)?,
        w,
        b,
        range: qrange(node, 7),
    }))
}

impl Op for QConv {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = real(
            input(inputs, 0, "QLinearConv")?,
            input(inputs, 1, "QLinearConv")?,
            inputs[2],
            1,
        )?;
        let y = conv_forward(&self.attrs, &x, &self.w, self.b.as_ref())?;
        let (s, z) = params_for(
            y.shape(),
            1,
            input(inputs, 6, "QLinearConv")?,
            inputs.get(7).copied().flatten(),
        )?;
        let q = y
            .data()
            .iter()
            .zip(s.iter().zip(&z))
            .map(|(&v, (&s, &z))| fake_quant(v, s, z, self.range))
            .collect();
        Ok(vec![Value::F(Tensor::new(y.shape().to_vec(), q))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _: &[Value],
        grads: &[Option<Tensor>],
        _: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let x = input(inputs, 0, "QLinearConv")?;
        let Some(g) = &grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let mut out = vec![None; inputs.len()];
        out[0] = Some(conv_backward_input(&self.attrs, x.shape(), &self.w, g)?);
        Ok(out)
    }
}

struct QMatMul {
    b: Tensor,
    range: (f32, f32),
}

fn qlinear_matmul(node: &Node, consts: &ConstInputs) -> Result<Box<dyn Op>> {
    let c = |i: usize| {
        const_input(consts, i).ok_or_else(|| anyhow!("QLinearMatMul input {i} must be a constant"))
    };
    let b = real(c(3)?, c(4)?, const_input(consts, 5), -1)?;
    if b.rank() != 2 {
        bail!("QLinearMatMul weights must be 2-D, got {:?}", b.shape());
    }
    Ok(Box::new(QMatMul {
        b,
        range: qrange(node, 7),
    }))
}

impl Op for QMatMul {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let a = real(
            input(inputs, 0, "QLinearMatMul")?,
            input(inputs, 1, "QLinearMatMul")?,
            inputs[2],
            1,
        )?;
        let (k, n) = (self.b.shape()[0], self.b.shape()[1]);
        if a.shape().last() != Some(&k) {
            bail!(
                "QLinearMatMul {:?} x {:?} do not fit",
                a.shape(),
                self.b.shape()
            );
        }
        let m = a.len() / k;
        let y = matmul(m, k, n, a.data(), false, self.b.data(), false);
        let mut shape = a.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = n;
        let (s, z) = params_for(
            &shape,
            -1,
            input(inputs, 6, "QLinearMatMul")?,
            inputs.get(7).copied().flatten(),
        )?;
        let q = y
            .iter()
            .zip(s.iter().zip(&z))
            .map(|(&v, (&s, &z))| fake_quant(v, s, z, self.range))
            .collect();
        Ok(vec![Value::F(Tensor::new(shape, q))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _: &[Value],
        grads: &[Option<Tensor>],
        _: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let a = input(inputs, 0, "QLinearMatMul")?;
        let Some(g) = &grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let (k, n) = (self.b.shape()[0], self.b.shape()[1]);
        let m = g.len() / n;
        let ga = matmul(m, n, k, g.data(), false, self.b.data(), true);
        let mut out = vec![None; inputs.len()];
        out[0] = Some(Tensor::new(a.shape().to_vec(), ga));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ITensor;

    #[test]
    fn fake_quant_rounds_half_to_even_and_saturates() {
        assert_eq!(fake_quant(0.25, 0.5, 0.0, (0.0, 255.0)), 0.0); // 0.5 → 0
        assert_eq!(fake_quant(0.75, 0.5, 0.0, (0.0, 255.0)), 1.0); // 1.5 → 2
        assert_eq!(fake_quant(-3.0, 1.0, 10.0, (0.0, 255.0)), -3.0);
        assert_eq!(fake_quant(-30.0, 1.0, 10.0, (0.0, 255.0)), -10.0);
    }

    #[test]
    fn dequantize_reads_raw_integers_per_axis() {
        let q = Value::I(ITensor::new(vec![2, 2], vec![10, 12, 3, 5]));
        let s = Value::F(Tensor::new(vec![2], vec![0.5, 2.0]));
        let z = Value::I(ITensor::new(vec![2], vec![10, 3]));
        let y = Dequantize { axis: 0 }
            .forward(&[Some(&q), Some(&s), Some(&z)])
            .unwrap();
        assert_eq!(
            y[0],
            Value::F(Tensor::new(vec![2, 2], vec![0.0, 1.0, 0.0, 4.0]))
        );
    }

    #[test]
    fn real_valued_tensors_pass_dequantize_unchanged() {
        let x = Value::F(Tensor::new(vec![2], vec![0.3, -1.0]));
        let s = Value::F(Tensor::scalar(0.1));
        let y = Dequantize { axis: 1 }
            .forward(&[Some(&x), Some(&s), None])
            .unwrap();
        assert_eq!(y[0], x);
    }
}
