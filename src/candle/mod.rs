//! warpnorm's LayerNorm / RMSNorm as [candle](https://github.com/huggingface/candle) modules,
//! with gradients through candle's autograd (the `candle` cargo feature).
//!
//! [`LayerNorm`] and [`RmsNorm`] are built from candle tensors or from a
//! [`VarBuilder`] (as `candle_nn::layer_norm` builds its own), take any [`NormConfig`] (every
//! flax / keras option: epsilon, scale and bias on or off, axes, output dtype, fast
//! variance, keras' `rms_scaling`) and implement [`Module`]. Each forward is one candle
//! custom op whose backward gives dx, dscale and dbias to `loss.backward()`:
//!
//! - on candle's CPU device the op runs warpnorm's f64 reference backend (correctly
//!   rounded results, the backward recomputes the statistics);
//! - on a CUDA device (the `candle-cuda` feature) it launches warpnorm's kernels on the
//!   tensors' own buffers and candle's stream: no copy through the host, the forward saves
//!   the per-row mean and rstd (f32) in the op for the fused backward.
//!
//! x, scale and bias are f32, f16 or bf16; the parameters have the config's `param_dtype`
//! and y its output dtype (flax promotes bf16 x with f32 parameters to f32 y: set
//! `.with_param_dtype(DType::BF16)` to keep everything in bf16 as candle-nn does).
//! Non-contiguous inputs are made contiguous (a copy, recorded by candle's autograd).
//!
//! ```no_run
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use warpnorm::{DType as WnDType, NormConfig};
//!
//! fn main() -> candle_core::Result<()> {
//!     let dev = Device::cuda_if_available(0)?;
//!     let varmap = VarMap::new();
//!     let vb = VarBuilder::from_varmap(&varmap, DType::BF16, &dev);
//!     // Parameters in bf16 like the activations (flax would otherwise promote y to f32).
//!     let cfg = NormConfig::flax().epsilon(1e-5).with_param_dtype(WnDType::BF16);
//!     // Parameters named as candle-nn names them ("weight", "bias"): checkpoints load as-is.
//!     let ln = warpnorm::candle::layer_norm(1024, &cfg, vb.pp("ln"))?;
//!     let rms_cfg = NormConfig::rms().with_param_dtype(WnDType::BF16);
//!     let rms = warpnorm::candle::rms_norm(1024, &rms_cfg, vb.pp("rms"))?;
//!     let x = Tensor::randn(0f32, 1.0, (8, 1024), &dev)?.to_dtype(DType::BF16)?;
//!     let loss = rms.forward(&ln.forward(&x)?)?.sqr()?.sum_all()?;
//!     let _grads = loss.backward()?; // reaches the weights of ln and rms and the bias of ln
//!     Ok(())
//! }
//! ```

mod convert;
mod cpu;
#[cfg(feature = "candle-cuda")]
mod cuda;
mod op;

use candle_core::{Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::Initializer;
use crate::{Error, NormConfig, NormKind};

/// Normalizes `x` with the optional `scale` and `bias` as `cfg` says: the functional form
/// of [`LayerNorm`] (and of [`RmsNorm`], whose configs have no bias).
///
/// The parameters present must be exactly those the config uses
/// ([`NormConfig::has_scale`], [`NormConfig::has_bias`]), shaped like x's feature axes and
/// of the config's `param_dtype`.
pub fn norm(
    x: &Tensor,
    scale: Option<&Tensor>,
    bias: Option<&Tensor>,
    cfg: &NormConfig,
) -> Result<Tensor> {
    op::apply(x, scale, bias, cfg)
}

/// A LayerNorm (or, by config, RMSNorm / keras `rms_scaling`) over candle tensors.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    scale: Option<Tensor>,
    bias: Option<Tensor>,
    cfg: NormConfig,
}

impl LayerNorm {
    /// A layer with these parameters; each must be present exactly when `cfg` uses it.
    /// Shapes are checked against x at each forward (they depend on x's rank).
    pub fn new(scale: Option<Tensor>, bias: Option<Tensor>, cfg: NormConfig) -> Result<Self> {
        cfg.validate()?;
        op::check_presence(&cfg, scale.is_some(), bias.is_some())?;
        for (what, p) in [("scale", &scale), ("bias", &bias)] {
            if let Some(p) = p {
                convert::check_dtype(what, p.dtype(), cfg.param_dtype())?;
            }
        }
        Ok(Self { scale, bias, cfg })
    }

    pub fn scale(&self) -> Option<&Tensor> {
        self.scale.as_ref()
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    pub fn config(&self) -> &NormConfig {
        &self.cfg
    }

    /// Normalizes x (any shape the config's axes fit); differentiable.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        norm(x, self.scale.as_ref(), self.bias.as_ref(), &self.cfg)
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        LayerNorm::forward(self, x)
    }
}

/// An RMSNorm: a [`LayerNorm`] whose config computes no mean (flax's `RMSNorm`,
/// [`NormConfig::rms`]) or keras' `rms_scaling`; it has no bias.
#[derive(Clone, Debug)]
pub struct RmsNorm(LayerNorm);

impl RmsNorm {
    /// An RMSNorm with `scale` (`None` when the config has `use_scale=False`).
    pub fn new(scale: Option<Tensor>, cfg: NormConfig) -> Result<Self> {
        check_rms(&cfg)?;
        LayerNorm::new(scale, None, cfg).map(Self)
    }

    pub fn scale(&self) -> Option<&Tensor> {
        self.0.scale()
    }
    pub fn config(&self) -> &NormConfig {
        self.0.config()
    }
    pub fn into_inner(self) -> LayerNorm {
        self.0
    }

    /// Normalizes x; differentiable.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
}

/// A [`LayerNorm`] whose parameters (`shape`: the sizes of x's feature axes, e.g. the
/// hidden size) come from `vb` under candle-nn's names (`weight` or `gamma`, `bias` or
/// `beta`), created with the config's initializers and `param_dtype` when absent.
pub fn layer_norm(shape: impl Into<Shape>, cfg: &NormConfig, vb: VarBuilder) -> Result<LayerNorm> {
    cfg.validate()?;
    let shape = shape.into();
    let scale = cfg
        .has_scale()
        .then(|| {
            param(
                &vb,
                &shape,
                cfg,
                ["weight", "gamma"],
                &cfg.scale_options().init,
            )
        })
        .transpose()?;
    let bias = cfg
        .has_bias()
        .then(|| param(&vb, &shape, cfg, ["bias", "beta"], &cfg.bias_options().init))
        .transpose()?;
    LayerNorm::new(scale, bias, cfg.clone())
}

/// An [`RmsNorm`] whose scale comes from `vb` (`weight`, as candle-nn names it), like
/// [`layer_norm`].
pub fn rms_norm(shape: impl Into<Shape>, cfg: &NormConfig, vb: VarBuilder) -> Result<RmsNorm> {
    check_rms(cfg)?;
    layer_norm(shape, cfg, vb).map(RmsNorm)
}

fn check_rms(cfg: &NormConfig) -> Result<()> {
    if cfg.kind() == NormKind::LayerNorm {
        return Err(Error::InvalidConfig(format!(
            "RmsNorm needs a config that computes no mean (NormConfig::rms() or keras' rms_scaling), got \
             {}",
            cfg.api()
        ))
        .into());
    }
    Ok(())
}

/// The variable `names[0]` (or an alias already in `vb`) of `shape`.
fn param(
    vb: &VarBuilder,
    shape: &Shape,
    cfg: &NormConfig,
    names: [&str; 2],
    init: &Initializer,
) -> Result<Tensor> {
    let name = names
        .into_iter()
        .find(|n| vb.contains_tensor(n))
        .unwrap_or(names[0]);
    let dtype = convert::candle_dtype(cfg.param_dtype());
    vb.get_with_hints_dtype(shape.clone(), name, candle_init(init)?, dtype)
}

/// candle-nn's equivalent of a config initializer; those it has none of are an error (the
/// weights must then come from a checkpoint, or the layer from [`LayerNorm::new`]).
fn candle_init(init: &Initializer) -> Result<Init> {
    Ok(match *init {
        Initializer::Zeros => Init::Const(0.0),
        Initializer::Ones => Init::Const(1.0),
        Initializer::Constant { value } => Init::Const(value),
        Initializer::RandomNormal { mean, stddev } => Init::Randn {
            mean,
            stdev: stddev,
        },
        Initializer::RandomUniform { minval, maxval } => Init::Uniform {
            lo: minval,
            up: maxval,
        },
        ref other => {
            return Err(Error::Unsupported(format!(
                "the initializer {other:?} has no candle_nn::Init equivalent; build the layer with \
                 LayerNorm::new from initialized tensors"
            ))
            .into())
        }
    })
}
