//! The CPU reference: every configuration, f64 arithmetic, results rounded once to
//! the dtypes the frameworks return.
//!
//! It is the oracle the kernels are tested against and the CPU backend. The
//! frameworks compute statistics and the affine step in (at least) f32 and round
//! the result once; the reference does the same in f64, so its only difference
//! from a framework is the framework's own f32 rounding error. Extra roundings the
//! frameworks do perform are reproduced: keras returns `cast(y, x.dtype)` before
//! casting to its compute dtype (and, by the transpose, rounds dy to x's dtype).
//!
//! Statistics (`mean`, `rstd`) come back unrounded, one per row; rows are ordered
//! row-major over the non-reduced axes.

mod engine;
mod layout;
mod row;
pub(crate) use row::{fast_variance, stats_grad};

use engine::{Engine, RankInput};
use layout::Layout;

use crate::config::{Api, Axes, NormConfig};
use crate::groups::AxisGroups;
use crate::limits::{check_host_alloc, checked_product};
use crate::{DType, Error, Result, Tensor};

/// The learned parameters of a layer, each of [`Axes::param_shape`] and
/// [`NormConfig::param_dtype`]; present exactly when the config uses them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Params<'a> {
    pub scale: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
}

impl<'a> Params<'a> {
    /// Both parameters (either may be absent).
    pub fn new(scale: Option<&'a Tensor>, bias: Option<&'a Tensor>) -> Params<'a> {
        Params { scale, bias }
    }

    /// No parameters (`use_scale=False, use_bias=False`).
    pub fn none() -> Params<'a> {
        Params::default()
    }
}

/// Forward results: `y` in [`NormConfig::output_dtype`], and per-row statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    pub y: Tensor,
    /// The mean each row's variance is centred on (0 for RMSNorm; for keras'
    /// `rms_scaling` the data mean, although y is not centred).
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)` per row.
    pub rstd: Vec<f64>,
}

/// Gradients: dx in x's dtype, dscale and dbias in the parameter dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct Grads {
    pub dx: Tensor,
    /// How large the terms of each element of dx are before they cancel (`rstd` times
    /// `|dy * scale|` plus the statistics' share): what an f32 computation's rounding error
    /// in dx scales with (the tolerance of `tooling::kernel_matrix`).
    pub dx_magnitude: Vec<f64>,
    pub dscale: Option<Tensor>,
    pub dbias: Option<Tensor>,
}

/// Normalizes `x`. `mask` (flax only) selects, per element of x, which elements
/// enter the statistics; every element of y is still normalized with them.
pub fn forward(cfg: &NormConfig, x: &Tensor, p: Params, mask: Option<&[bool]>) -> Result<Forward> {
    let groups = AxisGroups::new(1, None)?;
    single(run_forward(
        cfg,
        std::slice::from_ref(x),
        &[p],
        &[mask],
        &groups,
    )?)
}

/// The vector-Jacobian product of [`forward`] with cotangent `dy` (shape of x,
/// dtype of y).
pub fn backward(
    cfg: &NormConfig,
    x: &Tensor,
    p: Params,
    mask: Option<&[bool]>,
    dy: &Tensor,
) -> Result<Grads> {
    let groups = AxisGroups::new(1, None)?;
    single(run_backward(
        cfg,
        std::slice::from_ref(x),
        &[p],
        &[mask],
        std::slice::from_ref(dy),
        &groups,
    )?)
}

/// flax's layer under `pmap` with `axis_name`: rank r holds `shards[r]` (its own
/// slice of each row's features) and `params[r]`; each group of `groups` averages
/// its ranks' statistics (`lax.pmean`). One result per rank.
pub fn sharded_forward(
    cfg: &NormConfig,
    shards: &[Tensor],
    params: &[Params],
    masks: Option<&[Vec<bool>]>,
    groups: &AxisGroups,
) -> Result<Vec<Forward>> {
    check_sharding(cfg, shards.len(), params.len(), masks, groups)?;
    run_forward(cfg, shards, params, &mask_refs(masks, shards.len()), groups)
}

/// The vector-Jacobian product of [`sharded_forward`] for the loss summed over all
/// ranks (what `jax.vjp` inside `pmap` gives: the transpose of `pmean` is `pmean`).
/// Each rank's dscale/dbias cover its own parameters and rows.
pub fn sharded_backward(
    cfg: &NormConfig,
    shards: &[Tensor],
    params: &[Params],
    masks: Option<&[Vec<bool>]>,
    dys: &[Tensor],
    groups: &AxisGroups,
) -> Result<Vec<Grads>> {
    check_sharding(cfg, shards.len(), params.len(), masks, groups)?;
    if dys.len() != shards.len() {
        return Err(count_mismatch("dy shards", shards.len(), dys.len()));
    }
    run_backward(
        cfg,
        shards,
        params,
        &mask_refs(masks, shards.len()),
        dys,
        groups,
    )
}

/// The one result of a world of one.
fn single<T>(mut out: Vec<T>) -> Result<T> {
    out.pop().ok_or_else(|| count_mismatch("results", 1, 0))
}

fn mask_refs(masks: Option<&[Vec<bool>]>, world: usize) -> Vec<Option<&[bool]>> {
    match masks {
        Some(m) => m.iter().map(|m| Some(m.as_slice())).collect(),
        None => vec![None; world],
    }
}

fn count_mismatch(what: &'static str, expected: usize, got: usize) -> Error {
    Error::Shape {
        what,
        expected: format!("one per rank ({expected})"),
        got: got.to_string(),
    }
}

fn check_sharding(
    cfg: &NormConfig,
    world: usize,
    n_params: usize,
    masks: Option<&[Vec<bool>]>,
    groups: &AxisGroups,
) -> Result<()> {
    cfg.validate()?;
    if cfg.sync_axis_name().is_none() {
        return Err(Error::InvalidConfig(
            "sharded normalization needs axis_name (without it each rank normalizes alone)".into(),
        ));
    }
    if let Some(g) = cfg.index_groups() {
        if g != groups.groups() {
            return Err(Error::InvalidGroups(format!(
                "the config's axis_index_groups {g:?} differ from the groups given {:?}",
                groups.groups()
            )));
        }
    }
    if world != groups.world() {
        return Err(count_mismatch("shards", groups.world(), world));
    }
    if n_params != world {
        return Err(count_mismatch("params", world, n_params));
    }
    if let Some(m) = masks {
        if m.len() != world {
            return Err(count_mismatch("masks", world, m.len()));
        }
    }
    Ok(())
}

/// Checks one rank's inputs against the config and returns the resolved axes.
fn check_inputs(cfg: &NormConfig, x: &Tensor, p: &Params, mask: Option<&[bool]>) -> Result<Axes> {
    let axes = cfg.resolve(x.shape())?;
    check_param("scale", p.scale, cfg.has_scale(), &axes, cfg.param_dtype())?;
    check_param("bias", p.bias, cfg.has_bias(), &axes, cfg.param_dtype())?;
    if let Some(m) = mask {
        if cfg.api() == Api::Keras {
            return Err(Error::InvalidConfig(
                "keras LayerNormalization takes no mask (its statistics ignore keras masks)".into(),
            ));
        }
        if m.len() != x.numel() {
            return Err(Error::Shape {
                what: "mask",
                expected: format!("{} flags (one per element of x {:?})", x.numel(), x.shape()),
                got: format!("{} flags", m.len()),
            });
        }
    }
    Ok(axes)
}

fn check_param(
    what: &'static str,
    t: Option<&Tensor>,
    wanted: bool,
    axes: &Axes,
    dtype: DType,
) -> Result<()> {
    match (t, wanted) {
        (None, false) => Ok(()),
        (None, true) => Err(Error::Shape {
            what,
            expected: format!(
                "a {what} of shape {:?} (the config uses one)",
                axes.param_shape
            ),
            got: "none".into(),
        }),
        (Some(t), false) => Err(Error::Shape {
            what,
            expected: format!("no {what} (the config has none)"),
            got: format!("shape {:?}", t.shape()),
        }),
        (Some(t), true) if t.shape() != axes.param_shape.as_slice() => Err(Error::Shape {
            what,
            expected: format!("{:?}", axes.param_shape),
            got: format!("{:?}", t.shape()),
        }),
        (Some(t), true) if t.dtype() != dtype => Err(Error::DType {
            what,
            expected: dtype,
            got: t.dtype(),
        }),
        _ => Ok(()),
    }
}

/// Checks every rank and builds the engine; all ranks must agree in shape and dtype
/// (`pmap` maps one program over equal shards).
fn engine<'a>(
    cfg: &NormConfig,
    xs: &'a [Tensor],
    params: &'a [Params],
    masks: &[Option<&'a [bool]>],
    groups: &'a AxisGroups,
) -> Result<Engine<'a>> {
    let first = xs.first().ok_or_else(|| count_mismatch("shards", 1, 0))?;
    let mut axes = None;
    let mut ranks = Vec::with_capacity(xs.len());
    for ((x, p), &mask) in xs.iter().zip(params).zip(masks) {
        check_shard_like((first.shape(), first.dtype()), (x.shape(), x.dtype()))?;
        axes = Some(check_inputs(cfg, x, p, mask)?);
        ranks.push(RankInput {
            x: x.data(),
            scale: p.scale.map(Tensor::data),
            bias: p.bias.map(Tensor::data),
            mask,
        });
    }
    let axes = axes.ok_or_else(|| count_mismatch("shards", 1, 0))?;
    let layout = Layout::new(first.shape(), &axes)?;
    // dscale and dbias are allocated even when the config has no such parameter.
    let param_len = checked_product("parameter shape", &axes.param_shape)?;
    check_host_alloc("parameter shape", param_len, 2 * std::mem::size_of::<f64>())?;
    Ok(Engine {
        kind: cfg.kind(),
        fast: cfg.fast_variance(),
        eps: cfg.eps(),
        layout,
        param_len,
        ranks,
        groups,
    })
}

fn run_forward(
    cfg: &NormConfig,
    xs: &[Tensor],
    params: &[Params],
    masks: &[Option<&[bool]>],
    groups: &AxisGroups,
) -> Result<Vec<Forward>> {
    let eng = engine(cfg, xs, params, masks, groups)?;
    let x_dtype = xs[0].dtype();
    let out_dtype = cfg.output_dtype(x_dtype);
    let inter = cfg.intermediate_dtype(x_dtype);
    eng.forward()
        .into_iter()
        .zip(xs)
        .map(|(r, x)| {
            let y =
                r.y.into_iter()
                    .map(|v| inter.map_or(v, |d| d.round(v)))
                    .collect();
            Ok(Forward {
                y: Tensor::new(x.shape(), out_dtype, y)?,
                mean: r.mean,
                rstd: r.rstd,
            })
        })
        .collect()
}

fn run_backward(
    cfg: &NormConfig,
    xs: &[Tensor],
    params: &[Params],
    masks: &[Option<&[bool]>],
    dys: &[Tensor],
    groups: &AxisGroups,
) -> Result<Vec<Grads>> {
    let eng = engine(cfg, xs, params, masks, groups)?;
    let x_dtype = xs[0].dtype();
    let y_dtype = cfg.output_dtype(x_dtype);
    let inter = cfg.intermediate_dtype(x_dtype);
    let mut dy_values = Vec::with_capacity(dys.len());
    for (dy, x) in dys.iter().zip(xs) {
        if dy.shape() != x.shape() {
            return Err(Error::Shape {
                what: "dy",
                expected: format!("{:?} (the shape of x)", x.shape()),
                got: format!("{:?}", dy.shape()),
            });
        }
        if dy.dtype() != y_dtype {
            return Err(Error::DType {
                what: "dy",
                expected: y_dtype,
                got: dy.dtype(),
            });
        }
        let d = dy.data().iter().map(|&v| inter.map_or(v, |t| t.round(v)));
        dy_values.push(d.collect::<Vec<f64>>());
    }
    let pdt = cfg.param_dtype();
    let param_shape = params[0]
        .scale
        .or(params[0].bias)
        .map(|t| t.shape().to_vec())
        .unwrap_or_default();
    eng.backward(&dy_values)
        .into_iter()
        .zip(xs)
        .map(|(g, x)| {
            let param = |on: bool, v: Vec<f64>| -> Result<Option<Tensor>> {
                on.then(|| Tensor::new(param_shape.clone(), pdt, v))
                    .transpose()
            };
            Ok(Grads {
                dx: Tensor::new(x.shape(), x_dtype, g.dx)?,
                dx_magnitude: g.dx_magnitude,
                dscale: param(cfg.has_scale(), g.dscale)?,
                dbias: param(cfg.has_bias(), g.dbias)?,
            })
        })
        .collect()
}

/// Errors unless a rank's x shard has the shape and dtype of the first one: `pmap` maps one
/// program over equal shards.
pub(crate) fn check_shard_like(first: (&[usize], DType), x: (&[usize], DType)) -> Result<()> {
    if x.0 != first.0 {
        return Err(Error::Shape {
            what: "x shard",
            expected: format!("{:?} (every rank's shard has one shape)", first.0),
            got: format!("{:?}", x.0),
        });
    }
    if x.1 != first.1 {
        return Err(Error::DType {
            what: "x shard",
            expected: first.1,
            got: x.1,
        });
    }
    Ok(())
}
