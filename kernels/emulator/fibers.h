// The emulated CUDA threads of a launch as fibers: each has its own stack, one OS thread
// runs them all and switches between them only where a thread waits at a barrier (a
// warp's shuffle, __syncthreads, a cluster's sync). A wait is a user-space context switch
// instead of an OS thread being put to sleep and woken, so a launch costs little more than
// its arithmetic, and a launch keeps to one core, leaving the others to other tests.
// The fibers run in a fixed order, so the emulation is reproducible, and a kernel whose
// threads do not all reach the same barriers is reported as a deadlock instead of hanging
// (undefined behaviour on a GPU).
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace warpnorm_emu {

struct ThreadContext;

// One fiber's saved execution state, and the switch from one to another. On x86-64 ELF
// platforms (Linux, the BSDs) the switch saves the callee-saved registers on the old stack
// and returns on the new one: a few nanoseconds. Elsewhere, and where the build enables
// CET shadow stacks (which a return onto another stack would violate), it is ucontext's
// swapcontext, which also saves the signal mask with a system call at every switch:
// correct, several times slower.
#if defined(__x86_64__) && defined(__ELF__) && !(defined(__CET__) && (__CET__ & 2))
#define WARPNORM_EMU_OWN_SWITCH 1
#else
#define WARPNORM_EMU_OWN_SWITCH 0
#endif

class Context {
  public:
    // Prepares a fiber that runs `main` on the `bytes` of stack above `bottom`. `main`
    // must never return: it ends by switching away for good.
    void start(char* bottom, std::size_t bytes, void (*main)());
    // Saves the running state in `from` and resumes `to`.
    static void swap(Context& from, Context& to);

  private:
#if WARPNORM_EMU_OWN_SWITCH
    void* sp_ = nullptr;
#else
    ucontext_t context_;
#endif
};

#if WARPNORM_EMU_OWN_SWITCH
// warpnorm_emu_switch(&from, to): pushes the registers the System V ABI has a callee keep
// (rbx, rbp, r12-r15), stores the stack pointer in *from, loads `to` as the stack pointer,
// pops the same registers from it and returns to the address on top of it. The MXCSR and
// x87 control words are left alone: nothing the kernels run changes them.
extern "C" void warpnorm_emu_switch(void** from, void* to);
asm(R"(
    .pushsection .text
    .globl warpnorm_emu_switch
    .hidden warpnorm_emu_switch
    .type warpnorm_emu_switch, @function
warpnorm_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size warpnorm_emu_switch, .-warpnorm_emu_switch
    .popsection
)");

inline void Context::start(char* bottom, std::size_t bytes, void (*main)()) {
    // A frame as warpnorm_emu_switch leaves it: six zeroed registers, then `main` as the
    // return address, then a null return address for `main` itself (where a debugger's
    // backtrace stops). After the `ret`, rsp + 8 is 16-byte aligned, as at any call.
    auto* top = reinterpret_cast<void**>(reinterpret_cast<std::uintptr_t>(bottom + bytes) & ~std::uintptr_t(15));
    top -= 2;
    top[0] = reinterpret_cast<void*>(main);
    top[1] = nullptr;
    top -= 6;
    for (int r = 0; r < 6; ++r) top[r] = nullptr;
    sp_ = top;
}

inline void Context::swap(Context& from, Context& to) { warpnorm_emu_switch(&from.sp_, to.sp_); }
#else
inline void Context::start(char* bottom, std::size_t bytes, void (*main)()) {
    getcontext(&context_);
    context_.uc_stack.ss_sp = bottom;
    context_.uc_stack.ss_size = bytes;
    context_.uc_link = nullptr;
    makecontext(&context_, main, 0);
}

inline void Context::swap(Context& from, Context& to) { swapcontext(&from.context_, &to.context_); }
#endif

// A barrier of `count` emulated threads (a warp, a block or a cluster): the last one to
// arrive starts the next phase, which releases those waiting.
struct Barrier {
    unsigned count = 0;
    unsigned arrived = 0;
    unsigned long long phase = 0;
};

// The fibers' stacks: one mapping per OS thread, reused by every launch it runs (pages are
// committed as they are touched). The kernels keep a few hundred bytes of registers per
// thread; 64 KiB leaves room for the C++ runtime's frames. An overflow is caught after the
// fact by a canary at the bottom of each stack, rather than by guard pages: a guard page
// per stack splits the mapping in two, and a few test threads running 8-block clusters
// (8192 stacks each) would exhaust the process's map count.
class Stacks {
  public:
    static constexpr std::size_t kBytes = 64 * 1024;

    Stacks() = default;
    Stacks(const Stacks&) = delete;
    Stacks& operator=(const Stacks&) = delete;
    ~Stacks() { release(); }

    // Makes room for `n` stacks, each with its canary set; false when the memory cannot be
    // mapped.
    bool reserve(std::size_t n) {
        if (n > count_) {
            release();
            void* base = mmap(nullptr, n * kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                              -1, 0);
            if (base == MAP_FAILED) return false;
            base_ = static_cast<char*>(base);
            count_ = n;
        }
        for (std::size_t i = 0; i < n; ++i) *canary(i) = kCanary;
        return true;
    }

    char* bottom(std::size_t i) const { return base_ + i * kBytes; }
    // Whether stack `i`'s canary survived: its thread never ran past the bottom.
    bool intact(std::size_t i) const { return *canary(i) == kCanary; }

  private:
    static constexpr std::uint64_t kCanary = 0x574152504e4f524d;  // "WARPNORM"
    std::uint64_t* canary(std::size_t i) const { return reinterpret_cast<std::uint64_t*>(bottom(i)); }
    void release() {
        if (base_) munmap(base_, count_ * kBytes);
        base_ = nullptr;
        count_ = 0;
    }

    char* base_ = nullptr;
    std::size_t count_ = 0;
};

// Runs one kernel body per emulated thread, all to completion, on the calling OS thread.
class Scheduler {
  public:
    using Body = void (*)(const void*);

    enum class Outcome { Finished, Deadlock, NoStackMemory, StackOverflow };

    // Runs `body(arg)` as each of the `n` threads `threads[i]` (each fiber's `current`
    // while it runs). A deadlock: some threads wait at a barrier that the others, finished
    // or waiting elsewhere, never reach; their stacks are abandoned then (the kernels hold
    // nothing that needs destroying).
    Outcome run(ThreadContext* const* threads, std::size_t n, Body body, const void* arg);

    // The running thread waits at `b` until all `b.count` threads have arrived.
    void wait(Barrier& b) {
        ++events_;
        if (++b.arrived == b.count) {
            b.arrived = 0;
            ++b.phase;
            return;
        }
        Fiber& f = fibers_[running_];
        f.waiting_on = &b;
        f.released_at = b.phase + 1;
        Context::swap(f.context, scheduler_);
    }

    // Something another thread may be spinning on changed (an atomic update).
    void note_write() { ++events_; }

    // The running thread lets the others run: it spins on memory that another thread
    // writes (a barrier in global memory), and runs again on the next pass.
    void yield() {
        Fiber& f = fibers_[running_];
        f.spinning = true;
        Context::swap(f.context, scheduler_);
    }

    static Scheduler& of_this_os_thread() {
        static thread_local Scheduler scheduler;
        return scheduler;
    }

  private:
    struct Fiber {
        Context context;
        ThreadContext* thread;
        Barrier* waiting_on;
        unsigned long long released_at;  // the phase of `waiting_on` that lets it go on
        bool spinning;                   // it last stopped in yield()
        bool finished;
    };

    bool runnable(const Fiber& f) const {
        return !f.finished && (f.waiting_on == nullptr || f.waiting_on->phase >= f.released_at);
    }

    [[noreturn]] static void entry();

    Context scheduler_;
    std::vector<Fiber> fibers_;
    Stacks stacks_;
    std::size_t running_ = 0;
    // Barrier arrivals and atomic updates so far: a fiber's run that changed nothing of
    // them, between two spins, made no progress.
    unsigned long long events_ = 0;
    Body body_ = nullptr;
    const void* arg_ = nullptr;
};

// The thread the running fiber emulates.
inline thread_local ThreadContext* current = nullptr;

inline void Scheduler::entry() {
    Scheduler& s = of_this_os_thread();
    s.body_(s.arg_);
    Fiber& f = s.fibers_[s.running_];
    f.finished = true;
    Context::swap(f.context, s.scheduler_);
    __builtin_unreachable();  // a finished fiber is never resumed
}

inline Scheduler::Outcome Scheduler::run(ThreadContext* const* threads, std::size_t n, Body body, const void* arg) {
    if (!stacks_.reserve(n)) return Outcome::NoStackMemory;
    body_ = body;
    arg_ = arg;
    fibers_.assign(n, Fiber{});
    for (std::size_t i = 0; i < n; ++i) {
        Fiber& f = fibers_[i];
        f.thread = threads[i];
        // Above the canary (Stacks): the first 16 bytes stay out of the frame.
        f.context.start(stacks_.bottom(i) + 16, Stacks::kBytes - 16, &Scheduler::entry);
    }
    // Round robin: each runnable fiber runs until it waits, yields or finishes, in
    // ascending order of thread index on one pass and descending on the next, so that a
    // read racing a write between the same barriers meets both orders (a missing barrier
    // shows up whichever thread of the two writes). A pass with some fibers unfinished in
    // which none made progress is a deadlock: none could run, or those that ran went from
    // one spin to the next without arriving at a barrier or updating memory atomically (a
    // spin loop only reads, and what it waits for is published by an atomic update, so
    // another pass would change nothing).
    std::size_t unfinished = n;
    bool ascending = true;
    while (unfinished > 0) {
        bool progressed = false;
        for (std::size_t step = 0; step < n; ++step) {
            const std::size_t i = ascending ? step : n - 1 - step;
            Fiber& f = fibers_[i];
            if (!runnable(f)) continue;
            const bool was_spinning = f.spinning;
            const unsigned long long events = events_;
            f.waiting_on = nullptr;
            f.spinning = false;
            running_ = i;
            current = f.thread;
            Context::swap(scheduler_, f.context);
            if (!(was_spinning && f.spinning && events_ == events)) progressed = true;
            if (f.finished) --unfinished;
        }
        if (!progressed) break;
        ascending = !ascending;
    }
    current = nullptr;
    for (std::size_t i = 0; i < n; ++i) {
        if (!stacks_.intact(i)) return Outcome::StackOverflow;
    }
    return unfinished == 0 ? Outcome::Finished : Outcome::Deadlock;
}

}  // namespace warpnorm_emu
