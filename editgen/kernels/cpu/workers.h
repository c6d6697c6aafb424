/* The CPU kernels' worker threads (defined in workers.cc), and the barrier a multi-phase
 * call (the int8 step) uses between its phases. */
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

/* Not OpenMP: libgomp is one per process (torch ships one under the same soname), and
 * whoever loads it first sets its wait policy; with torch's default, idle OpenMP threads
 * spun between calls on the cores onnxruntime needed (a 6 s edit took 19.7 s instead of
 * 12.7 s). These workers block on a condition variable between calls. */
class Workers {
 public:
  /* fn(index, count) on `count` threads, index 0 on the caller; returns when all are done. */
  void run(int count, const std::function<void(int, int)> &fn);

 private:
  void loop(int index);

  std::mutex call_, m_;
  std::condition_variable work_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int, int)> *job_ = nullptr;
  int count_ = 0, pending_ = 0;
  long generation_ = 0;
  bool stop_ = false;
};

/* The process's pool (a forked child gets a new one). */
Workers &workers();

/* All `size` threads of one call meet here between phases. Spins (the phases of a step
 * are tens of microseconds apart), then yields the core: on a machine with more threads
 * than cores a waiting thread must not keep the one it waits for off the CPU. */
class Barrier {
 public:
  explicit Barrier(int size) : size_(size) {}

  void wait() {
    if (size_ <= 1) return;
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == size_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; spins++) {
      if (spins < 2000) {
        cpu_relax_();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static inline void cpu_relax_() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  const int size_;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

/* [lo, hi) of `n` items for thread `me` of `size`: contiguous, in order. */
static inline void share(long n, int me, int size, long *lo, long *hi) {
  *lo = n * me / size;
  *hi = n * (me + 1) / size;
}
