//! `psum` / `pmean` over a named axis for callers' own buffers, as `jax.lax` has them:
//! every rank gets the sum (mean) over its group of `axis_index_groups`, and `pmean`
//! divides by the size of that group.
//!
//! 16-bit device buffers are widened to f32 scratch, reduced, and rounded back once, so
//! the sum accumulates in f32 (as XLA does on GPU). f32 buffers are reduced in place.

use std::any::Any;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::collective::{check_axis, check_count, check_equal_lens};
use super::{BufMut, Collective};
use crate::cuda::{sharded as kernels, CudaBackend, OnStream};
use crate::{DType, Device, Element, Error, Result};

/// `lax.psum(x, axis_name)` over the collective's groups, in place: one buffer per local
/// rank (f32, f16 or bf16), each on its rank's GPU. Enqueued on the ranks' streams.
pub fn psum<T: Element>(
    comm: &dyn Collective,
    axis_name: &str,
    bufs: &mut [CudaSlice<T>],
) -> Result<()> {
    reduce_device(comm, axis_name, bufs, false)
}

/// `lax.pmean(x, axis_name)`: [`psum`] divided by the size of the rank's own group.
pub fn pmean<T: Element>(
    comm: &dyn Collective,
    axis_name: &str,
    bufs: &mut [CudaSlice<T>],
) -> Result<()> {
    reduce_device(comm, axis_name, bufs, true)
}

/// [`psum`] of host buffers (f64) with a CPU collective.
pub fn psum_host(comm: &dyn Collective, axis_name: &str, bufs: &mut [Vec<f64>]) -> Result<()> {
    reduce_host(comm, axis_name, bufs, false)
}

/// [`pmean`] of host buffers (f64) with a CPU collective.
pub fn pmean_host(comm: &dyn Collective, axis_name: &str, bufs: &mut [Vec<f64>]) -> Result<()> {
    reduce_host(comm, axis_name, bufs, true)
}

fn reduce_host(
    comm: &dyn Collective,
    axis_name: &str,
    bufs: &mut [Vec<f64>],
    mean: bool,
) -> Result<()> {
    check_axis(comm, axis_name)?;
    check_count(comm, "psum buffers", bufs.len())?;
    {
        let mut views: Vec<BufMut<'_>> = bufs.iter_mut().map(|b| BufMut::Host(b)).collect();
        comm.all_reduce_sum(&mut views)?;
    }
    if mean {
        let k = comm.groups().group_size() as f64;
        bufs.iter_mut().flatten().for_each(|v| *v /= k);
    }
    Ok(())
}

/// The GPU of every local rank, and a check that each buffer lives on it.
fn backends<T>(comm: &dyn Collective, bufs: &[CudaSlice<T>]) -> Result<Vec<Arc<CudaBackend>>> {
    comm.devices()
        .iter()
        .zip(bufs)
        .zip(comm.local_ranks())
        .map(|((dev, buf), &rank)| match dev {
            Device::Cuda(be) if Arc::ptr_eq(buf.stream().context(), be.context()) => Ok(be.clone()),
            Device::Cuda(be) => Err(Error::Unsupported(format!(
                "the buffer of rank {rank} is not on its GPU cuda:{}",
                be.info().ordinal
            ))),
            Device::Cpu => Err(Error::Unsupported(
                "psum of device buffers needs a GPU collective (use psum_host on the CPU)".into(),
            )),
        })
        .collect()
}

fn reduce_device<T: Element>(
    comm: &dyn Collective,
    axis_name: &str,
    bufs: &mut [CudaSlice<T>],
    mean: bool,
) -> Result<()> {
    check_axis(comm, axis_name)?;
    check_count(comm, "psum buffers", bufs.len())?;
    let bes = backends(comm, bufs)?;
    let n = check_equal_lens("psum buffer", bufs.iter().map(|b| b.len()), None)?;
    if n == 0 {
        // Nothing to reduce (and no empty scratch to allocate); every rank has n == 0.
        return Ok(());
    }
    let divisor = if mean {
        comm.groups().group_size() as f32
    } else {
        1.0
    };
    let dtype = T::DTYPE;
    if T::DTYPE == DType::F32 {
        // In place: f32 buffers are the collective's own element type.
        let mut views = Vec::with_capacity(bufs.len());
        for b in bufs.iter_mut() {
            let b = (b as &mut dyn Any)
                .downcast_mut::<CudaSlice<f32>>()
                .ok_or_else(|| Error::Unsupported("an f32 buffer of another type".into()))?;
            views.push(BufMut::Cuda(b.as_view_mut()));
        }
        comm.all_reduce_sum(&mut views)?;
        drop(views);
        if mean {
            for (b, be) in bufs.iter_mut().zip(&bes) {
                let stream = be.stream();
                let (ptr, _guard) = b.device_ptr_mut(stream);
                kernels::cast_scale(
                    &OnStream { be, stream },
                    DType::F32,
                    DType::F32,
                    ptr,
                    ptr,
                    n as i64,
                    divisor,
                )?;
            }
        }
        return Ok(());
    }
    // 16-bit: widen into f32 scratch, reduce, round back once.
    let mut scratch = Vec::with_capacity(bufs.len());
    for (b, be) in bufs.iter().zip(&bes) {
        let stream = be.stream();
        let mut wide = stream.alloc_zeros::<f32>(n)?;
        {
            let (src, _src_guard) = b.device_ptr(stream);
            let (dst, _dst_guard) = wide.device_ptr_mut(stream);
            kernels::cast_scale(
                &OnStream { be, stream },
                dtype,
                DType::F32,
                src,
                dst,
                n as i64,
                1.0,
            )?;
        }
        scratch.push(wide);
    }
    {
        let mut views: Vec<BufMut<'_>> = scratch
            .iter_mut()
            .map(|s| BufMut::Cuda(s.as_view_mut()))
            .collect();
        comm.all_reduce_sum(&mut views)?;
    }
    for ((b, wide), be) in bufs.iter_mut().zip(&scratch).zip(&bes) {
        let stream = be.stream();
        let (src, _src_guard) = wide.device_ptr(stream);
        let (dst, _dst_guard) = b.device_ptr_mut(stream);
        kernels::cast_scale(
            &OnStream { be, stream },
            DType::F32,
            dtype,
            src,
            dst,
            n as i64,
            divisor,
        )?;
    }
    Ok(())
}
