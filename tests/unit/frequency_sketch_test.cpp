// frequency_sketch_test.cpp — the W-TinyLFU admission sketch: saturation, aging, and the count-min
// guarantee that an estimate never falls below what was recorded since the last aging.
#include "memory/frequency_sketch.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "layercache/detail/hash.hpp"

namespace layercache::detail {
namespace {

std::uint64_t hash_of(int i) { return hash_key("key-" + std::to_string(i)); }

TEST(FrequencySketchTest, AnUnseenKeyEstimatesZero) {
  frequency_sketch sketch(1024);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(sketch.estimate(hash_of(i)), 0u) << i;
}

TEST(FrequencySketchTest, CountsSaturateAtFifteen) {
  frequency_sketch sketch(1024);
  for (int i = 0; i < 14; ++i) sketch.increment(hash_of(1));
  EXPECT_EQ(sketch.estimate(hash_of(1)), 14u);
  for (int i = 0; i < 100; ++i) sketch.increment(hash_of(1));
  EXPECT_EQ(sketch.estimate(hash_of(1)), 15u);
  // Saturated increments raise no counter, so they do not count towards the next aging.
  EXPECT_EQ(sketch.agings(), 0u);
}

TEST(FrequencySketchTest, AgingHalvesEveryCounterAfterTheSample) {
  // 12 + 5 + 1 increments: the 18th one ends the sample.
  frequency_sketch sketch(1024, 18);
  for (int i = 0; i < 12; ++i) sketch.increment(hash_of(1));
  for (int i = 0; i < 5; ++i) sketch.increment(hash_of(2));
  ASSERT_EQ(sketch.estimate(hash_of(1)), 12u);
  ASSERT_EQ(sketch.estimate(hash_of(2)), 5u);
  ASSERT_EQ(sketch.agings(), 0u);
  sketch.increment(hash_of(3));
  EXPECT_EQ(sketch.agings(), 1u);
  EXPECT_EQ(sketch.estimate(hash_of(1)), 6u);
  EXPECT_EQ(sketch.estimate(hash_of(2)), 2u);
  EXPECT_EQ(sketch.estimate(hash_of(3)), 0u);
}

TEST(FrequencySketchTest, DefaultSampleIsTenTimesTheCapacity) {
  frequency_sketch sketch(100);
  EXPECT_EQ(sketch.sample_size(), 1000u);
  // Distinct keys each raise a counter, so 1,000 of them end exactly one sample.
  for (int i = 0; i < 999; ++i) sketch.increment(hash_of(i));
  EXPECT_EQ(sketch.agings(), 0u);
  sketch.increment(hash_of(999));
  EXPECT_EQ(sketch.agings(), 1u);
}

TEST(FrequencySketchTest, EstimateNeverUndercountsWhatWasRecordedSinceTheLastAging) {
  // A small sketch under a skewed stream of many keys: collisions and several agings happen.
  constexpr int keys = 2000;
  frequency_sketch sketch(256);
  std::vector<std::uint64_t> hashes;
  for (int i = 0; i < keys; ++i) hashes.push_back(hash_of(i));
  std::vector<unsigned> since_aging(keys, 0);
  std::mt19937 rng(7);
  std::geometric_distribution<int> skewed(0.01);
  std::uint64_t agings = 0;
  int checks = 0;
  for (int step = 0; step < 50'000; ++step) {
    const int k = std::min(skewed(rng), keys - 1);
    sketch.increment(hashes[static_cast<std::size_t>(k)]);
    if (sketch.agings() != agings) {
      agings = sketch.agings();
      std::fill(since_aging.begin(), since_aging.end(), 0u);
      continue;
    }
    ++since_aging[static_cast<std::size_t>(k)];
    if (step % 997 == 0) {
      for (int i = 0; i < keys; ++i) {
        ASSERT_GE(sketch.estimate(hashes[static_cast<std::size_t>(i)]),
                  std::min(since_aging[static_cast<std::size_t>(i)], 15u))
            << "key " << i << " at step " << step;
      }
      ++checks;
    }
  }
  EXPECT_GE(agings, 10u) << "the stream was meant to span several agings";
  EXPECT_GT(checks, 40);
}

}  // namespace
}  // namespace layercache::detail
