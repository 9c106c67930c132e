//! `warpnorm verify`: a backend against flax/keras fixture files.

use std::path::PathBuf;
use std::process::ExitCode;

use warpnorm::verify::{self, Backend, Cpu, DeviceBackend};
use warpnorm::Device;

use crate::args::DeviceSpec;

/// Check a backend against flax/keras fixture files.
///
/// Each PATH is a fixture file or a folder searched recursively for *.json.
/// Prints one line per fixture with the largest error of each output (y, dx,
/// dscale, dbias) relative to its tolerance, then "N passed, M failed". Exits
/// non-zero when anything fails or cannot be read.
///
/// By default the fixtures run on the CPU reference and, when a GPU is present, on
/// the CUDA kernels too (fixtures the GPU path does not cover are reported as SKIP).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    warpnorm verify tests/fixtures                  # CPU, and the GPU when present\n  \
    warpnorm verify --device cuda:0 tests/fixtures  # the kernels only\n  \
    warpnorm verify tests/fixtures/flax_ln_d3.json")]
pub struct Args {
    /// Fixture files or folders.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Run on this device only: `cpu` or `cuda:N`.
    #[arg(long, value_parser = DeviceSpec::parse)]
    device: Option<DeviceSpec>,
}

pub fn run(args: &Args) -> ExitCode {
    let backends: Vec<Box<dyn Backend>> = match args.device {
        None => match Device::best() {
            (gpu @ Device::Cuda(_), _) => vec![Box::new(Cpu), Box::new(DeviceBackend::new(gpu))],
            (_, why) => {
                let why = why.unwrap_or_default();
                println!("no GPU: {why}; verifying the CPU reference only");
                vec![Box::new(Cpu)]
            }
        },
        Some(DeviceSpec::Cpu) => vec![Box::new(Cpu)],
        Some(spec) => match spec.open() {
            Ok(d) => vec![Box::new(DeviceBackend::new(d))],
            Err(e) => {
                anstream::eprintln!("{} {e}", crate::error_label());
                return ExitCode::from(2);
            }
        },
    };
    let mut stdout = std::io::stdout().lock();
    let mut ok = true;
    for backend in &backends {
        match verify::run(&args.paths, backend.as_ref(), &mut stdout) {
            Ok(summary) => ok &= summary.ok(),
            Err(e) => {
                anstream::eprintln!("{} cannot write the report: {e}", crate::error_label());
                return ExitCode::FAILURE;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
