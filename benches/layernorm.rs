//! Criterion benches of warpnorm's LayerNorm on the GPU: forward, backward (dx, dscale,
//! dbias) and the device-to-device copy that bounds both, per dtype and row length.
//!
//! Times come from CUDA events (`iter_custom`), not the host clock, and each iteration uses
//! the next of several rotated buffer sets so L2 does not flatter (see `warpnorm::tooling::bench`).
//! Throughput is the bytes a LayerNorm must move (`Problem::bytes`); criterion prints it in
//! binary units (GiB/s), the comparison script in decimal GB/s.
//!
//! Without a GPU the bench prints `SKIP: <reason>` and exits 0.
//!
//! Environment: `WARPNORM_BENCH_COLS` (e.g. `1024,4096`), `WARPNORM_BENCH_BYTES` (size of x,
//! e.g. `64MiB`; default 256 MiB), `WARPNORM_BENCH_DTYPES` (e.g. `bf16,f32`). The usual
//! criterion arguments (a name filter such as `fwd/bf16`) work as well.

use std::process::ExitCode;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use warpnorm::tooling::bench::{self, GpuTimer, Pass, Problem};
use warpnorm::{DType, Result};

/// What to run, from the environment (criterion owns the command line).
struct Settings {
    dtypes: Vec<DType>,
    cols: Vec<usize>,
    bytes: u64,
}

fn settings() -> Result<Settings> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let dtypes = match var("WARPNORM_BENCH_DTYPES") {
        Some(list) => list
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<DType>>>()?,
        None => vec![DType::F32, DType::F16, DType::BF16],
    };
    let cols = match var("WARPNORM_BENCH_COLS") {
        Some(list) => bench::parse_cols(&list)?,
        None => bench::DEFAULT_COLS.to_vec(),
    };
    let bytes = match var("WARPNORM_BENCH_BYTES") {
        Some(size) => bench::parse_bytes(&size)?,
        None => bench::DEFAULT_BYTES,
    };
    Ok(Settings {
        dtypes,
        cols,
        bytes,
    })
}

/// Benches one problem's passes; an error is reported and ends the process (criterion
/// gives `iter_custom` no way to fail).
fn bench_problem(c: &mut Criterion, timer: &GpuTimer, problem: &Problem) -> Result<()> {
    let mut case = timer.case(problem)?;
    let dtype = problem.dtype.short_name();
    for pass in [Pass::Fwd, Pass::Bwd, Pass::Copy] {
        let mut group = c.benchmark_group(format!("{pass}/{dtype}"));
        group.throughput(Throughput::Bytes(problem.bytes(pass)));
        group.bench_function(BenchmarkId::from_parameter(problem.cols), |b| {
            b.iter_custom(|iters| {
                case.time_total(pass, iters).unwrap_or_else(|e| {
                    eprintln!("error: {pass} {dtype} cols={}: {e}", problem.cols);
                    std::process::exit(1)
                })
            })
        });
        group.finish();
    }
    Ok(())
}

fn main() -> ExitCode {
    let settings = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timer = match GpuTimer::new(0) {
        Ok(t) => t,
        Err(e) => {
            println!("SKIP: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30)
        .configure_from_args();
    let mut failed = false;
    for &dtype in &settings.dtypes {
        for &cols in &settings.cols {
            let run = Problem::for_bytes(dtype, dtype, cols, settings.bytes)
                .and_then(|p| bench_problem(&mut c, &timer, &p));
            if let Err(e) = run {
                eprintln!("error: {dtype} cols={cols}: {e}");
                failed = true;
            }
        }
    }
    c.final_summary();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
