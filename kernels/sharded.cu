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
#include "io.cuh"
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

// The part of a shard's row a lane holds (columns lane, lane + 32, ...), read from global
// memory in each pass of the statistics.
template <typename T> struct ShardElements {
    TensorIn<T> x;  // the row
    MaskIn mask;
    long long mask_row;  // the row's first element in the mask
    long long cols;
    int lane;

    template <typename F> __device__ __forceinline__ void for_each(F f) const {
        for (long long c = lane; c < cols; c += kWarpSize) f(mask[mask_row + c], x[c]);
    }
    __device__ __forceinline__ float count(float n) const { return mask.base ? n : float(cols); }
};

// Per-shard statistics of the selected elements of each row. A row with none selected
// gets NaN means (0 / 0), as flax's mean(where=all false): NaN for the whole group.
template <typename T> __global__ void __launch_bounds__(kShardThreads) shard_row_stats(const WarpnormShardStatsParams p) {
    const WarpRows w = warp_rows();
    const RowThreads<kWarpSize> warp{nullptr};
    for (long long row = w.first; row < p.rows; row += w.step) {
        const ShardElements<T> elements{
            {static_cast<const T*>(p.x) + row * p.x_stride}, {p.mask}, row * p.mask_stride, p.cols, w.lane};
        const PowerSums sums = power_sums(elements);
        if (p.mode == kShardMeans) {
            const RowMeans means = row_means(sums, elements, warp);
            if (w.lane == 0) {
                store(&p.out[2 * row], means.x);
                store(&p.out[2 * row + 1], means.sq);
            }
        } else {
            // Exact two-pass: the second pass re-reads the row (from L1 / L2).
            const Moments m = row_moments(sums, elements, warp);
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
        for (int q = 0; q < group; ++q) sum += load(&stats[3 * ((long long)q * rows + row) + 1]);
        mean = sum * inv_k;
        float spread = 0.f;
        for (int q = 0; q < group; ++q) {
            const float* s = stats + 3 * ((long long)q * rows + row);
            const float d = load(&s[1]) - mean;
            spread += load(&s[2]) / load(&s[0]) + d * d;
        }
        var = spread * inv_k;
    } else {
        // stats: [rows][2], summed over the group: pmean divides by the group size.
        const RowStats st =
            stats_from_means(kind, load(&stats[2 * row]) / float(group), load(&stats[2 * row + 1]) / float(group));
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
    const TensorIn<T> x{static_cast<const T*>(p.x)};
    const auto out = affine_out(typed_param<P>(p.scale, 1.f), typed_param<P>(p.bias, 0.f), TensorOut<O>{static_cast<O*>(p.y)});
    for (long long row = w.first; row < p.rows; row += w.step) {
        // Every lane merges the same values in the same order: no broadcast needed.
        const ShardRowStats st = combine_stats(p.stats, row, p.rows, p.group, p.eps, p.kind, p.mode);
        if (w.lane == 0) {
            if (p.mean) store(&p.mean[row], st.mean);
            if (p.rstd) store(&p.rstd[row], st.rstd);
            if (p.dvar) store(&p.dvar[row], st.dvar);
        }
        const Normalize normalize{centre_of(p.kind, st.mean), st.rstd};
        for (long long c = w.lane; c < p.cols; c += kWarpSize) {
            out.store(row * p.y_stride + c, c, normalize(x[row * p.x_stride + c]));
        }
    }
}

// What x is centred on in the backward: RMSNorm saves no mean.
__device__ __forceinline__ float saved_centre(const float* mean, long long row, int kind) {
    return kind == WARPNORM_LAYER_NORM ? load(&mean[row]) : 0.f;
}

// One row of the backward's inputs: x, dy and the saved statistics.
template <typename T, typename P, typename O> struct ShardBwdRow {
    TensorIn<T> x;
    TensorIn<O> dy;
    ParamIn<TensorIn<P>> scale;
    float shift, rstd;

    __device__ __forceinline__ ShardBwdRow(const WarpnormShardBwdParams& p, long long row)
        : x{static_cast<const T*>(p.x) + row * p.x_stride},
          dy{static_cast<const O*>(p.dy) + row * p.dy_stride},
          scale(typed_param<P>(p.scale, 1.f)),
          shift(saved_centre(p.mean, row, p.kind)),
          rstd(load(&p.rstd[row])) {}
    // g = dy * scale of column c.
    __device__ __forceinline__ float g(long long c) const { return dy[c] * scale[c]; }
    __device__ __forceinline__ float centred(long long c) const { return x[c] - shift; }
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
            store(&p.sums[2 * row], sums[0]);
            store(&p.sums[2 * row + 1], sums[1]);
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
        const float f = p.dvar ? load(&p.dvar[row]) : 1.f;
        const float c1a = p.kind == WARPNORM_LAYER_NORM ? load(&p.sums[2 * row]) : 0.f;
        const float b = load(&p.sums[2 * row + 1]);
        const MaskIn mask{p.mask};
        const long long mask_row = row * p.mask_stride;
        float weight = p.weight;
        if (mask.base) {
            float count[1] = {0.f};
            for (long long c = w.lane; c < p.cols; c += kWarpSize) count[0] += mask[mask_row + c];
            RowThreads<kWarpSize>{nullptr}.sum(count);
            weight /= count[0];
        }
        const TensorOut<T> dx{static_cast<T*>(p.dx) + row * p.dx_stride};
        for (long long c = w.lane; c < p.cols; c += kWarpSize) {
            const float m = mask[mask_row + c];
            const float xhat = r.xhat(c);
            dx.store(c, r.rstd * (r.g(c) - stats_grad(m, weight * (c1a + f * xhat * b), xhat)));
        }
    }
}

// dscale_c = sum over rows of dy * xhat, dbias_c = sum over rows of dy: a thread per
// column (coalesced across the warp), blockIdx.y a chunk of `chunk_rows` rows whose sums
// go to partial row blockIdx.y; finalize_partials adds the chunks in order.
template <typename T, typename O>
__global__ void __launch_bounds__(WARPNORM_SHARD_FLAT_THREADS) shard_param_grads(const WarpnormShardParamGradsParams p) {
    const TensorIn<T> x{static_cast<const T*>(p.x)};
    const TensorIn<O> dy{static_cast<const O*>(p.dy)};
    const long long first = (long long)blockIdx.y * p.chunk_rows;
    const long long last = first + p.chunk_rows < p.rows ? first + p.chunk_rows : p.rows;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < p.cols;
         c += (long long)gridDim.x * blockDim.x) {
        float ds = 0.f, db = 0.f;
        for (long long row = first; row < last; ++row) {
            const float d = dy[row * p.dy_stride + c];
            ds += d * (x[row * p.x_stride + c] - saved_centre(p.mean, row, p.kind)) * load(&p.rstd[row]);
            db += d;
        }
        if (p.partial_dscale) store(&p.partial_dscale[(long long)blockIdx.y * p.cols + c], ds);
        if (p.partial_dbias) store(&p.partial_dbias[(long long)blockIdx.y * p.cols + c], db);
    }
}

// dst[i] = src[i] / divisor, converted through f32: psum / pmean of 16-bit buffers
// accumulate in f32 scratch. src may equal dst (each element is read before it is written).
template <typename S, typename D> __global__ void __launch_bounds__(WARPNORM_SHARD_FLAT_THREADS) cast_scale(const WarpnormCastParams p) {
    const TensorIn<S> src{static_cast<const S*>(p.src)};
    const TensorOut<D> dst{static_cast<D*>(p.dst)};
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += (long long)gridDim.x * blockDim.x)
        dst.store(i, src[i] / p.divisor);
}

// dst[i] += src[i]: the in-process collective's sums, one rank at a time in a fixed order.
__global__ void __launch_bounds__(WARPNORM_SHARD_FLAT_THREADS) accumulate(const WarpnormAccumulateParams p) {
    float* __restrict__ dst = p.dst;
    const float* __restrict__ src = p.src;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += (long long)gridDim.x * blockDim.x)
        store(&dst[i], load(&dst[i]) + load(&src[i]));
}

}  // namespace warpnorm
