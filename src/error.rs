//! One error type for the whole crate: every failure is a value, never a panic.

use std::path::PathBuf;

/// Everything that can go wrong in warpnorm.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration option has a value the API rejects (epsilon <= 0, bad axis, ...).
    #[error("invalid config: {0}")]
    InvalidConfig(String),

    /// An axis index is outside `-rank..rank`.
    #[error("axis {axis} is out of range for a tensor of rank {rank}")]
    AxisOutOfRange { axis: i64, rank: usize },

    /// The same axis named twice where the API forbids it (keras).
    #[error("duplicate axis {axis} in {option}")]
    DuplicateAxis { axis: i64, option: &'static str },

    /// `axis_index_groups` that are not disjoint, do not cover every rank, or differ in size.
    #[error("invalid axis_index_groups: {0}")]
    InvalidGroups(String),

    /// A size or count too large to allocate, index or launch (an element count that
    /// overflows, or a buffer larger than the memory it would live in).
    #[error("`{what}` is too large: {msg}")]
    TooLarge { what: &'static str, msg: String },

    /// The CUDA context hit an error that poisons it (an illegal address, a failed launch,
    /// ...). It may surface on any later call, not the one that caused it; every call on
    /// the context fails from then on, so it must be recreated, which in practice means
    /// restarting the process.
    #[error(
        "the CUDA context is unusable after {0} (possibly from an earlier launch): every later \
         call on it fails; recreate it by restarting the process"
    )]
    ContextLost(cudarc::driver::DriverError),

    /// A buffer or tensor whose shape or length does not match what the call needs.
    #[error("shape mismatch for `{what}`: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: String,
        got: String,
    },

    /// A buffer of the wrong element type for this call.
    #[error("dtype mismatch for `{what}`: expected {expected}, got {got}")]
    DType {
        what: &'static str,
        expected: crate::DType,
        got: crate::DType,
    },

    /// A combination the selected backend does not implement (named, so callers can fall back).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A kernel failed in the CPU emulation (feature `emulator`): its threads deadlocked at a
    /// barrier, or one overflowed its stack. A bug in the kernel (undefined behaviour on a
    /// GPU), never a reason to fall back.
    #[error("a kernel failed in the CPU emulation: {0}")]
    Emulation(String),

    /// No CUDA driver or no device; the message says which.
    #[error("no CUDA device available: {0}")]
    NoDevice(String),

    /// An error reported by the CUDA driver that leaves the context usable (see
    /// [`Error::ContextLost`] for those that do not).
    #[error("CUDA driver error: {0}")]
    Cuda(cudarc::driver::DriverError),

    /// An error reported by NCCL.
    #[error("NCCL error: {0}")]
    Nccl(String),

    /// A fixture file that cannot be read or does not follow the fixture format.
    #[error("fixture {path}: {msg}")]
    Fixture { path: PathBuf, msg: String },

    /// I/O outside fixtures (e.g. reading a unique-id file).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// Serialising or parsing a config.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<cudarc::driver::DriverError> for Error {
    /// Sorts driver errors into those that poison the context (the CUDA documentation's
    /// "sticky" errors: the process must be restarted) and the rest.
    fn from(e: cudarc::driver::DriverError) -> Error {
        use cudarc::driver::sys::cudaError_enum::*;
        match e.0 {
            CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_ECC_UNCORRECTABLE
            | CUDA_ERROR_CONTEXT_IS_DESTROYED => Error::ContextLost(e),
            _ => Error::Cuda(e),
        }
    }
}

/// `Result` with warpnorm's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
