//! The `warpnorm` command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warpnorm::verify::{self, Cpu};

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
    Verify {
        /// Fixture files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Verify { paths } => {
            let mut stdout = std::io::stdout().lock();
            match verify::run(&paths, &Cpu, &mut stdout) {
                Ok(summary) if summary.ok() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: cannot write the report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
