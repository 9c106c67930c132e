//! The device side of [`crate::tooling::bench`]: buffers for one problem and CUDA-event timing.
//!
//! A [`Case`] owns several buffer sets and launches each iteration on the next one, so
//! consecutive iterations never find their inputs in L2.

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
use half::{bf16, f16};

use super::{rotation_sets, Pass, Problem};
use crate::cuda::CudaBackend;
use crate::ops::{self, Backward, Forward, KernelGeneration, Layout, NormSpec, Stats};
use crate::rng::Rng;
use crate::{DType, Element, Error, NormKind, Result};

/// Rotated buffers must together touch at least this much (and 8x the L2) before a set
/// comes round again.
const MIN_ROTATION_FOOTPRINT: u64 = 512 << 20;
/// Share of the free device memory the buffers may take.
const MEMORY_SHARE: f64 = 0.8;
/// Elements of the random tile repeated to fill the inputs (uploading 256 MiB of distinct
/// random numbers would cost seconds and change nothing about bandwidth).
const TILE: usize = 1 << 20;

/// Opens a device for timing; makes [`Case`]s.
pub struct GpuTimer {
    be: Arc<CudaBackend>,
    l2_bytes: u64,
}

impl GpuTimer {
    /// Device `ordinal`; [`Error::NoDevice`] without a driver or device.
    pub fn new(ordinal: usize) -> Result<GpuTimer> {
        let be = CudaBackend::new(ordinal)?;
        let l2 = be
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?;
        Ok(GpuTimer {
            be,
            l2_bytes: l2.max(0) as u64,
        })
    }

    pub fn backend(&self) -> &Arc<CudaBackend> {
        &self.be
    }

    /// Buffers for `problem` (its normalization, epsilon 1e-5), for every pass.
    pub fn case(&self, problem: &Problem) -> Result<Case> {
        let spec = NormSpec {
            kind: problem.norm.kind(),
            eps: 1e-5,
            fast_variance: false,
            round_output_to_x: false,
            kernels: None,
        };
        self.case_with(problem, &spec, None, true)
    }

    /// Buffers for `problem` and `spec`: `sets` buffer sets (`None`: see [`rotation_sets`]),
    /// with dy and dx only when `backward`.
    pub fn case_with(
        &self,
        problem: &Problem,
        spec: &NormSpec,
        sets: Option<usize>,
        backward: bool,
    ) -> Result<Case> {
        if spec.kind != problem.norm.kind() {
            return Err(Error::InvalidConfig(format!(
                "the spec computes {:?} but the problem is {}",
                spec.kind, problem.norm
            )));
        }
        let alloc = problem.set_bytes(backward);
        let (free, _) = self.be.context().mem_get_info()?;
        let budget = (free as f64 * MEMORY_SHARE) as u64;
        let sets = match sets {
            Some(n) => n.max(1),
            None => {
                let touched = problem.bytes(if backward { Pass::FwdBwd } else { Pass::Fwd });
                let footprint = MIN_ROTATION_FOOTPRINT.max(8 * self.l2_bytes);
                rotation_sets(touched, footprint, alloc, budget)
            }
        };
        if sets == 0 || sets as u64 * alloc > budget {
            return Err(Error::Unsupported(format!(
                "{} buffer set(s) of {} MiB for {} x {} {} do not fit in {} MiB of free device memory",
                sets.max(1),
                alloc >> 20,
                problem.rows,
                problem.cols,
                problem.dtype,
                free >> 20
            )));
        }
        let runner: Box<dyn Runner> = match (problem.dtype, problem.param_dtype) {
            (DType::F32, DType::F32) => Box::new(Buffers::<f32, f32>::new(
                &self.be, spec, problem, sets, backward,
            )?),
            (DType::F16, DType::F16) => Box::new(Buffers::<f16, f16>::new(
                &self.be, spec, problem, sets, backward,
            )?),
            (DType::F16, DType::F32) => Box::new(Buffers::<f16, f32>::new(
                &self.be, spec, problem, sets, backward,
            )?),
            (DType::BF16, DType::BF16) => Box::new(Buffers::<bf16, bf16>::new(
                &self.be, spec, problem, sets, backward,
            )?),
            (DType::BF16, DType::F32) => Box::new(Buffers::<bf16, f32>::new(
                &self.be, spec, problem, sets, backward,
            )?),
            (x, p) => {
                return Err(Error::Unsupported(format!(
                    "{x} activations with {p} parameters (parameters are x's dtype or float32)"
                )))
            }
        };
        Ok(Case {
            problem: *problem,
            stream: self.be.stream().clone(),
            runner,
            sets,
            next: 0,
            backward,
        })
    }
}

/// One problem's device buffers, ready to be timed. Each enqueued iteration uses the next
/// buffer set in turn.
pub struct Case {
    problem: Problem,
    stream: Arc<CudaStream>,
    runner: Box<dyn Runner>,
    sets: usize,
    next: usize,
    backward: bool,
}

impl Case {
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// Buffer sets rotated through.
    pub fn sets(&self) -> usize {
        self.sets
    }

    /// Times the later iterations with the kernels of `generation` (same buffers).
    pub fn set_kernels(&mut self, generation: KernelGeneration) {
        self.runner.set_kernels(generation);
    }

    /// Enqueues one iteration of `pass` on the next buffer set (no host synchronisation).
    pub fn enqueue(&mut self, pass: Pass) -> Result<()> {
        if pass.needs_backward_buffers() && !self.backward {
            return Err(Error::Unsupported(format!(
                "pass {pass} on a case made without backward buffers"
            )));
        }
        let set = self.next;
        self.next = (self.next + 1) % self.sets;
        self.runner.launch(pass, set)
    }

    /// GPU time of `iters` back-to-back iterations between two events (what criterion's
    /// `iter_custom` wants).
    pub fn time_total(&mut self, pass: Pass, iters: u64) -> Result<Duration> {
        let (start, end) = (self.timing_event()?, self.timing_event()?);
        start.record(&self.stream)?;
        for _ in 0..iters {
            self.enqueue(pass)?;
        }
        end.record(&self.stream)?;
        let ms = start.elapsed_ms(&end)?;
        self.stream.context().check_err()?;
        Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) * 1e-3))
    }

    /// Milliseconds of each of `iters` iterations (an event pair around each), after
    /// `warmup` untimed ones. The iterations are enqueued back to back: the host never
    /// waits until all are done.
    pub fn time_each(&mut self, pass: Pass, warmup: usize, iters: usize) -> Result<Vec<f64>> {
        for _ in 0..warmup {
            self.enqueue(pass)?;
        }
        let events = (0..2 * iters)
            .map(|_| self.timing_event())
            .collect::<Result<Vec<_>>>()?;
        for pair in events.chunks_exact(2) {
            pair[0].record(&self.stream)?;
            self.enqueue(pass)?;
            pair[1].record(&self.stream)?;
        }
        let times = events
            .chunks_exact(2)
            .map(|pair| Ok(f64::from(pair[0].elapsed_ms(&pair[1])?)))
            .collect::<Result<Vec<_>>>()?;
        self.stream.context().check_err()?;
        Ok(times)
    }

    fn timing_event(&self) -> Result<CudaEvent> {
        Ok(self
            .stream
            .context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
    }
}

/// The dtype-erased part of a [`Case`].
trait Runner {
    fn launch(&mut self, pass: Pass, set: usize) -> Result<()>;
    /// Runs the later launches with the kernels of `generation`.
    fn set_kernels(&mut self, generation: KernelGeneration);
}

/// Per-iteration buffers: what one set holds.
struct Set<T> {
    x: CudaSlice<T>,
    y: CudaSlice<T>,
    mean: CudaSlice<f32>,
    rstd: CudaSlice<f32>,
    /// dy and dx, when the case runs backward passes.
    grads: Option<(CudaSlice<T>, CudaSlice<T>)>,
}

/// Buffers of x dtype `T` and parameter dtype `P`; y and dy are `T`.
struct Buffers<T, P> {
    be: Arc<CudaBackend>,
    stream: Arc<CudaStream>,
    spec: NormSpec,
    layout: Layout,
    sets: Vec<Set<T>>,
    scale: CudaSlice<P>,
    bias: CudaSlice<P>,
    dscale: CudaSlice<P>,
    dbias: CudaSlice<P>,
    workspace: CudaSlice<f32>,
}

impl<T: Element, P: Element> Buffers<T, P> {
    fn new(
        be: &Arc<CudaBackend>,
        spec: &NormSpec,
        p: &Problem,
        sets: usize,
        backward: bool,
    ) -> Result<Self> {
        let stream = be.stream().clone();
        let layout = Layout::rows(p.rows, p.cols);
        let n = p.rows * p.cols;
        let x_tile = tile::<T>(1, 1.0, 2.0);
        let dy_tile = tile::<T>(2, 0.0, 1.0);
        let mut built = Vec::with_capacity(sets);
        for _ in 0..sets {
            let mut x = stream.alloc_zeros::<T>(n)?;
            fill(&stream, &mut x, &x_tile)?;
            let grads = if backward {
                let mut dy = stream.alloc_zeros::<T>(n)?;
                fill(&stream, &mut dy, &dy_tile)?;
                Some((dy, stream.alloc_zeros::<T>(n)?))
            } else {
                None
            };
            built.push(Set {
                x,
                y: stream.alloc_zeros::<T>(n)?,
                mean: stream.alloc_zeros::<f32>(p.rows)?,
                rstd: stream.alloc_zeros::<f32>(p.rows)?,
                grads,
            });
        }
        let mut scale = stream.alloc_zeros::<P>(p.cols)?;
        fill(&stream, &mut scale, &tile::<P>(3, 1.0, 0.1))?;
        let mut bias = stream.alloc_zeros::<P>(p.cols)?;
        fill(&stream, &mut bias, &tile::<P>(4, 0.0, 0.1))?;
        let workspace_len = if backward {
            ops::backward_workspace_len(be, &layout)
        } else {
            0
        };
        let mut buffers = Buffers {
            be: be.clone(),
            stream: stream.clone(),
            spec: *spec,
            layout,
            sets: built,
            scale,
            bias,
            dscale: stream.alloc_zeros::<P>(p.cols)?,
            dbias: stream.alloc_zeros::<P>(p.cols)?,
            workspace: stream.alloc_zeros::<f32>(workspace_len.max(1))?,
        };
        // A backward alone reads the statistics of a forward: compute them once per set.
        for set in 0..sets {
            buffers.launch(Pass::Fwd, set)?;
        }
        stream.synchronize()?;
        Ok(buffers)
    }
}

impl<T: Element, P: Element> Runner for Buffers<T, P> {
    fn set_kernels(&mut self, generation: KernelGeneration) {
        self.spec = self.spec.with_kernels(generation);
    }

    fn launch(&mut self, pass: Pass, set: usize) -> Result<()> {
        let Buffers {
            be,
            stream,
            spec,
            layout,
            sets,
            scale,
            bias,
            dscale,
            dbias,
            workspace,
        } = self;
        let s = sets
            .get_mut(set)
            .ok_or_else(|| Error::InvalidConfig(format!("buffer set {set} does not exist")))?;
        if pass == Pass::Copy {
            stream.memcpy_dtod(&s.x, &mut s.y)?;
            return Ok(());
        }
        if matches!(pass, Pass::Fwd | Pass::FwdBwd) {
            let args = Forward {
                x: &s.x,
                scale: Some(&*scale),
                bias: (spec.kind == NormKind::LayerNorm).then_some(&*bias as _),
                mask: None,
                y: &mut s.y,
                stats: Some(Stats {
                    mean: &mut s.mean,
                    rstd: &mut s.rstd,
                }),
            };
            ops::forward(be, stream, spec, *layout, args)?;
        }
        if matches!(pass, Pass::Bwd | Pass::FwdBwd) {
            let (dy, dx) = s.grads.as_mut().ok_or_else(|| {
                Error::Unsupported("a backward pass on a case without backward buffers".into())
            })?;
            let args = Backward {
                x: &s.x,
                dy: &*dy,
                scale: Some(&*scale),
                mask: None,
                mean: &s.mean,
                rstd: &s.rstd,
                dx,
                dscale: Some(dscale),
                dbias: (spec.kind == NormKind::LayerNorm).then_some(dbias as _),
                workspace,
            };
            ops::backward(be, stream, spec, *layout, args)?;
        }
        Ok(())
    }
}

/// A reproducible random tile of normal values, rounded to `E`.
fn tile<E: Element>(seed: u64, mean: f64, std: f64) -> Vec<E> {
    let mut rng = Rng::new(seed);
    (0..TILE)
        .map(|_| E::from_f64(rng.normal_with(mean, std)))
        .collect()
}

/// Fills `dst` with copies of `tile`.
fn fill<E: Element>(stream: &Arc<CudaStream>, dst: &mut CudaSlice<E>, tile: &[E]) -> Result<()> {
    let len = dst.len();
    let mut at = 0;
    while at < len && !tile.is_empty() {
        let n = tile.len().min(len - at);
        let mut view = dst.slice_mut(at..at + n);
        stream.memcpy_htod(&tile[..n], &mut view)?;
        at += n;
    }
    Ok(())
}
