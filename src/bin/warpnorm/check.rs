//! `warpnorm check`: every kernel variant and dtype combination against the CPU reference.
//!
//! Inputs are random with a fresh seed each run (printed, and accepted back with `--seed`),
//! so repeated runs explore new data while any failure stays reproducible.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::process::ExitCode;

use serde::Serialize;
use warpnorm::selftest::{self, CheckResult, Variant};
use warpnorm::{DType, Device};

use crate::args::{choose_device, parse_cols, DeviceSpec};
use crate::output::{progress, styled, table, Align, Notes, FAIL, PASS, SKIP};

/// Row lengths of a full check: a sub-warp row, a transformer width, a long register-tier
/// row and one past every on-chip cache (the uncached CTA path).
const FULL_COLS: [usize; 4] = [7, 768, 4096, 70_000];
/// `--quick`: the two short tiers only.
const QUICK_COLS: [usize; 2] = [7, 768];

/// Run every kernel variant on a device against the CPU reference.
///
/// Each variant (LayerNorm, fast variance, no scale, no bias, RMSNorm, keras rms_scaling,
/// flax mask, channels-first) runs for every dtype combination (x in f32/f16/bf16,
/// parameters and output in x's dtype or f32) and a few row lengths, forward and
/// backward, on random inputs. Prints the worst error per variant relative to its
/// tolerance (<= 1 passes), then "N passed, M failed"; exits non-zero on any failure.
///
/// Without a GPU this runs the CPU backend against itself: a smoke test of the pipeline,
/// not of the kernels.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    warpnorm check                     # cuda:0 if present, else the CPU against itself\n  \
    warpnorm check --quick             # two row lengths instead of four\n  \
    warpnorm check --device cuda:1 --json > check.json\n  \
    warpnorm check --seed 42           # repeat a run with the seed it printed")]
pub struct Args {
    /// Device to check: cpu, cuda or cuda:N [default: cuda:0 if present, else cpu].
    #[arg(long, value_parser = DeviceSpec::parse)]
    device: Option<DeviceSpec>,
    /// Print the results as JSON on stdout (notes go to stderr).
    #[arg(long)]
    json: bool,
    /// Fewer row lengths (7 and 768) for a fast answer.
    #[arg(long)]
    quick: bool,
    /// Row lengths to check, comma-separated (overrides --quick).
    #[arg(long, value_delimiter = ',', value_parser = parse_cols)]
    cols: Option<Vec<usize>>,
    /// Seed of the random inputs [default: a fresh one, printed].
    #[arg(long)]
    seed: Option<u64>,
}

/// The JSON document `--json` prints.
#[derive(Serialize)]
struct Report<'a> {
    device: String,
    seed: u64,
    cols: &'a [usize],
    passed: usize,
    failed: usize,
    skipped: usize,
    results: Vec<Record<'a>>,
}

#[derive(Serialize)]
struct Record<'a> {
    #[serde(flatten)]
    result: &'a CheckResult,
    passed: bool,
    status: Status,
}

pub fn run(args: &Args) -> Result<ExitCode, warpnorm::Error> {
    let notes = Notes { json: args.json };
    let (device, why_not_gpu) = choose_device(args.device)?;
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let cols: Vec<usize> = match &args.cols {
        Some(c) => c.clone(),
        None if args.quick => QUICK_COLS.to_vec(),
        None => FULL_COLS.to_vec(),
    };
    if !device.is_cuda() {
        let why = why_not_gpu
            .map(|w| format!("no GPU ({w}); "))
            .unwrap_or_default();
        notes.say(format!(
            "{why}checking the CPU backend against itself: a smoke test of the pipeline, not of the kernels"
        ));
    }
    notes.say(format!(
        "checking {} against the CPU reference, seed {seed} (repeat with --seed {seed})",
        device.describe()
    ));

    let results = run_cases(&device, &cols, seed);
    let count = |s: Status| results.iter().filter(|r| status(r) == s).count();
    let (passed, failed, skipped) = (
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip),
    );
    if args.json {
        let report = Report {
            device: device.describe(),
            seed,
            cols: &cols,
            passed,
            failed,
            skipped,
            results: results
                .iter()
                .map(|r| Record {
                    result: r,
                    passed: status(r) == Status::Pass,
                    status: status(r),
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        anstream::print!("{}", summary_table(&results));
        for line in skip_lines(&results) {
            anstream::println!("{} {line}", styled(SKIP, "SKIP"));
        }
        for r in results.iter().filter(|r| status(r) == Status::Fail) {
            anstream::println!("{} {}", styled(FAIL, "FAIL"), describe_case(r));
        }
    }
    let skipped = match skipped {
        0 => String::new(),
        n => format!(" ({n} skipped: combinations the variant's API cannot express)"),
    };
    let line = format!("{passed} passed, {failed} failed{skipped}");
    if failed == 0 {
        notes.say(styled(PASS, line));
        Ok(ExitCode::SUCCESS)
    } else {
        notes.say(styled(FAIL, line));
        Ok(ExitCode::FAILURE)
    }
}

/// The outcome of one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pass,
    Fail,
    /// Nothing ran: the variant's API cannot express this dtype combination (keras has no
    /// dtype policy with f16/bf16 variables and float32 outputs, for example).
    Skip,
}

fn status(r: &CheckResult) -> Status {
    if r.skipped.is_some() {
        Status::Skip
    } else if r.passed() {
        Status::Pass
    } else {
        Status::Fail
    }
}

/// Every variant x dtype combination x row length, in that order.
fn run_cases(device: &Device, cols: &[usize], seed: u64) -> Vec<CheckResult> {
    let combos = selftest::dtype_combinations();
    let total = Variant::ALL.len() * combos.len() * cols.len();
    let bar = progress(total as u64, "check");
    let mut results = Vec::with_capacity(total);
    for variant in Variant::ALL {
        bar.set_message(variant.name());
        for &d in &combos {
            for &c in cols {
                // A distinct stream of numbers per case, all derived from the one seed.
                let case_seed = seed ^ (results.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                results.push(selftest::check(device, variant, d, c, case_seed));
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    results
}

/// One line per variant: cases, the worst error relative to the tolerance, where it was.
fn summary_table(results: &[CheckResult]) -> String {
    let rows: Vec<Vec<String>> = Variant::ALL
        .iter()
        .map(|v| {
            let of: Vec<&CheckResult> = results.iter().filter(|r| r.variant == v.name()).collect();
            let ran: Vec<&CheckResult> = of
                .iter()
                .copied()
                .filter(|r| status(r) != Status::Skip)
                .collect();
            let failed = ran.iter().filter(|r| !r.passed()).count();
            let skipped = of.len() - ran.len();
            let worst = ran
                .iter()
                .copied()
                .max_by(|a, b| ratio(a).total_cmp(&ratio(b)));
            let verdict = match (failed, skipped) {
                (0, 0) => styled(PASS, "PASS"),
                (0, n) => format!("{} ({n} skipped)", styled(PASS, "PASS")),
                (f, _) => styled(FAIL, format!("FAIL ({f})")),
            };
            match worst {
                Some(w) => vec![
                    v.name().to_string(),
                    ran.len().to_string(),
                    format!("{:.3}", w.worst_ratio),
                    format!("{:.2e}", w.max_abs_error),
                    worst_where(w),
                    verdict,
                ],
                None => vec![
                    v.name().to_string(),
                    "0".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    verdict,
                ],
            }
        })
        .collect();
    table(
        &[
            "variant",
            "cases",
            "err/tol",
            "max abs err",
            "worst case",
            "result",
        ],
        &[
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Left,
            Align::Left,
        ],
        &rows,
    )
}

/// The worst ratio with failures (errors, NaN) sorting above every number.
fn ratio(r: &CheckResult) -> f64 {
    if r.error.is_some() || r.worst_ratio.is_nan() {
        f64::INFINITY
    } else {
        r.worst_ratio
    }
}

fn short(d: DType) -> &'static str {
    warpnorm::bench::dtype_name(d)
}

fn dtypes(r: &CheckResult) -> String {
    format!("x {} p {} y {}", short(r.x), short(r.param), short(r.out))
}

fn worst_where(r: &CheckResult) -> String {
    if r.error.is_some() {
        return format!("error: {}, D={}", dtypes(r), r.cols);
    }
    if r.worst_ratio == 0.0 {
        return "exact (every output equal)".to_string();
    }
    format!("{}, {}, D={}", r.worst_output, dtypes(r), r.cols)
}

/// One line per skipped variant and dtype combination (the reason does not depend on the
/// row length), with the lengths it covers.
fn skip_lines(results: &[CheckResult]) -> Vec<String> {
    let mut groups: Vec<(String, &str, Vec<usize>)> = Vec::new();
    for r in results {
        let Some(reason) = r.skipped.as_deref() else {
            continue;
        };
        let what = format!("{} {}", r.variant, dtypes(r));
        match groups
            .iter_mut()
            .find(|(w, why, _)| *w == what && *why == reason)
        {
            Some((_, _, cols)) => cols.push(r.cols),
            None => groups.push((what, reason, vec![r.cols])),
        }
    }
    groups
        .into_iter()
        .map(|(what, why, cols)| {
            let cols: Vec<String> = cols.iter().map(usize::to_string).collect();
            format!("{what} D={}: {why}", cols.join(","))
        })
        .collect()
}

/// A failing case in full, with the device's error when the run itself failed.
fn describe_case(r: &CheckResult) -> String {
    let what = format!("{} {} D={}", r.variant, dtypes(r), r.cols);
    match &r.error {
        Some(e) => format!("{what}: {e}"),
        None => format!(
            "{what}: {} error {:.3e} is {:.2}x the tolerance",
            r.worst_output, r.max_abs_error, r.worst_ratio
        ),
    }
}

/// A seed no earlier run used: std's hasher keys are random per process.
fn fresh_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    // Short enough to type back in.
    h.finish() % 1_000_000_000
}
