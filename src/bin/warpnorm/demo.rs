//! `warpnorm demo`: one realistic LayerNorm, forward and backward, explained.
//!
//! A bf16 activation with outlier rows (a massive activation, a few spiking channels, a
//! constant padding row) through flax's default `nn.LayerNorm()` with f32 parameters, so a
//! newcomer sees what the layer does to such rows, what it costs, and that the device agrees
//! with the f64 reference.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use warpnorm::cuda::tiers::{self, RowTier};
use warpnorm::reference::{self, Params};
use warpnorm::rng::Rng;
use warpnorm::selftest::error_ratio;
use warpnorm::{Array, DType, Device, LayerNorm, NormConfig, Result, Tensor};

use crate::args::{choose_device, parse_cols, DeviceSpec};
use crate::output::{human_duration, progress, styled, table, Align, FAIL, HEAD, PASS};

/// Batch shapes: a transformer block's activations on a GPU, a small one on the CPU
/// (the f64 reference takes about a microsecond per element).
const GPU_SHAPE: (usize, usize) = (4096, 4096);
const CPU_SHAPE: (usize, usize) = (256, 1024);
/// Rows compared with the CPU reference (the outliers are always among them).
const SAMPLE_ROWS: usize = 16;

/// Normalise a realistic batch and show what happened.
///
/// Runs flax's default `nn.LayerNorm()` (epsilon 1e-6, fast variance, f32 scale and bias,
/// float32 output by promotion) on a bf16 [tokens, hidden] activation with outlier rows,
/// then the backward pass for a random cotangent. Shows per-row input and output
/// statistics, the kernel tier chosen (on a GPU), wall-clock times, the largest error
/// against the CPU reference on a sample of rows, and the gradients' norms.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    warpnorm demo                        # cuda:0 with a 4096 x 4096 batch, else the CPU\n  \
    warpnorm demo --device cpu           # the CPU reference with a 256 x 1024 batch\n  \
    warpnorm demo --tokens 8192 --hidden 5120")]
pub struct Args {
    /// Device: cpu, cuda or cuda:N [default: cuda:0 if present, else cpu].
    #[arg(long, value_parser = DeviceSpec::parse)]
    device: Option<DeviceSpec>,
    /// Rows of the batch [default GPU: 4096; CPU: 256].
    #[arg(long, value_parser = parse_cols)]
    tokens: Option<usize>,
    /// Features per row, the normalised length [default GPU: 4096; CPU: 1024].
    #[arg(long, value_parser = parse_cols)]
    hidden: Option<usize>,
    /// Seed of the random batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    fn of(row: usize, tokens: usize) -> RowKind {
        match row {
            1 => RowKind::Massive,
            2 => RowKind::Spikes,
            3 if tokens > 4 => RowKind::Constant,
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

pub fn run(args: &Args) -> Result<ExitCode> {
    let (device, why_not_gpu) = choose_device(args.device)?;
    let (def_t, def_h) = if device.is_cuda() {
        GPU_SHAPE
    } else {
        CPU_SHAPE
    };
    let (tokens, hidden) = (args.tokens.unwrap_or(def_t), args.hidden.unwrap_or(def_h));
    if !device.is_cuda() {
        let mut line = match why_not_gpu {
            Some(why) => format!("no GPU ({why}): running on the CPU reference backend"),
            None => "running on the CPU reference backend".to_string(),
        };
        if args.tokens.is_none() && args.hidden.is_none() {
            line += &format!(
                " with a smaller batch ({tokens} x {hidden} instead of {} x {})",
                GPU_SHAPE.0, GPU_SHAPE.1
            );
        }
        anstream::println!("{line}");
    }
    let cfg = NormConfig::flax();
    anstream::println!(
        "{} flax nn.LayerNorm() (epsilon {:e}, use_fast_variance {}, scale/bias {}) on {}",
        styled(HEAD, "layer:"),
        cfg.eps(),
        cfg.fast_variance(),
        cfg.param_dtype(),
        device.describe()
    );
    anstream::println!(
        "{} x bf16 [{tokens}, {hidden}] -> y {} (flax promotes bf16 x with f32 parameters)",
        styled(HEAD, "batch:"),
        cfg.output_dtype(DType::BF16)
    );
    if let Device::Cuda(be) = &device {
        anstream::println!("{} {}", styled(HEAD, "kernels:"), be.loaded_image());
        anstream::println!("  forward:  {}", tier(tiers::Pass::Forward, hidden));
        anstream::println!("  backward: {}", tier(tiers::Pass::Backward, hidden));
    }

    let bar = progress(5, "demo");
    bar.set_message("building the batch");
    let x = batch(tokens, hidden, args.seed)?;
    let mut rng = Rng::new(args.seed ^ 0xD1);
    let dy = Tensor::from_fn([tokens, hidden], cfg.output_dtype(DType::BF16), |_| {
        rng.normal()
    })?;
    bar.inc(1);

    bar.set_message("uploading");
    let ln = LayerNorm::new(&device, &cfg, &[tokens, hidden], args.seed)?;
    let (xa, dya) = (
        Array::from_tensor(&device, &x)?,
        Array::from_tensor(&device, &dy)?,
    );
    if device.is_cuda() {
        // The first launch loads each kernel from the image: not part of the timing.
        let (_, s) = ln.forward_train(&xa)?;
        ln.backward(&xa, &dya, &s)?;
        sync(&device)?;
    }
    bar.inc(1);

    bar.set_message("forward");
    let start = Instant::now();
    let (y, saved) = ln.forward_train(&xa)?;
    sync(&device)?;
    let t_fwd = start.elapsed();
    bar.inc(1);
    bar.set_message("backward");
    let start = Instant::now();
    let grads = ln.backward(&xa, &dya, &saved)?;
    sync(&device)?;
    let t_bwd = start.elapsed();
    bar.inc(1);

    bar.set_message("reading back and comparing");
    let y = y.to_tensor()?;
    let dx = grads.dx.to_tensor()?;
    let dscale = grads.dscale.map(|a| a.to_tensor()).transpose()?;
    let dbias = grads.dbias.map(|a| a.to_tensor()).transpose()?;
    let rows = sample_rows(tokens);
    let scale = ln.scale().map(Array::to_tensor).transpose()?;
    let bias = ln.bias().map(Array::to_tensor).transpose()?;
    let comparison = compare(&cfg, &x, &dy, &y, &dx, &rows, scale.as_ref(), bias.as_ref())?;
    bar.inc(1);
    bar.finish_and_clear();

    anstream::println!();
    stats_table(&x, &y, &dx, &rows);
    let (y_means, y_stds): (Vec<f64>, Vec<f64>) = (0..tokens)
        .filter(|&r| RowKind::of(r, tokens) != RowKind::Constant)
        .map(|r| row_stats(y.data(), hidden, r))
        .unzip();
    anstream::println!(
        "all {} non-constant rows: |y mean| <= {:.1e}, y std in [{:.4}, {:.4}]",
        y_means.len(),
        y_means.iter().fold(0.0f64, |m, v| m.max(v.abs())),
        y_stds.iter().copied().fold(f64::INFINITY, f64::min),
        y_stds.iter().copied().fold(0.0, f64::max),
    );

    anstream::println!();
    let per_elem = |d: Duration| d.as_secs_f64() * 1e9 / (tokens * hidden) as f64;
    anstream::println!(
        "{} forward {} ({:.2} ns/element), backward {} ({:.2} ns/element){}",
        styled(HEAD, "time:"),
        human_duration(t_fwd),
        per_elem(t_fwd),
        human_duration(t_bwd),
        per_elem(t_bwd),
        if device.is_cuda() {
            " (host wall clock around the launches and allocations; `warpnorm bench` for kernel times)"
        } else {
            " (the f64 reference: a correctness oracle, not a fast path)"
        }
    );

    let ok = comparison.y.0 <= 1.0 && comparison.dx.0 <= 1.0;
    let against = if device.is_cuda() {
        "against the CPU reference"
    } else {
        "against the CPU reference (the same backend: 0 expected)"
    };
    anstream::println!(
        "{} {against} on {} rows: y max abs error {:.2e} ({:.3} of tolerance), dx {:.2e} ({:.3} of tolerance) {}",
        styled(HEAD, "check:"),
        rows.len(),
        comparison.y.1,
        comparison.y.0,
        comparison.dx.1,
        comparison.dx.0,
        if ok { styled(PASS, "PASS") } else { styled(FAIL, "FAIL") }
    );

    let norm = |t: &Tensor| t.data().iter().map(|v| v * v).sum::<f64>().sqrt();
    anstream::println!(
        "{} |dx| = {:.4e} ({}), |dscale| = {:.4e}, |dbias| = {:.4e} ({})",
        styled(HEAD, "gradients:"),
        norm(&dx),
        dx.dtype(),
        dscale.as_ref().map(norm).unwrap_or(0.0),
        dbias.as_ref().map(norm).unwrap_or(0.0),
        dscale.as_ref().map(|t| t.dtype()).unwrap_or(DType::F32),
    );
    if tokens > 4 {
        anstream::println!(
            "  the constant row's dx is scaled by 1/sqrt(0 + epsilon) = {:.0}: padding tokens need masking",
            1.0 / cfg.eps().sqrt()
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A [tokens, hidden] bf16 batch: normal rows with a per-row offset, plus the outliers of
/// [`RowKind`].
fn batch(tokens: usize, hidden: usize, seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let spikes: Vec<usize> = (0..4).map(|i| (i * 997 + 13) % hidden).collect();
    let mut data = Vec::with_capacity(tokens * hidden);
    for row in 0..tokens {
        let offset = rng.normal_with(0.0, 0.2);
        for col in 0..hidden {
            let v = match RowKind::of(row, tokens) {
                RowKind::Typical => offset + rng.normal(),
                RowKind::Massive => 5.0 + 40.0 * rng.normal(),
                RowKind::Spikes => rng.normal() + if spikes.contains(&col) { 300.0 } else { 0.0 },
                RowKind::Constant => 2.0,
            };
            data.push(v);
        }
    }
    Tensor::new([tokens, hidden], DType::BF16, data)
}

/// The rows shown and compared: the first few (outliers included), some spread through
/// the batch, and the last.
fn sample_rows(tokens: usize) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..tokens.min(5)).collect();
    let step = (tokens / SAMPLE_ROWS).max(1);
    rows.extend((0..tokens).step_by(step));
    rows.push(tokens - 1);
    rows.sort_unstable();
    rows.dedup();
    rows
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
fn stats_table(x: &Tensor, y: &Tensor, dx: &Tensor, rows: &[usize]) {
    let (tokens, hidden) = (x.shape()[0], x.shape()[1]);
    let shown: Vec<usize> = rows
        .iter()
        .copied()
        .filter(|&r| r < 5 || r == tokens - 1)
        .collect();
    let cells: Vec<Vec<String>> = shown
        .iter()
        .map(|&r| {
            let (xm, xs) = row_stats(x.data(), hidden, r);
            let (ym, ys) = row_stats(y.data(), hidden, r);
            let dx_norm = dx.data()[r * hidden..(r + 1) * hidden]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt();
            vec![
                r.to_string(),
                RowKind::of(r, tokens).label().to_string(),
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
/// and compares with the device's results.
#[allow(clippy::too_many_arguments)]
fn compare(
    cfg: &NormConfig,
    x: &Tensor,
    dy: &Tensor,
    y: &Tensor,
    dx: &Tensor,
    rows: &[usize],
    scale: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<Comparison> {
    let hidden = x.shape()[1];
    let pick = |t: &Tensor| -> Result<Tensor> {
        let data = rows
            .iter()
            .flat_map(|&r| t.data()[r * hidden..(r + 1) * hidden].iter().copied())
            .collect();
        Tensor::new([rows.len(), hidden], t.dtype(), data)
    };
    let (xs, dys) = (pick(x)?, pick(dy)?);
    let params = Params::new(scale, bias);
    let want_y = reference::forward(cfg, &xs, params, None)?.y;
    let want_dx = reference::backward(cfg, &xs, params, None, &dys)?.dx;
    let (got_y, got_dx) = (pick(y)?, pick(dx)?);
    Ok(Comparison {
        y: error_ratio(got_y.data(), want_y.data(), got_y.dtype(), hidden),
        dx: error_ratio(got_dx.data(), want_dx.data(), got_dx.dtype(), hidden),
    })
}

/// Waits for the device, so wall-clock times include the work.
fn sync(device: &Device) -> Result<()> {
    if let Device::Cuda(be) = device {
        be.stream().synchronize()?;
    }
    Ok(())
}

/// The kernel a row of `hidden` bf16 elements gets (16-byte vectors when the length
/// allows), from the same tier table the launcher uses.
fn tier(pass: tiers::Pass, hidden: usize) -> String {
    let vec = tiers::max_vec(DType::BF16.size() as u32);
    let vec = if hidden.is_multiple_of(vec as usize) {
        vec
    } else {
        1
    };
    match tiers::pick_row_tier(pass, vec, hidden as u64) {
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
