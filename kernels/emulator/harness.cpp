// Runs warpnorm's kernels on the CPU (see cuda_emulation.h). build.rs compiles this file
// with the `emulator` feature, generating kernel_table.inc: one entry per emulated
// template instantiation, keyed by the same name expression the GPU launch layer uses.
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "layernorm_bwd.cu"
#include "layernorm_fwd.cu"
#include "sharded.cu"

// The emulator's own test kernel (src/cuda/emulator.rs): each block writes 1000 * its rank
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
};

}  // namespace

// Launches kernel `expr` with `params` on a `grid_x` x `grid_y` grid of blocks of `block`
// threads with `smem_bytes` of dynamic shared memory, in clusters of `cluster` blocks along
// x (1: no clusters), and sets `*loaded` / `*stored` to the bytes of global memory it read
// and wrote. Returns 0, or -1 when `expr` is not emulated, -2 for a block size that is not a
// whole number of warps, -3 for a cluster size that is not 1-8 or does not divide grid_x.
extern "C" int warpnorm_emu_launch(const char* expr, const void* params, unsigned grid_x, unsigned grid_y,
                                   unsigned block, unsigned cluster, unsigned smem_bytes,
                                   unsigned long long* loaded, unsigned long long* stored) {
    Entry run = nullptr;
    for (const Kernel& k : kKernels) {
        if (std::string_view(k.expr) == expr) run = k.run;
    }
    if (!run) return -1;
    if (block == 0 || block % 32 != 0) return -2;
    if (cluster == 0 || cluster > 8 || grid_x % cluster != 0) return -3;
    // __shared__ arrays are statics here (cuda_emulation.h): one launch at a time, or two
    // tests running the same kernel on parallel test threads would share them.
    static std::mutex one_launch_at_a_time;
    const std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    const unsigned warps = block / 32;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    // Per block of a cluster: shared memory, warp exchange buffers and barriers.
    std::vector<std::vector<float>> smem(cluster, std::vector<float>(smem_bytes / sizeof(float) + 1, nan));
    std::vector<float*> smem_of(cluster);
    for (unsigned r = 0; r < cluster; ++r) smem_of[r] = smem[r].data();
    std::vector<float> exchange(cluster * block, 0.f);
    std::atomic<unsigned long long> total_loaded{0}, total_stored{0};
    std::vector<std::unique_ptr<std::barrier<>>> block_barriers, warp_barriers;
    for (unsigned r = 0; r < cluster; ++r) block_barriers.push_back(std::make_unique<std::barrier<>>(block));
    for (unsigned w = 0; w < cluster * warps; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    std::barrier<> cluster_barrier(cluster * block);
    // One host thread per CUDA thread of a cluster, reused for every cluster of the grid:
    // clusters run one after another, separated by two cluster barriers while each block's
    // thread 0 poisons its shared memory again for the next.
    std::vector<std::thread> threads;
    threads.reserve(cluster * block);
    for (unsigned t = 0; t < cluster * block; ++t) {
        threads.emplace_back([&, t] {
            auto& c = warpnorm_emu::ctx;
            const unsigned rank = t / block;
            c.thread = {t % block, 0, 0};
            c.block_dim = {block, 1, 1};
            c.grid_dim = {grid_x, grid_y, 1};
            c.block_barrier = block_barriers[rank].get();
            c.warp_barrier = warp_barriers[t / 32].get();
            c.warp_exchange = &exchange[(t / 32) * 32];
            c.dynamic_smem = smem_of[rank];
            c.dynamic_smem_bytes = smem_bytes;
            c.cluster_size = cluster;
            c.cluster_rank = rank;
            c.cluster_barrier = &cluster_barrier;
            c.cluster_smem = smem_of.data();
            c.loaded = c.stored = 0;
            for (unsigned first = 0; first < grid_x * grid_y; first += cluster) {
                const unsigned b = first + rank;
                c.block = {b % grid_x, b / grid_x, 0};
                run(params);
                cluster_barrier.arrive_and_wait();
                if (c.thread.x == 0) std::fill(smem[rank].begin(), smem[rank].end(), nan);
                cluster_barrier.arrive_and_wait();
            }
            total_loaded += c.loaded;
            total_stored += c.stored;
        });
    }
    for (auto& th : threads) th.join();
    *loaded = total_loaded;
    *stored = total_stored;
    return 0;
}
