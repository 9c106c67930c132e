//! The addresses of one call's device buffers, each checked, with cudarc's stream-ordering
//! guards: what every launch on a GPU (the checked ops, the sharded modules) takes its
//! addresses from.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};

use super::norm::check_len;
use super::{CudaBackend, OnStream};
use crate::{Error, Result};

/// Device addresses of one call's buffers, with cudarc's stream-ordering guards kept
/// alive until the launches have been enqueued (dropping a guard records the buffer's use
/// on the stream, which must come after the kernels that use it).
pub(crate) struct BufferGuards<'a> {
    be: &'a CudaBackend,
    stream: &'a CudaStream,
    guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> BufferGuards<'a> {
    pub(crate) fn new(be: &'a CudaBackend, stream: &'a CudaStream) -> Self {
        BufferGuards {
            be,
            stream,
            guards: Vec::new(),
        }
    }

    /// Where the call's kernels go: the backend's kernels on this stream.
    pub(crate) fn launcher(&self) -> OnStream<'a> {
        OnStream {
            be: self.be,
            stream: self.stream,
        }
    }

    /// Checks a read-only buffer (same CUDA context, at least `need` elements).
    pub(crate) fn read<T>(
        &mut self,
        what: &'static str,
        buf: &'a dyn DevicePtr<T>,
        need: usize,
    ) -> Result<u64> {
        check_buffer(self.be, what, buf.stream(), buf.len(), need)?;
        let (ptr, guard) = buf.device_ptr(self.stream);
        self.guards.push(guard);
        Ok(ptr)
    }

    /// Checks a buffer the call writes.
    pub(crate) fn write<'b: 'a, T>(
        &mut self,
        what: &'static str,
        buf: &'a mut (dyn DevicePtrMut<T> + 'b),
        need: usize,
    ) -> Result<u64> {
        check_buffer(self.be, what, buf.stream(), buf.len(), need)?;
        let (ptr, guard) = buf.device_ptr_mut(self.stream);
        self.guards.push(guard);
        Ok(ptr)
    }

    /// [`BufferGuards::read`] of an optional buffer: 0 (the kernels' null) when absent.
    pub(crate) fn read_opt<T>(
        &mut self,
        what: &'static str,
        buf: Option<&'a dyn DevicePtr<T>>,
        need: usize,
    ) -> Result<u64> {
        buf.map_or(Ok(0), |b| self.read(what, b, need))
    }

    /// [`BufferGuards::write`] of an optional buffer.
    pub(crate) fn write_opt<'b: 'a, T>(
        &mut self,
        what: &'static str,
        buf: Option<&'a mut (dyn DevicePtrMut<T> + 'b)>,
        need: usize,
    ) -> Result<Option<u64>> {
        buf.map(|b| self.write(what, b, need)).transpose()
    }
}

fn check_buffer(
    be: &CudaBackend,
    what: &'static str,
    owner: &Arc<CudaStream>,
    len: usize,
    need: usize,
) -> Result<()> {
    if !Arc::ptr_eq(owner.context(), be.context()) {
        return Err(Error::Unsupported(format!(
            "`{what}` lives on another device than cuda:{}",
            be.info().ordinal
        )));
    }
    check_len(what, len, need)
}
