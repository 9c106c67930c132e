//! What crosses between candle and warpnorm: dtypes, errors, host tensors.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};
use half::{bf16, f16};

use crate::{DType, Error, Tensor};

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// warpnorm's dtype for a candle one; the kernels and the reference take f32, f16, bf16.
pub(crate) fn warpnorm_dtype(what: &str, d: candle_core::DType) -> Result<DType, Error> {
    match d {
        candle_core::DType::F32 => Ok(DType::F32),
        candle_core::DType::F16 => Ok(DType::F16),
        candle_core::DType::BF16 => Ok(DType::BF16),
        other => Err(unsupported_dtype(what, other)),
    }
}

fn unsupported_dtype(what: &str, d: candle_core::DType) -> Error {
    Error::Unsupported(format!(
        "`{what}` is {d:?}; warpnorm normalizes f32, f16 and bf16 tensors"
    ))
}

pub(crate) fn candle_dtype(d: DType) -> candle_core::DType {
    match d {
        DType::F32 => candle_core::DType::F32,
        DType::F16 => candle_core::DType::F16,
        DType::BF16 => candle_core::DType::BF16,
    }
}

/// Errors unless a tensor's candle dtype is `expected`.
pub(crate) fn check_dtype(
    what: &'static str,
    got: candle_core::DType,
    expected: DType,
) -> Result<(), Error> {
    let got = warpnorm_dtype(what, got)?;
    if got != expected {
        return Err(Error::DType {
            what,
            expected,
            got,
        });
    }
    Ok(())
}

/// The elements a contiguous layout covers, or an error: the ops read storages as dense
/// rows, so a strided view would be read wrongly (the module makes its inputs contiguous).
pub(crate) fn contiguous_range(
    what: &'static str,
    l: &Layout,
) -> Result<std::ops::Range<usize>, Error> {
    l.contiguous_offsets()
        .map(|(start, end)| start..end)
        .ok_or_else(|| Error::Shape {
            what,
            expected: "a contiguous tensor".into(),
            got: format!("strides {:?} for shape {:?}", l.stride(), l.dims()),
        })
}

/// The host tensor a CPU storage holds under a contiguous layout.
pub(crate) fn host_tensor(what: &'static str, s: &CpuStorage, l: &Layout) -> Result<Tensor, Error> {
    let range = contiguous_range(what, l)?;
    let data = match s {
        CpuStorage::F32(v) => widen(what, v, range)?,
        CpuStorage::F16(v) => widen(what, v, range)?,
        CpuStorage::BF16(v) => widen(what, v, range)?,
        other => return Err(unsupported_dtype(what, other.dtype())),
    };
    Tensor::new(l.dims().to_vec(), warpnorm_dtype(what, s.dtype())?, data)
}

fn widen<T: Copy + Into<f64>>(
    what: &'static str,
    v: &[T],
    range: std::ops::Range<usize>,
) -> Result<Vec<f64>, Error> {
    let len = v.len();
    v.get(range.clone())
        .map(|s| s.iter().map(|&e| e.into()).collect())
        .ok_or_else(|| Error::Shape {
            what,
            expected: format!("a storage holding elements {range:?}"),
            got: format!("{len} elements"),
        })
}

/// A host tensor's values as a candle CPU storage of its dtype (exact: the values are
/// representable in it).
pub(crate) fn cpu_storage(t: &Tensor) -> CpuStorage {
    let data = t.data().iter();
    match t.dtype() {
        DType::F32 => CpuStorage::F32(data.map(|&v| v as f32).collect()),
        DType::F16 => CpuStorage::F16(data.map(|&v| f16::from_f64(v)).collect()),
        DType::BF16 => CpuStorage::BF16(data.map(|&v| bf16::from_f64(v)).collect()),
    }
}
