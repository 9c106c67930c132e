// Row statistics: the one definition of a row's mean and variance, whatever holds the row
// (registers, a CTA streaming it, a thread walking a channels-first row, a warp walking a
// shard), and the one sum over the threads that share a row.
//
// Two forms, as flax. The sum-of-squares form (RMSNorm, and use_fast_variance) divides the
// count, the sum and the sum of squares of the selected elements into E[x] and E[x^2]. The
// exact variance is two-pass (the mean first, then the sum of squared deviations) over
// the elements a warp holds, and Chan's merge across the warps of a CTA; a CTA that streams
// a row too long to revisit merges it chunk by chunk instead (StreamedStats).
#pragma once

#include "common.cuh"

namespace warpnorm {

// A row's mean and variance. The variance of the sum-of-squares form may be slightly
// negative by cancellation: rstd_of clamps it (and the sharded backward reads its sign).
struct RowStats {
    float mean;
    float var;
};

__device__ __forceinline__ bool uses_sum_of_squares(int kind, bool fast_variance) {
    return kind == WARPNORM_RMS_NORM || fast_variance;
}

// The sum-of-squares form from E[x] and E[x^2]: RMSNorm's mean is 0 and its variance
// E[x^2]; flax's fast variance is E[x^2] - E[x]^2.
__device__ __forceinline__ RowStats stats_from_means(int kind, float mean_x, float mean_sq) {
    if (kind == WARPNORM_RMS_NORM) return {0.f, mean_sq};
    return {mean_x, mean_sq - mean_x * mean_x};
}

// The exact form from a row's moments.
__device__ __forceinline__ RowStats stats_from_moments(Moments m) { return {m.mean, m.m2 / m.n}; }

// What x is centred on before the scaling: LayerNorm subtracts the mean; RMSNorm has none
// and keras rms_scaling, though its variance is centred, does not centre x.
__device__ __forceinline__ float centre_of(int kind, float mean) { return kind == WARPNORM_LAYER_NORM ? mean : 0.f; }

// The normalisation of a row: xhat = (x - centre) * rstd.
struct Normalize {
    float centre, rstd;
    __device__ __forceinline__ float operator()(float x) const { return (x - centre) * rstd; }
    template <int N> __device__ __forceinline__ void apply(const float* x, float* xhat) const {
#pragma unroll
        for (int i = 0; i < N; ++i) xhat[i] = (*this)(x[i]);
    }
};

// The CTA of a register tier whose rows GROUP threads own: a CTA per row beyond a warp,
// else WARPNORM_ROWS_CTA_THREADS threads (enough warps to hide latency, few enough that
// the grid still spreads over every SM for short inputs) holding several rows.
template <int GROUP> struct GroupLayout {
    static constexpr int kThreads = GROUP > kWarpSize ? GROUP : WARPNORM_ROWS_CTA_THREADS;
    static constexpr int kRowsPerCta = kThreads / GROUP;
};

// The threads that share a row and the sums over them; every thread gets the totals.
// GROUP <= 32: aligned groups of GROUP lanes of a warp (1: a thread alone), shuffles only.
// GROUP > 32: the whole CTA, whatever its size, through `scratch` (WARPNORM_CTA_SCRATCH_FLOATS
// floats); then every thread of the CTA must call each sum (they contain barriers).
template <int GROUP> struct RowThreads {
    float* scratch;

    static constexpr int kLanesInWarp = GROUP < kWarpSize ? GROUP : kWarpSize;

    template <int K> __device__ __forceinline__ void sum(float (&v)[K]) const {
        if constexpr (GROUP <= kWarpSize) {
            sum_in_warp(v);
        } else {
            cta_sum<K>(v, scratch);
        }
    }
    // Sums over this thread's warp only (its group, when the group is smaller).
    template <int K> __device__ __forceinline__ void sum_in_warp(float (&v)[K]) const {
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = group_sum<kLanesInWarp>(v[k]);
    }
    // Chan's merge of the warps' moments (every lane of a warp holding its warp's).
    __device__ __forceinline__ Moments merge_warps(Moments m) const {
        if constexpr (GROUP <= kWarpSize) {
            return m;
        } else {
            return cta_merge(m, scratch);
        }
    }
};

// The threads of a CTA-per-row kernel, whose CTA is sized to the row at launch.
using WholeCta = RowThreads<WARPNORM_CTA_MAX_THREADS>;

// The elements a thread holds of a row: `elements.for_each(f)` calls f(weight, value) for
// each of them (weight 1 when the element is selected, else 0); the exact form calls it
// twice, so the elements must be revisitable: registers, or memory read again.
// `elements.count(n)` is the number of selected elements given n, the weights' sum over the
// warp: n itself, or a count known exactly (only for a row held by one warp, where a float
// sum of ones would stall at 2^24).
//
// The first pass, common to both forms: this thread's count, sum and sum of squares of the
// selected elements (the exact form ignores the last).
struct PowerSums {
    float v[3];  // count, sum, sum of squares
};

template <typename Elements> __device__ __forceinline__ PowerSums power_sums(const Elements& elements) {
    PowerSums p = {{0.f, 0.f, 0.f}};
    elements.for_each([&](float w, float x) {
        const float xs = weighted(w, x);
        p.v[0] += w;
        p.v[1] += xs;
        p.v[2] += xs * xs;
    });
    return p;
}

// E[x] and E[x^2] of the row: the sum-of-squares form's statistics, and a shard's partial
// ones.
struct RowMeans {
    float x;
    float sq;
};

template <int GROUP, typename Elements>
__device__ __forceinline__ RowMeans row_means(PowerSums p, const Elements& elements, const RowThreads<GROUP>& threads) {
    threads.sum(p.v);
    const float n = elements.count(p.v[0]);
    return {p.v[1] / n, p.v[2] / n};
}

// The exact form's moments {n, mean, M2} of the row (of the warp, for a row held by a
// single warp: a shard's partial statistics): the mean of the warp from the first pass,
// the squared deviations from it in a second, Chan's merge across warps.
template <int GROUP, typename Elements>
__device__ __forceinline__ Moments row_moments(PowerSums p, const Elements& elements, const RowThreads<GROUP>& threads) {
    float sums[2] = {p.v[0], p.v[1]};
    threads.sum_in_warp(sums);
    const float n = elements.count(sums[0]);
    const float mean = sums[1] / n;
    float m2[1] = {0.f};
    elements.for_each([&](float w, float x) {
        const float d = weighted(w, x - mean);
        m2[0] += d * d;
    });
    threads.sum_in_warp(m2);
    return threads.merge_warps({n, mean, m2[0]});
}

// The statistics of a row from the elements this thread holds.
template <int GROUP, typename Elements>
__device__ __forceinline__ RowStats row_stats(const Elements& elements, const RowThreads<GROUP>& threads, int kind,
                                              bool fast_variance) {
    const PowerSums p = power_sums(elements);
    if (uses_sum_of_squares(kind, fast_variance)) {
        const RowMeans means = row_means(p, elements, threads);
        return stats_from_means(kind, means.x, means.sq);
    }
    return stats_from_moments(row_moments(p, elements, threads));
}

// The statistics of a row that a CTA streams VEC elements at a time, too long for its
// threads to revisit: the sum-of-squares form sums as row_stats does; the exact form keeps
// a thread's moments, each chunk two-pass then merged (Chan), so that a long row never
// accumulates a large sum of squares, then merges the threads' in a fixed order.
struct StreamedStats {
    bool sum_of_squares;
    float sums[3];  // count, sum, sum of squares
    Moments moments;

    __device__ __forceinline__ explicit StreamedStats(bool sum_of_squares)
        : sum_of_squares(sum_of_squares), sums{0.f, 0.f, 0.f}, moments{0.f, 0.f, 0.f} {}

    template <int VEC> __device__ __forceinline__ void add(const float* x, const float* w) {
        if (sum_of_squares) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float xs = weighted(w[i], x[i]);
                sums[0] += w[i];
                sums[1] += xs;
                sums[2] += xs * xs;
            }
        } else {
            moments = add_chunk<VEC>(moments, x, w);
        }
    }

    __device__ __forceinline__ RowStats finish(const WholeCta& threads, int kind) {
        if (sum_of_squares) {
            threads.sum(sums);
            return stats_from_means(kind, sums[1] / sums[0], sums[2] / sums[0]);
        }
        return stats_from_moments(threads.merge_warps(warp_merge(moments)));
    }

  private:
    template <int N> __device__ __forceinline__ static Moments add_chunk(Moments m, const float* x, const float* w) {
        float n = 0.f, s = 0.f;
#pragma unroll
        for (int i = 0; i < N; ++i) {
            n += w[i];
            s += weighted(w[i], x[i]);
        }
        if (n == 0.f) return m;
        const float mean = s / n;
        float m2 = 0.f;
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const float d = weighted(w[i], x[i] - mean);
            m2 += d * d;
        }
        return chan_merge(m, {n, mean, m2});
    }

    // Chan's merge across a warp with a butterfly; lane 0 ends with the warp's moments
    // (which is what cta_merge reads).
    __device__ __forceinline__ static Moments warp_merge(Moments m) {
#pragma unroll
        for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
            const Moments other = {__shfl_down_sync(kFullMask, m.n, offset),
                                   __shfl_down_sync(kFullMask, m.mean, offset),
                                   __shfl_down_sync(kFullMask, m.m2, offset)};
            m = chan_merge(m, other);
        }
        return m;
    }
};

}  // namespace warpnorm
