//! What the norm modules ([`LayerNorm`](crate::LayerNorm) and
//! [`ShardedLayerNorm`](crate::ShardedLayerNorm)) share: their parameters, drawn from the
//! config's initializers and checked when a caller sets them, the check of a cotangent, and
//! which kernels a config's dtypes select.

use crate::array::Array;
use crate::config::ParamOptions;
use crate::cuda::Dtypes;
use crate::limits::{self, checked_product};
use crate::rng::Rng;
use crate::{DType, Device, Error, NormConfig, NormKind, Result, Tensor};

/// The kernels' dtypes for x of `x_dtype` under `cfg`: its parameter and output dtypes.
pub(crate) fn kernel_dtypes(cfg: &NormConfig, x_dtype: DType) -> Dtypes {
    Dtypes {
        x: x_dtype,
        param: cfg.param_dtype(),
        out: cfg.output_dtype(x_dtype),
    }
}

/// [`kernel_dtypes`] when the kernels are compiled for them, else an error naming the
/// combination and `instead`, where to go for it.
pub(crate) fn compiled_dtypes(cfg: &NormConfig, x_dtype: DType, instead: &str) -> Result<Dtypes> {
    let d = kernel_dtypes(cfg, x_dtype);
    d.check_compiled().map_err(|e| match e {
        Error::Unsupported(why) => Error::Unsupported(format!("{why} ({instead})")),
        other => other,
    })?;
    Ok(d)
}

/// Errors unless `cfg` is an RMSNorm config: what `RmsNorm::new` and `ShardedRmsNorm::new`
/// (named `what`) take, so that neither builds a LayerNorm.
pub(crate) fn require_rms(cfg: &NormConfig, what: &str) -> Result<()> {
    if cfg.kind() == NormKind::RmsNorm {
        return Ok(());
    }
    Err(Error::InvalidConfig(format!(
        "{what} takes an RMSNorm config (NormConfig::rms()), not a {} one; use the LayerNorm \
         form for it",
        cfg.kind().label()
    )))
}

/// Scale and bias (those the config uses) of `shape`, drawn from the config's initializers
/// in that order, on `device`.
pub(crate) fn init_params(
    cfg: &NormConfig,
    shape: &[usize],
    device: &Device,
    rng: &mut Rng,
) -> Result<(Option<Array>, Option<Array>)> {
    let mut param = |on: bool, options: &ParamOptions| -> Result<Option<Array>> {
        if !on {
            return Ok(None);
        }
        let data = options.init.init(shape, rng)?;
        let t = Tensor::new(shape.to_vec(), cfg.param_dtype(), data)?;
        Array::from_tensor(device, &t).map(Some)
    };
    let scale = param(cfg.has_scale(), cfg.scale_options())?;
    let bias = param(cfg.has_bias(), cfg.bias_options())?;
    Ok((scale, bias))
}

/// Errors unless the parameters of `param_shape` (those the config has) fit on `device`,
/// and on the host where they are initialised: checked before any is drawn.
pub(crate) fn check_param_alloc(
    cfg: &NormConfig,
    device: &Device,
    param_shape: &[usize],
) -> Result<()> {
    if !(cfg.has_scale() || cfg.has_bias()) {
        return Ok(());
    }
    let what = "x_shape (the parameters' part)";
    let n = checked_product(what, param_shape)?;
    limits::check_host_alloc(what, n, std::mem::size_of::<f64>())?;
    device.check_alloc(what, n, cfg.param_dtype().size())
}

/// Checks a parameter tensor a caller hands to a layer: the config uses it, and its shape
/// and dtype are the layer's.
pub(crate) fn check_param(
    cfg: &NormConfig,
    param_shape: &[usize],
    what: &'static str,
    used: bool,
    t: &Tensor,
) -> Result<()> {
    if !used {
        return Err(Error::InvalidConfig(format!("the config has no {what}")));
    }
    if t.shape() != param_shape {
        return Err(Error::Shape {
            what,
            expected: format!("{param_shape:?}"),
            got: format!("{:?}", t.shape()),
        });
    }
    if t.dtype() != cfg.param_dtype() {
        return Err(Error::DType {
            what,
            expected: cfg.param_dtype(),
            got: t.dtype(),
        });
    }
    Ok(())
}

/// Checks a cotangent: the shape of x, the dtype of y (the config's output dtype for x), and
/// on the same kind of device as x.
pub(crate) fn check_cotangent(cfg: &NormConfig, x: &Array, dy: &Array) -> Result<()> {
    if dy.shape() != x.shape() {
        return Err(Error::Shape {
            what: "dy",
            expected: format!("{:?} (the shape of x)", x.shape()),
            got: format!("{:?}", dy.shape()),
        });
    }
    let y_dtype = cfg.output_dtype(x.dtype());
    if dy.dtype() != y_dtype {
        return Err(Error::DType {
            what: "dy",
            expected: y_dtype,
            got: dy.dtype(),
        });
    }
    if dy.is_cuda() != x.is_cuda() {
        return Err(Error::Unsupported(
            "dy and x live on different devices".into(),
        ));
    }
    Ok(())
}
