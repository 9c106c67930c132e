//! The byte-traffic model: the CPU emulation counts the global-memory bytes every kernel
//! launch loads and stores, and this test prints, per path, generation and dtype, the bytes
//! moved per element of x against the ideal:
//!
//! - forward: read x, write y and the statistics;
//! - backward: read x, dy, the statistics and scale once, write dx and dscale / dbias, plus
//!   the partial rows of dscale / dbias, written once and read once by the finalize.
//!
//! A path may move more than the ideal only for the documented reasons of [`Reason`]
//! (mirrored in docs/TUNING.md, T12), each an exact number of bytes per element. A path
//! fails when it moves more than 1.10x its ideal plus its reasons, and also when it moves
//! less than that by more than 10 %: a reason that no longer holds must leave the table.
#![cfg(feature = "emulator")]

use half::bf16;
use warpnorm::cuda::emulator::{self, EmulatedDevice, HostBackward, HostForward, LaunchTraffic};
use warpnorm::ops::{KernelGeneration, Layout, NormSpec};
use warpnorm::{Element, NormConfig};

const TOLERANCE: f64 = 1.10;

/// Why a path moves more bytes than the ideal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    /// The forward loads scale and bias with every row (L1/L2 hits on a GPU, not DRAM).
    ParamsEveryRow,
    /// The forward's register tiers load scale and bias once per CTA, which stages them in
    /// shared memory for all its rows.
    ParamsOncePerCta,
    /// The backward loads scale in both passes of every row (L1/L2 hits on a GPU).
    ScaleTwiceEveryRow,
    /// The forward CTA kernel without a row cache reads x again for the second pass
    /// (mostly from L2).
    SecondReadOfX,
    /// The backward CTA kernel reads x and dy again for the second pass (mostly from L2).
    SecondReadOfXAndDy,
    /// Rows whose dscale / dbias sums do not fit in shared memory accumulate them in the
    /// CTA's partial rows in global memory: an f32 load and store per element and gradient.
    GlobalAccumulators,
    /// The channels-first forward walks each row twice (statistics, then output): x read
    /// again. (The exact two-pass variance, without flax's fast variance, walks it a third
    /// time; this table measures flax's default.)
    StridedForwardPasses,
    /// The channels-first backward walks each row twice (row sums, dx): x and dy read
    /// twice.
    StridedBackwardPasses,
    /// The channels-first backward adds each warp's 32-row column sums into its partial
    /// rows: an f32 load and store per 32 elements and gradient.
    StridedWarpPartials,
    /// The v2 long-row kernels load scale once per CTA (each CTA of a cluster or group its
    /// slice), as they write a partial row per CTA (per cluster or group), where the ideal
    /// counts one load.
    ScaleOncePerCta,
}

/// Element sizes and what a case computes.
#[derive(Clone, Copy)]
struct Sizes {
    x: f64,
    param: f64,
    out: f64,
    scale: bool,
    bias: bool,
    /// Rows, and partial rows (the backward kernel's CTAs) or the forward's CTAs.
    rows: f64,
    parts: f64,
}

impl Sizes {
    fn grads(&self) -> f64 {
        self.scale as u8 as f64 + self.bias as u8 as f64
    }
}

impl Reason {
    fn bytes_per_element(self, s: Sizes) -> f64 {
        match self {
            Reason::ParamsEveryRow => s.grads() * s.param,
            Reason::ParamsOncePerCta => s.parts * s.grads() * s.param / s.rows,
            Reason::ScaleTwiceEveryRow => 2.0 * s.scale as u8 as f64 * s.param,
            Reason::SecondReadOfX => s.x,
            Reason::SecondReadOfXAndDy => s.x + s.out,
            Reason::GlobalAccumulators => 8.0 * s.grads(),
            Reason::StridedForwardPasses => s.x,
            Reason::StridedBackwardPasses => s.x + s.out,
            Reason::StridedWarpPartials => 8.0 * s.grads() / 32.0,
            Reason::ScaleOncePerCta => (s.parts - 1.0) * s.scale as u8 as f64 * s.param / s.rows,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    Backward,
}

/// One path of the kernel selection, the kernel that must serve it and its reasons.
struct Path {
    name: &'static str,
    pass: Pass,
    /// The limits of the emulated device: which kernels the selection may take.
    device: EmulatedDevice,
    /// A substring of the main kernel's name expression: the case must reach this path.
    kernel: &'static str,
    layout: Layout,
    rms: bool,
    reasons: &'static [Reason],
    /// Kernels v2's kernel and reasons, where they differ from v1's.
    v2: Option<(&'static str, &'static [Reason])>,
}

impl Path {
    fn expected(&self, generation: KernelGeneration) -> (&'static str, &'static [Reason]) {
        match (generation, self.v2) {
            (KernelGeneration::V2, Some(v2)) => v2,
            _ => (self.kernel, self.reasons),
        }
    }
}

fn rows(rows: usize, cols: usize) -> Layout {
    Layout::rows(rows, cols)
}

fn paths() -> Vec<Path> {
    use Pass::*;
    use Reason::*;
    let channels_first = Layout::ChannelsFirst {
        outer: 2,
        cols: 64,
        inner: 50,
    };
    vec![
        Path {
            name: "fwd rows, sub-warp group",
            pass: Forward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_fwd<",
            layout: rows(64, 64),
            rms: false,
            reasons: &[ParamsOncePerCta],
            v2: None,
        },
        Path {
            name: "fwd rows, warp",
            pass: Forward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_fwd<",
            layout: rows(256, 512),
            rms: false,
            reasons: &[ParamsOncePerCta],
            v2: None,
        },
        Path {
            name: "fwd rows, CTA",
            pass: Forward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_fwd<",
            layout: rows(64, 4096),
            rms: false,
            reasons: &[ParamsOncePerCta],
            v2: None,
        },
        Path {
            name: "fwd CTA, row cached",
            pass: Forward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_fwd_cta<",
            layout: rows(3, 32768),
            rms: false,
            reasons: &[ParamsEveryRow],
            v2: None,
        },
        Path {
            name: "fwd CTA, uncached",
            pass: Forward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_fwd_cta<float, 4, false, 1>",
            layout: rows(3, 65536),
            rms: false,
            reasons: &[ParamsEveryRow, SecondReadOfX],
            // Four loads in flight: the same bytes.
            v2: Some((
                "layer_norm_fwd_cta<float, 4, false, 4>",
                &[ParamsEveryRow, SecondReadOfX],
            )),
        },
        Path {
            name: "fwd scalar (unaligned)",
            pass: Forward,
            device: EmulatedDevice::Hopper,
            kernel: ", 1, true, 1>",
            layout: rows(16, 1023),
            rms: false,
            reasons: &[ParamsEveryRow],
            v2: None,
        },
        Path {
            name: "fwd channels-first",
            pass: Forward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_fwd_strided<",
            layout: channels_first,
            rms: false,
            reasons: &[ParamsEveryRow, StridedForwardPasses],
            v2: None,
        },
        Path {
            name: "bwd rows, sub-warp group",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd<",
            layout: rows(64, 64),
            rms: false,
            reasons: &[ScaleTwiceEveryRow],
            v2: None,
        },
        Path {
            name: "bwd rows, warp",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd<",
            layout: rows(32, 512),
            rms: false,
            reasons: &[ScaleTwiceEveryRow],
            v2: None,
        },
        Path {
            name: "bwd rows, CTA",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd<",
            layout: rows(16, 4096),
            rms: false,
            reasons: &[ScaleTwiceEveryRow],
            // The row stashed twice over, the next one prefetched.
            v2: Some(("layer_norm_bwd_stash<", &[ScaleOncePerCta])),
        },
        Path {
            name: "bwd rows, RMSNorm (no dbias)",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd<",
            layout: rows(32, 512),
            rms: true,
            reasons: &[ScaleTwiceEveryRow],
            v2: None,
        },
        Path {
            name: "bwd CTA, shared accumulators",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd_cta<",
            layout: rows(8, 16384),
            rms: false,
            reasons: &[ScaleTwiceEveryRow, SecondReadOfXAndDy],
            v2: Some(("layer_norm_bwd_cluster<", &[ScaleOncePerCta])),
        },
        Path {
            name: "bwd CTA, global accumulators",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd_cta<float, 4, false>",
            layout: rows(5, 32768),
            rms: false,
            reasons: &[ScaleTwiceEveryRow, SecondReadOfXAndDy, GlobalAccumulators],
            v2: Some(("layer_norm_bwd_cluster<float, 4>", &[ScaleOncePerCta])),
        },
        Path {
            name: "bwd scalar (unaligned)",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: ", 1, true>",
            layout: rows(16, 1023),
            rms: false,
            reasons: &[ScaleTwiceEveryRow, SecondReadOfXAndDy],
            v2: None,
        },
        Path {
            name: "bwd channels-first",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd_strided<",
            layout: channels_first,
            rms: false,
            reasons: &[
                ScaleTwiceEveryRow,
                StridedBackwardPasses,
                StridedWarpPartials,
            ],
            v2: None,
        },
        Path {
            name: "bwd long row, f32",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd_cta<float, 4, true>",
            layout: rows(16, 8192),
            rms: false,
            reasons: &[ScaleTwiceEveryRow, SecondReadOfXAndDy],
            v2: Some(("layer_norm_bwd_stash<float, 4, false>", &[ScaleOncePerCta])),
        },
        Path {
            name: "bwd long row, f32 RMSNorm",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd_cta<float, 4, true>",
            layout: rows(16, 8192),
            rms: true,
            reasons: &[ScaleTwiceEveryRow, SecondReadOfXAndDy],
            v2: Some(("layer_norm_bwd_stash<float, 4, false>", &[ScaleOncePerCta])),
        },
        Path {
            name: "bwd long row, 16-bit",
            pass: Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd_cta<__nv_bfloat16, 8, true>",
            layout: rows(16, 12288),
            rms: false,
            reasons: &[ScaleTwiceEveryRow, SecondReadOfXAndDy],
            v2: Some((
                "layer_norm_bwd_stash<__nv_bfloat16, 8, false>",
                &[ScaleOncePerCta],
            )),
        },
        Path {
            name: "bwd long row, no clusters",
            pass: Backward,
            // An A100's limits: a row past one CTA's stash (163 KiB) is split over a group
            // of 4 CTAs meeting in global memory.
            device: EmulatedDevice::Ampere,
            kernel: "layer_norm_bwd_cta<",
            layout: rows(5, 32768),
            rms: false,
            reasons: &[ScaleTwiceEveryRow, SecondReadOfXAndDy, GlobalAccumulators],
            v2: Some(("layer_norm_bwd_split<", &[ScaleOncePerCta])),
        },
    ]
}

fn data<T: Element>(n: usize, salt: f64) -> Vec<T> {
    (0..n)
        .map(|i| T::from_f64(1.5 * (i as f64 * 0.37 + salt).sin() + 0.25))
        .collect()
}

/// What one path moved, and what it should have.
struct Measured {
    launches: Vec<LaunchTraffic>,
    ideal: f64,
    /// Partial rows the backward wrote; the forward's CTAs.
    parts: f64,
}

fn run<T: Element, P: Element, O: Element>(path: &Path, generation: KernelGeneration) -> Measured {
    emulator::on_device(path.device, || run_on_device::<T, P, O>(path, generation))
}

fn run_on_device<T: Element, P: Element, O: Element>(
    path: &Path,
    generation: KernelGeneration,
) -> Measured {
    let cfg = if path.rms {
        NormConfig::flax_rms()
    } else {
        NormConfig::flax()
    };
    let spec = NormSpec::from_config(&cfg).with_kernels(generation);
    let layout = path.layout;
    let (n_rows, cols) = (layout.num_rows(), layout.cols());
    let n = n_rows * cols;
    let x: Vec<T> = data(n, 0.0);
    let scale: Vec<P> = data(cols, 1.0);
    let bias: Vec<P> = data(cols, 2.0);
    let bias = (!path.rms).then_some(bias);
    let (mut y, mut mean, mut rstd) = (
        vec![O::from_f64(0.0); n],
        vec![0f32; n_rows],
        vec![0f32; n_rows],
    );
    let forward = |y: &mut [O], mean: &mut [f32], rstd: &mut [f32]| {
        emulator::forward::<T, P, O>(
            &spec,
            layout,
            HostForward {
                x: &x,
                scale: Some(&scale),
                bias: bias.as_deref(),
                mask: None,
                y,
                stats: Some((mean, rstd)),
            },
        )
        .unwrap()
    };
    let (x_b, p_b, o_b) = (
        T::DTYPE.size() as f64,
        P::DTYPE.size() as f64,
        O::DTYPE.size() as f64,
    );
    let elems = n as f64;
    let stats = 8.0 * n_rows as f64;
    if path.pass == Pass::Forward {
        let ((), launches) = emulator::traffic(|| forward(&mut y, &mut mean, &mut rstd));
        let ctas = launches[0].grid as f64;
        return Measured {
            launches,
            ideal: elems * (x_b + o_b) + stats,
            parts: ctas,
        };
    }
    forward(&mut y, &mut mean, &mut rstd);
    let dy: Vec<O> = data(n, 3.0);
    let mut dx = vec![T::from_f64(0.0); n];
    let mut dscale = vec![P::from_f64(0.0); cols];
    let mut dbias = bias.as_ref().map(|_| vec![P::from_f64(0.0); cols]);
    let mut ws = vec![0f32; emulator::backward_workspace_len(&layout)];
    let ((), launches) = emulator::traffic(|| {
        emulator::backward::<T, P, O>(
            &spec,
            layout,
            HostBackward {
                x: &x,
                dy: &dy,
                scale: Some(&scale),
                mask: None,
                mean: &mean,
                rstd: &rstd,
                dx: &mut dx,
                dscale: Some(&mut dscale),
                dbias: dbias.as_deref_mut(),
                workspace: &mut ws,
            },
        )
        .unwrap()
    });
    // One partial row per CTA of the backward kernel (per warp for channels-first, per
    // cluster or group for a row split over several CTAs).
    let main = &launches[0];
    let parts = if main.kernel.contains("strided") {
        main.grid as f64 * (main.block / 32) as f64
    } else {
        (main.grid / main.group) as f64
    };
    let grads = 1.0 + bias.is_some() as u8 as f64;
    let ideal = elems * (2.0 * x_b + o_b)
        + stats
        + cols as f64 * p_b
        + grads * (2.0 * parts * cols as f64 * 4.0 + cols as f64 * p_b);
    Measured {
        launches,
        ideal,
        parts,
    }
}

/// The dtype combinations measured: f32, and bf16 with f32 parameters (flax's mixed
/// precision default).
const COMBOS: [&str; 2] = ["f32", "bf16 / f32 params"];

#[test]
fn every_path_moves_its_ideal_bytes_or_a_documented_reason() {
    let mut failures = Vec::new();
    println!(
        "{:<30} {:<3} {:<18} {:>6} {:>8} {:>8} {:>8} {:>6}  kernels; reasons",
        "path", "gen", "dtypes", "D", "B/elem", "ideal", "allowed", "ratio"
    );
    for path in paths() {
        for generation in KernelGeneration::ALL {
            for combo in COMBOS {
                // The kernels of a path named for one dtype run in that dtype only.
                if (combo != "f32" && path.kernel.contains("<float"))
                    || (combo == "f32" && path.kernel.contains("<__nv_bfloat16"))
                {
                    continue;
                }
                let (kernel, reasons) = path.expected(generation);
                let (m, sizes) = match combo {
                    "f32" => (run::<f32, f32, f32>(&path, generation), (4.0, 4.0, 4.0)),
                    _ => (run::<bf16, f32, bf16>(&path, generation), (2.0, 4.0, 2.0)),
                };
                let sizes = Sizes {
                    x: sizes.0,
                    param: sizes.1,
                    out: sizes.2,
                    scale: true,
                    bias: !path.rms,
                    rows: path.layout.num_rows() as f64,
                    parts: m.parts,
                };
                let elems = (path.layout.num_rows() * path.layout.cols()) as f64;
                let moved: u64 = m.launches.iter().map(|l| l.loaded + l.stored).sum();
                let per_elem = moved as f64 / elems;
                let ideal = m.ideal / elems;
                let extra: f64 = reasons.iter().map(|r| r.bytes_per_element(sizes)).sum();
                let allowed = ideal + extra;
                let kernels: Vec<&str> = m
                    .launches
                    .iter()
                    .map(|l| l.kernel.trim_start_matches("warpnorm::"))
                    .collect();
                println!(
                    "{:<30} {:<3} {:<18} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>5.2}x  {}; {:?}",
                    path.name,
                    generation.name(),
                    combo,
                    path.layout.cols(),
                    per_elem,
                    ideal,
                    allowed,
                    per_elem / ideal,
                    kernels.join(" + "),
                    reasons
                );
                let label = format!("{} {generation} {combo}", path.name);
                if !m.launches[0].kernel.contains(kernel) {
                    failures.push(format!("{label}: ran {kernels:?}, not {kernel}"));
                }
                if per_elem > TOLERANCE * allowed {
                    failures.push(format!(
                        "{label}: {per_elem:.2} B/elem, over {TOLERANCE}x the {allowed:.2} its reasons allow"
                    ));
                }
                if per_elem * TOLERANCE < allowed {
                    failures.push(format!(
                        "{label}: {per_elem:.2} B/elem, well under the {allowed:.2} its reasons allow: a reason no longer holds"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn v2_finalizes_both_gradients_in_one_launch_and_rmsnorm_writes_no_dbias_partials() {
    let layout = rows(32, 1024);
    for (rms, finalize_launches_v1) in [(false, 2), (true, 1)] {
        let path = Path {
            name: "finalize",
            pass: Pass::Backward,
            device: EmulatedDevice::Hopper,
            kernel: "layer_norm_bwd<",
            layout,
            rms,
            reasons: &[],
            v2: None,
        };
        let v1 = run::<f32, f32, f32>(&path, KernelGeneration::V1);
        let v2 = run::<f32, f32, f32>(&path, KernelGeneration::V2);
        let finalizes = |m: &Measured, name: &str| {
            m.launches
                .iter()
                .filter(|l| l.kernel.contains(name))
                .count()
        };
        assert_eq!(finalizes(&v1, "finalize_partials"), finalize_launches_v1);
        assert_eq!(finalizes(&v2, "finalize_pair"), 1);
        assert_eq!(v2.launches.len(), 2, "{:?}", v2.launches);
        // The backward kernel's partial rows: one (dscale) for RMSNorm, two otherwise.
        let grads = if rms { 1 } else { 2 };
        let main = &v2.launches[0];
        let dx_bytes = 4 * 32 * 1024;
        assert_eq!(
            main.stored,
            dx_bytes + grads * main.grid as u64 * 1024 * 4,
            "{main:?}"
        );
        // Both generations read every partial row exactly once.
        let reads = |m: &Measured| -> u64 { m.launches[1..].iter().map(|l| l.loaded).sum() };
        assert_eq!(reads(&v1), reads(&v2));
        assert_eq!(reads(&v2), grads * main.grid as u64 * 1024 * 4);
    }
}
