//! A host tensor for the reference, the fixtures and the tests.
//!
//! Values are stored as f64 but are always exactly representable in the tensor's
//! [`DType`]: every constructor rounds. This way a reference computation that reads
//! a bf16 tensor sees exactly the numbers a GPU kernel would read, and comparisons
//! never have to guess whether a difference comes from storage or from arithmetic.

use crate::limits::{checked_product, host_vec_with_capacity};
use crate::{DType, Error, Result};

/// A dense, row-major host tensor whose values are exact in its dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    data: Vec<f64>,
}

/// Number of elements of `shape`, or an error when the product overflows `usize`.
pub fn numel(shape: &[usize]) -> Result<usize> {
    checked_product("tensor shape", shape)
}

/// Row-major strides (in elements) of `shape`. They saturate at `usize::MAX` where the
/// product overflows, which only a shape with no elements allows ([`numel`] rejects any
/// other), and no index of such a shape exists to multiply them with.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(shape[i + 1]);
    }
    s
}

impl Tensor {
    /// A tensor of `shape` holding `data` rounded to `dtype` (nearest-even).
    ///
    /// Fails when `data.len()` differs from the element count of `shape`.
    pub fn new(shape: impl Into<Vec<usize>>, dtype: DType, data: Vec<f64>) -> Result<Tensor> {
        let shape = shape.into();
        let n = numel(&shape)?;
        if data.len() != n {
            return Err(Error::Shape {
                what: "tensor data",
                expected: format!("{n} values for shape {shape:?}"),
                got: format!("{} values", data.len()),
            });
        }
        let data = data.into_iter().map(|v| dtype.round(v)).collect();
        Ok(Tensor { shape, dtype, data })
    }

    /// A tensor whose element `i` (row-major) is `f(i)`, rounded to `dtype`. A shape
    /// whose values would not fit in host memory is an error before anything is allocated.
    pub fn from_fn(
        shape: impl Into<Vec<usize>>,
        dtype: DType,
        f: impl FnMut(usize) -> f64,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let n = numel(&shape)?;
        let mut data = host_vec_with_capacity("tensor shape", n)?;
        data.extend((0..n).map(f));
        Tensor::new(shape, dtype, data)
    }

    /// A tensor filled with `value` (rounded to `dtype`).
    pub fn full(shape: impl Into<Vec<usize>>, dtype: DType, value: f64) -> Result<Tensor> {
        Tensor::from_fn(shape, dtype, |_| value)
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>, dtype: DType) -> Result<Tensor> {
        Tensor::full(shape, dtype, 0.0)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type the values are exact in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f64] {
        &self.data
    }

    /// Consumes the tensor, returning its values.
    pub fn into_data(self) -> Vec<f64> {
        self.data
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The same values rounded to another dtype (what a framework's `astype` does).
    pub fn cast(&self, dtype: DType) -> Tensor {
        Tensor {
            shape: self.shape.clone(),
            dtype,
            data: self.data.iter().map(|&v| dtype.round(v)).collect(),
        }
    }

    /// The same data viewed with another shape of equal element count.
    pub fn reshape(&self, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        let shape = shape.into();
        if numel(&shape)? != self.numel() {
            return Err(Error::Shape {
                what: "reshape",
                expected: format!("{} elements", self.numel()),
                got: format!("shape {shape:?}"),
            });
        }
        Ok(Tensor {
            shape,
            dtype: self.dtype,
            data: self.data.clone(),
        })
    }

    /// Splits along `axis` into `parts` equal pieces (the inverse of [`Tensor::concat`]).
    pub fn split(&self, axis: usize, parts: usize) -> Result<Vec<Tensor>> {
        let len = *self.shape.get(axis).ok_or(Error::AxisOutOfRange {
            axis: axis as i64,
            rank: self.rank(),
        })?;
        if parts == 0 || len % parts != 0 {
            return Err(Error::Shape {
                what: "split",
                expected: format!("axis {axis} of length divisible by {parts}"),
                got: format!("shape {:?}", self.shape),
            });
        }
        let piece = len / parts;
        let outer: usize = self.shape[..axis].iter().product();
        let inner: usize = self.shape[axis + 1..].iter().product();
        let mut shape = self.shape.clone();
        shape[axis] = piece;
        Ok((0..parts)
            .map(|p| {
                let mut data = Vec::with_capacity(outer * piece * inner);
                for o in 0..outer {
                    let start = (o * len + p * piece) * inner;
                    data.extend_from_slice(&self.data[start..start + piece * inner]);
                }
                Tensor {
                    shape: shape.clone(),
                    dtype: self.dtype,
                    data,
                }
            })
            .collect())
    }

    /// Concatenates tensors of one dtype along `axis`; all other axes must agree.
    pub fn concat(parts: &[Tensor], axis: usize) -> Result<Tensor> {
        let first = parts.first().ok_or_else(|| Error::Shape {
            what: "concat",
            expected: "at least one tensor".into(),
            got: "none".into(),
        })?;
        if axis >= first.rank() {
            return Err(Error::AxisOutOfRange {
                axis: axis as i64,
                rank: first.rank(),
            });
        }
        for p in parts {
            let same_other_axes = p.rank() == first.rank()
                && (0..p.rank()).all(|a| a == axis || p.shape[a] == first.shape[a]);
            if !same_other_axes {
                return Err(Error::Shape {
                    what: "concat",
                    expected: format!("shapes equal to {:?} except on axis {axis}", first.shape),
                    got: format!("{:?}", p.shape),
                });
            }
            if p.dtype != first.dtype {
                return Err(Error::DType {
                    what: "concat",
                    expected: first.dtype,
                    got: p.dtype,
                });
            }
        }
        let outer: usize = first.shape[..axis].iter().product();
        let inner: usize = first.shape[axis + 1..].iter().product();
        let mut shape = first.shape.clone();
        shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
        let mut data = Vec::with_capacity(numel(&shape)?);
        for o in 0..outer {
            for p in parts {
                let chunk = p.shape[axis] * inner;
                data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
            }
        }
        Ok(Tensor {
            shape,
            dtype: first.dtype,
            data,
        })
    }

    /// Stacks tensors of equal shape and dtype along a new leading axis.
    pub fn stack(parts: &[Tensor]) -> Result<Tensor> {
        let expanded = parts
            .iter()
            .map(|p| {
                let mut shape = vec![1];
                shape.extend_from_slice(&p.shape);
                p.reshape(shape)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::concat(&expanded, 0)
    }

    /// Splits along the leading axis into its slices, dropping that axis (the inverse of
    /// [`Tensor::stack`]).
    pub fn unstack(&self) -> Result<Vec<Tensor>> {
        let k = *self.shape.first().ok_or(Error::Shape {
            what: "unstack",
            expected: "a tensor of rank >= 1".into(),
            got: "a scalar".into(),
        })?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let inner_shape = self.shape[1..].to_vec();
        self.split(0, k)?
            .into_iter()
            .map(|t| t.reshape(inner_shape.clone()))
            .collect()
    }
}
