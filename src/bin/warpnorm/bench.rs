//! `warpnorm bench`: LayerNorm / RMSNorm throughput per dtype, cols and pass.
//!
//! On a GPU this is [`warpnorm::tooling::bench::run_with`] (CUDA events, rotated buffers, a copy as
//! the ceiling). On the CPU it times the reference backend with the host clock on small
//! problems, so the command, its JSON and its chart can be tried anywhere; those numbers
//! say nothing about the kernels.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::ValueEnum;
use warpnorm::ops::KernelGeneration;
use warpnorm::rng::Rng;
use warpnorm::tooling::bench::{self, BenchOptions, BenchRecord, Norm, Pass, Problem};
use warpnorm::tooling::plot::{Chart, Dash, Series};
use warpnorm::{cuda, Array, DType, Device, Error, LayerNorm, NormConfig, Result, Tensor};

use crate::args::{
    parse_bytes, parse_dtype, parse_iters, parse_kernels, parse_len, parse_norm, parse_warmup,
    DeviceSpec, EMULATOR_RUNS_NO_BACKEND,
};
use crate::exit::{CommandResult, Failure, Outcome};
use crate::limits::{bytes_of, Budget, HOST_BYTES_PER_ELEMENT};
use crate::output::{human_bytes, progress, Notes};

/// What to time; the names are those of the records' `pass` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PassArg {
    /// Training forward: y and the statistics.
    Fwd,
    /// Backward alone: dx, dscale, dbias from a forward's statistics.
    Bwd,
    /// Forward then backward, one training step.
    #[value(name = "fwd_bwd", alias = "fwd+bwd")]
    FwdBwd,
    /// fwd, bwd and fwd_bwd.
    All,
}

/// The passes a list of `--pass` values asks for, each once, in the order fwd, bwd,
/// fwd_bwd.
fn passes(args: &[PassArg]) -> Vec<Pass> {
    let wants = |p: PassArg| args.contains(&p) || args.contains(&PassArg::All);
    [
        (PassArg::Fwd, Pass::Fwd),
        (PassArg::Bwd, Pass::Bwd),
        (PassArg::FwdBwd, Pass::FwdBwd),
    ]
    .into_iter()
    .filter(|&(arg, _)| wants(arg))
    .map(|(_, pass)| pass)
    .collect()
}

/// Time forward / backward throughput against the device's copy bandwidth.
///
/// Each problem is rows x cols activations of about --bytes (cols is the normalized
/// length); GB/s counts the bytes the normalization must move (x, y, dy, dx, parameters,
/// statistics) and "% copy" compares it with a device-to-device copy measured in the same
/// run. Times are medians of CUDA-event timed iterations over buffers rotated past the L2
/// cache.
///
/// Without a GPU (or with --device cpu) this times the CPU reference backend with the host
/// clock on small problems: a way to try the command, not a measure of the kernels.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    warpnorm bench                                   # every dtype, cols 128 .. 65536\n  \
    warpnorm bench --dtype bf16 --cols 1024,4096,8192 --pass fwd\n  \
    warpnorm bench --dtype bf16 --param-dtype f32 --bytes 1GiB\n  \
    warpnorm bench --norm rms_norm --dtype bf16 --pass all\n  \
    warpnorm bench --json > results.json --plot throughput.svg\n  \
    warpnorm bench --device cpu --cols 128 --bytes 1MiB   # the CPU reference, anywhere\n  \
    warpnorm bench --from results.json --plot throughput.svg   # chart an earlier run")]
pub struct Args {
    /// Device: cpu, cuda or cuda:N [default: cuda:0 if present, else cpu].
    #[arg(long, value_parser = DeviceSpec::parse_backend)]
    device: Option<DeviceSpec>,
    /// Activation dtypes, comma-separated: f32, f16, bf16 [default: all three].
    #[arg(long, value_delimiter = ',', value_parser = parse_dtype)]
    dtype: Option<Vec<DType>>,
    /// Scale and bias dtype: f32, or each activation's own dtype when not given.
    #[arg(long, value_parser = parse_dtype)]
    param_dtype: Option<DType>,
    /// Cols (normalized lengths), comma-separated [default GPU: 128,256,...,65536; CPU:
    /// 128,1024,4096].
    #[arg(long, value_delimiter = ',', value_parser = parse_len, allow_hyphen_values = true)]
    cols: Option<Vec<usize>>,
    /// Size of x per problem (rows follow), e.g. 256MiB, 1GiB [default GPU: 256MiB; CPU:
    /// 1MiB].
    #[arg(long, value_parser = parse_bytes, allow_hyphen_values = true)]
    bytes: Option<u64>,
    /// Passes to time, comma-separated (a copy is always timed as the ceiling on a GPU).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fwd,fwd_bwd")]
    pass: Vec<PassArg>,
    /// Kernel generations to time side by side on the same buffers, comma-separated: v1,
    /// v2 [default: WARPNORM_KERNELS, else v1].
    #[arg(long, value_delimiter = ',', value_parser = parse_kernels)]
    kernels: Option<Vec<KernelGeneration>>,
    /// Normalization: layer_norm (scale and bias) or rms_norm (scale only).
    #[arg(long, default_value = "layer_norm", value_parser = parse_norm)]
    norm: Norm,
    /// Timed iterations per measurement (at most 1000000); the median is reported
    /// [default GPU: 100; CPU: 5].
    #[arg(long, value_parser = parse_iters, allow_hyphen_values = true)]
    iters: Option<usize>,
    /// Untimed iterations first (at most 1000000) [default GPU: 10; CPU: 1].
    #[arg(long, value_parser = parse_warmup, allow_hyphen_values = true)]
    warmup: Option<usize>,
    /// Print the records as JSON on stdout (notes go to stderr).
    #[arg(long)]
    json: bool,
    /// Also write a chart of GB/s against cols per dtype and pass (SVG).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Do not measure: read the records of an earlier `--json` run (to tabulate or plot
    /// results from another machine). What to measure cannot be given with it.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = [
        "device", "dtype", "param_dtype", "cols", "bytes", "pass", "norm", "iters", "warmup",
    ])]
    from: Option<PathBuf>,
}

/// CPU defaults: the reference computes in f64 one element at a time; keep it short.
const CPU_COLS: [usize; 3] = [128, 1024, 4096];
const CPU_BYTES: u64 = 1 << 20;
const CPU_ITERS: usize = 5;
const CPU_WARMUP: usize = 1;

pub fn run(args: &Args) -> CommandResult {
    let notes = Notes { json: args.json };
    let records = match &args.from {
        Some(path) => {
            let records = read_records(path)?;
            notes.say(format!(
                "{} records read from {}",
                records.len(),
                path.display()
            ));
            records
        }
        None => measure(args, notes)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        anstream::print!("{}", bench::render_table(&records));
    }
    if let Some(path) = &args.plot {
        let device = records
            .first()
            .map(|r| r.device.as_str())
            .unwrap_or("no records");
        std::fs::write(path, chart(&records, device).to_svg()).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot write {}: {e}", path.display()),
            ))
        })?;
        notes.say(format!("chart written to {}", path.display()));
    }
    Ok(Outcome::Success)
}

/// Runs the benchmark on the GPU asked for (or found), else on the CPU reference.
fn measure(args: &Args, notes: Notes) -> std::result::Result<Vec<BenchRecord>, Failure> {
    let (gpu, why_not_gpu) = match args.device {
        Some(DeviceSpec::Cpu) => (None, None),
        Some(DeviceSpec::Cuda(n)) => (Some(n), None),
        Some(DeviceSpec::Emulator) => {
            return Err(Failure::Usage(EMULATOR_RUNS_NO_BACKEND.to_string()))
        }
        None => match cuda::device_count() {
            Ok(_) => (Some(0), None),
            Err(e) => (None, Some(reason(&e))),
        },
    };
    let defaults = BenchOptions::default();
    let on_gpu = gpu.is_some();
    let opts = BenchOptions {
        device: gpu.unwrap_or(0),
        dtypes: args.dtype.clone().unwrap_or(defaults.dtypes.clone()),
        param_dtype: args.param_dtype,
        cols: args.cols.clone().unwrap_or_else(|| {
            if on_gpu {
                defaults.cols.clone()
            } else {
                CPU_COLS.to_vec()
            }
        }),
        bytes: args
            .bytes
            .unwrap_or(if on_gpu { defaults.bytes } else { CPU_BYTES }),
        passes: passes(&args.pass),
        norm: args.norm,
        kernels: args.kernels.clone().unwrap_or_default(),
        warmup: args
            .warmup
            .unwrap_or(if on_gpu { defaults.warmup } else { CPU_WARMUP }),
        iters: args
            .iters
            .unwrap_or(if on_gpu { defaults.iters } else { CPU_ITERS }),
        ..defaults
    };
    // The memory check first: it names how large the problem is. What is left for the
    // library to refuse comes from the command line too, so it is a usage error as well.
    admit(&opts, gpu)?;
    opts.validate().map_err(|e| Failure::Usage(e.to_string()))?;
    let sizes = format!(
        "{} of x per problem, median of {} iterations after {} warm-up",
        human_bytes(opts.bytes),
        opts.iters,
        opts.warmup
    );
    match gpu {
        Some(ordinal) => {
            notes.say(format!("timing cuda:{ordinal} with CUDA events: {sizes}"));
            let generations = opts.kernels.len().max(1);
            let steps = opts.dtypes.len() * opts.cols.len() * (1 + generations * opts.passes.len());
            let bar = progress(steps as u64, "bench");
            let records = bench::run_with(&opts, |r| {
                bar.set_message(format!(
                    "{} cols={} {}",
                    r.dtype.short_name(),
                    r.cols,
                    r.pass
                ));
                bar.inc(1);
            });
            bar.finish_and_clear();
            Ok(records?)
        }
        None => {
            if !opts.kernels.is_empty() {
                return Err(Failure::Usage(
                    "--kernels chooses among the GPU kernels; the CPU reference has none".into(),
                ));
            }
            let why = why_not_gpu
                .map(|w| format!("no GPU ({w}): "))
                .unwrap_or_default();
            notes.say(format!(
                "{why}timing the CPU reference backend with the host clock ({sizes}); \
                 no copy ceiling, and nothing about the GPU kernels"
            ));
            Ok(run_cpu(&opts)?)
        }
    }
}

/// Refuses problems that would not fit: on a GPU, one buffer set (x, y, dy, dx) in its
/// free memory; on the CPU, the reference's f64 tensors in the host limit.
fn admit(opts: &BenchOptions, gpu: Option<usize>) -> std::result::Result<(), Failure> {
    let budget = match gpu {
        Some(n) => {
            let be = cuda::CudaBackend::new(n)?;
            Budget::gpu(&be)?
        }
        None => Budget::host(),
    };
    for &dtype in &opts.dtypes {
        for &cols in &opts.cols {
            let param = opts.param_dtype.unwrap_or(dtype);
            let p = Problem::for_bytes(dtype, param, cols, opts.bytes)?;
            let per_element = match gpu {
                Some(_) => 4 * dtype.size() as u64,
                None => HOST_BYTES_PER_ELEMENT,
            };
            let what = format!("a {} x {cols} {} problem", p.rows, dtype.short_name());
            budget.admit(&what, bytes_of(&[p.rows, cols], per_element))?;
        }
    }
    Ok(())
}

/// Records of an earlier `--json` run: a JSON array, an object with a `records` array,
/// or one record per line.
fn read_records(path: &Path) -> Result<Vec<BenchRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        ))
    })?;
    let bad = |e: serde_json::Error| {
        Error::InvalidConfig(format!(
            "{} does not hold benchmark records: {e}",
            path.display()
        ))
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(mut o)) => {
            serde_json::from_value(o.remove("records").unwrap_or_default()).map_err(bad)
        }
        Ok(v) => serde_json::from_value(v).map_err(bad),
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(bad))
            .collect(),
    }
}

/// The message of a no-device error without its "no CUDA device available" prefix.
fn reason(e: &Error) -> String {
    match e {
        Error::NoDevice(why) => why.clone(),
        e => e.to_string(),
    }
}

/// Host-clock timing of the CPU reference: the same problems, passes and byte accounting
/// as on a GPU, `copy_gbps` and `pct_copy` left at 0 (there is no ceiling to compare with).
fn run_cpu(opts: &BenchOptions) -> Result<Vec<BenchRecord>> {
    let device = Device::Cpu;
    let steps = opts.dtypes.len() * opts.cols.len() * opts.passes.len();
    let bar = progress(steps as u64, "bench");
    let mut records = Vec::new();
    for &dtype in &opts.dtypes {
        for &cols in &opts.cols {
            let param = opts.param_dtype.unwrap_or(dtype);
            let p = Problem::for_bytes(dtype, param, cols, opts.bytes)?.with_norm(opts.norm);
            let base = match opts.norm {
                Norm::LayerNorm => NormConfig::flax(),
                Norm::RmsNorm => NormConfig::flax_rms(),
            };
            let cfg = base
                .epsilon(f64::from(opts.eps))
                .use_fast_variance(false)
                .dtype(dtype)
                .with_param_dtype(param);
            let shape = [p.rows, p.cols];
            let ln = LayerNorm::new(&device, &cfg, &shape, 0)?;
            let mut rng = Rng::new(1);
            let mut random = |mean: f64, std: f64| {
                let data = (0..p.rows * p.cols)
                    .map(|_| rng.normal_with(mean, std))
                    .collect();
                Tensor::new(shape.to_vec(), dtype, data)
                    .and_then(|t| Array::from_tensor(&device, &t))
            };
            let (x, dy) = (random(1.0, 2.0)?, random(0.0, 1.0)?);
            let (_, saved) = ln.forward_train(&x)?;
            for &pass in &opts.passes {
                bar.set_message(format!("{} cols={cols} {pass}", dtype.short_name()));
                let mut times = Vec::with_capacity(opts.iters);
                for i in 0..opts.warmup + opts.iters {
                    let start = Instant::now();
                    match pass {
                        Pass::Fwd => drop(ln.forward_train(&x)?),
                        Pass::Bwd => drop(ln.backward(&x, &dy, &saved)?),
                        Pass::FwdBwd => {
                            let (_, s) = ln.forward_train(&x)?;
                            drop(ln.backward(&x, &dy, &s)?);
                        }
                        // Not offered on the command line; a host copy of x if it were.
                        Pass::Copy => drop(x.to_tensor()?),
                    }
                    if i >= opts.warmup {
                        times.push(start.elapsed().as_secs_f64() * 1e3);
                    }
                }
                records.push(cpu_record(&p, pass, &times, &device));
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    Ok(records)
}

fn cpu_record(p: &Problem, pass: Pass, times_ms: &[f64], device: &Device) -> BenchRecord {
    BenchRecord::new("cpu_reference", p, pass, times_ms, 1, &device.describe())
}

/// GB/s against cols: one colour per dtype, one line style per pass, the copy dotted;
/// titled by the normalization the records time.
pub fn chart(records: &[BenchRecord], device: &str) -> Chart {
    let mut series: Vec<Series> = Vec::new();
    for r in records {
        let label = format!(
            "{} {} {}",
            r.dtype.short_name(),
            r.pass,
            short_impl(&r.implementation)
        );
        let label = label.trim_end().to_string();
        let at = match series.iter().position(|s| s.label == label) {
            Some(i) => i,
            None => {
                series.push(Series {
                    label,
                    points: Vec::new(),
                    color: match r.dtype {
                        DType::F32 => 0,
                        DType::F16 => 1,
                        DType::BF16 => 2,
                    },
                    dash: match r.pass {
                        Pass::Fwd => Dash::Solid,
                        Pass::FwdBwd => Dash::Dashed,
                        Pass::Bwd => Dash::DashDot,
                        Pass::Copy => Dash::Dotted,
                    },
                });
                series.len() - 1
            }
        };
        series[at].points.push((r.cols as f64, r.gbps));
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let norm = norm_title(records);
    Chart {
        title: format!("{norm} throughput, {device}"),
        x_label: "cols (normalized length, elements)".to_string(),
        y_label: format!("GB/s (bytes a {norm} must move)"),
        log2_x: true,
        series,
    }
}

/// `LayerNorm`, `RMSNorm`, or both when the records mix them.
fn norm_title(records: &[BenchRecord]) -> &'static str {
    let has = |n: Norm| records.iter().any(|r| r.norm == n);
    match (has(Norm::LayerNorm), has(Norm::RmsNorm)) {
        (false, true) => "RMSNorm",
        (true, true) => "LayerNorm / RMSNorm",
        _ => "LayerNorm",
    }
}

/// The implementation in a legend: nothing for warpnorm itself and the copy (the pass
/// says it), the name otherwise.
fn short_impl(name: &str) -> &str {
    match name {
        "warpnorm" | "copy" => "",
        other => other,
    }
}
