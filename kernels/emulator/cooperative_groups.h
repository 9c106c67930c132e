// Host stand-in for the part of CUDA's cooperative groups the kernels use, in the CPU
// emulation: the thread-block cluster, its barrier and its distributed shared memory.
// The blocks of a cluster run at the same time (harness.cpp), each with its own dynamic
// shared memory; map_shared_rank maps an address of the caller's dynamic shared memory to
// the same offset in another block's. Static __shared__ arrays are statics here, one for
// all the blocks running at once, so a cluster kernel may only use dynamic shared memory:
// mapping any other address aborts.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace cooperative_groups {

struct cluster_group {
    // Every thread of the cluster passes it, those of this block among them.
    void sync() const {
        warpnorm_emu::wait_at(warpnorm_emu::ctx().cluster_barrier);
        ++warpnorm_emu::ctx().block_syncs;
    }
    unsigned block_rank() const { return warpnorm_emu::ctx().cluster_rank; }
    unsigned num_blocks() const { return warpnorm_emu::ctx().cluster_size; }
    template <typename T> T* map_shared_rank(T* addr, unsigned rank) const {
        const auto& c = warpnorm_emu::ctx();
        const char* own = reinterpret_cast<const char*>(c.dynamic_smem);
        const char* at = reinterpret_cast<const char*>(addr);
        if (at < own || at + sizeof(T) > own + c.dynamic_smem_bytes || rank >= c.cluster_size) {
            std::fprintf(stderr, "map_shared_rank: %p is not in this block's dynamic shared memory, or rank %u >= %u\n",
                         static_cast<const void*>(addr), rank, c.cluster_size);
            std::abort();
        }
        return reinterpret_cast<T*>(reinterpret_cast<char*>(c.cluster_smem[rank]) + (at - own));
    }
};

inline cluster_group this_cluster() { return {}; }

}  // namespace cooperative_groups
