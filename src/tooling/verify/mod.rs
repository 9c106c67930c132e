//! Checking a backend against fixtures: run, compare with tolerances, report.
//!
//! A [`Backend`] turns a fixture's inputs into outputs; [`Cpu`] is the f64
//! reference. Another backend (a GPU) plugs in by implementing the trait. How
//! outputs are compared is described in [`tolerance`].

mod files;
mod gpu;
pub mod tolerance;

pub use files::collect_files;
pub use gpu::DeviceBackend;
pub use tolerance::{check_outputs, compare, condition, OutputCheck, Rounding, Tolerance};

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::reference::{self, Params};
use crate::tooling::fixture::{Fixture, RankInputs};
use crate::{Error, Result, Tensor};

/// The outputs a backend produced for a fixture, in the fixture's layout (sharded
/// results stacked along the leading rank axis).
#[derive(Clone, Debug)]
pub struct Outputs {
    pub y: Tensor,
    pub dx: Option<Tensor>,
    pub dscale: Option<Tensor>,
    pub dbias: Option<Tensor>,
}

/// Something that can compute a fixture's outputs.
pub trait Backend {
    /// Short name for reports (`cpu`, `cuda:0`).
    fn name(&self) -> String;
    /// Runs the fixture's config on its inputs: forward, and backward when the
    /// fixture has a cotangent.
    fn run(&self, fixture: &Fixture) -> Result<Outputs>;
}

/// The CPU reference backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn run(&self, fx: &Fixture) -> Result<Outputs> {
        let cfg = &fx.config;
        let ranks = fx.ranks()?;
        let params: Vec<Params> = ranks.iter().map(RankInputs::params).collect();
        let Some(world) = fx.world else {
            let r = &ranks[0];
            let mask = r.mask.as_deref();
            let y = reference::forward(cfg, &r.x, params[0], mask)?.y;
            let grads = match &r.dy {
                Some(dy) => Some(reference::backward(cfg, &r.x, params[0], mask, dy)?),
                None => None,
            };
            return Ok(Outputs {
                y,
                dx: grads.as_ref().map(|g| g.dx.clone()),
                dscale: grads.as_ref().and_then(|g| g.dscale.clone()),
                dbias: grads.and_then(|g| g.dbias),
            });
        };
        let groups = cfg.groups_for(world)?;
        let xs: Vec<Tensor> = ranks.iter().map(|r| r.x.clone()).collect();
        let masks: Option<Vec<Vec<bool>>> = ranks.iter().map(|r| r.mask.clone()).collect();
        let fwd = reference::sharded_forward(cfg, &xs, &params, masks.as_deref(), &groups)?;
        let y = Tensor::stack(&fwd.into_iter().map(|f| f.y).collect::<Vec<_>>())?;
        let dys: Option<Vec<Tensor>> = ranks.iter().map(|r| r.dy.clone()).collect();
        let Some(dys) = dys else {
            return Ok(Outputs {
                y,
                dx: None,
                dscale: None,
                dbias: None,
            });
        };
        let grads =
            reference::sharded_backward(cfg, &xs, &params, masks.as_deref(), &dys, &groups)?;
        let stack = |f: &dyn Fn(&reference::Grads) -> Option<Tensor>| -> Result<Option<Tensor>> {
            let parts: Option<Vec<Tensor>> = grads.iter().map(f).collect();
            parts.map(|p| Tensor::stack(&p)).transpose()
        };
        Ok(Outputs {
            y,
            dx: stack(&|g| Some(g.dx.clone()))?,
            dscale: stack(&|g| g.dscale.clone())?,
            dbias: stack(&|g| g.dbias.clone())?,
        })
    }
}

/// The result of verifying one fixture file.
#[derive(Clone, Debug)]
pub struct FixtureReport {
    pub path: PathBuf,
    /// The fixture's name, when it could be loaded.
    pub name: Option<String>,
    pub outputs: Vec<OutputCheck>,
    /// Why the fixture could not be loaded or run.
    pub error: Option<String>,
    /// Why the backend does not run this fixture at all (e.g. a layout the GPU kernels
    /// leave to the CPU): neither a pass nor a failure.
    pub skipped: Option<String>,
}

impl FixtureReport {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && !self.outputs.is_empty()
            && self.outputs.iter().all(OutputCheck::passed)
    }
}

/// Loads, runs and compares one fixture file; never fails, errors go in the report.
pub fn verify_file(path: &Path, backend: &dyn Backend) -> FixtureReport {
    verify_loaded(path, Fixture::load(path), backend)
}

/// [`verify_file`] for a fixture's text (one built into a program, say); `path` names it
/// in the report.
pub fn verify_text(path: &Path, text: &str, backend: &dyn Backend) -> FixtureReport {
    verify_loaded(path, Fixture::parse(path, text), backend)
}

fn verify_loaded(path: &Path, loaded: Result<Fixture>, backend: &dyn Backend) -> FixtureReport {
    let mut report = FixtureReport {
        path: path.to_path_buf(),
        name: None,
        outputs: Vec::new(),
        error: None,
        skipped: None,
    };
    let result = loaded.and_then(|fx| {
        report.name = Some(fx.name.clone());
        let out = backend.run(&fx)?;
        check_outputs(&fx, &out)
    });
    match result {
        Ok(outputs) => report.outputs = outputs,
        // The report carries the path already.
        Err(Error::Fixture { msg, .. }) => report.error = Some(msg),
        Err(Error::Unsupported(why)) => report.skipped = Some(why),
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}

/// Totals over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Summary {
    /// True when something was checked and nothing failed.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }
}

/// Verifies every fixture under `paths`, writing one line per fixture and a summary
/// line "N passed, M failed" to `out`. A path that cannot be opened counts as a
/// failure.
pub fn run(
    paths: &[PathBuf],
    backend: &dyn Backend,
    out: &mut dyn Write,
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    let mut files = Vec::new();
    for p in paths {
        match collect_files(std::slice::from_ref(p)) {
            Ok(f) => files.extend(f),
            Err(e) => {
                let msg = match e {
                    Error::Fixture { msg, .. } => msg,
                    other => other.to_string(),
                };
                writeln!(out, "FAIL {}: {msg}", p.display())?;
                summary.failed += 1;
            }
        }
    }
    let reports = files.iter().map(|f| verify_file(f, backend));
    report_all(reports, summary, backend, out)
}

/// [`run`] over fixtures given as (name, text) pairs, e.g. built into a program.
pub fn run_texts(
    fixtures: &[(&str, &str)],
    backend: &dyn Backend,
    out: &mut dyn Write,
) -> std::io::Result<Summary> {
    let reports = fixtures
        .iter()
        .map(|(name, text)| verify_text(Path::new(name), text, backend));
    report_all(reports, Summary::default(), backend, out)
}

/// Writes one line per report and the summary lines, counting into `summary`.
fn report_all(
    reports: impl Iterator<Item = FixtureReport>,
    mut summary: Summary,
    backend: &dyn Backend,
    out: &mut dyn Write,
) -> std::io::Result<Summary> {
    for report in reports {
        writeln!(out, "{}", format_report(&report))?;
        if report.skipped.is_some() {
            summary.skipped += 1;
        } else if report.passed() {
            summary.passed += 1;
        } else {
            summary.failed += 1;
        }
    }
    if summary == Summary::default() {
        writeln!(out, "FAIL: no fixture files found")?;
        summary.failed += 1;
    }
    writeln!(out, "backend: {}", backend.name())?;
    writeln!(
        out,
        "{} passed, {} failed, {} skipped",
        summary.passed, summary.failed, summary.skipped
    )?;
    Ok(summary)
}

/// One line: status, name, path, then per output `name err/allowed-ratio`.
pub fn format_report(r: &FixtureReport) -> String {
    let name = r.name.as_deref().unwrap_or("-");
    if let Some(why) = &r.skipped {
        return format!("SKIP {name} ({}): {why}", r.path.display());
    }
    let status = if r.passed() { "PASS" } else { "FAIL" };
    let mut line = format!("{status} {name} ({})", r.path.display());
    if let Some(e) = &r.error {
        line.push_str(&format!(": {e}"));
        return line;
    }
    for o in &r.outputs {
        match &o.problem {
            Some(p) => line.push_str(&format!("  {}: {p}", o.name)),
            None => line.push_str(&format!(
                "  {} {} max_err={:.3e} worst={:.3}{}",
                o.name,
                o.dtype.short_name(),
                o.max_abs_err,
                o.worst_ratio,
                if o.passed() {
                    String::new()
                } else {
                    format!(
                        " (at element {}, tol rtol={:.1e} atol={:.1e})",
                        o.worst_index, o.tolerance.rtol, o.tolerance.atol
                    )
                }
            )),
        }
    }
    line
}
