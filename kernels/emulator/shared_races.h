// The CPU emulation's race check of a block's dynamic shared memory: an access by one
// thread to bytes another thread of the block wrote (or read, for a write) with no barrier
// between them that both passed is a data race on a GPU, even where the emulation's
// schedule happens to order the two (its fibers switch only at barriers, so a missing
// __syncthreads never shows in the results here).
//
// Barriers are counted per thread: the k-th __syncthreads (or cluster barrier) of a block
// is the same event for all its threads, as is the k-th warp barrier (a __syncwarp, or a
// shuffle) for the lanes of a warp. Two accesses are ordered when they are by the same
// thread, or when the later one's thread had passed more block barriers than the earlier
// one's had, or more warp barriers for two lanes of one warp. Checked: the accesses made
// through common.cuh's memory helpers and the asynchronous copies, at 2-byte granularity
// (the smallest element). Not checked: static __shared__ arrays (accessed directly), and
// another block's shared memory reached through a cluster.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

namespace warpnorm_emu {

// Who made an access, and the barriers it had passed by then.
struct SharedAccessor {
    int thread = kNobody;  // index in the block
    unsigned long long block_syncs = 0, warp_syncs = 0;

    static constexpr int kNobody = -1;
    static constexpr int kSeveral = -2;  // readers only: more than one thread

    bool ordered_before(const SharedAccessor& later) const {
        return thread == kNobody || thread == later.thread || later.block_syncs > block_syncs ||
               (thread >= 0 && thread / 32 == later.thread / 32 && later.warp_syncs > warp_syncs);
    }
};

class SharedRaces {
  public:
    // A block starts, with `bytes` of dynamic shared memory never accessed.
    void reset(std::size_t bytes) {
        units_.assign((bytes + 1) / 2, Unit{});
        found_ = 0;
        first_.clear();
    }

    void access(std::size_t offset, std::size_t bytes, bool is_store, const SharedAccessor& who) {
        for (std::size_t u = offset / 2; u < (offset + bytes + 1) / 2 && u < units_.size(); ++u) {
            Unit& unit = units_[u];
            if (!unit.writer.ordered_before(who)) report(u, is_store, "written", unit.writer.thread, who);
            if (is_store) {
                // Readers of this phase (since the last block barrier) must be ordered too.
                const bool read_this_phase = unit.reader.thread != SharedAccessor::kNobody &&
                                             unit.reader.block_syncs == who.block_syncs;
                if (read_this_phase && (unit.reader.thread == SharedAccessor::kSeveral || !unit.reader.ordered_before(who))) {
                    report(u, is_store, "read", unit.reader.thread, who);
                }
                unit.writer = who;
                unit.reader = SharedAccessor{};
            } else if (unit.reader.thread == SharedAccessor::kNobody || unit.reader.block_syncs < who.block_syncs) {
                unit.reader = who;
            } else if (unit.reader.thread != who.thread) {
                unit.reader.thread = SharedAccessor::kSeveral;
            }
        }
    }

    // How many racing accesses were found since the block started, and the first.
    unsigned long long found() const { return found_; }
    const std::string& first() const { return first_; }

  private:
    struct Unit {
        SharedAccessor writer, reader;
    };

    void report(std::size_t unit, bool is_store, const char* earlier, int other, const SharedAccessor& who) {
        if (found_++ > 0) return;
        char message[200];
        const std::string by = other == SharedAccessor::kSeveral ? "other threads" : "thread " + std::to_string(other);
        std::snprintf(message, sizeof(message), "thread %d %s byte %zu of dynamic shared memory, %s by %s with no barrier between",
                      who.thread, is_store ? "wrote" : "read", unit * 2, earlier, by.c_str());
        first_ = message;
    }

    std::vector<Unit> units_;
    unsigned long long found_ = 0;
    std::string first_;
};

}  // namespace warpnorm_emu
