//! Low-level operations on caller-owned device buffers: what a framework calls.
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

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};

use crate::cuda::params::{
    dtype_code, kind_code, WarpnormBwdParams, WarpnormFwdParams, WarpnormStridedBwdParams,
    WarpnormStridedFwdParams,
};
pub use crate::cuda::KernelGeneration;
use crate::cuda::{self, CudaBackend, Launch, OnStream};
use crate::{DType, Element, Error, NormConfig, NormKind, Result};

/// What the kernels compute: the part of a [`NormConfig`] that reaches the GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormSpec {
    pub kind: NormKind,
    pub eps: f32,
    /// flax `use_fast_variance`: `E[x^2] - E[x]^2` (clamped at 0) instead of the two-pass form.
    pub fast_variance: bool,
    /// Which kernels run the call; `None`: the `WARPNORM_KERNELS` environment variable
    /// (`v1` or `v2`), else v1.
    pub kernels: Option<KernelGeneration>,
}

impl NormSpec {
    pub fn from_config(cfg: &NormConfig) -> Self {
        Self {
            kind: cfg.kind(),
            eps: cfg.eps() as f32,
            fast_variance: cfg.fast_variance(),
            kernels: None,
        }
    }

    /// The same spec run by the kernels of `generation`.
    pub fn with_kernels(self, generation: KernelGeneration) -> Self {
        Self {
            kernels: Some(generation),
            ..self
        }
    }

    /// The generation of kernels a call with this spec runs; an error when it comes from
    /// a `WARPNORM_KERNELS` that names none.
    pub fn kernel_generation(&self) -> Result<KernelGeneration> {
        self.kernels.map_or_else(KernelGeneration::from_env, Ok)
    }

    fn validate(&self) -> Result<()> {
        crate::config::epsilon_f32(self.eps.into())?;
        self.kernel_generation().map(drop)
    }
}

/// How the normalised axis sits in memory (in elements, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `rows` rows of `cols` elements; row r of x (and dx) starts at `r * x_stride`, of y
    /// (and dy) at `r * y_stride`. A mask, when given, is a contiguous `[rows, cols]`.
    Rows {
        rows: usize,
        cols: usize,
        x_stride: usize,
        y_stride: usize,
    },
    /// A contiguous `[outer, cols, inner]` normalised over `cols` (channels-first, e.g.
    /// `[N, C, H*W]` over C), without a transpose. Statistics are `[outer, inner]`.
    ChannelsFirst {
        outer: usize,
        cols: usize,
        inner: usize,
    },
}

impl Layout {
    /// Contiguous rows.
    pub fn rows(rows: usize, cols: usize) -> Self {
        Layout::Rows {
            rows,
            cols,
            x_stride: cols,
            y_stride: cols,
        }
    }

    /// Number of normalised rows (= entries of mean and rstd). Saturates at `usize::MAX`
    /// for a channels-first layout whose `outer * inner` overflows, which every call
    /// rejects.
    pub fn num_rows(&self) -> usize {
        match *self {
            Layout::Rows { rows, .. } => rows,
            Layout::ChannelsFirst { outer, inner, .. } => outer.saturating_mul(inner),
        }
    }

    /// Length of the normalised axis.
    pub fn cols(&self) -> usize {
        match *self {
            Layout::Rows { cols, .. } | Layout::ChannelsFirst { cols, .. } => cols,
        }
    }

    /// Checks the layout and computes, with checked arithmetic, how many elements each
    /// buffer of a call must hold. Every extent also fits the kernels' signed 64-bit
    /// offsets, so no index a kernel forms from it can wrap.
    pub(crate) fn extents(&self) -> Result<Extents> {
        let bad = |msg: String| {
            Err(Error::Shape {
                what: "layout",
                expected: msg,
                got: format!("{self:?}"),
            })
        };
        let cols = self.cols();
        if cols == 0 {
            return bad("cols >= 1".into());
        }
        if cols > i32::MAX as usize {
            return bad("cols < 2^31".into());
        }
        let (x_stride, y_stride) = strides(self);
        if x_stride < cols || y_stride < cols {
            return bad(format!("row strides >= cols ({cols})"));
        }
        let too_large = |what: &'static str| Error::TooLarge {
            what,
            msg: format!("{self:?} spans more than 2^63 - 1 elements"),
        };
        let fits = |what: &'static str, n: Option<usize>| {
            n.filter(|&n| n <= i64::MAX as usize)
                .ok_or_else(|| too_large(what))
        };
        let (rows, elems) = match *self {
            Layout::Rows { rows, .. } => (rows, rows.checked_mul(cols)),
            Layout::ChannelsFirst { outer, inner, .. } => {
                let rows = fits("layout rows (outer * inner)", outer.checked_mul(inner))?;
                (rows, rows.checked_mul(cols))
            }
        };
        // The last row starts `stride` elements after the one before it and holds `cols`.
        let span = |stride: usize| match rows {
            0 => Some(0),
            _ => (rows - 1).checked_mul(stride)?.checked_add(cols),
        };
        Ok(Extents {
            rows: fits("layout rows", Some(rows))?,
            cols,
            x: fits("x (rows at x_stride)", span(x_stride))?,
            y: fits("y (rows at y_stride)", span(y_stride))?,
            mask: fits("mask (rows * cols)", elems)?,
        })
    }
}

/// Elements each buffer of a call on a checked [`Layout`] must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extents {
    /// Rows, and the entries of mean and rstd.
    pub rows: usize,
    /// The normalised axis, and the entries of scale, bias, dscale and dbias.
    pub cols: usize,
    /// x and dx.
    pub x: usize,
    /// y and dy.
    pub y: usize,
    /// A contiguous `[rows, cols]` mask.
    pub mask: usize,
}

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
    /// At least [`backward_workspace_len`] f32: per-CTA partial sums of dscale / dbias.
    pub workspace: &'a mut dyn DevicePtrMut<f32>,
}

/// f32 elements of workspace a [`backward`] call needs on this device.
pub fn backward_workspace_len(be: &CudaBackend, layout: &Layout) -> usize {
    cuda::backward_workspace_len(layout.num_rows(), layout.cols(), be.info().sm_count)
}

fn short(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
    }
}

fn dtypes<T: Element, P: Element, O: Element>() -> Result<cuda::Dtypes> {
    let (x, p, o) = (T::DTYPE, P::DTYPE, O::DTYPE);
    if !(p == x || p == DType::F32) || !(o == x || o == DType::F32) {
        return Err(Error::Unsupported(format!(
            "x {x} with parameters {p} and output {o}: parameters and output must each be {x} or float32"
        )));
    }
    Ok(cuda::Dtypes {
        x: short(x),
        param: short(p),
        out: short(o),
    })
}

/// Device addresses of one call's buffers, with cudarc's stream-ordering guards kept
/// alive until the launch has been enqueued (dropping a guard records the buffer's use on
/// the stream, which must come after the kernel that uses it).
struct Buffers<'a> {
    be: &'a CudaBackend,
    stream: &'a CudaStream,
    guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> Buffers<'a> {
    fn new(be: &'a CudaBackend, stream: &'a CudaStream) -> Self {
        Buffers {
            be,
            stream,
            guards: Vec::new(),
        }
    }

    /// Checks a read-only buffer (same CUDA context, at least `need` elements).
    fn read<T>(
        &mut self,
        what: &'static str,
        buf: &'a dyn DevicePtr<T>,
        need: usize,
    ) -> Result<u64> {
        check_buffer(self.be, what, buf.stream(), buf.len(), need)?;
        let (ptr, guard) = buf.device_ptr(self.stream);
        self.guards.push(guard);
        Ok(ptr)
    }

    /// Checks a buffer the call writes.
    fn write<'b: 'a, T>(
        &mut self,
        what: &'static str,
        buf: &'a mut (dyn DevicePtrMut<T> + 'b),
        need: usize,
    ) -> Result<u64> {
        check_buffer(self.be, what, buf.stream(), buf.len(), need)?;
        let (ptr, guard) = buf.device_ptr_mut(self.stream);
        self.guards.push(guard);
        Ok(ptr)
    }

    fn read_opt<T>(
        &mut self,
        what: &'static str,
        buf: Option<&'a dyn DevicePtr<T>>,
        need: usize,
    ) -> Result<u64> {
        buf.map_or(Ok(0), |b| self.read(what, b, need))
    }

    fn write_opt<'b: 'a, T>(
        &mut self,
        what: &'static str,
        buf: Option<&'a mut (dyn DevicePtrMut<T> + 'b)>,
        need: usize,
    ) -> Result<Option<u64>> {
        buf.map(|b| self.write(what, b, need)).transpose()
    }
}

fn check_mask_layout(has_mask: bool, layout: &Layout) -> Result<()> {
    if has_mask && matches!(layout, Layout::ChannelsFirst { .. }) {
        return Err(Error::Unsupported(
            "a mask with the channels-first layout (the strided kernels take none)".into(),
        ));
    }
    Ok(())
}

fn check_buffer(
    be: &CudaBackend,
    what: &'static str,
    owner: &Arc<CudaStream>,
    len: usize,
    need: usize,
) -> Result<()> {
    if !Arc::ptr_eq(owner.context(), be.context()) {
        return Err(Error::Unsupported(format!(
            "`{what}` lives on another device than cuda:{}",
            be.info().ordinal
        )));
    }
    check_len(what, len, need)
}

/// A buffer of `len` elements where the call needs `need`.
pub(crate) fn check_len(what: &'static str, len: usize, need: usize) -> Result<()> {
    if len < need {
        return Err(Error::Shape {
            what,
            expected: format!("at least {need} elements"),
            got: format!("{len} elements"),
        });
    }
    Ok(())
}

/// The widest vector (elements) every address and stride allows: 16 bytes of x's dtype
/// when all are 16-byte aligned and the row length divides evenly, else 1.
fn vector_width(elem_bytes: usize, cols: usize, strides: &[usize], addrs: &[u64]) -> u32 {
    let vec = 16 / elem_bytes;
    let aligned = cols.is_multiple_of(vec)
        && strides.iter().all(|s| s % vec == 0)
        && addrs.iter().all(|a| a % 16 == 0);
    if aligned {
        vec as u32
    } else {
        1
    }
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
    let mut bufs = Buffers::new(be, stream);
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
    forward_core::<_, T>(&OnStream { be, stream }, spec, layout, d, addrs)
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
    let mut bufs = Buffers::new(be, stream);
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
        workspace_len: need,
    };
    backward_core::<_, T>(&OnStream { be, stream }, spec, layout, d, addrs)
}

/// Checked addresses of a forward's buffers (0 = absent).
pub(crate) struct FwdAddrs {
    pub x: u64,
    pub y: u64,
    pub scale: u64,
    pub bias: u64,
    pub mask: u64,
    pub mean: u64,
    pub rstd: u64,
}

/// Checked addresses of a backward's buffers.
pub(crate) struct BwdAddrs {
    pub x: u64,
    pub dy: u64,
    pub scale: u64,
    pub mask: u64,
    pub mean: u64,
    pub rstd: u64,
    pub dx: u64,
    pub dscale: Option<u64>,
    pub dbias: Option<u64>,
    pub workspace: u64,
    pub workspace_len: usize,
}

/// The row strides of x (and dx) and of y (and dy).
pub(crate) fn strides(layout: &Layout) -> (usize, usize) {
    match *layout {
        Layout::Rows {
            x_stride, y_stride, ..
        } => (x_stride, y_stride),
        Layout::ChannelsFirst { cols, .. } => (cols, cols),
    }
}

/// Checks what does not depend on where the buffers live; returns the kernels' dtypes
/// and the elements each buffer must hold.
pub(crate) fn check_call<T: Element, P: Element, O: Element>(
    spec: Option<&NormSpec>,
    layout: &Layout,
    has_mask: bool,
) -> Result<(cuda::Dtypes, Extents)> {
    if let Some(spec) = spec {
        spec.validate()?;
    }
    let extents = layout.extents()?;
    check_mask_layout(has_mask, layout)?;
    Ok((dtypes::<T, P, O>()?, extents))
}

/// Builds the parameter struct of a checked forward and launches it.
pub(crate) fn forward_core<L: Launch, T: Element>(
    l: &L,
    spec: &NormSpec,
    layout: Layout,
    d: cuda::Dtypes,
    a: FwdAddrs,
) -> Result<()> {
    let (rows, cols) = (layout.num_rows(), layout.cols());
    if rows == 0 {
        return Ok(());
    }
    let (x_stride, y_stride) = strides(&layout);
    match layout {
        Layout::Rows { .. } => {
            // Param pointers are read with the same vector width as x.
            let vec = vector_width(
                T::DTYPE.size(),
                cols,
                &[x_stride, y_stride],
                &[a.x, a.y, a.scale, a.bias],
            );
            let params = WarpnormFwdParams {
                x: a.x as *const _,
                y: a.y as *mut _,
                scale: a.scale as *const _,
                bias: a.bias as *const _,
                mask: a.mask as *const u8,
                mean: a.mean as *mut f32,
                rstd: a.rstd as *mut f32,
                rows: rows as _,
                cols: cols as _,
                x_stride: x_stride as _,
                y_stride: y_stride as _,
                mask_stride: cols as _,
                eps: spec.eps,
                kind: kind_code(spec.kind),
                fast_variance: spec.fast_variance as i32,
                param_dtype: dtype_code(d.param),
                out_dtype: dtype_code(d.out),
            };
            let b = cuda::FwdBuffers {
                params,
                dtypes: d,
                vec,
                elem_bytes: T::DTYPE.size() as u32,
                generation: spec.kernel_generation()?,
            };
            cuda::forward_rows(l, &b)
        }
        Layout::ChannelsFirst { outer, inner, .. } => {
            let params = WarpnormStridedFwdParams {
                x: a.x as *const _,
                y: a.y as *mut _,
                scale: a.scale as *const _,
                bias: a.bias as *const _,
                mean: a.mean as *mut f32,
                rstd: a.rstd as *mut f32,
                outer: outer as _,
                cols: cols as _,
                inner: inner as _,
                eps: spec.eps,
                kind: kind_code(spec.kind),
                fast_variance: spec.fast_variance as i32,
                param_dtype: dtype_code(d.param),
                out_dtype: dtype_code(d.out),
            };
            cuda::forward_strided(l, &params, d)
        }
    }
}

/// Builds the parameter structs of a checked backward and launches it.
pub(crate) fn backward_core<L: Launch, T: Element>(
    l: &L,
    spec: &NormSpec,
    layout: Layout,
    d: cuda::Dtypes,
    a: BwdAddrs,
) -> Result<()> {
    let (rows, cols) = (layout.num_rows(), layout.cols());
    let (x_stride, y_stride) = strides(&layout);
    let half = (a.workspace_len / 2) as u64 * 4;
    let (partial_dscale, partial_dbias) = (a.workspace, a.workspace + half);
    let kind = kind_code(spec.kind);
    let (param_dtype, out_dtype) = (dtype_code(d.param), dtype_code(d.out));
    let generation = spec.kernel_generation()?;
    let param_grads = |params: WarpnormBwdParams, vec: u32| cuda::BwdBuffers {
        params,
        dtypes: d,
        vec,
        dscale: a.dscale,
        dbias: a.dbias,
        generation,
    };
    match layout {
        // No rows (either layout): backward_rows only zeroes dscale / dbias.
        _ if rows == 0 => {
            let params = WarpnormBwdParams {
                cols: cols as _,
                ..Default::default()
            };
            cuda::backward_rows(l, &param_grads(params, 1))
        }
        Layout::Rows { .. } => {
            let vec = vector_width(
                T::DTYPE.size(),
                cols,
                &[x_stride, y_stride],
                &[a.x, a.dy, a.dx, a.scale],
            );
            let params = WarpnormBwdParams {
                x: a.x as *const _,
                dy: a.dy as *const _,
                scale: a.scale as *const _,
                mask: a.mask as *const u8,
                mean: a.mean as *const f32,
                rstd: a.rstd as *const f32,
                dx: a.dx as *mut _,
                partial_dscale: partial_dscale as *mut f32,
                partial_dbias: partial_dbias as *mut f32,
                rows: rows as _,
                cols: cols as _,
                x_stride: x_stride as _,
                dy_stride: y_stride as _,
                dx_stride: x_stride as _,
                mask_stride: cols as _,
                kind,
                param_dtype,
                out_dtype,
            };
            cuda::backward_rows(l, &param_grads(params, vec))
        }
        Layout::ChannelsFirst { outer, inner, .. } => {
            let params = WarpnormStridedBwdParams {
                x: a.x as *const _,
                dy: a.dy as *const _,
                scale: a.scale as *const _,
                mean: a.mean as *const f32,
                rstd: a.rstd as *const f32,
                dx: a.dx as *mut _,
                partial_dscale: partial_dscale as *mut f32,
                partial_dbias: partial_dbias as *mut f32,
                outer: outer as _,
                cols: cols as _,
                inner: inner as _,
                kind,
                param_dtype,
                out_dtype,
            };
            let totals = param_grads(
                WarpnormBwdParams {
                    cols: cols as _,
                    ..Default::default()
                },
                1,
            );
            cuda::backward_strided(l, &params, &totals)
        }
    }
}
