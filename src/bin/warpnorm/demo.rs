//! `warpnorm demo`: one realistic LayerNorm, forward and backward, explained.
//!
//! A bf16 activation with outlier rows (a massive activation, a few spiking channels, a
//! constant padding row) through flax's default `nn.LayerNorm()` with f32 parameters, so a
//! newcomer sees what the layer does to such rows, what it costs, and whether the kernels
//! agree with the f64 reference: on a GPU, or on their CPU emulation without one.

use std::time::{Duration, Instant};

use warpnorm::cuda::tiers::{self, RowTier};
use warpnorm::reference::{self, Params};
use warpnorm::rng::Rng;
use warpnorm::tooling::kernel_matrix::tolerance::{error_ratio, max_abs, tolerance};
use warpnorm::{Array, DType, Device, LayerNorm, NormConfig, Result, Tensor};

use crate::args::{parse_len, parse_seed, DeviceSpec};
use crate::exit::{CommandResult, Failure, Outcome};
use crate::limits::{bytes_of, Budget, DEVICE_BYTES_PER_ELEMENT, HOST_BYTES_PER_ELEMENT};
use crate::output::{human_duration, progress, styled, table, Align, FAIL, HEAD, PASS, SKIP};

/// Batch shapes (rows x cols): a transformer block's activations on a GPU, a small one on
/// the CPU (the f64 reference takes about a microsecond per element, the emulation runs
/// every CUDA thread, one after another between barriers: some seconds for this batch).
const GPU_SHAPE: (usize, usize) = (4096, 4096);
const CPU_SHAPE: (usize, usize) = (256, 1024);
/// Rows compared with the CPU reference (the outliers are always among them).
const SAMPLE_ROWS: usize = 16;

/// Normalize a realistic batch and show what happened.
///
/// Runs flax's default `nn.LayerNorm()` (epsilon 1e-6, fast variance, f32 scale and bias,
/// f32 output by promotion) on a bf16 [rows, cols] activation with outlier rows, then
/// the backward pass for a random cotangent. Shows per-row input and output statistics,
/// the kernel tier chosen (on a GPU), wall-clock times, the largest error of the kernels
/// against the CPU reference on a sample of rows, and the gradients' norms.
///
/// Without a GPU the kernels run on their CPU emulation where this build has it (cargo
/// feature `emulator`; with bf16 output, the combination it compiles); otherwise the CPU
/// reference computes the batch, there is nothing to compare it with, and the command
/// exits 3.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    warpnorm demo                        # cuda:0 with 4096 x 4096, else the emulation\n  \
    warpnorm demo --device cpu           # the CPU reference alone, 256 x 1024\n  \
    warpnorm demo --rows 8192 --cols 5120")]
pub struct Args {
    /// Device: cpu, cuda, cuda:N or emulator [default: cuda:0 if present, else the
    /// emulator when built in, else cpu].
    #[arg(long, value_parser = DeviceSpec::parse)]
    device: Option<DeviceSpec>,
    /// Rows of the batch (tokens) [default GPU: 4096; else 256].
    #[arg(long, value_parser = parse_len, allow_hyphen_values = true)]
    rows: Option<usize>,
    /// Cols, the normalized length (features per token) [default GPU: 4096; else 1024].
    #[arg(long, value_parser = parse_len, allow_hyphen_values = true)]
    cols: Option<usize>,
    /// Seed of the random batch.
    #[arg(long, default_value_t = 0, value_parser = parse_seed, allow_hyphen_values = true)]
    seed: u64,
}

/// Where the batch runs.
enum Runner {
    /// The kernels on a GPU.
    Gpu(Device),
    /// The kernels' CPU emulation.
    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    Emulator,
    /// The CPU reference alone, and why nothing else can run.
    Reference(String),
}

impl Runner {
    fn choose(spec: Option<DeviceSpec>) -> std::result::Result<Runner, Failure> {
        let no_emulator =
            "no CPU emulation of the kernels in this build (cargo feature `emulator`)";
        match spec {
            Some(DeviceSpec::Cuda(n)) => Ok(Runner::Gpu(Device::cuda(n)?)),
            Some(DeviceSpec::Emulator) if crate::emulated::BUILT => Ok(Runner::Emulator),
            Some(DeviceSpec::Emulator) => Err(Failure::Usage(no_emulator.to_string())),
            Some(DeviceSpec::Cpu) => Ok(Runner::Reference("--device cpu".to_string())),
            None => match Device::best() {
                (gpu @ Device::Cuda(_), _) => Ok(Runner::Gpu(gpu)),
                (_, why) => {
                    let why = format!("no GPU ({})", why.unwrap_or_default());
                    if crate::emulated::BUILT {
                        anstream::println!("{why}: running the kernels' CPU emulation");
                        Ok(Runner::Emulator)
                    } else {
                        Ok(Runner::Reference(format!("{why}, {no_emulator}")))
                    }
                }
            },
        }
    }

    fn default_shape(&self) -> (usize, usize) {
        match self {
            Runner::Gpu(_) => GPU_SHAPE,
            Runner::Emulator | Runner::Reference(_) => CPU_SHAPE,
        }
    }

    fn describe(&self) -> String {
        match self {
            Runner::Gpu(d) => d.describe(),
            Runner::Emulator => "the kernels' CPU emulation".to_string(),
            Runner::Reference(_) => Device::Cpu.describe(),
        }
    }

    /// The layer the batch goes through, how flax spells it, and where y's dtype comes
    /// from: flax's default (bf16 x with f32 parameters gives f32 y) wherever it runs.
    fn layer(&self) -> (NormConfig, &'static str, &'static str) {
        (
            NormConfig::flax(),
            "flax nn.LayerNorm()",
            "flax promotes bf16 x with f32 parameters",
        )
    }

    /// Refuses a batch that would not fit where it runs (the host always holds it in f64).
    fn admit(&self, rows: usize, cols: usize) -> std::result::Result<(), Failure> {
        let what = format!("a {rows} x {cols} batch");
        Budget::host().admit(&what, bytes_of(&[rows, cols], HOST_BYTES_PER_ELEMENT))?;
        if let Runner::Gpu(Device::Cuda(be)) = self {
            Budget::gpu(be)?.admit(&what, bytes_of(&[rows, cols], DEVICE_BYTES_PER_ELEMENT))?;
        }
        Ok(())
    }
}

/// The kinds of rows in the batch: mostly typical, with the outliers real activations have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowKind {
    Typical,
    /// A "massive activation" token: large mean and spread.
    Massive,
    /// A few channels far above the rest (outlier features).
    Spikes,
    /// Every element equal (a padding token): variance 0, so y is 0 (epsilon keeps it finite).
    Constant,
}

impl RowKind {
    fn of(row: usize, rows: usize) -> RowKind {
        match row {
            1 => RowKind::Massive,
            2 => RowKind::Spikes,
            3 if rows > 4 => RowKind::Constant,
            _ => RowKind::Typical,
        }
    }

    fn label(self) -> &'static str {
        match self {
            RowKind::Typical => "typical",
            RowKind::Massive => "massive activation (x40, mean 5)",
            RowKind::Spikes => "4 spiking channels (+300)",
            RowKind::Constant => "constant (padding)",
        }
    }
}

/// What the runner computed, and how long it took.
struct Results {
    y: Tensor,
    dx: Tensor,
    dscale: Option<Tensor>,
    dbias: Option<Tensor>,
    scale: Option<Tensor>,
    bias: Option<Tensor>,
    timing: Timing,
}

enum Timing {
    /// Forward and backward apart, on a backend's layer.
    Passes { fwd: Duration, bwd: Duration },
    /// Forward and backward together, on the emulation.
    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    Together(Duration),
}

pub fn run(args: &Args) -> CommandResult {
    let runner = Runner::choose(args.device)?;
    let (def_rows, def_cols) = runner.default_shape();
    let (rows, cols) = (args.rows.unwrap_or(def_rows), args.cols.unwrap_or(def_cols));
    runner.admit(rows, cols)?;
    if let Runner::Reference(why) = &runner {
        anstream::println!(
            "{why}: running on the CPU reference backend ({rows} x {cols}); there are no \
             kernels to compare it with"
        );
    }
    let (cfg, flax_call, why_out) = runner.layer();
    let out = cfg.output_dtype(DType::BF16);
    anstream::println!(
        "{} {flax_call} (epsilon {:e}, use_fast_variance {}, scale/bias {}) on {}",
        styled(HEAD, "layer:"),
        cfg.eps(),
        cfg.fast_variance(),
        cfg.param_dtype().short_name(),
        runner.describe()
    );
    anstream::println!(
        "{} x bf16 [{rows}, {cols}] -> y {} ({why_out})",
        styled(HEAD, "batch:"),
        out.short_name()
    );
    if let Runner::Gpu(Device::Cuda(be)) = &runner {
        anstream::println!("{} {}", styled(HEAD, "kernels:"), be.loaded_image());
        anstream::println!("  forward:  {}", tier(tiers::Pass::Forward, cols));
        anstream::println!("  backward: {}", tier(tiers::Pass::Backward, cols));
    }

    let bar = progress(3, "demo");
    bar.set_message("building the batch");
    let x = batch(rows, cols, args.seed)?;
    let mut rng = Rng::new(args.seed ^ 0xD1);
    let dy = Tensor::from_fn([rows, cols], out, |_| rng.normal())?;
    bar.inc(1);
    bar.set_message("forward and backward");
    let results = match &runner {
        Runner::Gpu(device) => on_device(device, &cfg, &x, &dy, args.seed)?,
        Runner::Reference(_) => on_device(&Device::Cpu, &cfg, &x, &dy, args.seed)?,
        Runner::Emulator => emulate(&cfg, &x, &dy, args.seed)?,
    };
    bar.inc(1);
    bar.set_message("comparing with the CPU reference");
    let sample = sample_rows(rows);
    let comparison = match runner {
        Runner::Reference(_) => None,
        _ => Some(compare(&cfg, &x, &dy, &results, &sample)?),
    };
    bar.inc(1);
    bar.finish_and_clear();

    anstream::println!();
    stats_table(&x, &results.y, &results.dx, &sample);
    let (y_means, y_stds): (Vec<f64>, Vec<f64>) = (0..rows)
        .filter(|&r| RowKind::of(r, rows) != RowKind::Constant)
        .map(|r| row_stats(results.y.data(), cols, r))
        .unzip();
    anstream::println!(
        "all {} non-constant rows: |y mean| <= {:.1e}, y std in [{:.4}, {:.4}]",
        y_means.len(),
        y_means.iter().fold(0.0f64, |m, v| m.max(v.abs())),
        y_stds.iter().copied().fold(f64::INFINITY, f64::min),
        y_stds.iter().copied().fold(0.0, f64::max),
    );

    anstream::println!();
    print_timing(&runner, &results.timing, rows * cols);
    let outcome = print_check(comparison.as_ref(), sample.len(), &runner);
    print_gradients(&cfg, &results, rows);
    Ok(outcome)
}

/// Forward and backward through a [`LayerNorm`] on `device`, timed apart.
fn on_device(
    device: &Device,
    cfg: &NormConfig,
    x: &Tensor,
    dy: &Tensor,
    seed: u64,
) -> Result<Results> {
    let ln = LayerNorm::new(device, cfg, x.shape(), seed)?;
    let (xa, dya) = (
        Array::from_tensor(device, x)?,
        Array::from_tensor(device, dy)?,
    );
    if device.is_cuda() {
        // The first launch loads each kernel from the image: not part of the timing.
        let (_, s) = ln.forward_train(&xa)?;
        ln.backward(&xa, &dya, &s)?;
        sync(device)?;
    }
    let start = Instant::now();
    let (y, saved) = ln.forward_train(&xa)?;
    sync(device)?;
    let fwd = start.elapsed();
    let start = Instant::now();
    let grads = ln.backward(&xa, &dya, &saved)?;
    sync(device)?;
    let bwd = start.elapsed();
    let host = |a: Option<&Array>| a.map(Array::to_tensor).transpose();
    Ok(Results {
        y: y.to_tensor()?,
        dx: grads.dx.to_tensor()?,
        dscale: host(grads.dscale.as_ref())?,
        dbias: host(grads.dbias.as_ref())?,
        scale: host(ln.scale())?,
        bias: host(ln.bias())?,
        timing: Timing::Passes { fwd, bwd },
    })
}

/// Forward and backward through the kernels' CPU emulation, with the layer's initial
/// parameters.
#[cfg(feature = "emulator")]
fn emulate(cfg: &NormConfig, x: &Tensor, dy: &Tensor, seed: u64) -> Result<Results> {
    use warpnorm::ops::Layout;
    use warpnorm::tooling::kernel_matrix::{Case, Kernels};
    let ln = LayerNorm::new(&Device::Cpu, cfg, x.shape(), seed)?;
    let host = |a: Option<&Array>| a.map(Array::to_tensor).transpose();
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let case = Case {
        cfg: cfg.clone(),
        layout: Layout::rows(rows, cols),
        x: x.clone(),
        scale: host(ln.scale())?,
        bias: host(ln.bias())?,
        mask: None,
        dy: dy.clone(),
    };
    let d = case.dtypes();
    let start = Instant::now();
    let out = Kernels::Emulator.run(&case, None)?;
    let took = start.elapsed();
    let tensor = |like: &Tensor, dtype, data| Tensor::new(like.shape().to_vec(), dtype, data);
    let param = |grad: Option<Vec<f64>>, like: Option<&Tensor>| match (grad, like) {
        (Some(g), Some(like)) => tensor(like, d.param, g).map(Some),
        _ => Ok(None),
    };
    Ok(Results {
        y: tensor(dy, d.out, out.y)?,
        dx: tensor(x, d.x, out.dx)?,
        dscale: param(out.dscale, case.scale.as_ref())?,
        dbias: param(out.dbias, case.bias.as_ref())?,
        scale: case.scale,
        bias: case.bias,
        timing: Timing::Together(took),
    })
}

#[cfg(not(feature = "emulator"))]
fn emulate(_: &NormConfig, _: &Tensor, _: &Tensor, _: u64) -> Result<Results> {
    Err(warpnorm::Error::Unsupported(
        "this build has no CPU emulation of the kernels".into(),
    ))
}

fn print_timing(runner: &Runner, timing: &Timing, elements: usize) {
    let per_elem = |d: &Duration| d.as_secs_f64() * 1e9 / elements.max(1) as f64;
    let what = match runner {
        Runner::Gpu(_) => {
            "host wall clock around the launches and allocations; `warpnorm bench` for kernel times"
        }
        Runner::Emulator => "the CPU emulation runs each CUDA thread in turn on one core: a correctness tool, not a speed",
        Runner::Reference(_) => "the f64 reference: a correctness oracle, not a fast path",
    };
    let times = match timing {
        Timing::Passes { fwd, bwd } => format!(
            "forward {} ({:.2} ns/element), backward {} ({:.2} ns/element)",
            human_duration(*fwd),
            per_elem(fwd),
            human_duration(*bwd),
            per_elem(bwd)
        ),
        Timing::Together(both) => format!(
            "forward and backward {} ({:.2} ns/element)",
            human_duration(*both),
            per_elem(both)
        ),
    };
    anstream::println!("{} {times} ({what})", styled(HEAD, "time:"));
}

/// The check line: the kernels against the reference, or why there was nothing to check.
fn print_check(comparison: Option<&Comparison>, rows: usize, runner: &Runner) -> Outcome {
    let Some(c) = comparison else {
        anstream::println!(
            "{} nothing to check on this machine: the CPU reference computed these results, \
             and it is what the kernels would be compared with",
            styled(SKIP, "check:")
        );
        return Outcome::NothingToCheck;
    };
    let ok = c.y.0 <= 1.0 && c.dx.0 <= 1.0;
    let who = match runner {
        Runner::Emulator => "the emulated kernels",
        _ => "the kernels",
    };
    anstream::println!(
        "{} {who} against the f64 CPU reference on {rows} rows: y max abs error {:.2e} ({:.3} of tolerance), dx {:.2e} ({:.3} of tolerance) {}",
        styled(HEAD, "check:"),
        c.y.1,
        c.y.0,
        c.dx.1,
        c.dx.0,
        if ok { styled(PASS, "PASS") } else { styled(FAIL, "FAIL") }
    );
    if ok {
        Outcome::Success
    } else {
        Outcome::CheckFailed
    }
}

fn print_gradients(cfg: &NormConfig, r: &Results, rows: usize) {
    let norm = |t: &Tensor| t.data().iter().map(|v| v * v).sum::<f64>().sqrt();
    anstream::println!(
        "{} |dx| = {:.4e} ({}), |dscale| = {:.4e}, |dbias| = {:.4e} ({})",
        styled(HEAD, "gradients:"),
        norm(&r.dx),
        r.dx.dtype().short_name(),
        r.dscale.as_ref().map(norm).unwrap_or(0.0),
        r.dbias.as_ref().map(norm).unwrap_or(0.0),
        r.dscale
            .as_ref()
            .map_or(DType::F32, Tensor::dtype)
            .short_name(),
    );
    if rows > 4 {
        anstream::println!(
            "  the constant row's dx is scaled by 1/sqrt(0 + epsilon) = {:.0}: padding tokens need masking",
            1.0 / cfg.eps().sqrt()
        );
    }
}

/// A [rows, cols] bf16 batch: normal rows with a per-row offset, plus the outliers of
/// [`RowKind`].
fn batch(rows: usize, cols: usize, seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let spikes: Vec<usize> = (0..4).map(|i| (i * 997 + 13) % cols).collect();
    let mut data = Vec::with_capacity(rows * cols);
    for row in 0..rows {
        let offset = rng.normal_with(0.0, 0.2);
        for col in 0..cols {
            let v = match RowKind::of(row, rows) {
                RowKind::Typical => offset + rng.normal(),
                RowKind::Massive => 5.0 + 40.0 * rng.normal(),
                RowKind::Spikes => rng.normal() + if spikes.contains(&col) { 300.0 } else { 0.0 },
                RowKind::Constant => 2.0,
            };
            data.push(v);
        }
    }
    Tensor::new([rows, cols], DType::BF16, data)
}

/// The rows shown and compared: the first few (outliers included), some spread through
/// the batch, and the last.
fn sample_rows(rows: usize) -> Vec<usize> {
    let mut sample: Vec<usize> = (0..rows.min(5)).collect();
    let step = (rows / SAMPLE_ROWS).max(1);
    sample.extend((0..rows).step_by(step));
    sample.push(rows - 1);
    sample.sort_unstable();
    sample.dedup();
    sample
}

/// Mean and (population) standard deviation of row `r`.
fn row_stats(data: &[f64], cols: usize, r: usize) -> (f64, f64) {
    let row = &data[r * cols..(r + 1) * cols];
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Input and output statistics of the first rows (the outliers) and the last, with each
/// row's share of the gradient.
fn stats_table(x: &Tensor, y: &Tensor, dx: &Tensor, sample: &[usize]) {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let shown: Vec<usize> = sample
        .iter()
        .copied()
        .filter(|&r| r < 5 || r == rows - 1)
        .collect();
    let cells: Vec<Vec<String>> = shown
        .iter()
        .map(|&r| {
            let (xm, xs) = row_stats(x.data(), cols, r);
            let (ym, ys) = row_stats(y.data(), cols, r);
            let dx_norm = dx.data()[r * cols..(r + 1) * cols]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt();
            vec![
                r.to_string(),
                RowKind::of(r, rows).label().to_string(),
                format!("{xm:.3}"),
                format!("{xs:.3}"),
                format!("{:.3}", clean_zero(ym)),
                format!("{ys:.4}"),
                format!("{dx_norm:.3e}"),
            ]
        })
        .collect();
    let t = table(
        &[
            "row",
            "input",
            "x mean",
            "x std",
            "y mean",
            "y std",
            "|dx| of row",
        ],
        &[
            Align::Right,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
        &cells,
    );
    anstream::print!("{t}");
}

/// Keeps `-0.000` out of the table.
fn clean_zero(v: f64) -> f64 {
    if v.abs() < 5e-4 {
        0.0
    } else {
        v
    }
}

/// Largest (error / tolerance, absolute error) of y and dx over the sample rows.
struct Comparison {
    y: (f64, f64),
    dx: (f64, f64),
}

/// Runs the f64 reference on the sample rows (each row's y and dx depend on that row only)
/// and compares with the kernels' results.
fn compare(
    cfg: &NormConfig,
    x: &Tensor,
    dy: &Tensor,
    got: &Results,
    sample: &[usize],
) -> Result<Comparison> {
    let cols = x.shape()[1];
    let pick = |t: &Tensor| -> Result<Tensor> {
        let data = sample
            .iter()
            .flat_map(|&r| t.data()[r * cols..(r + 1) * cols].iter().copied())
            .collect();
        Tensor::new([sample.len(), cols], t.dtype(), data)
    };
    let (xs, dys) = (pick(x)?, pick(dy)?);
    let params = Params::new(got.scale.as_ref(), got.bias.as_ref());
    let want_y = reference::forward(cfg, &xs, params, None)?.y;
    let want_dx = reference::backward(cfg, &xs, params, None, &dys)?.dx;
    let (got_y, got_dx) = (pick(&got.y)?, pick(&got.dx)?);
    Ok(Comparison {
        y: deviation(&got_y, &want_y, cols),
        dx: deviation(&got_dx, &want_dx, cols),
    })
}

/// The largest error of `got` in units of its tolerance, and its absolute error there.
fn deviation(got: &Tensor, want: &Tensor, cols: usize) -> (f64, f64) {
    let (rel, abs) = tolerance(got.dtype(), max_abs(want.data()), cols);
    let (ratio, at) = error_ratio(got.data(), want.data(), rel, abs);
    let err = |v: &[f64]| v.get(at).copied().unwrap_or(f64::NAN);
    (ratio, (err(got.data()) - err(want.data())).abs())
}

/// Waits for the device, so wall-clock times include the work.
fn sync(device: &Device) -> Result<()> {
    if let Device::Cuda(be) = device {
        be.stream().synchronize()?;
    }
    Ok(())
}

/// The kernel a row of `cols` bf16 elements gets (16-byte vectors when the length
/// allows), from the same tier table the launcher uses.
fn tier(pass: tiers::Pass, cols: usize) -> String {
    let vec = tiers::max_vec(DType::BF16.size() as u32);
    let vec = if cols.is_multiple_of(vec as usize) {
        vec
    } else {
        1
    };
    match tiers::pick_row_tier(pass, vec, cols as u64) {
        Some(RowTier { vec, vecs, group }) if group <= 32 => format!(
            "register tier: {group} thread(s) per row, {vecs} vector(s) of {vec} per thread, {} rows per 128-thread block",
            128 / group
        ),
        Some(RowTier { vec, vecs, group }) => format!(
            "register tier: one {group}-thread block per row, {vecs} vector(s) of {vec} per thread"
        ),
        None => "block-per-row tier (the row is longer than every register tier)".to_string(),
    }
}
