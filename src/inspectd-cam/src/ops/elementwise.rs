//! Element-wise ops: activations (unary) and broadcasting arithmetic (binary / n-ary).

use anyhow::{bail, Result};

use super::{const_input, float, ConstInputs, Op};
use crate::graph::Node;
use crate::tensor::{broadcast_index, broadcast_shape, unbroadcast, ITensor, Tensor, Value};

pub fn build(
    op: &str,
    node: &Node,
    consts: &ConstInputs,
    _opset: i64,
) -> Option<Result<Box<dyn Op>>> {
    let unary = |u: Unary| -> Option<Result<Box<dyn Op>>> { Some(Ok(Box::new(u))) };
    match op {
        "Relu" => unary(Unary::Relu),
        "LeakyRelu" => unary(Unary::LeakyRelu(node.float("alpha").unwrap_or(0.01))),
        "Sigmoid" => unary(Unary::Sigmoid),
        "HardSigmoid" => unary(Unary::HardSigmoid(
            node.float("alpha").unwrap_or(0.2),
            node.float("beta").unwrap_or(0.5),
        )),
        "HardSwish" => unary(Unary::HardSwish),
        "Tanh" => unary(Unary::Tanh),
        "Erf" => unary(Unary::Erf),
        "Sqrt" => unary(Unary::Sqrt),
        "Exp" => unary(Unary::Exp),
        "Log" => unary(Unary::Log),
        "Neg" => unary(Unary::Neg),
        "Abs" => unary(Unary::Abs),
        "Reciprocal" => unary(Unary::Reciprocal),
        "Softplus" => unary(Unary::Softplus),
        "Elu" => unary(Unary::Elu(node.float("alpha").unwrap_or(1.0))),
        "Selu" => unary(Unary::Selu(
            node.float("alpha").unwrap_or(1.673_263_2),
            node.float("gamma").unwrap_or(1.050_701),
        )),
        "Gelu" => match node.string("approximate").unwrap_or("none") {
            "none" => unary(Unary::Gelu),
            "tanh" => unary(Unary::GeluTanh),
            other => Some(Err(anyhow::anyhow!(
                "Gelu approximate={other:?} is unknown"
            ))),
        },
        "Clip" => Some(clip(node, consts)),
        "Add" => Some(Ok(Box::new(Binary::Add))),
        "Sub" => Some(Ok(Box::new(Binary::Sub))),
        "Mul" => Some(Ok(Box::new(Binary::Mul))),
        "Div" => Some(Ok(Box::new(Binary::Div))),
        "Pow" => Some(Ok(Box::new(Binary::Pow))),
        "PRelu" => Some(Ok(Box::new(Binary::PRelu))),
        "Max" if node.inputs.len() == 2 => Some(Ok(Box::new(Binary::Max))),
        "Min" if node.inputs.len() == 2 => Some(Ok(Box::new(Binary::Min))),
        "Max" | "Min" if node.inputs.len() == 1 => unary(Unary::Identity),
        "Sum" => Some(Ok(Box::new(Sum))),
        _ => None,
    }
}

fn clip(node: &Node, consts: &ConstInputs) -> Result<Box<dyn Op>> {
    let scalar = |i: usize| -> Result<Option<f32>> {
        if node.input(i).is_none() {
            return Ok(None);
        }
        match const_input(consts, i) {
            Some(Value::F(t)) if t.len() == 1 => Ok(Some(t.data()[0])),
            Some(Value::I(t)) if t.data.len() == 1 => Ok(Some(t.data[0] as f32)),
            _ => bail!("Clip bound (input {i}) must be a constant scalar"),
        }
    };
    let min = scalar(1)?
        .or(node.float("min"))
        .unwrap_or(f32::NEG_INFINITY);
    let max = scalar(2)?.or(node.float("max")).unwrap_or(f32::INFINITY);
    Ok(Box::new(Unary::Clip(min, max)))
}

/// Single-input activations.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unary {
    Identity,
    Relu,
    LeakyRelu(f32),
    Clip(f32, f32),
    Sigmoid,
    HardSigmoid(f32, f32),
    HardSwish,
    Tanh,
    Erf,
    Sqrt,
    Exp,
    Log,
    Neg,
    Abs,
    Reciprocal,
    Softplus,
    Elu(f32),
    Selu(f32, f32),
    Gelu,
    GeluTanh,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

impl Unary {
    pub fn f(self, x: f32) -> f32 {
        match self {
            Unary::Identity => x,
            Unary::Relu => x.max(0.0),
            Unary::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Unary::Clip(lo, hi) => x.max(lo).min(hi),
            Unary::Sigmoid => sigmoid(x),
            Unary::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Unary::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Unary::Tanh => x.tanh(),
            Unary::Erf => libm::erff(x),
            Unary::Sqrt => x.sqrt(),
            Unary::Exp => x.exp(),
            Unary::Log => x.ln(),
            Unary::Neg => -x,
            Unary::Abs => x.abs(),
            Unary::Reciprocal => 1.0 / x,
            Unary::Softplus => {
                if x > 20.0 {
                    x
                } else {
                    x.exp().ln_1p()
                }
            }
            Unary::Elu(a) => {
                if x > 0.0 {
                    x
                } else {
                    a * (x.exp() - 1.0)
                }
            }
            Unary::Selu(a, g) => {
                if x > 0.0 {
                    g * x
                } else {
                    g * a * (x.exp() - 1.0)
                }
            }
            Unary::Gelu => 0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2)),
            Unary::GeluTanh => {
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
            }
        }
    }

    /// dy/dx at input `x` with output `y`.
    pub(crate) fn df(self, x: f32, y: f32) -> f32 {
        match self {
            Unary::Identity => 1.0,
            Unary::Relu => (x > 0.0) as i32 as f32,
            Unary::LeakyRelu(a) => {
                if x >= 0.0 {
                    1.0
                } else {
                    a
                }
            }
            Unary::Clip(lo, hi) => (x >= lo && x <= hi) as i32 as f32,
            Unary::Sigmoid => y * (1.0 - y),
            Unary::HardSigmoid(a, b) => {
                let v = a * x + b;
                if v > 0.0 && v < 1.0 {
                    a
                } else {
                    0.0
                }
            }
            Unary::HardSwish => {
                if x < -3.0 {
                    0.0
                } else if x > 3.0 {
                    1.0
                } else {
                    x / 3.0 + 0.5
                }
            }
            Unary::Tanh => 1.0 - y * y,
            Unary::Erf => std::f32::consts::FRAC_2_SQRT_PI * (-x * x).exp(),
            Unary::Sqrt => 0.5 / y,
            Unary::Exp => y,
            Unary::Log => 1.0 / x,
            Unary::Neg => -1.0,
            Unary::Abs => x.signum() * (x != 0.0) as i32 as f32,
            Unary::Reciprocal => -y * y,
            Unary::Softplus => sigmoid(x),
            Unary::Elu(a) => {
                if x > 0.0 {
                    1.0
                } else {
                    a * x.exp()
                }
            }
            Unary::Selu(a, g) => {
                if x > 0.0 {
                    g
                } else {
                    g * a * x.exp()
                }
            }
            Unary::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erff(x / std::f32::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt();
                cdf + x * pdf
            }
            Unary::GeluTanh => {
                let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
                let t = u.tanh();
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
            }
        }
    }
}

impl Op for Unary {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = float(inputs, 0, "activation")?;
        Ok(vec![Value::F(x.map(|v| self.f(v)))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        outputs: &[Value],
        grads: &[Option<Tensor>],
        _need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let x = float(inputs, 0, "activation")?;
        let Value::F(y) = &outputs[0] else {
            bail!("activation output is not float")
        };
        let Some(g) = &grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let data: Vec<f32> = x
            .data()
            .iter()
            .zip(y.data())
            .zip(g.data())
            .map(|((&x, &y), &g)| g * self.df(x, y))
            .collect();
        let mut out = vec![None; inputs.len()];
        out[0] = Some(Tensor::new(x.shape().to_vec(), data));
        Ok(out)
    }
}

/// Two-input broadcasting arithmetic.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    PRelu,
    Max,
    Min,
}

impl Binary {
    fn f(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::Pow => a.powf(b),
            Binary::PRelu => {
                if a >= 0.0 {
                    a
                } else {
                    a * b
                }
            }
            Binary::Max => a.max(b),
            Binary::Min => a.min(b),
        }
    }

    /// (∂y/∂a, ∂y/∂b).
    fn df(self, a: f32, b: f32, y: f32) -> (f32, f32) {
        match self {
            Binary::Add => (1.0, 1.0),
            Binary::Sub => (1.0, -1.0),
            Binary::Mul => (b, a),
            Binary::Div => (1.0 / b, -a / (b * b)),
            Binary::Pow => (b * a.powf(b - 1.0), if a > 0.0 { y * a.ln() } else { 0.0 }),
            Binary::PRelu => {
                if a >= 0.0 {
                    (1.0, 0.0)
                } else {
                    (b, a)
                }
            }
            Binary::Max => {
                if a >= b {
                    (1.0, 0.0)
                } else {
                    (0.0, 1.0)
                }
            }
            Binary::Min => {
                if a <= b {
                    (1.0, 0.0)
                } else {
                    (0.0, 1.0)
                }
            }
        }
    }

    fn int(self, a: i64, b: i64) -> Result<i64> {
        Ok(match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div if b != 0 => a.div_euclid(b),
            Binary::Max => a.max(b),
            Binary::Min => a.min(b),
            _ => bail!("{self:?} on integer tensors is not supported"),
        })
    }
}

fn as_float(v: &Value) -> Tensor {
    match v {
        Value::F(t) => t.clone(),
        Value::I(t) => t.to_f32(),
    }
}

impl Op for Binary {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let (Some(a), Some(b)) = (inputs[0], inputs.get(1).copied().flatten()) else {
            bail!("{self:?} needs two inputs");
        };
        let shape = broadcast_shape(a.shape(), b.shape()).ok_or_else(|| {
            anyhow::anyhow!(
                "{self:?}: shapes {:?} and {:?} do not broadcast",
                a.shape(),
                b.shape()
            )
        })?;
        super::out_numel(&shape, &format!("{self:?}"))?;
        let ia = broadcast_index(a.shape(), &shape);
        let ib = broadcast_index(b.shape(), &shape);
        if let (Value::I(x), Value::I(y)) = (a, b) {
            let data = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| self.int(x.data[i], y.data[j]))
                .collect::<Result<Vec<_>>>()?;
            return Ok(vec![Value::I(ITensor::new(shape, data))]);
        }
        let (x, y) = (as_float(a), as_float(b));
        let data = ia
            .iter()
            .zip(&ib)
            .map(|(&i, &j)| self.f(x.data()[i], y.data()[j]))
            .collect();
        Ok(vec![Value::F(Tensor::new(shape, data))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        outputs: &[Value],
        grads: &[Option<Tensor>],
        need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let Some(g) = &grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let (a, b) = (as_float(inputs[0].unwrap()), as_float(inputs[1].unwrap()));
        let Value::F(y) = &outputs[0] else {
            bail!("{self:?} output is not float")
        };
        let shape = y.shape().to_vec();
        let ia = broadcast_index(a.shape(), &shape);
        let ib = broadcast_index(b.shape(), &shape);
        let mut ga = vec![0f32; shape.iter().product()];
        let mut gb = ga.clone();
        for k in 0..ga.len() {
            let (da, db) = self.df(a.data()[ia[k]], b.data()[ib[k]], y.data()[k]);
            ga[k] = g.data()[k] * da;
            gb[k] = g.data()[k] * db;
        }
        let ga = Tensor::new(shape.clone(), ga);
        let gb = Tensor::new(shape, gb);
        Ok(vec![
            need[0].then(|| unbroadcast(&ga, a.shape())),
            need[1].then(|| unbroadcast(&gb, b.shape())),
        ])
    }
}

/// N-ary broadcasting sum.
struct Sum;

impl Op for Sum {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let mut acc: Option<Value> = None;
        for v in inputs.iter().flatten() {
            acc = Some(match acc {
                None => (*v).clone(),
                Some(a) => Binary::Add.forward(&[Some(&a), Some(v)])?.remove(0),
            });
        }
        Ok(vec![
            acc.ok_or_else(|| anyhow::anyhow!("Sum with no inputs"))?
        ])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        _outputs: &[Value],
        grads: &[Option<Tensor>],
        need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let Some(g) = &grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        Ok(inputs
            .iter()
            .zip(need)
            .map(|(v, &n)| match (v, n) {
                (Some(v), true) => Some(unbroadcast(g, v.shape())),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_grad, rt};
    use super::*;

    fn away_from_kinks(t: Tensor) -> Tensor {
        t.map(|v| v.signum() * (0.2 + v.abs()) * 3.0)
    }

    #[test]
    fn every_activation_matches_finite_differences() {
        let x = away_from_kinks(rt(1, &[2, 3, 4]));
        for u in [
            Unary::Relu,
            Unary::LeakyRelu(0.1),
            Unary::Clip(-1.1, 2.05),
            Unary::Sigmoid,
            Unary::HardSigmoid(0.2, 0.5),
            Unary::HardSwish,
            Unary::Tanh,
            Unary::Erf,
            Unary::Neg,
            Unary::Abs,
            Unary::Softplus,
            Unary::Elu(1.0),
            Unary::Selu(1.67, 1.05),
            Unary::Gelu,
            Unary::GeluTanh,
        ] {
            check_grad(&u, vec![Value::F(x.clone())], &[true]);
        }
        let pos = x.map(|v| v.abs() + 0.5);
        for u in [Unary::Sqrt, Unary::Exp, Unary::Log, Unary::Reciprocal] {
            check_grad(&u, vec![Value::F(pos.clone())], &[true]);
        }
    }

    #[test]
    fn hardswish_matches_its_definition() {
        assert_eq!(Unary::HardSwish.f(-4.0), 0.0);
        assert_eq!(Unary::HardSwish.f(4.0), 4.0);
        assert!((Unary::HardSwish.f(1.0) - 1.0 * (4.0 / 6.0)).abs() < 1e-6);
    }

    #[test]
    fn broadcasting_binaries_match_finite_differences() {
        let a = rt(2, &[2, 3, 4]);
        let b = rt(3, &[3, 1]).map(|v| v.abs() + 0.5);
        for op in [
            Binary::Add,
            Binary::Sub,
            Binary::Mul,
            Binary::Div,
            Binary::Pow,
            Binary::Max,
        ] {
            let a = if matches!(op, Binary::Pow) {
                a.map(|v| v.abs() + 0.5)
            } else {
                a.clone()
            };
            check_grad(&op, vec![Value::F(a), Value::F(b.clone())], &[true, true]);
        }
        let slope = Tensor::new(vec![3, 1], vec![0.1, 0.2, 0.3]);
        check_grad(
            &Binary::PRelu,
            vec![Value::F(away_from_kinks(a)), Value::F(slope)],
            &[true, true],
        );
    }

    #[test]
    fn integer_arithmetic_stays_integer() {
        let a = Value::I(ITensor::vector(vec![6, 8]));
        let b = Value::I(ITensor::vector(vec![2]));
        let out = Binary::Div.forward(&[Some(&a), Some(&b)]).unwrap();
        assert_eq!(out[0], Value::I(ITensor::vector(vec![3, 4])));
    }
}
