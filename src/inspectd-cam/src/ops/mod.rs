//! The head's op set: each ONNX op the reverse-mode pass understands, forward and backward,
//! one family per file. Ops are built (attributes parsed and checked) once, when the head is
//! extracted, so an unsupported or malformed op fails at load time, never mid-stream.

mod conv;
mod elementwise;
mod linear;
mod norm;
mod pool;
mod quant;
mod shape;

use anyhow::{bail, Result};

use crate::graph::Node;
use crate::tensor::{Tensor, Value};

/// Constant inputs known when the head is extracted (initializers and folded constants),
/// by input position; `None` where the input is computed per frame or omitted.
pub type ConstInputs<'a> = Vec<Option<&'a Value>>;

/// One differentiable ONNX op.
pub trait Op: Send + Sync {
    /// Computes the outputs from the inputs (`None` = omitted optional input).
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>>;

    /// Gradients of the target w.r.t. the inputs, given the gradients w.r.t. the outputs.
    /// Only inputs with `need[i]` must be returned (always float inputs).
    fn backward(
        &self,
        inputs: &[Option<&Value>],
        outputs: &[Value],
        grads: &[Option<Tensor>],
        need: &[bool],
    ) -> Result<Vec<Option<Tensor>>>;
}

/// Why an op cannot be used in a head.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("op {op} is not supported")]
    Unsupported { op: String },
    #[error("{0}")]
    Invalid(String),
}

/// Builds the op for `node`. `consts` holds the node's inputs that are constant.
pub fn build(node: &Node, consts: &ConstInputs, opset: i64) -> Result<Box<dyn Op>, BuildError> {
    let op = node.op_type.as_str();
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return Err(BuildError::Unsupported {
            op: format!("{}::{}", node.domain, op),
        });
    }
    let r = elementwise::build(op, node, consts, opset)
        .or_else(|| shape::build(op, node, consts, opset))
        .or_else(|| pool::build(op, node, consts, opset))
        .or_else(|| linear::build(op, node, consts, opset))
        .or_else(|| conv::build(op, node, consts, opset))
        .or_else(|| norm::build(op, node, consts, opset))
        .or_else(|| quant::build(op, node, consts, opset));
    match r {
        Some(Ok(op)) => Ok(op),
        Some(Err(e)) => Err(BuildError::Invalid(format!("{e:#}"))),
        None => Err(BuildError::Unsupported { op: op.to_string() }),
    }
}

// ---- helpers shared by the op families ----

pub(crate) fn float<'a>(inputs: &'a [Option<&Value>], i: usize, what: &str) -> Result<&'a Tensor> {
    match inputs.get(i).copied().flatten() {
        Some(Value::F(t)) => Ok(t),
        Some(Value::I(_)) => {
            bail!("{what}: input {i} is an integer tensor, a float one is expected")
        }
        None => bail!("{what}: input {i} is missing"),
    }
}

/// Reads an input that must be an integer tensor (shape, axes, indices) as `i64`s.
pub(crate) fn ints(inputs: &[Option<&Value>], i: usize, what: &str) -> Result<Vec<i64>> {
    match inputs.get(i).copied().flatten() {
        Some(Value::I(t)) => Ok(t.data.clone()),
        Some(Value::F(t)) => Ok(t.data().iter().map(|&v| v as i64).collect()),
        None => bail!("{what}: input {i} is missing"),
    }
}

/// Largest stride, dilation, pad or pooling kernel accepted: far beyond any real model, and small
/// enough that the window arithmetic cannot overflow.
pub(crate) const MAX_WINDOW_ATTR: i64 = 1 << 16;

/// The element count of an output shape computed from constants or attributes, checked against
/// [`crate::tensor::MAX_ELEMENTS`] before the output is allocated.
pub(crate) fn out_numel(shape: &[usize], what: &str) -> Result<usize> {
    crate::tensor::checked_numel(shape).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// Normalizes a possibly negative axis.
pub(crate) fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if a < -r || a >= r.max(1) {
        bail!("axis {a} is out of range for rank {rank}");
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// The constant value of input `i`, if it is known at build time.
pub(crate) fn const_input<'a>(consts: &'a ConstInputs, i: usize) -> Option<&'a Value> {
    consts.get(i).copied().flatten()
}

/// Gradient of output `i` or zeros of the output's shape.
pub(crate) fn grad_or_zero(grads: &[Option<Tensor>], outputs: &[Value], i: usize) -> Tensor {
    match &grads[i] {
        Some(g) => g.clone(),
        None => Tensor::zeros(outputs[i].shape()),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Finite-difference checks of every op's backward pass.
    use super::*;
    use crate::tensor::numel;

    /// Deterministic pseudo-random numbers in [-1, 1).
    pub(crate) fn rand(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    pub fn rt(seed: u64, shape: &[usize]) -> Tensor {
        Tensor::new(shape.to_vec(), rand(seed, numel(shape)))
    }

    /// Checks backward against central differences of L = Σ w·forward(x)[0], for every float
    /// input flagged in `check`. Works in f32 with a step tuned for it; tolerance is relative.
    pub fn check_grad(op: &dyn Op, inputs: Vec<Value>, check: &[bool]) {
        let refs: Vec<Option<&Value>> = inputs.iter().map(Some).collect();
        let out = op.forward(&refs).unwrap();
        let w = rt(99, out[0].shape());
        let mut grads: Vec<Option<Tensor>> = vec![None; out.len()];
        grads[0] = Some(w.clone());
        let analytic = op.backward(&refs, &out, &grads, check).unwrap();
        let loss = |vals: &Vec<Value>| -> f64 {
            let refs: Vec<Option<&Value>> = vals.iter().map(Some).collect();
            let o = op.forward(&refs).unwrap();
            match &o[0] {
                Value::F(t) => t
                    .data()
                    .iter()
                    .zip(w.data())
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum(),
                Value::I(_) => panic!("integer output"),
            }
        };
        for (i, &c) in check.iter().enumerate() {
            if !c {
                continue;
            }
            let g = analytic[i].as_ref().expect("missing gradient");
            let Value::F(x) = &inputs[i] else {
                panic!("integer input checked")
            };
            assert_eq!(g.shape(), x.shape(), "gradient shape of input {i}");
            let eps = 1e-2f32;
            let mut max_err = 0f64;
            let mut max_mag = 1e-3f64;
            for k in 0..x.len() {
                let mut plus = inputs.clone();
                let mut minus = inputs.clone();
                if let Value::F(t) = &mut plus[i] {
                    t.data_mut()[k] += eps;
                }
                if let Value::F(t) = &mut minus[i] {
                    t.data_mut()[k] -= eps;
                }
                let num = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
                max_err = max_err.max((num - g.data()[k] as f64).abs());
                max_mag = max_mag.max(num.abs());
            }
            assert!(
                max_err / max_mag < 2e-2,
                "input {i}: max error {max_err} vs magnitude {max_mag}"
            );
        }
    }
}
