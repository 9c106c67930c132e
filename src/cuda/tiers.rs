// The kernel instantiations warpnorm compiles, and how a row length picks one.
//
// This file is pure data and std-only: build.rs `include!`s it to know which template
// instantiations to ask NVRTC for, and the launch layer uses it to choose among exactly
// those. Keeping both in one place means the host can never ask for a kernel that was not
// built. The launch shapes it shares with the kernels come from `kernels/params.h`
// through the bindings (`super::params`, which build.rs includes too).

use super::params::WARPNORM_ROWS_CTA_THREADS;

/// A register-tier launch shape: GROUP threads own a row, each `vecs` vectors of `vec`
/// elements; the row fits when `cols <= group * vecs * vec` (and `cols % vec == 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowTier {
    pub vec: u32,
    pub vecs: u32,
    pub group: u32,
}

impl RowTier {
    /// The longest row this shape holds.
    pub const fn capacity(&self) -> u64 {
        (self.vec * self.vecs * self.group) as u64
    }
    /// Whether a row is a CTA's (a group of more than a warp), rather than a warp's or
    /// less.
    pub const fn is_cta(&self) -> bool {
        self.group > 32
    }
    /// Threads per CTA (several rows share a CTA of `WARPNORM_ROWS_CTA_THREADS` when the
    /// group is a warp or less).
    pub const fn threads(&self) -> u32 {
        if self.is_cta() {
            self.group
        } else {
            WARPNORM_ROWS_CTA_THREADS
        }
    }
    /// Rows one CTA normalises at a time.
    pub const fn rows_per_cta(&self) -> u32 {
        self.threads() / self.group
    }
}

/// Which pass a tier table is for: the backward keeps more per element in registers
/// (x, dy, g and two accumulators), so its register tiers stop earlier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    Backward,
}

const SUB_WARP_GROUPS: [u32; 5] = [1, 2, 4, 8, 16];

/// The register tiers compiled for a pass and a vector width, in increasing capacity: one
/// shape per capacity (for equal capacities the larger group would always be chosen). The
/// scalar path (`vec` 1, unaligned slices) has none: the CTA kernels, with a CTA sized to
/// the row, serve every length there.
pub fn row_tiers(pass: Pass, vec: u32) -> Vec<RowTier> {
    if vec == 1 {
        return Vec::new();
    }
    let mut tiers: Vec<RowTier> = SUB_WARP_GROUPS
        .iter()
        .map(|&group| RowTier {
            vec,
            vecs: 1,
            group,
        })
        .collect();
    let warp_vecs = [1, 2, 4];
    let cta: &[(u32, u32)] = match pass {
        Pass::Forward => &[(128, 2), (256, 2), (512, 2), (1024, 2)],
        Pass::Backward => &[(128, 2), (256, 2), (512, 2)],
    };
    tiers.extend(warp_vecs.iter().map(|&vecs| RowTier {
        vec,
        vecs,
        group: 32,
    }));
    tiers.extend(
        cta.iter()
            .map(|&(group, vecs)| RowTier { vec, vecs, group }),
    );
    tiers.sort_by_key(|t| (t.capacity(), std::cmp::Reverse(t.group)));
    tiers
}

/// The smallest register tier that holds a row of `cols`, or None (then the CTA tier).
pub fn pick_row_tier(pass: Pass, vec: u32, cols: u64) -> Option<RowTier> {
    row_tiers(pass, vec)
        .into_iter()
        .find(|t| t.capacity() >= cols)
}

/// The element types as the kernels spell them, and their sizes.
pub const CUDA_TYPES: [(&str, &str, u32); 3] = [
    ("f32", "float", 4),
    ("f16", "__half", 2),
    ("bf16", "__nv_bfloat16", 2),
];

/// C++ spelling of a dtype short name (`f32`, `f16`, `bf16`).
pub fn cuda_type(short: &str) -> &'static str {
    CUDA_TYPES
        .iter()
        .find(|(s, _, _)| *s == short)
        .map(|(_, c, _)| *c)
        .unwrap_or("float")
}

/// Widest vector (16 bytes) for an element size.
pub const fn max_vec(elem_bytes: u32) -> u32 {
    16 / elem_bytes
}

/// The dtypes x may have: each is one instantiation of a kernel, whose parameters and
/// output are each x's dtype or f32, chosen per call (`param_dtype` / `out_dtype`).
pub const X_DTYPES: [&str; 3] = ["f32", "f16", "bf16"];

/// Vectors of x a thread of the forward CTA kernel loads before it sums the first (`LOADS`
/// in kernels/layernorm_fwd.cu) in kernels v2, for x in `vec`-element vectors: 4 of f32
/// (64 bytes), 2 of 16-bit x (32 bytes: widening 4 would spill at the 1024-thread CTA's
/// 64 registers, tests/kernel_resources.rs). v1, and the scalar path of both, load one at
/// a time (`select::fwd_cta_loads`).
pub const fn fwd_cta_loads_v2(vec: u32) -> u32 {
    match vec {
        1 => 1,
        2..=4 => 4,
        _ => 2,
    }
}

/// Every (x, param, out) dtype combination the kernels take: params and output are either
/// x's dtype or f32 (flax: bf16 x with f32 params gives f32 y).
pub fn dtype_combos() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut combos = vec![("f32", "f32", "f32")];
    for x in ["f16", "bf16"] {
        for p in [x, "f32"] {
            for o in [x, "f32"] {
                combos.push((x, p, o));
            }
        }
    }
    combos
}

/// Name expressions (what NVRTC instantiates and the launch layer looks up). The
/// normalization kernels are instantiated per x dtype; the finalize per parameter dtype.
pub mod expr {
    use super::{cuda_type, RowTier};

    pub fn fwd_rows(x: &str, t: RowTier) -> String {
        format!(
            "warpnorm::layer_norm_fwd<{}, {}, {}, {}>",
            cuda_type(x),
            t.vec,
            t.vecs,
            t.group
        )
    }
    pub fn fwd_cta(x: &str, vec: u32, cache: bool, loads: u32) -> String {
        format!(
            "warpnorm::layer_norm_fwd_cta<{}, {vec}, {cache}, {loads}>",
            cuda_type(x)
        )
    }
    pub fn fwd_strided(x: &str) -> String {
        format!("warpnorm::layer_norm_fwd_strided<{}>", cuda_type(x))
    }
    pub fn bwd_rows(x: &str, t: RowTier) -> String {
        format!(
            "warpnorm::layer_norm_bwd<{}, {}, {}, {}>",
            cuda_type(x),
            t.vec,
            t.vecs,
            t.group
        )
    }
    pub fn bwd_cta(x: &str, vec: u32, smem_acc: bool) -> String {
        format!(
            "warpnorm::layer_norm_bwd_cta<{}, {vec}, {smem_acc}>",
            cuda_type(x)
        )
    }
    /// Kernels v2: the backward that stashes the row in shared memory
    /// (`kernels/bwd_v2_stash.cuh`), x's 16-byte vectors only; `prefetch`: the next row
    /// copied in asynchronously while one is reduced (the rows of the CTA register tiers).
    pub fn bwd_stash(x: &str, vec: u32, prefetch: bool) -> String {
        format!(
            "warpnorm::layer_norm_bwd_stash<{}, {vec}, {prefetch}>",
            cuda_type(x)
        )
    }
    /// Kernels v2 on sm_90: the long-row backward split over a thread-block cluster
    /// (`kernels/bwd_v2_cluster.cuh`).
    pub fn bwd_cluster(x: &str, vec: u32) -> String {
        format!("warpnorm::layer_norm_bwd_cluster<{}, {vec}>", cuda_type(x))
    }
    /// Kernels v2: a row too long for one CTA's stash split over a group of CTAs that
    /// meet in global memory (`kernels/bwd_v2_split.cuh`; devices without clusters, and
    /// rows past a cluster's CTAs).
    pub fn bwd_split(x: &str, vec: u32) -> String {
        format!("warpnorm::layer_norm_bwd_split<{}, {vec}>", cuda_type(x))
    }
    pub fn bwd_strided(x: &str) -> String {
        format!("warpnorm::layer_norm_bwd_strided<{}>", cuda_type(x))
    }
    pub fn finalize(p: &str) -> String {
        format!("warpnorm::finalize_partials<{}>", cuda_type(p))
    }
    /// Kernels v2: dscale and dbias in one launch (`kernels/finalize_v2.cuh`).
    pub fn finalize_pair(p: &str) -> String {
        format!("warpnorm::finalize_pair<{}>", cuda_type(p))
    }
}

/// The CUDA types of dtype short names, as template arguments: `float, __nv_bfloat16`.
fn types(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| cuda_type(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name-expression builders of one pass's kernels.
struct PassKernels {
    pass: Pass,
    rows: fn(&str, RowTier) -> String,
    /// The CTA kernels of x's dtype, vector width and shared-memory flag: one per
    /// generation where they differ.
    cta: fn(&str, u32, bool) -> Vec<String>,
    strided: fn(&str) -> String,
}

/// Every name expression a kernel source file instantiates.
pub fn instantiations(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let k = match source {
        "layernorm_fwd.cu" => PassKernels {
            pass: Pass::Forward,
            rows: expr::fwd_rows,
            cta: |x, vec, cache| {
                let mut loads = vec![1, fwd_cta_loads_v2(vec)];
                loads.dedup();
                loads
                    .into_iter()
                    .map(|n| expr::fwd_cta(x, vec, cache, n))
                    .collect()
            },
            strided: expr::fwd_strided,
        },
        "layernorm_bwd.cu" => PassKernels {
            pass: Pass::Backward,
            rows: expr::bwd_rows,
            cta: |x, vec, smem_acc| vec![expr::bwd_cta(x, vec, smem_acc)],
            strided: expr::bwd_strided,
        },
        "sharded.cu" => return sharded::instantiations(),
        _ => return out,
    };
    for x in X_DTYPES {
        let bytes = CUDA_TYPES
            .iter()
            .find(|(s, _, _)| *s == x)
            .map_or(4, |t| t.2);
        for vec in [max_vec(bytes), 1] {
            out.extend(row_tiers(k.pass, vec).into_iter().map(|t| (k.rows)(x, t)));
            out.extend(
                [false, true]
                    .into_iter()
                    .flat_map(|flag| (k.cta)(x, vec, flag)),
            );
        }
        out.push((k.strided)(x));
        if k.pass == Pass::Backward {
            let vec = max_vec(bytes);
            out.extend([
                expr::bwd_stash(x, vec, false),
                expr::bwd_stash(x, vec, true),
                expr::bwd_cluster(x, vec),
                expr::bwd_split(x, vec),
            ]);
        }
    }
    if k.pass == Pass::Backward {
        out.extend(X_DTYPES.map(expr::finalize));
        out.extend(X_DTYPES.map(expr::finalize_pair));
    }
    out
}

/// The kernels of sharded (tensor-parallel) normalization, `kernels/sharded.cu`.
pub mod sharded {
    use super::{dtype_combos, types};

    pub fn row_stats(x: &str) -> String {
        format!("warpnorm::shard_row_stats<{}>", types(&[x]))
    }
    pub fn apply(x: &str, p: &str, o: &str) -> String {
        format!("warpnorm::shard_apply<{}>", types(&[x, p, o]))
    }
    pub fn bwd_sums(x: &str, p: &str, o: &str) -> String {
        format!("warpnorm::shard_bwd_sums<{}>", types(&[x, p, o]))
    }
    pub fn dx(x: &str, p: &str, o: &str) -> String {
        format!("warpnorm::shard_dx<{}>", types(&[x, p, o]))
    }
    pub fn param_grads(x: &str, o: &str) -> String {
        format!("warpnorm::shard_param_grads<{}>", types(&[x, o]))
    }
    pub fn cast_scale(src: &str, dst: &str) -> String {
        format!("warpnorm::cast_scale<{}>", types(&[src, dst]))
    }
    pub fn accumulate() -> String {
        "warpnorm::accumulate".to_string()
    }

    /// The (source, destination) dtypes of `cast_scale`: 16-bit buffers widen to f32
    /// scratch and narrow back; f32 divides in place.
    pub const CASTS: [(&str, &str); 5] = [
        ("f32", "f32"),
        ("f16", "f32"),
        ("f32", "f16"),
        ("bf16", "f32"),
        ("f32", "bf16"),
    ];

    /// Every name expression `kernels/sharded.cu` instantiates.
    pub fn instantiations() -> Vec<String> {
        let mut out: Vec<String> = ["f32", "f16", "bf16"].map(row_stats).to_vec();
        let mut x_out = Vec::new();
        for (x, p, o) in dtype_combos() {
            out.extend([apply(x, p, o), bwd_sums(x, p, o), dx(x, p, o)]);
            if !x_out.contains(&(x, o)) {
                x_out.push((x, o));
            }
        }
        out.extend(x_out.into_iter().map(|(x, o)| param_grads(x, o)));
        out.extend(CASTS.iter().map(|&(s, d)| cast_scale(s, d)));
        out.push(accumulate());
        out
    }
}

/// The kernel sources the CPU emulation compiles, every instantiation of each: the
/// normalization kernels are instantiated per x dtype, so every dtype combination of
/// [`dtype_combos`] runs there, and the sharded kernels are few and small.
pub const EMULATED_SOURCES: [&str; 3] = ["layernorm_fwd.cu", "layernorm_bwd.cu", "sharded.cu"];
