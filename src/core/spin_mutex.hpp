// spin_mutex.hpp — a test-and-test-and-set lock for critical sections of a few dozen nanoseconds
// (a memory-layer shard lookup). Unlock is a plain release store, where std::mutex pays a second
// atomic read-modify-write; that is a measurable part of an L1 hit. Waiters spin with `pause`
// briefly, then yield, so an oversubscribed machine (more runnable threads than cores, as in a
// stampede) does not burn a preempted holder's time slice.
// Thread-safety: it is a lock. Satisfies Lockable (std::lock_guard works).
#pragma once

#include <atomic>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LAYERCACHE_CPU_RELAX() _mm_pause()
#else
#define LAYERCACHE_CPU_RELAX() std::this_thread::yield()
#endif

namespace layercache::detail {

class spin_mutex {
 public:
  void lock() noexcept {
    while (locked_.exchange(true, std::memory_order_acquire)) {
      int spins = 0;
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins < 128) {
          LAYERCACHE_CPU_RELAX();
        } else {
          std::this_thread::yield();
        }
      }
    }
  }
  bool try_lock() noexcept {
    return !locked_.load(std::memory_order_relaxed) &&
           !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

}  // namespace layercache::detail
