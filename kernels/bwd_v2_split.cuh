// Kernels v2 without clusters: the long-row backward split over a group of CTAs that meet
// in global memory.
//
// Rows whose stash does not fit in one CTA (bwd_v2_stash.cuh) on a device without
// thread-block clusters (sm_80), or that need more CTAs than a portable cluster has
// (bwd_v2_cluster.cuh), are taken by a group of 2-16 CTAs (WarpnormBwdSplitParams::ctas),
// split as a cluster splits them: CTA rank r stashes the r-th slice of each row
// (row_slice). The slices' row sums meet in global memory instead of distributed shared
// memory: each CTA writes its sums into its slot of the group's, a barrier of the group's
// CTAs publishes them, and every CTA adds all the slots in rank order, so that all get the
// same bits. Groups stride over the rows; the CTAs of a group write the columns of their
// slices of one partial row, the group's.
//
// The CTAs of a group wait for each other, so they must all be resident at once: the host
// launches the kernel cooperatively, which fails the launch (rather than hanging the
// kernel) when the grid does not fit on the device at once, and zeroes the groups' arrival
// counters before it.
#pragma once

#include "bwd_v2_stash.cuh"

namespace warpnorm {

// A barrier of the CTAs of a group: each CTA adds one to the group's arrival counter (zero
// when the kernel starts) and waits until it reaches `ctas` times the barriers passed.
// Thread 0 of each CTA arrives for the CTA, between two CTA barriers, and runs `then`
// once the group has arrived, before the CTA goes on.
struct GroupBarrier {
    unsigned* arrivals;
    unsigned ctas;
    unsigned passed;  // the count at which the last barrier passed (thread 0's)

    template <typename Then> __device__ __forceinline__ void sync(Then then) {
        __syncthreads();
        if (threadIdx.x == 0) {
            passed += ctas;
            // What the CTA wrote before (its slot) is visible before its arrival counts.
            __threadfence();
            atomicAdd(arrivals, 1u);
            // The difference, not the count, is compared: it stays right when the counter
            // wraps around.
            while (int(*static_cast<volatile unsigned*>(arrivals) - passed) < 0) __nanosleep(64);
            // What the others wrote before they arrived is read after.
            __threadfence();
            then();
        }
        __syncthreads();
    }
};

// A CTA's row sums combined with the other CTAs' of its group, through the group's slots in
// global memory: [2][ctas][WARPNORM_SPLIT_SLOT_FLOATS]. The two halves alternate between
// rows, as a cluster's slots do: a CTA writes row r + 2's sums over row r's only after the
// barrier of row r + 1, which no CTA passes before every CTA has read row r's. Thread 0
// adds the slots in rank order into the CTA's `total` (in its shared memory), which every
// thread then reads: one L2 read of each slot per CTA rather than per thread. One `total`
// serves every row: each thread reads it before it reaches the next row's barrier, after
// whose first __syncthreads thread 0 writes it again. Slots are read with __ldcg (from
// L2): a CTA's L1 may hold the line of a slot from two rows before.
struct GroupRowSums {
    float* scratch;
    float* total;
    float* slots;
    unsigned rank;
    int parity;
    GroupBarrier barrier;

    template <int K> __device__ __forceinline__ void reduce(float (&v)[K]) {
        constexpr int kSlot = WARPNORM_SPLIT_SLOT_FLOATS;
        static_assert(K <= kSlot, "a slot holds a row's sums");
        static_assert(K <= WARPNORM_STASH_SLOT_FLOATS, "the CTA's shared memory holds a row's total");
        cta_sum<K>(v, scratch);
        float* row_slots = slots + parity * barrier.ctas * kSlot;
        parity ^= 1;
        if (threadIdx.x == 0) {
#pragma unroll
            for (int k = 0; k < K; ++k) row_slots[rank * kSlot + k] = v[k];
        }
        barrier.sync([&] {
#pragma unroll
            for (int k = 0; k < K; ++k) {
                float sum = 0.f;
                for (unsigned r = 0; r < barrier.ctas; ++r) sum += __ldcg(&row_slots[r * kSlot + k]);
                store(&total[k], sum);
            }
        });
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = load(&total[k]);
    }
};

// Group `g` is CTAs g * ctas ... g * ctas + ctas - 1 of a 1-D grid.
template <typename T, int VEC>
__global__ void __launch_bounds__(WARPNORM_CTA_MAX_THREADS, 1) layer_norm_bwd_split(const WarpnormBwdSplitParams p) {
    WARPNORM_DYNAMIC_SMEM(smem);
    const long long ctas = p.ctas;
    const long long group = blockIdx.x / ctas;
    const long long groups = gridDim.x / ctas;
    const unsigned rank = blockIdx.x % ctas;
    const RowSlice slice = row_slice(p.bwd.cols / VEC, rank, ctas);
    float* slots = p.slots + group * 2 * ctas * WARPNORM_SPLIT_SLOT_FLOATS;
    GroupRowSums row_sums{smem, smem + WARPNORM_CTA_SCRATCH_FLOATS, slots, rank, 0,
                          GroupBarrier{p.arrivals + group, unsigned(ctas), 0}};
    stash_rows<T, VEC, false>(p.bwd, smem, slice.first, slice.count, group, groups, group, row_sums);
}

}  // namespace warpnorm
