//! In-process collectives: all ranks of the world in one process, on the CPU or on one
//! GPU, with the semantics of the NCCL backend.
//!
//! NCCL refuses two ranks on one GPU, and most test machines have one GPU (or none), so
//! these backends are what makes every world size and group layout testable. Sums run
//! in group-position order (`((b0 + b1) + b2) + ...`), so results are bitwise
//! reproducible; the GPU one enqueues copies and small add kernels on the backend's
//! stream and never waits on the host.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceSlice};

use super::collective::{check_count, check_equal_lens, check_gather_lens, Membership};
use super::{AxisGroups, Buf, BufMut, Collective};
use crate::cuda::{sharded as kernels, CudaBackend, OnStream};
use crate::{Device, Error, NormConfig, Result};

/// The axis name and groups of a config for a world of `world` ranks.
fn axis_of(cfg: &NormConfig, world: usize) -> Result<(String, AxisGroups)> {
    let name = cfg.sync_axis_name().ok_or_else(|| {
        Error::InvalidConfig(
            "the config has no axis_name: without one each rank normalizes alone".into(),
        )
    })?;
    Ok((name.to_string(), cfg.groups_for(world)?))
}

/// Every rank of the world on the CPU, buffers in f64: the collective of the CPU
/// reference backend.
#[derive(Clone, Debug)]
pub struct InProcessHost {
    members: Membership,
}

impl InProcessHost {
    /// All ranks of `groups.world()` over the axis `axis_name`.
    pub fn new(axis_name: impl Into<String>, groups: AxisGroups) -> Result<InProcessHost> {
        let devices = vec![Device::Cpu; groups.world()];
        Ok(InProcessHost {
            members: Membership::whole_world(axis_name, groups, devices)?,
        })
    }

    /// The axis (`axis_name`, `axis_index_groups`) of a flax config, for `world` ranks.
    pub fn for_config(cfg: &NormConfig, world: usize) -> Result<InProcessHost> {
        let (name, groups) = axis_of(cfg, world)?;
        InProcessHost::new(name, groups)
    }
}

fn host_bufs<'s, 'a>(bufs: &'s [Buf<'a>]) -> Result<Vec<&'s [f64]>> {
    bufs.iter()
        .map(|b| match b {
            Buf::Host(v) => Ok(&**v),
            Buf::Cuda(_) => Err(wrong_device("a GPU buffer", "the CPU")),
        })
        .collect()
}

fn host_bufs_mut<'s>(bufs: &'s mut [BufMut<'_>]) -> Result<Vec<&'s mut [f64]>> {
    bufs.iter_mut()
        .map(|b| match b {
            BufMut::Host(v) => Ok(&mut **v),
            BufMut::Cuda(_) => Err(wrong_device("a GPU buffer", "the CPU")),
        })
        .collect()
}

fn wrong_device(what: &str, expected: &str) -> Error {
    Error::Unsupported(format!("{what} was passed to a collective on {expected}"))
}

impl Collective for InProcessHost {
    fn membership(&self) -> &Membership {
        &self.members
    }

    fn all_reduce_sum(&self, bufs: &mut [BufMut<'_>]) -> Result<()> {
        check_count(self, "all_reduce_sum buffers", bufs.len())?;
        let mut bufs = host_bufs_mut(bufs)?;
        let n = check_equal_lens("all_reduce_sum buffer", bufs.iter().map(|b| b.len()), None)?;
        for members in self.groups().groups() {
            let mut sum = bufs[members[0]].to_vec();
            for &m in &members[1..] {
                for (s, v) in sum.iter_mut().zip(bufs[m].iter()) {
                    *s += v;
                }
            }
            for &m in members {
                bufs[m][..n].copy_from_slice(&sum);
            }
        }
        Ok(())
    }

    fn all_gather(&self, send: &[Buf<'_>], recv: &mut [BufMut<'_>]) -> Result<()> {
        check_count(self, "all_gather send buffers", send.len())?;
        check_count(self, "all_gather recv buffers", recv.len())?;
        let send = host_bufs(send)?;
        let mut recv = host_bufs_mut(recv)?;
        let k = self.groups().group_size();
        let n = check_gather_lens(
            k,
            send.iter().map(|b| b.len()),
            recv.iter().map(|b| b.len()),
        )?;
        for members in self.groups().groups() {
            for &r in members {
                for (pos, &q) in members.iter().enumerate() {
                    recv[r][pos * n..(pos + 1) * n].copy_from_slice(send[q]);
                }
            }
        }
        Ok(())
    }
}

/// Every rank of the world on one GPU: k buffers on one device, summed by copies and
/// add kernels on the backend's stream in group-position order.
#[derive(Clone, Debug)]
pub struct InProcessCuda {
    members: Membership,
    backend: Arc<CudaBackend>,
}

impl InProcessCuda {
    /// All ranks of `groups.world()` on `backend`, over the axis `axis_name`.
    pub fn new(
        backend: Arc<CudaBackend>,
        axis_name: impl Into<String>,
        groups: AxisGroups,
    ) -> Result<InProcessCuda> {
        let devices = vec![Device::Cuda(backend.clone()); groups.world()];
        Ok(InProcessCuda {
            members: Membership::whole_world(axis_name, groups, devices)?,
            backend,
        })
    }

    /// The axis (`axis_name`, `axis_index_groups`) of a flax config, for `world` ranks.
    pub fn for_config(
        backend: Arc<CudaBackend>,
        cfg: &NormConfig,
        world: usize,
    ) -> Result<InProcessCuda> {
        let (name, groups) = axis_of(cfg, world)?;
        InProcessCuda::new(backend, name, groups)
    }

    /// The GPU every rank runs on.
    pub fn backend(&self) -> &Arc<CudaBackend> {
        &self.backend
    }

    /// Errors unless every buffer (given by its stream, `None` for a host buffer) is a
    /// GPU buffer of this backend's context.
    fn check_cuda<'b>(
        &self,
        streams: impl Iterator<Item = Option<&'b Arc<CudaStream>>>,
    ) -> Result<()> {
        for stream in streams {
            let stream = stream.ok_or_else(|| wrong_device("a host buffer", "a GPU"))?;
            if !Arc::ptr_eq(stream.context(), self.backend.context()) {
                return Err(Error::Unsupported(format!(
                    "a buffer of another CUDA context was passed to the collective on cuda:{}",
                    self.backend.info().ordinal
                )));
            }
        }
        Ok(())
    }
}

fn stream_of<'b>(b: &'b BufMut<'_>) -> Option<&'b Arc<CudaStream>> {
    match b {
        BufMut::Cuda(v) => Some(v.stream()),
        BufMut::Host(_) => None,
    }
}

/// The GPU view of a buffer (after `check_cuda`, always there).
fn cuda_mut<'s, 'a>(b: &'s mut BufMut<'a>) -> Result<&'s mut CudaViewMut<'a, f32>> {
    match b {
        BufMut::Cuda(v) => Ok(v),
        BufMut::Host(_) => Err(wrong_device("a host buffer", "a GPU")),
    }
}

fn cuda_ref<'s, 'a>(b: &'s BufMut<'a>) -> Result<&'s CudaViewMut<'a, f32>> {
    match b {
        BufMut::Cuda(v) => Ok(v),
        BufMut::Host(_) => Err(wrong_device("a host buffer", "a GPU")),
    }
}

/// Two distinct elements of a slice, the first mutably.
fn pair<T>(items: &mut [T], a: usize, b: usize) -> (&mut T, &T) {
    if a < b {
        let (lo, hi) = items.split_at_mut(b);
        (&mut lo[a], &hi[0])
    } else {
        let (lo, hi) = items.split_at_mut(a);
        (&mut hi[0], &lo[b])
    }
}

impl Collective for InProcessCuda {
    fn membership(&self) -> &Membership {
        &self.members
    }

    fn all_reduce_sum(&self, bufs: &mut [BufMut<'_>]) -> Result<()> {
        check_count(self, "all_reduce_sum buffers", bufs.len())?;
        self.check_cuda(bufs.iter().map(stream_of))?;
        let n = check_equal_lens("all_reduce_sum buffer", bufs.iter().map(BufMut::len), None)?;
        if n == 0 {
            return Ok(());
        }
        let be = &*self.backend;
        let stream = be.stream();
        for members in self.groups().groups() {
            let first = members[0];
            // bufs[first] accumulates the group's sum in position order ...
            for &m in &members[1..] {
                let (dst, src) = pair(bufs, first, m);
                let (dst, src) = (cuda_mut(dst)?, cuda_ref(src)?);
                let (dst_ptr, _dst_guard) = dst.device_ptr_mut(stream);
                let (src_ptr, _src_guard) = src.device_ptr(stream);
                kernels::accumulate(&OnStream { be, stream }, dst_ptr, src_ptr, n as i64)?;
            }
            // ... and is copied to the other members.
            for &m in &members[1..] {
                let (dst, src) = pair(bufs, m, first);
                stream.memcpy_dtod(cuda_ref(src)?, cuda_mut(dst)?)?;
            }
        }
        Ok(())
    }

    fn all_gather(&self, send: &[Buf<'_>], recv: &mut [BufMut<'_>]) -> Result<()> {
        check_count(self, "all_gather send buffers", send.len())?;
        check_count(self, "all_gather recv buffers", recv.len())?;
        let send: Vec<&CudaView<'_, f32>> = send
            .iter()
            .map(|b| match b {
                Buf::Cuda(v) => Ok(v),
                Buf::Host(_) => Err(wrong_device("a host buffer", "a GPU")),
            })
            .collect::<Result<_>>()?;
        self.check_cuda(send.iter().map(|v| Some(v.stream())))?;
        self.check_cuda(recv.iter().map(stream_of))?;
        let k = self.groups().group_size();
        let n = check_gather_lens(
            k,
            send.iter().map(|v| v.len()),
            recv.iter().map(BufMut::len),
        )?;
        if n == 0 {
            return Ok(());
        }
        let stream = self.backend.stream();
        for members in self.groups().groups() {
            for &r in members {
                let dst = cuda_mut(&mut recv[r])?;
                for (pos, &q) in members.iter().enumerate() {
                    let mut part = dst.slice_mut(pos * n..(pos + 1) * n);
                    stream.memcpy_dtod(send[q], &mut part)?;
                }
            }
        }
        Ok(())
    }
}
