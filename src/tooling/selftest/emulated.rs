//! The kernels' CPU emulation as a subject of the self-test: the same forward and
//! backward launches a GPU gets, on host buffers.

use super::{Inputs, Outputs};
use crate::cuda::emulator::{self, HostBackward, HostForward};
use crate::ops::{Layout, NormSpec};
use crate::with_kernel_dtypes;
use crate::{DType, Element, NormConfig, Result, Tensor};

/// Forward and backward of `inputs` (laid out as `layout`) through the emulated kernels,
/// with the statistics of the forward.
pub fn run(cfg: &NormConfig, layout: Layout, inputs: &Inputs) -> Result<Outputs> {
    let d = crate::module_params::kernel_dtypes(cfg, inputs.x.dtype());
    with_kernel_dtypes!(d, <T, P, O> => typed::<T, P, O>(cfg, layout, inputs))
}

fn host<T: Element>(t: &Tensor) -> Vec<T> {
    t.data().iter().map(|&v| T::from_f64(v)).collect()
}

fn tensor<T: Element>(like: &Tensor, dtype: DType, v: &[T]) -> Result<Tensor> {
    Tensor::new(
        like.shape().to_vec(),
        dtype,
        v.iter().map(|e| e.to_f64()).collect(),
    )
}

/// Outputs start as NaN, so a value the kernels fail to write cannot pass.
fn poisoned<T: Element>(n: usize) -> Vec<T> {
    vec![T::from_f64(f64::NAN); n]
}

fn typed<T: Element, P: Element, O: Element>(
    cfg: &NormConfig,
    layout: Layout,
    inputs: &Inputs,
) -> Result<Outputs> {
    let spec = NormSpec::from_config(cfg);
    let (rows, n) = (layout.num_rows(), inputs.x.numel());
    let x: Vec<T> = host(&inputs.x);
    let scale: Option<Vec<P>> = inputs.scale.as_ref().map(host);
    let bias: Option<Vec<P>> = inputs.bias.as_ref().map(host);
    let mask: Option<Vec<u8>> = inputs
        .mask
        .as_ref()
        .map(|m| m.iter().map(|&b| u8::from(b)).collect());
    let (mut y, mut mean, mut rstd) = (poisoned::<O>(n), poisoned(rows), poisoned(rows));
    emulator::forward::<T, P, O>(
        &spec,
        layout,
        HostForward {
            x: &x,
            scale: scale.as_deref(),
            bias: bias.as_deref(),
            mask: mask.as_deref(),
            y: &mut y,
            stats: Some((&mut mean, &mut rstd)),
        },
    )?;
    let dy: Vec<O> = host(&inputs.dy);
    let mut dx = poisoned::<T>(n);
    let mut dscale = scale.as_ref().map(|s| poisoned::<P>(s.len()));
    let mut dbias = bias.as_ref().map(|b| poisoned::<P>(b.len()));
    let mut workspace = poisoned::<f32>(emulator::backward_workspace_len(&layout));
    emulator::backward::<T, P, O>(
        &spec,
        layout,
        HostBackward {
            x: &x,
            dy: &dy,
            scale: scale.as_deref(),
            mask: mask.as_deref(),
            mean: &mean,
            rstd: &rstd,
            dx: &mut dx,
            dscale: dscale.as_deref_mut(),
            dbias: dbias.as_deref_mut(),
            workspace: &mut workspace,
        },
    )?;
    let param = |grad: Option<Vec<P>>, like: Option<&Tensor>| -> Result<Option<Tensor>> {
        match (grad, like) {
            (Some(g), Some(like)) => Ok(Some(tensor(like, P::DTYPE, &g)?)),
            _ => Ok(None),
        }
    };
    Ok([
        Some(tensor(&inputs.dy, O::DTYPE, &y)?),
        Some(tensor(&inputs.x, T::DTYPE, &dx)?),
        param(dscale, inputs.scale.as_ref())?,
        param(dbias, inputs.bias.as_ref())?,
    ])
}
