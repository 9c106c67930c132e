//! Where a layer runs: a CUDA device, or the CPU reference backend.

use std::sync::Arc;

use crate::cuda::CudaBackend;
use crate::{limits, Error, Result};

/// A device to run normalization on.
///
/// `Device::cpu()` runs the f64 reference implementation (exact, slow): the backend for
/// machines without a GPU and the oracle the GPU kernels are tested against.
#[derive(Clone, Debug)]
pub enum Device {
    Cpu,
    Cuda(Arc<CudaBackend>),
}

impl Device {
    pub fn cpu() -> Device {
        Device::Cpu
    }

    /// GPU `ordinal`; an [`Error::NoDevice`] (never a panic) without a driver or device.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::Cuda(CudaBackend::new(ordinal)?))
    }

    /// `cuda:0` when one is usable, else the CPU with the reason the GPU is not.
    pub fn best() -> (Device, Option<String>) {
        match Device::cuda(0) {
            Ok(d) => (d, None),
            Err(e) => (Device::Cpu, Some(e.to_string())),
        }
    }

    /// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`, in any case, and opens that device.
    pub fn parse(spec: &str) -> Result<Device> {
        match spec.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Device::cuda(0),
            s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::cuda(n),
                _ => Err(Error::InvalidConfig(format!(
                    "unknown device `{spec}` (expected cpu, cuda or cuda:N)"
                ))),
            },
        }
    }

    /// `cpu` or `cuda:N (name)`.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu (f64 reference backend)".to_string(),
            Device::Cuda(be) => format!("cuda:{} ({})", be.info().ordinal, be.info().name),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Errors ([`Error::TooLarge`] naming `what`) unless an array of `count` elements of
    /// `elem_bytes` fits on this device: in host memory on the CPU (which keeps every value
    /// as an f64, see [`crate::limits::host_alloc_limit`]), in the GPU's memory on a GPU.
    /// For a caller to refuse a problem before allocating anything.
    pub fn check_alloc(&self, what: &'static str, count: usize, elem_bytes: usize) -> Result<()> {
        match self {
            Device::Cpu => limits::check_host_alloc(what, count, std::mem::size_of::<f64>()),
            Device::Cuda(be) => {
                let place = format!("the memory of cuda:{}", be.info().ordinal);
                limits::check_bytes(what, count, elem_bytes, be.info().total_mem as u64, &place)
            }
        }
    }
}
