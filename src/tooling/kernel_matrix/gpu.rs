//! A [`Case`] on a GPU, through the checked [`crate::ops`] calls, and the buffer helpers
//! the GPU tests share with it.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::{Case, Outputs};
use crate::cuda::{CudaBackend, KernelGeneration};
use crate::ops::{self, Backward, Forward, NormSpec, Stats};
use crate::{Element, Result, Tensor};

/// `t` rounded to `T`, on the device.
pub fn upload<T: Element>(s: &Arc<CudaStream>, t: &Tensor) -> Result<CudaSlice<T>> {
    let host: Vec<T> = t.data().iter().map(|&v| T::from_f64(v)).collect();
    Ok(s.clone_htod(&host)?)
}

/// A buffer of NaN: an element the kernels forget to write stays NaN and fails.
pub fn poisoned<T: Element>(s: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<T>> {
    Ok(s.clone_htod(&vec![T::from_f64(f64::NAN); n])?)
}

/// `b` on the host, widened to f64.
pub fn download<T: Element>(s: &Arc<CudaStream>, b: &CudaSlice<T>) -> Result<Vec<f64>> {
    Ok(s.clone_dtoh(b)?.iter().map(|v| v.to_f64()).collect())
}

pub(super) fn run<T: Element, P: Element, O: Element>(
    be: &CudaBackend,
    case: &Case,
    generation: Option<KernelGeneration>,
) -> Result<Outputs> {
    let s = be.stream();
    let mut spec = NormSpec::from_config(&case.cfg);
    if let Some(g) = generation {
        spec = spec.with_kernels(g);
    }
    let (rows, n) = (case.layout.num_rows(), case.x.numel());
    let x = upload::<T>(s, &case.x)?;
    let scale = case.scale.as_ref().map(|t| upload::<P>(s, t)).transpose()?;
    let bias = case.bias.as_ref().map(|t| upload::<P>(s, t)).transpose()?;
    let mask = match &case.mask {
        Some(m) => Some(s.clone_htod(&m.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>())?),
        None => None,
    };
    let dy = upload::<O>(s, &case.dy)?;
    let mut y = poisoned::<O>(s, n)?;
    let (mut mean, mut rstd) = (poisoned::<f32>(s, rows)?, poisoned::<f32>(s, rows)?);
    ops::forward::<T, P, O>(
        be,
        s,
        &spec,
        case.layout,
        Forward {
            x: &x,
            scale: scale.as_ref().map(|b| b as _),
            bias: bias.as_ref().map(|b| b as _),
            mask: mask.as_ref().map(|b| b as _),
            y: &mut y,
            stats: Some(Stats {
                mean: &mut mean,
                rstd: &mut rstd,
            }),
        },
    )?;
    let mut dx = poisoned::<T>(s, n)?;
    let params =
        |p: &Option<CudaSlice<P>>| p.as_ref().map(|b| poisoned::<P>(s, b.len())).transpose();
    let (mut dscale, mut dbias) = (params(&scale)?, params(&bias)?);
    let mut workspace = poisoned::<f32>(s, ops::backward_workspace_len(be, &case.layout))?;
    ops::backward::<T, P, O>(
        be,
        s,
        &spec,
        case.layout,
        Backward {
            x: &x,
            dy: &dy,
            scale: scale.as_ref().map(|b| b as _),
            mask: mask.as_ref().map(|b| b as _),
            mean: &mean,
            rstd: &rstd,
            dx: &mut dx,
            dscale: dscale.as_mut().map(|b| b as _),
            dbias: dbias.as_mut().map(|b| b as _),
            workspace: &mut workspace,
        },
    )?;
    Ok(Outputs {
        y: download(s, &y)?,
        mean: download(s, &mean)?,
        rstd: download(s, &rstd)?,
        dx: download(s, &dx)?,
        dscale: dscale.as_ref().map(|b| download(s, b)).transpose()?,
        dbias: dbias.as_ref().map(|b| download(s, b)).transpose()?,
    })
}
