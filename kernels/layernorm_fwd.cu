// Forward LayerNorm / RMSNorm over the rows of a 2-D view [rows, cols].
//
// Two kernels cover every row length:
//  * layer_norm_fwd: the row lives in registers. A group of GROUP threads owns a row, each
//    thread VECS vectors of VEC elements, interleaved so a warp's loads are coalesced.
//    GROUP < 32 packs several rows into a warp (tiny rows), GROUP == 32 is a warp per row,
//    GROUP > 32 a CTA per row. Only whole vectors are predicated (cols % VEC == 0). The
//    CTA stages scale and bias in shared memory once, for all the rows it visits.
//  * layer_norm_fwd_cta: a CTA per row for any length; the row is re-read from shared memory
//    (when it fits) or from global memory (L2) for the second pass.
//
// Statistics are f32, computed as stats.cuh defines them for every path.
#include "io.cuh"
#include "stats.cuh"

namespace warpnorm {

// Which elements of a thread's registers count towards the statistics: whole vectors
// inside the row, and of those the elements the flax mask selects (when there is one).
template <int VEC, int VECS, int GROUP> struct RowWeights {
    MaskIn mask;  // this row's mask
    int lane;
    bool in_row[VECS];

    __device__ __forceinline__ float operator()(int v, int i) const {
        return in_row[v] ? mask[(long long)(v * GROUP + lane) * VEC + i] : 0.f;
    }
};

// The part of a row a thread holds in registers, as row_stats visits it.
template <int VEC, int VECS, int GROUP> struct RegisterElements {
    const float (&x)[VEC * VECS];
    const RowWeights<VEC, VECS, GROUP>& w;

    template <typename F> __device__ __forceinline__ void for_each(F f) const {
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) f(w(v, i), x[v * VEC + i]);
        }
    }
    __device__ __forceinline__ float count(float n) const { return n; }
};

// The forward's output step: the affine parameters and y, in the dtypes of the call.
template <typename T, typename Params> __device__ __forceinline__ auto forward_out(const Params& p) {
    return affine_out(mixed_param<T>(p.scale, p.param_dtype, 1.f), mixed_param<T>(p.bias, p.param_dtype, 0.f),
                      MixedOut<T>(p.y, p.out_dtype));
}

// Scale and bias of the register tiers, staged by the CTA in `staged` (2 x cols floats of
// its dynamic shared memory, select::forward_rows_smem) as f32, their identities where the
// module has none, before its first row: its rows then read them from shared memory, with
// no branch on the parameter dtype. Read from global memory with every row instead, the
// parameter and output dtype branches of each vector multiply: NVVM spent 5-15 s on each
// warp tier with 2-4 vectors a lane duplicating the combinations, into 2-5x the code (T20
// in docs/TUNING.md).
template <typename T, int VEC>
__device__ __forceinline__ auto staged_forward_out(const WarpnormFwdParams& p, float* staged) {
    float* scale = staged;
    float* bias = staged + p.cols;
    const auto scale_in = mixed_param<T>(p.scale, p.param_dtype, 1.f);
    const auto bias_in = mixed_param<T>(p.bias, p.param_dtype, 0.f);
    for (long long col = (long long)threadIdx.x * VEC; col < p.cols; col += (long long)blockDim.x * VEC) {
        float v[VEC];
        scale_in.template load<VEC>(col, v);
        store_vec<float, VEC>(scale + col, v);
        bias_in.template load<VEC>(col, v);
        store_vec<float, VEC>(bias + col, v);
    }
    __syncthreads();
    return affine_out(TensorIn<float>{scale}, TensorIn<float>{bias}, MixedOut<T>(p.y, p.out_dtype));
}

// Registers a thread of a register tier may use: the output dtype is a runtime branch
// (MixedOut; the parameter dtype was one too before the parameters were staged), and left
// free ptxas spent ~20 more registers keeping both paths' values live, halving the
// occupancy of the 16-bit CTA tiers. With this budget none spills on sm_80 or sm_90
// (tests/kernel_resources.rs); staged, they use 32-53 (16 elements a thread or fewer) and
// 70 (32) on sm_90.
template <int ELEMS> constexpr int kFwdRegisters = ELEMS <= 16 ? 64 : 80;

template <typename T, int VEC, int VECS, int GROUP>
__global__ void __launch_bounds__(GroupLayout<GROUP>::kThreads,
                                  ctas_for_registers(GroupLayout<GROUP>::kThreads, kFwdRegisters<VEC * VECS>))
    layer_norm_fwd(const WarpnormFwdParams p) {
    constexpr int kElems = VEC * VECS;
    constexpr int kRowsPerCta = GroupLayout<GROUP>::kRowsPerCta;

    const int lane = threadIdx.x % GROUP;
    const int slot = threadIdx.x / GROUP;
    const TensorIn<T> x_in{static_cast<const T*>(p.x)};
    // Dynamic shared memory: the staged parameters, then the reduction scratch (3 floats a
    // warp; used by the CTA tiers only).
    WARPNORM_DYNAMIC_SMEM(smem);
    float* scratch = smem + 2 * p.cols;
    const auto out = staged_forward_out<T, VEC>(p, smem);

    // The loop bound is uniform across the CTA so that every thread reaches every shuffle
    // and barrier; rows past the end are carried along with zero weight.
    for (long long first = (long long)blockIdx.x * kRowsPerCta; first < p.rows;
         first += (long long)gridDim.x * kRowsPerCta) {
        const long long row = first + slot;
        const bool row_valid = row < p.rows;

        float x[kElems];
        RowWeights<VEC, VECS, GROUP> w;
        w.mask = MaskIn{(p.mask && row_valid) ? p.mask + row * p.mask_stride : nullptr};
        w.lane = lane;
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
            const long long col = (long long)(v * GROUP + lane) * VEC;
            w.in_row[v] = row_valid && col < p.cols;
            if (w.in_row[v]) {
                x_in.template load<VEC>(row * p.x_stride + col, &x[v * VEC]);
            } else {
#pragma unroll
                for (int i = 0; i < VEC; ++i) x[v * VEC + i] = 0.f;
            }
        }

        const RowStats st = row_stats(RegisterElements<VEC, VECS, GROUP>{x, w}, RowThreads<GROUP>{scratch}, p.kind,
                                      p.fast_variance);
        const float rstd = rstd_of(st.var, p.eps);
        if (row_valid && lane == 0) {
            if (p.mean) store(&p.mean[row], st.mean);
            if (p.rstd) store(&p.rstd[row], rstd);
        }
        const Normalize normalize{centre_of(p.kind, st.mean), rstd};
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
            const long long col = (long long)(v * GROUP + lane) * VEC;
            if (!w.in_row[v]) continue;
            float xhat[VEC];
            normalize.apply<VEC>(&x[v * VEC], xhat);
            out.template store<VEC>(row * p.y_stride + col, col, xhat);
        }
    }
}

// Shared-memory layout of layer_norm_fwd_cta: the reduction scratch first (so that the
// row cache that follows stays 16-byte aligned), then the cached row (CACHE only).
constexpr int kCtaScratchFloats = WARPNORM_CTA_SCRATCH_FLOATS;

// Visits a thread's columns first, first + step, ... below `cols` in batches of LOADS:
// load(k, col) for each column of a batch, then use(k, col) for each, so that the batch's
// loads are in flight together; `use` sees the columns in the same order as LOADS = 1.
template <int LOADS, typename Load, typename Use>
__device__ __forceinline__ void in_batches(long long first, long long cols, long long step, Load load, Use use) {
    for (long long base = first; base < cols; base += LOADS * step) {
#pragma unroll
        for (int k = 0; k < LOADS; ++k) {
            if (base + k * step < cols) load(k, base + k * step);
        }
#pragma unroll
        for (int k = 0; k < LOADS; ++k) {
            if (base + k * step < cols) use(k, base + k * step);
        }
    }
}

// LOADS: the vectors of x a thread loads in the first pass before it sums the first
// (tiers::fwd_cta_loads_v2). Summing each as it arrives (v1's 1) keeps one 16-byte load in
// flight per thread, 16 KiB per SM at 1024 threads, below the ~25 KiB an SM needs in
// flight to draw its share of an H100 / H200's memory bandwidth over ~700 ns of latency;
// v2 keeps 32-64 KiB in flight.
template <typename T, int VEC, bool CACHE, int LOADS>
__global__ void __launch_bounds__(WARPNORM_CTA_MAX_THREADS, 1) layer_norm_fwd_cta(const WarpnormFwdParams p) {
    WARPNORM_DYNAMIC_SMEM(smem);
    float* scratch = smem;
    T* cached_row = reinterpret_cast<T*>(smem + kCtaScratchFloats);
    const T* x_base = static_cast<const T*>(p.x);
    const MaskIn mask{p.mask};
    const auto out = forward_out<T>(p);
    const long long step = (long long)blockDim.x * VEC;
    const bool sum_of_squares = uses_sum_of_squares(p.kind, p.fast_variance);

    for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const T* x_row = x_base + row * p.x_stride;
        const long long first = (long long)threadIdx.x * VEC;
        StreamedStats stats(sum_of_squares);
        // x's vectors kept raw in the row cache and widened to f32 for the sums: the one
        // place x is held in its storage dtype.
        Pack<T, VEC> raw[LOADS];
        in_batches<LOADS>(
            first, p.cols, step, [&](int k, long long col) { raw[k] = load_pack<T, VEC>(x_row + col); },
            [&](int k, long long col) {
                if constexpr (CACHE) store_pack<T, VEC>(cached_row + col, raw[k]);
                float x[VEC], w[VEC];
#pragma unroll
                for (int i = 0; i < VEC; ++i) x[i] = to_float(raw[k].v[i]);
                mask.load<VEC>(row * p.mask_stride + col, w);
                stats.add<VEC>(x, w);
            });
        const RowStats st = stats.finish(WholeCta{scratch}, p.kind);
        const float rstd = rstd_of(st.var, p.eps);
        if (threadIdx.x == 0) {
            if (p.mean) store(&p.mean[row], st.mean);
            if (p.rstd) store(&p.rstd[row], rstd);
        }
        const Normalize normalize{centre_of(p.kind, st.mean), rstd};
        // Each thread re-reads exactly the columns it cached, so no barrier is needed here.
        // One vector at a time: batching this pass too (x from the cache or L2, and scale
        // and bias) spilled 16-24 bytes within the 64 registers (T16).
        const TensorIn<T> x_again{CACHE ? cached_row : x_row};
        for (long long col = first; col < p.cols; col += step) {
            float x[VEC], xhat[VEC];
            x_again.template load<VEC>(col, x);
            normalize.apply<VEC>(x, xhat);
            out.template store<VEC>(row * p.y_stride + col, col, xhat);
        }
        if constexpr (CACHE) __syncthreads();  // the next row overwrites the cache
    }
}

// A channels-first row, read from global memory in each pass of row_stats: every element
// is selected (the strided kernels take no mask) and the count is cols.
template <typename T> struct StridedElements {
    TensorIn<T> x;  // from the row's first element; element c is c * inner further
    long long cols, inner;

    template <typename F> __device__ __forceinline__ void for_each(F f) const {
        for (long long c = 0; c < cols; ++c) f(1.f, x[c * inner]);
    }
    __device__ __forceinline__ float count(float) const { return float(cols); }
};

// Channels-first normalisation ([outer, cols, inner] over cols) without a transpose: a
// thread per row, consecutive threads on consecutive inner positions so every column step
// is a coalesced load across the warp.
template <typename T>
__global__ void __launch_bounds__(WARPNORM_STRIDED_THREADS) layer_norm_fwd_strided(const WarpnormStridedFwdParams p) {
    const long long rows = p.outer * p.inner;
    const auto out = forward_out<T>(p);
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < rows;
         row += (long long)gridDim.x * blockDim.x) {
        const long long o = row / p.inner, i = row % p.inner;
        const long long first = o * p.cols * p.inner + i;
        const StridedElements<T> x{{static_cast<const T*>(p.x) + first}, p.cols, p.inner};

        const RowStats st = row_stats(x, RowThreads<1>{nullptr}, p.kind, p.fast_variance);
        const float rstd = rstd_of(st.var, p.eps);
        if (p.mean) store(&p.mean[row], st.mean);
        if (p.rstd) store(&p.rstd[row], rstd);
        const Normalize normalize{centre_of(p.kind, st.mean), rstd};
        for (long long c = 0; c < p.cols; ++c) out.store(first + c * p.inner, c, normalize(x.x[c * p.inner]));
    }
}

}  // namespace warpnorm
