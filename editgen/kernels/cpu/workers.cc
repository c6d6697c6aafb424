#include "workers.h"

#include <pthread.h>

void Workers::run(int count, const std::function<void(int, int)> &fn) {
  if (count <= 1) {
    fn(0, 1);
    return;
  }
  std::lock_guard<std::mutex> one_call(call_); /* calls from two threads take turns */
  {
    std::lock_guard<std::mutex> lock(m_);
    while ((int)threads_.size() < count - 1) {
      const int index = (int)threads_.size() + 1;
      threads_.emplace_back([this, index] { loop(index); });
    }
    job_ = &fn;
    count_ = count;
    pending_ = count - 1;
    generation_++;
  }
  work_.notify_all();
  fn(0, count);
  std::unique_lock<std::mutex> lock(m_);
  done_.wait(lock, [this] { return pending_ == 0; });
  job_ = nullptr;
}

void Workers::loop(int index) {
  long seen = 0;
  for (;;) {
    const std::function<void(int, int)> *fn;
    int count;
    {
      std::unique_lock<std::mutex> lock(m_);
      work_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = job_;
      count = count_;
    }
    if (index >= count) continue; /* a smaller call than the pool */
    (*fn)(index, count);
    std::lock_guard<std::mutex> lock(m_);
    if (--pending_ == 0) done_.notify_one();
  }
}

/* Never destroyed: a worker may still be blocked in it when the process exits (the
 * server's scheduler is a daemon thread). A forked child has none of the parent's threads,
 * so it starts a new pool. */
static Workers *pool = new Workers;
static const int fork_handler = pthread_atfork(nullptr, nullptr, [] { pool = new Workers; });

Workers &workers() { return *pool; }
