// Kernels v2: the backward that reads x and dy once from a stash in shared memory.
//
// v1's CTA kernel walks a row twice and loads x and dy from global memory in both passes
// (the second mostly from L2), and where its dscale / dbias sums do not fit in shared
// memory it keeps them in global memory. Here a CTA per row (persistent: it strides over
// the rows) stashes x and dy in dynamic shared memory as the first pass loads them for
// the row sums, and the second pass (dx) reads them back from there. Each thread handles
// the same columns of every row, so the stash, the CTA's copy of scale and its dscale /
// dbias sums are per-thread storage: a thread only ever reads back what it wrote itself,
// and no barrier guards them. The sums are written once per CTA, as its partial rows
// (finalize_pair reduces them). Rows short enough for two stashes (v1's CTA register
// tiers) are stashed twice over, the next row copied in asynchronously while one is
// reduced (PREFETCH).
//
// Rows too long for one CTA's stash are split over the CTAs of a thread-block cluster on
// sm_90 (bwd_v2_cluster.cuh): each CTA stashes a slice of every row, and the row sums meet
// through distributed shared memory; without clusters, or past a cluster's 8 CTAs, over a
// group of CTAs whose row sums meet in global memory (bwd_v2_split.cuh). All these kernels
// run stash_rows below.
//
// Dynamic shared memory, in this order (the host sizes it the same way:
// select::StashColumn): the CTA reduction scratch, the row-sum slots
// (WARPNORM_STASH_SLOT_FLOATS), then one array as long as the CTA's part of the row each
// of x (its dtype) and dy (its dtype), again for a second stash with PREFETCH, then scale
// (the parameter dtype; only with a scale), dscale and dbias (f32; only those wanted).
#pragma once

#include "common.cuh"

namespace warpnorm {

// Vectors a thread loads before it stashes them, within the 64 registers of a 1024-thread
// CTA: two for f32 x (32 floats of x and dy); one for 16-bit x, whose dy may be f32 (two
// spill 52 bytes). Either way 32-64 bytes a thread, 32-64 KiB an SM, in flight.
template <typename T> constexpr int kStashBatch = sizeof(T) == 4 ? 2 : 1;

// A row-long array in shared memory, stored as planes of 16-byte chunks: chunk c of
// vector v at byte (c * vectors + v) * 16. Lanes handle neighbouring vectors, so a warp's
// access is 32 neighbouring 16-byte words whatever the element size (no bank conflicts),
// where 8 f32 of a vector kept together would put lanes 32 bytes apart.
template <int VEC> struct StashRow {
    char* base;
    long long vectors;

    template <typename E> static constexpr long long bytes(long long vectors) {
        return vectors * VEC * (long long)sizeof(E);
    }
    template <typename E> __device__ __forceinline__ Pack<E, Chunk<E, VEC>::kElems>* chunk(long long v, int c) const {
        using P = Pack<E, Chunk<E, VEC>::kElems>;
        static_assert(sizeof(P) == 16, "a vector is whole 16-byte chunks");
        return reinterpret_cast<P*>(base) + c * vectors + v;
    }
    template <typename E> __device__ __forceinline__ void put(long long v, const float* vals) const {
        constexpr int kC = Chunk<E, VEC>::kElems;
#pragma unroll
        for (int c = 0; c < VEC / kC; ++c) {
            Pack<E, kC> p;
#pragma unroll
            for (int i = 0; i < kC; ++i) p.v[i] = from_float<E>(vals[c * kC + i]);
            store_pack<E, kC>(chunk<E>(v, c)->v, p);
        }
    }
    template <typename E> __device__ __forceinline__ void get(long long v, float* vals) const {
        constexpr int kC = Chunk<E, VEC>::kElems;
#pragma unroll
        for (int c = 0; c < VEC / kC; ++c) {
            const Pack<E, kC> p = load_pack<E, kC>(chunk<E>(v, c)->v);
#pragma unroll
            for (int i = 0; i < kC; ++i) vals[c * kC + i] = to_float(p.v[i]);
        }
    }
};

// A StashRow of a tensor stored in T or f32, as the call chooses (see MixedIn).
template <typename T, int VEC> struct MixedStash {
    StashRow<VEC> row;
    bool f32;
    static __device__ __forceinline__ long long bytes(long long vectors, bool f32) {
        return f32 ? StashRow<VEC>::template bytes<float>(vectors) : StashRow<VEC>::template bytes<T>(vectors);
    }
    __device__ __forceinline__ void put(long long v, const float* vals) const {
        if (f32) {
            row.template put<float>(v, vals);
        } else {
            row.template put<T>(v, vals);
        }
    }
    __device__ __forceinline__ void get(long long v, float* vals) const {
        if (f32) {
            row.template get<float>(v, vals);
        } else {
            row.template get<T>(v, vals);
        }
    }
};

// A row's terms with its statistics loaded by one lane per warp and broadcast, rather than
// by every thread of the CTA. Every lane of the warp must call it.
__device__ __forceinline__ RowTerms row_terms_per_warp(const WarpnormBwdParams& p, long long row) {
    float mean = 0.f, rstd = 0.f;
    if (threadIdx.x % kWarpSize == 0) {
        mean = load(&p.mean[row]);
        rstd = load(&p.rstd[row]);
    }
    mean = __shfl_sync(kFullMask, mean, 0);
    rstd = __shfl_sync(kFullMask, rstd, 0);
    return row_terms(p.kind, mean, rstd);
}

// A CTA's row sums combined with the rest of the row's: the CTA holds the whole row.
struct CtaRowSums {
    float* scratch;
    template <int K> __device__ __forceinline__ void reduce(float (&v)[K]) { cta_sum<K>(v, scratch); }
};

// A CTA's part of a row split over `ctas` CTAs (a cluster, or a group meeting in global
// memory): rank r stashes ceil(vectors / ctas) vectors from r times that, the last ranks
// fewer, or none when the row runs out first.
struct RowSlice {
    long long first, count;
};
__device__ __forceinline__ RowSlice row_slice(long long vectors, long long rank, long long ctas) {
    const long long slice = (vectors + ctas - 1) / ctas;
    const long long first = rank * slice < vectors ? rank * slice : vectors;
    return {first, vectors - first < slice ? vectors - first : slice};
}

// Backward of the rows first_row, first_row + row_step, ... over this CTA's part of each
// row, the vectors [first_vector, first_vector + vectors) (what the stash holds), with
// `row_sums` completing each row's sums over the whole row. Writes the part's columns of
// partial row `part`. With PREFETCH, x and dy have two stashes: while a row is reduced
// from one, the next row's x and dy are copied into the other asynchronously (cp.async),
// so the loads of a CTA that holds a short row are in flight while it computes. Each
// thread copies the vectors it later reads, so its own wait is the only synchronisation.
template <typename T, int VEC, bool PREFETCH, typename RowSums>
__device__ __forceinline__ void stash_rows(const WarpnormBwdParams& p, float* smem, long long first_vector,
                                           long long vectors, long long first_row, long long row_step,
                                           long long part, RowSums& row_sums) {
    static_assert(VEC * sizeof(T) == 16, "x moves in 16-byte vectors");
    constexpr int kBatch = kStashBatch<T>;
    const long long threads = blockDim.x;
    const bool want_scale = p.partial_dscale != nullptr;
    const bool want_bias = p.partial_dbias != nullptr;
    const BwdIn<T> in(p);
    const long long first_col = first_vector * VEC;

    // The arrays after the scratch and the slots, in the order the host sizes them.
    char* next = reinterpret_cast<char*>(smem + WARPNORM_CTA_SCRATCH_FLOATS + WARPNORM_STASH_SLOT_FLOATS);
    const auto take = [&](long long bytes) {
        char* at = next;
        next += bytes;
        return StashRow<VEC>{at, vectors};
    };
    const bool dy_f32 = stored_as_f32(p.out_dtype);
    const StashRow<VEC> x_first = take(StashRow<VEC>::template bytes<T>(vectors));
    const StashRow<VEC> dy_first = take(MixedStash<T, VEC>::bytes(vectors, dy_f32));
    // With PREFETCH a second x and dy stash follows the first: stash b lies b * `buffer`
    // bytes on (an offset, not an array of stashes, which would be indexed at run time).
    const long long buffer = next - x_first.base;
    if (PREFETCH) next += buffer;
    const auto x_stash = [&](int b) { return StashRow<VEC>{x_first.base + b * buffer, vectors}; };
    const auto dy_stash = [&](int b) {
        return MixedStash<T, VEC>{StashRow<VEC>{dy_first.base + b * buffer, vectors}, dy_f32};
    };
    const bool scale_f32 = stored_as_f32(p.param_dtype);
    const MixedStash<T, VEC> scale_stash{take(p.scale ? MixedStash<T, VEC>::bytes(vectors, scale_f32) : 0), scale_f32};
    const StashRow<VEC> acc_scale = take(want_scale ? StashRow<VEC>::template bytes<float>(vectors) : 0);
    const StashRow<VEC> acc_bias = take(want_bias ? StashRow<VEC>::template bytes<float>(vectors) : 0);

    // This thread's columns of scale, loaded once for every row the CTA visits, and its
    // dscale / dbias sums zeroed.
    const float zero[VEC] = {};
    for (long long v = threadIdx.x; v < vectors; v += threads) {
        if (p.scale) {
            float scale[VEC];
            in.scale.template load<VEC>(first_col + v * VEC, scale);
            scale_stash.put(v, scale);
        }
        if (want_scale) acc_scale.template put<float>(v, zero);
        if (want_bias) acc_bias.template put<float>(v, zero);
    }
    const auto scale_of = [&](long long v, float* scale) {
        if (p.scale) {
            scale_stash.get(v, scale);
        } else {
#pragma unroll
            for (int i = 0; i < VEC; ++i) scale[i] = 1.f;
        }
    };
    // Row `row`'s x and dy into stash `b`, as stored (16-byte copies), as one group.
    const auto prefetch = [&](long long row, int b) {
        const T* x_row = static_cast<const T*>(p.x) + row * p.x_stride + first_col;
        const long long dy_row = row * p.dy_stride + first_col;
        for (long long v = threadIdx.x; v < vectors; v += threads) {
            copy_async_16(x_stash(b).template chunk<T>(v, 0), x_row + v * VEC);
            if (dy_f32) {
                const float* dy = static_cast<const float*>(p.dy) + dy_row + v * VEC;
#pragma unroll
                for (int c = 0; c < VEC / 4; ++c) copy_async_16(dy_stash(b).row.template chunk<float>(v, c), dy + 4 * c);
            } else {
                copy_async_16(dy_stash(b).row.template chunk<T>(v, 0), static_cast<const T*>(p.dy) + dy_row + v * VEC);
            }
        }
        copy_async_commit();
    };
    // dy from stash `b`. A prefetched stash holds dy as stored, so keras' rounding of an f32
    // dy to x's dtype applies as it is read (on the values pass 1 stashed, already rounded
    // as they were loaded, it changes nothing).
    const auto stashed_dy = [&](int b, long long v, float* dy) {
        dy_stash(b).get(v, dy);
        if (in.dy.rounded) round_to<T, VEC>(dy, dy);
    };

    int b = 0;  // the stash of the current row
    if (PREFETCH && first_row < p.rows) prefetch(first_row, b);
    for (long long row = first_row; row < p.rows; row += row_step) {
        const RowTerms t = row_terms_per_warp(p, row);

        // Pass 1: x and dy into the row sums and the stash.
        float sums[3] = {0.f, 0.f, 0.f};  // S1, S2, n (the mask's count)
        if constexpr (PREFETCH) {
            // The next row's copies go out (an empty group after the last row, so that
            // waiting for all but the latest group always means this row's).
            if (row + row_step < p.rows) {
                prefetch(row + row_step, b ^ 1);
            } else {
                copy_async_commit();
            }
            copy_async_wait<1>();
            for (long long v = threadIdx.x; v < vectors; v += threads) {
                float x[VEC], dy[VEC], scale[VEC], m[VEC];
                x_stash(b).template get<T>(v, x);
                stashed_dy(b, v, dy);
                scale_of(v, scale);
                in.mask.template load<VEC>(row * p.mask_stride + first_col + v * VEC, m);
                add_row_sums<VEC>(t, x, dy, scale, m, sums);
            }
        } else {
            // Loads from global memory (kBatch vectors in flight), stashed as they arrive.
            const T* x_row = static_cast<const T*>(p.x) + row * p.x_stride + first_col;
            const long long dy_row = row * p.dy_stride + first_col;
            for (long long first = threadIdx.x; first < vectors; first += kBatch * threads) {
                float x[kBatch][VEC], dy[kBatch][VEC];
#pragma unroll
                for (int k = 0; k < kBatch; ++k) {
                    const long long v = first + k * threads;
                    if (v < vectors) {
                        load_vec<T, VEC>(x_row + v * VEC, x[k]);
                        in.dy.template load<VEC>(dy_row + v * VEC, dy[k]);
                    }
                }
#pragma unroll
                for (int k = 0; k < kBatch; ++k) {
                    const long long v = first + k * threads;
                    if (v >= vectors) continue;
                    float scale[VEC], m[VEC];
                    scale_of(v, scale);
                    in.mask.template load<VEC>(row * p.mask_stride + first_col + v * VEC, m);
                    add_row_sums<VEC>(t, x[k], dy[k], scale, m, sums);
                    x_stash(b).template put<T>(v, x[k]);
                    dy_stash(b).put(v, dy[k]);
                }
            }
        }
        complete_row_sums(sums, p.mask != nullptr, float(p.cols), [&](auto& v) { row_sums.reduce(v); });
        const RowGrad g = t.grad(sums[0], sums[1], sums[2]);

        // Pass 2: dx from the stash, and this thread's dscale / dbias sums.
        for (long long v = threadIdx.x; v < vectors; v += threads) {
            float x[VEC], dy[VEC], scale[VEC], m[VEC], dx[VEC];
            x_stash(b).template get<T>(v, x);
            stashed_dy(b, v, dy);
            scale_of(v, scale);
            in.mask.template load<VEC>(row * p.mask_stride + first_col + v * VEC, m);
#pragma unroll
            for (int i = 0; i < VEC; ++i) dx[i] = t.dx(x[i], dy[i], scale[i], m[i], g);
            store_vec<T, VEC>(static_cast<T*>(p.dx) + row * p.dx_stride + first_col + v * VEC, dx);
            float acc[VEC];
            if (want_scale) {
                acc_scale.template get<float>(v, acc);
#pragma unroll
                for (int i = 0; i < VEC; ++i) acc[i] += dy[i] * t.xhat(x[i]);
                acc_scale.template put<float>(v, acc);
            }
            if (want_bias) {
                acc_bias.template get<float>(v, acc);
#pragma unroll
                for (int i = 0; i < VEC; ++i) acc[i] += dy[i];
                acc_bias.template put<float>(v, acc);
            }
        }
        if constexpr (PREFETCH) b ^= 1;
    }

    // The part's columns of the partial rows, each written once (element by element: the
    // host checks the workspace for 4-byte alignment only).
    const long long at = part * p.cols + first_col;
    for (long long v = threadIdx.x; v < vectors; v += threads) {
        float acc[VEC];
        if (want_scale) {
            acc_scale.template get<float>(v, acc);
#pragma unroll
            for (int i = 0; i < VEC; ++i) store(&p.partial_dscale[at + v * VEC + i], acc[i]);
        }
        if (want_bias) {
            acc_bias.template get<float>(v, acc);
#pragma unroll
            for (int i = 0; i < VEC; ++i) store(&p.partial_dbias[at + v * VEC + i], acc[i]);
        }
    }
}

// The stash kernel: a CTA per row, the whole row stashed. VEC is x's 16-byte vector (the
// host picks it for aligned rows: select::backward_plan_v2): without PREFETCH, rows longer
// than the register tiers hold, by CTAs of 1024 threads; with PREFETCH, the rows of the
// CTA register tiers, by a CTA sized to the row, the next row copied in while one is
// reduced.
template <typename T, int VEC, bool PREFETCH>
__global__ void __launch_bounds__(WARPNORM_CTA_MAX_THREADS, 1) layer_norm_bwd_stash(const WarpnormBwdParams p) {
    WARPNORM_DYNAMIC_SMEM(smem);
    CtaRowSums row_sums{smem};
    stash_rows<T, VEC, PREFETCH>(p, smem, 0, p.cols / VEC, blockIdx.x, gridDim.x, blockIdx.x, row_sums);
}

}  // namespace warpnorm
