// Runs warpnorm's kernels on the CPU (see cuda_emulation.h). build.rs compiles this file
// with the `emulator` feature, generating kernel_table.inc: one entry per emulated
// template instantiation, keyed by the same name expression the GPU launch layer uses.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include "layernorm_bwd.cu"
#include "layernorm_fwd.cu"
#include "sharded.cu"

// The emulator's own test kernels (src/cuda/emulator.rs). cluster_exchange: each block writes 1000 * its rank
// in the cluster + the thread's index into its dynamic shared memory, and after the
// cluster barrier each thread reads the same word of the next block of its cluster.
namespace warpnorm_emu_selftest {

struct ClusterExchange {
    float* out;
};

void cluster_exchange(const ClusterExchange p) {
    const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    WARPNORM_DYNAMIC_SMEM(smem);
    smem[threadIdx.x] = 1000.f * float(cluster.block_rank()) + float(threadIdx.x);
    cluster.sync();
    const unsigned next = (cluster.block_rank() + 1) % cluster.num_blocks();
    p.out[blockIdx.x * blockDim.x + threadIdx.x] = *cluster.map_shared_rank(&smem[threadIdx.x], next);
    cluster.sync();
}

// grid_count: thread 0 of every block counts its block on `counter` and waits until every
// block of the grid has: only a launch that runs them all at once (cooperative) finishes.
// Then it writes the count it saw to out[blockIdx.x].
struct GridCount {
    unsigned* counter;
    float* out;
};

void grid_count(const GridCount p) {
    if (threadIdx.x == 0) {
        atomicAdd(p.counter, 1u);
        while (*static_cast<volatile unsigned*>(p.counter) < gridDim.x) __nanosleep(64);
        p.out[blockIdx.x] = float(*p.counter);
    }
    __syncthreads();
}

// Thread 0 skips the block's barrier that the others wait at: a deadlock, which the
// launch must report instead of hanging.
void barrier_skipped_by_thread_0(const ClusterExchange p) {
    if (threadIdx.x != 0) __syncthreads();
    p.out[threadIdx.x] = 1.f;
}

// Thread 1 fills a local array longer than its stack, past the stack's bottom into the top
// of thread 0's, which has finished by then (a block's fibers first run in thread order):
// an overflow the launch must report.
void stack_overflow_by_thread_1(const ClusterExchange p) {
    if (threadIdx.x == 1) {
        volatile char big[warpnorm_emu::Stacks::kBytes + 512];
        for (std::size_t i = 0; i < sizeof(big); ++i) big[i] = 1;
        p.out[threadIdx.x] = float(big[0]);
    }
}

// shared_handoff: each thread writes its word of the dynamic shared memory, and reads
// into out[threadIdx.x] the word of the thread `distance` further on (within its warp for 1,
// the next warp's for 32): after its write (`war` 0), or before writing its word again
// (`war` 1, the first write and the read then separated by a __syncthreads). Between the
// two accesses it waits as `sync` says (0: not at all, 1: __syncthreads, 2: __syncwarp, 3:
// a shuffle, which orders no memory).
// Without a barrier both threads pass between a write and the other thread's access, a
// race on a GPU whatever order this emulation runs them in.
struct SharedHandoff {
    float* out;
    int sync;
    unsigned distance;
    int war;
};

void shared_handoff(const SharedHandoff p) {
    WARPNORM_DYNAMIC_SMEM(smem);
    const unsigned warp = threadIdx.x / 32 * 32;
    const unsigned other = p.distance < 32 ? warp + (threadIdx.x + p.distance) % 32 : (threadIdx.x + p.distance) % blockDim.x;
    warpnorm::store(&smem[threadIdx.x], float(threadIdx.x));
    if (p.war) {
        __syncthreads();
        p.out[threadIdx.x] = warpnorm::load(&smem[other]);
    }
    if (p.sync == 1) __syncthreads();
    if (p.sync == 2) __syncwarp();
    if (p.sync == 3) p.out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
    if (p.war) {
        warpnorm::store(&smem[threadIdx.x], -1.f);
    } else {
        p.out[threadIdx.x] = warpnorm::load(&smem[other]);
    }
}

// copy_handoff: each thread copies 16 bytes of `src` into its slot of the dynamic shared
// memory asynchronously, and after a __syncthreads reads the next thread's slot into
// `out`. With `wait_first` it waits for its copy before the barrier; without, after the
// read: the next thread's copy may still be in flight when it is read.
struct CopyHandoff {
    float* out;
    const float* src;
    int wait_first;
};

void copy_handoff(const CopyHandoff p) {
    WARPNORM_DYNAMIC_SMEM(smem);
    copy_async_16(&smem[4 * threadIdx.x], &p.src[4 * threadIdx.x]);
    copy_async_commit();
    if (p.wait_first) copy_async_wait<0>();
    __syncthreads();
    const unsigned next = (threadIdx.x + 1) % blockDim.x;
    float v[4];
    warpnorm::load_vec<float, 4>(&smem[4 * next], v);
    for (int i = 0; i < 4; ++i) p.out[4 * threadIdx.x + i] = v[i];
    if (!p.wait_first) copy_async_wait<0>();
}

}  // namespace warpnorm_emu_selftest

namespace {

using Entry = void (*)(const void*);

template <typename Params> void call(void (*kernel)(const Params), const void* params) {
    kernel(*static_cast<const Params*>(params));
}

struct Kernel {
    const char* expr;
    Entry run;
};

const Kernel kKernels[] = {
#include "kernel_table.inc"
    {"warpnorm_emu_selftest::cluster_exchange",
     [](const void* p) { call(&warpnorm_emu_selftest::cluster_exchange, p); }},
    {"warpnorm_emu_selftest::grid_count", [](const void* p) { call(&warpnorm_emu_selftest::grid_count, p); }},
    {"warpnorm_emu_selftest::copy_handoff", [](const void* p) { call(&warpnorm_emu_selftest::copy_handoff, p); }},
    {"warpnorm_emu_selftest::shared_handoff",
     [](const void* p) { call(&warpnorm_emu_selftest::shared_handoff, p); }},
    {"warpnorm_emu_selftest::barrier_skipped_by_thread_0",
     [](const void* p) { call(&warpnorm_emu_selftest::barrier_skipped_by_thread_0, p); }},
    {"warpnorm_emu_selftest::stack_overflow_by_thread_1",
     [](const void* p) { call(&warpnorm_emu_selftest::stack_overflow_by_thread_1, p); }},
};

}  // namespace

// Launches kernel `expr` with `params` on a `grid_x` x `grid_y` grid of blocks of `block`
// threads with `smem_bytes` of dynamic shared memory, in clusters of `cluster` blocks along
// x (1: no clusters), all blocks at once when `cooperative` (else a cluster at a time), and
// sets `*loaded` / `*stored` to the bytes of global memory it read and wrote. Returns 0, or
// -1 when `expr` is not emulated, -2 for a block size that is not a whole number of warps,
// -3 for a cluster size that is not 1-8 or does not divide grid_x, -4 when the kernel's
// threads deadlock (at a barrier, or spinning on global memory), -5 when the fibers'
// stacks cannot be mapped, -6 when a thread overflows its stack, -7 when threads race on
// dynamic shared memory (shared_races.h; the first race described in the `message_len`
// bytes at `message`, NUL-terminated). Launches on different OS threads run in parallel:
// each has its own fibers and `__shared__` statics.
extern "C" int warpnorm_emu_launch(const char* expr, const void* params, unsigned grid_x, unsigned grid_y,
                                   unsigned block, unsigned cluster, int cooperative, unsigned smem_bytes,
                                   unsigned long long* loaded, unsigned long long* stored, char* message,
                                   unsigned message_len) {
    Entry run = nullptr;
    for (const Kernel& k : kKernels) {
        if (std::string_view(k.expr) == expr) run = k.run;
    }
    if (!run) return -1;
    if (block == 0 || block % 32 != 0) return -2;
    if (cluster == 0 || cluster > 8 || grid_x % cluster != 0) return -3;
    using warpnorm_emu::Barrier;
    // The blocks that run at the same time: a cluster, or the whole grid.
    const unsigned together = cooperative ? grid_x * grid_y : cluster;
    const unsigned threads = together * block;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    // Per block: shared memory and a barrier; per cluster: a barrier; per warp: a barrier
    // and the shuffles' exchange buffer.
    std::vector<std::vector<float>> smem(together, std::vector<float>(smem_bytes / sizeof(float) + 1, nan));
    std::vector<warpnorm_emu::SharedRaces> races(together);
    std::vector<float*> smem_of(together);
    for (unsigned b = 0; b < together; ++b) smem_of[b] = smem[b].data();
    std::vector<float> exchange(threads, 0.f);
    std::vector<Barrier> block_barriers(together, Barrier{block});
    std::vector<Barrier> warp_barriers(threads / 32, Barrier{32});
    std::vector<Barrier> cluster_barriers(together / cluster, Barrier{cluster * block});
    std::vector<warpnorm_emu::ThreadContext> contexts(threads);
    std::vector<warpnorm_emu::ThreadContext*> context_of(threads);
    std::vector<unsigned> member_of(threads);  // the thread's block among those running together
    for (unsigned t = 0; t < threads; ++t) {
        auto& c = contexts[t];
        const unsigned member = t / block;
        member_of[t] = member;
        c.thread = {t % block, 0, 0};
        c.block_dim = {block, 1, 1};
        c.grid_dim = {grid_x, grid_y, 1};
        c.block_barrier = &block_barriers[member];
        c.warp_barrier = &warp_barriers[t / 32];
        c.warp_exchange = &exchange[(t / 32) * 32];
        c.dynamic_smem = smem_of[member];
        c.dynamic_smem_bytes = smem_bytes;
        c.races = &races[member];
        c.cluster_size = cluster;
        c.cluster_rank = member % cluster;
        c.cluster_barrier = &cluster_barriers[member / cluster];
        c.cluster_smem = &smem_of[member - member % cluster];
        c.loaded = c.stored = 0;
        context_of[t] = &c;
    }
    // One cluster (a lone block: a cluster of one), or the whole grid, after another, each
    // block's shared memory poisoned again before the next.
    auto& scheduler = warpnorm_emu::Scheduler::of_this_os_thread();
    for (unsigned first = 0; first < grid_x * grid_y; first += together) {
        for (unsigned t = 0; t < threads; ++t) {
            const unsigned b = first + member_of[t];
            contexts[t].block = {b % grid_x, b / grid_x, 0};
            contexts[t].async_copies.clear();
            contexts[t].async_groups = 0;
            contexts[t].block_syncs = contexts[t].warp_syncs = 0;
        }
        for (auto& r : races) r.reset(smem_bytes);
        switch (scheduler.run(context_of.data(), threads, run, params)) {
            case warpnorm_emu::Scheduler::Outcome::Finished:
                break;
            case warpnorm_emu::Scheduler::Outcome::Deadlock:
                return -4;
            case warpnorm_emu::Scheduler::Outcome::NoStackMemory:
                return -5;
            case warpnorm_emu::Scheduler::Outcome::StackOverflow:
                return -6;
        }
        for (unsigned m = 0; m < together; ++m) {
            if (races[m].found() == 0) continue;
            const unsigned b = first + m;
            std::snprintf(message, message_len, "block (%u, %u): %s (%llu racing 2-byte units in the block)", b % grid_x,
                          b / grid_x, races[m].first().c_str(), races[m].found());
            return -7;
        }
        for (auto& m : smem) std::fill(m.begin(), m.end(), nan);
    }
    *loaded = *stored = 0;
    for (const auto& c : contexts) {
        *loaded += c.loaded;
        *stored += c.stored;
    }
    return 0;
}
