// Kernels v2: the deterministic finalize of dscale and dbias in one launch.
//
// v1's finalize_partials gives each thread one column and walks every partial row in
// sequence: at D = 128 one CTA of dependent L2 loads, launched once per gradient. Here a
// CTA owns WARPNORM_FINALIZE_COLS columns of one output (dscale or dbias: blockIdx.x
// counts the first output's column tiles, then the second's). Its warps take the partial
// rows in turn (warp w sums rows w, w + W, w + 2W, ...), a lane per column, so that a
// warp's load is one 128-byte line; each lane keeps kFinalizeChains independent sums so
// that as many loads are in flight, and the warps' sums meet in shared memory in a fixed
// tree. The order of every addition depends on parts and cols alone: bitwise identical
// from run to run (not across batch sizes, whose partial-row count follows the rows).
#pragma once

#include "common.cuh"

namespace warpnorm {

constexpr int kFinalizeWarps = WARPNORM_FINALIZE_PAIR_THREADS / kWarpSize;
constexpr int kFinalizeChains = 4;
static_assert(WARPNORM_FINALIZE_COLS == kWarpSize, "a lane per column");
static_assert((kFinalizeWarps & (kFinalizeWarps - 1)) == 0, "the tree halves the warps");
static_assert(kFinalizeChains == 4, "the chains are summed pairwise below");

template <typename P>
__global__ void __launch_bounds__(WARPNORM_FINALIZE_PAIR_THREADS) finalize_pair(const WarpnormFinalizePairParams p) {
    __shared__ float warp_sums[kFinalizeWarps][kWarpSize];
    const long long tiles = (p.cols + WARPNORM_FINALIZE_COLS - 1) / WARPNORM_FINALIZE_COLS;
    const int output = int(blockIdx.x / tiles);
    const int lane = threadIdx.x % kWarpSize;
    const int warp = threadIdx.x / kWarpSize;
    const long long col = (blockIdx.x % tiles) * WARPNORM_FINALIZE_COLS + lane;
    const float* partial = p.partial[output];

    float chain[kFinalizeChains] = {};
    if (col < p.cols) {
        constexpr int kStride = kFinalizeChains * kFinalizeWarps;
        int part = warp;
        for (; part + (kFinalizeChains - 1) * kFinalizeWarps < p.parts; part += kStride) {
#pragma unroll
            for (int c = 0; c < kFinalizeChains; ++c) {
                chain[c] += load(&partial[(long long)(part + c * kFinalizeWarps) * p.cols + col]);
            }
        }
        for (int c = 0; part < p.parts; ++c, part += kFinalizeWarps) {
            chain[c] += load(&partial[(long long)part * p.cols + col]);
        }
    }
    warp_sums[warp][lane] = (chain[0] + chain[1]) + (chain[2] + chain[3]);
    __syncthreads();
    for (int half = kFinalizeWarps / 2; half > 0; half /= 2) {
        if (warp < half) warp_sums[warp][lane] += warp_sums[warp + half][lane];
        __syncthreads();
    }
    if (warp == 0 && col < p.cols) store(&static_cast<P*>(p.out[output])[col], from_float<P>(warp_sums[0][lane]));
}

}  // namespace warpnorm
