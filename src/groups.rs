//! `axis_index_groups`: which ranks combine their statistics.
//!
//! JAX's collectives (`psum`, `pmean`) accept groups of axis indices; each group
//! reduces independently. JAX requires the groups to cover every index exactly
//! once, and `pmean` divides by the group size; warpnorm also requires equal sizes
//! (as JAX does on TPU and as one NCCL split per group makes natural), so every
//! rank sees the same reduction shape.

use crate::{Error, Result};

/// The most ranks a world may have: far beyond any cluster (NCCL's own ranks are `int`),
/// and small enough that the per-rank tables are a few MiB.
pub const MAX_WORLD: usize = 1 << 20;

/// Validated groups of ranks over a world of `world` ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AxisGroups {
    world: usize,
    groups: Vec<Vec<usize>>,
    /// `group_of[rank]`: index of the rank's group.
    group_of: Vec<usize>,
    /// `position[rank]`: index of the rank inside its group.
    position: Vec<usize>,
}

impl AxisGroups {
    /// Groups for `world` ranks: `None` is one group of all ranks in order (JAX's
    /// default); `Some(groups)` must be non-empty groups of equal size that together
    /// hold every rank in `0..world` exactly once.
    pub fn new(world: usize, groups: Option<Vec<Vec<usize>>>) -> Result<AxisGroups> {
        let bad = |msg: String| Err(Error::InvalidGroups(msg));
        if groups.as_ref().is_some_and(Vec::is_empty) {
            return bad("no groups given (use None for one group of all ranks)".into());
        }
        if world == 0 {
            return bad("the world has no ranks".into());
        }
        // Checked before the per-rank tables below are allocated.
        if world > MAX_WORLD {
            return bad(format!(
                "a world of {world} ranks is more than the {MAX_WORLD} supported"
            ));
        }
        let groups = groups.unwrap_or_else(|| vec![(0..world).collect()]);
        if let Some(g) = groups.iter().position(Vec::is_empty) {
            return bad(format!("group {g} is empty"));
        }
        let size = groups[0].len();
        if let Some(g) = groups.iter().position(|g| g.len() != size) {
            return bad(format!(
                "groups differ in size: group 0 has {size} ranks, group {g} has {}",
                groups[g].len()
            ));
        }
        let mut group_of = vec![usize::MAX; world];
        let mut position = vec![usize::MAX; world];
        for (g, members) in groups.iter().enumerate() {
            for (p, &rank) in members.iter().enumerate() {
                if rank >= world {
                    return bad(format!(
                        "rank {rank} in group {g} is outside the world 0..{world}"
                    ));
                }
                if group_of[rank] != usize::MAX {
                    return bad(format!(
                        "rank {rank} appears twice (in group {} and group {g}); groups must be disjoint",
                        group_of[rank]
                    ));
                }
                group_of[rank] = g;
                position[rank] = p;
            }
        }
        let missing: Vec<usize> = (0..world).filter(|&r| group_of[r] == usize::MAX).collect();
        if !missing.is_empty() {
            return bad(format!(
                "ranks {missing:?} are in no group; groups must cover 0..{world}"
            ));
        }
        Ok(AxisGroups {
            world,
            groups,
            group_of,
            position,
        })
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The groups, each listing its ranks in position order.
    pub fn groups(&self) -> &[Vec<usize>] {
        &self.groups
    }

    /// Ranks per group (the divisor of `pmean`).
    pub fn group_size(&self) -> usize {
        self.groups[0].len()
    }

    /// Index of the group `rank` belongs to (`None` outside the world).
    pub fn group_of(&self, rank: usize) -> Option<usize> {
        self.group_of.get(rank).copied()
    }

    /// Index of `rank` inside its group (`None` outside the world).
    pub fn position(&self, rank: usize) -> Option<usize> {
        self.position.get(rank).copied()
    }

    /// The ranks `rank` combines statistics with, itself included, in position order.
    pub fn peers(&self, rank: usize) -> Option<&[usize]> {
        self.group_of(rank).map(|g| self.groups[g].as_slice())
    }
}
