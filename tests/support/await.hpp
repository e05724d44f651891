// await.hpp — bounded waiting for tests: poll a condition, or block on a one-shot gate, never
// longer than a limit, so a broken test fails instead of hanging.
// Thread-safety: eventually() is reentrant; gate may be opened and waited on from any threads.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace layercache::test {

// Upper bound of every wait in the tests; a test that reaches it has failed.
inline constexpr std::chrono::seconds await_bound{10};

// Polls `condition` with a short backoff (1 ms doubling to 10 ms) until it holds or `timeout`
// passed; returns whether it held.
template <class Condition>
bool eventually(Condition condition, std::chrono::milliseconds timeout = await_bound) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto backoff = std::chrono::milliseconds(1);
  for (;;) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(10));
  }
}

// A one-shot gate: wait() blocks until open() (or the limit).
class gate {
 public:
  void open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds limit = await_bound) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

}  // namespace layercache::test
