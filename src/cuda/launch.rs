//! Kernel selection and launch: [`OnStream::launch`] is the one place a warpnorm kernel is
//! launched on a GPU, and the only `unsafe` CUDA launch of the crate (the CPU emulation has
//! its own, in `emulator.rs`).
//!
//! The functions here turn checked parameter structs into launches through a [`Launch`]
//! implementation: [`OnStream`] enqueues on a CUDA stream; the CPU emulation (feature
//! `emulator`) runs the same kernels on host threads, so the selection logic below is
//! exercised by the same tests either way. Every parameter struct reaching a [`Launch`]
//! was built by [`crate::ops`] (or the emulator's host API) from buffers whose lengths,
//! strides and alignment it checked.

use cudarc::driver::{CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use super::generation::KernelGeneration;
use super::params::{
    WarpnormBwdParams, WarpnormFinalizePairParams, WarpnormFinalizeParams, WarpnormFwdParams,
    WarpnormStridedBwdParams, WarpnormStridedFwdParams, WARPNORM_FINALIZE_THREADS,
};
use super::select::{self, Plan, STRIDED_THREADS};
use super::tiers::expr;
use super::CudaBackend;
use crate::Result;

/// Something that runs warpnorm's kernels.
pub(crate) trait Launch {
    /// SMs of the device: the persistent grids are sized from it.
    fn sm_count(&self) -> u32;
    /// Opt-in shared memory per CTA (bytes).
    fn max_smem_per_cta(&self) -> u32;
    /// How many CTAs of kernel `expr` with `threads` threads and `smem` bytes of dynamic
    /// shared memory fit on one SM at once (its occupancy); at least 1.
    fn resident_ctas(
        &self,
        source: &'static str,
        expr: &str,
        threads: u32,
        smem: u32,
    ) -> Result<u32>;
    /// Runs kernel `expr` (a `tiers::expr` name) from `kernels/<source>.cu`.
    fn launch<P: DeviceRepr>(
        &self,
        source: &'static str,
        expr: &str,
        params: &P,
        cfg: LaunchConfig,
    ) -> Result<()>;
}

/// Launches on a CUDA stream of the backend's context.
pub(crate) struct OnStream<'a> {
    pub be: &'a CudaBackend,
    pub stream: &'a CudaStream,
}

impl Launch for OnStream<'_> {
    fn sm_count(&self) -> u32 {
        self.be.info.sm_count
    }

    fn max_smem_per_cta(&self) -> u32 {
        self.be.info.max_smem_per_cta
    }

    fn resident_ctas(
        &self,
        source: &'static str,
        expr: &str,
        threads: u32,
        smem: u32,
    ) -> Result<u32> {
        self.be.occupancy((expr.to_string(), threads, smem), || {
            let f = self.be.function(source, expr)?;
            // The occupancy query reads the current context.
            self.stream.context().bind_to_thread()?;
            let n =
                f.occupancy_max_active_blocks_per_multiprocessor(threads, smem as usize, None)?;
            Ok(n.max(1))
        })
    }

    fn launch<P: DeviceRepr>(
        &self,
        source: &'static str,
        expr: &str,
        params: &P,
        cfg: LaunchConfig,
    ) -> Result<()> {
        let f = self.be.function(source, expr)?;
        // SAFETY: `params` is the bindgen mirror of the C struct the kernel `expr` takes
        // by value (each `expr` is paired with its struct in the functions below and in
        // `launch_sharded.rs`). Its pointers were checked by ops (or, for the sharded
        // kernels, by crate::sharded and crate::dist): x / y / dx / dy / mask cover every
        // row at their strides, scale / bias / dscale / dbias hold `cols` elements, mean /
        // rstd / dvar `rows`, the statistics and sums their documented layouts, the
        // workspace at least as many partial rows as the grid writes, and every pointer and
        // stride is aligned for the vector width chosen; all buffers belong to this
        // stream's context. The kernels touch nothing else, and `cfg` comes from the same
        // plan that sized the shared memory.
        unsafe { self.stream.launch_builder(&f).arg(params).launch(cfg) }?;
        Ok(())
    }
}

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
    pub generation: KernelGeneration,
}

pub(crate) struct BwdBuffers {
    pub params: WarpnormBwdParams,
    pub dtypes: Dtypes,
    pub vec: u32,
    /// Where the finalize kernel writes dscale / dbias (param dtype), if wanted.
    pub dscale: Option<u64>,
    pub dbias: Option<u64>,
    pub generation: KernelGeneration,
}

fn config(grid: u32, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}

pub(crate) fn forward_rows<L: Launch>(l: &L, b: &FwdBuffers) -> Result<()> {
    let d = b.dtypes;
    let p = &b.params;
    let plan = select::forward_plan(p.cols as u64, b.vec, b.elem_bytes, l.max_smem_per_cta());
    let (name, smem) = match plan {
        Plan::Rows(t) => (expr::fwd_rows(d.x, t), 0),
        Plan::Cta {
            vec,
            cached,
            smem_bytes,
            ..
        } => (expr::fwd_cta(d.x, vec, cached), smem_bytes),
    };
    let grid = match b.generation {
        KernelGeneration::V1 => select::forward_grid(p.rows as u64, plan, l.sm_count()),
        KernelGeneration::V2 => {
            let resident = l.resident_ctas("layernorm_fwd", &name, plan.threads(), smem)?;
            select::forward_grid_waves(p.rows as u64, plan, l.sm_count(), resident)
        }
    };
    l.launch(
        "layernorm_fwd",
        &name,
        p,
        config(grid, plan.threads(), smem),
    )
}

pub(crate) fn forward_strided<L: Launch>(
    l: &L,
    p: &WarpnormStridedFwdParams,
    d: Dtypes,
) -> Result<()> {
    let grid = select::strided_forward_grid((p.outer * p.inner) as u64, l.sm_count());
    let name = expr::fwd_strided(d.x);
    l.launch("layernorm_fwd", &name, p, config(grid, STRIDED_THREADS, 0))
}

pub(crate) fn backward_rows<L: Launch>(l: &L, b: &BwdBuffers) -> Result<()> {
    let d = b.dtypes;
    // Partial rows only for the gradients asked for (RMSNorm has no dbias).
    let p = &WarpnormBwdParams {
        partial_dscale: if b.dscale.is_some() {
            b.params.partial_dscale
        } else {
            std::ptr::null_mut()
        },
        partial_dbias: if b.dbias.is_some() {
            b.params.partial_dbias
        } else {
            std::ptr::null_mut()
        },
        ..b.params
    };
    if p.rows == 0 {
        // No rows: the parameter gradients are sums of nothing.
        return finalize_both(l, b, 0, 0, 0);
    }
    let cols = p.cols as u64;
    let plan = select::backward_plan(cols, b.vec, l.max_smem_per_cta());
    let (name, smem) = match plan {
        Plan::Rows(t) => (expr::bwd_rows(d.x, t), select::backward_rows_smem(t, cols)),
        Plan::Cta {
            vec,
            cached,
            smem_bytes,
            ..
        } => (expr::bwd_cta(d.x, vec, cached), smem_bytes),
    };
    let resident = l.resident_ctas("layernorm_bwd", &name, plan.threads(), smem)?;
    let grid = select::backward_grid(p.rows as u64, plan, l.sm_count(), resident);
    l.launch(
        "layernorm_bwd",
        &name,
        p,
        config(grid, plan.threads(), smem),
    )?;
    finalize_both(
        l,
        b,
        p.partial_dscale as u64,
        p.partial_dbias as u64,
        grid as i32,
    )
}

pub(crate) fn backward_strided<L: Launch>(
    l: &L,
    p: &WarpnormStridedBwdParams,
    b: &BwdBuffers,
) -> Result<()> {
    let d = b.dtypes;
    let grid = select::strided_backward_grid((p.outer * p.inner) as u64, l.sm_count());
    let name = expr::bwd_strided(d.x);
    l.launch("layernorm_bwd", &name, p, config(grid, STRIDED_THREADS, 0))?;
    let parts = grid as i32 * (STRIDED_THREADS as i32 / 32);
    finalize_both(l, b, p.partial_dscale as u64, p.partial_dbias as u64, parts)
}

/// Sums the partial rows into dscale and dbias (those that were asked for).
fn finalize_both<L: Launch>(
    l: &L,
    b: &BwdBuffers,
    partial_dscale: u64,
    partial_dbias: u64,
    parts: i32,
) -> Result<()> {
    let outputs = [(partial_dscale, b.dscale), (partial_dbias, b.dbias)];
    match b.generation {
        KernelGeneration::V1 => {
            finalize_param_grads(l, b.dtypes.param, b.params.cols, parts, outputs)
        }
        KernelGeneration::V2 => finalize_pair(l, b.dtypes.param, b.params.cols, parts, outputs),
    }
}

/// Kernels v2: every `(partial, out)` with an `out` summed by one launch of
/// `finalize_pair` (same sums as [`finalize_param_grads`], a different fixed order).
fn finalize_pair<L: Launch>(
    l: &L,
    param: &str,
    cols: i64,
    parts: i32,
    outputs: [(u64, Option<u64>); 2],
) -> Result<()> {
    let mut p = WarpnormFinalizePairParams {
        partial: [std::ptr::null(); 2],
        out: [std::ptr::null_mut(); 2],
        cols: cols as _,
        parts,
        outputs: 0,
    };
    for (partial, out) in outputs {
        let Some(out) = out else { continue };
        let k = p.outputs as usize;
        p.partial[k] = partial as *const f32;
        p.out[k] = out as *mut std::ffi::c_void;
        p.outputs += 1;
    }
    if p.outputs == 0 {
        return Ok(());
    }
    let grid = select::finalize_pair_grid(cols as u64, p.outputs as u32);
    l.launch(
        "layernorm_bwd",
        &expr::finalize_pair(param),
        &p,
        config(grid, WARPNORM_FINALIZE_THREADS, 0),
    )
}

/// For each `(partial, out)` with an `out`: `out[c]` (in `param`, the parameter dtype) =
/// the sum of `parts` partial rows of `cols` f32 at `partial`, in part order.
pub(crate) fn finalize_param_grads<L: Launch>(
    l: &L,
    param: &str,
    cols: i64,
    parts: i32,
    outputs: [(u64, Option<u64>); 2],
) -> Result<()> {
    for (partial, out) in outputs {
        let Some(out) = out else { continue };
        let p = WarpnormFinalizeParams {
            partial: partial as *const f32,
            out: out as *mut std::ffi::c_void,
            cols: cols as _,
            parts,
        };
        let grid = (cols as u64).div_ceil(256).clamp(1, 65_535) as u32;
        l.launch(
            "layernorm_bwd",
            &expr::finalize(param),
            &p,
            config(grid, 256, 0),
        )?;
    }
    Ok(())
}
