//! Which kernel and launch shape a problem gets. Pure arithmetic, so it is tested without
//! a GPU; the launches in `launch.rs` follow these plans exactly.

use super::params::{
    WARPNORM_CTA_MAX_THREADS, WARPNORM_CTA_SCRATCH_FLOATS, WARPNORM_FINALIZE_COLS,
    WARPNORM_SPLIT_MAX_CTAS, WARPNORM_SPLIT_SLOT_FLOATS, WARPNORM_STASH_SLOT_FLOATS,
    WARPNORM_STRIDED_THREADS,
};
use super::tiers::{self, pick_row_tier, Pass, RowTier};
use super::KernelGeneration;

/// Shared memory every kernel may use without opting in.
pub(crate) const DEFAULT_SMEM: u32 = 48 * 1024;

/// At most this many CTAs per SM in the backward's persistent grid: each CTA writes one
/// partial row of dscale/dbias, so fewer CTAs means less to finalize; 4 keeps every SM busy.
const BWD_CTAS_PER_SM: u64 = 4;
/// CTAs per SM the forward's grid-stride loop is capped at.
const FWD_CTAS_PER_SM: u64 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Register tier: `layer_norm_{fwd,bwd}<.., vec, vecs, group>`.
    Rows(RowTier),
    /// CTA per row, any length. `cached`: forward row cache / backward accumulators in
    /// shared memory.
    Cta {
        vec: u32,
        threads: u32,
        cached: bool,
        smem_bytes: u32,
    },
}

impl Plan {
    pub(crate) fn threads(&self) -> u32 {
        match self {
            Plan::Rows(t) => t.threads(),
            Plan::Cta { threads, .. } => *threads,
        }
    }
    pub(crate) fn rows_per_cta(&self) -> u64 {
        match self {
            Plan::Rows(t) => t.rows_per_cta() as u64,
            Plan::Cta { .. } => 1,
        }
    }
}

/// Threads of a CTA-per-row launch: all the kernel allows for very long rows, half for the
/// others, and for the scalar path about 8 elements a thread.
fn cta_threads(cols: u64, vec: u32) -> u32 {
    let vectors = cols / vec as u64;
    if vectors >= 8192 {
        WARPNORM_CTA_MAX_THREADS
    } else if vec == 1 {
        // The scalar path takes the CTA kernels at every length: about 8 elements a
        // thread in whole warps, so that a short unaligned row gets a small CTA.
        vectors
            .div_ceil(8)
            .next_multiple_of(32)
            .clamp(32, WARPNORM_CTA_MAX_THREADS as u64 / 2) as u32
    } else {
        WARPNORM_CTA_MAX_THREADS / 2
    }
}

/// Vectors of x a thread of the forward CTA kernel keeps in flight: one in v1, several in
/// v2 (T16 in docs/TUNING.md).
pub(crate) fn fwd_cta_loads(generation: KernelGeneration, vec: u32) -> u32 {
    match generation {
        KernelGeneration::V1 => 1,
        KernelGeneration::V2 => tiers::fwd_cta_loads_v2(vec),
    }
}

/// Forward plan for rows of `cols` elements of `elem_bytes`, loaded `vec` at a time: a
/// register tier where one holds the row and its staged parameters fit in `max_smem`.
pub(crate) fn forward_plan(cols: u64, vec: u32, elem_bytes: u32, max_smem: u32) -> Plan {
    let tier = pick_row_tier(Pass::Forward, vec, cols);
    if let Some(tier) = tier.filter(|&t| forward_rows_smem(t, cols) <= max_smem) {
        return Plan::Rows(tier);
    }
    // The row cache: x in its own dtype.
    cta_plan(cols, vec, cols * elem_bytes as u64, max_smem)
}

/// Backward plan; `cached` means the dscale/dbias sums fit in shared memory.
pub(crate) fn backward_plan(cols: u64, vec: u32, max_smem: u32) -> Plan {
    if let Some(tier) = pick_row_tier(Pass::Backward, vec, cols) {
        return Plan::Rows(tier);
    }
    // The dscale / dbias sums: 2 x cols f32.
    cta_plan(cols, vec, 2 * cols * 4, max_smem)
}

/// Bytes per column of kernels v2's row stash (`kernels/bwd_v2_stash.cuh`, in that
/// file's order): x and dy in their dtypes (twice when the next row is prefetched), scale
/// in the parameter dtype when the call has one, and an f32 sum per parameter gradient
/// wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StashColumn {
    pub x: u32,
    pub dy: u32,
    pub scale: u32,
    pub grads: u32,
}

impl StashColumn {
    pub(crate) fn bytes(&self) -> u64 {
        (self.x + self.dy + self.scale + 4 * self.grads) as u64
    }

    /// With a second stash of x and dy, for the next row's prefetch.
    fn prefetched(self) -> StashColumn {
        StashColumn {
            x: 2 * self.x,
            dy: 2 * self.dy,
            ..self
        }
    }

    /// Dynamic shared memory of a stash CTA holding `cols` columns of each row: the
    /// reduction scratch and the row-sum slots, then the arrays; None when that overflows.
    pub(crate) fn smem_bytes(&self, cols: u64) -> Option<u64> {
        cols.checked_mul(self.bytes())?
            .checked_add(STASH_HEADER_BYTES)
    }

    /// The longest row of `vec`-element vectors whose stash fits in `max_smem` bytes.
    #[cfg(test)]
    fn capacity(&self, vec: u32, max_smem: u32) -> u64 {
        let room = (max_smem as u64).saturating_sub(STASH_HEADER_BYTES);
        room / self.bytes() / vec as u64 * vec as u64
    }
}

/// The stash kernels' shared memory before their arrays: the reduction scratch and the
/// row-sum slots.
const STASH_HEADER_BYTES: u64 =
    (WARPNORM_CTA_SCRATCH_FLOATS + WARPNORM_STASH_SLOT_FLOATS) as u64 * 4;

/// The most CTAs of a thread-block cluster that is portable on sm_90.
pub(crate) const MAX_CLUSTER: u32 = 8;
/// The most CTAs of a group that meets in global memory (`kernels/bwd_v2_split.cuh`).
pub(crate) const MAX_GROUP: u32 = WARPNORM_SPLIT_MAX_CTAS;

/// Threads of a CTA stashing rows past the register tiers (without prefetch): the most a
/// CTA has. One CTA fits on an SM (its 1024 threads' registers fill the register file, its
/// stash most of the shared memory), so the CTA's own threads are what keeps loads in
/// flight.
pub(crate) const STASH_THREADS: u32 = WARPNORM_CTA_MAX_THREADS;

/// How a stashed row is split over CTAs, and where their row sums meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Split {
    /// One CTA holds the row (`layer_norm_bwd_stash`).
    Cta,
    /// A thread-block cluster of this many CTAs, through distributed shared memory
    /// (`layer_norm_bwd_cluster`, sm_90).
    Cluster(u32),
    /// A group of this many CTAs, through global memory (`layer_norm_bwd_split`, launched
    /// cooperatively).
    Group(u32),
}

impl Split {
    /// CTAs per row.
    pub(crate) fn ctas(self) -> u32 {
        match self {
            Split::Cta => 1,
            Split::Cluster(n) | Split::Group(n) => n,
        }
    }
}

/// A backward plan of kernels v2: v1's, or the row stash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BwdPlan {
    V1(Plan),
    /// x and dy read once: each row stashed in the shared memory of the CTAs of `split`,
    /// `threads` and `smem_bytes` each; with `prefetch` (only with `Split::Cta`), two
    /// stashes, the next row copied into one while a row is reduced from the other.
    Stash {
        vec: u32,
        split: Split,
        prefetch: bool,
        threads: u32,
        smem_bytes: u32,
    },
}

impl BwdPlan {
    pub(crate) fn threads(&self) -> u32 {
        match self {
            BwdPlan::V1(p) => p.threads(),
            BwdPlan::Stash { threads, .. } => *threads,
        }
    }
    /// How its rows are split over CTAs (v1's: a CTA or less each).
    pub(crate) fn split(&self) -> Split {
        match self {
            BwdPlan::V1(_) => Split::Cta,
            BwdPlan::Stash { split, .. } => *split,
        }
    }
}

/// Kernels v2's backward plan, one rule for rows of 16-byte vectors (`vec > 1`; the scalar
/// path keeps v1's): rows a warp (or less) holds in registers stay in v1's register tiers;
/// the rows of v1's CTA register tiers, which hold the row in 64-168 registers a thread and
/// load, reduce and store in sequence, are stashed by a CTA of the same threads with the
/// next row prefetched, when two stashes fit; longer rows are stashed, x and dy read once,
/// by the fewest CTAs whose slices fit in their shared memory: one CTA; up to
/// `max_cluster` in a thread-block cluster (devices with clusters, sm_90; 1 elsewhere); up
/// to `max_group` in a group meeting in global memory (1: none); the rest (rows longer
/// than that) take v1's CTA kernels, which read x and dy twice.
pub(crate) fn backward_plan_v2(
    cols: u64,
    vec: u32,
    column: StashColumn,
    max_smem: u32,
    max_cluster: u32,
    max_group: u32,
) -> BwdPlan {
    let v1 = backward_plan(cols, vec, max_smem);
    if vec <= 1 {
        return BwdPlan::V1(v1);
    }
    if let Plan::Rows(tier) = v1 {
        let bytes = column.prefetched().smem_bytes(cols);
        return match bytes.filter(|&b| b <= max_smem as u64) {
            Some(bytes) if tier.is_cta() => BwdPlan::Stash {
                vec,
                split: Split::Cta,
                prefetch: true,
                threads: tier.threads(),
                smem_bytes: bytes as u32,
            },
            _ => BwdPlan::V1(v1),
        };
    }
    let vectors = cols / vec as u64;
    (1..=max_cluster.max(max_group).max(1))
        .find_map(|ctas| {
            let slice = vectors.div_ceil(ctas as u64) * vec as u64;
            let bytes = column.smem_bytes(slice)?;
            let split = match ctas {
                1 => Split::Cta,
                n if n <= max_cluster => Split::Cluster(n),
                n => Split::Group(n),
            };
            (bytes <= max_smem as u64).then_some(BwdPlan::Stash {
                vec,
                split,
                prefetch: false,
                threads: STASH_THREADS,
                smem_bytes: bytes as u32,
            })
        })
        .unwrap_or(BwdPlan::V1(v1))
}

/// The CTA-per-row plan: the reduction scratch, plus `cache_bytes` of shared memory when
/// they fit (`cached`).
fn cta_plan(cols: u64, vec: u32, cache_bytes: u64, max_smem: u32) -> Plan {
    let scratch = WARPNORM_CTA_SCRATCH_FLOATS * 4;
    let cached = scratch as u64 + cache_bytes <= max_smem as u64;
    Plan::Cta {
        vec,
        threads: cta_threads(cols, vec),
        cached,
        smem_bytes: if cached {
            scratch + cache_bytes as u32
        } else {
            scratch
        },
    }
}

/// Dynamic shared memory of the forward register tier: scale and bias, staged as f32 by
/// each CTA for the rows it visits (`kernels/layernorm_fwd.cu`), then the reduction
/// scratch (the kernel has no static shared memory).
pub(crate) fn forward_rows_smem(tier: RowTier, cols: u64) -> u32 {
    let scratch = 3 * tier.threads() as u64 / 32 * 4;
    let staged = cols.saturating_mul(2 * 4);
    u32::try_from(staged.saturating_add(scratch)).unwrap_or(u32::MAX)
}

/// Dynamic shared memory of the backward register tier: the reduction scratch, plus the
/// row slots' column sums when a CTA holds several rows.
pub(crate) fn backward_rows_smem(tier: RowTier, cols: u64) -> u32 {
    let scratch = 3 * tier.threads() / 32 * 4;
    let slots = if tier.rows_per_cta() > 1 {
        2 * tier.rows_per_cta() as u64 * cols * 4
    } else {
        0
    };
    scratch + slots as u32
}

pub(crate) fn forward_grid(rows: u64, plan: Plan, sm_count: u32) -> u32 {
    let needed = rows.div_ceil(plan.rows_per_cta()).max(1);
    needed.min(sm_count as u64 * FWD_CTAS_PER_SM) as u32
}

/// Kernels v2's forward grid: whole waves. With more row blocks than fit on the GPU at once
/// (`resident_per_sm` from the occupancy of the kernel chosen), exactly one wave of CTAs
/// that stay resident and stride over the rows, so that no partly filled last wave idles
/// SMs (v1's `16 · SMs` cap is 1.3 waves of 12-CTA-per-SM kernels); fewer row blocks than
/// that, one CTA each.
pub(crate) fn forward_grid_waves(
    rows: u64,
    plan: Plan,
    sm_count: u32,
    resident_per_sm: u32,
) -> u32 {
    let needed = rows.div_ceil(plan.rows_per_cta()).max(1);
    let wave = sm_count as u64 * resident_per_sm.max(1) as u64;
    needed.min(wave).min(u32::MAX as u64) as u32
}

/// Kernels v2's finalize: one CTA per `WARPNORM_FINALIZE_COLS` columns of each output.
pub(crate) fn finalize_pair_grid(cols: u64, outputs: u32) -> u32 {
    let tiles = cols.div_ceil(WARPNORM_FINALIZE_COLS as u64).max(1);
    (tiles * outputs as u64).min(u32::MAX as u64) as u32
}

/// The most partial rows any backward launch writes for `rows` rows: the size of the
/// workspace a caller provides (times 2 x cols).
pub(crate) fn max_parts(rows: u64, sm_count: u32) -> u64 {
    rows.min(sm_count as u64 * BWD_CTAS_PER_SM)
        .max(STRIDED_WARPS)
}

/// The backward's persistent grid in units of `ctas` CTAs (1: plain CTAs; else a cluster
/// or a cooperative group per split row), each unit writing one partial row: one wave,
/// that is no more CTAs than fit on the GPU at once (`resident_per_sm` from the occupancy
/// of the kernel chosen, at most `BWD_CTAS_PER_SM`), and no more units than the `needed`
/// row blocks (rows, for a stash). CTAs beyond one wave would only run after others
/// finish, adding partial rows (traffic for the finalize and, for long rows, L2 space)
/// without adding parallelism; a cooperative launch of more would be refused. At least
/// one unit (a group is never larger than the SMs, `Launch::max_group`). (Clusters are
/// placed within a GPC, so on a GPU a few may wait for a second wave: one more partial
/// row each, no lost parallelism.)
pub(crate) fn backward_grid(needed: u64, ctas: u32, sm_count: u32, resident_per_sm: u32) -> u32 {
    let per_sm = (resident_per_sm.max(1) as u64).min(BWD_CTAS_PER_SM);
    let wave = (sm_count as u64 * per_sm / ctas.max(1) as u64).max(1);
    needed.max(1).min(wave) as u32
}

/// Threads and warps per CTA of the strided kernels.
pub(crate) const STRIDED_THREADS: u32 = WARPNORM_STRIDED_THREADS;
pub(crate) const STRIDED_WARPS: u64 = STRIDED_THREADS as u64 / 32;

pub(crate) fn strided_forward_grid(rows: u64, sm_count: u32) -> u32 {
    rows.div_ceil(STRIDED_THREADS as u64)
        .clamp(1, sm_count as u64 * FWD_CTAS_PER_SM) as u32
}

/// The strided backward writes a partial row per warp, so its grid is bounded by
/// `max_parts / STRIDED_WARPS`.
pub(crate) fn strided_backward_grid(rows: u64, sm_count: u32) -> u32 {
    let cap = (max_parts(rows, sm_count) / STRIDED_WARPS).max(1);
    rows.div_ceil(STRIDED_THREADS as u64).clamp(1, cap) as u32
}

/// The backward's workspace, in f32 elements from its start, for `rows` x `cols` on a
/// device with `sm_count` SMs: a partial row of dscale and one of dbias per CTA (or per
/// cluster or group of a split row), `parts` x `cols` each, summed in a fixed order by a
/// finalize kernel (what makes the gradients bitwise reproducible); then, for rows split
/// over groups of CTAs (`layer_norm_bwd_split`), an arrival counter (a u32) and
/// 2 x `MAX_GROUP` row-sum slots per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Workspace {
    pub parts: u64,
    pub cols: u64,
}

impl Workspace {
    pub(crate) fn of(rows: u64, cols: u64, sm_count: u32) -> Self {
        Workspace {
            parts: max_parts(rows, sm_count),
            cols,
        }
    }
    /// Where the partial rows of dbias start (those of dscale start at 0).
    pub(crate) fn partial_dbias(&self) -> u64 {
        self.parts.saturating_mul(self.cols)
    }
    /// Where the groups' arrival counters start.
    pub(crate) fn arrivals(&self) -> u64 {
        self.partial_dbias().saturating_mul(2)
    }
    /// Where the groups' row-sum slots start.
    pub(crate) fn slots(&self) -> u64 {
        self.arrivals().saturating_add(self.parts)
    }
    /// Its length; saturates for absurd sizes (which every call rejects), so it never
    /// overflows.
    pub(crate) fn len(&self) -> u64 {
        let slots = 2 * (MAX_GROUP * WARPNORM_SPLIT_SLOT_FLOATS) as u64;
        self.slots()
            .saturating_add(self.parts.saturating_mul(slots))
    }
}

/// f32 elements of the workspace the backward needs for `rows` x `cols` on a device with
/// `sm_count` SMs: a partial row of dscale and one of dbias per CTA of the backward grid
/// (summed in a fixed order by a finalize kernel, which makes the gradients bitwise
/// reproducible), and per group of CTAs that splits a row a barrier counter and its row
/// sums' slots.
pub fn backward_workspace_len(rows: usize, cols: usize, sm_count: u32) -> usize {
    let len = Workspace::of(rows as u64, cols as u64, sm_count).len();
    usize::try_from(len).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_up_to_2_pow_20_has_a_plan() {
        for &vec in &[1u32, 4, 8] {
            for cols in (1..=70_000u64).chain([1 << 20, (1 << 20) + 8]) {
                if cols % vec as u64 != 0 {
                    continue;
                }
                for plan in [
                    forward_plan(cols, vec, 2, 227 * 1024),
                    backward_plan(cols, vec, 227 * 1024),
                ] {
                    match plan {
                        Plan::Rows(t) => assert!(t.capacity() >= cols && t.vec == vec),
                        Plan::Cta { smem_bytes, .. } => assert!(smem_bytes <= 227 * 1024),
                    }
                }
            }
        }
    }

    #[test]
    fn forward_register_tiers_stage_their_parameters_where_they_fit() {
        // Every forward tier's staged scale and bias fit on an A100 and an H100, so there
        // every row a tier holds takes it.
        for vec in [2, 4, 8] {
            for t in tiers::row_tiers(Pass::Forward, vec) {
                let scratch = 12 * t.threads() as u64 / 32;
                let smem = forward_rows_smem(t, t.capacity()) as u64;
                assert_eq!(smem, 8 * t.capacity() + scratch);
                for max_smem in [SM80_SMEM, SM90_SMEM] {
                    assert_eq!(forward_plan(t.capacity(), vec, 2, max_smem), Plan::Rows(t));
                }
            }
        }
        // On a device with less (99 KiB a CTA, sm_86 / sm_89), the longest 16-bit tier's
        // rows go to the CTA kernel; the longest that still fits beside the 1024-thread
        // tier's scratch (384 bytes) stays in the tier.
        let small = 99 * 1024;
        assert!(matches!(forward_plan(16384, 8, 2, small), Plan::Cta { .. }));
        let fits = (small as u64 - 384) / 8 / 8 * 8;
        assert_eq!(fits, 12624);
        assert!(matches!(forward_plan(fits, 8, 2, small), Plan::Rows(t) if t.group == 1024));
        assert!(matches!(
            forward_plan(fits + 8, 8, 2, small),
            Plan::Cta { .. }
        ));
        let first = tiers::row_tiers(Pass::Forward, 8)[0];
        assert_eq!(forward_rows_smem(first, u64::MAX), u32::MAX);
    }

    #[test]
    fn grids_fit_the_workspace() {
        for rows in [1u64, 3, 7, 100, 10_000, 1 << 24] {
            for cols in [1u64, 8, 1000, 4096, 70_000] {
                let parts = max_parts(rows, 132);
                for vec in [1, 8] {
                    let plan = backward_plan(cols, vec, 227 * 1024);
                    for resident in [0, 1, 2, 4, 32] {
                        let needed = rows.div_ceil(plan.rows_per_cta());
                        assert!(backward_grid(needed, 1, 132, resident) as u64 <= parts);
                    }
                }
                assert!(strided_backward_grid(rows, 132) as u64 * STRIDED_WARPS <= parts);
            }
        }
    }

    #[test]
    fn backward_grid_is_one_wave() {
        let per_cta = backward_plan(16_384, 8, 227 * 1024).rows_per_cta();
        let needed = |rows: u64| rows.div_ceil(per_cta);
        // One 128 KiB-accumulator CTA per SM: 132 partial rows, not 4 waves' worth.
        assert_eq!(backward_grid(needed(1 << 14), 1, 132, 1), 132);
        assert_eq!(backward_grid(needed(1 << 14), 1, 132, 3), 396);
        assert_eq!(backward_grid(needed(1 << 14), 1, 132, 16), 528);
        assert_eq!(backward_grid(needed(100), 1, 132, 1), 100);
    }

    /// Opt-in shared memory per CTA of sm_90 and sm_80.
    const SM90_SMEM: u32 = 227 * 1024;
    const SM80_SMEM: u32 = 163 * 1024;

    fn column(x: u32, dy: u32, scale: u32, grads: u32) -> StashColumn {
        StashColumn {
            x,
            dy,
            scale,
            grads,
        }
    }

    #[test]
    fn v2_stashes_the_rows_past_the_register_tiers_that_fit() {
        let f32_layer_norm = column(4, 4, 4, 2);
        let cap = f32_layer_norm.capacity(4, SM90_SMEM);
        assert_eq!(cap, 11_600);
        // sm_90: clusters of 8, groups of 16; sm_80: groups only.
        let plan = |cols, smem, max_cluster, max_group| {
            backward_plan_v2(cols, 4, f32_layer_norm, smem, max_cluster, max_group)
        };
        // A warp's rows stay in its registers; the CTA register tiers' rows are stashed
        // twice over by a CTA of the tier's threads, the next row prefetched.
        assert!(matches!(
            plan(512, SM90_SMEM, 8, 16),
            BwdPlan::V1(Plan::Rows(_))
        ));
        for (cols, threads) in [(516, 128), (2048, 256), (4096, 512)] {
            let stash = plan(cols, SM90_SMEM, 8, 16);
            let BwdPlan::Stash {
                vec: 4,
                split: Split::Cta,
                prefetch: true,
                threads: t,
                smem_bytes,
            } = stash
            else {
                panic!("{cols}: {stash:?}");
            };
            assert_eq!((t, smem_bytes as u64), (threads, 416 + 28 * cols));
        }
        for cols in [4100, 8192, cap] {
            let stash = plan(cols, SM90_SMEM, 8, 16);
            let BwdPlan::Stash {
                vec: 4,
                split: Split::Cta,
                prefetch: false,
                threads: 1024,
                smem_bytes,
            } = stash
            else {
                panic!("{cols}: {stash:?}");
            };
            assert_eq!(smem_bytes as u64, 416 + 20 * cols);
        }
        // Two 16-bit stashes of an 8192-long row with f32 dy outgrow sm_80's shared memory:
        // v1's register tier.
        let bf16_f32_dy = column(2, 4, 4, 2);
        for (smem, prefetched) in [(SM90_SMEM, true), (SM80_SMEM, false)] {
            let plan = backward_plan_v2(8192, 8, bf16_f32_dy, smem, 1, 16);
            assert_eq!(
                matches!(plan, BwdPlan::Stash { prefetch: true, .. }),
                prefetched,
                "{plan:?}"
            );
        }
        // Past one CTA: the fewest CTAs whose slices fit, in a cluster where there are
        // clusters and the row needs no more than one holds, else in a group meeting in
        // global memory; v1's CTA kernels past both, and for the scalar path.
        let split_of =
            |cols, smem, max_cluster, max_group| match plan(cols, smem, max_cluster, max_group) {
                BwdPlan::Stash { split, .. } => Some(split),
                BwdPlan::V1(Plan::Cta { .. }) => None,
                other => panic!("{cols}: {other:?}"),
            };
        let hopper = |cols| split_of(cols, SM90_SMEM, 8, 16);
        assert_eq!(hopper(cap + 4), Some(Split::Cluster(2)));
        assert_eq!(hopper(2 * cap), Some(Split::Cluster(2)));
        assert_eq!(hopper(2 * cap + 4), Some(Split::Cluster(3)));
        assert_eq!(hopper(65_536), Some(Split::Cluster(6)));
        assert_eq!(hopper(8 * cap), Some(Split::Cluster(8)));
        assert_eq!(hopper(8 * cap + 4), Some(Split::Group(9)));
        assert_eq!(hopper(16 * cap), Some(Split::Group(16)));
        assert_eq!(hopper(16 * cap + 4), None);
        assert_eq!(split_of(8 * cap + 4, SM90_SMEM, 8, 1), None);
        assert_eq!(split_of(cap + 4, SM90_SMEM, 1, 1), None);
        let sm80_cap = f32_layer_norm.capacity(4, SM80_SMEM);
        assert_eq!(sm80_cap, 8324);
        let ampere = |cols| split_of(cols, SM80_SMEM, 1, 16);
        assert_eq!(ampere(8192), Some(Split::Cta));
        assert_eq!(ampere(sm80_cap + 4), Some(Split::Group(2)));
        assert_eq!(ampere(65_536), Some(Split::Group(8)));
        assert_eq!(ampere(16 * sm80_cap + 4), None);
        assert!(matches!(
            backward_plan_v2(8192, 1, f32_layer_norm, SM90_SMEM, 8, 16),
            BwdPlan::V1(Plan::Cta { .. })
        ));
        assert_eq!(f32_layer_norm.smem_bytes(u64::MAX), None);
    }

    #[test]
    fn the_workspace_holds_the_partial_rows_then_the_groups_scratch() {
        for (rows, cols) in [(0u64, 0u64), (1, 8), (100, 4096), (1 << 20, 65_536)] {
            let ws = Workspace::of(rows, cols, 132);
            let parts = max_parts(rows, 132);
            assert_eq!(ws.partial_dbias(), parts * cols);
            assert_eq!(ws.arrivals(), 2 * parts * cols);
            assert_eq!(ws.slots(), ws.arrivals() + parts);
            // 2 x MAX_GROUP slots of 4 floats per group, at most one group per part.
            assert_eq!(ws.len(), ws.slots() + parts * 2 * 16 * 4);
            assert_eq!(
                backward_workspace_len(rows as usize, cols as usize, 132) as u64,
                ws.len()
            );
        }
        assert_eq!(
            backward_workspace_len(usize::MAX, usize::MAX, 132),
            usize::MAX
        );
    }

    #[test]
    fn stash_grids_are_one_wave_of_clusters_and_fit_the_workspace() {
        assert_eq!(backward_grid(1 << 14, 1, 132, 1), 132);
        assert_eq!(backward_grid(1 << 14, 1, 132, 2), 264);
        assert_eq!(backward_grid(1 << 14, 2, 132, 1), 66);
        assert_eq!(backward_grid(1 << 14, 6, 132, 1), 22);
        assert_eq!(backward_grid(5, 2, 132, 1), 5);
        assert_eq!(backward_grid(1 << 14, 8, 1, 1), 1);
        // A100: groups of 8 CTAs, one per SM: 13 groups, 104 CTAs, all resident at once
        // (what a cooperative launch needs), on any device whose groups are at most its
        // SMs.
        assert_eq!(backward_grid(1 << 14, 8, 108, 1), 13);
        for sms in 1..=20 {
            for ctas in 2..=MAX_GROUP.min(sms) {
                for resident in 1..=6 {
                    let groups = backward_grid(1 << 20, ctas, sms, resident);
                    let per_sm = resident.min(BWD_CTAS_PER_SM as u32);
                    assert!(groups >= 1 && groups * ctas <= sms * per_sm);
                }
            }
        }
        for rows in [1u64, 3, 100, 1 << 20] {
            for ctas in 1..=MAX_GROUP {
                let groups = backward_grid(rows, ctas, 132, 4) as u64;
                assert!(groups >= 1 && groups <= max_parts(rows, 132));
                for resident in [1, 2, 4] {
                    let groups = backward_grid(rows, ctas, 132, resident) as u64;
                    assert!(groups * ctas as u64 <= 132 * resident as u64);
                }
            }
        }
    }

    /// The longest rows the stash holds, per dtype combination and device (docs/TUNING.md,
    /// T15); printed with `--nocapture`.
    #[test]
    fn stash_capacity_per_dtype() {
        println!("x / params / dy   grads  bytes/col  sm_90 (227 KiB)  sm_80 (163 KiB)");
        let cases = [
            ("f32 / f32 / f32", 4, 4, 4, 4, 2),
            ("f32 RMSNorm", 4, 4, 4, 4, 1),
            ("16-bit / 16-bit / 16-bit", 8, 2, 2, 2, 2),
            ("16-bit / f32 / 16-bit", 8, 2, 4, 2, 2),
            ("16-bit / f32 / f32", 8, 2, 4, 4, 2),
            ("16-bit RMSNorm", 8, 2, 2, 2, 1),
        ];
        for (name, vec, x, p, dy, grads) in cases {
            let c = column(x, dy, p, grads);
            let (sm90, sm80) = (c.capacity(vec, SM90_SMEM), c.capacity(vec, SM80_SMEM));
            println!(
                "{name:<24} {grads:>5} {:>10} {sm90:>16} {sm80:>16}",
                c.bytes()
            );
            // Each capacity is the longest stashed row: one vector more is v1's.
            for (cap, smem) in [(sm90, SM90_SMEM), (sm80, SM80_SMEM)] {
                assert!(c.smem_bytes(cap).unwrap() <= smem as u64);
                assert!(c.smem_bytes(cap + vec as u64).unwrap() > smem as u64);
            }
        }
    }

    #[test]
    fn backward_row_slots_fit_default_shared_memory() {
        for vec in [1, 4, 8] {
            for t in super::super::tiers::row_tiers(Pass::Backward, vec) {
                assert!(backward_rows_smem(t, t.capacity()) <= DEFAULT_SMEM, "{t:?}");
            }
        }
    }
}
