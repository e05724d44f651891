// fake_clock.hpp — a manually advanced clock for tests: no test sleeps to make an entry expire.
// Thread-safe: now_ms/advance may race freely.
#pragma once

#include <atomic>
#include <chrono>

#include "layercache/clock.hpp"

namespace layercache::test {

class fake_clock final : public clock {
 public:
  explicit fake_clock(unix_ms start = 1'700'000'000'000) : now_(start) {}
  unix_ms now_ms() const noexcept override { return now_.load(std::memory_order_acquire); }
  void advance(std::chrono::milliseconds d) {
    now_.fetch_add(d.count(), std::memory_order_acq_rel);
  }
  void set(unix_ms t) { now_.store(t, std::memory_order_release); }

 private:
  std::atomic<unix_ms> now_;
};

}  // namespace layercache::test
