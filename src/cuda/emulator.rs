//! The kernels on the CPU (feature `emulator`): the CUDA sources in `kernels/` compiled
//! for the host with a small execution model (`kernels/emulator/`): each CUDA thread a
//! fiber, a launch's fibers run by the calling OS thread, switching at barriers. Calls go
//! through the same checks, parameter structs, tier selection and grid sizing as
//! [`crate::ops`] on a GPU (`norm.rs`); only the last step, the launch, differs. It exists
//! to test the kernels on machines without a GPU; it is far too slow for anything else.
//! Launches on different OS threads run in parallel.
//!
//! Every dtype combination the kernels take is compiled ([`Dtypes::compiled`]). Every
//! launch is measured: [`traffic`] returns the global-memory bytes each kernel loaded and
//! stored, the byte-traffic model tests/traffic.rs holds the kernels to.

pub mod sharded;

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_ulonglong, c_void, CStr, CString};

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::launch::{Grouping, Launch};
use super::norm::{self, check_call, BwdAddrs, FwdAddrs, NormSpec};
use super::select;
use super::Dtypes;
use crate::layout::{check_len, Layout};
use crate::{Element, Error, Result};

extern "C" {
    fn warpnorm_emu_launch(
        expr: *const c_char,
        params: *const c_void,
        grid_x: u32,
        grid_y: u32,
        block: u32,
        cluster: u32,
        cooperative: c_int,
        smem_bytes: u32,
        loaded: *mut c_ulonglong,
        stored: *mut c_ulonglong,
        message: *mut c_char,
        message_len: u32,
    ) -> c_int;
}

/// Global-memory bytes one emulated launch read and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchTraffic {
    /// The kernel's name expression (`tiers::expr`).
    pub kernel: String,
    /// CTAs, threads per CTA and CTAs per thread-block cluster or cooperative group (1:
    /// none) it ran with.
    pub grid: u32,
    pub block: u32,
    pub group: u32,
    pub loaded: u64,
    pub stored: u64,
}

thread_local! {
    static TRAFFIC: RefCell<Option<Vec<LaunchTraffic>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns, with its result, the traffic of every emulated launch it made on
/// this thread, in launch order.
pub fn traffic<R>(f: impl FnOnce() -> R) -> (R, Vec<LaunchTraffic>) {
    let outer = TRAFFIC.with(|t| t.borrow_mut().replace(Vec::new()));
    let r = f();
    let launches = TRAFFIC.with(|t| std::mem::replace(&mut *t.borrow_mut(), outer));
    (r, launches.unwrap_or_default())
}

/// SMs of the emulated device: few, so that grids are small (every CUDA thread is a host
/// thread) and the persistent loops visit several rows per CTA.
pub const EMULATED_SMS: u32 = 1;

/// The limits of the device the emulation presents to kernel selection (its SM count is
/// [`EMULATED_SMS`] either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmulatedDevice {
    /// An H100's: thread-block clusters, 227 KiB of shared memory per CTA.
    #[default]
    Hopper,
    /// An A100's: no clusters, 163 KiB of shared memory per CTA, so that the rows past one
    /// CTA's stash are split over groups of CTAs meeting in global memory.
    Ampere,
}

impl EmulatedDevice {
    /// Opt-in shared memory per CTA.
    pub fn max_smem_per_cta(self) -> u32 {
        match self {
            EmulatedDevice::Hopper => 227 * 1024,
            EmulatedDevice::Ampere => 163 * 1024,
        }
    }
    fn max_cluster(self) -> u32 {
        match self {
            EmulatedDevice::Hopper => select::MAX_CLUSTER,
            EmulatedDevice::Ampere => 1,
        }
    }
}

thread_local! {
    static DEVICE: Cell<EmulatedDevice> = const { Cell::new(EmulatedDevice::Hopper) };
}

/// Runs `f` with the emulated launches it makes on this thread presenting `device`.
pub fn on_device<R>(device: EmulatedDevice, f: impl FnOnce() -> R) -> R {
    let outer = DEVICE.with(|d| d.replace(device));
    // Restored even if `f` panics (a failing assertion in a test).
    struct Restore(EmulatedDevice);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEVICE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(outer);
    f()
}

fn device() -> EmulatedDevice {
    DEVICE.with(Cell::get)
}

struct Emulator;

impl Launch for Emulator {
    fn sm_count(&self) -> u32 {
        EMULATED_SMS
    }

    fn max_smem_per_cta(&self) -> u32 {
        device().max_smem_per_cta()
    }

    fn resident_ctas(&self, _: &'static str, _: &str, _: u32, _: u32) -> Result<u32> {
        // Not modelled: the grid caps (a few CTAs per emulated SM) alone size the grids, so
        // that the tests still see several partial rows per backward.
        Ok(u32::MAX)
    }

    fn launch<P: DeviceRepr>(
        &self,
        source: &'static str,
        expr: &str,
        params: &P,
        cfg: LaunchConfig,
    ) -> Result<()> {
        self.launch_grouped(source, expr, params, cfg, Grouping::Clusters(1))
    }

    fn max_cluster(&self) -> u32 {
        device().max_cluster()
    }

    /// Groups of every size: the emulation runs a cooperative launch's blocks together
    /// however many there are (it does not model how many fit on its one SM).
    fn max_group(&self) -> u32 {
        select::MAX_GROUP
    }

    /// The blocks of a cluster run at the same time, each with its own dynamic shared
    /// memory, which the others reach through `cooperative_groups::cluster_group`; those
    /// of a cooperative launch all run at the same time.
    fn launch_grouped<P: DeviceRepr>(
        &self,
        _source: &'static str,
        expr: &str,
        params: &P,
        cfg: LaunchConfig,
        grouping: Grouping,
    ) -> Result<()> {
        let name = CString::new(expr).map_err(|_| Error::Unsupported(expr.to_string()))?;
        grouping.check(expr, cfg.grid_dim.0, self.max_cluster(), self.max_group())?;
        let (cluster, cooperative, group) = match grouping {
            Grouping::Clusters(n) => (n, 0, n),
            Grouping::Groups(n) => (1, 1, n),
        };
        let (mut loaded, mut stored): (c_ulonglong, c_ulonglong) = (0, 0);
        let mut message = [0u8; 512];
        // SAFETY: `params` is the kernel's parameter struct, built by `norm.rs` from
        // host slices whose lengths the public functions below checked exactly as ops
        // checks device buffers; the harness reads it as that struct for `expr`, and the
        // pointers stay valid until it returns (it runs every thread to completion on
        // this OS thread, or abandons them all at a deadlock). `loaded`, `stored` and
        // `message` (whose length is passed with it) are ours to write.
        let rc = unsafe {
            warpnorm_emu_launch(
                name.as_ptr(),
                (params as *const P).cast(),
                cfg.grid_dim.0,
                cfg.grid_dim.1,
                cfg.block_dim.0,
                cluster,
                cooperative,
                cfg.shared_mem_bytes,
                &mut loaded,
                &mut stored,
                message.as_mut_ptr().cast(),
                message.len() as u32,
            )
        };
        if rc == 0 {
            TRAFFIC.with(|t| {
                if let Some(log) = t.borrow_mut().as_mut() {
                    log.push(LaunchTraffic {
                        kernel: expr.to_string(),
                        grid: cfg.grid_dim.0,
                        block: cfg.block_dim.0,
                        group,
                        loaded,
                        stored,
                    });
                }
            });
        }
        let blocks_at_once = if cooperative != 0 {
            cfg.grid_dim.0 * cfg.grid_dim.1
        } else {
            cluster
        };
        match rc {
            0 => Ok(()),
            -1 => Err(Error::Unsupported(format!(
                "kernel `{expr}` is not compiled into the CPU emulation (see tiers::EMULATED_SOURCES)"
            ))),
            -4 => Err(Error::Emulation(format!(
                "{expr} deadlocked: its threads did not all reach the same barriers, or spun \
                 on memory no thread would write"
            ))),
            -5 => Err(Error::TooLarge {
                what: "emulated threads",
                msg: format!(
                    "no memory for the stacks of {} threads",
                    cfg.block_dim.0 as u64 * blocks_at_once as u64
                ),
            }),
            -6 => Err(Error::Emulation(format!(
                "a thread of {expr} overflowed its stack"
            ))),
            -7 => {
                let race = CStr::from_bytes_until_nul(&message).unwrap_or_default();
                Err(Error::Emulation(format!(
                    "{expr} races on shared memory: {}",
                    race.to_string_lossy()
                )))
            }
            _ => Err(Error::Unsupported(format!(
                "the CPU emulation cannot run {expr} with {cfg:?} in clusters of {cluster}"
            ))),
        }
    }

    unsafe fn zero_words(&self, at: u64, words: u64) -> Result<()> {
        let words = usize::try_from(words)
            .map_err(|_| Error::Unsupported(format!("zeroing {words} words")))?;
        // SAFETY: the caller's contract (`Launch::zero_words`): `words` u32 at `at` lie in
        // host memory it may write, 4-byte aligned.
        unsafe { std::ptr::write_bytes(at as *mut u32, 0, words) };
        Ok(())
    }
}

/// Whether the emulation has the kernels of this dtype combination: it compiles every
/// instantiation of `tiers::EMULATED_SOURCES`, so every combination the kernels take.
pub fn supports<T: Element, P: Element, O: Element>() -> bool {
    Dtypes::of::<T, P, O>().is_compiled()
}

/// Host buffers of a forward pass (see [`crate::ops::Forward`]).
pub struct HostForward<'a, T, P, O> {
    pub x: &'a [T],
    pub scale: Option<&'a [P]>,
    pub bias: Option<&'a [P]>,
    pub mask: Option<&'a [u8]>,
    pub y: &'a mut [O],
    pub stats: Option<(&'a mut [f32], &'a mut [f32])>,
}

/// Host buffers of a backward pass (see [`crate::ops::Backward`]).
pub struct HostBackward<'a, T, P, O> {
    pub x: &'a [T],
    pub dy: &'a [O],
    pub scale: Option<&'a [P]>,
    pub mask: Option<&'a [u8]>,
    pub mean: &'a [f32],
    pub rstd: &'a [f32],
    pub dx: &'a mut [T],
    pub dscale: Option<&'a mut [P]>,
    pub dbias: Option<&'a mut [P]>,
    pub workspace: &'a mut [f32],
}

/// f32 elements of workspace an emulated backward needs.
pub fn backward_workspace_len(layout: &Layout) -> usize {
    select::backward_workspace_len(layout.num_rows(), layout.cols(), EMULATED_SMS)
}

fn addr<T>(what: &'static str, s: &[T], need: usize) -> Result<u64> {
    check_len(what, s.len(), need)?;
    Ok(s.as_ptr() as u64)
}

/// Like [`addr`], for a buffer the kernels write (the address comes from a unique borrow).
fn addr_mut<T>(what: &'static str, s: &mut [T], need: usize) -> Result<u64> {
    check_len(what, s.len(), need)?;
    Ok(s.as_mut_ptr() as u64)
}

fn addr_opt<T>(what: &'static str, s: Option<&[T]>, need: usize) -> Result<u64> {
    s.map_or(Ok(0), |s| addr(what, s, need))
}

/// [`crate::ops::forward`] on the CPU emulation.
pub fn forward<T: Element, P: Element, O: Element>(
    spec: &NormSpec,
    layout: Layout,
    a: HostForward<'_, T, P, O>,
) -> Result<()> {
    let (d, n) = check_call::<T, P, O>(Some(spec), &layout, a.mask.is_some())?;
    let (mean, rstd) = match a.stats {
        Some((m, r)) => (addr_mut("mean", m, n.rows)?, addr_mut("rstd", r, n.rows)?),
        None => (0, 0),
    };
    let addrs = FwdAddrs {
        x: addr("x", a.x, n.x)?,
        y: addr_mut("y", a.y, n.y)?,
        scale: addr_opt("scale", a.scale, n.cols)?,
        bias: addr_opt("bias", a.bias, n.cols)?,
        mask: addr_opt("mask", a.mask, n.mask)?,
        mean,
        rstd,
    };
    norm::forward::<_, T>(&Emulator, spec, layout, d, addrs)
}

/// [`crate::ops::backward`] on the CPU emulation.
pub fn backward<T: Element, P: Element, O: Element>(
    spec: &NormSpec,
    layout: Layout,
    a: HostBackward<'_, T, P, O>,
) -> Result<()> {
    let (d, n) = check_call::<T, P, O>(None, &layout, a.mask.is_some())?;
    let need = backward_workspace_len(&layout);
    let addrs = BwdAddrs {
        x: addr("x", a.x, n.x)?,
        dy: addr("dy", a.dy, n.y)?,
        scale: addr_opt("scale", a.scale, n.cols)?,
        mask: addr_opt("mask", a.mask, n.mask)?,
        mean: addr("mean", a.mean, n.rows)?,
        rstd: addr("rstd", a.rstd, n.rows)?,
        dx: addr_mut("dx", a.dx, n.x)?,
        dscale: a
            .dscale
            .map(|s| addr_mut("dscale", s, n.cols))
            .transpose()?,
        dbias: a.dbias.map(|s| addr_mut("dbias", s, n.cols)).transpose()?,
        workspace: addr_mut("workspace", a.workspace, need)?,
    };
    norm::backward::<_, T>(&Emulator, spec, layout, d, addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::launch::launch_config;

    /// The parameters of the emulator's own cluster test kernel (`kernels/emulator/harness.cpp`).
    #[repr(C)]
    struct ClusterExchange {
        out: *mut f32,
    }

    // SAFETY: a plain C struct of one pointer, passed by value as the kernel declares it.
    unsafe impl DeviceRepr for ClusterExchange {}

    const THREADS: u32 = 64;

    fn exchange(grid: u32, cluster: u32, out: &mut [f32]) -> Result<()> {
        let params = ClusterExchange {
            out: out.as_mut_ptr(),
        };
        Emulator.launch_grouped(
            "layernorm_bwd",
            "warpnorm_emu_selftest::cluster_exchange",
            &params,
            launch_config((grid, 1), THREADS, THREADS * 4),
            Grouping::Clusters(cluster),
        )
    }

    #[test]
    fn a_cluster_s_blocks_read_each_other_s_shared_memory_after_its_barrier() {
        for cluster in [1, 2, 3, 8] {
            let grid = 2 * cluster;
            let mut out = vec![f32::NAN; (grid * THREADS) as usize];
            exchange(grid, cluster, &mut out).unwrap();
            for (i, &got) in out.iter().enumerate() {
                let (block, thread) = (i as u32 / THREADS, i as u32 % THREADS);
                // What the next block of the cluster wrote into its shared memory.
                let next = (block % cluster + 1) % cluster;
                let want = (1000 * next + thread) as f32;
                assert_eq!(
                    got, want,
                    "cluster {cluster}, block {block}, thread {thread}"
                );
            }
        }
    }

    /// The parameters of the emulator's cooperative test kernel.
    #[repr(C)]
    struct GridCount {
        counter: *mut u32,
        out: *mut f32,
    }

    // SAFETY: a plain C struct of two pointers, passed by value as the kernel declares it.
    unsafe impl DeviceRepr for GridCount {}

    /// Runs the cooperative self-test kernel on `grid` blocks, grouped as `grouping`: the
    /// count each block saw once all had arrived.
    fn grid_count(grid: u32, grouping: Grouping) -> Result<Vec<f32>> {
        let mut counter = 0u32;
        let mut out = vec![f32::NAN; grid as usize];
        let params = GridCount {
            counter: &mut counter,
            out: out.as_mut_ptr(),
        };
        let cfg = launch_config((grid, 1), THREADS, 0);
        Emulator.launch_grouped(
            "layernorm_bwd",
            "warpnorm_emu_selftest::grid_count",
            &params,
            cfg,
            grouping,
        )?;
        Ok(out)
    }

    #[test]
    fn a_cooperative_launch_runs_every_block_at_once() {
        for grid in [1, 2, 5] {
            let out = grid_count(grid, Grouping::Groups(1)).unwrap();
            assert_eq!(out, vec![grid as f32; grid as usize]);
        }
    }

    /// Blocks spinning on memory that no running block will write: a deadlock the launch
    /// reports, as it would hang a GPU.
    #[test]
    fn blocks_that_wait_for_blocks_not_resident_are_a_deadlock_error_not_a_hang() {
        let err = grid_count(2, Grouping::Clusters(1)).unwrap_err();
        assert!(matches!(err, Error::Emulation(_)), "{err}");
        assert!(err.to_string().contains("grid_count deadlocked"), "{err}");
        assert_eq!(grid_count(1, Grouping::Clusters(1)).unwrap(), vec![1.0]);
    }

    #[test]
    fn threads_that_skip_a_barrier_are_a_deadlock_error_not_a_hang() {
        let err = faulty_block("barrier_skipped_by_thread_0");
        assert!(err.contains("deadlocked"), "{err}");
        assert!(err.contains("barrier_skipped_by_thread_0"), "{err}");
    }

    #[test]
    fn a_thread_that_overflows_its_stack_is_an_error() {
        let err = faulty_block("stack_overflow_by_thread_1");
        assert!(err.contains("overflowed its stack"), "{err}");
    }

    /// Runs one block of the faulty self-test kernel `name`: its `Error::Emulation`, as
    /// text, after checking that the next launch on this OS thread runs normally.
    fn faulty_block(name: &str) -> String {
        let mut out = vec![0f32; THREADS as usize];
        let params = ClusterExchange {
            out: out.as_mut_ptr(),
        };
        let expr = format!("warpnorm_emu_selftest::{name}");
        let cfg = launch_config((1, 1), THREADS, 0);
        let err = Emulator
            .launch("layernorm_bwd", &expr, &params, cfg)
            .unwrap_err();
        assert!(matches!(err, Error::Emulation(_)), "{err}");
        let mut out = vec![f32::NAN; (2 * THREADS) as usize];
        exchange(2, 2, &mut out).unwrap();
        assert_eq!(out[0], 1000.0);
        err.to_string()
    }

    /// The parameters of the emulator's shared-memory race test kernel.
    #[repr(C)]
    struct SharedHandoff {
        out: *mut f32,
        sync: i32,
        distance: u32,
        war: i32,
    }

    // SAFETY: a plain C struct of a pointer and three integers, passed by value as the
    // kernel declares it.
    unsafe impl DeviceRepr for SharedHandoff {}

    /// Runs the shared-memory handoff self-test on one block: what each thread read.
    fn shared_handoff(sync: i32, distance: u32, war: bool) -> Result<Vec<f32>> {
        let mut out = vec![f32::NAN; THREADS as usize];
        let params = SharedHandoff {
            out: out.as_mut_ptr(),
            sync,
            distance,
            war: war as i32,
        };
        let cfg = launch_config((1, 1), THREADS, THREADS * 4);
        Emulator.launch(
            "layernorm_fwd",
            "warpnorm_emu_selftest::shared_handoff",
            &params,
            cfg,
        )?;
        Ok(out)
    }

    #[test]
    fn a_shared_memory_race_is_an_error_even_where_the_schedule_orders_it() {
        // A launch starts its threads in index order, so without a barrier a thread reading
        // the next lane's word reads it before that lane writes it (the write is the first
        // racing access), and one reading the previous lane's word reads it after (the read
        // is). Either way the values could come out right; the launch must fail. (After a
        // barrier the emulation resumes threads in another order: there only the race is
        // checked, not which access comes first.)
        for war in [false, true] {
            for (distance, access, earlier) in [
                (1, " wrote byte ", "read by thread"),
                (31, " read byte ", "written by thread"),
                (32, " wrote byte ", "read by thread"),
            ] {
                let err = shared_handoff(0, distance, war).unwrap_err();
                assert!(matches!(err, Error::Emulation(_)), "{err}");
                let text = err.to_string();
                assert!(
                    text.contains("shared_handoff races on shared memory"),
                    "{text}"
                );
                assert!(text.contains("with no barrier between"), "{text}");
                if !war {
                    assert!(text.contains(access) && text.contains(earlier), "{text}");
                }
            }
            // A warp barrier orders the lanes of one warp, not two warps; a shuffle orders
            // nothing.
            for (sync, distance) in [(2, 32), (3, 1)] {
                let err = shared_handoff(sync, distance, war).unwrap_err().to_string();
                assert!(err.contains("races on shared memory"), "{err}");
            }
            for (sync, distance) in [(1, 1), (1, 31), (1, 32), (2, 1), (2, 31)] {
                let out = shared_handoff(sync, distance, war).unwrap();
                for (t, &got) in out.iter().enumerate() {
                    let warp = t as u32 / 32 * 32;
                    let other = if distance < 32 {
                        warp + (t as u32 + distance) % 32
                    } else {
                        (t as u32 + distance) % THREADS
                    };
                    assert_eq!(
                        got, other as f32,
                        "sync {sync}, distance {distance}, thread {t}"
                    );
                }
            }
        }
    }

    /// The parameters of the emulator's asynchronous-copy race test kernel.
    #[repr(C)]
    struct CopyHandoff {
        out: *mut f32,
        src: *const f32,
        wait_first: i32,
    }

    // SAFETY: a plain C struct of two pointers and an integer, passed by value as the
    // kernel declares it.
    unsafe impl DeviceRepr for CopyHandoff {}

    #[test]
    fn reading_another_threads_copy_before_its_wait_is_a_race() {
        let src: Vec<f32> = (0..4 * THREADS).map(|i| i as f32).collect();
        let run = |wait_first: bool| {
            let mut out = vec![f32::NAN; src.len()];
            let params = CopyHandoff {
                out: out.as_mut_ptr(),
                src: src.as_ptr(),
                wait_first: wait_first as i32,
            };
            let cfg = launch_config((1, 1), THREADS, 16 * THREADS);
            Emulator
                .launch(
                    "layernorm_bwd",
                    "warpnorm_emu_selftest::copy_handoff",
                    &params,
                    cfg,
                )
                .map(|()| out)
        };
        let out = run(true).unwrap();
        for (i, &got) in out.iter().enumerate() {
            let (t, k) = (i as u32 / 4, i as u32 % 4);
            assert_eq!(got, (4 * ((t + 1) % THREADS) + k) as f32, "element {i}");
        }
        let err = run(false).unwrap_err().to_string();
        assert!(err.contains("copy_handoff races on shared memory"), "{err}");
        assert!(
            err.contains("asynchronous copy to it was in flight"),
            "{err}"
        );
    }

    #[test]
    fn clusters_that_do_not_divide_the_grid_or_exceed_8_are_refused() {
        let mut out = vec![0f32; 16 * THREADS as usize];
        for (grid, cluster) in [(4, 3), (16, 16), (2, 0)] {
            let err = exchange(grid, cluster, &mut out).unwrap_err().to_string();
            assert!(err.contains(&format!("clusters of {cluster}")), "{err}");
        }
    }
}
