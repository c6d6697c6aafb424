// Just enough of CUDA's execution model to run a block function on the CPU, for
// test_emulated_block.cpp: one fiber (ucontext) per thread of the block, __syncthreads as
// a barrier of all of them, __shfl_xor_sync through a per-warp exchange and barrier.
//
// Fibers switch only at barriers, in a fixed order, one block after another. So this
// checks indexing, arithmetic and that every thread reaches every barrier (a thread that
// returns while others wait is reported), not races, timing or the compiler's code.
//
// Include before the block's .cuh: it defines __device__, threadIdx and the intrinsics.

#ifndef EDITGEN_EMULATED_CUDA_H
#define EDITGEN_EMULATED_CUDA_H

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

#define __device__

struct EmulatedThreadIdx {
    unsigned x;
};
// The running fiber's index: set at every switch (all fibers share one OS thread).
inline EmulatedThreadIdx threadIdx;

namespace emulation {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 64 * 1024;

struct Fiber {
    ucontext_t context;
    std::unique_ptr<char[]> stack;
    int waiting = -1;  // the barrier group it waits at (0: the block, 1 + w: warp w), or -1
    bool done = false;
};

struct Block {
    std::vector<Fiber> fibers;
    ucontext_t main_context;
    int current = 0;
    std::vector<int> arrived;     // per barrier group
    std::vector<float> exchange;  // one slot per thread, for shuffles
    std::function<void()> body;
};

inline Block *block = nullptr;

[[noreturn]] inline void die(const char *why) {
    std::printf("EMULATION ERROR: %s\n", why);
    std::exit(1);
}

// The next fiber after the current one that can run, or -1.
inline int next_runnable() {
    const int n = static_cast<int>(block->fibers.size());
    for (int i = 1; i <= n; ++i) {
        const int j = (block->current + i) % n;
        if (!block->fibers[j].done && block->fibers[j].waiting < 0) return j;
    }
    return -1;
}

inline void barrier(int group, int size) {
    Block &b = *block;
    if (++b.arrived[group] == size) {  // the last to arrive releases the others and goes on
        b.arrived[group] = 0;
        for (Fiber &f : b.fibers)
            if (f.waiting == group) f.waiting = -1;
        return;
    }
    b.fibers[b.current].waiting = group;
    const int next = next_runnable();
    if (next < 0) die("deadlock: every thread waits at a barrier that some thread never reaches");
    const int from = b.current;
    b.current = next;
    threadIdx.x = static_cast<unsigned>(next);
    swapcontext(&b.fibers[from].context, &b.fibers[next].context);
}

inline void fiber_main() {
    block->body();
    block->fibers[block->current].done = true;
    const int next = next_runnable();
    if (next >= 0) {
        block->current = next;
        threadIdx.x = static_cast<unsigned>(next);
        setcontext(&block->fibers[next].context);
    }
    for (const Fiber &f : block->fibers)
        if (!f.done) die("a thread returned while others wait at a barrier");
    setcontext(&block->main_context);
}

// Runs body() once per thread of one block of `threads` threads (a multiple of 32).
inline void run_block(int threads, std::function<void()> body) {
    if (threads % kWarpSize != 0) die("the block size must be a multiple of the warp size");
    Block b;
    b.fibers.resize(threads);
    b.arrived.assign(1 + threads / kWarpSize, 0);
    b.exchange.assign(threads, 0.f);
    b.body = std::move(body);
    for (Fiber &f : b.fibers) {
        f.stack.reset(new char[kStackBytes]);
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.get();
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = nullptr;  // fiber_main never returns: it switches on
        makecontext(&f.context, fiber_main, 0);
    }
    block = &b;
    threadIdx.x = 0;
    swapcontext(&b.main_context, &b.fibers[0].context);
    block = nullptr;
}

}  // namespace emulation

inline void __syncthreads() { emulation::barrier(0, static_cast<int>(emulation::block->fibers.size())); }

inline float __shfl_xor_sync(unsigned mask, float x, int offset) {
    if (mask != 0xffffffffu) emulation::die("only full-warp shuffles are emulated");
    emulation::Block &b = *emulation::block;
    const int me = static_cast<int>(threadIdx.x), warp = me / emulation::kWarpSize;
    const int partner = warp * emulation::kWarpSize + ((me % emulation::kWarpSize) ^ offset);
    b.exchange[me] = x;
    emulation::barrier(1 + warp, emulation::kWarpSize);  // every lane has written
    const float y = b.exchange[partner];
    emulation::barrier(1 + warp, emulation::kWarpSize);  // every lane has read
    return y;
}

#endif  // EDITGEN_EMULATED_CUDA_H
