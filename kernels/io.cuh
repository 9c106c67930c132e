// Load and store functors: every tensor a kernel reads or writes, apart from the math that
// uses it (stats.cuh, the normalisation, the backward's row sums), so that a new input
// plugs in as a functor without touching the reductions. Each is bound to its tensor once
// per kernel and moves N consecutive elements as f32: `load<N>(at, dst)` /
// `store<N>(at, src)`, `at` the first element's index in the tensor (a kernel's layout
// decides it), with N > 1 only where the host checked the alignment (common.cuh).
// common.cuh's MixedIn / MixedOut are the same for a tensor whose dtype each call chooses
// (T or f32). Every access goes through common.cuh's counted helpers.
#pragma once

#include "common.cuh"

namespace warpnorm {

// A tensor stored in T (x, or a sharded kernel's compile-time dtypes).
template <typename T> struct TensorIn {
    const T* base;
    template <int N> __device__ __forceinline__ void load(long long at, float* dst) const {
        load_vec<T, N>(base + at, dst);
    }
    __device__ __forceinline__ float operator[](long long at) const {
        float v;
        load<1>(at, &v);
        return v;
    }
};

template <typename T> struct TensorOut {
    T* base;
    template <int N> __device__ __forceinline__ void store(long long at, const float* src) const {
        store_vec<T, N>(base + at, src);
    }
    __device__ __forceinline__ void store(long long at, float v) const { store<1>(at, &v); }
};

// scale or bias, indexed by column: its identity (1 or 0) when the module has none.
// SRC is TensorIn or MixedIn (the parameter dtype chosen per call).
template <typename SRC> struct ParamIn {
    SRC src;  // its base is null when the module has none
    float absent;
    template <int N> __device__ __forceinline__ void load(long long col, float* dst) const {
        if (src.base) {
            src.template load<N>(col, dst);
        } else {
#pragma unroll
            for (int i = 0; i < N; ++i) dst[i] = absent;
        }
    }
    __device__ __forceinline__ float operator[](long long col) const {
        float v;
        load<1>(col, &v);
        return v;
    }
};

template <typename T> __device__ __forceinline__ ParamIn<MixedIn<T>> mixed_param(const void* p, int dtype, float absent) {
    return {MixedIn<T>(p, dtype), absent};
}
template <typename P> __device__ __forceinline__ ParamIn<TensorIn<P>> typed_param(const void* p, float absent) {
    return {TensorIn<P>{static_cast<const P*>(p)}, absent};
}

// flax's mask as the statistics' weights: 1 where an element takes part, else 0; all 1
// without a mask. `at` indexes the mask (the kernel applies its stride).
struct MaskIn {
    const unsigned char* base;  // or null
    template <int N> __device__ __forceinline__ void load(long long at, float* w) const {
#pragma unroll
        for (int i = 0; i < N; ++i) w[i] = (!base || load_element(at + i)) ? 1.f : 0.f;
    }
    __device__ __forceinline__ float operator[](long long at) const {
        float w;
        load<1>(at, &w);
        return w;
    }

  private:
    __device__ __forceinline__ unsigned char load_element(long long at) const { return warpnorm::load(&base[at]); }
};

// The forward's output step: y = xhat * scale + bias from the normalised values, stored in
// y's dtype. `at` indexes y, `col` the parameters.
template <typename PARAM, typename OUT> struct AffineOut {
    PARAM scale, bias;
    OUT y;
    template <int N> __device__ __forceinline__ void store(long long at, long long col, const float* xhat) const {
        float s[N], b[N], out[N];
        scale.template load<N>(col, s);
        bias.template load<N>(col, b);
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = xhat[i] * s[i] + b[i];
        y.template store<N>(at, out);
    }
    __device__ __forceinline__ void store(long long at, long long col, float xhat) const { store<1>(at, col, &xhat); }
};

template <typename PARAM, typename OUT>
__device__ __forceinline__ AffineOut<PARAM, OUT> affine_out(PARAM scale, PARAM bias, OUT y) {
    return {scale, bias, y};
}

}  // namespace warpnorm
