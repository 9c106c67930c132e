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
};

}  // namespace

// Launches kernel `expr` with `params` on a `grid_x` x `grid_y` grid of blocks of `block`
// threads with `smem_bytes` of dynamic shared memory, and sets `*loaded` / `*stored` to the
// bytes of global memory it read and wrote. Returns 0, or -1 when `expr` is not emulated,
// -2 for a block size that is not a whole number of warps.
extern "C" int warpnorm_emu_launch(const char* expr, const void* params, unsigned grid_x, unsigned grid_y,
                                   unsigned block, unsigned smem_bytes, unsigned long long* loaded,
                                   unsigned long long* stored) {
    Entry run = nullptr;
    for (const Kernel& k : kKernels) {
        if (std::string_view(k.expr) == expr) run = k.run;
    }
    if (!run) return -1;
    if (block == 0 || block % 32 != 0) return -2;
    // __shared__ arrays are statics here (cuda_emulation.h): one launch at a time, or two
    // tests running the same kernel on parallel test threads would share them.
    static std::mutex one_launch_at_a_time;
    const std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    const unsigned warps = block / 32;
    std::vector<float> smem(smem_bytes / sizeof(float) + 1, std::numeric_limits<float>::quiet_NaN());
    std::vector<float> exchange(block, 0.f);
    std::atomic<unsigned long long> total_loaded{0}, total_stored{0};
    std::barrier<> block_barrier(block);
    std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
    for (unsigned w = 0; w < warps; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    // One host thread per CUDA thread of a block, reused for every block of the grid:
    // blocks run one after another, separated by two barriers while thread 0 poisons the
    // shared memory again for the next block.
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            auto& c = warpnorm_emu::ctx;
            c.thread = {t, 0, 0};
            c.block_dim = {block, 1, 1};
            c.grid_dim = {grid_x, grid_y, 1};
            c.block_barrier = &block_barrier;
            c.warp_barrier = warp_barriers[t / 32].get();
            c.warp_exchange = &exchange[(t / 32) * 32];
            c.dynamic_smem = smem.data();
            c.dynamic_smem_bytes = smem_bytes;
            c.loaded = c.stored = 0;
            for (unsigned b = 0; b < grid_x * grid_y; ++b) {
                c.block = {b % grid_x, b / grid_x, 0};
                run(params);
                block_barrier.arrive_and_wait();
                if (t == 0) std::fill(smem.begin(), smem.end(), std::numeric_limits<float>::quiet_NaN());
                block_barrier.arrive_and_wait();
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
