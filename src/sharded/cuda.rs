//! The GPU backend of [`ShardedLayerNorm`]: the kernels of `kernels/sharded.cu` around one
//! collective per direction, all enqueued on each rank's stream.
//!
//! Every argument is checked before the first launch, so an error for bad input has
//! enqueued nothing; what can still fail afterwards are driver or NCCL errors.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};

use super::{ShardSaved, ShardedLayerNorm, View};
use crate::array::{mask_to_device, Array, DeviceElement};
use crate::cuda::launch_sharded::{self, ApplyArgs, BwdArgs, ParamGradArgs, Rows, StatsMode};
use crate::cuda::{CudaBackend, Dtypes};
use crate::dist::{Buf, BufMut};
use crate::layer::Gradients;
use crate::module_params;
use crate::with_kernel_dtypes;
use crate::{DType, Device, Error, Result};

/// Device addresses of one launch's buffers, with cudarc's stream-ordering guards kept
/// alive until the launch has been enqueued (dropping a guard records the buffer's use
/// on the stream, which must come after the kernel).
struct Guards<'a> {
    stream: &'a Arc<CudaStream>,
    guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> Guards<'a> {
    fn new(stream: &'a Arc<CudaStream>) -> Self {
        Guards {
            stream,
            guards: Vec::new(),
        }
    }
    fn read<T>(&mut self, buf: &'a CudaSlice<T>) -> u64 {
        let (ptr, guard) = buf.device_ptr(self.stream);
        self.guards.push(guard);
        ptr
    }
    fn read_opt<T>(&mut self, buf: Option<&'a CudaSlice<T>>) -> u64 {
        buf.map_or(0, |b| self.read(b))
    }
    fn write<T>(&mut self, buf: &'a mut CudaSlice<T>) -> u64 {
        let (ptr, guard) = buf.device_ptr_mut(self.stream);
        self.guards.push(guard);
        ptr
    }
    fn write_opt<T>(&mut self, buf: Option<&'a mut CudaSlice<T>>) -> u64 {
        buf.map_or(0, |b| self.write(b))
    }
}

fn rows_of(v: View) -> Rows {
    Rows {
        rows: v.rows as i64,
        cols: v.cols as i64,
    }
}

/// The CUDA slice of an array of the layer's own making (statistics, parameters).
fn slice<'a, T: DeviceElement>(a: &'a Array, what: &'static str) -> Result<&'a CudaSlice<T>> {
    a.cuda::<T>(what)
}

impl ShardedLayerNorm {
    /// Local rank `i`'s GPU.
    fn backend(&self, i: usize) -> Result<&Arc<CudaBackend>> {
        match self.comm.devices().get(i) {
            Some(Device::Cuda(be)) => Ok(be),
            _ => Err(Error::Unsupported(format!("local rank {i} has no GPU"))),
        }
    }

    /// The kernels' dtypes for shards of `x_dtype`, or why the GPU collective cannot
    /// normalise them.
    fn kernel_dtypes(&self, x_dtype: DType) -> Result<Dtypes> {
        let d = module_params::kernel_dtypes(&self.cfg, x_dtype);
        d.check_compiled().map_err(|e| match e {
            Error::Unsupported(why) => {
                Error::Unsupported(format!("{why} (use the CPU collective)"))
            }
            other => other,
        })?;
        Ok(d)
    }

    /// Errors unless every array is a GPU array of dtype `T` on its rank's GPU.
    fn check_on_gpus<T: DeviceElement>(&self, what: &'static str, arrays: &[&Array]) -> Result<()> {
        for (i, a) in arrays.iter().enumerate() {
            let be = self.backend(i)?;
            let s = a.cuda::<T>(what)?;
            if !Arc::ptr_eq(s.stream().context(), be.context()) {
                return Err(Error::Unsupported(format!(
                    "`{what}` of local rank {i} is not on its GPU cuda:{}",
                    be.info().ordinal
                )));
            }
        }
        Ok(())
    }

    pub(super) fn cuda_forward(
        &self,
        xs: &[Array],
        masks: Option<&[Vec<bool>]>,
        v: View,
        train: bool,
    ) -> Result<(Vec<Array>, Vec<ShardSaved>)> {
        let d = self.kernel_dtypes(xs[0].dtype())?;
        with_kernel_dtypes!(d, <T, P, O> => self.gpu_forward::<T, P, O>(xs, masks, v, train))
    }

    /// Local rank `i`'s mask on its GPU (one byte per element), if there is one.
    fn mask_on_gpu(&self, i: usize, mask: Option<&[bool]>) -> Result<Option<CudaSlice<u8>>> {
        let Some(mask) = mask else {
            return Ok(None);
        };
        Ok(Some(mask_to_device(self.backend(i)?.stream(), mask)?))
    }

    pub(super) fn cuda_backward(
        &self,
        xs: &[Array],
        dys: &[Array],
        saved: &[ShardSaved],
        v: View,
    ) -> Result<Vec<Gradients>> {
        let d = self.kernel_dtypes(xs[0].dtype())?;
        with_kernel_dtypes!(d, <T, P, O> => self.gpu_backward::<T, P, O>(xs, dys, saved, v))
    }

    fn gpu_forward<T: DeviceElement, P: DeviceElement, O: DeviceElement>(
        &self,
        xs: &[Array],
        masks: Option<&[Vec<bool>]>,
        v: View,
        train: bool,
    ) -> Result<(Vec<Array>, Vec<ShardSaved>)> {
        self.check_on_gpus::<T>("x", &xs.iter().collect::<Vec<_>>())?;
        let d = Dtypes::of::<T, P, O>();
        let shape = rows_of(v);
        let mode = self.mode();
        let k = self.group_size();
        let per_row = mode.floats_per_row();

        // The masks' device copies: read here, kept for the backward.
        let mut masks_on_gpu: Vec<Option<CudaSlice<u8>>> = (0..xs.len())
            .map(|i| self.mask_on_gpu(i, masks.map(|m| &m[i][..])))
            .collect::<Result<_>>()?;

        // 1. Per-shard statistics.
        let mut sends = Vec::with_capacity(xs.len());
        for (i, x) in xs.iter().enumerate() {
            let be = self.backend(i)?;
            let stream = be.stream();
            let mut send = stream.alloc_zeros::<f32>(v.rows * per_row)?;
            if v.rows > 0 {
                let mut g = Guards::new(stream);
                let x_ptr = g.read(slice::<T>(x, "x")?);
                let mask_ptr = g.read_opt(masks_on_gpu[i].as_ref());
                let out = g.write(&mut send);
                launch_sharded::row_stats(
                    be, stream, d.x, x_ptr, shape.cols, mask_ptr, out, shape, mode,
                )?;
            }
            sends.push(send);
        }

        // 2. One collective within each group.
        let stats = match mode {
            StatsMode::Moments => {
                let mut recvs = Vec::with_capacity(xs.len());
                for i in 0..xs.len() {
                    recvs.push(
                        self.backend(i)?
                            .stream()
                            .alloc_zeros::<f32>(k * v.rows * per_row)?,
                    );
                }
                let send: Vec<Buf<'_>> = sends.iter().map(|s| Buf::Cuda(s.as_view())).collect();
                let mut recv: Vec<BufMut<'_>> = recvs
                    .iter_mut()
                    .map(|r| BufMut::Cuda(r.as_view_mut()))
                    .collect();
                self.comm.all_gather(&send, &mut recv)?;
                drop(recv);
                recvs
            }
            StatsMode::Means => {
                let mut bufs: Vec<BufMut<'_>> = sends
                    .iter_mut()
                    .map(|s| BufMut::Cuda(s.as_view_mut()))
                    .collect();
                self.comm.all_reduce_sum(&mut bufs)?;
                drop(bufs);
                sends
            }
        };

        // 3. Combine in rank order and normalise.
        let mut ys = Vec::with_capacity(xs.len());
        let mut saved = Vec::with_capacity(xs.len());
        for (i, (x, stats)) in xs.iter().zip(&stats).enumerate() {
            let be = self.backend(i)?;
            let stream = be.stream();
            let mut y = stream.alloc_zeros::<O>(x.numel())?;
            // Statistics are kept for training only (no empty allocations for inference).
            let stat_buf = |on: bool| on.then(|| stream.alloc_zeros::<f32>(v.rows)).transpose();
            let mut mean = stat_buf(train)?;
            let mut rstd = stat_buf(train)?;
            let mut dvar = stat_buf(train && self.has_dvar())?;
            if v.rows > 0 {
                let p = &self.params[i];
                let mut g = Guards::new(stream);
                let args = ApplyArgs {
                    x: g.read(slice::<T>(x, "x")?),
                    y: g.write(&mut y),
                    scale: g.read_opt(
                        p.scale
                            .as_ref()
                            .map(|a| slice::<P>(a, "scale"))
                            .transpose()?,
                    ),
                    bias: g.read_opt(p.bias.as_ref().map(|a| slice::<P>(a, "bias")).transpose()?),
                    stats: g.read(stats),
                    mean: g.write_opt(mean.as_mut()),
                    rstd: g.write_opt(rstd.as_mut()),
                    dvar: g.write_opt(dvar.as_mut()),
                    x_stride: shape.cols,
                    y_stride: shape.cols,
                    group: k as i32,
                    eps: crate::config::epsilon_f32(self.cfg.eps())?,
                    kind: self.cfg.kind(),
                    mode,
                };
                launch_sharded::apply(be, stream, d, shape, &args)?;
            }
            ys.push(Array::from_parts(x.shape().to_vec(), O::DTYPE, O::wrap(y)));
            let stat =
                |s: CudaSlice<f32>| Array::from_parts(vec![v.rows], DType::F32, f32::wrap(s));
            if let (Some(mean), Some(rstd)) = (mean, rstd) {
                saved.push(ShardSaved {
                    mean: stat(mean),
                    rstd: stat(rstd),
                    dvar: dvar.map(stat),
                    mask: masks.map(|m| m[i].clone()),
                    mask_on_gpu: masks_on_gpu[i].take(),
                });
            }
        }
        Ok((ys, saved))
    }

    fn gpu_backward<T: DeviceElement, P: DeviceElement, O: DeviceElement>(
        &self,
        xs: &[Array],
        dys: &[Array],
        saved: &[ShardSaved],
        v: View,
    ) -> Result<Vec<Gradients>> {
        self.check_on_gpus::<T>("x", &xs.iter().collect::<Vec<_>>())?;
        self.check_on_gpus::<O>("dy", &dys.iter().collect::<Vec<_>>())?;
        self.check_on_gpus::<f32>(
            "saved mean",
            &saved.iter().map(|s| &s.mean).collect::<Vec<_>>(),
        )?;
        self.check_on_gpus::<f32>(
            "saved rstd",
            &saved.iter().map(|s| &s.rstd).collect::<Vec<_>>(),
        )?;
        for (i, s) in saved.iter().enumerate() {
            if let Some(dv) = &s.dvar {
                let be = self.backend(i)?;
                if !Arc::ptr_eq(
                    dv.cuda::<f32>("saved dvar")?.stream().context(),
                    be.context(),
                ) {
                    return Err(Error::Unsupported(format!(
                        "saved statistics of local rank {i} are not on its GPU"
                    )));
                }
            }
        }
        let d = Dtypes::of::<T, P, O>();
        let shape = rows_of(v);
        let kind = self.cfg.kind();
        let weight = (1.0 / (self.group_size() as f64 * v.cols as f64)) as f32;
        // With a mask the kernel divides this by each row's count of selected elements.
        let masked_weight = (1.0 / self.group_size() as f64) as f32;

        // Masks the forward did not leave on the GPU go up first: an upload between the
        // collective and the dx kernel could make the host wait on the stream.
        let uploaded: Vec<Option<CudaSlice<u8>>> = saved
            .iter()
            .enumerate()
            .map(|(i, s)| match s.mask_on_gpu {
                Some(_) => Ok(None),
                None => self.mask_on_gpu(i, s.mask.as_deref()),
            })
            .collect::<Result<_>>()?;

        // 1. Per-shard sums of every row.
        let mut sums = Vec::with_capacity(xs.len());
        for (i, ((x, dy), s)) in xs.iter().zip(dys).zip(saved).enumerate() {
            let be = self.backend(i)?;
            let stream = be.stream();
            let mut out = stream.alloc_zeros::<f32>(2 * v.rows)?;
            if v.rows > 0 {
                let p = &self.params[i];
                let mut g = Guards::new(stream);
                let a = BwdArgs {
                    x: g.read(slice::<T>(x, "x")?),
                    dy: g.read(slice::<O>(dy, "dy")?),
                    scale: g.read_opt(
                        p.scale
                            .as_ref()
                            .map(|a| slice::<P>(a, "scale"))
                            .transpose()?,
                    ),
                    mean: g.read(slice::<f32>(&s.mean, "saved mean")?),
                    rstd: g.read(slice::<f32>(&s.rstd, "saved rstd")?),
                    dvar: 0,
                    mask: 0,
                    sums: g.write(&mut out),
                    dx: 0,
                    x_stride: shape.cols,
                    dy_stride: shape.cols,
                    dx_stride: shape.cols,
                    weight,
                    kind,
                };
                launch_sharded::bwd_sums(be, stream, d, shape, &a)?;
            }
            sums.push(out);
        }

        // 2. One all-reduce within each group.
        {
            let mut bufs: Vec<BufMut<'_>> = sums
                .iter_mut()
                .map(|s| BufMut::Cuda(s.as_view_mut()))
                .collect();
            self.comm.all_reduce_sum(&mut bufs)?;
        }

        // 3. dx, and the shard's own parameter gradients.
        let mut out = Vec::with_capacity(xs.len());
        for (i, (((x, dy), s), group_sums)) in xs.iter().zip(dys).zip(saved).zip(&sums).enumerate()
        {
            let be = self.backend(i)?;
            let stream = be.stream();
            let p = &self.params[i];
            let mut dx = stream.alloc_zeros::<T>(x.numel())?;
            let mut dscale = p
                .scale
                .as_ref()
                .map(|_| stream.alloc_zeros::<P>(v.cols))
                .transpose()?;
            let mut dbias = p
                .bias
                .as_ref()
                .map(|_| stream.alloc_zeros::<P>(v.cols))
                .transpose()?;
            let mut workspace = (dscale.is_some() || dbias.is_some())
                .then(|| {
                    let len = launch_sharded::param_grads_workspace_len(
                        shape.rows,
                        shape.cols,
                        be.info().sm_count,
                    );
                    stream.alloc_zeros::<f32>(len)
                })
                .transpose()?;
            let mask = s.mask_on_gpu.as_ref().or(uploaded[i].as_ref());
            if v.rows > 0 {
                let mut g = Guards::new(stream);
                let x_ptr = g.read(slice::<T>(x, "x")?);
                let dy_ptr = g.read(slice::<O>(dy, "dy")?);
                let mean = g.read(slice::<f32>(&s.mean, "saved mean")?);
                let rstd = g.read(slice::<f32>(&s.rstd, "saved rstd")?);
                let a = BwdArgs {
                    x: x_ptr,
                    dy: dy_ptr,
                    scale: g.read_opt(
                        p.scale
                            .as_ref()
                            .map(|a| slice::<P>(a, "scale"))
                            .transpose()?,
                    ),
                    mean,
                    rstd,
                    dvar: g.read_opt(
                        s.dvar
                            .as_ref()
                            .map(|a| slice::<f32>(a, "saved dvar"))
                            .transpose()?,
                    ),
                    mask: g.read_opt(mask),
                    sums: g.read(group_sums),
                    dx: g.write(&mut dx),
                    x_stride: shape.cols,
                    dy_stride: shape.cols,
                    dx_stride: shape.cols,
                    weight: if mask.is_some() {
                        masked_weight
                    } else {
                        weight
                    },
                    kind,
                };
                launch_sharded::dx(be, stream, d, shape, &a)?;
                let pg = ParamGradArgs {
                    x: x_ptr,
                    dy: dy_ptr,
                    mean,
                    rstd,
                    x_stride: shape.cols,
                    dy_stride: shape.cols,
                    kind,
                    workspace: g.write_opt(workspace.as_mut()),
                    dscale: dscale.as_mut().map(|b| g.write(b)),
                    dbias: dbias.as_mut().map(|b| g.write(b)),
                };
                launch_sharded::param_grads(be, stream, d, shape, &pg)?;
            }
            let param_shape = self.axes.param_shape.clone();
            let wrap =
                |b: CudaSlice<P>| Array::from_parts(param_shape.clone(), P::DTYPE, P::wrap(b));
            out.push(Gradients {
                dx: Array::from_parts(x.shape().to_vec(), T::DTYPE, T::wrap(dx)),
                dscale: dscale.map(wrap),
                dbias: dbias.map(wrap),
            });
        }
        Ok(out)
    }
}
