//! Low-level operations on caller-owned device buffers: what a framework calls. Every
//! argument is checked here; the kernels' parameter structs are built in [`crate::cuda`].
//!
//! Nothing here allocates or synchronises with the host: every call checks its arguments,
//! then enqueues kernels on the given stream and returns, so the calls can be captured in a
//! CUDA graph. A call that returns an error has launched nothing and written nothing.
//!
//! ```no_run
//! use std::sync::Arc;
//! use warpnorm::cuda::CudaBackend;
//! use warpnorm::ops::{self, Forward, Layout, NormSpec};
//! # fn main() -> warpnorm::Result<()> {
//! let be = CudaBackend::new(0)?;
//! let stream = be.stream().clone();
//! let (rows, cols) = (4096, 1024);
//! let x = stream.clone_htod(&vec![half::bf16::ONE; rows * cols])?;
//! let scale = stream.clone_htod(&vec![1.0f32; cols])?;
//! let mut y = stream.alloc_zeros::<f32>(rows * cols)?;
//! let spec = NormSpec::from_config(&warpnorm::NormConfig::flax());
//! ops::forward(&be, &stream, &spec, Layout::rows(rows, cols), Forward {
//!     x: &x, scale: Some(&scale), bias: None, mask: None, y: &mut y, stats: None,
//! })?;
//! # Ok(()) }
//! ```

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use crate::cuda::norm::{self, check_call, BwdAddrs, FwdAddrs};
use crate::cuda::{self, BufferGuards, CudaBackend};
use crate::{Element, Result};

pub use crate::cuda::norm::NormSpec;
pub use crate::cuda::KernelGeneration;
pub use crate::layout::Layout;

/// Mean and rstd (f32, one per row) written by a training forward and read by backward.
pub struct Stats<'a> {
    pub mean: &'a mut dyn DevicePtrMut<f32>,
    pub rstd: &'a mut dyn DevicePtrMut<f32>,
}

/// Buffers of a forward pass. `T` = x, `P` = scale/bias, `O` = y. P and O are each either
/// T or f32.
pub struct Forward<'a, T, P, O> {
    pub x: &'a dyn DevicePtr<T>,
    pub scale: Option<&'a dyn DevicePtr<P>>,
    pub bias: Option<&'a dyn DevicePtr<P>>,
    /// flax's mask: non-zero elements take part in the statistics (Rows layout only).
    pub mask: Option<&'a dyn DevicePtr<u8>>,
    pub y: &'a mut dyn DevicePtrMut<O>,
    /// Written when given (training); skipped for inference.
    pub stats: Option<Stats<'a>>,
}

/// Buffers of a backward pass; dy has y's dtype `O`, dx has x's dtype `T`.
pub struct Backward<'a, T, P, O> {
    pub x: &'a dyn DevicePtr<T>,
    pub dy: &'a dyn DevicePtr<O>,
    pub scale: Option<&'a dyn DevicePtr<P>>,
    pub mask: Option<&'a dyn DevicePtr<u8>>,
    pub mean: &'a dyn DevicePtr<f32>,
    pub rstd: &'a dyn DevicePtr<f32>,
    pub dx: &'a mut dyn DevicePtrMut<T>,
    pub dscale: Option<&'a mut dyn DevicePtrMut<P>>,
    pub dbias: Option<&'a mut dyn DevicePtrMut<P>>,
    /// At least [`backward_workspace_len`] f32: per-CTA partial sums of dscale / dbias,
    /// and the barrier counters and row-sum slots of rows split over groups of CTAs.
    pub workspace: &'a mut dyn DevicePtrMut<f32>,
}

/// f32 elements of workspace a [`backward`] call needs on this device.
pub fn backward_workspace_len(be: &CudaBackend, layout: &Layout) -> usize {
    cuda::backward_workspace_len(layout.num_rows(), layout.cols(), be.info().sm_count)
}

/// Normalises x into y (and writes the statistics when `args.stats` is given).
pub fn forward<T: Element, P: Element, O: Element>(
    be: &CudaBackend,
    stream: &CudaStream,
    spec: &NormSpec,
    layout: Layout,
    args: Forward<'_, T, P, O>,
) -> Result<()> {
    let (d, n) = check_call::<T, P, O>(Some(spec), &layout, args.mask.is_some())?;
    be.check_stream(stream)?;
    let mut bufs = BufferGuards::new(be, stream);
    let x = bufs.read("x", args.x, n.x)?;
    let y = bufs.write("y", args.y, n.y)?;
    let scale = bufs.read_opt("scale", args.scale, n.cols)?;
    let bias = bufs.read_opt("bias", args.bias, n.cols)?;
    let mask = bufs.read_opt("mask", args.mask, n.mask)?;
    let (mean, rstd) = match args.stats {
        Some(s) => (
            bufs.write("mean", s.mean, n.rows)?,
            bufs.write("rstd", s.rstd, n.rows)?,
        ),
        None => (0, 0),
    };
    let addrs = FwdAddrs {
        x,
        y,
        scale,
        bias,
        mask,
        mean,
        rstd,
    };
    norm::forward::<_, T>(&bufs.launcher(), spec, layout, d, addrs)
}

/// Gradients of [`forward`]: dx always; dscale / dbias when their buffers are given.
/// Results are bitwise identical from run to run on the same device.
pub fn backward<T: Element, P: Element, O: Element>(
    be: &CudaBackend,
    stream: &CudaStream,
    spec: &NormSpec,
    layout: Layout,
    args: Backward<'_, T, P, O>,
) -> Result<()> {
    let (d, n) = check_call::<T, P, O>(None, &layout, args.mask.is_some())?;
    be.check_stream(stream)?;
    let mut bufs = BufferGuards::new(be, stream);
    let x = bufs.read("x", args.x, n.x)?;
    let dy = bufs.read("dy", args.dy, n.y)?;
    let dx = bufs.write("dx", args.dx, n.x)?;
    let scale = bufs.read_opt("scale", args.scale, n.cols)?;
    let mask = bufs.read_opt("mask", args.mask, n.mask)?;
    let mean = bufs.read("mean", args.mean, n.rows)?;
    let rstd = bufs.read("rstd", args.rstd, n.rows)?;
    let dscale = bufs.write_opt("dscale", args.dscale, n.cols)?;
    let dbias = bufs.write_opt("dbias", args.dbias, n.cols)?;
    let need = cuda::backward_workspace_len(n.rows, n.cols, be.info().sm_count);
    let workspace = bufs.write("workspace", args.workspace, need)?;
    let addrs = BwdAddrs {
        x,
        dy,
        scale,
        mask,
        mean,
        rstd,
        dx,
        dscale,
        dbias,
        workspace,
    };
    norm::backward::<_, T>(&bufs.launcher(), spec, layout, d, addrs)
}
