// Sharded (tensor-parallel) normalization: each rank holds [rows, cols] of rows whose
// features are split over the k ranks of its group, and the row statistics are combined
// across the group by one collective per direction (the host enqueues it between these
// kernels, on the same stream).
//
//   forward   shard_row_stats   per-shard statistics of every row (f32)
//             -- all-gather of (n, mean, M2)  or  all-reduce of (mean, mean of squares) --
//             shard_apply       merge in fixed rank order, normalise, save mean / rstd
//   backward  shard_bwd_sums    per-shard (sum g, sum g * xhat), g = dy * scale
//             -- all-reduce --
//             shard_dx          dx from the group's sums
//             shard_param_grads dscale / dbias partials over row chunks, summed in chunk
//                               order by finalize_partials (layernorm_bwd.cu)
//
// The statistics follow flax under `axis_name`: the fast variance and RMSNorm take one
// pmean of the per-rank (mean, mean of squares); the exact variance comes from every rank's
// (n, mean, M2), each weighing 1/k in group-position order, which equals flax's pmean(mean)
// then pmean(mean((x - mean)^2)) up to rounding (with flax's mask too), in one collective.
//
// Correctness first: a warp per row with scalar, coalesced loads (a shard's slice may start
// at any element), statistics in f32, every reduction in a fixed order so that results
// are bitwise reproducible. Each kernel takes one params.h struct by value, as the
// single-device kernels do.
#include "stats.cuh"

namespace warpnorm {

constexpr int kShardThreads = WARPNORM_SHARD_ROW_THREADS;
constexpr int kShardWarps = kShardThreads / kWarpSize;

// What shard_row_stats writes per row (and how shard_apply reads it).
constexpr int kShardMoments = WARPNORM_SHARD_MOMENTS;  // {n, mean, M2}: 3 floats, all-gathered
constexpr int kShardMeans = WARPNORM_SHARD_MEANS;      // {mean, mean of squares}: 2 floats, all-reduced

// The rows a warp handles: warp w of block b starts at b * warps + w and strides by the
// grid's warp count. The bounds are per warp, so every lane reaches every shuffle.
struct WarpRows {
    long long first, step;
    int lane;
};

__device__ __forceinline__ WarpRows warp_rows() {
    return {(long long)blockIdx.x * kShardWarps + threadIdx.x / kWarpSize, (long long)gridDim.x * kShardWarps,
            int(threadIdx.x % kWarpSize)};
}

// Whether element `c` of a row takes part in the statistics (flax's mask; `mask` is the
// row's, or null).
__device__ __forceinline__ float selected(const unsigned char* mask, long long c) {
    return (!mask || load(&mask[c])) ? 1.f : 0.f;
}

// The part of a shard's row a lane holds (columns lane, lane + 32, ...), read from global
// memory in each pass of the statistics.
template <typename T> struct ShardElements {
    const T* x;                 // the row
    const unsigned char* mask;  // the row's mask, or null
    long long cols;
    int lane;

    template <typename F> __device__ __forceinline__ void for_each(F f) const {
        for (long long c = lane; c < cols; c += kWarpSize) f(selected(mask, c), to_float(load(&x[c])));
    }
    __device__ __forceinline__ float count(float n) const { return mask ? n : float(cols); }
};

// Per-shard statistics of the selected elements of each row. A row with none selected
// gets NaN means (0 / 0), as flax's mean(where=all false): NaN for the whole group.
template <typename T> __global__ void __launch_bounds__(kShardThreads) shard_row_stats(const WarpnormShardStatsParams p) {
    const WarpRows w = warp_rows();
    const RowThreads<kWarpSize> warp{nullptr};
    for (long long row = w.first; row < p.rows; row += w.step) {
        const ShardElements<T> elements{static_cast<const T*>(p.x) + row * p.x_stride,
                                        p.mask ? p.mask + row * p.mask_stride : nullptr, p.cols, w.lane};
        if (p.mode == kShardMeans) {
            const RowMeans means = row_means(elements, warp);
            if (w.lane == 0) {
                store(&p.out[2 * row], means.x);
                store(&p.out[2 * row + 1], means.sq);
            }
        } else {
            // Exact two-pass: the second pass re-reads the row (from L1 / L2).
            const Moments m = exact_moments(elements, warp);
            if (w.lane == 0) {
                store(&p.out[3 * row], m.n);
                store(&p.out[3 * row + 1], m.mean);
                store(&p.out[3 * row + 2], m.m2);
            }
        }
    }
}

// A row's statistics from the combined buffer. dvar is d var / d (raw variance): the
// fast variance's clamp max(0, raw) has derivative 1 above 0, 1/2 at 0 (JAX's tie rule
// for maximum) and 0 below. A NaN variance stays NaN (clamp_nonnegative).
struct ShardRowStats {
    float mean, rstd, dvar;
};

__device__ __forceinline__ ShardRowStats combine_stats(const float* stats, long long row, long long rows, int group,
                                                       float eps, int kind, int mode) {
    float mean, var, dvar = 1.f;
    if (mode == kShardMoments) {
        // stats: [group][rows][3] = (n, mean, M2), position order. Every rank weighs 1/k,
        // as flax's pmean weighs it: mean = avg mean_q, var = avg (M2_q / n_q + (mean_q -
        // mean)^2). Without a mask the n_q are equal and this is the merged variance.
        const float inv_k = 1.f / float(group);
        float sum = 0.f;
        for (int q = 0; q < group; ++q) sum += stats[3 * ((long long)q * rows + row) + 1];
        mean = sum * inv_k;
        float spread = 0.f;
        for (int q = 0; q < group; ++q) {
            const float* s = stats + 3 * ((long long)q * rows + row);
            const float d = s[1] - mean;
            spread += s[2] / s[0] + d * d;
        }
        var = spread * inv_k;
    } else {
        // stats: [rows][2], summed over the group: pmean divides by the group size.
        const RowStats st = stats_from_means(kind, stats[2 * row] / float(group), stats[2 * row + 1] / float(group));
        mean = st.mean;
        var = st.var;
        if (kind != WARPNORM_RMS_NORM) dvar = var > 0.f ? 1.f : (var == 0.f ? 0.5f : 0.f);
    }
    return {mean, rstd_of(var, eps), dvar};
}

// The minimum of 8 resident CTAs gives ptxas a budget of 64 registers: left to itself it
// settles on 32 for sm_80 and spills (tests/kernel_resources.rs).
template <typename T, typename P, typename O>
__global__ void __launch_bounds__(kShardThreads, 8) shard_apply(const WarpnormShardApplyParams p) {
    const WarpRows w = warp_rows();
    const P* __restrict__ scale = static_cast<const P*>(p.scale);
    const P* __restrict__ bias = static_cast<const P*>(p.bias);
    for (long long row = w.first; row < p.rows; row += w.step) {
        // Every lane merges the same values in the same order: no broadcast needed.
        const ShardRowStats st = combine_stats(p.stats, row, p.rows, p.group, p.eps, p.kind, p.mode);
        if (w.lane == 0) {
            if (p.mean) p.mean[row] = st.mean;
            if (p.rstd) p.rstd[row] = st.rstd;
            if (p.dvar) p.dvar[row] = st.dvar;
        }
        const float shift = p.kind == WARPNORM_LAYER_NORM ? st.mean : 0.f;
        const T* __restrict__ xr = static_cast<const T*>(p.x) + row * p.x_stride;
        O* __restrict__ yr = static_cast<O*>(p.y) + row * p.y_stride;
        for (long long c = w.lane; c < p.cols; c += kWarpSize) {
            const float g = scale ? to_float(scale[c]) : 1.f;
            const float b = bias ? to_float(bias[c]) : 0.f;
            yr[c] = from_float<O>((to_float(xr[c]) - shift) * st.rstd * g + b);
        }
    }
}

// One row of the backward's inputs: x, dy and the saved statistics.
template <typename T, typename P, typename O> struct ShardBwdRow {
    const T* __restrict__ x;
    const O* __restrict__ dy;
    const P* __restrict__ scale;
    float shift, rstd;

    __device__ __forceinline__ ShardBwdRow(const WarpnormShardBwdParams& p, long long row)
        : x(static_cast<const T*>(p.x) + row * p.x_stride),
          dy(static_cast<const O*>(p.dy) + row * p.dy_stride),
          scale(static_cast<const P*>(p.scale)),
          shift(p.kind == WARPNORM_LAYER_NORM ? p.mean[row] : 0.f),
          rstd(p.rstd[row]) {}
    // g = dy * scale of column c.
    __device__ __forceinline__ float g(long long c) const {
        return to_float(dy[c]) * (scale ? to_float(scale[c]) : 1.f);
    }
    __device__ __forceinline__ float centred(long long c) const { return to_float(x[c]) - shift; }
    __device__ __forceinline__ float xhat(long long c) const { return centred(c) * rstd; }
};

// Per-shard backward sums of each row: {sum g, sum g * xhat} with g = dy * scale and
// xhat = (x - centre) * rstd from the saved (group-wide) statistics.
template <typename T, typename P, typename O>
__global__ void __launch_bounds__(kShardThreads) shard_bwd_sums(const WarpnormShardBwdParams p) {
    const WarpRows w = warp_rows();
    for (long long row = w.first; row < p.rows; row += w.step) {
        const ShardBwdRow<T, P, O> r(p, row);
        float sums[2] = {0.f, 0.f};
        for (long long c = w.lane; c < p.cols; c += kWarpSize) {
            const float g = r.g(c);
            sums[0] += g;
            sums[1] += g * r.centred(c) * r.rstd;  // rstd last, as shard_param_grads rounds
        }
        RowThreads<kWarpSize>{nullptr}.sum(sums);
        if (w.lane == 0) {
            p.sums[2 * row] = sums[0];
            p.sums[2 * row + 1] = sums[1];
        }
    }
}

// dx_j = rstd * (g_j - w * (c1 * A + dvar * xhat_j * B)) with A, B the group's sums, w the
// weight of one element in the group mean (1 / (k * cols)) and c1 = 1 for LayerNorm, 0
// for RMSNorm (see src/reference/row.rs for the derivation).
//
// With a mask, w is m_j / (k * n) for this rank's count n of selected elements in the row
// (p.weight is then 1 / k): the weight flax's pmean of the ranks' masked means gives x_j.
template <typename T, typename P, typename O>
__global__ void __launch_bounds__(kShardThreads) shard_dx(const WarpnormShardBwdParams p) {
    const WarpRows w = warp_rows();
    for (long long row = w.first; row < p.rows; row += w.step) {
        const ShardBwdRow<T, P, O> r(p, row);
        const float f = p.dvar ? p.dvar[row] : 1.f;
        const float c1a = p.kind == WARPNORM_LAYER_NORM ? p.sums[2 * row] : 0.f;
        const float b = p.sums[2 * row + 1];
        const unsigned char* mask = p.mask ? p.mask + row * p.mask_stride : nullptr;
        float weight = p.weight;
        if (mask) {
            float count[1] = {0.f};
            for (long long c = w.lane; c < p.cols; c += kWarpSize) count[0] += selected(mask, c);
            RowThreads<kWarpSize>{nullptr}.sum(count);
            weight /= count[0];
        }
        T* __restrict__ dxr = static_cast<T*>(p.dx) + row * p.dx_stride;
        for (long long c = w.lane; c < p.cols; c += kWarpSize) {
            const float m = selected(mask, c);
            const float xhat = r.xhat(c);
            dxr[c] = from_float<T>(r.rstd * (r.g(c) - stats_grad(m, weight * (c1a + f * xhat * b), xhat)));
        }
    }
}

// dscale_c = sum over rows of dy * xhat, dbias_c = sum over rows of dy: a thread per
// column (coalesced across the warp), blockIdx.y a chunk of `chunk_rows` rows whose sums
// go to partial row blockIdx.y; finalize_partials adds the chunks in order.
template <typename T, typename O>
__global__ void __launch_bounds__(WARPNORM_SHARD_FLAT_THREADS) shard_param_grads(const WarpnormShardParamGradsParams p) {
    const T* __restrict__ x = static_cast<const T*>(p.x);
    const O* __restrict__ dy = static_cast<const O*>(p.dy);
    const long long first = (long long)blockIdx.y * p.chunk_rows;
    const long long last = first + p.chunk_rows < p.rows ? first + p.chunk_rows : p.rows;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < p.cols;
         c += (long long)gridDim.x * blockDim.x) {
        float ds = 0.f, db = 0.f;
        for (long long row = first; row < last; ++row) {
            const float shift = p.kind == WARPNORM_LAYER_NORM ? p.mean[row] : 0.f;
            const float d = to_float(dy[row * p.dy_stride + c]);
            ds += d * (to_float(x[row * p.x_stride + c]) - shift) * p.rstd[row];
            db += d;
        }
        if (p.partial_dscale) p.partial_dscale[(long long)blockIdx.y * p.cols + c] = ds;
        if (p.partial_dbias) p.partial_dbias[(long long)blockIdx.y * p.cols + c] = db;
    }
}

// dst[i] = src[i] / divisor, converted through f32: psum / pmean of 16-bit buffers
// accumulate in f32 scratch. src may equal dst (each element is read before it is written).
template <typename S, typename D> __global__ void __launch_bounds__(WARPNORM_SHARD_FLAT_THREADS) cast_scale(const WarpnormCastParams p) {
    const S* src = static_cast<const S*>(p.src);
    D* dst = static_cast<D*>(p.dst);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += (long long)gridDim.x * blockDim.x)
        dst[i] = from_float<D>(to_float(src[i]) / p.divisor);
}

// dst[i] += src[i]: the in-process collective's sums, one rank at a time in a fixed order.
__global__ void __launch_bounds__(WARPNORM_SHARD_FLAT_THREADS) accumulate(const WarpnormAccumulateParams p) {
    float* __restrict__ dst = p.dst;
    const float* __restrict__ src = p.src;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += (long long)gridDim.x * blockDim.x)
        dst[i] += src[i];
}

}  // namespace warpnorm
