//! How a command ends, and the exit status each ending has. One meaning per status, the
//! same for every subcommand (listed in `warpnorm --help` and the README):
//!
//! - 0: done, and every check that ran passed;
//! - 1: a check failed, or the command could not finish (a device that does not open, a
//!   file that cannot be written);
//! - 2: a usage error: an argument clap rejects, options that conflict, a problem larger
//!   than the chosen device can hold; nothing ran;
//! - 3: nothing to check: no GPU, and no CPU emulation of the kernels in this build.

use std::fmt;
use std::process::ExitCode;

/// A command that ran to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; every check that ran passed.
    Success,
    /// At least one check failed.
    CheckFailed,
    /// There were no kernels on this machine to check; nothing passed or failed.
    NothingToCheck,
}

/// A command that stopped early.
#[derive(Debug)]
pub enum Failure {
    /// The command line asks for something that cannot be done here; nothing ran.
    Usage(String),
    /// Running failed.
    Run(warpnorm::Error),
}

impl From<warpnorm::Error> for Failure {
    fn from(e: warpnorm::Error) -> Self {
        Failure::Run(e)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::Run(e.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(msg) => f.write_str(msg),
            Failure::Run(e) => write!(f, "{e}"),
        }
    }
}

/// What every subcommand returns.
pub type CommandResult = Result<Outcome, Failure>;

/// Exit status of a check that failed or a command that could not finish.
pub const FAILED: u8 = 1;
/// Exit status of a usage error (clap uses it for the arguments it rejects).
pub const USAGE: u8 = 2;
/// Exit status when there was nothing to check.
pub const NOTHING_TO_CHECK: u8 = 3;

/// The exit status of a command's result.
pub fn status(result: &CommandResult) -> ExitCode {
    ExitCode::from(match result {
        Ok(Outcome::Success) => 0,
        Ok(Outcome::CheckFailed) | Err(Failure::Run(_)) => FAILED,
        Err(Failure::Usage(_)) => USAGE,
        Ok(Outcome::NothingToCheck) => NOTHING_TO_CHECK,
    })
}

/// The text `warpnorm --help` ends with.
pub const HELP: &str = "Exit status: 0 done (every check passed), 1 a check failed or the \
    command could not finish, 2 usage error (nothing ran), 3 nothing to check (no GPU and no \
    CPU emulation of the kernels in this build).";
