// The CPU emulation's race check of a block's dynamic shared memory: an access by one
// thread to bytes another thread of the block wrote (or read, for a write) with no barrier
// between them that both passed is a data race on a GPU, even where the emulation's
// schedule happens to order the two (its fibers switch only at barriers, so a missing
// __syncthreads never shows in the results here).
//
// Barriers are counted per thread: the k-th __syncthreads (or cluster barrier) of a block
// is the same event for all its threads, as is the k-th __syncwarp for the lanes of a warp
// (a shuffle exchanges values but orders no memory: it does not count). Two accesses are
// ordered when they are by the same thread, or when the later one's thread had passed more
// block barriers than the earlier one's had, or more warp barriers for two lanes of one
// warp. An asynchronous copy writes its target from its issue until the wait that lands
// it: any other access to the target in between races with it.
//
// Checked: the accesses made through common.cuh's memory helpers (the CTA reductions'
// scratch, the v2 row stashes and their sums, the backward's row-slot sums, the staged
// parameters, the row caches) and the asynchronous copies, at 2-byte granularity (the
// smallest element). Not checked: static __shared__ arrays (the v2 finalize's), and the
// cluster kernel's row-sum slots, which other blocks of the cluster read through plain
// pointers.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

namespace warpnorm_emu {

// Who made an access, and the barriers it had passed by then.
struct SharedAccessor {
    int thread;  // index in the block
    unsigned long long block_syncs, warp_syncs;

    int warp() const { return thread / 32; }
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
        for_units(offset, bytes, [&](std::size_t u, Unit& unit) {
            if (unit.copying != kNobody) {
                report(u, is_store, "while thread " + std::to_string(unit.copying) + "'s asynchronous copy to it was in flight", who);
            }
            if (unit.writer.thread != kNobody && !ordered(unit.writer, who)) {
                report(u, is_store, "written by thread " + std::to_string(unit.writer.thread) + kNoBarrier, who);
            }
            if (is_store) {
                if (unit.readers.racing_with(who)) report(u, is_store, "read by " + unit.readers.who() + kNoBarrier, who);
                unit.writer = who;
                unit.readers = Readers{};
            } else {
                unit.readers.add(who);
            }
        });
    }

    // An asynchronous copy by `who` to these bytes is issued (a write from now on), or
    // lands (the write is done).
    void copy_issued(std::size_t offset, std::size_t bytes, const SharedAccessor& who) {
        access(offset, bytes, true, who);
        for_units(offset, bytes, [&](std::size_t, Unit& unit) { unit.copying = who.thread; });
    }
    void copy_landed(std::size_t offset, std::size_t bytes, const SharedAccessor& who) {
        for_units(offset, bytes, [&](std::size_t, Unit& unit) {
            unit.copying = kNobody;
            unit.writer = who;
        });
    }

    // How many 2-byte units were accessed racily since the block started, and the first
    // race found.
    unsigned long long found() const { return found_; }
    const std::string& first() const { return first_; }

  private:
    static constexpr int kNobody = -1;
    static constexpr const char* kNoBarrier = " with no barrier between";

    static bool ordered(const SharedAccessor& earlier, const SharedAccessor& later) {
        return earlier.thread == later.thread || later.block_syncs > earlier.block_syncs ||
               (earlier.warp() == later.warp() && later.warp_syncs > earlier.warp_syncs);
    }

    // The reads of a unit since its last write, in the latest block phase they were made
    // in (a write in a later phase is ordered after all of them): by one thread or several,
    // all of one warp or not, and the most warp barriers any of them had passed.
    struct Readers {
        int thread = kNobody;  // or kSeveral
        int warp = kNobody;    // or kMixed
        unsigned long long block_syncs = 0, warp_syncs = 0;

        static constexpr int kSeveral = -2;
        static constexpr int kMixed = -2;

        void add(const SharedAccessor& who) {
            if (thread == kNobody || who.block_syncs > block_syncs) {
                *this = {who.thread, who.warp(), who.block_syncs, who.warp_syncs};
                return;
            }
            if (who.thread != thread) thread = kSeveral;
            if (who.warp() != warp) warp = kMixed;
            warp_syncs = std::max(warp_syncs, who.warp_syncs);
        }
        bool racing_with(const SharedAccessor& writer) const {
            if (thread == kNobody || writer.block_syncs > block_syncs || thread == writer.thread) return false;
            return !(warp == writer.warp() && writer.warp_syncs > warp_syncs);
        }
        std::string who() const { return thread == kSeveral ? "threads" : "thread " + std::to_string(thread); }
    };

    struct Unit {
        SharedAccessor writer{kNobody, 0, 0};
        Readers readers;
        int copying = kNobody;  // the thread whose asynchronous copy is writing it
    };

    // f(index, unit) for each 2-byte unit the bytes [offset, offset + bytes) touch.
    template <typename F> void for_units(std::size_t offset, std::size_t bytes, F f) {
        for (std::size_t u = offset / 2; u < (offset + bytes + 1) / 2 && u < units_.size(); ++u) f(u, units_[u]);
    }

    void report(std::size_t unit, bool is_store, const std::string& other, const SharedAccessor& who) {
        if (found_++ > 0) return;
        char message[240];
        std::snprintf(message, sizeof(message), "thread %d %s byte %zu of dynamic shared memory, %s", who.thread,
                      is_store ? "wrote" : "read", unit * 2, other.c_str());
        first_ = message;
    }

    std::vector<Unit> units_;
    unsigned long long found_ = 0;
    std::string first_;
};

}  // namespace warpnorm_emu
