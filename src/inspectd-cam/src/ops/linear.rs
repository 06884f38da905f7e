//! Gemm, MatMul (numpy batching), Softmax and LogSoftmax.

use anyhow::{anyhow, bail, Result};

use super::{axis, float, grad_or_zero, ConstInputs, Op};
use crate::graph::Node;
use crate::tensor::{broadcast_index, broadcast_shape, numel, unbroadcast, Tensor, Value};

pub fn build(
    op: &str,
    node: &Node,
    _consts: &ConstInputs,
    opset: i64,
) -> Option<Result<Box<dyn Op>>> {
    match op {
        "Gemm" => Some(Ok(Box::new(Gemm {
            alpha: node.float("alpha").unwrap_or(1.0),
            beta: node.float("beta").unwrap_or(1.0),
            trans_a: node.int("transA").unwrap_or(0) != 0,
            trans_b: node.int("transB").unwrap_or(0) != 0,
        }))),
        "MatMul" => Some(Ok(Box::new(MatMul))),
        "Softmax" | "LogSoftmax" => Some(Ok(Box::new(Softmax {
            log: op == "LogSoftmax",
            axis: node.int("axis").unwrap_or(if opset >= 13 { -1 } else { 1 }),
            coerce_2d: opset < 13,
        }))),
        _ => None,
    }
}

/// C[m,n] = op(A)[m,k] · op(B)[k,n], where op transposes when asked.
pub(crate) fn matmul(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    // Row-major strides; a transposed operand is read with swapped strides.
    let (rsa, csa) = if trans_a {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rsb, csb) = if trans_b {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    if m == 0 || n == 0 {
        return c;
    }
    // SAFETY: the slices hold m*k, k*n and m*n elements and the strides describe them exactly.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    c
}

struct Gemm {
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
}

impl Gemm {
    fn dims(&self, a: &Tensor, b: &Tensor) -> Result<(usize, usize, usize)> {
        if a.rank() != 2 || b.rank() != 2 {
            bail!(
                "Gemm needs 2-D inputs, got {:?} and {:?}",
                a.shape(),
                b.shape()
            );
        }
        let (m, k) = if self.trans_a {
            (a.shape()[1], a.shape()[0])
        } else {
            (a.shape()[0], a.shape()[1])
        };
        let (k2, n) = if self.trans_b {
            (b.shape()[1], b.shape()[0])
        } else {
            (b.shape()[0], b.shape()[1])
        };
        if k != k2 {
            bail!(
                "Gemm inner dimensions differ: {:?} x {:?}",
                a.shape(),
                b.shape()
            );
        }
        Ok((m, k, n))
    }
}

impl Op for Gemm {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let a = float(inputs, 0, "Gemm A")?;
        let b = float(inputs, 1, "Gemm B")?;
        let (m, k, n) = self.dims(a, b)?;
        let mut y = matmul(m, k, n, a.data(), self.trans_a, b.data(), self.trans_b);
        y.iter_mut().for_each(|v| *v *= self.alpha);
        if let Some(Value::F(c)) = inputs.get(2).copied().flatten() {
            let idx = broadcast_index(c.shape(), &[m, n]);
            for (v, &i) in y.iter_mut().zip(&idx) {
                *v += self.beta * c.data()[i];
            }
        }
        Ok(vec![Value::F(Tensor::new(vec![m, n], y))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        outputs: &[Value],
        grads: &[Option<Tensor>],
        need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let a = float(inputs, 0, "Gemm A")?;
        let b = float(inputs, 1, "Gemm B")?;
        let (m, k, n) = self.dims(a, b)?;
        let g = grad_or_zero(grads, outputs, 0);
        let mut out = vec![None; inputs.len()];
        if need[0] {
            // dA' = alpha · dY · B'ᵀ  (A' = op(A), B' = op(B)).
            let mut da = matmul(m, n, k, g.data(), false, b.data(), !self.trans_b);
            da.iter_mut().for_each(|v| *v *= self.alpha);
            let da = Tensor::new(vec![m, k], da);
            out[0] = Some(if self.trans_a {
                da.transpose(&[1, 0])
            } else {
                da
            });
        }
        if need.get(1).copied().unwrap_or(false) {
            let mut db = matmul(k, m, n, a.data(), !self.trans_a, g.data(), false);
            db.iter_mut().for_each(|v| *v *= self.alpha);
            let db = Tensor::new(vec![k, n], db);
            out[1] = Some(if self.trans_b {
                db.transpose(&[1, 0])
            } else {
                db
            });
        }
        if need.get(2).copied().unwrap_or(false) {
            if let Some(c) = inputs[2] {
                out[2] = Some(unbroadcast(&g.map(|v| v * self.beta), c.shape()));
            }
        }
        Ok(out)
    }
}

struct MatMul;

/// Shapes of a numpy matmul: promoted operand shapes, batch shape, and (m, k, n).
struct MatMulPlan {
    a: Vec<usize>,
    b: Vec<usize>,
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    out: Vec<usize>,
}

fn matmul_plan(sa: &[usize], sb: &[usize]) -> Result<MatMulPlan> {
    if sa.is_empty() || sb.is_empty() {
        bail!("MatMul of a scalar");
    }
    let a = if sa.len() == 1 {
        vec![1, sa[0]]
    } else {
        sa.to_vec()
    };
    let b = if sb.len() == 1 {
        vec![sb[0], 1]
    } else {
        sb.to_vec()
    };
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
    if k != k2 {
        bail!("MatMul inner dimensions differ: {sa:?} x {sb:?}");
    }
    let batch = broadcast_shape(&a[..a.len() - 2], &b[..b.len() - 2])
        .ok_or_else(|| anyhow!("MatMul batch dimensions {sa:?} x {sb:?} do not broadcast"))?;
    let mut out = batch.clone();
    if sa.len() > 1 {
        out.push(m);
    }
    if sb.len() > 1 {
        out.push(n);
    }
    super::out_numel(&out, "MatMul")?;
    Ok(MatMulPlan {
        a,
        b,
        batch,
        m,
        k,
        n,
        out,
    })
}

impl Op for MatMul {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let a = float(inputs, 0, "MatMul A")?;
        let b = float(inputs, 1, "MatMul B")?;
        let p = matmul_plan(a.shape(), b.shape())?;
        let ia = broadcast_index(&p.a[..p.a.len() - 2], &p.batch);
        let ib = broadcast_index(&p.b[..p.b.len() - 2], &p.batch);
        let mut y = Vec::with_capacity(numel(&p.out));
        for (&i, &j) in ia.iter().zip(&ib) {
            let sa = &a.data()[i * p.m * p.k..(i + 1) * p.m * p.k];
            let sb = &b.data()[j * p.k * p.n..(j + 1) * p.k * p.n];
            y.extend(matmul(p.m, p.k, p.n, sa, false, sb, false));
        }
        Ok(vec![Value::F(Tensor::new(p.out, y))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        outputs: &[Value],
        grads: &[Option<Tensor>],
        need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let a = float(inputs, 0, "MatMul A")?;
        let b = float(inputs, 1, "MatMul B")?;
        let p = matmul_plan(a.shape(), b.shape())?;
        let g = grad_or_zero(grads, outputs, 0);
        let ia = broadcast_index(&p.a[..p.a.len() - 2], &p.batch);
        let ib = broadcast_index(&p.b[..p.b.len() - 2], &p.batch);
        let mut ga = vec![0f32; a.len()];
        let mut gb = vec![0f32; b.len()];
        for (bi, (&i, &j)) in ia.iter().zip(&ib).enumerate() {
            let gy = &g.data()[bi * p.m * p.n..(bi + 1) * p.m * p.n];
            let sa = &a.data()[i * p.m * p.k..(i + 1) * p.m * p.k];
            let sb = &b.data()[j * p.k * p.n..(j + 1) * p.k * p.n];
            if need[0] {
                let d = matmul(p.m, p.n, p.k, gy, false, sb, true);
                for (t, v) in ga[i * p.m * p.k..].iter_mut().zip(d) {
                    *t += v;
                }
            }
            if need[1] {
                let d = matmul(p.k, p.m, p.n, sa, true, gy, false);
                for (t, v) in gb[j * p.k * p.n..].iter_mut().zip(d) {
                    *t += v;
                }
            }
        }
        Ok(vec![
            need[0].then(|| Tensor::new(a.shape().to_vec(), ga)),
            need[1].then(|| Tensor::new(b.shape().to_vec(), gb)),
        ])
    }
}

struct Softmax {
    log: bool,
    axis: i64,
    /// Opset < 13: the input is viewed as 2-D [outer, inner] at `axis`.
    coerce_2d: bool,
}

impl Softmax {
    /// (outer, axis length, inner) of the normalized groups.
    fn groups(&self, shape: &[usize]) -> Result<(usize, usize, usize)> {
        let a = axis(self.axis, shape.len())?;
        Ok(if self.coerce_2d {
            (shape[..a].iter().product(), shape[a..].iter().product(), 1)
        } else {
            (
                shape[..a].iter().product(),
                shape[a],
                shape[a + 1..].iter().product(),
            )
        })
    }
}

impl Op for Softmax {
    fn forward(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        let x = float(inputs, 0, "Softmax")?;
        let (outer, len, inner) = self.groups(x.shape())?;
        let mut y = x.data().to_vec();
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * len + j) * inner + i;
                let max = (0..len)
                    .map(|j| x.data()[at(j)])
                    .fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = (0..len).map(|j| (x.data()[at(j)] - max).exp()).sum();
                for j in 0..len {
                    let v = x.data()[at(j)] - max;
                    y[at(j)] = if self.log {
                        v - sum.ln()
                    } else {
                        v.exp() / sum
                    };
                }
            }
        }
        Ok(vec![Value::F(Tensor::new(x.shape().to_vec(), y))])
    }

    fn backward(
        &self,
        inputs: &[Option<&Value>],
        outputs: &[Value],
        grads: &[Option<Tensor>],
        _need: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let Value::F(y) = &outputs[0] else {
            bail!("Softmax output is not float")
        };
        let g = grad_or_zero(grads, outputs, 0);
        let (outer, len, inner) = self.groups(y.shape())?;
        let mut gx = vec![0f32; y.len()];
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * len + j) * inner + i;
                if self.log {
                    let gs: f32 = (0..len).map(|j| g.data()[at(j)]).sum();
                    for j in 0..len {
                        gx[at(j)] = g.data()[at(j)] - y.data()[at(j)].exp() * gs;
                    }
                } else {
                    let dot: f32 = (0..len).map(|j| g.data()[at(j)] * y.data()[at(j)]).sum();
                    for j in 0..len {
                        gx[at(j)] = y.data()[at(j)] * (g.data()[at(j)] - dot);
                    }
                }
            }
        }
        let mut out = vec![None; inputs.len()];
        out[0] = Some(Tensor::new(y.shape().to_vec(), gx));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_grad, rt};
    use super::*;

    #[test]
    fn gemm_matches_finite_differences_in_every_transpose() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = rt(1, if ta { &[5, 2] } else { &[2, 5] });
            let b = rt(2, if tb { &[3, 5] } else { &[5, 3] });
            let op = Gemm {
                alpha: 0.7,
                beta: 1.3,
                trans_a: ta,
                trans_b: tb,
            };
            check_grad(
                &op,
                vec![Value::F(a), Value::F(b), Value::F(rt(3, &[3]))],
                &[true, true, true],
            );
        }
    }

    #[test]
    fn gemm_computes_a_linear_layer() {
        let x = Value::F(Tensor::new(vec![1, 2], vec![1., 2.]));
        let w = Value::F(Tensor::new(vec![3, 2], vec![1., 0., 0., 1., 1., 1.]));
        let b = Value::F(Tensor::new(vec![3], vec![0., 0., 10.]));
        let op = Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        };
        let y = op.forward(&[Some(&x), Some(&w), Some(&b)]).unwrap();
        assert_eq!(y[0], Value::F(Tensor::new(vec![1, 3], vec![1., 2., 13.])));
    }

    #[test]
    fn batched_matmul_matches_finite_differences() {
        check_grad(
            &MatMul,
            vec![Value::F(rt(1, &[2, 3, 4])), Value::F(rt(2, &[4, 5]))],
            &[true, true],
        );
        check_grad(
            &MatMul,
            vec![Value::F(rt(3, &[4])), Value::F(rt(4, &[2, 4, 3]))],
            &[true, true],
        );
    }

    #[test]
    fn softmaxes_match_finite_differences() {
        for log in [false, true] {
            for (axis, coerce) in [(-1, false), (1, false), (1, true)] {
                let op = Softmax {
                    log,
                    axis,
                    coerce_2d: coerce,
                };
                check_grad(&op, vec![Value::F(rt(5, &[2, 3, 4]))], &[true]);
            }
        }
    }
}
