// circuit_breaker_test.cpp — the breaker's state machine (src/core/circuit_breaker.hpp) without
// sockets: time is passed in as plain milliseconds, so nothing here sleeps to make time pass.
//
// Covered: opening after N consecutive failures, success resetting the count, refusal while open,
// exactly ONE probe in half-open however many callers race for it, probe success closing, probe
// failure re-opening, a probe that never reports freeing the slot after open_for, and every
// transition reported (outside the breaker's lock).
#include "core/circuit_breaker.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace layercache::detail {
namespace {

using namespace std::chrono_literals;
using st = circuit_breaker::state;

constexpr std::int64_t t0 = 1'000'000;  // an arbitrary start on the monotonic time line

// Records every transition in order.
struct transition_log {
  std::mutex mu;
  std::vector<std::pair<st, st>> seen;

  circuit_breaker::transition_callback callback() {
    return [this](st from, st to) {
      std::lock_guard lock(mu);
      seen.emplace_back(from, to);
    };
  }
  std::vector<std::pair<st, st>> snapshot() {
    std::lock_guard lock(mu);
    return seen;
  }
};

circuit_breaker::options opts(std::uint32_t failures, std::chrono::milliseconds open_for) {
  return circuit_breaker::options{failures, open_for};
}

// Drives a closed breaker to open with `n` failures at time `now`.
void trip(circuit_breaker& b, std::uint32_t n, std::int64_t now) {
  for (std::uint32_t i = 0; i < n; ++i) {
    ASSERT_TRUE(b.allow(now));
    b.on_failure(now);
  }
}

TEST(CircuitBreakerTest, OpensAfterTheConfiguredNumberOfConsecutiveFailures) {
  circuit_breaker b(opts(3, 500ms));
  EXPECT_EQ(b.current(), st::closed);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(b.allow(t0));
    b.on_failure(t0);
    EXPECT_EQ(b.current(), st::closed) << "opened after " << i + 1 << " failures";
  }
  ASSERT_TRUE(b.allow(t0));
  b.on_failure(t0);
  EXPECT_EQ(b.current(), st::open);
  EXPECT_EQ(b.opens(), 1u);
  EXPECT_FALSE(b.allow(t0));
}

TEST(CircuitBreakerTest, ThresholdOfOneOpensOnTheFirstFailure) {
  circuit_breaker b(opts(1, 100ms));
  b.on_failure(t0);
  EXPECT_EQ(b.current(), st::open);
  EXPECT_FALSE(b.allow(t0 + 1));
}

TEST(CircuitBreakerTest, ASuccessResetsTheConsecutiveFailureCount) {
  circuit_breaker b(opts(3, 500ms));
  b.on_failure(t0);
  b.on_failure(t0);
  b.on_success();
  b.on_failure(t0);
  b.on_failure(t0);
  EXPECT_EQ(b.current(), st::closed) << "failures before the success were still counted";
  b.on_failure(t0);
  EXPECT_EQ(b.current(), st::open);
  EXPECT_EQ(b.opens(), 1u);
}

TEST(CircuitBreakerTest, OpenBreakerRefusesEveryCallUntilOpenForHasPassed) {
  circuit_breaker b(opts(2, 500ms));
  trip(b, 2, t0);
  for (std::int64_t t = t0; t < t0 + 500; t += 7) {
    EXPECT_FALSE(b.allow(t)) << "let a call through " << t - t0 << " ms after opening";
  }
  EXPECT_FALSE(b.allow(t0 + 499));
  EXPECT_EQ(b.current(), st::open);
  EXPECT_TRUE(b.allow(t0 + 500)) << "no probe once open_for had passed";
  EXPECT_EQ(b.current(), st::half_open);
}

TEST(CircuitBreakerTest, HalfOpenLetsExactlyOneOfManyConcurrentCallersThrough) {
  constexpr int callers = 16;
  constexpr int rounds = 50;
  circuit_breaker b(opts(1, 100ms));
  std::int64_t now = t0;
  b.on_failure(now);
  for (int round = 0; round < rounds; ++round) {
    ASSERT_EQ(b.current(), st::open);
    now += 100;  // open_for has passed: the next allow() may probe
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::atomic<int> allowed{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < callers; ++i) {
      threads.emplace_back([&] {
        ready.fetch_add(1);
        // Spin (bounded by the test's own progress) so all callers hit allow() together.
        while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
        if (b.allow(now)) allowed.fetch_add(1);
      });
    }
    while (ready.load() < callers) std::this_thread::yield();
    go.store(true, std::memory_order_release);
    for (auto& t : threads) t.join();
    ASSERT_EQ(allowed.load(), 1) << "round " << round << ": probes let through";
    EXPECT_EQ(b.current(), st::half_open);
    // Callers arriving later, while the probe is out, are refused too.
    EXPECT_FALSE(b.allow(now + 50));
    b.on_failure(now);  // the probe failed: open again for the next round
  }
  EXPECT_EQ(b.opens(), static_cast<std::uint64_t>(rounds + 1));
}

TEST(CircuitBreakerTest, ProbeSuccessClosesTheBreaker) {
  circuit_breaker b(opts(2, 200ms));
  trip(b, 2, t0);
  ASSERT_TRUE(b.allow(t0 + 200));
  b.on_success();
  EXPECT_EQ(b.current(), st::closed);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(b.allow(t0 + 201));
  // Closed again means a fresh count: one failure does not re-open a threshold-2 breaker.
  b.on_failure(t0 + 202);
  EXPECT_EQ(b.current(), st::closed);
}

TEST(CircuitBreakerTest, ProbeFailureReopensForAnotherOpenFor) {
  circuit_breaker b(opts(2, 200ms));
  trip(b, 2, t0);
  ASSERT_TRUE(b.allow(t0 + 300));  // probe, a little late
  b.on_failure(t0 + 310);
  EXPECT_EQ(b.current(), st::open);
  EXPECT_EQ(b.opens(), 2u);
  EXPECT_FALSE(b.allow(t0 + 310));
  EXPECT_FALSE(b.allow(t0 + 509)) << "re-opened for less than open_for after the probe failed";
  EXPECT_TRUE(b.allow(t0 + 510));
  EXPECT_EQ(b.current(), st::half_open);
}

TEST(CircuitBreakerTest, AProbeThatNeverReportsFreesTheSlotAfterOpenFor) {
  circuit_breaker b(opts(1, 200ms));
  b.on_failure(t0);
  ASSERT_TRUE(b.allow(t0 + 200));  // the probe's caller vanishes without reporting
  EXPECT_FALSE(b.allow(t0 + 300));
  EXPECT_FALSE(b.allow(t0 + 399));
  EXPECT_TRUE(b.allow(t0 + 400)) << "a lost probe wedged the breaker in half_open";
  EXPECT_FALSE(b.allow(t0 + 401)) << "the freed slot was given to more than one caller";
  EXPECT_EQ(b.current(), st::half_open);
  b.on_success();
  EXPECT_EQ(b.current(), st::closed);
}

TEST(CircuitBreakerTest, EveryTransitionIsReportedInOrder) {
  transition_log log;
  circuit_breaker b(opts(2, 100ms), log.callback());
  b.on_failure(t0);
  EXPECT_TRUE(log.snapshot().empty()) << "a failure below the threshold was reported";
  b.on_failure(t0);                // closed -> open
  EXPECT_FALSE(b.allow(t0 + 50));  // refused: no transition
  ASSERT_TRUE(b.allow(t0 + 100));  // open -> half_open
  b.on_failure(t0 + 100);          // half_open -> open
  ASSERT_TRUE(b.allow(t0 + 200));  // open -> half_open
  b.on_success();                  // half_open -> closed
  b.on_success();                  // closed stays closed: not reported
  const std::vector<std::pair<st, st>> expected{{st::closed, st::open},
                                                {st::open, st::half_open},
                                                {st::half_open, st::open},
                                                {st::open, st::half_open},
                                                {st::half_open, st::closed}};
  EXPECT_EQ(log.snapshot(), expected);
  EXPECT_EQ(b.opens(), 2u);
}

TEST(CircuitBreakerTest, TransitionCallbackRunsOutsideTheLockAndMayCallBack) {
  // A callback that reads the breaker would deadlock if it ran under the breaker's mutex.
  std::vector<st> states_seen;
  circuit_breaker* self = nullptr;
  circuit_breaker b(opts(1, 100ms), [&](st, st) {
    states_seen.push_back(self->current());
    (void)self->opens();
  });
  self = &b;
  b.on_failure(t0);
  ASSERT_TRUE(b.allow(t0 + 100));
  b.on_success();
  EXPECT_EQ(states_seen, (std::vector<st>{st::open, st::half_open, st::closed}));
}

TEST(CircuitBreakerTest, StateNamesAreStable) {
  EXPECT_EQ(circuit_breaker::name(st::closed), "closed");
  EXPECT_EQ(circuit_breaker::name(st::open), "open");
  EXPECT_EQ(circuit_breaker::name(st::half_open), "half_open");
}

}  // namespace
}  // namespace layercache::detail
