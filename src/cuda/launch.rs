//! Where the kernels run: [`Launch`] is what the launches of `norm.rs` (single-device) and
//! `sharded.rs` (sharded normalization) are generic over. [`OnStream`] enqueues on a CUDA
//! stream, the one place a warpnorm kernel is launched on a GPU and the only `unsafe`
//! CUDA launch of the crate; the CPU emulation (feature `emulator`, `emulator.rs`) runs
//! the same kernels on the host, so the selection logic and the parameter structs are
//! exercised by the same tests either way. Every parameter struct reaching a [`Launch`]
//! was built in this module's siblings from buffers whose lengths, strides and alignment
//! their callers checked.

use cudarc::driver::{sys, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use super::{select, CudaBackend};
use crate::{Error, Result};

/// Something that runs warpnorm's kernels.
pub(crate) trait Launch {
    /// SMs of the device: the persistent grids are sized from it.
    fn sm_count(&self) -> u32;
    /// Opt-in shared memory per CTA (bytes).
    fn max_smem_per_cta(&self) -> u32;
    /// How many CTAs of kernel `expr` with `threads` threads and `smem` bytes of dynamic
    /// shared memory fit on one SM at once (its occupancy); at least 1.
    fn resident_ctas(
        &self,
        source: &'static str,
        expr: &str,
        threads: u32,
        smem: u32,
    ) -> Result<u32>;
    /// Runs kernel `expr` (a `tiers::expr` name) from `kernels/<source>.cu`.
    fn launch<P: DeviceRepr>(
        &self,
        source: &'static str,
        expr: &str,
        params: &P,
        cfg: LaunchConfig,
    ) -> Result<()>;
    /// The most CTAs of a thread-block cluster the kernels can be launched in: 1 where the
    /// device (or the code loaded for it) has no clusters.
    fn max_cluster(&self) -> u32;
    /// The most CTAs of a group that meets in global memory: 1 where the device cannot
    /// launch cooperatively (which the group's barrier needs).
    fn max_group(&self) -> u32;
    /// Like [`Launch::launch`], with the CTAs grouped as `grouping` says.
    fn launch_grouped<P: DeviceRepr>(
        &self,
        source: &'static str,
        expr: &str,
        params: &P,
        cfg: LaunchConfig,
        grouping: Grouping,
    ) -> Result<()>;
    /// Sets `words` u32 at device address `at` to zero, in stream order before the next
    /// launch.
    ///
    /// # Safety
    ///
    /// `words` u32 from `at` must lie in a buffer of this launcher's device (host memory
    /// for the emulator) that the caller may write, 4-byte aligned.
    unsafe fn zero_words(&self, at: u64, words: u64) -> Result<()>;
}

/// Which CTAs of a launch run at the same time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grouping {
    /// Thread-block clusters of this many CTAs along x (1: none), dividing the grid and at
    /// most [`Launch::max_cluster`]: a cluster's CTAs are co-scheduled and reach each
    /// other's shared memory.
    Clusters(u32),
    /// Groups of this many CTAs along x that wait for each other through global memory,
    /// dividing the grid and at most [`Launch::max_group`]: a cooperative launch, every
    /// CTA of the grid resident at once (the launch fails where the grid does not fit on
    /// the device at once).
    Groups(u32),
}

/// Launches on a CUDA stream of the backend's context.
pub(crate) struct OnStream<'a> {
    pub be: &'a CudaBackend,
    pub stream: &'a CudaStream,
}

impl Launch for OnStream<'_> {
    fn sm_count(&self) -> u32 {
        self.be.info.sm_count
    }

    fn max_smem_per_cta(&self) -> u32 {
        self.be.info.max_smem_per_cta
    }

    fn resident_ctas(
        &self,
        source: &'static str,
        expr: &str,
        threads: u32,
        smem: u32,
    ) -> Result<u32> {
        self.be.occupancy((expr.to_string(), threads, smem), || {
            let f = self.be.function(source, expr)?;
            // The occupancy query reads the current context.
            self.stream.context().bind_to_thread()?;
            let n =
                f.occupancy_max_active_blocks_per_multiprocessor(threads, smem as usize, None)?;
            Ok(n.max(1))
        })
    }

    fn launch<P: DeviceRepr>(
        &self,
        source: &'static str,
        expr: &str,
        params: &P,
        cfg: LaunchConfig,
    ) -> Result<()> {
        let f = self.be.function(source, expr)?;
        // SAFETY: `params` is the bindgen mirror of the C struct the kernel `expr` takes
        // by value (each `expr` is paired with its struct in `norm.rs` and `sharded.rs`).
        // Its pointers were checked by ops (or, for the sharded kernels, by crate::sharded
        // and crate::dist): x / y / dx / dy / mask cover every row at their strides, scale
        // / bias / dscale / dbias hold `cols` elements, mean / rstd / dvar `rows`, the
        // statistics and sums their documented layouts, the workspace (`select::Workspace`)
        // at least as many partial rows as the grid writes and, for the split backward, a
        // counter (zeroed before the launch) and the slots of every group, and every
        // pointer and stride is aligned for the vector width chosen; all buffers belong to
        // this stream's context. The kernels touch nothing else, and `cfg` comes from the
        // same plan that sized the shared memory.
        unsafe { self.stream.launch_builder(&f).arg(params).launch(cfg) }?;
        Ok(())
    }

    fn max_cluster(&self) -> u32 {
        if self.be.has_clusters() {
            select::MAX_CLUSTER
        } else {
            1
        }
    }

    fn max_group(&self) -> u32 {
        if self.be.info.cooperative_launch {
            select::MAX_GROUP.min(self.be.info.sm_count).max(1)
        } else {
            1
        }
    }

    fn launch_grouped<P: DeviceRepr>(
        &self,
        source: &'static str,
        expr: &str,
        params: &P,
        cfg: LaunchConfig,
        grouping: Grouping,
    ) -> Result<()> {
        grouping.check(expr, cfg.grid_dim.0, self.max_cluster(), self.max_group())?;
        let value = match grouping {
            Grouping::Clusters(1) => return self.launch(source, expr, params, cfg),
            Grouping::Clusters(cluster) => (
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                sys::CUlaunchAttributeValue {
                    clusterDim: sys::CUlaunchAttributeValue_union__bindgen_ty_1 {
                        x: cluster,
                        y: 1,
                        z: 1,
                    },
                },
            ),
            Grouping::Groups(_) if !self.be.info.cooperative_launch => {
                return Err(Error::Unsupported(format!(
                    "{expr}: this device cannot launch kernels cooperatively"
                )))
            }
            Grouping::Groups(_) => (
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE,
                sys::CUlaunchAttributeValue { cooperative: 1 },
            ),
        };
        let f = self.be.function(source, expr)?;
        // cuLaunchKernelEx acts on the current context.
        self.stream.context().bind_to_thread()?;
        let mut attribute = sys::CUlaunchAttribute {
            id: value.0,
            pad: [0; 4],
            value: value.1,
        };
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: 1,
        };
        let mut args = [(params as *const P).cast_mut().cast::<std::ffi::c_void>()];
        // SAFETY: as in `launch` for `params`, `expr` and `cfg`; the kernel takes that one
        // struct, whose address `args` holds and which outlives the call (the driver copies
        // kernel arguments when the launch is enqueued). `config` and `attribute` are
        // valid for the call. A cluster divides the grid and is within the portable
        // cluster size of an sm_90 device whose CUBIN was loaded (`max_cluster`); a
        // cooperative launch is made only on a device that supports it, and the driver
        // refuses it (an error, no launch) when the grid does not fit at once, so the CTAs
        // of a group never wait for one that cannot run.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()?;
        Ok(())
    }

    unsafe fn zero_words(&self, at: u64, words: u64) -> Result<()> {
        let words = usize::try_from(words)
            .map_err(|_| Error::Unsupported(format!("zeroing {words} words")))?;
        // cuMemsetD32Async acts on the current context.
        self.stream.context().bind_to_thread()?;
        // SAFETY: the caller's contract (`# Safety`): `words` u32 at `at` lie in a device
        // buffer of this stream's context that it may write, 4-byte aligned; the memset
        // is enqueued on the stream, ordered with the launches.
        unsafe { sys::cuMemsetD32Async(at, 0, words, self.stream.cu_stream()) }.result()?;
        Ok(())
    }
}

impl Grouping {
    /// Errors unless the grouping divides a grid of `grid_x` CTAs along x and is within
    /// `max_cluster` (clusters) or `max_group` (cooperative groups): the one check of both
    /// launchers.
    pub(crate) fn check(
        self,
        expr: &str,
        grid_x: u32,
        max_cluster: u32,
        max_group: u32,
    ) -> Result<()> {
        let (what, n, max) = match self {
            Grouping::Clusters(n) => ("clusters", n, max_cluster),
            Grouping::Groups(n) => ("cooperative groups", n, max_group),
        };
        if n == 0 || n > max.max(1) || !grid_x.is_multiple_of(n) {
            return Err(Error::Unsupported(format!(
                "{expr}: {what} of {n} CTAs with a grid of {grid_x} on this device"
            )));
        }
        Ok(())
    }
}

/// A `grid.0` x `grid.1` grid of `threads`-thread CTAs with `smem` bytes of dynamic
/// shared memory.
pub(crate) fn launch_config(grid: (u32, u32), threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}
