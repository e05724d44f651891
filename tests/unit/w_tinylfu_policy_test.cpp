// w_tinylfu_policy_test.cpp — the W-TinyLFU policy driven the way a shard drives it (insert on a
// miss, then evict victim() while over the bound): scan resistance through admission, and the
// window climber moving the window towards recency on a recency-friendly stream and back on a
// frequency-friendly one; and the climber and its ghost filters on their own.
#include "memory/w_tinylfu_policy.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "layercache/detail/hash.hpp"
#include "memory/ghost_filter.hpp"
#include "memory/window_climber.hpp"

namespace layercache::detail {
namespace {

// A single-shard cache of `capacity` keys around one policy, as memory_layer's shard uses it.
class mini_cache {
 public:
  explicit mini_cache(std::size_t capacity) : capacity_(capacity), policy_(capacity) {}
  mini_cache(const mini_cache&) = delete;
  mini_cache& operator=(const mini_cache&) = delete;
  ~mini_cache() {
    for (auto& [key, node] : nodes_) entry_node::destroy(node);
  }

  // Returns whether the request hit.
  bool request(std::uint64_t key) {
    ++requests_;
    if (auto it = nodes_.find(key); it != nodes_.end()) {
      policy_.on_access(it->second);
      ++hits_;
      return true;
    }
    const std::string name = std::to_string(key);
    entry_node* n = entry_node::make(name);
    n->hash = hash_key(name);
    nodes_.emplace(key, n);
    policy_.on_insert(n);
    while (nodes_.size() > capacity_) {
      entry_node* v = policy_.victim();
      policy_.on_remove(v);
      const std::uint64_t victim_key = std::stoull(std::string(v->key()));
      if (victim_key == key) ++rejected_newcomers_;
      nodes_.erase(victim_key);
      entry_node::destroy(v);
    }
    return false;
  }
  bool contains(std::uint64_t key) const { return nodes_.count(key) != 0; }
  double hit_ratio() const { return static_cast<double>(hits_) / static_cast<double>(requests_); }
  void reset_counts() { hits_ = requests_ = 0; }
  const w_tinylfu_policy& policy() const { return policy_; }

 private:
  std::size_t capacity_;
  w_tinylfu_policy policy_;
  std::unordered_map<std::uint64_t, entry_node*> nodes_;
  std::size_t hits_ = 0, requests_ = 0, rejected_newcomers_ = 0;
};

TEST(WTinyLfuPolicyTest, FrequentlyUsedKeysSurviveAScanOfOneOffKeys) {
  constexpr std::uint64_t hot = 50;
  mini_cache cache(100);
  for (int round = 0; round < 3; ++round) {
    for (std::uint64_t k = 0; k < hot; ++k) (void)cache.request(k);
  }
  // Ten times the capacity in keys never seen again: plain LRU would keep none of the hot set.
  for (std::uint64_t k = 1'000; k < 2'000; ++k) (void)cache.request(k);
  int kept = 0;
  for (std::uint64_t k = 0; k < hot; ++k) kept += cache.contains(k) ? 1 : 0;
  EXPECT_EQ(kept, static_cast<int>(hot));
}

TEST(WTinyLfuPolicyTest, ANewKeyUsedOftenIsAdmittedOverAColdOne) {
  mini_cache cache(100);
  for (std::uint64_t k = 0; k < 100; ++k) (void)cache.request(k);  // full of keys seen once
  // Key 500 keeps coming back while other newcomers pass through: it earns a place in main.
  for (std::uint64_t i = 0; i < 50; ++i) {
    (void)cache.request(500);
    (void)cache.request(1'000 + i);
  }
  for (std::uint64_t i = 0; i < 200; ++i) (void)cache.request(2'000 + i);  // flush the window
  EXPECT_TRUE(cache.contains(500));
}

// Keys used in a short burst and then never again: each new key is re-read a few times within
// the next `span` requests. The reuse distance is far below capacity but far above a 1 % window,
// so recency (a large window) is what pays here.
void recency_friendly(mini_cache& cache, std::uint64_t& next_key, std::size_t new_keys,
                      std::mt19937& rng) {
  constexpr std::uint64_t span = 300;
  for (std::size_t i = 0; i < new_keys; ++i) {
    const std::uint64_t fresh = next_key++;
    (void)cache.request(fresh);
    for (int r = 0; r < 2; ++r) {
      std::uniform_int_distribution<std::uint64_t> back(1, std::min<std::uint64_t>(span, fresh));
      (void)cache.request(fresh - back(rng));
    }
  }
}

// A stable hot set of 60 % of capacity, read half of the time, between one-off keys: frequency
// (a large main space) is what pays here.
void frequency_friendly(mini_cache& cache, std::uint64_t& next_key, std::size_t requests,
                        std::size_t capacity, std::mt19937& rng) {
  const std::uint64_t hot = capacity * 6 / 10;
  std::uniform_int_distribution<std::uint64_t> pick(0, hot - 1);
  for (std::size_t i = 0; i < requests; ++i) {
    (void)cache.request((i % 2 == 0) ? (1ULL << 40) + pick(rng) : next_key++);
  }
}

TEST(WTinyLfuPolicyTest, WindowGrowsOnARecencyFriendlyStreamAndShrinksOnAFrequencyFriendlyOne) {
  constexpr std::size_t capacity = 1000;
  mini_cache cache(capacity);
  std::mt19937 rng(11);
  std::uint64_t next_key = 1;
  const std::size_t initial = cache.policy().window_capacity();
  EXPECT_EQ(initial, 10u);  // 1 % of capacity

  recency_friendly(cache, next_key, 100'000, rng);
  const std::size_t grown = cache.policy().window_capacity();
  EXPECT_GE(grown, capacity / 4) << "window stayed small on a recency-friendly stream";

  cache.reset_counts();
  frequency_friendly(cache, next_key, 300'000, capacity, rng);
  const std::size_t shrunk = cache.policy().window_capacity();
  EXPECT_LT(shrunk, grown) << "window did not shrink on a frequency-friendly stream";
  EXPECT_LE(shrunk, capacity * 4 / 10) << "main cannot hold the hot set beside this window";
  // The hot set fits in main once the window is small: nearly every hot read hits.
  cache.reset_counts();
  frequency_friendly(cache, next_key, 20'000, capacity, rng);
  EXPECT_GE(cache.hit_ratio(), 0.45);
}

TEST(GhostFilterTest, RemembersTheLastSpanKeysAndForgetsOlderOnes) {
  ghost_filter ghosts(100);
  for (int i = 0; i < 300; ++i) ghosts.add(hash_key("k" + std::to_string(i)));
  int recent = 0, old = 0;
  for (int i = 200; i < 300; ++i) recent += ghosts.take(hash_key("k" + std::to_string(i))) ? 1 : 0;
  for (int i = 0; i < 200; ++i) old += ghosts.take(hash_key("k" + std::to_string(i))) ? 1 : 0;
  EXPECT_GE(recent, 95);  // approximate: a crowded neighbourhood may drop a few early
  EXPECT_EQ(old, 0);
}

TEST(GhostFilterTest, TakingAKeyForgetsIt) {
  ghost_filter ghosts(10);
  ghosts.add(hash_key("a"));
  EXPECT_TRUE(ghosts.take(hash_key("a")));
  EXPECT_FALSE(ghosts.take(hash_key("a")));
  EXPECT_FALSE(ghosts.take(hash_key("never added")));
}

// Feeds one full sample of 10 × capacity requests with the given ghost hits.
void feed_sample(window_climber& climber, std::uint32_t window_ghost_hits,
                 std::uint32_t main_ghost_hits) {
  const auto requests = static_cast<std::uint32_t>(climber.sample_size());
  climber.record(requests - 1, window_ghost_hits, main_ghost_hits);
  climber.record(1, 0, 0);
}

TEST(WindowClimberTest, StartsAtOnePercentAndStepsTowardsTheSideWithMoreGhostHits) {
  window_climber climber(1000);
  EXPECT_DOUBLE_EQ(climber.window_share(), 0.01);
  feed_sample(climber, 30, 10);  // a larger window would have hit twice as often: half a step up
  EXPECT_DOUBLE_EQ(climber.window_share(), (10 + 31) / 1000.0);
  feed_sample(climber, 0, 50);  // only main would have gained: a full step down, to the floor
  EXPECT_DOUBLE_EQ(climber.window_share(), 1 / 1000.0);
}

TEST(WindowClimberTest, HoldsWhenNeitherSideWouldHaveHit) {
  window_climber climber(1000);
  const double before = climber.window_share();
  for (int i = 0; i < 5; ++i) feed_sample(climber, 0, 0);
  EXPECT_DOUBLE_EQ(climber.window_share(), before);
  feed_sample(climber, 20, 20);  // balanced margins: stay
  EXPECT_DOUBLE_EQ(climber.window_share(), before);
}

TEST(WindowClimberTest, PartialSamplesDoNotStep) {
  window_climber climber(1000);
  climber.record(static_cast<std::uint32_t>(climber.sample_size() - 1), 500, 0);
  EXPECT_DOUBLE_EQ(climber.window_share(), 0.01);
  climber.record(1, 0, 0);
  EXPECT_GT(climber.window_share(), 0.01);
}

}  // namespace
}  // namespace layercache::detail
