//! The launches of the sharded-normalization kernels (`kernels/sharded.cu`): the only
//! `unsafe` code of sharded normalization.
//!
//! Callers ([`crate::sharded`], [`crate::dist`]) check every buffer's length and CUDA
//! context first and pass device addresses whose stream-ordering guards they keep alive
//! until these functions return. The kernels take their arguments one by one, so each
//! launch pushes them in exactly the order of the kernel's signature (repeated above each
//! launch) and with the same sizes: device pointers as `u64` (`CUdeviceptr`, 8 bytes like a
//! pointer), `long long` as `i64`, `int` as `i32`, `float` as `f32`. A null pointer is 0.

use cudarc::driver::{CudaStream, LaunchConfig, PushKernelArg};

use super::params::WarpnormFinalizeParams;
use super::tiers::{expr, sharded as names};
use super::{CudaBackend, Dtypes};
use crate::{NormKind, Result};

/// `kShardThreads`: a CTA of the warp-per-row kernels holds this many threads (4 warps).
const ROW_THREADS: u32 = 128;
const ROW_WARPS: u64 = ROW_THREADS as u64 / 32;
/// Threads of the element-wise and column kernels.
const FLAT_THREADS: u32 = 256;
/// Grids stride over their work beyond this many CTAs per SM.
const CTAS_PER_SM: u64 = 32;
/// The largest `gridDim.y` (row chunks of the parameter gradients).
const MAX_CHUNKS: u64 = 65_535;

/// A `[rows, cols]` view of one shard.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows {
    pub rows: i64,
    pub cols: i64,
}

/// What the per-shard statistics are and how the group combines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatsMode {
    /// `{n, mean, M2}` per row, all-gathered and merged with Chan's formula (exact variance).
    Moments,
    /// `{mean, mean of squares}` per row, all-reduced (fast variance, RMSNorm).
    Means,
}

impl StatsMode {
    /// f32 values each rank contributes per row.
    pub(crate) const fn floats_per_row(self) -> usize {
        match self {
            StatsMode::Moments => 3,
            StatsMode::Means => 2,
        }
    }
    /// `kShardMoments` / `kShardMeans`.
    const fn code(self) -> i32 {
        match self {
            StatsMode::Moments => 0,
            StatsMode::Means => 1,
        }
    }
}

/// `enum WarpnormKind` of params.h.
pub(crate) const fn kind_code(kind: NormKind) -> i32 {
    match kind {
        NormKind::LayerNorm => 0,
        NormKind::RmsNorm => 1,
        NormKind::RmsScaling => 2,
    }
}

fn config(grid: (u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// CTAs of a warp-per-row kernel over `rows` rows.
fn row_grid(be: &CudaBackend, rows: i64) -> (u32, u32) {
    let needed = (rows.max(0) as u64).div_ceil(ROW_WARPS).max(1);
    let cap = be.info.sm_count as u64 * CTAS_PER_SM;
    (needed.min(cap) as u32, 1)
}

/// CTAs of an element-wise kernel over `n` elements.
fn flat_grid(be: &CudaBackend, n: i64) -> (u32, u32) {
    let needed = (n.max(0) as u64).div_ceil(FLAT_THREADS as u64).max(1);
    let cap = be.info.sm_count as u64 * CTAS_PER_SM;
    (needed.min(cap) as u32, 1)
}

/// Per-shard row statistics of x (`[rows, cols]` at `x_stride`) into `out`
/// (`rows * mode.floats_per_row()` f32).
#[allow(clippy::too_many_arguments)]
pub(crate) fn row_stats(
    be: &CudaBackend,
    stream: &CudaStream,
    x_dtype: &str,
    x: u64,
    x_stride: i64,
    out: u64,
    shape: Rows,
    mode: StatsMode,
) -> Result<()> {
    let f = be.function("sharded", &names::row_stats(x_dtype))?;
    let mode = mode.code();
    // shard_row_stats<T>(const T* x, float* out, long long rows, long long cols,
    //                    long long x_stride, int mode)
    // SAFETY: the caller checked that x holds `rows` rows of `cols` elements at `x_stride`
    // and `out` rows * floats_per_row f32, both in this stream's context; the kernel reads
    // and writes only those.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&x)
            .arg(&out)
            .arg(&shape.rows)
            .arg(&shape.cols)
            .arg(&x_stride)
            .arg(&mode)
            .launch(config(row_grid(be, shape.rows), ROW_THREADS))
    }?;
    Ok(())
}

/// Device addresses and options of [`apply`] (0 for an absent optional buffer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ApplyArgs {
    pub x: u64,
    pub y: u64,
    pub scale: u64,
    pub bias: u64,
    /// Moments: `[group][rows][3]`; means: `[rows][2]` summed over the group.
    pub stats: u64,
    pub mean: u64,
    pub rstd: u64,
    pub dvar: u64,
    pub x_stride: i64,
    pub y_stride: i64,
    pub group: i32,
    pub eps: f32,
    pub kind: NormKind,
    pub mode: StatsMode,
}

/// Combines the group's statistics in a fixed order and normalises the shard.
pub(crate) fn apply(
    be: &CudaBackend,
    stream: &CudaStream,
    d: Dtypes,
    shape: Rows,
    a: &ApplyArgs,
) -> Result<()> {
    let f = be.function("sharded", &names::apply(d.x, d.param, d.out))?;
    let (kind, mode) = (kind_code(a.kind), a.mode.code());
    // shard_apply<T, P, O>(const T* x, O* y, const P* scale, const P* bias,
    //     const float* stats, float* mean_out, float* rstd_out, float* dvar_out,
    //     long long rows, long long cols, long long x_stride, long long y_stride,
    //     int group, float eps, int kind, int mode)
    // SAFETY: the caller checked x / y (rows x cols at their strides), scale / bias (cols,
    // or 0), stats (rows * 3 * group or rows * 2 f32, written on this stream before) and
    // mean / rstd / dvar (rows f32, or 0); the kernel touches only those.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&a.x)
            .arg(&a.y)
            .arg(&a.scale)
            .arg(&a.bias)
            .arg(&a.stats)
            .arg(&a.mean)
            .arg(&a.rstd)
            .arg(&a.dvar)
            .arg(&shape.rows)
            .arg(&shape.cols)
            .arg(&a.x_stride)
            .arg(&a.y_stride)
            .arg(&a.group)
            .arg(&a.eps)
            .arg(&kind)
            .arg(&mode)
            .launch(config(row_grid(be, shape.rows), ROW_THREADS))
    }?;
    Ok(())
}

/// Device addresses and options of [`bwd_sums`] and [`dx`] (0 for an absent buffer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BwdArgs {
    pub x: u64,
    pub dy: u64,
    pub scale: u64,
    pub mean: u64,
    pub rstd: u64,
    /// The fast variance's clamp derivative per row, or 0 (then 1).
    pub dvar: u64,
    /// `[rows][2]`: the shard's sums (bwd_sums) or the group's (dx).
    pub sums: u64,
    pub dx: u64,
    pub x_stride: i64,
    pub dy_stride: i64,
    pub dx_stride: i64,
    /// The weight of one element in the group mean: `1 / (group * cols)`.
    pub weight: f32,
    pub kind: NormKind,
}

/// The shard's `{sum g, sum g * xhat}` per row into `a.sums`.
pub(crate) fn bwd_sums(
    be: &CudaBackend,
    stream: &CudaStream,
    d: Dtypes,
    shape: Rows,
    a: &BwdArgs,
) -> Result<()> {
    let f = be.function("sharded", &names::bwd_sums(d.x, d.param, d.out))?;
    let kind = kind_code(a.kind);
    // shard_bwd_sums<T, P, O>(const T* x, const O* dy, const P* scale, const float* mean,
    //     const float* rstd, float* sums, long long rows, long long cols,
    //     long long x_stride, long long dy_stride, int kind)
    // SAFETY: the caller checked x / dy (rows x cols at their strides), scale (cols or 0),
    // mean / rstd (rows f32) and sums (rows * 2 f32).
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&a.x)
            .arg(&a.dy)
            .arg(&a.scale)
            .arg(&a.mean)
            .arg(&a.rstd)
            .arg(&a.sums)
            .arg(&shape.rows)
            .arg(&shape.cols)
            .arg(&a.x_stride)
            .arg(&a.dy_stride)
            .arg(&kind)
            .launch(config(row_grid(be, shape.rows), ROW_THREADS))
    }?;
    Ok(())
}

/// dx from the group's sums in `a.sums`.
pub(crate) fn dx(
    be: &CudaBackend,
    stream: &CudaStream,
    d: Dtypes,
    shape: Rows,
    a: &BwdArgs,
) -> Result<()> {
    let f = be.function("sharded", &names::dx(d.x, d.param, d.out))?;
    let kind = kind_code(a.kind);
    // shard_dx<T, P, O>(const T* x, const O* dy, const P* scale, const float* mean,
    //     const float* rstd, const float* dvar, const float* sums, T* dx, long long rows,
    //     long long cols, long long x_stride, long long dy_stride, long long dx_stride,
    //     float weight, int kind)
    // SAFETY: as in bwd_sums, plus dvar (rows f32 or 0) and dx (rows x cols at dx_stride),
    // which the kernel writes and nothing else.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&a.x)
            .arg(&a.dy)
            .arg(&a.scale)
            .arg(&a.mean)
            .arg(&a.rstd)
            .arg(&a.dvar)
            .arg(&a.sums)
            .arg(&a.dx)
            .arg(&shape.rows)
            .arg(&shape.cols)
            .arg(&a.x_stride)
            .arg(&a.dy_stride)
            .arg(&a.dx_stride)
            .arg(&a.weight)
            .arg(&kind)
            .launch(config(row_grid(be, shape.rows), ROW_THREADS))
    }?;
    Ok(())
}

/// How the parameter gradients split rows into chunks: `(chunk_rows, chunks)`.
fn param_chunks(rows: i64, cols: i64, sm_count: u32) -> (i64, u64) {
    let rows = rows.max(1) as u64;
    let col_blocks = (cols.max(1) as u64).div_ceil(FLAT_THREADS as u64);
    // Enough CTAs to fill the device, each summing a contiguous run of rows.
    let wanted = (sm_count as u64 * 8)
        .div_ceil(col_blocks)
        .clamp(1, MAX_CHUNKS);
    let chunk_rows = rows.div_ceil(wanted.min(rows));
    (chunk_rows as i64, rows.div_ceil(chunk_rows))
}

/// f32 elements of workspace [`param_grads`] needs: two sets of per-chunk partial rows.
pub(crate) fn param_grads_workspace_len(rows: i64, cols: i64, sm_count: u32) -> usize {
    let (_, chunks) = param_chunks(rows, cols, sm_count);
    2 * chunks as usize * cols.max(0) as usize
}

/// Device addresses of [`param_grads`]; `dscale` / `dbias` are the outputs (param dtype).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParamGradArgs {
    pub x: u64,
    pub dy: u64,
    pub mean: u64,
    pub rstd: u64,
    pub x_stride: i64,
    pub dy_stride: i64,
    pub kind: NormKind,
    /// At least [`param_grads_workspace_len`] f32.
    pub workspace: u64,
    pub dscale: Option<u64>,
    pub dbias: Option<u64>,
}

/// dscale / dbias of the shard's own parameters: per-chunk partial sums, then
/// `finalize_partials` adds the chunks in order (bitwise reproducible on one device).
pub(crate) fn param_grads(
    be: &CudaBackend,
    stream: &CudaStream,
    d: Dtypes,
    shape: Rows,
    a: &ParamGradArgs,
) -> Result<()> {
    if a.dscale.is_none() && a.dbias.is_none() {
        return Ok(());
    }
    let (chunk_rows, chunks) = param_chunks(shape.rows, shape.cols, be.info.sm_count);
    let half = chunks * shape.cols as u64 * 4;
    let partial_dscale = a.dscale.map_or(0, |_| a.workspace);
    let partial_dbias = a.dbias.map_or(0, |_| a.workspace + half);
    let f = be.function("sharded", &names::param_grads(d.x, d.out))?;
    let kind = kind_code(a.kind);
    let col_blocks = (shape.cols as u64)
        .div_ceil(FLAT_THREADS as u64)
        .min(MAX_CHUNKS) as u32;
    // shard_param_grads<T, O>(const T* x, const O* dy, const float* mean,
    //     const float* rstd, float* partial_dscale, float* partial_dbias, long long rows,
    //     long long cols, long long x_stride, long long dy_stride, long long chunk_rows,
    //     int kind)
    // SAFETY: x / dy hold rows x cols at their strides, mean / rstd rows f32, and the
    // workspace 2 * chunks * cols f32 (caller checked); CTA row y writes only partial row y.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&a.x)
            .arg(&a.dy)
            .arg(&a.mean)
            .arg(&a.rstd)
            .arg(&partial_dscale)
            .arg(&partial_dbias)
            .arg(&shape.rows)
            .arg(&shape.cols)
            .arg(&a.x_stride)
            .arg(&a.dy_stride)
            .arg(&chunk_rows)
            .arg(&kind)
            .launch(config((col_blocks, chunks as u32), FLAT_THREADS))
    }?;
    let outputs = [(partial_dscale, a.dscale), (partial_dbias, a.dbias)];
    for (partial, out) in outputs {
        if let Some(out) = out {
            finalize(be, stream, d.param, partial, out, shape.cols, chunks as i32)?;
        }
    }
    Ok(())
}

/// `out[c] = sum over parts of partial[p * cols + c]` in part order, cast to `param`.
fn finalize(
    be: &CudaBackend,
    stream: &CudaStream,
    param: &str,
    partial: u64,
    out: u64,
    cols: i64,
    parts: i32,
) -> Result<()> {
    let f = be.function("layernorm_bwd", &expr::finalize(param))?;
    let p = WarpnormFinalizeParams {
        partial: partial as *const f32,
        out: out as *mut std::ffi::c_void,
        cols: cols as _,
        parts,
    };
    let grid = (cols as u64).div_ceil(256).clamp(1, 65_535) as u32;
    // SAFETY: `partial` holds `parts` rows of `cols` f32 written just before on this
    // stream; `out` holds `cols` elements of the param dtype (caller checked).
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&p)
            .launch(config((grid, 1), 256))
    }?;
    Ok(())
}

/// `dst[i] = src[i] / divisor` for `n` elements, converted through f32 (`src` may be `dst`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn cast_scale(
    be: &CudaBackend,
    stream: &CudaStream,
    src_dtype: &str,
    dst_dtype: &str,
    src: u64,
    dst: u64,
    n: i64,
    divisor: f32,
) -> Result<()> {
    let f = be.function("sharded", &names::cast_scale(src_dtype, dst_dtype))?;
    // cast_scale<S, D>(const S* src, D* dst, long long n, float divisor)
    // SAFETY: the caller checked that src and dst hold n elements of their dtypes in this
    // stream's context; each thread reads element i before writing element i.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&src)
            .arg(&dst)
            .arg(&n)
            .arg(&divisor)
            .launch(config(flat_grid(be, n), FLAT_THREADS))
    }?;
    Ok(())
}

/// `dst[i] += src[i]` for `n` f32.
pub(crate) fn accumulate(
    be: &CudaBackend,
    stream: &CudaStream,
    dst: u64,
    src: u64,
    n: i64,
) -> Result<()> {
    let f = be.function("sharded", &names::accumulate())?;
    // accumulate<float>(float* dst, const float* src, long long n)
    // SAFETY: the caller checked that dst and src are distinct buffers of at least n f32
    // in this stream's context.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&dst)
            .arg(&src)
            .arg(&n)
            .launch(config(flat_grid(be, n), FLAT_THREADS))
    }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_chunks_cover_every_row_once_and_fit_the_grid() {
        for rows in [1i64, 2, 7, 100, 4096, 1 << 20, 1 << 26] {
            for cols in [1i64, 7, 256, 1000, 1 << 16] {
                for sms in [1u32, 108, 132] {
                    let (chunk_rows, chunks) = param_chunks(rows, cols, sms);
                    assert!(chunk_rows >= 1 && (1..=MAX_CHUNKS).contains(&chunks));
                    // The last chunk starts inside the rows, and together they cover all.
                    assert!((chunks - 1) * (chunk_rows as u64) < rows as u64);
                    assert!(chunks * chunk_rows as u64 >= rows as u64);
                    assert_eq!(
                        param_grads_workspace_len(rows, cols, sms),
                        2 * chunks as usize * cols as usize
                    );
                }
            }
        }
    }

    #[test]
    fn every_launch_finds_its_kernel_in_every_image() {
        use super::super::kernels::{ImageKind, IMAGES};
        use super::super::tiers::{dtype_combos, sharded::CASTS};
        let images: Vec<_> = IMAGES.iter().filter(|i| i.source == "sharded").collect();
        let kinds: Vec<_> = images.iter().map(|i| (i.arch, i.kind)).collect();
        assert!(kinds.contains(&("sm_80", ImageKind::Cubin)), "{kinds:?}");
        assert!(kinds.contains(&("sm_90", ImageKind::Cubin)), "{kinds:?}");
        assert!(kinds.contains(&("compute_80", ImageKind::Ptx)), "{kinds:?}");
        let mut wanted = vec![names::accumulate()];
        for (x, p, o) in dtype_combos() {
            wanted.extend([
                names::row_stats(x),
                names::apply(x, p, o),
                names::bwd_sums(x, p, o),
                names::dx(x, p, o),
                names::param_grads(x, o),
            ]);
        }
        wanted.extend(CASTS.iter().map(|&(s, d)| names::cast_scale(s, d)));
        for image in images {
            for name in &wanted {
                assert!(
                    image
                        .names
                        .iter()
                        .any(|(e, lowered)| e == name && lowered.starts_with("_Z")),
                    "{name} missing from {}",
                    image.arch
                );
            }
        }
    }

    #[test]
    fn stats_layouts_match_the_kernels() {
        assert_eq!(StatsMode::Moments.floats_per_row(), 3);
        assert_eq!(StatsMode::Means.floats_per_row(), 2);
        assert_eq!(kind_code(NormKind::LayerNorm), 0);
        assert_eq!(kind_code(NormKind::RmsNorm), 1);
    }
}
