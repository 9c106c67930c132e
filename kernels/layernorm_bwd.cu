// Backward LayerNorm / RMSNorm over the rows of a 2-D view [rows, cols].
//
// With g = dy * scale, r = rstd, n = the number of elements in the statistics (the mask's
// count), m_j = 1 when element j is in the statistics, the gradient of every form is
//
//     dx_j = r * (g_j - m_j * (c1 * S1 + u_j * S2) / n),  S1 = sum_i g_i,  S2 = sum_i g_i * xhat_i
//
//   LayerNorm      xhat = (x - mean) * r   u = xhat             c1 = 1
//   RMSNorm        xhat = x * r            u = xhat             c1 = 0
//   keras rms_sc.  xhat = x * r            u = (x - mean) * r   c1 = 0   (centred variance)
//
// and dscale_j = sum over rows of dy_j * xhat_j, dbias_j = sum over rows of dy_j.
// dx reads x, dy and scale once. dscale / dbias go through per-CTA f32 partial rows that a
// finalize kernel sums in CTA order: no atomics, so results are bitwise reproducible.
#include "io.cuh"
#include "stats.cuh"

namespace warpnorm {

// Registers a thread of a register tier may use for ELEMS elements: x, dy and the two sums
// (4 floats an element) plus addressing, and 16-bit values' conversions. The parameter and
// output dtypes are runtime branches (MixedIn); left free, ptxas spends ~20-45 more
// registers keeping both paths' values live and loses a CTA per SM. With this budget none
// spills on sm_80 or sm_90 (tests/kernel_resources.rs).
template <typename T, int ELEMS>
constexpr int kBwdRegisters = ELEMS <= 8 ? (sizeof(T) == 4 ? 64 : 80) : (ELEMS <= 16 ? 128 : 168);

// A row's share of dx once its sums are known: c1 * S1, S2 and 1 / n.
struct RowGrad {
    float c1s1, s2, inv_n;
};

// The per-element terms of one row from x and the saved statistics: xhat (what dscale
// multiplies), u (what S2 multiplies in dx) and dx itself.
struct RowTerms {
    float mean, rstd, shift;
    int kind;
    __device__ __forceinline__ float xhat(float x) const { return (x - shift) * rstd; }
    __device__ __forceinline__ float u(float x) const {
        return kind == WARPNORM_RMS_SCALING ? (x - mean) * rstd : xhat(x);
    }
    __device__ __forceinline__ RowGrad grad(float s1, float s2, float n) const {
        return {(kind == WARPNORM_LAYER_NORM ? 1.f : 0.f) * s1, s2, 1.f / n};
    }
    // m: the element's mask weight (1 without a mask).
    __device__ __forceinline__ float dx(float x, float dy, float scale, float m, const RowGrad& g) const {
        const float ux = u(x);
        return rstd * (dy * scale - stats_grad(m, (g.c1s1 + ux * g.s2) * g.inv_n, ux));
    }
};

__device__ __forceinline__ RowTerms row_terms(int kind, float mean, float rstd) {
    return {mean, rstd, centre_of(kind, mean), kind};
}

// The backward's inputs as load functors: x, dy (in y's dtype), scale (1 without) and the
// mask's weights (1 without).
template <typename T> struct BwdIn {
    TensorIn<T> x;
    MixedIn<T> dy;
    ParamIn<MixedIn<T>> scale;
    MaskIn mask;

    __device__ __forceinline__ explicit BwdIn(const WarpnormBwdParams& p)
        : x{static_cast<const T*>(p.x)},
          dy(p.dy, p.out_dtype),
          scale(mixed_param<T>(p.scale, p.param_dtype, 1.f)),
          mask{p.mask} {}
};

// Adds VEC elements to a row's {S1, S2, n}: sum g, sum g * xhat (g = dy * scale, every
// element) and the mask's count.
template <int VEC>
__device__ __forceinline__ void add_row_sums(const RowTerms& t, const float* x, const float* dy, const float* scale,
                                             const float* m, float (&sums)[3]) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        const float g = dy[i] * scale[i];
        sums[0] += g;
        sums[1] += g * t.xhat(x[i]);
        sums[2] += m[i];
    }
}

// Completes a row's {S1, S2, n} over the threads that share the row, `reduce(v)` summing
// an array across them (RowThreads::sum, a stash's row sums). Without a mask every element
// is selected: n is `cols`, and only S1 and S2 go through the shuffles and barriers.
template <typename Reduce>
__device__ __forceinline__ void complete_row_sums(float (&sums)[3], bool masked, float cols, Reduce reduce) {
    if (masked) {
        reduce(sums);
        return;
    }
    float s2[2] = {sums[0], sums[1]};
    reduce(s2);
    sums[0] = s2[0];
    sums[1] = s2[1];
    sums[2] = cols;
}

// Register tier: the row (x, dy) lives in registers and each thread keeps the dscale/dbias
// sums of its own columns across all the rows its CTA visits.
template <typename T, int VEC, int VECS, int GROUP>
__global__ void __launch_bounds__(GroupLayout<GROUP>::kThreads,
                                  ctas_for_registers(GroupLayout<GROUP>::kThreads, kBwdRegisters<T, VEC * VECS>))
    layer_norm_bwd(const WarpnormBwdParams p) {
    constexpr int kElems = VEC * VECS;
    constexpr int kThreads = GroupLayout<GROUP>::kThreads;
    constexpr int kRowsPerCta = GroupLayout<GROUP>::kRowsPerCta;
    // Reduction scratch, then (GROUP <= 32) the slots' column sums to combine at the end.
    WARPNORM_DYNAMIC_SMEM(smem);
    float* scratch = smem;

    const int lane = threadIdx.x % GROUP;
    const int slot = threadIdx.x / GROUP;
    const float n_all = float(p.cols);
    const BwdIn<T> in(p);
    const TensorOut<T> dx_out{static_cast<T*>(p.dx)};

    float acc_scale[kElems], acc_bias[kElems];
#pragma unroll
    for (int e = 0; e < kElems; ++e) acc_scale[e] = acc_bias[e] = 0.f;

    for (long long first = (long long)blockIdx.x * kRowsPerCta; first < p.rows;
         first += (long long)gridDim.x * kRowsPerCta) {
        const long long row = first + slot;
        const bool row_valid = row < p.rows;
        const RowTerms t = row_valid ? row_terms(p.kind, load(&p.mean[row]), load(&p.rstd[row]))
                                     : RowTerms{0.f, 0.f, 0.f, p.kind};

        float x[kElems], dy[kElems];
        float sums[3] = {0.f, 0.f, 0.f};  // S1, S2, n (the mask's count)
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
            const long long col = (long long)(v * GROUP + lane) * VEC;
            float* xv = &x[v * VEC];
            float* dyv = &dy[v * VEC];
            if (row_valid && col < p.cols) {
                float scale[VEC], m[VEC];
                in.x.template load<VEC>(row * p.x_stride + col, xv);
                in.dy.template load<VEC>(row * p.dy_stride + col, dyv);
                in.scale.template load<VEC>(col, scale);
                in.mask.template load<VEC>(row * p.mask_stride + col, m);
                add_row_sums<VEC>(t, xv, dyv, scale, m, sums);
            } else {
#pragma unroll
                for (int i = 0; i < VEC; ++i) xv[i] = dyv[i] = 0.f;
            }
        }
        const RowThreads<GROUP> threads{scratch};
        complete_row_sums(sums, p.mask != nullptr, n_all, [&](auto& v) { threads.sum(v); });
        const RowGrad g = t.grad(sums[0], sums[1], sums[2]);
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
            const long long col = (long long)(v * GROUP + lane) * VEC;
            if (!row_valid || col >= p.cols) continue;
            // scale is re-read (L1-resident) rather than kept: registers go to x and dy.
            float scale[VEC], m[VEC], dx[VEC];
            in.scale.template load<VEC>(col, scale);
            in.mask.template load<VEC>(row * p.mask_stride + col, m);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const int e = v * VEC + i;
                dx[i] = t.dx(x[e], dy[e], scale[i], m[i], g);
                acc_scale[e] += dy[e] * t.xhat(x[e]);
                acc_bias[e] += dy[e];
            }
            dx_out.template store<VEC>(row * p.dx_stride + col, dx);
        }
    }

    // Write this CTA's partial row. Several row slots per CTA (GROUP <= 32) are first
    // summed through shared memory in slot order.
    if (!p.partial_dscale && !p.partial_dbias) return;
    float* part_scale = p.partial_dscale ? p.partial_dscale + (long long)blockIdx.x * p.cols : nullptr;
    float* part_bias = p.partial_dbias ? p.partial_dbias + (long long)blockIdx.x * p.cols : nullptr;
    if constexpr (kRowsPerCta == 1) {
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
            const long long col = (long long)(v * GROUP + lane) * VEC;
            if (col >= p.cols) continue;
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                if (part_scale) store(&part_scale[col + i], acc_scale[v * VEC + i]);
                if (part_bias) store(&part_bias[col + i], acc_bias[v * VEC + i]);
            }
        }
    } else {
        // smem after the scratch: [2][kRowsPerCta][cols] (cols <= GROUP * kElems here).
        float* slots = smem + 3 * kThreads / kWarpSize;
        const long long stride = (long long)kRowsPerCta * p.cols;
#pragma unroll
        for (int v = 0; v < VECS; ++v) {
            const long long col = (long long)(v * GROUP + lane) * VEC;
            if (col >= p.cols) continue;
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                store(&slots[slot * p.cols + col + i], acc_scale[v * VEC + i]);
                store(&slots[stride + slot * p.cols + col + i], acc_bias[v * VEC + i]);
            }
        }
        __syncthreads();
        for (long long col = threadIdx.x; col < p.cols; col += kThreads) {
            float s = 0.f, b = 0.f;
            for (int k = 0; k < kRowsPerCta; ++k) {
                s += load(&slots[k * p.cols + col]);
                b += load(&slots[stride + k * p.cols + col]);
            }
            if (part_scale) store(&part_scale[col], s);
            if (part_bias) store(&part_bias[col], b);
        }
    }
}

// CTA per row for any length (and the scalar path's kernel at every length, with a CTA
// sized to the row). Two passes over x and dy (the second mostly from L2); the
// dscale/dbias sums live in shared memory when 2 * cols floats fit (SMEM_ACC), else
// directly in this CTA's own partial rows in global memory. A null partial pointer means
// that gradient is not wanted: it is neither accumulated nor written.
template <typename T, int VEC, bool SMEM_ACC>
__global__ void __launch_bounds__(WARPNORM_CTA_MAX_THREADS, 1) layer_norm_bwd_cta(const WarpnormBwdParams p) {
    WARPNORM_DYNAMIC_SMEM(smem);
    float* scratch = smem;
    const long long step = (long long)blockDim.x * VEC;
    const BwdIn<T> in(p);
    const TensorOut<T> dx_out{static_cast<T*>(p.dx)};
    const bool want_scale = p.partial_dscale != nullptr;
    const bool want_bias = p.partial_dbias != nullptr;
    float* acc_scale = nullptr;
    float* acc_bias = nullptr;
    if constexpr (SMEM_ACC) {
        acc_scale = smem + WARPNORM_CTA_SCRATCH_FLOATS;
        acc_bias = acc_scale + p.cols;
    } else {
        if (want_scale) acc_scale = p.partial_dscale + (long long)blockIdx.x * p.cols;
        if (want_bias) acc_bias = p.partial_dbias + (long long)blockIdx.x * p.cols;
    }
    // Each thread only ever touches its own columns of the accumulators: no barrier needed.
    for (long long col = (long long)threadIdx.x * VEC; col < p.cols; col += step) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            if (want_scale) store(&acc_scale[col + i], 0.f);
            if (want_bias) store(&acc_bias[col + i], 0.f);
        }
    }

    for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const RowTerms t = row_terms(p.kind, load(&p.mean[row]), load(&p.rstd[row]));
        const long long x_row = row * p.x_stride, dy_row = row * p.dy_stride, mask_row = row * p.mask_stride;
        // Both passes read a chunk the same way.
        const auto load_chunk = [&](long long col, float* x, float* dy, float* scale, float* m) {
            in.x.template load<VEC>(x_row + col, x);
            in.dy.template load<VEC>(dy_row + col, dy);
            in.scale.template load<VEC>(col, scale);
            in.mask.template load<VEC>(mask_row + col, m);
        };
        float sums[3] = {0.f, 0.f, 0.f};
        for (long long col = (long long)threadIdx.x * VEC; col < p.cols; col += step) {
            float x[VEC], dy[VEC], scale[VEC], m[VEC];
            load_chunk(col, x, dy, scale, m);
            add_row_sums<VEC>(t, x, dy, scale, m, sums);
        }
        WholeCta{scratch}.sum(sums);
        const RowGrad g = t.grad(sums[0], sums[1], sums[2]);
        for (long long col = (long long)threadIdx.x * VEC; col < p.cols; col += step) {
            float x[VEC], dy[VEC], scale[VEC], m[VEC], dx[VEC];
            load_chunk(col, x, dy, scale, m);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                dx[i] = t.dx(x[i], dy[i], scale[i], m[i], g);
                if (want_scale) store(&acc_scale[col + i], load(&acc_scale[col + i]) + dy[i] * t.xhat(x[i]));
                if (want_bias) store(&acc_bias[col + i], load(&acc_bias[col + i]) + dy[i]);
            }
            dx_out.template store<VEC>(row * p.dx_stride + col, dx);
        }
    }

    if constexpr (SMEM_ACC) {
        const long long part = (long long)blockIdx.x * p.cols;
        for (long long col = (long long)threadIdx.x * VEC; col < p.cols; col += step) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                if (want_scale) store(&p.partial_dscale[part + col + i], acc_scale[col + i]);
                if (want_bias) store(&p.partial_dbias[part + col + i], acc_bias[col + i]);
            }
        }
    }
}

// out[c] = sum of the partial rows in CTA order: the fixed order is what makes dscale and
// dbias identical from run to run.
template <typename P> __global__ void __launch_bounds__(WARPNORM_FINALIZE_THREADS) finalize_partials(const WarpnormFinalizeParams p) {
    for (long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x; col < p.cols;
         col += (long long)gridDim.x * blockDim.x) {
        float sum = 0.f;
        for (int part = 0; part < p.parts; ++part) sum += load(&p.partial[(long long)part * p.cols + col]);
        store(&static_cast<P*>(p.out)[col], from_float<P>(sum));
    }
}

// Channels-first backward ([outer, cols, inner] over cols): a thread per row as in the
// forward. dscale/dbias: each warp sums its 32 rows per column with a butterfly and lane 0
// adds the result to the warp's own partial row, so parts = gridDim.x * warps per CTA.
template <typename T>
__global__ void __launch_bounds__(WARPNORM_STRIDED_THREADS) layer_norm_bwd_strided(const WarpnormStridedBwdParams p) {
    const long long rows = p.outer * p.inner;
    const int lane = threadIdx.x % kWarpSize;
    const long long part = (long long)blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
    float* part_scale = p.partial_dscale + part * p.cols;
    float* part_bias = p.partial_dbias + part * p.cols;
    for (long long c = lane; c < p.cols; c += kWarpSize) {
        store(&part_scale[c], 0.f);
        store(&part_bias[c], 0.f);
    }
    __syncwarp();

    const long long step = (long long)gridDim.x * blockDim.x;
    // Uniform trip count per warp so that every lane reaches the shuffles.
    for (long long first = (long long)blockIdx.x * blockDim.x + (threadIdx.x - lane); first < rows; first += step) {
        const long long row = first + lane;
        const bool valid = row < rows;
        const long long o = valid ? row / p.inner : 0, i = valid ? row % p.inner : 0;
        const long long at = o * p.cols * p.inner + i;  // the row's first element
        const TensorIn<T> x{static_cast<const T*>(p.x) + at};
        const TensorOut<T> dx{static_cast<T*>(p.dx) + at};
        const MixedIn<T> dy(p.dy, p.out_dtype);
        const auto scale = mixed_param<T>(p.scale, p.param_dtype, 1.f);
        const RowTerms t = row_terms(p.kind, valid ? load(&p.mean[row]) : 0.f, valid ? load(&p.rstd[row]) : 0.f);

        float sums[3] = {0.f, 0.f, 0.f};  // S1, S2 (every element is selected: n is cols)
        if (valid) {
            for (long long c = 0; c < p.cols; ++c) {
                const float s = scale[c], dyv = dy[at + c * p.inner], xv = x[c * p.inner], selected = 1.f;
                add_row_sums<1>(t, &xv, &dyv, &s, &selected, sums);
            }
        }
        const RowGrad g = t.grad(sums[0], sums[1], float(p.cols));
        for (long long c = 0; c < p.cols; ++c) {
            float ds = 0.f, db = 0.f;
            if (valid) {
                const float s = scale[c], xv = x[c * p.inner], dyv = dy[at + c * p.inner];
                dx.store(c * p.inner, t.dx(xv, dyv, s, 1.f, g));
                ds = dyv * t.xhat(xv);
                db = dyv;
            }
            // A column sum over the warp's rows (not a row sum).
            ds = group_sum<kWarpSize>(ds);
            db = group_sum<kWarpSize>(db);
            if (lane == 0) {
                store(&part_scale[c], load(&part_scale[c]) + ds);
                store(&part_bias[c], load(&part_bias[c]) + db);
            }
        }
    }
}

}  // namespace warpnorm

#include "finalize_v2.cuh"
#include "bwd_v2_cluster.cuh"
#include "bwd_v2_split.cuh"
