//! Fused LayerNorm and RMSNorm CUDA kernels with the exact semantics of
//! `flax.linen.LayerNorm`, `flax.linen.RMSNorm` and `keras.layers.LayerNormalization`:
//! forward and backward, f32 / f16 / bf16 activations with parameters in the same dtype or
//! f32, deterministic parameter gradients, and sharded (tensor-parallel) normalization with
//! JAX's `axis_name` / `axis_index_groups` rules. The kernels are compiled at build time and
//! launched through [`cudarc`]; [`Device::cpu`] runs an exact f64 reference instead.
//!
//! # Install
//!
//! ```sh
//! cargo add warpnorm
//! pip install nvidia-cuda-nvrtc-cu12==12.2.140 nvidia-cuda-runtime-cu12==12.2.140
//! ```
//!
//! The build script compiles the kernels with NVRTC, so building needs NVRTC and the CUDA
//! headers, not `nvcc` and not a GPU: NVIDIA's two wheels above (in the Python that
//! `python3` runs, a virtual environment included) or a CUDA toolkit (see
//! [Configuring CUDA](#configuring-cuda)). Without either, the build stops with one message
//! naming the `pip install` to run. Running the kernels needs an NVIDIA GPU of compute
//! capability 8.0 or newer and a driver from r535 (CUDA 12.2) on.
//!
//! # Example
//!
//! ```no_run
//! use warpnorm::{Array, DType, Device, LayerNorm, NormConfig, Tensor};
//!
//! # fn main() -> warpnorm::Result<()> {
//! let (dev, why_not_gpu) = Device::best(); // cuda:0, or the CPU reference with the reason
//! if let Some(why) = why_not_gpu {
//!     eprintln!("running on the CPU: {why}");
//! }
//! // flax.linen.LayerNorm(epsilon=1e-5, use_fast_variance=False) with bf16 activations and
//! // f32 parameters: y comes out in f32, as in flax.
//! let cfg = NormConfig::flax().epsilon(1e-5).use_fast_variance(false);
//! let ln = LayerNorm::new(&dev, &cfg, &[8, 4096], /* seed */ 0)?;
//!
//! let x = Array::from_tensor(&dev, &Tensor::full([8, 4096], DType::BF16, 0.5)?)?;
//! let (y, saved) = ln.forward_train(&x)?;
//! let dy = Array::from_tensor(&dev, &Tensor::full([8, 4096], y.dtype(), 1.0)?)?;
//! let grads = ln.backward(&x, &dy, &saved)?; // grads.dx, grads.dscale, grads.dbias
//! # let _ = grads;
//! # Ok(())
//! # }
//! ```
//!
//! Frameworks that own their buffers call [`ops::forward`] / [`ops::backward`] on `cudarc`
//! slices with an explicit layout and stream: no hidden allocation and no host
//! synchronisation. Every call checks lengths, strides, dtypes and the device, and returns
//! an [`Error`] before launching anything.
//!
//! # Cargo features
//!
//! | feature | what it adds |
//! |---|---|
//! | `nccl` | [`dist::NcclCollective`](dist/index.html): sharded normalization with one GPU per rank over NCCL (loaded at run time). The in-process backends and [`dist::AxisGroups`] need no feature. |
//! | `cli` | the `warpnorm` command (`info`, `check`, `bench`, `demo`, `verify`) and its dependencies (clap, anstream, anstyle, indicatif). The library never needs them. |
//! | `emulator` | a CPU emulation of the CUDA kernels (needs a C++20 compiler), for testing them without a GPU. |
//!
//! No feature is on by default.
//!
//! # Configuring CUDA
//!
//! **Where NVRTC and the headers come from**, first match wins: `WARPNORM_CUDA_ROOT` (a CUDA
//! toolkit, or a folder filled by `pip install --target`), `CUDA_HOME`, `CUDA_PATH`,
//! `/usr/local/cuda`, then NVIDIA's wheels in the site-packages and `PYTHONPATH` of
//! `python3`. Both CUDA 12 (`nvidia-cuda-nvrtc-cu12`) and CUDA 13 (`nvidia-cuda-nvrtc`)
//! wheels are recognised.
//!
//! **Which drivers load the kernels** depends on that NVRTC: a CUBIN loads on every driver
//! of its CUDA major version, a PTX only on drivers that know its ISA. The images are CUBIN
//! for sm_80 and sm_90 and PTX for compute_80 (JIT-compiled for every other GPU):
//!
//! | built with | sm_80 / sm_90 CUBIN | compute_80 PTX (other GPUs) |
//! |---|---|---|
//! | NVRTC 12.2 (the wheels above) | r525+ | r535+ (CUDA 12.2) |
//! | NVRTC 12.8 | r525+ | r570+ (CUDA 12.8) |
//! | NVRTC 13.0 | r580+ | r580+ (CUDA 13.0) |
//!
//! [`Device::cuda`] returns an [`Error::NoDevice`] naming the driver version needed when the
//! installed driver is too old, and [`cuda::DriverSupport`] says what a driver loads.
//! `WARPNORM_CUDA_ARCHS=sm_100,sm_120` adds CUBINs for more GPUs when the NVRTC supports
//! them (CUDA 12.8 or newer).
//!
//! Compiling the kernels takes minutes, so the compiled images are kept in a cache keyed by
//! the kernel sources, the architectures and the NVRTC version: by default
//! `warpnorm-kernels/` in cargo's target folder, shared by every profile and feature set;
//! `WARPNORM_KERNEL_CACHE=<folder>` moves it (one folder can serve several checkouts) and
//! `WARPNORM_KERNEL_CACHE=off` turns it off.
//!
//! **cudarc's features** follow the crate that uses warpnorm: warpnorm asks for
//! `fallback-dynamic-loading` (so `dynamic-linking`, as candle enables, or `dynamic-loading`
//! win) and `cuda-version-from-build-system` with `fallback-latest` instead of pinning a
//! CUDA version, so the version is the one another crate's `cuda-XXXXX` feature, the
//! `CUDARC_CUDA_VERSION` variable or `nvcc` chooses, else the latest bindings. Set
//! `CUDARC_CUDA_VERSION=12020` (for instance in `.cargo/config.toml`'s `[env]`) to build the
//! bindings of CUDA 12.2, whose driver calls exist on every driver from r535.
//!
//! On docs.rs (`DOCS_RS` set) the kernels are not compiled and no toolchain is needed.

pub mod array;
#[cfg(feature = "candle")]
pub mod candle;
pub mod config;
pub mod cuda;
pub mod device;
pub mod dist;
pub mod dtype;
pub mod error;
mod groups;
pub mod layer;
mod layout;
pub mod limits;
mod module_params;
pub mod ops;
pub mod reference;
pub mod rng;
mod shard_stats;
pub mod sharded;
pub mod tensor;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod tooling;

pub use array::Array;
pub use config::{Api, Axes, NormConfig, NormKind};
pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use layer::{Gradients, LayerNorm, RmsNorm, Saved};
pub use sharded::{ShardSaved, ShardedLayerNorm, ShardedRmsNorm};
pub use tensor::Tensor;
