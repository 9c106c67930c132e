//! Distributed normalization: which ranks combine statistics, and how.
//!
//! * [`AxisGroups`]: JAX's `axis_index_groups` rules (disjoint, covering, equal sizes).
//! * [`Collective`]: all-reduce and all-gather within the groups of one named axis, with
//!   three backends of one semantics: `NcclCollective` (one GPU per rank, in one
//!   process or one process per GPU; with the `nccl` feature), [`InProcessCuda`] (every rank on one GPU) and
//!   [`InProcessHost`] (every rank on the CPU, for the reference backend). The in-process
//!   ones make every world size and group layout testable on one GPU, or none.
//! * [`psum`] / [`pmean`]: JAX's collectives for callers' own buffers.
//!
//! [`crate::sharded::ShardedLayerNorm`] builds on these: one collective per direction.

mod collective;
#[cfg(feature = "nccl")]
mod deadline;
mod in_process;
#[cfg(feature = "nccl")]
mod nccl;
mod reduce;

pub use crate::groups::{AxisGroups, MAX_WORLD};
pub use collective::{Buf, BufMut, Collective, Membership};
#[cfg(feature = "nccl")]
pub use deadline::DEFAULT_COLLECTIVE_TIMEOUT;
pub use in_process::{InProcessCuda, InProcessHost};
#[cfg(feature = "nccl")]
pub use nccl::{nccl_available, NcclCollective, NcclIds, DEFAULT_JOIN_TIMEOUT};
pub use reduce::{pmean, pmean_host, psum, psum_host};

/// Always [`crate::Error::Nccl`]: this build has no NCCL backend (the `nccl` feature is off).
#[cfg(not(feature = "nccl"))]
pub fn nccl_available() -> crate::Result<()> {
    Err(crate::Error::Nccl(
        "this build of warpnorm has no NCCL backend: enable the `nccl` cargo feature".into(),
    ))
}
