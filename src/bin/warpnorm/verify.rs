//! `warpnorm verify`: a backend against flax/keras fixtures, from files or built in.

use std::path::PathBuf;

use warpnorm::tooling::verify::{self, Backend, Cpu, DeviceBackend, Summary};
use warpnorm::Device;

use crate::args::DeviceSpec;
use crate::builtin::FIXTURES;
use crate::exit::{CommandResult, Failure, Outcome};

/// Check a backend against flax/keras fixtures.
///
/// Each PATH is a fixture file or a folder searched recursively for *.json; --builtin
/// runs the fixtures built into this binary (those of the source's tests/fixtures), so
/// an installed command needs no checkout. Prints one line per fixture with the largest
/// error of each output (y, dx, dscale, dbias) relative to its tolerance, then
/// "N passed, M failed, K skipped". Exits 1 when anything fails or cannot be read.
///
/// By default the fixtures run on the CPU reference and, when a GPU is present, on
/// the CUDA kernels too (fixtures the GPU path does not cover are reported as SKIP).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    warpnorm verify --builtin                       # CPU, and the GPU when present\n  \
    warpnorm verify tests/fixtures                  # the same, from a checkout\n  \
    warpnorm verify --device cuda:0 --builtin       # the kernels only\n  \
    warpnorm verify tests/fixtures/flax_ln_d3.json")]
pub struct Args {
    /// Fixture files or folders.
    #[arg(required_unless_present = "builtin", conflicts_with = "builtin")]
    paths: Vec<PathBuf>,
    /// Verify the fixtures built into this binary.
    #[arg(long)]
    builtin: bool,
    /// Run on this device only: cpu, cuda or cuda:N.
    #[arg(long, value_parser = DeviceSpec::parse_backend)]
    device: Option<DeviceSpec>,
}

pub fn run(args: &Args) -> CommandResult {
    let backends: Vec<Box<dyn Backend>> = match args.device {
        None => match Device::best() {
            (gpu @ Device::Cuda(_), _) => vec![Box::new(Cpu), Box::new(DeviceBackend::new(gpu))],
            (_, why) => {
                let why = why.unwrap_or_default();
                println!("no GPU ({why}): verifying the CPU reference only");
                vec![Box::new(Cpu)]
            }
        },
        Some(DeviceSpec::Cpu) => vec![Box::new(Cpu)],
        Some(spec) => vec![Box::new(DeviceBackend::new(spec.open()?))],
    };
    let mut stdout = std::io::stdout().lock();
    let mut ok = true;
    for backend in &backends {
        let summary: std::io::Result<Summary> = if args.builtin {
            verify::run_texts(FIXTURES, backend.as_ref(), &mut stdout)
        } else {
            verify::run(&args.paths, backend.as_ref(), &mut stdout)
        };
        let summary = summary.map_err(|e| {
            Failure::Run(warpnorm::Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot write the report: {e}"),
            )))
        })?;
        ok &= summary.ok();
    }
    Ok(if ok {
        Outcome::Success
    } else {
        Outcome::CheckFailed
    })
}
