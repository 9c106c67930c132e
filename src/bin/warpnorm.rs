//! The `warpnorm` command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warpnorm::verify::{self, Backend, Cpu, DeviceBackend};
use warpnorm::Device;

/// Fused LayerNorm / RMSNorm kernels with flax and keras semantics.
#[derive(Parser)]
#[command(name = "warpnorm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a backend against flax/keras fixture files.
    ///
    /// Each PATH is a fixture file or a folder searched recursively for *.json.
    /// Prints one line per fixture with the largest error of each output (y, dx,
    /// dscale, dbias) relative to its tolerance, then "N passed, M failed". Exits
    /// non-zero when anything fails or cannot be read.
    ///
    /// By default the fixtures run on the CPU reference and, when a GPU is present, on
    /// the CUDA kernels too (fixtures the GPU path does not cover are reported as SKIP).
    Verify {
        /// Fixture files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Run on this device only: `cpu` or `cuda:N`.
        #[arg(long)]
        device: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Verify { paths, device } => {
            let backends: Vec<Box<dyn Backend>> = match device.as_deref() {
                None => match Device::best() {
                    (gpu @ Device::Cuda(_), _) => {
                        vec![Box::new(Cpu), Box::new(DeviceBackend::new(gpu))]
                    }
                    (_, why) => {
                        let why = why.unwrap_or_default();
                        println!("no GPU: {why}; verifying the CPU reference only");
                        vec![Box::new(Cpu)]
                    }
                },
                Some("cpu") => vec![Box::new(Cpu)],
                Some(spec) => match Device::parse(spec) {
                    Ok(d) => vec![Box::new(DeviceBackend::new(d))],
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            let mut stdout = std::io::stdout().lock();
            let mut ok = true;
            for backend in &backends {
                match verify::run(&paths, backend.as_ref(), &mut stdout) {
                    Ok(summary) => ok &= summary.ok(),
                    Err(e) => {
                        eprintln!("error: cannot write the report: {e}");
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
    }
}
