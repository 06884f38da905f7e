//! Plain dense tensors owned by inspectd: row-major `f32` data (activations, gradients, maps)
//! and `i64` data (shapes, indices, raw quantized weights). No library types leak through here,
//! so `cam`, `heatmap` and `verdict` never see tract's tensors.

use std::fmt;

/// A row-major `f32` tensor.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Most elements a tensor computed in the head may have (2^25: 128 MiB of `f32`). Output shapes
/// that come from a model's constants or attributes (Expand, ConstantOfShape, Pad, Reshape,
/// broadcasting, MatMul, Gather) are checked against it before anything is allocated, so a
/// malformed model is an error at load time instead of an overflow panic or an abort on OOM.
pub const MAX_ELEMENTS: usize = 1 << 25;

/// Number of elements of a shape, or an error if it overflows or is over [`MAX_ELEMENTS`].
pub fn checked_numel(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("shape {shape:?} has more than {MAX_ELEMENTS} elements"))
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl Tensor {
    /// Builds a tensor; panics if the data length does not match the shape (a programming error).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        assert_eq!(
            numel(&shape),
            data.len(),
            "tensor data does not fit shape {shape:?}"
        );
        Tensor { shape, data }
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; numel(shape)],
        }
    }

    pub fn scalar(v: f32) -> Tensor {
        Tensor {
            shape: vec![],
            data: vec![v],
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    pub fn map(&self, f: impl Fn(f32) -> f32) -> Tensor {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&x| f(x)).collect(),
        }
    }

    /// Element-wise combination of two tensors of the same shape.
    pub fn zip(&self, other: &Tensor, f: impl Fn(f32, f32) -> f32) -> Tensor {
        assert_eq!(self.shape, other.shape);
        Tensor {
            shape: self.shape.clone(),
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(&a, &b)| f(a, b))
                .collect(),
        }
    }

    /// Adds `other` (same shape) into `self`.
    pub fn accumulate(&mut self, other: &Tensor) {
        assert_eq!(self.shape, other.shape);
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += b;
        }
    }

    /// Permutes axes: output axis `i` is input axis `perm[i]`.
    pub fn transpose(&self, perm: &[usize]) -> Tensor {
        let in_strides = strides(&self.shape);
        let out_shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        let mut out = Vec::with_capacity(self.data.len());
        let mut idx = vec![0usize; out_shape.len()];
        for _ in 0..self.data.len() {
            let src: usize = idx.iter().zip(perm).map(|(&i, &p)| i * in_strides[p]).sum();
            out.push(self.data[src]);
            for ax in (0..idx.len()).rev() {
                idx[ax] += 1;
                if idx[ax] < out_shape[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        Tensor::new(out_shape, out)
    }

    pub fn max(&self) -> f32 {
        self.data.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    pub fn min(&self) -> f32 {
        self.data.iter().copied().fold(f32::INFINITY, f32::min)
    }

    /// Index of the largest element (first one on ties).
    pub fn argmax(&self) -> usize {
        argmax(&self.data)
    }
}

/// Index of the largest value (first one on ties; 0 for an empty slice).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// A row-major `i64` tensor: shapes, indices, and raw integer (quantized) constants.
#[derive(Clone, Debug, PartialEq)]
pub struct ITensor {
    pub shape: Vec<usize>,
    pub data: Vec<i64>,
}

impl ITensor {
    pub fn new(shape: Vec<usize>, data: Vec<i64>) -> ITensor {
        assert_eq!(
            numel(&shape),
            data.len(),
            "tensor data does not fit shape {shape:?}"
        );
        ITensor { shape, data }
    }

    pub fn vector(data: Vec<i64>) -> ITensor {
        ITensor {
            shape: vec![data.len()],
            data,
        }
    }

    pub fn to_f32(&self) -> Tensor {
        Tensor::new(
            self.shape.clone(),
            self.data.iter().map(|&v| v as f32).collect(),
        )
    }
}

/// A value flowing through the head graph. Quantized tensors computed at run time are carried
/// as their real (dequantized) `F` value; integer constants stay `I` until an op dequantizes them.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    F(Tensor),
    I(ITensor),
}

impl Value {
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::F(t) => t.shape(),
            Value::I(t) => &t.shape,
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(self, Value::F(_))
    }
}

/// Shape that two shapes broadcast to (numpy rules), or `None` if they do not.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// For every element of `out_shape`, the flat index into a tensor of `shape` broadcast to it.
pub fn broadcast_index(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let rank = out_shape.len();
    let st = strides(shape);
    // Effective stride per output axis: 0 where the input is broadcast.
    let eff: Vec<usize> = (0..rank)
        .map(|i| {
            if i + shape.len() >= rank {
                let j = i + shape.len() - rank;
                if shape[j] == 1 {
                    0
                } else {
                    st[j]
                }
            } else {
                0
            }
        })
        .collect();
    let n = numel(out_shape);
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    let mut flat = 0usize;
    for _ in 0..n {
        out.push(flat);
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            flat += eff[ax];
            if idx[ax] < out_shape[ax] {
                break;
            }
            flat -= eff[ax] * idx[ax];
            idx[ax] = 0;
        }
    }
    out
}

/// Sums a gradient of `out_shape` back down to `shape` (the adjoint of broadcasting).
pub fn unbroadcast(grad: &Tensor, shape: &[usize]) -> Tensor {
    if grad.shape() == shape {
        return grad.clone();
    }
    let idx = broadcast_index(shape, grad.shape());
    let mut out = vec![0.0f32; numel(shape)];
    for (g, &i) in grad.data().iter().zip(&idx) {
        out[i] += g;
    }
    Tensor::new(shape.to_vec(), out)
}

/// Pearson correlation of two equally long slices (0 if either is constant).
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return 0.0;
    }
    sab / (saa.sqrt() * sbb.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy_rules() {
        assert_eq!(broadcast_shape(&[2, 3, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shape(&[1], &[5]), Some(vec![5]));
        assert_eq!(broadcast_shape(&[2, 3], &[4, 3]), None);
        assert_eq!(
            broadcast_index(&[3, 1], &[2, 3, 2]),
            vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
        );
    }

    #[test]
    fn unbroadcast_sums_over_broadcast_axes() {
        let g = Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(unbroadcast(&g, &[3]).data(), &[5., 7., 9.]);
        assert_eq!(unbroadcast(&g, &[2, 1]).data(), &[6., 15.]);
        assert_eq!(unbroadcast(&g, &[]).data(), &[21.]);
    }

    #[test]
    fn transpose_moves_axes() {
        let t = Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let tt = t.transpose(&[1, 0]);
        assert_eq!(tt.shape(), &[3, 2]);
        assert_eq!(tt.data(), &[1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn pearson_of_affine_copy_is_one() {
        let a = [1.0, 2.0, 4.0, 3.0];
        let b: Vec<f32> = a.iter().map(|x| 2.0 * x + 1.0).collect();
        assert!((pearson(&a, &b) - 1.0).abs() < 1e-12);
    }
}
