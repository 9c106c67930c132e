// Building blocks shared by every kernel: dtype conversion, vector memory access,
// warp / CTA reductions and Chan's merge of partial statistics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "params.h"

// Dynamic shared memory of a kernel, as floats (the CPU emulation in kernels/emulator/
// defines its own).
#ifndef WARPNORM_DYNAMIC_SMEM
#define WARPNORM_DYNAMIC_SMEM(name) extern __shared__ __align__(16) float name[]
#endif

// Every global-memory access of the kernels, and most of their dynamic shared memory's,
// goes through load_vec / store_vec / load / store below, which report it here: nothing on
// a GPU; the CPU emulation counts the global bytes each launch moves (its byte-traffic
// model, tests/traffic.rs) and checks the shared ones for races.
#ifndef WARPNORM_TRAFFIC
#define WARPNORM_TRAFFIC(address, bytes, is_store) ((void)0)
#endif

namespace warpnorm {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// The CTA kernels' reduction scratch (params.h) holds cta_merge's three floats per warp.
static_assert(WARPNORM_CTA_SCRATCH_FLOATS == 3 * WARPNORM_CTA_MAX_THREADS / kWarpSize, "CTA scratch size");

// ---------------------------------------------------------------------------------------
// dtype conversion: all arithmetic happens in f32, storage is T.
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// ---------------------------------------------------------------------------------------
// Vector memory access. N consecutive elements move in 16-byte chunks (the widest load a
// thread can issue); the host only picks N > 1 when every pointer and row stride involved
// is 16-byte aligned, so the reinterpret_casts below never see a misaligned address.
// ---------------------------------------------------------------------------------------
template <typename T, int N> struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

template <typename T, int N> struct Chunk {
    static constexpr int kElems = (16 / int(sizeof(T))) < N ? (16 / int(sizeof(T))) : N;
};

// One element (of global or shared memory).
template <typename T> __device__ __forceinline__ T load(const T* src) {
    WARPNORM_TRAFFIC(src, sizeof(T), false);
    return *src;
}
template <typename T> __device__ __forceinline__ void store(T* dst, T v) {
    WARPNORM_TRAFFIC(dst, sizeof(T), true);
    *dst = v;
}

// N consecutive elements as they are stored (one 16-byte access when N * sizeof(T) is 16).
template <typename T, int N> __device__ __forceinline__ Pack<T, N> load_pack(const T* src) {
    WARPNORM_TRAFFIC(src, sizeof(Pack<T, N>), false);
    return *reinterpret_cast<const Pack<T, N>*>(src);
}
template <typename T, int N> __device__ __forceinline__ void store_pack(T* dst, const Pack<T, N>& p) {
    WARPNORM_TRAFFIC(dst, sizeof(Pack<T, N>), true);
    *reinterpret_cast<Pack<T, N>*>(dst) = p;
}

template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* __restrict__ src, float* dst) {
    constexpr int kC = Chunk<T, N>::kElems;
#pragma unroll
    for (int c = 0; c < N; c += kC) {
        const Pack<T, kC> p = load_pack<T, kC>(src + c);
#pragma unroll
        for (int i = 0; i < kC; ++i) dst[c + i] = to_float(p.v[i]);
    }
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* __restrict__ dst, const float* src) {
    constexpr int kC = Chunk<T, N>::kElems;
#pragma unroll
    for (int c = 0; c < N; c += kC) {
        Pack<T, kC> p;
#pragma unroll
        for (int i = 0; i < kC; ++i) p.v[i] = from_float<T>(src[c + i]);
        store_pack<T, kC>(dst + c, p);
    }
}

// ---------------------------------------------------------------------------------------
// Asynchronous copies, global -> shared memory (sm_80's cp.async): a thread issues 16-byte
// copies, closes them into a group, and later waits until all but its N latest groups have
// landed. Only the issuing thread may rely on the data after its wait (others need a
// barrier too). The CPU emulation defines its own, whose targets read NaN from the issue
// until the wait.
// ---------------------------------------------------------------------------------------
#ifdef __CUDA_ARCH__
__device__ __forceinline__ void copy_async_16(void* shared_dst, const void* global_src) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
    // .cg: cached in L2 only, as the data is read once from shared memory.
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global_src) : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void copy_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// ---------------------------------------------------------------------------------------
// Tensors stored either in x's dtype T or in f32, as each call chooses (flax's param_dtype
// for scale and bias, dtype for y and dy): a branch that is uniform across the grid, where
// a template argument per tensor would triple the kernels compiled.
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ bool stored_as_f32(int dtype) {
    return dtype == WARPNORM_F32 || dtype == WARPNORM_F32_ROUNDED_TO_X;
}

// dst = src as x's dtype T holds it (keras' cast to x.dtype between f32 values).
template <typename T, int N> __device__ __forceinline__ void round_to(const float* src, float* dst) {
#pragma unroll
    for (int i = 0; i < N; ++i) dst[i] = to_float(from_float<T>(src[i]));
}

template <typename T> struct MixedIn {
    const void* base;
    bool f32;      // else T
    bool rounded;  // f32 values rounded to T once loaded (WARPNORM_F32_ROUNDED_TO_X)
    __device__ __forceinline__ MixedIn(const void* base, int dtype)
        : base(base), f32(stored_as_f32(dtype)), rounded(dtype == WARPNORM_F32_ROUNDED_TO_X) {}
    template <int N> __device__ __forceinline__ void load(long long at, float* dst) const {
        if (f32) {
            load_vec<float, N>(static_cast<const float*>(base) + at, dst);
            if (rounded) round_to<T, N>(dst, dst);
        } else {
            load_vec<T, N>(static_cast<const T*>(base) + at, dst);
        }
    }
    __device__ __forceinline__ float operator[](long long at) const {
        float v;
        load<1>(at, &v);
        return v;
    }
};

template <typename T> struct MixedOut {
    void* base;
    bool f32;      // else T
    bool rounded;  // f32 values rounded to T before they are stored (WARPNORM_F32_ROUNDED_TO_X)
    __device__ __forceinline__ MixedOut(void* base, int dtype)
        : base(base), f32(stored_as_f32(dtype)), rounded(dtype == WARPNORM_F32_ROUNDED_TO_X) {}
    template <int N> __device__ __forceinline__ void store(long long at, const float* src) const {
        if (f32 && rounded) {
            float v[N];
            round_to<T, N>(src, v);
            store_vec<float, N>(static_cast<float*>(base) + at, v);
        } else if (f32) {
            store_vec<float, N>(static_cast<float*>(base) + at, src);
        } else {
            store_vec<T, N>(static_cast<T*>(base) + at, src);
        }
    }
};

// ---------------------------------------------------------------------------------------
// Reductions. The butterfly (xor) pattern leaves the result in every lane of the group and
// its order is fixed, so results are bitwise reproducible.
// ---------------------------------------------------------------------------------------

// Sum over aligned groups of GROUP lanes (GROUP a power of two <= 32). Every lane of the
// warp must call it.
template <int GROUP> __device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int offset = GROUP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

// v where the mask weight w (0 or 1) selects the element, else an exact 0, even when v is
// NaN or infinite: as in flax's mean(where=mask), padding never reaches the statistics.
// Select, then square (weighted(w, x) * weighted(w, x)), so the sums keep their FMAs.
__device__ __forceinline__ float weighted(float w, float v) { return w != 0.f ? v : 0.f; }

// The statistics' share of an element's gradient: `term` where the mask selects it. Where it
// does not, 0, or NaN when the element itself (`centred`, its x - mean) is not finite: JAX
// multiplies the zero cotangent of mean(where=mask) by d(x - mean)^2/dx = 2 (x - mean) there.
__device__ __forceinline__ float stats_grad(float w, float term, float centred) {
    return w != 0.f ? term : 0.f * centred;
}

// max(0, v) that keeps a NaN (fmaxf would return 0 and hide a NaN row behind 1/sqrt(eps)).
__device__ __forceinline__ float clamp_nonnegative(float v) { return v < 0.f ? 0.f : v; }

// Partial statistics of a set of values: count, mean and M2 = sum of squared deviations.
struct Moments {
    float n;
    float mean;
    float m2;
};

// Chan et al.'s pairwise merge: exact for any split of the data, stable when the parts
// have different means, which is what makes per-warp two-pass results safe to combine.
__device__ __forceinline__ Moments chan_merge(Moments a, Moments b) {
    if (b.n == 0.f) return a;  // an empty part carries no mean (it may be 0/0)
    if (a.n == 0.f) return b;
    const float n = a.n + b.n;
    const float delta = b.mean - a.mean;
    const float b_share = b.n / n;
    return {n, a.mean + delta * b_share, a.m2 + b.m2 + delta * delta * a.n * b_share};
}

// Sums of a warp's lanes, combined across the warps of a CTA in warp order through shared
// memory (`scratch`, dynamic shared memory, holds at least K * warps floats; accessed
// through load / store, so that the CPU emulation checks it for races). Every thread gets
// the total. Contains two __syncthreads: all threads of the CTA must call it.
template <int K> __device__ __forceinline__ void cta_sum(float (&v)[K], float* scratch) {
    const int lane = threadIdx.x % kWarpSize;
    const int warp = threadIdx.x / kWarpSize;
    const int warps = blockDim.x / kWarpSize;
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = group_sum<kWarpSize>(v[k]);
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < K; ++k) store(&scratch[k * warps + warp], v[k]);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) {
        float total = 0.f;
        for (int w = 0; w < warps; ++w) total += load(&scratch[k * warps + w]);
        v[k] = total;
    }
    __syncthreads();  // scratch may be reused by the caller's next reduction
}

// Per-warp moments merged across the CTA with Chan's formula in warp order.
// `scratch` (dynamic shared memory, as cta_sum's) holds at least 3 * warps floats. Two
// __syncthreads: all threads call it.
__device__ __forceinline__ Moments cta_merge(Moments m, float* scratch) {
    const int lane = threadIdx.x % kWarpSize;
    const int warp = threadIdx.x / kWarpSize;
    const int warps = blockDim.x / kWarpSize;
    if (lane == 0) {
        store(&scratch[3 * warp + 0], m.n);
        store(&scratch[3 * warp + 1], m.mean);
        store(&scratch[3 * warp + 2], m.m2);
    }
    __syncthreads();
    const auto moments_of = [&](int w) -> Moments {
        return {load(&scratch[3 * w]), load(&scratch[3 * w + 1]), load(&scratch[3 * w + 2])};
    };
    Moments total = moments_of(0);
    for (int w = 1; w < warps; ++w) total = chan_merge(total, moments_of(w));
    __syncthreads();
    return total;
}

// The __launch_bounds__ minimum of CTAs per SM that leaves a thread `budget` registers
// (of an SM's 64 K): at least 1.
constexpr int ctas_for_registers(int threads, int budget) {
    return 65536 / (threads * budget) > 0 ? 65536 / (threads * budget) : 1;
}

// rstd from the variance; the variance is clamped at 0 so that the cancellation of the
// fast-variance form can never produce a NaN from a legal input.
__device__ __forceinline__ float rstd_of(float var, float eps) { return rsqrtf(clamp_nonnegative(var) + eps); }

}  // namespace warpnorm
