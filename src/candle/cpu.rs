//! The op on candle's CPU device: warpnorm's f64 reference backend (statistics and affine
//! step in f64, results rounded once to the output dtype).

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor};

use super::convert::{cpu_storage, host_tensor};
use super::op::{Grads, Params};
use crate::{reference, Error, NormConfig, Result};

pub(crate) fn forward(
    cfg: &NormConfig,
    (xs, xl): (&CpuStorage, &Layout),
    params: Params<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let x = host_tensor("x", xs, xl)?;
    let scale = params
        .scale
        .map(|(s, l)| host_tensor("scale", s, l))
        .transpose()?;
    let bias = params
        .bias
        .map(|(s, l)| host_tensor("bias", s, l))
        .transpose()?;
    let f = reference::forward(
        cfg,
        &x,
        reference::Params::new(scale.as_ref(), bias.as_ref()),
        None,
    )?;
    Ok((cpu_storage(&f.y), xl.shape().clone()))
}

/// The reference backward (it recomputes the statistics from x).
pub(crate) fn backward(
    cfg: &NormConfig,
    x: &Tensor,
    params: Params<&Tensor>,
    dy: &Tensor,
) -> candle_core::Result<Grads> {
    let scale = params.scale.map(|p| to_host("scale", p)).transpose()?;
    let bias = params.bias.map(|p| to_host("bias", p)).transpose()?;
    let g = reference::backward(
        cfg,
        &to_host("x", x)?,
        reference::Params::new(scale.as_ref(), bias.as_ref()),
        None,
        &to_host("dy", dy)?,
    )?;
    let like = |t: &crate::Tensor, of: &Tensor| {
        Tensor::from_storage(
            Storage::Cpu(cpu_storage(t)),
            of.shape().clone(),
            BackpropOp::none(),
            false,
        )
    };
    Ok(Grads {
        dx: like(&g.dx, x),
        dscale: g.dscale.as_ref().zip(params.scale).map(|(d, p)| like(d, p)),
        dbias: g.dbias.as_ref().zip(params.bias).map(|(d, p)| like(d, p)),
    })
}

fn to_host(what: &'static str, t: &Tensor) -> candle_core::Result<crate::Tensor> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok(host_tensor(what, s, layout)?),
        other => Err(Error::Unsupported(format!(
            "`{what}` is on {:?} while x is on the CPU",
            other.device()
        ))
        .into()),
    }
}
