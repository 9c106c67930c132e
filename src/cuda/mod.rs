//! The CUDA backend: embedded kernels, their selection and the (only) `unsafe` launches.

pub mod kernels;
pub mod params;
pub mod tiers;
