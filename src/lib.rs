#![doc = include_str!("../README.md")]

pub mod array;
pub mod bench;
#[cfg(feature = "candle")]
pub mod candle;
pub mod config;
pub mod cuda;
pub mod device;
pub mod dist;
pub mod dtype;
pub mod error;
pub mod fixture;
pub mod layer;
pub mod ops;
pub mod plot;
pub mod reference;
pub mod rng;
pub mod selftest;
pub mod sharded;
pub mod tensor;
pub mod verify;

pub use array::Array;
pub use config::{Api, Axes, NormConfig, NormKind};
pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use layer::{Gradients, LayerNorm, RmsNorm, Saved};
pub use sharded::{ShardSaved, ShardedLayerNorm, ShardedRmsNorm};
pub use tensor::Tensor;
