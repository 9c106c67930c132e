//! The single-device norm kernels (`kernels/layernorm_fwd.cu`, `kernels/layernorm_bwd.cu`):
//! what they compute ([`NormSpec`]), how the rows sit in memory ([`Layout`]), and, from
//! checked device addresses, their parameter structs, tier and grid, launched through a
//! [`Launch`].
//!
//! Callers ([`crate::ops`] on a GPU, the emulator on host memory) check every buffer
//! against the extents [`check_call`] returns and pass its address (0 for an absent one).

use cudarc::driver::LaunchConfig;

use super::generation::KernelGeneration;
use super::launch::{launch_config, Grouping, Launch};
use super::params::{
    dtype_code, kind_code, WarpnormBwdParams, WarpnormBwdSplitParams, WarpnormDtype,
    WarpnormFinalizePairParams, WarpnormFinalizeParams, WarpnormFwdParams,
    WarpnormStridedBwdParams, WarpnormStridedFwdParams, WARPNORM_FINALIZE_PAIR_THREADS,
    WARPNORM_FINALIZE_THREADS,
};
use super::select::{self, BwdPlan, Plan, Split, StashColumn, STRIDED_THREADS};
use super::tiers::expr;
use super::Dtypes;
pub(crate) use crate::layout::{check_len, Layout};
use crate::layout::{strides, Extents};
use crate::{DType, Element, Error, NormConfig, NormKind, Result};

/// What the kernels compute: the part of a [`NormConfig`] that reaches the GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormSpec {
    pub kind: NormKind,
    pub eps: f32,
    /// flax `use_fast_variance`: `E[x^2] - E[x]^2` (clamped at 0) instead of the two-pass form.
    pub fast_variance: bool,
    /// keras: y is rounded to x's dtype before it is stored in a wider output dtype, and dy
    /// to x's dtype as it is loaded (the transpose of that cast);
    /// [`NormConfig::rounds_output_to_input_dtype`].
    pub round_output_to_x: bool,
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
            round_output_to_x: cfg.rounds_output_to_input_dtype(),
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

    pub(crate) fn validate(&self) -> Result<()> {
        crate::config::epsilon_f32(self.eps.into())?;
        self.kernel_generation().map(drop)
    }
}

/// The kernels' `out_dtype` of y (forward) and dy (backward): `d.out`, or f32 rounded to x's
/// dtype where the spec asks for it and the rounding changes something.
fn out_dtype_code(spec: &NormSpec, d: Dtypes) -> i32 {
    if spec.round_output_to_x && d.out == DType::F32 && d.x != DType::F32 {
        WarpnormDtype::WARPNORM_F32_ROUNDED_TO_X as i32
    } else {
        dtype_code(d.out)
    }
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
    /// At least `backward_workspace_len` f32 (`select::Workspace`).
    pub workspace: u64,
}

fn check_mask_layout(has_mask: bool, layout: &Layout) -> Result<()> {
    if has_mask && matches!(layout, Layout::ChannelsFirst { .. }) {
        return Err(Error::Unsupported(
            "a mask with the channels-first layout (the strided kernels take none)".into(),
        ));
    }
    Ok(())
}

/// Checks what does not depend on where the buffers live; returns the kernels' dtypes
/// and the elements each buffer must hold.
pub(crate) fn check_call<T: Element, P: Element, O: Element>(
    spec: Option<&NormSpec>,
    layout: &Layout,
    has_mask: bool,
) -> Result<(Dtypes, Extents)> {
    if let Some(spec) = spec {
        spec.validate()?;
    }
    let extents = layout.extents()?;
    check_mask_layout(has_mask, layout)?;
    let dtypes = Dtypes::of::<T, P, O>();
    dtypes.check_compiled()?;
    Ok((dtypes, extents))
}

/// Builds the parameter struct of a checked forward and launches it.
pub(crate) fn forward<L: Launch, T: Element>(
    l: &L,
    spec: &NormSpec,
    layout: Layout,
    d: Dtypes,
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
                out_dtype: out_dtype_code(spec, d),
            };
            let b = FwdLaunch {
                params,
                dtypes: d,
                vec,
                elem_bytes: T::DTYPE.size() as u32,
                generation: spec.kernel_generation()?,
            };
            forward_rows(l, &b)
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
                out_dtype: out_dtype_code(spec, d),
            };
            forward_strided(l, &params, d)
        }
    }
}

/// Builds the parameter structs of a checked backward and launches it.
pub(crate) fn backward<L: Launch, T: Element>(
    l: &L,
    spec: &NormSpec,
    layout: Layout,
    d: Dtypes,
    a: BwdAddrs,
) -> Result<()> {
    let (rows, cols) = (layout.num_rows(), layout.cols());
    let (x_stride, y_stride) = strides(&layout);
    // The workspace as select::Workspace lays it out (addresses: 4 bytes an element); its
    // caller checked its length, `backward_workspace_len` of the same sizes.
    let ws = select::Workspace::of(rows as u64, cols as u64, l.sm_count());
    let at = |offset: u64| a.workspace + 4 * offset;
    let (partial_dscale, partial_dbias) = (a.workspace, at(ws.partial_dbias()));
    let kind = kind_code(spec.kind);
    let (param_dtype, out_dtype) = (dtype_code(d.param), out_dtype_code(spec, d));
    let generation = spec.kernel_generation()?;
    let param_grads = |params: WarpnormBwdParams, vec: u32| BwdLaunch {
        params,
        dtypes: d,
        vec,
        dscale: a.dscale,
        dbias: a.dbias,
        group_scratch: (at(ws.arrivals()), at(ws.slots())),
        generation,
    };
    match layout {
        // No rows (either layout): backward_rows only zeroes dscale / dbias.
        _ if rows == 0 => {
            let params = WarpnormBwdParams {
                cols: cols as _,
                ..Default::default()
            };
            backward_rows(l, &param_grads(params, 1))
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
            backward_rows(l, &param_grads(params, vec))
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
            backward_strided(l, &params, &totals)
        }
    }
}

/// A checked forward on rows: its parameter struct, dtypes and vector width.
struct FwdLaunch {
    pub params: WarpnormFwdParams,
    pub dtypes: Dtypes,
    pub vec: u32,
    pub elem_bytes: u32,
    pub generation: KernelGeneration,
}

/// A checked backward on rows (or only its parameter-gradient finalize, for the
/// channels-first kernel): its parameter struct, dtypes, vector width and outputs.
struct BwdLaunch {
    pub params: WarpnormBwdParams,
    pub dtypes: Dtypes,
    pub vec: u32,
    /// Where the finalize kernel writes dscale / dbias (param dtype), if wanted.
    pub dscale: Option<u64>,
    pub dbias: Option<u64>,
    /// The arrival counters and row-sum slots of rows split over groups of CTAs.
    pub group_scratch: (u64, u64),
    pub generation: KernelGeneration,
}

fn config(grid: u32, threads: u32, smem: u32) -> LaunchConfig {
    launch_config((grid, 1), threads, smem)
}

fn forward_rows<L: Launch>(l: &L, b: &FwdLaunch) -> Result<()> {
    let p = &b.params;
    let x = b.dtypes.x.short_name();
    let cols = p.cols as u64;
    let plan = select::forward_plan(cols, b.vec, b.elem_bytes, l.max_smem_per_cta());
    let (name, smem) = match plan {
        Plan::Rows(t) => (expr::fwd_rows(x, t), select::forward_rows_smem(t, cols)),
        Plan::Cta {
            vec,
            cached,
            smem_bytes,
            ..
        } => {
            let loads = select::fwd_cta_loads(b.generation, vec);
            (expr::fwd_cta(x, vec, cached, loads), smem_bytes)
        }
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

fn forward_strided<L: Launch>(l: &L, p: &WarpnormStridedFwdParams, d: Dtypes) -> Result<()> {
    let grid = select::strided_forward_grid((p.outer * p.inner) as u64, l.sm_count());
    let name = expr::fwd_strided(d.x.short_name());
    l.launch("layernorm_fwd", &name, p, config(grid, STRIDED_THREADS, 0))
}

fn backward_rows<L: Launch>(l: &L, b: &BwdLaunch) -> Result<()> {
    let x = b.dtypes.x.short_name();
    // Partial rows only for the gradients asked for (RMSNorm has no dbias): a null
    // partial pointer tells the kernel not to accumulate that sum at all.
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
    let max_smem = l.max_smem_per_cta();
    let plan = match b.generation {
        KernelGeneration::V1 => BwdPlan::V1(select::backward_plan(cols, b.vec, max_smem)),
        KernelGeneration::V2 => {
            let column = StashColumn {
                x: b.dtypes.x.size() as u32,
                dy: b.dtypes.out.size() as u32,
                scale: if p.scale.is_null() {
                    0
                } else {
                    b.dtypes.param.size() as u32
                },
                grads: b.dscale.is_some() as u32 + b.dbias.is_some() as u32,
            };
            let (clusters, groups) = (l.max_cluster(), l.max_group());
            select::backward_plan_v2(cols, b.vec, column, max_smem, clusters, groups)
        }
    };
    let (name, smem) = match plan {
        BwdPlan::V1(Plan::Rows(t)) => (expr::bwd_rows(x, t), select::backward_rows_smem(t, cols)),
        BwdPlan::V1(Plan::Cta {
            vec,
            cached,
            smem_bytes,
            ..
        }) => (expr::bwd_cta(x, vec, cached), smem_bytes),
        BwdPlan::Stash {
            vec,
            split,
            prefetch,
            smem_bytes,
            ..
        } => {
            let name = match split {
                Split::Cta => expr::bwd_stash(x, vec, prefetch),
                Split::Cluster(_) => expr::bwd_cluster(x, vec),
                Split::Group(_) => expr::bwd_split(x, vec),
            };
            (name, smem_bytes)
        }
    };
    let threads = plan.threads();
    let resident = l.resident_ctas("layernorm_bwd", &name, threads, smem)?;
    let (rows, sms) = (p.rows as u64, l.sm_count());
    // Partial rows: one per CTA (v1's rows blocks, or a stashed row), or per cluster or
    // group for a split row.
    let split = plan.split();
    let rows_per_unit = match plan {
        BwdPlan::V1(v1) => v1.rows_per_cta(),
        BwdPlan::Stash { .. } => 1,
    };
    let parts = select::backward_grid(rows.div_ceil(rows_per_unit), split.ctas(), sms, resident);
    let cfg = config(parts * split.ctas(), threads, smem);
    match split {
        Split::Cta => l.launch("layernorm_bwd", &name, p, cfg)?,
        Split::Cluster(n) => {
            l.launch_grouped("layernorm_bwd", &name, p, cfg, Grouping::Clusters(n))?
        }
        Split::Group(n) => {
            let (arrivals, slots) = b.group_scratch;
            // The groups' barriers count from zero.
            // SAFETY: `arrivals` is the counters' place in the workspace, which its caller
            // checked holds `select::Workspace::len` f32 (4-byte aligned, writable): a
            // counter per partial row, and `parts` (the groups) is at most that many
            // (`select::backward_grid`, bounded by `max_parts`).
            unsafe { l.zero_words(arrivals, parts as u64) }?;
            let split = WarpnormBwdSplitParams {
                bwd: *p,
                arrivals: arrivals as *mut u32,
                slots: slots as *mut f32,
                ctas: n as i32,
            };
            l.launch_grouped("layernorm_bwd", &name, &split, cfg, Grouping::Groups(n))?
        }
    }
    finalize_both(
        l,
        b,
        p.partial_dscale as u64,
        p.partial_dbias as u64,
        parts as i32,
    )
}

fn backward_strided<L: Launch>(l: &L, p: &WarpnormStridedBwdParams, b: &BwdLaunch) -> Result<()> {
    let grid = select::strided_backward_grid((p.outer * p.inner) as u64, l.sm_count());
    let name = expr::bwd_strided(b.dtypes.x.short_name());
    l.launch("layernorm_bwd", &name, p, config(grid, STRIDED_THREADS, 0))?;
    let parts = grid as i32 * (STRIDED_THREADS as i32 / 32);
    finalize_both(l, b, p.partial_dscale as u64, p.partial_dbias as u64, parts)
}

/// Sums the partial rows into dscale and dbias (those that were asked for).
fn finalize_both<L: Launch>(
    l: &L,
    b: &BwdLaunch,
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
    param: DType,
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
        &expr::finalize_pair(param.short_name()),
        &p,
        config(grid, WARPNORM_FINALIZE_PAIR_THREADS, 0),
    )
}

/// For each `(partial, out)` with an `out`: `out[c]` (in `param`, the parameter dtype) =
/// the sum of `parts` partial rows of `cols` f32 at `partial`, in part order.
pub(crate) fn finalize_param_grads<L: Launch>(
    l: &L,
    param: DType,
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
        let threads = WARPNORM_FINALIZE_THREADS;
        let grid = (cols as u64).div_ceil(threads as u64).clamp(1, 65_535) as u32;
        l.launch(
            "layernorm_bwd",
            &expr::finalize(param.short_name()),
            &p,
            config(grid, threads, 0),
        )?;
    }
    Ok(())
}
