//! The kernel launches: the only `unsafe` code in warpnorm.
//!
//! Every function here receives parameter structs whose pointers and extents were checked by
//! [`crate::ops`] (lengths, strides, alignment for the vector width, the stream's context).
//! What remains unsafe is the launch itself, which the compiler cannot check against the
//! kernel's signature.

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg};

use super::params::{
    WarpnormBwdParams, WarpnormFinalizeParams, WarpnormFwdParams, WarpnormStridedBwdParams,
    WarpnormStridedFwdParams,
};
use super::select::{self, Plan, DEFAULT_SMEM, STRIDED_THREADS};
use super::tiers::expr;
use super::CudaBackend;
use crate::Result;

/// Dtype short names (`f32`, `f16`, `bf16`) of x, the parameters and y.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dtypes {
    pub x: &'static str,
    pub param: &'static str,
    pub out: &'static str,
}

pub(crate) struct FwdBuffers {
    pub params: WarpnormFwdParams,
    pub dtypes: Dtypes,
    pub vec: u32,
    pub elem_bytes: u32,
}

pub(crate) struct BwdBuffers {
    pub params: WarpnormBwdParams,
    pub dtypes: Dtypes,
    pub vec: u32,
    /// Where the finalize kernel writes dscale / dbias (param dtype), if wanted.
    pub dscale: Option<u64>,
    pub dbias: Option<u64>,
}

fn config(grid: u32, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// Lets `f` use `bytes` of dynamic shared memory (beyond the default 48 KiB needs opt-in).
fn allow_smem(f: &CudaFunction, bytes: u32) -> Result<()> {
    if bytes > DEFAULT_SMEM {
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )?;
    }
    Ok(())
}

pub(crate) fn forward_rows(be: &CudaBackend, stream: &CudaStream, b: &FwdBuffers) -> Result<()> {
    let p = &b.params;
    let d = b.dtypes;
    let plan = select::forward_plan(p.cols as u64, b.vec, b.elem_bytes, be.info.max_smem_per_cta);
    let (name, smem) = match plan {
        Plan::Rows(t) => (expr::fwd_rows(d.x, d.param, d.out, t), 0),
        Plan::Cta {
            vec,
            cached,
            smem_bytes,
            ..
        } => (expr::fwd_cta(d.x, d.param, d.out, vec, cached), smem_bytes),
    };
    let f = be.function("layernorm_fwd", &name)?;
    allow_smem(&f, smem)?;
    let grid = select::forward_grid(p.rows as u64, plan, be.info.sm_count);
    // SAFETY: `p` matches the kernel's parameter struct (bindgen from the same header). ops
    // checked that x / y / mask cover `rows` rows of `cols` at their strides, that scale /
    // bias hold `cols` elements and mean / rstd `rows`, and that every pointer and stride
    // is aligned for `vec`; the kernel touches nothing else.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(p)
            .launch(config(grid, plan.threads(), smem))
    }?;
    Ok(())
}

pub(crate) fn forward_strided(
    be: &CudaBackend,
    stream: &CudaStream,
    p: &WarpnormStridedFwdParams,
    d: Dtypes,
) -> Result<()> {
    let f = be.function("layernorm_fwd", &expr::fwd_strided(d.x, d.param, d.out))?;
    let grid = select::strided_forward_grid((p.outer * p.inner) as u64, be.info.sm_count);
    // SAFETY: ops checked that x and y hold outer * cols * inner elements, scale / bias
    // `cols` and mean / rstd outer * inner; the kernel indexes only within those.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(p)
            .launch(config(grid, STRIDED_THREADS, 0))
    }?;
    Ok(())
}

fn finalize(
    be: &CudaBackend,
    stream: &CudaStream,
    param: &'static str,
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
    // SAFETY: `partial` holds `parts` rows of `cols` f32 written by the backward kernel just
    // before on the same stream; `out` holds `cols` elements of the param dtype (ops).
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&p)
            .launch(config(grid, 256, 0))
    }?;
    Ok(())
}

pub(crate) fn backward_rows(be: &CudaBackend, stream: &CudaStream, b: &BwdBuffers) -> Result<()> {
    let p = &b.params;
    let d = b.dtypes;
    if p.rows == 0 {
        // No rows: the parameter gradients are sums of nothing.
        return finalize_both(be, stream, d.param, 0, 0, b, 0);
    }
    let cols = p.cols as u64;
    let plan = select::backward_plan(cols, b.vec, be.info.max_smem_per_cta);
    let (name, smem) = match plan {
        Plan::Rows(t) => (
            expr::bwd_rows(d.x, d.param, d.out, t),
            select::backward_rows_smem(t, cols),
        ),
        Plan::Cta {
            vec,
            cached,
            smem_bytes,
            ..
        } => (expr::bwd_cta(d.x, d.param, d.out, vec, cached), smem_bytes),
    };
    let f = be.function("layernorm_bwd", &name)?;
    allow_smem(&f, smem)?;
    let grid = select::backward_grid(p.rows as u64, plan, be.info.sm_count);
    // SAFETY: as in forward_rows for x / dy / dx / scale / mask / mean / rstd; the partial
    // buffers hold at least `max_parts(rows) >= grid` rows of `cols` f32 (ops checked the
    // workspace length), and each CTA writes only its own row.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(p)
            .launch(config(grid, plan.threads(), smem))
    }?;
    finalize_both(
        be,
        stream,
        d.param,
        p.partial_dscale as u64,
        p.partial_dbias as u64,
        b,
        grid as i32,
    )
}

fn finalize_both(
    be: &CudaBackend,
    stream: &CudaStream,
    param: &'static str,
    partial_dscale: u64,
    partial_dbias: u64,
    b: &BwdBuffers,
    parts: i32,
) -> Result<()> {
    let cols = b.params.cols;
    if let Some(out) = b.dscale {
        finalize(be, stream, param, partial_dscale, out, cols, parts)?;
    }
    if let Some(out) = b.dbias {
        finalize(be, stream, param, partial_dbias, out, cols, parts)?;
    }
    Ok(())
}

pub(crate) fn backward_strided(
    be: &CudaBackend,
    stream: &CudaStream,
    p: &WarpnormStridedBwdParams,
    b: &BwdBuffers,
) -> Result<()> {
    let d = b.dtypes;
    let f = be.function("layernorm_bwd", &expr::bwd_strided(d.x, d.param, d.out))?;
    let grid = select::strided_backward_grid((p.outer * p.inner) as u64, be.info.sm_count);
    // SAFETY: ops checked x / dy / dx (outer * cols * inner), scale (cols), mean / rstd
    // (outer * inner) and the workspace (>= grid * warps partial rows of cols f32); each
    // warp writes only its own partial row.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(p)
            .launch(config(grid, STRIDED_THREADS, 0))
    }?;
    let parts = grid as i32 * (STRIDED_THREADS as i32 / 32);
    finalize_both(
        be,
        stream,
        d.param,
        p.partial_dscale as u64,
        p.partial_dbias as u64,
        b,
        parts,
    )
}
