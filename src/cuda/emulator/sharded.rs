//! The sharded-normalization kernels (`kernels/sharded.cu`) on the CPU: the launches of
//! `cuda::sharded` (the parameter structs, grids and kernel names a GPU gets) on host
//! slices of one rank's shard. The collectives between the steps are the caller's: the
//! ranks' statistics all-gathered (moments) or summed (means), their backward sums summed.
//! Every slice is checked against the shard's `rows` x `cols` before anything runs.

use super::{addr, addr_mut, addr_opt, Emulator, EMULATED_SMS};
use crate::config::epsilon_f32;
use crate::cuda::sharded::{self as kernels, ApplyArgs, BwdArgs, ParamGradArgs};
use crate::cuda::Dtypes;
use crate::layout::Layout;
use crate::{DType, Element, NormConfig, Result};

pub use crate::shard_stats::StatsMode;

/// How the group combines the statistics of a sharded layer with config `cfg`.
pub fn stats_mode(cfg: &NormConfig) -> StatsMode {
    StatsMode::for_config(cfg)
}

/// Checks a `rows` x `cols` shard (contiguous) and its element count.
fn shard(rows: usize, cols: usize) -> Result<(Layout, usize)> {
    let layout = Layout::rows(rows, cols);
    let n = layout.extents()?;
    Ok((layout, n.x))
}

/// One rank's per-row statistics of `x` over the elements `mask` selects (all without
/// one) into `out` (`rows * mode.floats_per_row()` f32).
pub fn row_stats<T: Element>(
    rows: usize,
    cols: usize,
    x: &[T],
    mask: Option<&[u8]>,
    mode: StatsMode,
    out: &mut [f32],
) -> Result<()> {
    let (layout, n) = shard(rows, cols)?;
    let x = addr("x", x, n)?;
    let mask = addr_opt("mask", mask, n)?;
    let out = addr_mut("statistics", out, rows * mode.floats_per_row())?;
    if rows == 0 {
        return Ok(());
    }
    kernels::row_stats(&Emulator, T::DTYPE, layout, x, mask, out, mode)
}

/// One rank's buffers of the forward's second step (see [`apply`]).
pub struct HostApply<'a, T, P, O> {
    pub x: &'a [T],
    pub scale: Option<&'a [P]>,
    pub bias: Option<&'a [P]>,
    /// The group's statistics: moments `[group][rows][3]`, means `[rows][2]` summed.
    pub stats: &'a [f32],
    pub y: &'a mut [O],
    pub mean: &'a mut [f32],
    pub rstd: &'a mut [f32],
    /// The fast variance's clamp derivative, kept for the backward of a LayerNorm with
    /// `use_fast_variance`; `None` otherwise.
    pub dvar: Option<&'a mut [f32]>,
}

/// Combines the group's statistics (of `group` ranks) and normalises one rank's shard.
pub fn apply<T: Element, P: Element, O: Element>(
    cfg: &NormConfig,
    rows: usize,
    cols: usize,
    group: usize,
    a: HostApply<'_, T, P, O>,
) -> Result<()> {
    let d = Dtypes::of::<T, P, O>();
    d.check_compiled()?;
    let (layout, n) = shard(rows, cols)?;
    let mode = stats_mode(cfg);
    let stats_len = match mode {
        StatsMode::Moments => group * rows * mode.floats_per_row(),
        StatsMode::Means => rows * mode.floats_per_row(),
    };
    let args = ApplyArgs {
        x: addr("x", a.x, n)?,
        y: addr_mut("y", a.y, n)?,
        scale: addr_opt("scale", a.scale, cols)?,
        bias: addr_opt("bias", a.bias, cols)?,
        stats: addr("statistics", a.stats, stats_len)?,
        mean: addr_mut("mean", a.mean, rows)?,
        rstd: addr_mut("rstd", a.rstd, rows)?,
        dvar: a.dvar.map_or(Ok(0), |v| addr_mut("dvar", v, rows))?,
        group: i32::try_from(group).unwrap_or(i32::MAX),
        eps: epsilon_f32(cfg.eps())?,
        kind: cfg.kind(),
        mode,
    };
    if rows == 0 {
        return Ok(());
    }
    kernels::apply(&Emulator, d, layout, &args)
}

/// One rank's buffers of the backward (see [`bwd_sums`] and [`dx`]).
pub struct HostBackward<'a, T, P, O> {
    pub x: &'a [T],
    pub dy: &'a [O],
    pub scale: Option<&'a [P]>,
    pub mean: &'a [f32],
    pub rstd: &'a [f32],
    /// From [`HostApply::dvar`], for dx.
    pub dvar: Option<&'a [f32]>,
    /// flax's mask of the forward (`[rows, cols]` u8), for dx.
    pub mask: Option<&'a [u8]>,
}

/// One rank's `{sum g, sum g * xhat}` per row into `sums` (`[rows][2]`).
pub fn bwd_sums<T: Element, P: Element, O: Element>(
    cfg: &NormConfig,
    rows: usize,
    cols: usize,
    a: &HostBackward<'_, T, P, O>,
    sums: &mut [f32],
) -> Result<()> {
    let d = Dtypes::of::<T, P, O>();
    d.check_compiled()?;
    let (layout, n) = shard(rows, cols)?;
    let args = BwdArgs {
        sums: addr_mut("sums", sums, 2 * rows)?,
        dvar: 0,
        mask: 0,
        dx: 0,
        weight: 0.0,
        ..bwd_args(cfg, rows, cols, n, a)?
    };
    if rows == 0 {
        return Ok(());
    }
    kernels::bwd_sums(&Emulator, d, layout, &args)
}

/// One rank's dx from the group's (of `group` ranks) summed `sums` (`[rows][2]`).
pub fn dx<T: Element, P: Element, O: Element>(
    cfg: &NormConfig,
    rows: usize,
    cols: usize,
    group: usize,
    a: &HostBackward<'_, T, P, O>,
    sums: &[f32],
    dx: &mut [T],
) -> Result<()> {
    let d = Dtypes::of::<T, P, O>();
    d.check_compiled()?;
    let (layout, n) = shard(rows, cols)?;
    let args = BwdArgs {
        dvar: a.dvar.map_or(Ok(0), |v| addr("dvar", v, rows))?,
        mask: addr_opt("mask", a.mask, n)?,
        sums: addr("sums", sums, 2 * rows)? as u64,
        dx: addr_mut("dx", dx, n)?,
        weight: kernels::dx_weight(group, cols, a.mask.is_some()),
        ..bwd_args(cfg, rows, cols, n, a)?
    };
    if rows == 0 {
        return Ok(());
    }
    kernels::dx(&Emulator, d, layout, &args)
}

/// The addresses both backward steps read.
fn bwd_args<T: Element, P: Element, O: Element>(
    cfg: &NormConfig,
    rows: usize,
    cols: usize,
    n: usize,
    a: &HostBackward<'_, T, P, O>,
) -> Result<BwdArgs> {
    Ok(BwdArgs {
        x: addr("x", a.x, n)?,
        dy: addr("dy", a.dy, n)?,
        scale: addr_opt("scale", a.scale, cols)?,
        mean: addr("mean", a.mean, rows)?,
        rstd: addr("rstd", a.rstd, rows)?,
        dvar: 0,
        mask: 0,
        sums: 0,
        dx: 0,
        weight: 0.0,
        kind: cfg.kind(),
    })
}

/// f32 elements of workspace [`param_grads`] needs for a `rows` x `cols` shard.
pub fn param_grads_workspace_len(rows: usize, cols: usize) -> usize {
    kernels::param_grads_workspace_len(Layout::rows(rows, cols), EMULATED_SMS)
}

/// dscale / dbias (those given, in the parameter dtype `P`) of one rank's own parameters.
#[allow(clippy::too_many_arguments)]
pub fn param_grads<T: Element, P: Element, O: Element>(
    cfg: &NormConfig,
    rows: usize,
    cols: usize,
    a: &HostBackward<'_, T, P, O>,
    workspace: &mut [f32],
    dscale: Option<&mut [P]>,
    dbias: Option<&mut [P]>,
) -> Result<()> {
    let d = Dtypes::of::<T, P, O>();
    d.check_compiled()?;
    let (layout, n) = shard(rows, cols)?;
    let need = param_grads_workspace_len(rows, cols);
    let args = ParamGradArgs {
        x: addr("x", a.x, n)?,
        dy: addr("dy", a.dy, n)?,
        mean: addr("mean", a.mean, rows)?,
        rstd: addr("rstd", a.rstd, rows)?,
        kind: cfg.kind(),
        workspace: addr_mut("workspace", workspace, need)?,
        dscale: dscale.map(|s| addr_mut("dscale", s, cols)).transpose()?,
        dbias: dbias.map(|s| addr_mut("dbias", s, cols)).transpose()?,
    };
    kernels::param_grads(&Emulator, d, layout, &args)
}

/// `dst[i] = src[i] / divisor` through f32 (the kernel behind `pmean` of 16-bit buffers).
pub fn cast_scale<S: Element, D: Element>(src: &[S], dst: &mut [D], divisor: f32) -> Result<()> {
    let n = src.len();
    let (src, dst) = (addr("src", src, n)?, addr_mut("dst", dst, n)?);
    kernels::cast_scale(&Emulator, S::DTYPE, D::DTYPE, src, dst, n as i64, divisor)
}

/// `buf[i] /= divisor` in place (what `pmean` does to f32 buffers).
pub fn cast_scale_in_place(buf: &mut [f32], divisor: f32) -> Result<()> {
    let n = buf.len();
    let at = addr_mut("buf", buf, n)?;
    kernels::cast_scale(&Emulator, DType::F32, DType::F32, at, at, n as i64, divisor)
}

/// `dst[i] += src[i]` (the in-process collective's reduction).
pub fn accumulate(dst: &mut [f32], src: &[f32]) -> Result<()> {
    let n = src.len();
    let (src, dst) = (addr("src", src, n)?, addr_mut("dst", dst, n)?);
    kernels::accumulate(&Emulator, dst, src, n as i64)
}
