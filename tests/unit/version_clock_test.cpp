// Versions order the writes of different processes by when they were issued (issue #9): two
// instances' writes less than a millisecond apart must be ordered by time, not by per-process
// counters. Found by the chaos benchmark: a set acknowledged 0.3 ms before another instance's tag
// invalidation took a higher version (both in one coarse tick, the set's process with the higher
// counter), so Redis let it outlive the invalidation.
#include "core/version_clock.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>

#include "layercache/clock.hpp"

namespace layercache::detail {
namespace {

TEST(VersionClockTest, AVersionIssuedAMicrosecondLaterInAnotherProcessIsHigher) {
  constexpr std::int64_t t = 1'765'000'000'000'000;  // microseconds since the epoch
  version_clock busy, idle;
  std::uint64_t last = 0;
  for (int i = 0; i < 1000; ++i) last = busy.next(t);  // a process issuing many in one microsecond
  EXPECT_GT(idle.next(t + 1), last);
}

TEST(VersionClockTest, VersionsOfOneProcessStrictlyIncreaseAndFollowWhatItObserved) {
  version_clock c;
  const std::uint64_t a = c.next(100);
  const std::uint64_t b = c.next(100);
  EXPECT_GT(b, a);
  const std::uint64_t ahead = (std::uint64_t{5000} << 12) + 10;  // from a clock running ahead
  c.observe(ahead);
  EXPECT_GT(c.next(200), ahead) << "issued a version below one it observed";
}

TEST(VersionClockTest, TheDefaultClockResolvesMicrosecondsWithinAMillisecondTick) {
  // The coarse now_ms() ticks every 1-4 ms; now_us() must move within a tick.
  const auto& clk = *default_clock();
  const std::int64_t first = clk.now_us();
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
  while (std::chrono::steady_clock::now() < until) {
  }
  const std::int64_t second = clk.now_us();
  EXPECT_GE(second - first, 150) << "now_us() has millisecond resolution";
  EXPECT_LT(second - first, 1'000'000) << "now_us() is not in microseconds";
  EXPECT_LE(std::abs(clk.now_ms() - clk.now_us() / 1000), 10) << "now_us() disagrees with now_ms()";
}

}  // namespace
}  // namespace layercache::detail
