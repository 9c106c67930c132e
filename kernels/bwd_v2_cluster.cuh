// Kernels v2 on sm_90: the long-row backward split over a thread-block cluster.
//
// Rows whose stash does not fit in one CTA (bwd_v2_stash.cuh) are taken by a cluster of
// 2-8 CTAs (the launch's cluster dimension): CTA rank r stashes the r-th slice of each
// row (row_slice), and the slices' row sums meet through distributed shared memory: each
// CTA writes its sums into a slot of its own shared memory, the cluster barrier publishes
// them, and every CTA adds all the slots in rank order, so that all get the same bits.
// Clusters stride over the rows; the CTAs of a cluster write the columns of their slices
// of one partial row, the cluster's.
//
// sm_80 has no clusters: there the kernel is compiled as a trap, and the host never
// launches it (select::backward_plan_v2 splits rows over clusters only on devices that
// have them; elsewhere over groups of CTAs, bwd_v2_split.cuh).
#pragma once

#include "bwd_v2_stash.cuh"

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define WARPNORM_HAS_CLUSTERS 1
#include <cooperative_groups.h>
#endif

namespace warpnorm {

#ifdef WARPNORM_HAS_CLUSTERS
// A CTA's row sums combined with the other CTAs' of its cluster. The two slots alternate
// between rows: a CTA writes row r + 2's sums into the slot that held row r's only after
// the barrier of row r + 1, which no CTA passes before it has read row r's.
struct ClusterRowSums {
    float* scratch;
    float* slots;
    int parity;
    template <int K> __device__ __forceinline__ void reduce(float (&v)[K]) {
        constexpr int kSlot = WARPNORM_STASH_SLOT_FLOATS / 2;
        static_assert(K <= kSlot, "a slot holds a row's sums");
        const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
        cta_sum<K>(v, scratch);
        float* slot = slots + kSlot * parity;
        parity ^= 1;
        if (threadIdx.x == 0) {
#pragma unroll
            for (int k = 0; k < K; ++k) slot[k] = v[k];
        }
        cluster.sync();
#pragma unroll
        for (int k = 0; k < K; ++k) {
            float total = 0.f;
            for (unsigned r = 0; r < cluster.num_blocks(); ++r) total += *cluster.map_shared_rank(&slot[k], r);
            v[k] = total;
        }
    }
};
#endif

template <typename T, int VEC>
__global__ void __launch_bounds__(WARPNORM_CTA_MAX_THREADS, 1) layer_norm_bwd_cluster(const WarpnormBwdParams p) {
#ifdef WARPNORM_HAS_CLUSTERS
    const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    WARPNORM_DYNAMIC_SMEM(smem);
    // A 1-D grid of 1-D clusters: cluster `id` is CTAs id * ctas ... id * ctas + ctas - 1.
    const long long ctas = cluster.num_blocks();
    const long long rank = cluster.block_rank();
    const long long id = blockIdx.x / ctas;
    const long long clusters = gridDim.x / ctas;
    const RowSlice slice = row_slice(p.cols / VEC, rank, ctas);
    ClusterRowSums row_sums{smem, smem + WARPNORM_CTA_SCRATCH_FLOATS, 0};
    stash_rows<T, VEC, false>(p, smem, slice.first, slice.count, id, clusters, id, row_sums);
    // The other CTAs may still be reading this one's slots: its shared memory must
    // outlive their reads.
    cluster.sync();
#else
    __trap();
#endif
}

}  // namespace warpnorm
