// A small CUDA execution model on the CPU, for testing warpnorm's kernels without a GPU.
//
// Every CUDA thread of a launch is a fiber (fibers.h) and blocks run one after another,
// except the blocks of a thread-block cluster, which run together (cooperative_groups.h),
// and those of a cooperative launch, which all run together. That makes `__shared__`
// variables statics of the OS thread running the launch (one block owns them at a time;
// cluster and cooperative kernels, whose blocks run together, use dynamic shared memory
// only), `__syncthreads` a block-wide barrier and the warp shuffles an exchange through a
// per-warp buffer between two warp barriers. It models what the kernels rely on: a kernel
// whose lanes diverge at a shuffle or barrier deadlocks, which the launch reports, as it
// would be undefined behaviour on a GPU. Shared memory starts as NaN so that a read before a write shows up
// in the results, and accesses to a block's dynamic shared memory are checked for races
// (shared_races.h). Global-memory accesses (WARPNORM_TRAFFIC in common.cuh) are counted per
// launch: the byte-traffic model of tests/traffic.rs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "fibers.h"
#include "shared_races.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __shared__ static thread_local

namespace warpnorm_emu {

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// What one emulated thread sees: its coordinates and its block's synchronisation objects.
struct ThreadContext {
    Dim3 thread, block, block_dim, grid_dim;
    Barrier* block_barrier;
    Barrier* warp_barrier;
    float* warp_exchange;  // 32 floats of this thread's warp
    float* dynamic_smem;
    unsigned dynamic_smem_bytes;
    // The race check of this block's dynamic shared memory, and the block and warp
    // barriers this thread has passed in it.
    SharedRaces* races;
    unsigned long long block_syncs, warp_syncs;
    // This block's cluster: its size, this block's rank in it, the barrier of all its
    // threads and each block's dynamic shared memory (a lone block is a cluster of one).
    unsigned cluster_size, cluster_rank;
    Barrier* cluster_barrier;
    float* const* cluster_smem;
    // Global-memory bytes this thread loaded and stored in the current launch.
    unsigned long long loaded, stored;
    // Its asynchronous copies not landed yet, each with the group it belongs to (the
    // number of groups committed before it), and the groups committed.
    struct AsyncCopy {
        void* dst;
        const void* src;
        unsigned group;
    };
    std::vector<AsyncCopy> async_copies;
    unsigned async_groups;
};

inline ThreadContext& ctx() { return *current; }

// The running thread waits until all the threads of `b` have arrived.
inline void wait_at(Barrier* b) { Scheduler::of_this_os_thread().wait(*b); }

// Where an address falls in the block's dynamic shared memory: its offset, or -1.
inline long long shared_offset(const void* address) {
    const char* a = static_cast<const char*>(address);
    const char* smem = reinterpret_cast<const char*>(ctx().dynamic_smem);
    return a >= smem && a < smem + ctx().dynamic_smem_bytes ? a - smem : -1;
}

// The running thread, as the race check of shared memory sees it.
inline SharedAccessor shared_accessor() {
    const ThreadContext& c = ctx();
    return {int(c.thread.x), c.block_syncs, c.warp_syncs};
}

// An access through the kernels' load / store helpers: global memory, whose bytes count,
// unless it falls in the block's dynamic shared memory, which the race check sees (static
// __shared__ arrays are never accessed through the helpers).
inline void count_traffic(const void* address, unsigned long long bytes, bool is_store) {
    if (const long long offset = shared_offset(address); offset >= 0) {
        ctx().races->access(std::size_t(offset), bytes, is_store, shared_accessor());
        return;
    }
    (is_store ? ctx().stored : ctx().loaded) += bytes;
}

inline unsigned lane() { return ctx().thread.x % 32; }

}  // namespace warpnorm_emu

#define threadIdx (::warpnorm_emu::ctx().thread)
#define blockIdx (::warpnorm_emu::ctx().block)
#define blockDim (::warpnorm_emu::ctx().block_dim)
#define gridDim (::warpnorm_emu::ctx().grid_dim)
#define WARPNORM_DYNAMIC_SMEM(name) float* name = ::warpnorm_emu::ctx().dynamic_smem
#define WARPNORM_TRAFFIC(address, bytes, is_store) ::warpnorm_emu::count_traffic(address, bytes, is_store)

inline void __syncthreads() {
    warpnorm_emu::wait_at(warpnorm_emu::ctx().block_barrier);
    ++warpnorm_emu::ctx().block_syncs;
}
inline void __syncwarp(unsigned = 0xffffffffu) {
    warpnorm_emu::wait_at(warpnorm_emu::ctx().warp_barrier);
    ++warpnorm_emu::ctx().warp_syncs;
}

// Every lane publishes its value, then reads its source lane's: the same result as the
// hardware shuffle when all 32 lanes take part (the only way the kernels use it). It waits
// at the warp's barrier without counting a __syncwarp: a shuffle orders no memory access.
inline float shuffle_from(float v, unsigned src, bool in_range) {
    auto& c = warpnorm_emu::ctx();
    float* ex = c.warp_exchange;
    ex[warpnorm_emu::lane()] = v;
    warpnorm_emu::wait_at(c.warp_barrier);
    const float r = in_range ? ex[src] : v;
    warpnorm_emu::wait_at(c.warp_barrier);
    return r;
}
inline float __shfl_xor_sync(unsigned, float v, int mask) {
    return shuffle_from(v, warpnorm_emu::lane() ^ unsigned(mask), true);
}
inline float __shfl_sync(unsigned, float v, int src_lane) { return shuffle_from(v, unsigned(src_lane) % 32, true); }
inline float __shfl_down_sync(unsigned, float v, unsigned delta) {
    const unsigned src = warpnorm_emu::lane() + delta;
    return shuffle_from(v, src, src < 32);
}

// Global memory shared between the blocks of a launch (bwd_v2_split.cuh's group barrier).
// The fibers of a launch run on one OS thread and switch only at barriers and in
// __nanosleep, so a plain read-modify-write is atomic, every write is seen by the next
// read, and a fence has nothing to order. __nanosleep is where a thread spinning on such
// memory lets the others run.
inline unsigned atomicAdd(unsigned* address, unsigned v) {
    const unsigned old = *address;
    *address = old + v;
    warpnorm_emu::Scheduler::of_this_os_thread().note_write();
    return old;
}
inline void __threadfence() {}
inline void __nanosleep(unsigned) { warpnorm_emu::Scheduler::of_this_os_thread().yield(); }
inline float __ldcg(const float* address) { return *address; }

// Asynchronous copies (common.cuh). On a GPU a copy lands at some time between its issue
// and the wait that covers its group; here its target turns to NaN at the issue and gets
// the data at the wait, so that a kernel reading the target before the wait, or still
// reading it when the copy is issued, reads NaN. Copies go to the block's dynamic shared
// memory, 16-byte aligned at both ends (anything else aborts: a GPU would fault). Their
// global-memory bytes count when they are issued; for the race check the copy writes the
// target from the issue until the wait.
inline void copy_async_16(void* shared_dst, const void* global_src) {
    auto& c = warpnorm_emu::ctx();
    const char* dst = static_cast<const char*>(shared_dst);
    const char* smem = reinterpret_cast<const char*>(c.dynamic_smem);
    const bool in_smem = dst >= smem && dst + 16 <= smem + c.dynamic_smem_bytes;
    const bool aligned = (reinterpret_cast<std::uintptr_t>(shared_dst) | reinterpret_cast<std::uintptr_t>(global_src)) % 16 == 0;
    if (!in_smem || !aligned) {
        std::fprintf(stderr, "copy_async_16: %p <- %p is not a 16-byte aligned copy into dynamic shared memory\n",
                     shared_dst, global_src);
        std::abort();
    }
    warpnorm_emu::count_traffic(global_src, 16, false);
    c.races->copy_issued(std::size_t(dst - smem), 16, warpnorm_emu::shared_accessor());
    float* target = static_cast<float*>(shared_dst);
    for (int i = 0; i < 4; ++i) target[i] = std::numeric_limits<float>::quiet_NaN();
    c.async_copies.push_back({shared_dst, global_src, c.async_groups});
}
inline void copy_async_commit() { ++warpnorm_emu::ctx().async_groups; }
template <int N> inline void copy_async_wait() {
    auto& c = warpnorm_emu::ctx();
    std::erase_if(c.async_copies, [&](const warpnorm_emu::ThreadContext::AsyncCopy& copy) {
        if (copy.group + N >= c.async_groups) return false;
        c.races->copy_landed(std::size_t(warpnorm_emu::shared_offset(copy.dst)), 16, warpnorm_emu::shared_accessor());
        std::memcpy(copy.dst, copy.src, 16);
        return true;
    });
}

struct float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }



