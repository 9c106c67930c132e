//! The launches of the sharded-normalization kernels (`kernels/sharded.cu`).
//!
//! Each function turns typed arguments into the kernel's params.h struct and launches it
//! through a [`Launch`], like the single-device kernels of `norm.rs`: on a GPU stream, or
//! on the CPU emulation. Callers ([`crate::sharded`], [`crate::dist`], the emulator's
//! host API) check every buffer's length and CUDA context first and pass addresses (0 for
//! an absent buffer) whose stream-ordering guards they keep alive until these functions
//! return. Every shard is a [`Layout::Rows`]: row r of x and dx at `r * x_stride`, of y
//! and dy at `r * y_stride`; masks, statistics and sums are contiguous.

use std::ffi::c_void;

use super::launch::{launch_config, Launch};
use super::norm::finalize_param_grads;
use super::params::{
    kind_code, WarpnormAccumulateParams, WarpnormCastParams, WarpnormShardApplyParams,
    WarpnormShardBwdParams, WarpnormShardParamGradsParams, WarpnormShardStats,
    WarpnormShardStatsParams, WARPNORM_SHARD_FLAT_THREADS, WARPNORM_SHARD_ROW_THREADS,
};
use super::tiers::sharded as names;
use super::Dtypes;
use crate::layout::{strides, Layout};
use crate::shard_stats::StatsMode;
use crate::{DType, NormKind, Result};

/// Threads of a CTA of the warp-per-row kernels, and its warps.
const ROW_THREADS: u32 = WARPNORM_SHARD_ROW_THREADS;
const ROW_WARPS: u64 = ROW_THREADS as u64 / 32;
/// Threads of the element-wise and column kernels.
const FLAT_THREADS: u32 = WARPNORM_SHARD_FLAT_THREADS;
/// Grids stride over their work beyond this many CTAs per SM.
const CTAS_PER_SM: u64 = 32;
/// The largest `gridDim.y` (row chunks of the parameter gradients).
const MAX_CHUNKS: u64 = 65_535;

/// The `mode` field of the statistics' parameter structs (`enum WarpnormShardStats`).
const fn mode_code(mode: StatsMode) -> i32 {
    match mode {
        StatsMode::Moments => WarpnormShardStats::WARPNORM_SHARD_MOMENTS as i32,
        StatsMode::Means => WarpnormShardStats::WARPNORM_SHARD_MEANS as i32,
    }
}

/// Rows, columns and the row strides of x (and dx) and y (and dy) of a shard.
struct Shape {
    rows: i64,
    cols: i64,
    x_stride: i64,
    y_stride: i64,
}

/// The shape of a shard laid out as `layout`; the kernels take only rows.
fn shape(layout: Layout) -> Shape {
    let (x_stride, y_stride) = strides(&layout);
    Shape {
        rows: layout.num_rows() as i64,
        cols: layout.cols() as i64,
        x_stride: x_stride as i64,
        y_stride: y_stride as i64,
    }
}

/// A warp-per-row kernel over `rows` rows: its CTAs, each of [`ROW_THREADS`].
fn row_config<L: Launch>(l: &L, rows: i64) -> cudarc::driver::LaunchConfig {
    let needed = (rows.max(0) as u64).div_ceil(ROW_WARPS).max(1);
    let cap = l.sm_count() as u64 * CTAS_PER_SM;
    launch_config((needed.min(cap) as u32, 1), ROW_THREADS, 0)
}

/// An element-wise kernel over `n` elements: its CTAs, each of [`FLAT_THREADS`].
fn flat_config<L: Launch>(l: &L, n: i64) -> cudarc::driver::LaunchConfig {
    let needed = (n.max(0) as u64).div_ceil(FLAT_THREADS as u64).max(1);
    let cap = l.sm_count() as u64 * CTAS_PER_SM;
    launch_config((needed.min(cap) as u32, 1), FLAT_THREADS, 0)
}

fn read(addr: u64) -> *const c_void {
    addr as *const c_void
}

fn write(addr: u64) -> *mut c_void {
    addr as *mut c_void
}

/// Per-shard row statistics of x (a shard laid out as `layout`) over the elements `mask`
/// selects (`[rows, cols]` u8, contiguous; 0: every element) into `out`
/// (`rows * mode.floats_per_row()` f32).
#[allow(clippy::too_many_arguments)]
pub(crate) fn row_stats<L: Launch>(
    l: &L,
    x_dtype: DType,
    layout: Layout,
    x: u64,
    mask: u64,
    out: u64,
    mode: StatsMode,
) -> Result<()> {
    let s = shape(layout);
    let p = WarpnormShardStatsParams {
        x: read(x),
        mask: mask as *const u8,
        out: out as *mut f32,
        rows: s.rows,
        cols: s.cols,
        x_stride: s.x_stride,
        mask_stride: s.cols,
        mode: mode_code(mode),
    };
    let name = names::row_stats(x_dtype.short_name());
    l.launch("sharded", &name, &p, row_config(l, s.rows))
}

/// Addresses and options of [`apply`] (0 for an absent optional buffer).
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
    pub group: i32,
    pub eps: f32,
    pub kind: NormKind,
    pub mode: StatsMode,
}

/// Combines the group's statistics in a fixed order and normalises the shard.
pub(crate) fn apply<L: Launch>(l: &L, d: Dtypes, layout: Layout, a: &ApplyArgs) -> Result<()> {
    let s = shape(layout);
    let p = WarpnormShardApplyParams {
        x: read(a.x),
        y: write(a.y),
        scale: read(a.scale),
        bias: read(a.bias),
        stats: a.stats as *const f32,
        mean: a.mean as *mut f32,
        rstd: a.rstd as *mut f32,
        dvar: a.dvar as *mut f32,
        rows: s.rows,
        cols: s.cols,
        x_stride: s.x_stride,
        y_stride: s.y_stride,
        group: a.group,
        eps: a.eps,
        kind: kind_code(a.kind),
        mode: mode_code(a.mode),
    };
    let (x, param, out) = d.short_names();
    let name = names::apply(x, param, out);
    l.launch("sharded", &name, &p, row_config(l, s.rows))
}

/// Addresses and options of [`bwd_sums`] and [`dx`] (0 for an absent buffer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BwdArgs {
    pub x: u64,
    pub dy: u64,
    pub scale: u64,
    pub mean: u64,
    pub rstd: u64,
    /// The fast variance's clamp derivative per row, or 0 (then 1).
    pub dvar: u64,
    /// flax's mask (`[rows, cols]` u8, contiguous) for dx, or 0.
    pub mask: u64,
    /// `[rows][2]`: the shard's sums (bwd_sums) or the group's (dx).
    pub sums: u64,
    pub dx: u64,
    /// The weight of one element in the group mean: `1 / (group * cols)`, or `1 / group`
    /// with a mask (the kernel divides by each row's count of selected elements).
    pub weight: f32,
    pub kind: NormKind,
}

impl BwdArgs {
    fn params(&self, s: &Shape) -> WarpnormShardBwdParams {
        WarpnormShardBwdParams {
            x: read(self.x),
            dy: read(self.dy),
            scale: read(self.scale),
            mean: self.mean as *const f32,
            rstd: self.rstd as *const f32,
            dvar: self.dvar as *const f32,
            mask: self.mask as *const u8,
            sums: self.sums as *mut f32,
            dx: write(self.dx),
            rows: s.rows,
            cols: s.cols,
            x_stride: s.x_stride,
            dy_stride: s.y_stride,
            dx_stride: s.x_stride,
            mask_stride: s.cols,
            weight: self.weight,
            kind: kind_code(self.kind),
        }
    }
}

/// [`BwdArgs::weight`] of dx for a group of `group` ranks and shards of `cols` features.
pub(crate) fn dx_weight(group: usize, cols: usize, masked: bool) -> f32 {
    if masked {
        // The kernel divides this by each row's count of selected elements.
        (1.0 / group as f64) as f32
    } else {
        (1.0 / (group as f64 * cols as f64)) as f32
    }
}

/// The shard's `{sum g, sum g * xhat}` per row into `a.sums`.
pub(crate) fn bwd_sums<L: Launch>(l: &L, d: Dtypes, layout: Layout, a: &BwdArgs) -> Result<()> {
    let (x, param, out) = d.short_names();
    launch_bwd_rows(l, &names::bwd_sums(x, param, out), layout, a)
}

/// dx from the group's sums in `a.sums`.
pub(crate) fn dx<L: Launch>(l: &L, d: Dtypes, layout: Layout, a: &BwdArgs) -> Result<()> {
    let (x, param, out) = d.short_names();
    launch_bwd_rows(l, &names::dx(x, param, out), layout, a)
}

/// A warp-per-row backward kernel (`bwd_sums`, `dx`) over the shard's rows.
fn launch_bwd_rows<L: Launch>(l: &L, name: &str, layout: Layout, a: &BwdArgs) -> Result<()> {
    let s = shape(layout);
    l.launch("sharded", name, &a.params(&s), row_config(l, s.rows))
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

/// f32 elements of workspace [`param_grads`] needs on a device of `sm_count` SMs: two
/// sets of per-chunk partial rows.
pub(crate) fn param_grads_workspace_len(layout: Layout, sm_count: u32) -> usize {
    let s = shape(layout);
    let (_, chunks) = param_chunks(s.rows, s.cols, sm_count);
    2 * chunks as usize * s.cols.max(0) as usize
}

/// Addresses of [`param_grads`]; `dscale` / `dbias` are the outputs (param dtype).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParamGradArgs {
    pub x: u64,
    pub dy: u64,
    pub mean: u64,
    pub rstd: u64,
    pub kind: NormKind,
    /// At least [`param_grads_workspace_len`] f32.
    pub workspace: u64,
    pub dscale: Option<u64>,
    pub dbias: Option<u64>,
}

/// dscale / dbias of the shard's own parameters: per-chunk partial sums, then
/// `finalize_partials` adds the chunks in order (bitwise reproducible on one device).
pub(crate) fn param_grads<L: Launch>(
    l: &L,
    d: Dtypes,
    layout: Layout,
    a: &ParamGradArgs,
) -> Result<()> {
    if a.dscale.is_none() && a.dbias.is_none() {
        return Ok(());
    }
    let s = shape(layout);
    let (x, _, out) = d.short_names();
    let (chunk_rows, chunks) = param_chunks(s.rows, s.cols, l.sm_count());
    let half = chunks * s.cols as u64 * 4;
    let partial_dscale = a.dscale.map_or(0, |_| a.workspace);
    let partial_dbias = a.dbias.map_or(0, |_| a.workspace + half);
    let p = WarpnormShardParamGradsParams {
        x: read(a.x),
        dy: read(a.dy),
        mean: a.mean as *const f32,
        rstd: a.rstd as *const f32,
        partial_dscale: partial_dscale as *mut f32,
        partial_dbias: partial_dbias as *mut f32,
        rows: s.rows,
        cols: s.cols,
        x_stride: s.x_stride,
        dy_stride: s.y_stride,
        chunk_rows,
        kind: kind_code(a.kind),
    };
    let col_blocks = (s.cols as u64)
        .div_ceil(FLAT_THREADS as u64)
        .min(MAX_CHUNKS) as u32;
    let cfg = launch_config((col_blocks, chunks as u32), FLAT_THREADS, 0);
    l.launch("sharded", &names::param_grads(x, out), &p, cfg)?;
    let outputs = [(partial_dscale, a.dscale), (partial_dbias, a.dbias)];
    finalize_param_grads(l, d.param, s.cols, chunks as i32, outputs)
}

/// `dst[i] = src[i] / divisor` for `n` elements, converted through f32 (`src` may be `dst`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn cast_scale<L: Launch>(
    l: &L,
    src_dtype: DType,
    dst_dtype: DType,
    src: u64,
    dst: u64,
    n: i64,
    divisor: f32,
) -> Result<()> {
    let p = WarpnormCastParams {
        src: read(src),
        dst: write(dst),
        n,
        divisor,
    };
    let name = names::cast_scale(src_dtype.short_name(), dst_dtype.short_name());
    l.launch("sharded", &name, &p, flat_config(l, n))
}

/// `dst[i] += src[i]` for `n` f32 (`dst` and `src` distinct).
pub(crate) fn accumulate<L: Launch>(l: &L, dst: u64, src: u64, n: i64) -> Result<()> {
    let p = WarpnormAccumulateParams {
        dst: dst as *mut f32,
        src: src as *const f32,
        n,
    };
    l.launch("sharded", &names::accumulate(), &p, flat_config(l, n))
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
                    let layout = Layout::rows(rows as usize, cols as usize);
                    assert_eq!(
                        param_grads_workspace_len(layout, sms),
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
        assert_eq!(mode_code(StatsMode::Moments), 0);
        assert_eq!(mode_code(StatsMode::Means), 1);
        assert_eq!(kind_code(NormKind::LayerNorm), 0);
        assert_eq!(kind_code(NormKind::RmsNorm), 1);
    }
}
