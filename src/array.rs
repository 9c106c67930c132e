//! [`Array`]: a tensor that lives on a [`Device`], with its dtype known at run time.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::{bf16, f16};

use crate::{DType, Device, Element, Error, Result, Tensor};

/// Storage of an [`Array`].
#[derive(Debug)]
pub(crate) enum Storage {
    /// CPU backend: the values (exactly representable in the dtype) as f64.
    Host(Vec<f64>),
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

/// A tensor on a device.
#[derive(Debug)]
pub struct Array {
    shape: Vec<usize>,
    dtype: DType,
    pub(crate) storage: Storage,
}

/// Element types that have a device storage variant.
pub(crate) trait DeviceElement: Element {
    fn slice(s: &Storage) -> Option<&CudaSlice<Self>>;
    fn wrap(s: CudaSlice<Self>) -> Storage;
}

macro_rules! device_element {
    ($t:ty, $variant:ident) => {
        impl DeviceElement for $t {
            fn slice(s: &Storage) -> Option<&CudaSlice<Self>> {
                match s {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(s: CudaSlice<Self>) -> Storage {
                Storage::$variant(s)
            }
        }
    };
}
device_element!(f32, F32);
device_element!(f16, F16);
device_element!(bf16, BF16);

impl Array {
    /// Copies a host tensor to `device`.
    pub fn from_tensor(device: &Device, t: &Tensor) -> Result<Array> {
        let storage = match device {
            Device::Cpu => Storage::Host(t.data().to_vec()),
            Device::Cuda(be) => {
                let s = be.stream();
                match t.dtype() {
                    DType::F32 => Storage::F32(s.clone_htod(&to_elems::<f32>(t))?),
                    DType::F16 => Storage::F16(s.clone_htod(&to_elems::<f16>(t))?),
                    DType::BF16 => Storage::BF16(s.clone_htod(&to_elems::<bf16>(t))?),
                }
            }
        };
        Ok(Array {
            shape: t.shape().to_vec(),
            dtype: t.dtype(),
            storage,
        })
    }

    /// Copies the array to the host (waits for the device).
    pub fn to_tensor(&self) -> Result<Tensor> {
        let data = match &self.storage {
            Storage::Host(v) => v.clone(),
            Storage::F32(s) => widen(&s.stream().clone_dtoh(s)?),
            Storage::F16(s) => widen(&s.stream().clone_dtoh(s)?),
            Storage::BF16(s) => widen(&s.stream().clone_dtoh(s)?),
        };
        Tensor::new(self.shape.clone(), self.dtype, data)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the array lives on a GPU.
    pub fn is_cuda(&self) -> bool {
        !matches!(self.storage, Storage::Host(_))
    }

    pub(crate) fn from_parts(shape: Vec<usize>, dtype: DType, storage: Storage) -> Array {
        Array {
            shape,
            dtype,
            storage,
        }
    }

    /// The device buffer as `CudaSlice<T>`, or an error naming `what` if the array is on
    /// the CPU or of another dtype.
    pub(crate) fn cuda<T: DeviceElement>(&self, what: &'static str) -> Result<&CudaSlice<T>> {
        T::slice(&self.storage).ok_or_else(|| {
            if self.is_cuda() {
                Error::DType {
                    what,
                    expected: T::DTYPE,
                    got: self.dtype,
                }
            } else {
                Error::Unsupported(format!("`{what}` is on the CPU but the layer is on a GPU"))
            }
        })
    }

    pub(crate) fn host(&self, what: &'static str) -> Result<Tensor> {
        match &self.storage {
            Storage::Host(v) => Tensor::new(self.shape.clone(), self.dtype, v.clone()),
            _ => Err(Error::Unsupported(format!(
                "`{what}` is on a GPU but the layer is on the CPU"
            ))),
        }
    }
}

/// flax's mask on a GPU, one byte per element (what the kernels read).
pub(crate) fn mask_to_device(stream: &Arc<CudaStream>, mask: &[bool]) -> Result<CudaSlice<u8>> {
    let bytes: Vec<u8> = mask.iter().map(|&m| u8::from(m)).collect();
    Ok(stream.clone_htod(&bytes)?)
}

fn to_elems<T: Element>(t: &Tensor) -> Vec<T> {
    t.data().iter().map(|&v| T::from_f64(v)).collect()
}

fn widen<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}
