//! The GPU backend of [`ShardedLayerNorm`]: the kernels of `kernels/sharded.cu` around one
//! collective per direction, all enqueued on each rank's stream.
//!
//! Every argument is checked before the first launch, so an error for bad input has
//! enqueued nothing; what can still fail afterwards are driver or NCCL errors.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr};

use super::{ShardSaved, ShardedLayerNorm};
use crate::array::{mask_to_device, Array, DeviceElement};
use crate::cuda::sharded::{self as kernels, ApplyArgs, BwdArgs, ParamGradArgs};
use crate::cuda::{BufferGuards, CudaBackend, Dtypes};
use crate::dist::{Buf, BufMut};
use crate::layer::Gradients;
use crate::layout::Layout;
use crate::module_params;
use crate::shard_stats::StatsMode;
use crate::with_kernel_dtypes;
use crate::{DType, Device, Error, Result};

/// The CUDA slice of a parameter, if the layer has it.
fn param<'a, P: DeviceElement>(
    a: Option<&'a Array>,
    what: &'static str,
) -> Result<Option<&'a dyn DevicePtr<P>>> {
    Ok(a.map(|a| slice::<P>(a, what)).transpose()?.map(|s| s as _))
}

/// The address of a statistic the forward keeps (training only), or 0.
fn stat_addr<'a>(
    g: &mut BufferGuards<'a>,
    what: &'static str,
    buf: Option<&'a mut CudaSlice<f32>>,
    rows: usize,
) -> Result<u64> {
    Ok(g.write_opt(what, buf.map(|b| b as _), rows)?.unwrap_or(0))
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
        v: Layout,
        train: bool,
    ) -> Result<(Vec<Array>, Vec<ShardSaved>)> {
        let d = module_params::compiled_dtypes(&self.cfg, xs[0].dtype(), "use the CPU collective")?;
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
        v: Layout,
    ) -> Result<Vec<Gradients>> {
        let d = module_params::compiled_dtypes(&self.cfg, xs[0].dtype(), "use the CPU collective")?;
        with_kernel_dtypes!(d, <T, P, O> => self.gpu_backward::<T, P, O>(xs, dys, saved, v))
    }

    fn gpu_forward<T: DeviceElement, P: DeviceElement, O: DeviceElement>(
        &self,
        xs: &[Array],
        masks: Option<&[Vec<bool>]>,
        v: Layout,
        train: bool,
    ) -> Result<(Vec<Array>, Vec<ShardSaved>)> {
        self.check_on_gpus::<T>("x", &xs.iter().collect::<Vec<_>>())?;
        let d = Dtypes::of::<T, P, O>();
        let (rows, cols, numel) = (v.num_rows(), v.cols(), v.num_rows() * v.cols());
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
            let mut send = stream.alloc_zeros::<f32>(v.num_rows() * per_row)?;
            if v.num_rows() > 0 {
                let mut g = BufferGuards::new(be, stream);
                let x_ptr = g.read("x", slice::<T>(x, "x")?, numel)?;
                let mask = masks_on_gpu[i].as_ref().map(|m| m as _);
                let mask_ptr = g.read_opt("mask", mask, numel)?;
                let out = g.write("statistics", &mut send, rows * per_row)?;
                kernels::row_stats(&g.launcher(), d.x, v, x_ptr, mask_ptr, out, mode)?;
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
                            .alloc_zeros::<f32>(k * v.num_rows() * per_row)?,
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
            let stat_buf = |on: bool| {
                on.then(|| stream.alloc_zeros::<f32>(v.num_rows()))
                    .transpose()
            };
            let mut mean = stat_buf(train)?;
            let mut rstd = stat_buf(train)?;
            let mut dvar = stat_buf(train && self.has_dvar())?;
            if v.num_rows() > 0 {
                let p = &self.params[i];
                let stats_len = match mode {
                    StatsMode::Moments => k * rows * per_row,
                    StatsMode::Means => rows * per_row,
                };
                let mut g = BufferGuards::new(be, stream);
                let args = ApplyArgs {
                    x: g.read("x", slice::<T>(x, "x")?, numel)?,
                    y: g.write("y", &mut y, numel)?,
                    scale: g.read_opt("scale", param::<P>(p.scale.as_ref(), "scale")?, cols)?,
                    bias: g.read_opt("bias", param::<P>(p.bias.as_ref(), "bias")?, cols)?,
                    stats: g.read("statistics", stats, stats_len)?,
                    mean: stat_addr(&mut g, "mean", mean.as_mut(), rows)?,
                    rstd: stat_addr(&mut g, "rstd", rstd.as_mut(), rows)?,
                    dvar: stat_addr(&mut g, "dvar", dvar.as_mut(), rows)?,
                    group: k as i32,
                    eps: crate::config::epsilon_f32(self.cfg.eps())?,
                    kind: self.cfg.kind(),
                    mode,
                };
                kernels::apply(&g.launcher(), d, v, &args)?;
            }
            ys.push(Array::from_parts(x.shape().to_vec(), O::DTYPE, O::wrap(y)));
            let stat =
                |s: CudaSlice<f32>| Array::from_parts(vec![v.num_rows()], DType::F32, f32::wrap(s));
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
        v: Layout,
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
        let (rows, cols, numel) = (v.num_rows(), v.cols(), v.num_rows() * v.cols());
        let kind = self.cfg.kind();
        let weight = |masked: bool| kernels::dx_weight(self.group_size(), cols, masked);

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
            let mut out = stream.alloc_zeros::<f32>(2 * v.num_rows())?;
            if v.num_rows() > 0 {
                let p = &self.params[i];
                let mut g = BufferGuards::new(be, stream);
                let a = BwdArgs {
                    x: g.read("x", slice::<T>(x, "x")?, numel)?,
                    dy: g.read("dy", slice::<O>(dy, "dy")?, numel)?,
                    scale: g.read_opt("scale", param::<P>(p.scale.as_ref(), "scale")?, cols)?,
                    mean: g.read("saved mean", slice::<f32>(&s.mean, "saved mean")?, rows)?,
                    rstd: g.read("saved rstd", slice::<f32>(&s.rstd, "saved rstd")?, rows)?,
                    dvar: 0,
                    mask: 0,
                    sums: g.write("sums", &mut out, 2 * rows)?,
                    dx: 0,
                    weight: weight(false),
                    kind,
                };
                kernels::bwd_sums(&g.launcher(), d, v, &a)?;
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
                .map(|_| stream.alloc_zeros::<P>(v.cols()))
                .transpose()?;
            let mut dbias = p
                .bias
                .as_ref()
                .map(|_| stream.alloc_zeros::<P>(v.cols()))
                .transpose()?;
            let mut workspace = (dscale.is_some() || dbias.is_some())
                .then(|| {
                    let len = kernels::param_grads_workspace_len(v, be.info().sm_count);
                    stream.alloc_zeros::<f32>(len)
                })
                .transpose()?;
            let mask = s.mask_on_gpu.as_ref().or(uploaded[i].as_ref());
            if v.num_rows() > 0 {
                let workspace_len = workspace.as_ref().map_or(0, |w| w.len());
                let mut g = BufferGuards::new(be, stream);
                let x_ptr = g.read("x", slice::<T>(x, "x")?, numel)?;
                let dy_ptr = g.read("dy", slice::<O>(dy, "dy")?, numel)?;
                let mean = g.read("saved mean", slice::<f32>(&s.mean, "saved mean")?, rows)?;
                let rstd = g.read("saved rstd", slice::<f32>(&s.rstd, "saved rstd")?, rows)?;
                let dvar = s.dvar.as_ref().map(|a| slice::<f32>(a, "saved dvar"));
                let a = BwdArgs {
                    x: x_ptr,
                    dy: dy_ptr,
                    scale: g.read_opt("scale", param::<P>(p.scale.as_ref(), "scale")?, cols)?,
                    mean,
                    rstd,
                    dvar: g.read_opt("saved dvar", dvar.transpose()?.map(|a| a as _), rows)?,
                    mask: g.read_opt("mask", mask.map(|m| m as _), numel)?,
                    sums: g.read("sums", group_sums, 2 * rows)?,
                    dx: g.write("dx", &mut dx, numel)?,
                    weight: weight(mask.is_some()),
                    kind,
                };
                kernels::dx(&g.launcher(), d, v, &a)?;
                let pg = ParamGradArgs {
                    x: x_ptr,
                    dy: dy_ptr,
                    mean,
                    rstd,
                    kind,
                    workspace: g
                        .write_opt(
                            "workspace",
                            workspace.as_mut().map(|w| w as _),
                            workspace_len,
                        )?
                        .unwrap_or(0),
                    dscale: g.write_opt("dscale", dscale.as_mut().map(|b| b as _), cols)?,
                    dbias: g.write_opt("dbias", dbias.as_mut().map(|b| b as _), cols)?,
                };
                kernels::param_grads(&g.launcher(), d, v, &pg)?;
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
