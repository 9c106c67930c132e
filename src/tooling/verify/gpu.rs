//! The device backend of `warpnorm verify`: runs a fixture through [`LayerNorm`] on a GPU
//! (or any [`Device`]). Fixtures the kernels do not cover (sharded cases, axis layouts or
//! dtype combinations a GPU layer hands to the CPU reference) come back as
//! [`Error::Unsupported`], which `verify` reports as skipped rather than failed.

use super::{Backend, Outputs};
use crate::tooling::fixture::Fixture;
use crate::{Array, Device, Error, LayerNorm, Result, Tensor};

/// Runs fixtures on a device through the `LayerNorm` module.
#[derive(Clone, Debug)]
pub struct DeviceBackend {
    device: Device,
}

impl DeviceBackend {
    pub fn new(device: Device) -> Self {
        DeviceBackend { device }
    }
}

/// A fixture's parameter as the layer stores it: keras lays gamma out in its sorted-axis
/// order and reshapes (not transposes) it into the broadcast shape, so the same values
/// in the same order are the layer's parameter whenever the sizes agree.
fn as_param(t: &Tensor, param_shape: &[usize]) -> Result<Tensor> {
    if t.shape() == param_shape {
        Ok(t.clone())
    } else {
        t.reshape(param_shape.to_vec())
    }
}

impl Backend for DeviceBackend {
    fn name(&self) -> String {
        self.device.describe()
    }

    fn run(&self, fx: &Fixture) -> Result<Outputs> {
        if fx.world.is_some() {
            return Err(Error::Unsupported(
                "sharded fixtures: the device backend of verify runs single-device cases".into(),
            ));
        }
        let ranks = fx.ranks()?;
        let r = &ranks[0];
        let mut ln = LayerNorm::new(&self.device, &fx.config, r.x.shape(), 0)?;
        // A GPU layer computes what its kernels do not cover with the CPU reference:
        // checking that here would check the reference twice, so such fixtures are skipped.
        if self.device.is_cuda() {
            ln.kernels_cover(r.x.shape(), r.x.dtype(), r.mask.is_some())?;
        }
        let param_shape = fx.config.resolve(r.x.shape())?.param_shape;
        if let Some(s) = &r.scale {
            ln.set_scale(&as_param(s, &param_shape)?)?;
        }
        if let Some(b) = &r.bias {
            ln.set_bias(&as_param(b, &param_shape)?)?;
        }
        let x = Array::from_tensor(&self.device, &r.x)?;
        let (y, saved) = match &r.mask {
            Some(m) => ln.forward_train_masked(&x, m)?,
            None => ln.forward_train(&x)?,
        };
        let mut out = Outputs {
            y: y.to_tensor()?,
            dx: None,
            dscale: None,
            dbias: None,
        };
        if let Some(dy) = &r.dy {
            let g = ln.backward(&x, &Array::from_tensor(&self.device, dy)?, &saved)?;
            let reshape_like = |a: Array, like: &Option<Tensor>| -> Result<Tensor> {
                let t = a.to_tensor()?;
                match like {
                    Some(l) if l.shape() != t.shape() => t.reshape(l.shape().to_vec()),
                    _ => Ok(t),
                }
            };
            out.dx = Some(g.dx.to_tensor()?);
            out.dscale = g.dscale.map(|a| reshape_like(a, &r.scale)).transpose()?;
            out.dbias = g.dbias.map(|a| reshape_like(a, &r.bias)).transpose()?;
        }
        Ok(out)
    }
}
