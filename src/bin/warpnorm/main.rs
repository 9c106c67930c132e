//! The `warpnorm` command-line tool: `info`, `check`, `bench`, `demo` and `verify`.
//!
//! Every subcommand works on a machine without a GPU (falling back to the CPU reference
//! backend and saying so in one line) and exits non-zero on failure; bad arguments are
//! rejected by clap with a message naming the value (exit code 2).

mod args;
mod bench;
mod check;
mod demo;
mod info;
mod output;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fused LayerNorm / RMSNorm CUDA kernels with flax and keras semantics.
#[derive(Parser, Debug)]
#[command(
    name = "warpnorm",
    version,
    about,
    after_help = "Start with:\n  \
        warpnorm info            # kernels in this build, GPUs, NCCL\n  \
        warpnorm check --quick   # every kernel variant against the CPU reference\n  \
        warpnorm demo            # one realistic batch, forward and backward\n  \
        warpnorm bench --dtype bf16 --plot bench.svg\n\n\
        Without a GPU every command runs on the CPU reference backend and says so."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Info(info::Args),
    Check(check::Args),
    Bench(bench::Args),
    Demo(demo::Args),
    Verify(verify::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Info(a) => info::run(a),
        Command::Check(a) => check::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Verify(a) => Ok(verify::run(a)),
    };
    result.unwrap_or_else(|e| {
        anstream::eprintln!("{} {e}", error_label());
        ExitCode::FAILURE
    })
}

/// `error:` in red where colours are on, as clap prints its own errors.
fn error_label() -> String {
    output::styled(output::FAIL, "error:")
}
