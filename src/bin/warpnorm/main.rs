//! The `warpnorm` command-line tool: `info`, `check`, `bench`, `demo` and `verify`.
//!
//! Every subcommand works on a machine without a GPU and says so in one line; the exit
//! status means the same for all of them (see [`exit`]).

mod args;
mod bench;
mod builtin;
mod check;
mod demo;
mod emulated;
mod exit;
mod info;
mod limits;
mod output;
mod verify;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// What `warpnorm --help` says after the subcommands, before the exit statuses.
const START: &str = "Start with:
  warpnorm info               # kernels in this build, GPUs, NCCL
  warpnorm check --quick      # the kernels against the CPU reference
  warpnorm demo               # one realistic batch, forward and backward
  warpnorm verify --builtin   # the flax / keras fixtures built into this binary
  warpnorm bench --dtype bf16 --plot bench.svg

A problem is rows x cols: cols is the normalized length (the features of a token), rows
how many are normalized. Dtypes are f32, f16 and bf16. Without a GPU, check and demo run
the kernels' CPU emulation when this build has it (cargo feature `emulator`) and the other
commands the CPU reference; each says so in one line.";

/// Fused LayerNorm / RMSNorm CUDA kernels with flax and keras semantics.
#[derive(Parser, Debug)]
#[command(name = "warpnorm", version, about)]
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
    let matches = Cli::command()
        .after_help(format!("{START}\n\n{}", exit::HELP))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match &cli.command {
        Command::Info(a) => info::run(a),
        Command::Check(a) => check::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Verify(a) => verify::run(a),
    };
    if let Err(e) = &result {
        anstream::eprintln!("{} {e}", error_label());
    }
    exit::status(&result)
}

/// `error:` in red where colours are on, as clap prints its own errors.
fn error_label() -> String {
    output::styled(output::FAIL, "error:")
}
