//! `warpnorm check`: every kernel variant and dtype combination against the CPU reference.
//!
//! The kernels run on a GPU, or on their CPU emulation where this build has it; the CPU
//! reference alone is never checked against itself (that could not fail). Inputs are
//! random with a fresh seed each run (printed, and accepted back with `--seed`), so
//! repeated runs explore new data while any failure stays reproducible.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use serde::Serialize;
use warpnorm::cuda::CudaBackend;
use warpnorm::tooling::selftest::{self, CheckResult, Kernels, Variant};
use warpnorm::Device;

use crate::args::{parse_len, parse_seed, DeviceSpec};
use crate::exit::{CommandResult, Failure, Outcome};
use crate::limits::{bytes_of, Budget, DEVICE_BYTES_PER_ELEMENT, HOST_BYTES_PER_ELEMENT};
use crate::output::{progress, styled, table, Align, Notes, FAIL, PASS, SKIP};

/// Cols of a full check: a sub-warp row, a transformer width, a long register-tier row
/// and one past every on-chip cache (the uncached CTA path).
const FULL_COLS: [usize; 4] = [7, 768, 4096, 70_000];
/// `--quick`: the two short tiers only.
const QUICK_COLS: [usize; 2] = [7, 768];

/// Check every kernel variant against the CPU reference.
///
/// Each variant (LayerNorm, fast variance, no scale, no bias, RMSNorm, keras rms_scaling,
/// flax mask, channels-first) runs for every dtype combination (x in f32/f16/bf16,
/// parameters and output in x's dtype or f32) and a few cols (normalized lengths),
/// forward and backward, on random inputs. Prints the worst error per variant relative
/// to its tolerance (<= 1 passes), then "N passed, M failed"; exits 1 on any failure.
///
/// The kernels run on a GPU, or without one on their CPU emulation (`--device emulator`,
/// in builds with the cargo feature `emulator`; it has every dtype combination).
/// Where neither exists there is nothing to check: the command says so and exits 3.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    warpnorm check                     # cuda:0 if present, else the CPU emulation\n  \
    warpnorm check --quick             # cols 7 and 768 only\n  \
    warpnorm check --device cuda:1 --json > check.json\n  \
    warpnorm check --seed 42           # repeat a run with the seed it printed")]
pub struct Args {
    /// Kernels to check: cuda, cuda:N or emulator [default: cuda:0 if present, else the
    /// emulator when built in].
    #[arg(long, value_parser = DeviceSpec::parse)]
    device: Option<DeviceSpec>,
    /// Print the results as JSON on stdout (notes go to stderr).
    #[arg(long)]
    json: bool,
    /// Fewer cols (7 and 768) for a fast answer.
    #[arg(long)]
    quick: bool,
    /// Cols (normalized lengths) to check, comma-separated (overrides --quick).
    #[arg(long, value_delimiter = ',', value_parser = parse_len, allow_hyphen_values = true)]
    cols: Option<Vec<usize>>,
    /// Seed of the random inputs [default: a fresh one, printed].
    #[arg(long, value_parser = parse_seed, allow_hyphen_values = true)]
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

/// One case, with dtypes by the names the command takes.
#[derive(Serialize)]
struct Record<'a> {
    variant: &'static str,
    x: &'static str,
    param: &'static str,
    out: &'static str,
    cols: usize,
    worst_ratio: f64,
    worst_output: &'static str,
    max_abs_error: f64,
    error: Option<&'a str>,
    skipped: Option<&'a str>,
    passed: bool,
    status: Status,
}

impl<'a> Record<'a> {
    fn new(r: &'a CheckResult) -> Self {
        Record {
            variant: r.variant,
            x: r.x.short_name(),
            param: r.param.short_name(),
            out: r.out.short_name(),
            cols: r.cols,
            worst_ratio: r.worst_ratio,
            worst_output: r.worst_output,
            max_abs_error: r.max_abs_error,
            error: r.error.as_deref(),
            skipped: r.skipped.as_deref(),
            passed: status(r) == Status::Pass,
            status: status(r),
        }
    }
}

/// What the check runs on, or why there is nothing to check.
enum Choice {
    Check(Kernels),
    Nothing(String),
}

/// The subject asked for, or else cuda:0, or else the emulation when built in.
fn choose(spec: Option<DeviceSpec>, notes: Notes) -> Result<Choice, Failure> {
    let no_emulator = "this warpnorm was built without the CPU emulation of the kernels \
                       (cargo feature `emulator`)";
    match spec {
        Some(DeviceSpec::Cuda(n)) => Ok(Choice::Check(Kernels::Gpu(CudaBackend::new(n)?))),
        Some(DeviceSpec::Emulator) => crate::emulated::subject()
            .map(Choice::Check)
            .ok_or_else(|| Failure::Usage(no_emulator.to_string())),
        Some(DeviceSpec::Cpu) => Ok(Choice::Nothing(
            "the CPU reference is what check compares the kernels with; give --device \
             cuda:N or --device emulator"
                .to_string(),
        )),
        None => match (Device::best(), crate::emulated::subject()) {
            ((Device::Cuda(gpu), _), _) => Ok(Choice::Check(Kernels::Gpu(gpu))),
            ((_, why), Some(emulator)) => {
                notes.say(format!(
                    "no GPU ({}): checking the kernels' CPU emulation instead",
                    why.unwrap_or_default()
                ));
                Ok(Choice::Check(emulator))
            }
            ((_, why), None) => Ok(Choice::Nothing(format!(
                "no GPU ({}), and {no_emulator}",
                why.unwrap_or_default()
            ))),
        },
    }
}

/// Refuses cols whose cases would not fit: every case runs on the host (the reference)
/// and, on `gpu`, on the device too.
fn admit(cols: &[usize], gpu: Option<&Budget>) -> Result<(), Failure> {
    let host = Budget::host();
    for &c in cols {
        // The largest shape of any variant at this length.
        let shape = Variant::ALL
            .iter()
            .map(|&v| selftest::shape(v, c))
            .max_by_key(|s| bytes_of(s, 1).unwrap_or(u64::MAX))
            .unwrap_or_default();
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        let what = format!("a case of cols {c} ({} elements)", dims.join(" x "));
        host.admit(&what, bytes_of(&shape, HOST_BYTES_PER_ELEMENT))?;
        if let Some(gpu) = gpu {
            gpu.admit(&what, bytes_of(&shape, DEVICE_BYTES_PER_ELEMENT))?;
        }
    }
    Ok(())
}

pub fn run(args: &Args) -> CommandResult {
    let notes = Notes { json: args.json };
    let cols: Vec<usize> = match &args.cols {
        Some(c) => c.clone(),
        None if args.quick => QUICK_COLS.to_vec(),
        None => FULL_COLS.to_vec(),
    };
    admit(&cols, None)?;
    let subject = match choose(args.device, notes)? {
        Choice::Check(subject) => subject,
        Choice::Nothing(why) => {
            anstream::eprintln!(
                "{} nothing to check on this machine: {why}",
                styled(SKIP, "check:")
            );
            return Ok(Outcome::NothingToCheck);
        }
    };
    if let Kernels::Gpu(be) = &subject {
        admit(&cols, Some(&Budget::gpu(be)?))?;
    }
    let seed = args.seed.unwrap_or_else(fresh_seed);
    notes.say(format!(
        "checking {} against the CPU reference, seed {seed} (repeat with --seed {seed})",
        subject.describe()
    ));

    let results = run_cases(&subject, &cols, seed);
    let count = |s: Status| results.iter().filter(|r| status(r) == s).count();
    let (passed, failed, skipped) = (
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip),
    );
    if args.json {
        let report = Report {
            device: subject.describe(),
            seed,
            cols: &cols,
            passed,
            failed,
            skipped,
            results: results.iter().map(Record::new).collect(),
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
    let line = format!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed == 0 && passed > 0 {
        notes.say(styled(PASS, line));
        Ok(Outcome::Success)
    } else {
        notes.say(styled(FAIL, line));
        Ok(Outcome::CheckFailed)
    }
}

/// The outcome of one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pass,
    Fail,
    /// Nothing ran: the variant's API cannot express this dtype combination (keras has no
    /// dtype policy with f16/bf16 variables and f32 outputs, for example), or the CPU
    /// emulation does not compile it.
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

/// Every variant x dtype combination x cols, in that order.
fn run_cases(subject: &Kernels, cols: &[usize], seed: u64) -> Vec<CheckResult> {
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
                results.push(selftest::check(subject, variant, d, c, case_seed));
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

fn dtypes(r: &CheckResult) -> String {
    format!(
        "x {} p {} y {}",
        r.x.short_name(),
        r.param.short_name(),
        r.out.short_name()
    )
}

fn worst_where(r: &CheckResult) -> String {
    if r.error.is_some() {
        return format!("error: {}, cols={}", dtypes(r), r.cols);
    }
    if r.worst_ratio == 0.0 {
        return "exact (every output equal)".to_string();
    }
    format!("{}, {}, cols={}", r.worst_output, dtypes(r), r.cols)
}

/// One line per skipped dtype combination and reason (neither depends on the cols),
/// with the variants and cols it covers.
fn skip_lines(results: &[CheckResult]) -> Vec<String> {
    struct Group<'a> {
        dtypes: String,
        why: &'a str,
        variants: Vec<&'static str>,
        cols: Vec<usize>,
    }
    let mut groups: Vec<Group> = Vec::new();
    for r in results {
        let Some(why) = r.skipped.as_deref() else {
            continue;
        };
        let dtypes = dtypes(r);
        let at = match groups
            .iter()
            .position(|g| g.dtypes == dtypes && g.why == why)
        {
            Some(i) => i,
            None => {
                groups.push(Group {
                    dtypes,
                    why,
                    variants: Vec::new(),
                    cols: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let g = &mut groups[at];
        if !g.variants.contains(&r.variant) {
            g.variants.push(r.variant);
        }
        if !g.cols.contains(&r.cols) {
            g.cols.push(r.cols);
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let variants = if g.variants.len() == Variant::ALL.len() {
                "every variant".to_string()
            } else {
                g.variants.join(",")
            };
            let cols: Vec<String> = g.cols.iter().map(usize::to_string).collect();
            format!("{variants} {} cols={}: {}", g.dtypes, cols.join(","), g.why)
        })
        .collect()
}

/// A failing case in full, with the device's error when the run itself failed.
fn describe_case(r: &CheckResult) -> String {
    let what = format!("{} {} cols={}", r.variant, dtypes(r), r.cols);
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
