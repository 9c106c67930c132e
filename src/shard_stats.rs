//! How the ranks of a group combine their per-row statistics in sharded normalization.
//! Shared by the kernels' launches (`cuda::sharded`) and the CPU backend of the sharded
//! modules, which lay the statistics out alike.

use crate::{NormConfig, NormKind};

/// What the per-shard statistics are and how the group combines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsMode {
    /// `{n, mean, M2}` per row, all-gathered and averaged over the group, each rank weighing
    /// 1/k as in flax's `pmean` (exact variance).
    Moments,
    /// `{mean, mean of squares}` per row, all-reduced (fast variance, RMSNorm).
    Means,
}

impl StatsMode {
    /// Moments for flax's exact variance, means (one pmean) for the fast variance and the
    /// RMS forms.
    pub(crate) fn for_config(cfg: &NormConfig) -> StatsMode {
        if cfg.kind() == NormKind::LayerNorm && !cfg.fast_variance() {
            StatsMode::Moments
        } else {
            StatsMode::Means
        }
    }

    /// f32 values each rank contributes per row.
    pub const fn floats_per_row(self) -> usize {
        match self {
            StatsMode::Moments => 3,
            StatsMode::Means => 2,
        }
    }
}
