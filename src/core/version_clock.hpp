// version_clock.hpp — the versions carried by envelopes and tombstones (docs/design.md,
// "Versioned values").
//
// A version is a hybrid logical clock: wall microseconds << 12 | a counter, never smaller than any
// version this process issued or observed. So versions follow real time across processes (within
// the clock skew between hosts; on one host, to the microsecond) and are strictly increasing within
// one, which is what the compare-and-set writes in Redis need: a write that was issued later wins,
// and a fill whose fetch started before a delete loses to the delete's tombstone. Microseconds, not
// the milliseconds of expiry: in one millisecond (one coarse clock tick is up to 4) two processes
// would issue versions ordered by their counters, not by which write came first. 52 bits of
// microseconds last until 2112; 4096 versions per microsecond per process are more than a
// process issues.
//
// Thread-safety: thread-safe (one atomic).
#pragma once

#include <atomic>
#include <cstdint>

#include "layercache/clock.hpp"

namespace layercache::detail {

class version_clock {
 public:
  // `now_us`: clock::now_us().
  std::uint64_t next(std::int64_t now_us) noexcept {
    const std::uint64_t wall = static_cast<std::uint64_t>(now_us < 0 ? 0 : now_us) << 12;
    std::uint64_t last = last_.load(std::memory_order_relaxed);
    for (;;) {
      const std::uint64_t v = wall > last ? wall : last + 1;
      if (last_.compare_exchange_weak(last, v, std::memory_order_relaxed)) return v;
    }
  }
  // Folds in a version seen elsewhere, so this process never issues a smaller one afterwards.
  void observe(std::uint64_t v) noexcept {
    std::uint64_t last = last_.load(std::memory_order_relaxed);
    while (v > last && !last_.compare_exchange_weak(last, v, std::memory_order_relaxed)) {
    }
  }

 private:
  std::atomic<std::uint64_t> last_{0};
};

}  // namespace layercache::detail
