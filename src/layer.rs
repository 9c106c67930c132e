//! The [`LayerNorm`] module (also RMSNorm and keras' rms_scaling, by config): parameters
//! on the device, initialised by the config's initializers; `forward`, `forward_train`,
//! `backward`, on a GPU or on the CPU reference backend.
//!
//! ```no_run
//! use warpnorm::{Array, Device, LayerNorm, NormConfig, Tensor, DType};
//! # fn main() -> warpnorm::Result<()> {
//! let (dev, _why_not_gpu) = Device::best();
//! let cfg = NormConfig::flax().epsilon(1e-5);
//! let ln = LayerNorm::new(&dev, &cfg, &[8, 1024], 0)?;
//! let x = Array::from_tensor(&dev, &Tensor::full([8, 1024], DType::BF16, 0.5)?)?;
//! let (y, saved) = ln.forward_train(&x)?;
//! let dy = Array::from_tensor(&dev, &Tensor::full([8, 1024], y.dtype(), 1.0)?)?;
//! let grads = ln.backward(&x, &dy, &saved)?;
//! # let _ = grads.dx; Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::CudaSlice;

use crate::array::{mask_to_device, Array, DeviceElement, Storage};
use crate::cuda::CudaBackend;
use crate::limits::checked_product;
use crate::module_params::{
    check_cotangent, check_param, check_param_alloc, init_params, kernel_dtypes, require_rms,
};
use crate::ops::{self, Layout, NormSpec};
use crate::reference::{self, Params};
use crate::rng::Rng;
use crate::with_kernel_dtypes;
use crate::{Axes, DType, Device, Error, NormConfig, NormKind, Result, Tensor};

/// Why the kernels do not compute a layer's input, which a GPU layer then computes with the
/// reference and a host round trip. A type of its own, so that no [`Error`] is taken for it.
#[derive(Debug)]
pub(crate) struct NotCovered(pub String);

/// What `forward_train` keeps for `backward`.
#[derive(Debug)]
pub struct Saved {
    /// Per-row mean (f32 on a GPU), and 1/sqrt(var + eps).
    pub mean: Array,
    pub rstd: Array,
    /// The layer and the shape of x that produced these statistics: `backward` takes
    /// them only with the same layer and an x of the same shape, on every device.
    origin: Origin,
    mask: Option<Vec<bool>>,
    /// The kernels' copy of `mask`, kept so that backward need not upload it again.
    mask_on_gpu: Option<CudaSlice<u8>>,
}

/// Where saved statistics come from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    layer: LayerId,
    x_shape: Vec<usize>,
}

/// Tells layers apart (a process-wide counter): statistics saved by one layer are
/// meaningless to another, even one of the same shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LayerId(u64);

impl LayerId {
    fn next() -> LayerId {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        LayerId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Gradients: dx in x's dtype, dscale / dbias in the parameter dtype (absent when the
/// config has no such parameter).
#[derive(Debug)]
pub struct Gradients {
    pub dx: Array,
    pub dscale: Option<Array>,
    pub dbias: Option<Array>,
}

/// A LayerNorm / RMSNorm layer for any [`NormConfig`].
#[derive(Debug)]
pub struct LayerNorm {
    id: LayerId,
    cfg: NormConfig,
    device: Device,
    axes: Axes,
    rank: usize,
    scale: Option<Array>,
    bias: Option<Array>,
}

/// RMSNorm ([`NormConfig::rms`], flax's `RMSNorm`): a [`LayerNorm`] whose config computes
/// no mean, built only from such a config. It is used as the [`LayerNorm`] it derefs to.
#[derive(Debug)]
pub struct RmsNorm(LayerNorm);

impl RmsNorm {
    /// [`LayerNorm::new`] for an RMSNorm config; any other config is an
    /// [`Error::InvalidConfig`].
    pub fn new(device: &Device, cfg: &NormConfig, x_shape: &[usize], seed: u64) -> Result<RmsNorm> {
        require_rms(cfg, "RmsNorm::new")?;
        LayerNorm::new(device, cfg, x_shape, seed).map(RmsNorm)
    }

    /// The layer itself.
    pub fn into_inner(self) -> LayerNorm {
        self.0
    }
}

impl std::ops::Deref for RmsNorm {
    type Target = LayerNorm;
    fn deref(&self) -> &LayerNorm {
        &self.0
    }
}

impl std::ops::DerefMut for RmsNorm {
    fn deref_mut(&mut self) -> &mut LayerNorm {
        &mut self.0
    }
}

impl LayerNorm {
    /// A layer for inputs shaped like `x_shape` (batch axes may differ later), with
    /// parameters drawn from the config's initializers with `seed`.
    pub fn new(
        device: &Device,
        cfg: &NormConfig,
        x_shape: &[usize],
        seed: u64,
    ) -> Result<LayerNorm> {
        cfg.validate()?;
        checked_product("x_shape", x_shape)?;
        let axes = cfg.resolve(x_shape)?;
        check_param_alloc(cfg, device, &axes.param_shape)?;
        let (scale, bias) = init_params(cfg, &axes.param_shape, device, &mut Rng::new(seed))?;
        Ok(LayerNorm {
            id: LayerId::next(),
            cfg: cfg.clone(),
            device: device.clone(),
            axes,
            rank: x_shape.len(),
            scale,
            bias,
        })
    }

    pub fn config(&self) -> &NormConfig {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn scale(&self) -> Option<&Array> {
        self.scale.as_ref()
    }
    pub fn bias(&self) -> Option<&Array> {
        self.bias.as_ref()
    }

    /// Replaces the scale (e.g. loaded weights): shape and dtype must match.
    pub fn set_scale(&mut self, t: &Tensor) -> Result<()> {
        self.check_param("scale", self.cfg.has_scale(), t)?;
        self.scale = Some(Array::from_tensor(&self.device, t)?);
        Ok(())
    }

    /// Replaces the bias: shape and dtype must match.
    pub fn set_bias(&mut self, t: &Tensor) -> Result<()> {
        self.check_param("bias", self.cfg.has_bias(), t)?;
        self.bias = Some(Array::from_tensor(&self.device, t)?);
        Ok(())
    }

    fn check_param(&self, what: &'static str, used: bool, t: &Tensor) -> Result<()> {
        check_param(&self.cfg, &self.axes.param_shape, what, used, t)
    }

    /// Inference: y only.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        self.run_forward(x, None, false).map(|(y, _)| y)
    }

    /// Training: y and what backward needs.
    pub fn forward_train(&self, x: &Array) -> Result<(Array, Saved)> {
        self.run_forward(x, None, true)
    }

    /// Inference with flax's mask (see [`LayerNorm::forward_train_masked`]).
    pub fn forward_masked(&self, x: &Array, mask: &[bool]) -> Result<Array> {
        self.run_forward(x, Some(mask), false).map(|(y, _)| y)
    }

    /// Training with flax's mask (`true` = the element takes part in the statistics;
    /// every element is still normalised). `mask` has one entry per element of x.
    pub fn forward_train_masked(&self, x: &Array, mask: &[bool]) -> Result<(Array, Saved)> {
        self.run_forward(x, Some(mask), true)
    }

    /// Gradients for cotangent `dy` (shape of x, dtype of y).
    pub fn backward(&self, x: &Array, dy: &Array, saved: &Saved) -> Result<Gradients> {
        self.check_input(x)?;
        check_cotangent(&self.cfg, x, dy)?;
        self.check_saved(x, saved)?;
        match (
            &self.device,
            self.kernel_layout(x.shape(), x.dtype(), saved.mask.is_some()),
        ) {
            (Device::Cuda(be), Ok(layout)) => {
                let d = kernel_dtypes(&self.cfg, x.dtype());
                with_kernel_dtypes!(d, <T, P, O> => self.gpu_backward::<T, P, O>(be, layout, x, dy, saved))
            }
            // The CPU device, or an input the kernels do not cover: the reference.
            _ => self.reference_backward(x, dy, saved),
        }
    }

    /// Errors unless `saved` came from this layer's `forward_train` of an x shaped like
    /// `x` (checked before either backend runs, so that both reject the same calls).
    fn check_saved(&self, x: &Array, saved: &Saved) -> Result<()> {
        if saved.origin.layer != self.id {
            return Err(Error::InvalidConfig(
                "`saved` comes from another layer's forward_train; pass this layer's".into(),
            ));
        }
        if saved.origin.x_shape != x.shape() {
            return Err(Error::Shape {
                what: "saved",
                expected: format!(
                    "statistics of an x shaped {:?} (the x given to backward)",
                    x.shape()
                ),
                got: format!("statistics of an x shaped {:?}", saved.origin.x_shape),
            });
        }
        Ok(())
    }

    fn origin(&self, x: &Array) -> Origin {
        Origin {
            layer: self.id,
            x_shape: x.shape().to_vec(),
        }
    }

    fn check_input(&self, x: &Array) -> Result<()> {
        if x.shape().len() != self.rank {
            return Err(Error::Shape {
                what: "x",
                expected: format!("rank {}", self.rank),
                got: format!("{:?}", x.shape()),
            });
        }
        let axes = self.cfg.resolve(x.shape())?;
        if axes.param_shape != self.axes.param_shape || axes.reduction != self.axes.reduction {
            return Err(Error::Shape {
                what: "x",
                expected: format!(
                    "sizes {:?} at the feature axes {:?}",
                    self.axes.param_shape, self.axes.features
                ),
                got: format!("{:?}", x.shape()),
            });
        }
        if x.is_cuda() != self.device.is_cuda() {
            return Err(Error::Unsupported(format!(
                "x is on {} but the layer is on {}",
                if x.is_cuda() { "a GPU" } else { "the CPU" },
                self.device.describe()
            )));
        }
        Ok(())
    }

    fn run_forward(&self, x: &Array, mask: Option<&[bool]>, train: bool) -> Result<(Array, Saved)> {
        self.check_input(x)?;
        if let Some(m) = mask {
            if m.len() != x.numel() {
                return Err(Error::Shape {
                    what: "mask",
                    expected: format!("{} elements (one per element of x)", x.numel()),
                    got: format!("{} elements", m.len()),
                });
            }
        }
        match (
            &self.device,
            self.kernel_layout(x.shape(), x.dtype(), mask.is_some()),
        ) {
            (Device::Cuda(be), Ok(layout)) => {
                let mask_dev = mask.map(|m| mask_to_device(be.stream(), m)).transpose()?;
                let d = kernel_dtypes(&self.cfg, x.dtype());
                let (y, mean, rstd) = with_kernel_dtypes!(d, <T, P, O> => {
                    self.gpu_forward::<T, P, O>(be, layout, x, mask_dev.as_ref(), train)
                })?;
                let rows = layout.num_rows();
                let stats =
                    |s: CudaSlice<f32>| Array::from_parts(vec![rows], DType::F32, Storage::F32(s));
                Ok((
                    y,
                    Saved {
                        mean: stats(mean),
                        rstd: stats(rstd),
                        origin: self.origin(x),
                        mask: mask.map(<[bool]>::to_vec),
                        mask_on_gpu: mask_dev,
                    },
                ))
            }
            // The CPU device, or an input the kernels do not cover: the reference.
            _ => self.reference_forward(x, mask),
        }
    }

    /// Whether the CUDA kernels compute this layer for inputs shaped like `x_shape` (the
    /// layer then runs on the GPU), or why not ([`Error::Unsupported`]): then a GPU layer
    /// computes the result with the CPU reference and copies it back (correct for every
    /// config, but a host round trip). Always `Err` on the CPU device.
    pub fn kernels_cover(&self, x_shape: &[usize], x_dtype: DType, masked: bool) -> Result<()> {
        self.kernel_layout(x_shape, x_dtype, masked)
            .map(drop)
            .map_err(|why| Error::Unsupported(why.0))
    }

    /// How the kernels see an x of `x_shape` and `x_dtype`, or why they do not compute it.
    fn kernel_layout(
        &self,
        x_shape: &[usize],
        x_dtype: DType,
        masked: bool,
    ) -> std::result::Result<Layout, NotCovered> {
        if !self.device.is_cuda() {
            return Err(NotCovered("the layer is on the CPU".into()));
        }
        let dtypes = kernel_dtypes(&self.cfg, x_dtype);
        if !dtypes.is_compiled() {
            return Err(NotCovered(dtypes.why_not_compiled()));
        }
        let layout = self.gpu_layout(x_shape)?;
        if masked && matches!(layout, Layout::ChannelsFirst { .. }) {
            return Err(NotCovered(
                "a mask with a reduction axis that is not innermost".into(),
            ));
        }
        Ok(layout)
    }

    /// The f64 reference on the host: the CPU backend, and a GPU layer's path for configs
    /// the kernels do not cover. Results land on the layer's device.
    fn reference_forward(&self, x: &Array, mask: Option<&[bool]>) -> Result<(Array, Saved)> {
        let (scale, bias) = (
            self.param_tensor(&self.scale)?,
            self.param_tensor(&self.bias)?,
        );
        let f = reference::forward(
            &self.cfg,
            &x.to_tensor()?,
            Params::new(scale.as_ref(), bias.as_ref()),
            mask,
        )?;
        let stats = |v: Vec<f64>| -> Result<Array> {
            match &self.device {
                // The CPU keeps the exact f64 statistics.
                Device::Cpu => Ok(Array::from_parts(
                    vec![v.len()],
                    DType::F32,
                    Storage::Host(v),
                )),
                dev => Array::from_tensor(dev, &Tensor::new([v.len()], DType::F32, v)?),
            }
        };
        Ok((
            Array::from_tensor(&self.device, &f.y)?,
            Saved {
                mean: stats(f.mean)?,
                rstd: stats(f.rstd)?,
                origin: self.origin(x),
                mask: mask.map(<[bool]>::to_vec),
                mask_on_gpu: None,
            },
        ))
    }

    fn reference_backward(&self, x: &Array, dy: &Array, saved: &Saved) -> Result<Gradients> {
        let (scale, bias) = (
            self.param_tensor(&self.scale)?,
            self.param_tensor(&self.bias)?,
        );
        let g = reference::backward(
            &self.cfg,
            &x.to_tensor()?,
            Params::new(scale.as_ref(), bias.as_ref()),
            saved.mask.as_deref(),
            &dy.to_tensor()?,
        )?;
        let put = |t: Tensor| Array::from_tensor(&self.device, &t);
        Ok(Gradients {
            dx: put(g.dx)?,
            dscale: g.dscale.map(put).transpose()?,
            dbias: g.dbias.map(put).transpose()?,
        })
    }

    fn param_tensor(&self, p: &Option<Array>) -> Result<Option<Tensor>> {
        p.as_ref().map(Array::to_tensor).transpose()
    }

    fn gpu_layout(&self, shape: &[usize]) -> std::result::Result<Layout, NotCovered> {
        let params = self.scale.is_some() || self.bias.is_some();
        Self::axes_layout(&self.axes, params, shape)
    }

    /// How the reduction axes of a contiguous x of `shape` map onto the kernels' layouts: a
    /// contiguous run of axes, innermost (rows) or not (channels-first), with parameters
    /// (when `params`) along exactly those axes.
    pub(crate) fn axes_layout(
        axes: &Axes,
        params: bool,
        shape: &[usize],
    ) -> std::result::Result<Layout, NotCovered> {
        let red = &axes.reduction;
        let (first, last) = (red[0], red[red.len() - 1]);
        if last - first + 1 != red.len() {
            return Err(NotCovered(format!(
                "reduction axes {red:?} are not adjacent; the GPU kernels need one contiguous run"
            )));
        }
        if params && axes.features != *red {
            return Err(NotCovered(format!(
                "feature axes {:?} differ from the reduction axes {red:?}; the GPU kernels take parameters along the \
                 normalised axes",
                axes.features
            )));
        }
        let outer: usize = shape[..first].iter().product();
        let cols: usize = shape[first..=last].iter().product();
        let inner: usize = shape[last + 1..].iter().product();
        Ok(if inner == 1 {
            Layout::rows(outer, cols)
        } else {
            Layout::ChannelsFirst { outer, cols, inner }
        })
    }
}

impl LayerNorm {
    fn gpu_forward<T: DeviceElement, P: DeviceElement, O: DeviceElement>(
        &self,
        be: &CudaBackend,
        layout: Layout,
        x: &Array,
        mask: Option<&CudaSlice<u8>>,
        train: bool,
    ) -> Result<(Array, CudaSlice<f32>, CudaSlice<f32>)> {
        let stream = be.stream();
        let rows = layout.num_rows();
        let mut y = stream.alloc_zeros::<O>(x.numel())?;
        let mut mean = stream.alloc_zeros::<f32>(if train { rows } else { 0 })?;
        let mut rstd = stream.alloc_zeros::<f32>(if train { rows } else { 0 })?;
        let scale = self
            .scale
            .as_ref()
            .map(|a| a.cuda::<P>("scale"))
            .transpose()?;
        let bias = self
            .bias
            .as_ref()
            .map(|a| a.cuda::<P>("bias"))
            .transpose()?;
        ops::forward::<T, P, O>(
            be,
            stream,
            &NormSpec::from_config(&self.cfg),
            layout,
            ops::Forward {
                x: x.cuda::<T>("x")?,
                scale: scale.map(|s| s as _),
                bias: bias.map(|s| s as _),
                mask: mask.map(|m| m as _),
                y: &mut y,
                stats: train.then_some(ops::Stats {
                    mean: &mut mean,
                    rstd: &mut rstd,
                }),
            },
        )?;
        let y = Array::from_parts(x.shape().to_vec(), O::DTYPE, O::wrap(y));
        Ok((y, mean, rstd))
    }

    fn gpu_backward<T: DeviceElement, P: DeviceElement, O: DeviceElement>(
        &self,
        be: &CudaBackend,
        layout: Layout,
        x: &Array,
        dy: &Array,
        saved: &Saved,
    ) -> Result<Gradients> {
        let stream = be.stream();
        let cols = layout.cols();
        let uploaded;
        let mask = match (&saved.mask_on_gpu, &saved.mask) {
            (Some(on_gpu), _) => Some(on_gpu),
            (None, Some(m)) => {
                uploaded = mask_to_device(stream, m)?;
                Some(&uploaded)
            }
            (None, None) => None,
        };
        let mut dx = stream.alloc_zeros::<T>(x.numel())?;
        let mut dscale = self
            .scale
            .as_ref()
            .map(|_| stream.alloc_zeros::<P>(cols))
            .transpose()?;
        let mut dbias = self
            .bias
            .as_ref()
            .map(|_| stream.alloc_zeros::<P>(cols))
            .transpose()?;
        let mut workspace = stream.alloc_zeros::<f32>(ops::backward_workspace_len(be, &layout))?;
        let scale = self
            .scale
            .as_ref()
            .map(|a| a.cuda::<P>("scale"))
            .transpose()?;
        ops::backward::<T, P, O>(
            be,
            stream,
            &NormSpec::from_config(&self.cfg),
            layout,
            ops::Backward {
                x: x.cuda::<T>("x")?,
                dy: dy.cuda::<O>("dy")?,
                scale: scale.map(|s| s as _),
                mask: mask.map(|m| m as _),
                mean: saved.mean.cuda::<f32>("saved mean")?,
                rstd: saved.rstd.cuda::<f32>("saved rstd")?,
                dx: &mut dx,
                dscale: dscale.as_mut().map(|d| d as _),
                dbias: dbias.as_mut().map(|d| d as _),
                workspace: &mut workspace,
            },
        )?;
        let param_shape = self.axes.param_shape.clone();
        let wrap = |d: CudaSlice<P>| Array::from_parts(param_shape.clone(), P::DTYPE, P::wrap(d));
        Ok(Gradients {
            dx: Array::from_parts(x.shape().to_vec(), T::DTYPE, T::wrap(dx)),
            dscale: dscale.map(wrap),
            dbias: dbias.map(wrap),
        })
    }
}

impl NormKind {
    /// `LayerNorm`, `RMSNorm` or `rms_scaling`.
    pub fn label(&self) -> &'static str {
        match self {
            NormKind::LayerNorm => "LayerNorm",
            NormKind::RmsNorm => "RMSNorm",
            NormKind::RmsScaling => "rms_scaling",
        }
    }
}
