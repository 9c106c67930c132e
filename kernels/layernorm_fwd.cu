// Forward LayerNorm / RMSNorm over the rows of a 2-D view [rows, cols].
//
// Two kernels cover every row length:
//  * layer_norm_fwd: the row lives in registers. A group of GROUP threads owns a row, each
//    thread VECS vectors of VEC elements, interleaved so a warp's loads are coalesced.
//    GROUP < 32 packs several rows into a warp (tiny rows), GROUP == 32 is a warp per row,
//    GROUP > 32 a CTA per row. Only whole vectors are predicated (cols % VEC == 0).
//  * layer_norm_fwd_cta: a CTA per row for any length; the row is re-read from shared memory
//    (when it fits) or from global memory (L2) for the second pass.
//
// Statistics are f32. The exact variance is two-pass from registers (mean first, then the
// sum of squared deviations) within a warp, and Chan's merge across warps. With
// fast_variance (flax use_fast_variance) it is E[x^2] - E[x]^2 clamped at 0.
#include "common.cuh"

namespace warpnorm {

// Threads per CTA when a group is at most a warp: enough warps to hide latency, few enough
// that the grid still spreads over every SM for short inputs.
constexpr int kRowsBlock = WARPNORM_ROWS_CTA_THREADS;

template <int GROUP> struct GroupLayout {
    static constexpr int kThreads = GROUP > kWarpSize ? GROUP : kRowsBlock;
    static constexpr int kRowsPerCta = kThreads / GROUP;
};

// Sum of K values over the GROUP threads of a row: shuffles only up to a warp; through
// shared memory beyond that.
template <int GROUP, int K> __device__ __forceinline__ void row_sum(float (&v)[K], float* scratch) {
    if constexpr (GROUP <= kWarpSize) {
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = group_sum<GROUP>(v[k]);
    } else {
        cta_sum<K>(v, scratch);
    }
}

// Which elements of a thread's registers count towards the statistics: whole vectors
// inside the row, and of those the elements the flax mask selects (when there is one).
template <int VEC, int VECS, int GROUP> struct RowWeights {
    const unsigned char* mask;  // this row's mask, or null
    int lane;
    bool in_row[VECS];

    __device__ __forceinline__ float operator()(int v, int i) const {
        if (!in_row[v]) return 0.f;
        if (!mask) return 1.f;
        return load(&mask[(long long)(v * GROUP + lane) * VEC + i]) ? 1.f : 0.f;
    }
};

// Mean and variance of one row held in registers (VEC * VECS elements per thread, GROUP
// threads per row), over the elements `w` selects. Every thread of the group gets the same
// result. RMSNorm has mean 0 and variance E[x^2].
template <int GROUP, int VEC, int VECS, typename Weights>
__device__ __forceinline__ float2 row_mean_var(const float (&x)[VEC * VECS], const Weights& w, int kind,
                                               bool fast_variance, float* scratch) {
    float n = 0.f, s = 0.f;
#pragma unroll
    for (int v = 0; v < VECS; ++v) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            n += w(v, i);
            s += weighted(w(v, i), x[v * VEC + i]);
        }
    }
    if (kind == WARPNORM_RMS_NORM || fast_variance) {
        float q = 0.f;
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float xs = weighted(w(v, i), x[v * VEC + i]);
                q += xs * xs;
            }
        }
        float sums[3] = {n, s, q};
        row_sum<GROUP, 3>(sums, scratch);
        if (kind == WARPNORM_RMS_NORM) return make_float2(0.f, sums[2] / sums[0]);
        const float mean = sums[1] / sums[0];
        return make_float2(mean, clamp_nonnegative(sums[2] / sums[0] - mean * mean));
    }
    // Exact two-pass within the warp (or the group, when it is smaller than a warp) ...
    constexpr int kLanes = GROUP < kWarpSize ? GROUP : kWarpSize;
    n = group_sum<kLanes>(n);
    s = group_sum<kLanes>(s);
    const float mean = s / n;
    float m2 = 0.f;
#pragma unroll
    for (int v = 0; v < VECS; ++v) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const float d = weighted(w(v, i), x[v * VEC + i] - mean);
            m2 += d * d;
        }
    }
    m2 = group_sum<kLanes>(m2);
    if constexpr (GROUP <= kWarpSize) {
        return make_float2(mean, m2 / n);
    } else {
        // ... and Chan's merge of the warps' partial moments across the CTA.
        const Moments row = cta_merge({n, mean, m2}, scratch);
        return make_float2(row.mean, row.m2 / row.n);
    }
}

// Applies the normalisation to VEC elements starting at column `col` and stores them.
template <typename T, int VEC>
__device__ __forceinline__ void normalize_store(const WarpnormFwdParams& p, const float* x, float mean, float rstd,
                                                long long row, long long col) {
    float scale[VEC], bias[VEC], y[VEC];
    if (p.scale) {
        MixedIn<T>(p.scale, p.param_dtype).template load<VEC>(col, scale);
    } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) scale[i] = 1.f;
    }
    if (p.bias) {
        MixedIn<T>(p.bias, p.param_dtype).template load<VEC>(col, bias);
    } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) bias[i] = 0.f;
    }
    // keras rms_scaling uses the centred variance but does not centre x.
    const float shift = p.kind == WARPNORM_LAYER_NORM ? mean : 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) y[i] = (x[i] - shift) * rstd * scale[i] + bias[i];
    MixedOut<T>(p.y, p.out_dtype).template store<VEC>(row * p.y_stride + col, y);
}

// Weights of VEC elements of a row: 1 when the element counts towards the statistics.
template <int VEC>
__device__ __forceinline__ void load_weights(const WarpnormFwdParams& p, long long row, long long col, float* w) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) w[i] = (!p.mask || load(&p.mask[row * p.mask_stride + col + i])) ? 1.f : 0.f;
}

// Registers a thread of a register tier may use: the parameter and output dtypes are
// runtime branches (MixedIn / MixedOut), and left free ptxas spends ~20 more registers
// keeping both paths' values live, halving the occupancy of the 16-bit CTA tiers. With
// this budget none spills on sm_80 or sm_90 (tests/kernel_resources.rs).
template <int ELEMS> constexpr int kFwdRegisters = ELEMS <= 16 ? 64 : 80;

template <typename T, int VEC, int VECS, int GROUP>
__global__ void __launch_bounds__(GroupLayout<GROUP>::kThreads,
                                  ctas_for_registers(GroupLayout<GROUP>::kThreads, kFwdRegisters<VEC * VECS>))
    layer_norm_fwd(const WarpnormFwdParams p) {
    constexpr int kElems = VEC * VECS;
    constexpr int kRowsPerCta = GroupLayout<GROUP>::kRowsPerCta;
    __shared__ float scratch[3 * GroupLayout<GROUP>::kThreads / kWarpSize];

    const int lane = threadIdx.x % GROUP;
    const int slot = threadIdx.x / GROUP;
    const T* x_base = static_cast<const T*>(p.x);

    // The loop bound is uniform across the CTA so that every thread reaches every shuffle
    // and barrier; rows past the end are carried along with zero weight.
    for (long long first = (long long)blockIdx.x * kRowsPerCta; first < p.rows;
         first += (long long)gridDim.x * kRowsPerCta) {
        const long long row = first + slot;
        const bool row_valid = row < p.rows;

        float x[kElems];
        RowWeights<VEC, VECS, GROUP> w;
        w.mask = (p.mask && row_valid) ? p.mask + row * p.mask_stride : nullptr;
        w.lane = lane;
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
            const long long col = (long long)(v * GROUP + lane) * VEC;
            w.in_row[v] = row_valid && col < p.cols;
            if (w.in_row[v]) {
                load_vec<T, VEC>(x_base + row * p.x_stride + col, &x[v * VEC]);
            } else {
#pragma unroll
                for (int i = 0; i < VEC; ++i) x[v * VEC + i] = 0.f;
            }
        }

        const float2 mv = row_mean_var<GROUP, VEC, VECS>(x, w, p.kind, p.fast_variance, scratch);
        const float rstd = rstd_of(mv.y, p.eps);
        if (row_valid && lane == 0) {
            if (p.mean) store(&p.mean[row], mv.x);
            if (p.rstd) store(&p.rstd[row], rstd);
        }
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
            const long long col = (long long)(v * GROUP + lane) * VEC;
            if (w.in_row[v]) normalize_store<T, VEC>(p, &x[v * VEC], mv.x, rstd, row, col);
        }
    }
}

// Shared-memory layout of layer_norm_fwd_cta: the reduction scratch first (so that the
// row cache that follows stays 16-byte aligned), then the cached row (CACHE only).
constexpr int kCtaScratchFloats = WARPNORM_CTA_SCRATCH_FLOATS;

// Merges VEC fresh elements into a thread's running moments: a two-pass over the chunk,
// then Chan's merge, so that long rows never accumulate a large sum of squares.
template <int VEC> __device__ __forceinline__ Moments add_chunk(Moments m, const float* x, const float* w) {
    float n = 0.f, s = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        n += w[i];
        s += weighted(w[i], x[i]);
    }
    if (n == 0.f) return m;
    const float mean = s / n;
    float m2 = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        const float d = weighted(w[i], x[i] - mean);
        m2 += d * d;
    }
    return chan_merge(m, {n, mean, m2});
}

// Chan's merge across a warp with a butterfly; lane 0 ends with the warp's moments.
__device__ __forceinline__ Moments warp_merge(Moments m) {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        const Moments other = {__shfl_down_sync(kFullMask, m.n, offset), __shfl_down_sync(kFullMask, m.mean, offset),
                               __shfl_down_sync(kFullMask, m.m2, offset)};
        m = chan_merge(m, other);
    }
    return m;
}

template <typename T, int VEC, bool CACHE>
__global__ void __launch_bounds__(WARPNORM_CTA_MAX_THREADS, 1) layer_norm_fwd_cta(const WarpnormFwdParams p) {
    WARPNORM_DYNAMIC_SMEM(smem);
    float* scratch = smem;
    T* cached_row = reinterpret_cast<T*>(smem + kCtaScratchFloats);
    const T* x_base = static_cast<const T*>(p.x);
    const long long step = (long long)blockDim.x * VEC;
    const bool sum_of_squares = p.kind == WARPNORM_RMS_NORM || p.fast_variance;

    for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const T* x_row = x_base + row * p.x_stride;
        Moments m = {0.f, 0.f, 0.f};
        float sums[3] = {0.f, 0.f, 0.f};  // n, sum x, sum x^2 (sum-of-squares forms)
        for (long long col = (long long)threadIdx.x * VEC; col < p.cols; col += step) {
            // One 16-byte load: kept raw in the row cache, widened to f32 for the sums.
            const Pack<T, VEC> raw = load_pack<T, VEC>(x_row + col);
            if constexpr (CACHE) store_pack<T, VEC>(cached_row + col, raw);
            float x[VEC], w[VEC];
#pragma unroll
            for (int i = 0; i < VEC; ++i) x[i] = to_float(raw.v[i]);
            load_weights<VEC>(p, row, col, w);
            if (sum_of_squares) {
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const float xs = weighted(w[i], x[i]);
                    sums[0] += w[i];
                    sums[1] += xs;
                    sums[2] += xs * xs;
                }
            } else {
                m = add_chunk<VEC>(m, x, w);
            }
        }
        float mean, var;
        if (sum_of_squares) {
            cta_sum<3>(sums, scratch);
            mean = p.kind == WARPNORM_RMS_NORM ? 0.f : sums[1] / sums[0];
            var = p.kind == WARPNORM_RMS_NORM ? sums[2] / sums[0] : sums[2] / sums[0] - mean * mean;
        } else {
            const Moments row_m = cta_merge(warp_merge(m), scratch);
            mean = row_m.mean;
            var = row_m.m2 / row_m.n;
        }
        const float rstd = rstd_of(var, p.eps);
        if (threadIdx.x == 0) {
            if (p.mean) store(&p.mean[row], mean);
            if (p.rstd) store(&p.rstd[row], rstd);
        }
        // Each thread re-reads exactly the columns it cached, so no barrier is needed here.
        for (long long col = (long long)threadIdx.x * VEC; col < p.cols; col += step) {
            float x[VEC];
            load_vec<T, VEC>(CACHE ? cached_row + col : x_row + col, x);
            normalize_store<T, VEC>(p, x, mean, rstd, row, col);
        }
        if constexpr (CACHE) __syncthreads();  // the next row overwrites the cache
    }
}

// Channels-first normalisation ([outer, cols, inner] over cols) without a transpose: a
// thread per row, consecutive threads on consecutive inner positions so every column step
// is a coalesced load across the warp.
template <typename T>
__global__ void __launch_bounds__(WARPNORM_STRIDED_THREADS) layer_norm_fwd_strided(const WarpnormStridedFwdParams p) {
    const long long rows = p.outer * p.inner;
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < rows;
         row += (long long)gridDim.x * blockDim.x) {
        const long long o = row / p.inner, i = row % p.inner;
        const T* x = static_cast<const T*>(p.x) + o * p.cols * p.inner + i;
        const long long first = o * p.cols * p.inner + i;
        const MixedIn<T> scale(p.scale, p.param_dtype), bias(p.bias, p.param_dtype);
        const MixedOut<T> y(p.y, p.out_dtype);

        float mean = 0.f, var;
        const float n = float(p.cols);
        if (p.kind == WARPNORM_RMS_NORM || p.fast_variance) {
            float s = 0.f, q = 0.f;
            for (long long c = 0; c < p.cols; ++c) {
                const float v = to_float(load(&x[c * p.inner]));
                s += v;
                q += v * v;
            }
            if (p.kind != WARPNORM_RMS_NORM) mean = s / n;
            var = q / n - mean * mean;
        } else {
            float s = 0.f;
            for (long long c = 0; c < p.cols; ++c) s += to_float(load(&x[c * p.inner]));
            mean = s / n;
            float m2 = 0.f;
            for (long long c = 0; c < p.cols; ++c) {
                const float d = to_float(load(&x[c * p.inner])) - mean;
                m2 += d * d;
            }
            var = m2 / n;
        }
        const float rstd = rstd_of(var, p.eps);
        if (p.mean) store(&p.mean[row], mean);
        if (p.rstd) store(&p.rstd[row], rstd);
        const float shift = p.kind == WARPNORM_LAYER_NORM ? mean : 0.f;
        for (long long c = 0; c < p.cols; ++c) {
            const float s = p.scale ? scale[c] : 1.f;
            const float b = p.bias ? bias[c] : 0.f;
            const float out = (to_float(load(&x[c * p.inner])) - shift) * rstd * s + b;
            y.template store<1>(first + c * p.inner, &out);
        }
    }
}

}  // namespace warpnorm
