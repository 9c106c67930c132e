//! Where the kernels run: [`Launch`] is what the launches of `norm.rs` (single-device) and
//! `sharded.rs` (sharded normalization) are generic over. [`OnStream`] enqueues on a CUDA
//! stream, the one place a warpnorm kernel is launched on a GPU and the only `unsafe`
//! CUDA launch of the crate; the CPU emulation (feature `emulator`, `emulator.rs`) runs
//! the same kernels on host threads, so the selection logic and the parameter structs are
//! exercised by the same tests either way. Every parameter struct reaching a [`Launch`]
//! was built in this module's siblings from buffers whose lengths, strides and alignment
//! their callers checked.

use cudarc::driver::{CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use super::CudaBackend;
use crate::Result;

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
        // and crate::dist): x / y / dx / dy / mask cover every
        // row at their strides, scale / bias / dscale / dbias hold `cols` elements, mean /
        // rstd / dvar `rows`, the statistics and sums their documented layouts, the
        // workspace at least as many partial rows as the grid writes, and every pointer and
        // stride is aligned for the vector width chosen; all buffers belong to this
        // stream's context. The kernels touch nothing else, and `cfg` comes from the same
        // plan that sized the shared memory.
        unsafe { self.stream.launch_builder(&f).arg(params).launch(cfg) }?;
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
