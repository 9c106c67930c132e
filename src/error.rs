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

    /// No CUDA driver or no device; the message says which.
    #[error("no CUDA device available: {0}")]
    NoDevice(String),

    /// An error reported by the CUDA driver.
    #[error("CUDA driver error: {0}")]
    Cuda(#[from] cudarc::driver::DriverError),

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

/// `Result` with warpnorm's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
