//! The candle custom op: x followed by the parameters the config uses (scale, then bias),
//! so one op serves every config as a `CustomOp1`, `CustomOp2` or `CustomOp3`.

#[cfg(feature = "candle-cuda")]
use std::sync::OnceLock;

#[cfg(feature = "candle-cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};

use super::convert::{check_dtype, warpnorm_dtype};
use super::cpu;
#[cfg(feature = "candle-cuda")]
use super::cuda;
use crate::{Error, NormConfig, NormKind, Result};

/// One application of a norm: the config, and on CUDA the statistics its forward saved for
/// its backward (candle keeps the op in the graph until the gradients are computed).
pub(crate) struct NormOp {
    pub(super) cfg: NormConfig,
    /// Whether a backward can follow (some input is tracked): only then are statistics kept.
    #[cfg(feature = "candle-cuda")]
    pub(super) train: bool,
    #[cfg(feature = "candle-cuda")]
    pub(super) saved: OnceLock<cuda::Saved>,
}

/// An op's inputs after x, by role.
pub(crate) struct Params<T> {
    pub scale: Option<T>,
    pub bias: Option<T>,
}

/// dx, and the gradients of the parameters the op took.
pub(crate) struct Grads {
    pub dx: Tensor,
    pub dscale: Option<Tensor>,
    pub dbias: Option<Tensor>,
}

/// Checks x and the parameters against the config, then applies the op (with a backward
/// when any input is tracked by candle's autograd).
pub(crate) fn apply(
    x: &Tensor,
    scale: Option<&Tensor>,
    bias: Option<&Tensor>,
    cfg: &NormConfig,
) -> candle_core::Result<Tensor> {
    check_call(cfg, x, scale, bias)?;
    let x = x.contiguous()?;
    let params = [scale, bias]
        .into_iter()
        .flatten()
        .map(Tensor::contiguous)
        .collect::<candle_core::Result<Vec<_>>>()?;
    let train = x.track_op() || params.iter().any(Tensor::track_op);
    let op = NormOp {
        cfg: cfg.clone(),
        #[cfg(feature = "candle-cuda")]
        train,
        #[cfg(feature = "candle-cuda")]
        saved: OnceLock::new(),
    };
    match (train, params.as_slice()) {
        (true, []) => x.apply_op1(op),
        (true, [p]) => x.apply_op2(p, op),
        (true, [s, b]) => x.apply_op3(s, b, op),
        (false, []) => x.apply_op1_no_bwd(&op),
        (false, [p]) => x.apply_op2_no_bwd(p, &op),
        (false, [s, b]) => x.apply_op3_no_bwd(s, b, &op),
        (_, more) => Err(Error::Unsupported(format!(
            "{} parameter tensors: a norm takes at most a scale and a bias",
            more.len()
        ))
        .into()),
    }
}

/// Errors unless the parameters given are exactly those the config uses.
pub(crate) fn check_presence(cfg: &NormConfig, scale: bool, bias: bool) -> Result<()> {
    for (what, given, used) in [
        ("scale", scale, cfg.has_scale()),
        ("bias", bias, cfg.has_bias()),
    ] {
        if given != used {
            return Err(Error::InvalidConfig(format!(
                "the config {} a {what} but {}",
                if used { "uses" } else { "has no" },
                if given {
                    "one was given"
                } else {
                    "none was given"
                }
            )));
        }
    }
    Ok(())
}

fn check_call(
    cfg: &NormConfig,
    x: &Tensor,
    scale: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<()> {
    cfg.validate()?;
    if let Some(name) = cfg.sync_axis_name() {
        return Err(Error::Unsupported(format!(
            "axis_name `{name}`: statistics synchronised across devices are not available on candle \
             tensors (use ShardedLayerNorm)"
        )));
    }
    check_presence(cfg, scale.is_some(), bias.is_some())?;
    warpnorm_dtype("x", x.dtype())?;
    let axes = cfg.resolve(x.dims())?;
    for (what, p) in [("scale", scale), ("bias", bias)] {
        let Some(p) = p else { continue };
        if p.dims() != axes.param_shape {
            return Err(Error::Shape {
                what,
                expected: format!(
                    "{:?} (x's sizes at the feature axes {:?})",
                    axes.param_shape, axes.features
                ),
                got: format!("{:?}", p.dims()),
            });
        }
        check_dtype(what, p.dtype(), cfg.param_dtype())?;
    }
    Ok(())
}

impl NormOp {
    fn name(&self) -> &'static str {
        match self.cfg.kind() {
            NormKind::LayerNorm => "warpnorm-layer-norm",
            NormKind::RmsNorm => "warpnorm-rms-norm",
            NormKind::RmsScaling => "warpnorm-rms-scaling",
        }
    }

    /// The inputs after x, by the roles the config gives them.
    fn roles<T: Copy>(&self, params: &[T]) -> Params<T> {
        let mut next = params.iter().copied();
        let scale = if self.cfg.has_scale() {
            next.next()
        } else {
            None
        };
        let bias = if self.cfg.has_bias() {
            next.next()
        } else {
            None
        };
        Params { scale, bias }
    }

    fn cpu(
        &self,
        x: (&CpuStorage, &Layout),
        params: &[(&CpuStorage, &Layout)],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok(cpu::forward(&self.cfg, x, self.roles(params))?)
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda(
        &self,
        x: (&CudaStorage, &Layout),
        params: &[(&CudaStorage, &Layout)],
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Ok(cuda::forward(self, x, self.roles(params))?)
    }

    /// dx and the parameters' gradients for cotangent `dy`, on x's device.
    fn grads(&self, x: &Tensor, params: &[&Tensor], dy: &Tensor) -> candle_core::Result<Grads> {
        let params = self.roles(params);
        let dy = dy.contiguous()?;
        match x.device() {
            Device::Cpu => cpu::backward(&self.cfg, x, params, &dy),
            #[cfg(feature = "candle-cuda")]
            Device::Cuda(_) => Ok(cuda::backward(self, x, params, &dy)?),
            other => Err(Error::Unsupported(format!(
                "{} on {other:?}: warpnorm runs on candle's CPU and CUDA devices{}",
                self.name(),
                if cfg!(feature = "candle-cuda") {
                    ""
                } else {
                    " (CUDA with the `candle-cuda` feature)"
                }
            ))
            .into()),
        }
    }
}

impl CustomOp1 for NormOp {
    fn name(&self) -> &'static str {
        NormOp::name(self)
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu((s, l), &[])
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.cuda((s, l), &[])
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.grads(x, &[], dy)?.dx))
    }
}

impl CustomOp2 for NormOp {
    fn name(&self) -> &'static str {
        NormOp::name(self)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu((s1, l1), &[(s2, l2)])
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.cuda((s1, l1), &[(s2, l2)])
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.grads(x, &[p], dy)?;
        Ok((Some(g.dx), g.dscale.or(g.dbias)))
    }
}

impl CustomOp3 for NormOp {
    fn name(&self) -> &'static str {
        NormOp::name(self)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu((s1, l1), &[(s2, l2), (s3, l3)])
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.cuda((s1, l1), &[(s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.grads(x, &[scale, bias], dy)?;
        Ok((Some(g.dx), g.dscale, g.dbias))
    }
}
