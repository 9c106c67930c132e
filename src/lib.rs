//! warpnorm: fused LayerNorm / RMSNorm CUDA kernels with flax and keras semantics.

pub mod dtype;
pub mod error;

pub use dtype::{DType, Element};
pub use error::{Error, Result};
