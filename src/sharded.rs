//! [`ShardedLayerNorm`]: LayerNorm / RMSNorm whose normalized features are split over the
//! ranks of a group (tensor parallelism), with flax's `axis_name` / `axis_index_groups`
//! semantics.
//!
//! Each rank holds `[rows, D/k]`: its own slice of the features of every row, and its own
//! slice of scale and bias. The statistics of a row span its group's k ranks, so each
//! direction takes exactly one collective, enqueued between two kernels on each rank's
//! stream, with no host synchronisation:
//!
//! * forward: per-shard `(n, mean, M2)` per row, one all-gather within the group, merged in
//!   group-position order (exact and deterministic), then normalise. With flax's
//!   `use_fast_variance` (its default) and for RMSNorm: per-shard `(mean, mean of squares)`
//!   and one all-reduce, which is flax's single `pmean`.
//! * backward: per-shard `(sum g, sum g * xhat)` per row (`g = dy * scale`), one all-reduce,
//!   then dx. dscale / dbias are the shard's own, summed over its rows.
//!
//! flax's exact-variance path takes two pmeans (the mean, then the mean squared
//! deviation); every rank's moments give the same statistics up to rounding with one
//! collective: `mean = avg_q mean_q`, `var = avg_q (M2_q / n_q + (mean_q - mean)^2)`, the
//! ranks weighing the same whatever their counts, as `pmean` weighs them (which matters
//! with flax's `mask`: [`ShardedLayerNorm::forward_train_masked`]). The gradients are those
//! of `jax.vjp` inside `pmap` (the transpose of `pmean` is `pmean`), as
//! [`crate::reference::sharded_backward`] computes them.
//!
//! On the CPU ([`crate::dist::InProcessHost`]) the same algorithm runs in f64: it is what
//! the tests check against the reference (which gathers whole rows) and flax's fixtures.
//!
//! ```
//! use std::sync::Arc;
//! use warpnorm::dist::InProcessHost;
//! use warpnorm::sharded::ShardedLayerNorm;
//! use warpnorm::{Array, DType, Device, NormConfig, Tensor};
//! # fn main() -> warpnorm::Result<()> {
//! // 4 ranks in 2 groups; each holds 256 of the 512 features of 8 rows.
//! let cfg = NormConfig::flax().axis_name("model").axis_index_groups(vec![vec![0, 1], vec![2, 3]]);
//! let comm = Arc::new(InProcessHost::for_config(&cfg, 4)?);
//! let ln = ShardedLayerNorm::new(&cfg, comm, &[8, 256], 0)?;
//! let xs: Vec<Array> = (0..4)
//!     .map(|r| Array::from_tensor(&Device::Cpu, &Tensor::full([8, 256], DType::F32, r as f64)?))
//!     .collect::<warpnorm::Result<_>>()?;
//! let (ys, saved) = ln.forward_train(&xs)?;
//! assert_eq!((ys.len(), saved.len()), (4, 4));
//! # Ok(()) }
//! ```

mod cuda;
mod host;

use std::sync::Arc;

use crate::array::Array;
use crate::config::Axes;
use crate::dist::Collective;
use crate::layer::Gradients;
use crate::layout::Layout;
use crate::limits::checked_product;
use crate::module_params;
use crate::rng::Rng;
use crate::shard_stats::StatsMode;
use crate::{DType, Device, Error, NormConfig, NormKind, Result, Tensor};

/// What `forward_train` keeps for `backward`, per local rank.
#[derive(Debug)]
pub struct ShardSaved {
    /// Per-row mean of the whole (group-wide) row: f32 on a GPU; 0 for RMSNorm.
    pub mean: Array,
    /// Per-row `1 / sqrt(var + eps)`.
    pub rstd: Array,
    /// The fast variance's clamp derivative per row (1, 1/2 at a zero variance, 0 below):
    /// what makes dx follow JAX's gradient of `maximum(0, E[x^2] - E[x]^2)` exactly.
    dvar: Option<Array>,
    /// flax's mask of this rank's shard, when the forward had one.
    mask: Option<Vec<bool>>,
    /// The kernels' copy of `mask` (GPU ranks), kept so that backward need not upload it.
    mask_on_gpu: Option<cudarc::driver::CudaSlice<u8>>,
}

/// One rank's parameters: its slice of scale and bias.
#[derive(Debug)]
struct ShardParams {
    scale: Option<Array>,
    bias: Option<Array>,
}

/// A LayerNorm / RMSNorm (by config) over features sharded across the ranks of a
/// [`Collective`]'s groups. See the module docs.
///
/// `Send` and `Sync`: a thread per GPU may own its rank's layer, and threads may share
/// one (its calls take `&self`; the collective serialises what must be serialised).
pub struct ShardedLayerNorm {
    cfg: NormConfig,
    comm: Arc<dyn Collective>,
    axes: Axes,
    rank: usize,
    params: Vec<ShardParams>,
}

const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<ShardedLayerNorm>();
    send_and_sync::<ShardSaved>();
};

/// Sharded RMSNorm ([`NormConfig::rms`]): a [`ShardedLayerNorm`] built only from an RMSNorm
/// config. It is used as the [`ShardedLayerNorm`] it derefs to.
pub struct ShardedRmsNorm(ShardedLayerNorm);

impl ShardedRmsNorm {
    /// [`ShardedLayerNorm::new`] for an RMSNorm config; any other config is an
    /// [`Error::InvalidConfig`].
    pub fn new(
        cfg: &NormConfig,
        comm: Arc<dyn Collective>,
        shard_shape: &[usize],
        seed: u64,
    ) -> Result<ShardedRmsNorm> {
        module_params::require_rms(cfg, "ShardedRmsNorm::new")?;
        ShardedLayerNorm::new(cfg, comm, shard_shape, seed).map(ShardedRmsNorm)
    }

    /// The layer itself.
    pub fn into_inner(self) -> ShardedLayerNorm {
        self.0
    }
}

impl std::fmt::Debug for ShardedRmsNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedRmsNorm").field(&self.0).finish()
    }
}

impl std::ops::Deref for ShardedRmsNorm {
    type Target = ShardedLayerNorm;
    fn deref(&self) -> &ShardedLayerNorm {
        &self.0
    }
}

impl std::ops::DerefMut for ShardedRmsNorm {
    fn deref_mut(&mut self) -> &mut ShardedLayerNorm {
        &mut self.0
    }
}

impl std::fmt::Debug for ShardedLayerNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedLayerNorm")
            .field("cfg", &self.cfg)
            .field("axis_name", &self.comm.axis_name())
            .field("groups", self.comm.groups())
            .field("local_ranks", &self.comm.local_ranks())
            .field("axes", &self.axes)
            .finish()
    }
}

impl ShardedLayerNorm {
    /// A layer for shards shaped like `shard_shape` (each local rank's slice; batch axes
    /// may differ later), over the axis and groups of `comm`. Every check happens here,
    /// before any communication: the config must name `comm`'s axis, its
    /// `axis_index_groups` must be valid for the world and equal `comm`'s groups, and the
    /// normalized axes must be the trailing ones (the features the ranks split).
    /// Parameters come from the config's initializers, seeded by `seed` and the rank.
    pub fn new(
        cfg: &NormConfig,
        comm: Arc<dyn Collective>,
        shard_shape: &[usize],
        seed: u64,
    ) -> Result<ShardedLayerNorm> {
        cfg.validate()?;
        checked_product("shard_shape", shard_shape)?;
        check_axis(cfg, comm.as_ref())?;
        let kind = cfg.kind();
        if !matches!(kind, NormKind::LayerNorm | NormKind::RmsNorm) {
            return Err(Error::Unsupported(format!(
                "sharded {}: only flax LayerNorm and RMSNorm have an axis_name",
                kind.label()
            )));
        }
        let devices = comm.devices();
        if devices.len() != comm.local_ranks().len() || devices.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "the collective reports {} device(s) for {} local rank(s)",
                devices.len(),
                comm.local_ranks().len()
            )));
        }
        if devices.iter().any(Device::is_cuda) && !devices.iter().all(Device::is_cuda) {
            return Err(Error::Unsupported(
                "local ranks on both the CPU and a GPU in one collective".into(),
            ));
        }
        let axes = resolve(cfg, shard_shape)?;
        for device in devices {
            module_params::check_param_alloc(cfg, device, &axes.param_shape)?;
        }
        let mut params = Vec::with_capacity(devices.len());
        for (device, &rank) in devices.iter().zip(comm.local_ranks()) {
            let mut rng = Rng::new(seed ^ (rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (scale, bias) =
                module_params::init_params(cfg, &axes.param_shape, device, &mut rng)?;
            params.push(ShardParams { scale, bias });
        }
        Ok(ShardedLayerNorm {
            cfg: cfg.clone(),
            comm,
            axes,
            rank: shard_shape.len(),
            params,
        })
    }

    pub fn config(&self) -> &NormConfig {
        &self.cfg
    }

    /// The collective the statistics go through.
    pub fn collective(&self) -> &Arc<dyn Collective> {
        &self.comm
    }

    /// The world ranks this layer runs, in the order its calls take their inputs.
    pub fn local_ranks(&self) -> &[usize] {
        self.comm.local_ranks()
    }

    /// Local rank `local`'s slice of the scale.
    pub fn scale(&self, local: usize) -> Option<&Array> {
        self.params.get(local).and_then(|p| p.scale.as_ref())
    }

    /// Local rank `local`'s slice of the bias.
    pub fn bias(&self, local: usize) -> Option<&Array> {
        self.params.get(local).and_then(|p| p.bias.as_ref())
    }

    /// Replaces local rank `local`'s slice of the scale: shape and dtype must match.
    pub fn set_scale(&mut self, local: usize, t: &Tensor) -> Result<()> {
        let a = self.param_array("scale", local, self.cfg.has_scale(), t)?;
        self.params[local].scale = Some(a);
        Ok(())
    }

    /// Replaces local rank `local`'s slice of the bias: shape and dtype must match.
    pub fn set_bias(&mut self, local: usize, t: &Tensor) -> Result<()> {
        let a = self.param_array("bias", local, self.cfg.has_bias(), t)?;
        self.params[local].bias = Some(a);
        Ok(())
    }

    fn param_array(
        &self,
        what: &'static str,
        local: usize,
        used: bool,
        t: &Tensor,
    ) -> Result<Array> {
        let device = self.comm.devices().get(local).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "local rank {local} does not exist ({} local ranks)",
                self.params.len()
            ))
        })?;
        module_params::check_param(&self.cfg, &self.axes.param_shape, what, used, t)?;
        Array::from_tensor(device, t)
    }

    /// Inference: y for every local rank's shard.
    pub fn forward(&self, xs: &[Array]) -> Result<Vec<Array>> {
        self.run_forward(xs, None, false).map(|(ys, _)| ys)
    }

    /// Inference with flax's mask (see [`ShardedLayerNorm::forward_train_masked`]).
    pub fn forward_masked(&self, xs: &[Array], masks: &[Vec<bool>]) -> Result<Vec<Array>> {
        self.run_forward(xs, Some(masks), false).map(|(ys, _)| ys)
    }

    /// Training: y and what backward needs, for every local rank's shard.
    pub fn forward_train(&self, xs: &[Array]) -> Result<(Vec<Array>, Vec<ShardSaved>)> {
        self.run_forward(xs, None, true)
    }

    /// Training with flax's mask: `masks[i]` has one entry per element of `xs[i]`, `true`
    /// where the element takes part in the statistics (every element is still normalised).
    /// As in flax under `pmap`, each rank's masked mean enters its group's `pmean` with the
    /// same weight, whatever its count; a rank with no selected element in a row makes that
    /// row NaN for the whole group.
    pub fn forward_train_masked(
        &self,
        xs: &[Array],
        masks: &[Vec<bool>],
    ) -> Result<(Vec<Array>, Vec<ShardSaved>)> {
        self.run_forward(xs, Some(masks), true)
    }

    /// Gradients for cotangents `dys` (shapes of x, dtype of y): dx of every local rank's
    /// shard, and dscale / dbias of its own parameters.
    pub fn backward(
        &self,
        xs: &[Array],
        dys: &[Array],
        saved: &[ShardSaved],
    ) -> Result<Vec<Gradients>> {
        let view = self.check_inputs(xs)?;
        check_count("dy shards", xs.len(), dys.len())?;
        check_count("saved statistics", xs.len(), saved.len())?;
        for (x, dy) in xs.iter().zip(dys) {
            module_params::check_cotangent(&self.cfg, x, dy)?;
        }
        for (s, x) in saved.iter().zip(xs) {
            let dvar_rows = s.dvar.as_ref().map_or(view.num_rows(), Array::numel);
            let mask_len = s.mask.as_ref().map_or(x.numel(), Vec::len);
            if s.mean.numel() != view.num_rows()
                || s.rstd.numel() != view.num_rows()
                || dvar_rows != view.num_rows()
                || mask_len != x.numel()
            {
                return Err(Error::Shape {
                    what: "saved statistics",
                    expected: format!(
                        "{} rows and a mask of {} elements, or none (from forward_train of these shards)",
                        view.num_rows(),
                        x.numel()
                    ),
                    got: format!(
                        "{} means, {} rstds, {} dvars, a mask of {mask_len} elements",
                        s.mean.numel(),
                        s.rstd.numel(),
                        dvar_rows
                    ),
                });
            }
        }
        if self.on_gpu() {
            self.cuda_backward(xs, dys, saved, view)
        } else {
            self.host_backward(xs, dys, saved, view)
        }
    }

    fn run_forward(
        &self,
        xs: &[Array],
        masks: Option<&[Vec<bool>]>,
        train: bool,
    ) -> Result<(Vec<Array>, Vec<ShardSaved>)> {
        let view = self.check_inputs(xs)?;
        if let Some(masks) = masks {
            check_count("masks", xs.len(), masks.len())?;
            for (x, m) in xs.iter().zip(masks) {
                if m.len() != x.numel() {
                    return Err(Error::Shape {
                        what: "mask",
                        expected: format!("{} elements (one per element of x)", x.numel()),
                        got: format!("{} elements", m.len()),
                    });
                }
            }
        }
        if self.on_gpu() {
            self.cuda_forward(xs, masks, view, train)
        } else {
            self.host_forward(xs, masks, view)
        }
    }

    fn on_gpu(&self) -> bool {
        self.comm.devices().iter().all(Device::is_cuda)
    }

    /// Ranks per group: the k whose shards make up a row.
    pub(crate) fn group_size(&self) -> usize {
        self.comm.groups().group_size()
    }

    /// How the group combines its statistics.
    pub(crate) fn mode(&self) -> StatsMode {
        StatsMode::for_config(&self.cfg)
    }

    /// Whether backward needs the fast variance's clamp derivative.
    pub(crate) fn has_dvar(&self) -> bool {
        self.cfg.kind() == NormKind::LayerNorm && self.cfg.fast_variance()
    }

    /// Checks one shard per local rank, all of one shape and dtype (as `pmap` maps one
    /// program over equal shards), each on its rank's device.
    fn check_inputs(&self, xs: &[Array]) -> Result<Layout> {
        check_count("x shards", self.params.len(), xs.len())?;
        let first = &xs[0];
        if first.shape().len() != self.rank {
            return Err(Error::Shape {
                what: "x",
                expected: format!("rank {}", self.rank),
                got: format!("{:?}", first.shape()),
            });
        }
        let axes = resolve(&self.cfg, first.shape())?;
        if axes.param_shape != self.axes.param_shape {
            return Err(Error::Shape {
                what: "x",
                expected: format!(
                    "sizes {:?} at the feature axes {:?}",
                    self.axes.param_shape, self.axes.features
                ),
                got: format!("{:?}", first.shape()),
            });
        }
        let on_gpu = self.on_gpu();
        for x in xs {
            crate::reference::check_shard_like(
                (first.shape(), first.dtype()),
                (x.shape(), x.dtype()),
            )?;
            if x.is_cuda() != on_gpu {
                return Err(Error::Unsupported(format!(
                    "an x shard is on {} but the collective's ranks are on {}",
                    if x.is_cuda() { "a GPU" } else { "the CPU" },
                    if on_gpu { "GPUs" } else { "the CPU" }
                )));
            }
        }
        let cols = axes.row_len(first.shape());
        // Shards are contiguous: `rows` rows of `cols` features.
        Ok(Layout::rows(axes.rows(first.shape()), cols))
    }
}

/// The config must name the collective's axis, with its groups.
fn check_axis(cfg: &NormConfig, comm: &dyn Collective) -> Result<()> {
    let Some(name) = cfg.sync_axis_name() else {
        return Err(Error::InvalidConfig(
            "sharded normalization needs axis_name (without it each rank normalizes alone)".into(),
        ));
    };
    if name != comm.axis_name() {
        return Err(Error::InvalidConfig(format!(
            "unbound axis name `{name}`: the collective reduces over `{}`",
            comm.axis_name()
        )));
    }
    let groups = cfg.groups_for(comm.groups().world())?;
    if &groups != comm.groups() {
        return Err(Error::InvalidGroups(format!(
            "the config's groups {:?} differ from the collective's groups {:?}",
            groups.groups(),
            comm.groups().groups()
        )));
    }
    Ok(())
}

/// The config's axes on a shard: the normalized axes must be the trailing ones, and the
/// parameters (if any) must vary along exactly those.
fn resolve(cfg: &NormConfig, shape: &[usize]) -> Result<Axes> {
    let axes = cfg.resolve(shape)?;
    let red = &axes.reduction;
    let trailing = red
        .iter()
        .rev()
        .zip((0..shape.len()).rev())
        .all(|(&a, b)| a == b);
    if !trailing {
        return Err(Error::Unsupported(format!(
            "sharded normalization over axes {red:?} of a rank-{} shard: the normalized (sharded) axes must be \
             the trailing ones (reference::sharded_forward takes any axes)",
            shape.len()
        )));
    }
    let params = cfg.has_scale() || cfg.has_bias();
    if params && axes.features != *red {
        return Err(Error::Unsupported(format!(
            "feature axes {:?} differ from the normalized axes {red:?}: each rank's parameters must be its slice \
             of the sharded features",
            axes.features
        )));
    }
    if axes.row_len(shape) == 0 {
        return Err(Error::Shape {
            what: "x shard",
            expected: "at least one feature per rank".into(),
            got: format!("{shape:?}"),
        });
    }
    Ok(axes)
}

fn check_count(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(Error::Shape {
            what,
            expected: format!("one per local rank ({expected})"),
            got: got.to_string(),
        });
    }
    Ok(())
}

/// Arrays of per-row statistics as the CPU backend keeps them (unrounded f64).
fn host_stats(v: Vec<f64>) -> Array {
    Array::from_parts(vec![v.len()], DType::F32, crate::array::Storage::Host(v))
}
