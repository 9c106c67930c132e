//! A [`Case`] on the kernels' CPU emulation: the launches a GPU gets, on host buffers.

use super::{Case, Outputs};
use crate::cuda::emulator::{self, HostBackward, HostForward};
use crate::cuda::KernelGeneration;
use crate::ops::NormSpec;
use crate::{Element, Result, Tensor};

fn host<T: Element>(t: &Tensor) -> Vec<T> {
    t.data().iter().map(|&v| T::from_f64(v)).collect()
}

fn poisoned<T: Element>(n: usize) -> Vec<T> {
    vec![T::from_f64(f64::NAN); n]
}

fn wide<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

pub(super) fn run<T: Element, P: Element, O: Element>(
    case: &Case,
    generation: Option<KernelGeneration>,
) -> Result<Outputs> {
    let mut spec = NormSpec::from_config(&case.cfg);
    if let Some(g) = generation {
        spec = spec.with_kernels(g);
    }
    let (rows, n) = (case.layout.num_rows(), case.x.numel());
    let x: Vec<T> = host(&case.x);
    let scale: Option<Vec<P>> = case.scale.as_ref().map(host);
    let bias: Option<Vec<P>> = case.bias.as_ref().map(host);
    let mask: Option<Vec<u8>> = case
        .mask
        .as_ref()
        .map(|m| m.iter().map(|&b| u8::from(b)).collect());
    let (mut y, mut mean, mut rstd) = (poisoned::<O>(n), poisoned(rows), poisoned(rows));
    emulator::forward::<T, P, O>(
        &spec,
        case.layout,
        HostForward {
            x: &x,
            scale: scale.as_deref(),
            bias: bias.as_deref(),
            mask: mask.as_deref(),
            y: &mut y,
            stats: Some((&mut mean, &mut rstd)),
        },
    )?;
    let dy: Vec<O> = host(&case.dy);
    let mut dx = poisoned::<T>(n);
    let mut dscale = scale.as_ref().map(|s| poisoned::<P>(s.len()));
    let mut dbias = bias.as_ref().map(|b| poisoned::<P>(b.len()));
    let mut workspace = poisoned::<f32>(emulator::backward_workspace_len(&case.layout));
    emulator::backward::<T, P, O>(
        &spec,
        case.layout,
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
    Ok(Outputs {
        y: wide(&y),
        mean: wide(&mean),
        rstd: wide(&rstd),
        dx: wide(&dx),
        dscale: dscale.as_deref().map(wide),
        dbias: dbias.as_deref().map(wide),
    })
}
