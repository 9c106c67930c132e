//! The op on a candle CUDA device: warpnorm's kernels read and write the storages' own
//! buffers, launched on candle's stream. The forward allocates y (and, for a backward,
//! the per-row mean and rstd it saves in the op); the backward allocates dx, dscale, dbias
//! and the f32 workspace of the deterministic dscale / dbias reduction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::{CudaDType, DeviceId};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Layout, Shape, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, ValidAsZeroBits};
use half::{bf16, f16};

use super::convert::{contiguous_range, warpnorm_dtype};
use super::op::{Grads, NormOp, Params};
use crate::cuda::CudaBackend;
use crate::layer::LayerNorm;
use crate::module_params::compiled_dtypes;
use crate::ops::{self, NormSpec};
use crate::with_kernel_dtypes;
use crate::{Element, Error, NormConfig, Result};

/// What a training forward keeps for the backward: f32, one per row.
pub(crate) struct Saved {
    mean: CudaSlice<f32>,
    rstd: CudaSlice<f32>,
}

/// warpnorm's kernels loaded into a candle device's context, once per device (loading the
/// modules is far slower than a launch).
fn backend(dev: &CudaDevice) -> Result<Arc<CudaBackend>> {
    static BACKENDS: OnceLock<Mutex<HashMap<DeviceId, Arc<CudaBackend>>>> = OnceLock::new();
    let mut loaded = BACKENDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(be) = loaded.get(&dev.id()) {
        return Ok(be.clone());
    }
    let be = CudaBackend::with_stream(dev.cuda_stream())?;
    loaded.insert(dev.id(), be.clone());
    Ok(be)
}

/// One call's device, stream and kernel layout; its methods are instantiated per dtype
/// triple (x, parameters, y) by `with_kernel_dtypes!`.
struct Launcher<'a> {
    cfg: &'a NormConfig,
    be: &'a CudaBackend,
    dev: &'a CudaDevice,
    stream: Arc<CudaStream>,
    layout: ops::Layout,
}

impl<'a> Launcher<'a> {
    fn new(
        cfg: &'a NormConfig,
        be: &'a CudaBackend,
        dev: &'a CudaDevice,
        dims: &[usize],
    ) -> Result<Self> {
        let axes = cfg.resolve(dims)?;
        let layout = LayerNorm::axes_layout(&axes, cfg.has_scale() || cfg.has_bias(), dims)
            .map_err(|why| Error::Unsupported(why.0))?;
        Ok(Launcher {
            cfg,
            be,
            dev,
            stream: dev.cuda_stream(),
            layout,
        })
    }

    fn forward<T: Kernel, P: Kernel, O: Kernel>(
        &self,
        x: (&CudaStorage, &Layout),
        params: &Params<(&CudaStorage, &Layout)>,
        train: bool,
    ) -> Result<(CudaStorage, Option<Saved>)> {
        let x = view::<T>("x", x)?;
        let scale = params.scale.map(|p| view::<P>("scale", p)).transpose()?;
        let bias = params.bias.map(|p| view::<P>("bias", p)).transpose()?;
        let rows = self.layout.num_rows();
        let mut y = self.alloc::<O>("y", x.len())?;
        let mut saved = train
            .then(|| -> Result<Saved> {
                Ok(Saved {
                    mean: self.alloc("mean", rows)?,
                    rstd: self.alloc("rstd", rows)?,
                })
            })
            .transpose()?;
        ops::forward::<T, P, O>(
            self.be,
            &self.stream,
            &NormSpec::from_config(self.cfg),
            self.layout,
            ops::Forward {
                x: &x,
                scale: scale.as_ref().map(|s| s as _),
                bias: bias.as_ref().map(|b| b as _),
                mask: None,
                y: &mut y,
                stats: saved.as_mut().map(|s| ops::Stats {
                    mean: &mut s.mean,
                    rstd: &mut s.rstd,
                }),
            },
        )?;
        Ok((self.storage(y), saved))
    }

    /// dx, and dscale / dbias for the parameters the config has.
    fn backward<T: Kernel, P: Kernel, O: Kernel>(
        &self,
        x: (&CudaStorage, &Layout),
        scale: Option<(&CudaStorage, &Layout)>,
        dy: (&CudaStorage, &Layout),
        saved: &Saved,
    ) -> Result<(CudaStorage, Option<CudaStorage>, Option<CudaStorage>)> {
        let x = view::<T>("x", x)?;
        let dy = view::<O>("dy", dy)?;
        let scale = scale.map(|p| view::<P>("scale", p)).transpose()?;
        let cols = self.layout.cols();
        let mut dx = self.alloc::<T>("dx", x.len())?;
        let param_grad = |what, used: bool| used.then(|| self.alloc::<P>(what, cols)).transpose();
        let mut dscale = param_grad("dscale", self.cfg.has_scale())?;
        let mut dbias = param_grad("dbias", self.cfg.has_bias())?;
        let workspace_len = ops::backward_workspace_len(self.be, &self.layout);
        let mut workspace = self.alloc::<f32>("workspace", workspace_len)?;
        ops::backward::<T, P, O>(
            self.be,
            &self.stream,
            &NormSpec::from_config(self.cfg),
            self.layout,
            ops::Backward {
                x: &x,
                dy: &dy,
                scale: scale.as_ref().map(|s| s as _),
                mask: None,
                mean: &saved.mean,
                rstd: &saved.rstd,
                dx: &mut dx,
                dscale: dscale.as_mut().map(|d| d as _),
                dbias: dbias.as_mut().map(|d| d as _),
                workspace: &mut workspace,
            },
        )?;
        Ok((
            self.storage(dx),
            dscale.map(|d| self.storage(d)),
            dbias.map(|d| self.storage(d)),
        ))
    }

    /// `len` zeroed elements on the call's stream; the byte size is checked first (cudarc
    /// multiplies it unchecked).
    fn alloc<E: Element>(&self, what: &'static str, len: usize) -> Result<CudaSlice<E>> {
        if len.checked_mul(std::mem::size_of::<E>()).is_none() {
            return Err(Error::TooLarge {
                what,
                msg: format!("{len} elements overflow a byte size"),
            });
        }
        Ok(self.stream.alloc_zeros(len)?)
    }

    /// A buffer this call allocated, as a storage of its device.
    fn storage<E: Kernel>(&self, slice: CudaSlice<E>) -> CudaStorage {
        CudaStorage::wrap_cuda_slice(slice, self.dev.clone())
    }
}

/// The element types both warpnorm's kernels and candle's CUDA storages hold.
trait Kernel: Element + CudaDType + ValidAsZeroBits {}
impl Kernel for f32 {}
impl Kernel for f16 {}
impl Kernel for bf16 {}

/// The elements of a contiguous storage as a view of its buffer (no copy).
fn view<'s, T: Kernel>(
    what: &'static str,
    (s, l): (&'s CudaStorage, &Layout),
) -> Result<CudaView<'s, T>> {
    let slice = s
        .as_cuda_slice::<T>()
        .map_err(|e| Error::Unsupported(format!("`{what}` is {:?}: {e}", s.dtype())))?;
    let range = contiguous_range(what, l)?;
    let len = slice.len();
    slice.try_slice(range.clone()).ok_or_else(|| Error::Shape {
        what,
        expected: format!("a buffer holding elements {range:?}"),
        got: format!("{len} elements"),
    })
}

pub(crate) fn forward(
    op: &NormOp,
    x: (&CudaStorage, &Layout),
    params: Params<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    let dev = &x.0.device;
    let be = backend(dev)?;
    let l = Launcher::new(&op.cfg, &be, dev, x.1.dims())?;
    let x_dtype = warpnorm_dtype("x", x.0.dtype())?;
    let d = compiled_dtypes(&op.cfg, x_dtype, "use candle's CPU device")?;
    let (y, saved) =
        with_kernel_dtypes!(d, <T, P, O> => l.forward::<T, P, O>(x, &params, op.train))?;
    if let Some(saved) = saved {
        // candle runs an op's forward once; a second set would only repeat the same values.
        let _ = op.saved.set(saved);
    }
    Ok((y, x.1.shape().clone()))
}

pub(crate) fn backward(
    op: &NormOp,
    x: &Tensor,
    params: Params<&Tensor>,
    dy: &Tensor,
) -> candle_core::Result<Grads> {
    let saved = op.saved.get().ok_or_else(|| {
        Error::Unsupported("backward of a CUDA norm whose forward saved no statistics".into())
    })?;
    let (xs, xl) = x.storage_and_layout();
    let (dys, dyl) = dy.storage_and_layout();
    let scale = params.scale.map(Tensor::storage_and_layout);
    let xs = cuda_storage("x", &xs)?;
    let dys = cuda_storage("dy", &dys)?;
    let scale = match &scale {
        Some((s, l)) => Some((cuda_storage("scale", s)?, *l)),
        None => None,
    };
    let dev = &xs.device;
    let be = backend(dev)?;
    let l = Launcher::new(&op.cfg, &be, dev, xl.dims())?;
    let x_dtype = warpnorm_dtype("x", xs.dtype())?;
    let d = compiled_dtypes(&op.cfg, x_dtype, "use candle's CPU device")?;
    let (dx, dscale, dbias) = with_kernel_dtypes!(d, <T, P, O> => {
        l.backward::<T, P, O>((xs, xl), scale, (dys, dyl), saved)
    })?;
    let tensor = |s: CudaStorage, like: &Tensor| {
        Tensor::from_storage(
            Storage::Cuda(s),
            like.shape().clone(),
            BackpropOp::none(),
            false,
        )
    };
    Ok(Grads {
        dx: tensor(dx, x),
        dscale: dscale.zip(params.scale).map(|(d, p)| tensor(d, p)),
        dbias: dbias.zip(params.bias).map(|(d, p)| tensor(d, p)),
    })
}

fn cuda_storage<'s>(what: &str, s: &'s Storage) -> Result<&'s CudaStorage> {
    match s {
        Storage::Cuda(s) => Ok(s),
        other => Err(Error::Unsupported(format!(
            "`{what}` is on {:?} while x is on a CUDA device",
            other.device()
        ))),
    }
}
