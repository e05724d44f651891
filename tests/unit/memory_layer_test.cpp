// memory_layer_test.cpp — L1 behaviour, exercised through cache_stack (the way it is used):
// identity of hits, lifetimes on a fake clock, size bounds, scan resistance, removal causes and a
// bounded concurrent stress.
#include "layercache/memory_layer.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/detail/hash.hpp"
#include "support/fake_clock.hpp"

namespace {

using namespace std::chrono_literals;

// A value type that counts copies, with a codec that counts its calls: an L1 hit must do neither.
struct counted {
  int value = 0;
  static inline std::atomic<int> copies{0};

  counted() = default;
  explicit counted(int v) : value(v) {}
  counted(const counted& other) : value(other.value) { ++copies; }
  counted& operator=(const counted& other) {
    value = other.value;
    ++copies;
    return *this;
  }
  counted(counted&&) noexcept = default;
  counted& operator=(counted&&) noexcept = default;
  ~counted() = default;
};

std::atomic<int> counted_encodes{0};
std::atomic<int> counted_decodes{0};

// A value whose weight is whatever it declares, through a weigher<T> specialisation.
struct blob {
  std::size_t declared_bytes = 0;
};

}  // namespace

template <>
struct layercache::codec<counted> {
  static void encode(const counted& c, std::string& out) {
    ++counted_encodes;
    out += std::to_string(c.value);
  }
  static counted decode(std::string_view bytes) {
    ++counted_decodes;
    return counted(std::stoi(std::string(bytes)));
  }
};

template <>
struct layercache::codec<blob> {
  static void encode(const blob& b, std::string& out) { out += std::to_string(b.declared_bytes); }
  static blob decode(std::string_view bytes) { return blob{std::stoul(std::string(bytes))}; }
};

template <>
struct layercache::weigher<blob> {
  static std::size_t weigh(const blob& b) { return b.declared_bytes; }
};

namespace layercache {
namespace {

struct removal {
  std::string key;
  removal_cause cause;
};

// Collects on_remove calls (called from whichever thread caused the removal).
struct removal_log {
  std::mutex mu;
  std::vector<removal> entries;

  std::function<void(std::string_view, removal_cause)> callback() {
    return [this](std::string_view key, removal_cause cause) {
      std::lock_guard lock(mu);
      entries.push_back({std::string(key), cause});
    };
  }
  std::vector<removal> take() {
    std::lock_guard lock(mu);
    return std::exchange(entries, {});
  }
};

std::string value_of(int i) { return "value-" + std::to_string(i); }

TEST(MemoryLayerTest, HitReturnsTheSameObjectEveryTime) {
  auto l1 = memory_layer::create({});
  cache_stack cache({l1});
  int fetches = 0;
  auto fetch = [&] {
    ++fetches;
    return std::string("payload");
  };
  auto first = cache.get<std::string>("k", fetch);
  ASSERT_NE(first, nullptr);
  for (int i = 0; i < 100; ++i) {
    auto again = cache.get<std::string>("k", fetch);
    ASSERT_EQ(again.get(), first.get()) << "hit " << i << " handed out a different object";
  }
  EXPECT_EQ(fetches, 1);
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.layers[0].hits, 100u);
  EXPECT_EQ(m.layers[0].misses, 1u);
  // The stack holds one reference, `first` another, nothing else kept a copy of the pointer.
  EXPECT_EQ(first.use_count(), 2);
}

TEST(MemoryLayerTest, HitNeitherCopiesNorDecodesTheValue) {
  counted::copies = 0;
  counted_encodes = 0;
  counted_decodes = 0;
  cache_stack cache({memory_layer::create({})});

  auto fetched = cache.get<counted>("c", [] { return counted(7); });
  ASSERT_NE(fetched, nullptr);
  EXPECT_EQ(fetched->value, 7);
  ASSERT_TRUE(cache.set<counted>("s", counted(8)).ok());
  for (int i = 0; i < 1000; ++i) {
    auto a = cache.get<counted>("c", [] { return counted(-1); });
    auto b = cache.get_if_present<counted>("s");
    ASSERT_EQ(a.get(), fetched.get());
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(b->value, 8);
  }
  EXPECT_EQ(counted::copies.load(), 0) << "the value was copied on the way in or on a hit";
  EXPECT_EQ(counted_encodes.load(), 0) << "a memory-only stack encoded a value";
  EXPECT_EQ(counted_decodes.load(), 0) << "a memory-only stack decoded a value";
  EXPECT_EQ(cache.metrics().layers[0].hits, 2000u);
}

TEST(MemoryLayerTest, EntryExpiresExactlyAtItsTtlNotBefore) {
  auto clock = std::make_shared<test::fake_clock>();
  removal_log removed;
  auto l1 = memory_layer::create({.on_remove = removed.callback(), .clock = clock});
  cache_stack cache({l1}, {.clock = clock});
  int fetches = 0;
  auto fetch = [&] { return value_of(++fetches); };

  EXPECT_EQ(*cache.get<std::string>("k", fetch, {.ttl = 10s}), "value-1");
  clock->advance(9999ms);
  EXPECT_EQ(*cache.get<std::string>("k", fetch), "value-1") << "expired before its ttl";
  EXPECT_EQ(fetches, 1);
  EXPECT_EQ(l1->metrics().expirations, 0u);

  clock->advance(1ms);  // exactly ttl after the write
  EXPECT_EQ(*cache.get<std::string>("k", fetch), "value-2") << "still served at its expiry";
  EXPECT_EQ(fetches, 2);
  const auto m = cache.metrics();
  EXPECT_EQ(m.layers[0].expirations, 1u);
  EXPECT_EQ(m.layers[0].hits, 1u);
  EXPECT_EQ(m.layers[0].misses, 2u);
  EXPECT_EQ(m.fetches, 2u);
  auto log = removed.take();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].key, "k");
  EXPECT_EQ(log[0].cause, removal_cause::expired);
}

TEST(MemoryLayerTest, LayerTtlCapsALongerEntryTtl) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l1 = memory_layer::create({.ttl = 2s, .clock = clock});
  cache_stack cache({l1}, {.clock = clock});
  ASSERT_TRUE(cache.set<std::string>("k", "v", {.ttl = 60s}).ok());
  clock->advance(1999ms);
  EXPECT_NE(cache.get_if_present<std::string>("k"), nullptr);
  clock->advance(1ms);
  EXPECT_EQ(cache.get_if_present<std::string>("k"), nullptr) << "layer ttl did not cap the entry";
  EXPECT_EQ(l1->metrics().expirations, 1u);
}

TEST(MemoryLayerTest, LayerTtlDoesNotExtendAShorterEntryTtl) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l1 = memory_layer::create({.ttl = 60s, .clock = clock});
  cache_stack cache({l1}, {.clock = clock});
  ASSERT_TRUE(cache.set<std::string>("k", "v", {.ttl = 1s}).ok());
  clock->advance(999ms);
  EXPECT_TRUE(cache.has("k"));
  clock->advance(1ms);
  EXPECT_FALSE(cache.has("k"));
  EXPECT_EQ(cache.get_if_present<std::string>("k"), nullptr);
}

TEST(MemoryLayerTest, MaxEntriesBoundIsRespectedAndCountedAsEvictions) {
  auto l1 = memory_layer::create({.max_entries = 100, .shards = 1});
  cache_stack cache({l1});
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(cache.set<std::string>("k" + std::to_string(i), value_of(i)).ok());
    ASSERT_LE(l1->size(), 100u);
  }
  EXPECT_EQ(l1->size(), 100u);
  const auto m = l1->metrics();
  EXPECT_EQ(m.entries, 100u);
  EXPECT_EQ(m.evictions, 900u);
  EXPECT_EQ(m.writes, 1000u);
  // The most recent writes are the ones kept.
  EXPECT_NE(cache.get_if_present<std::string>("k999"), nullptr);
  EXPECT_EQ(cache.get_if_present<std::string>("k0"), nullptr);
}

// The bound, weigher and on_remove guarantees hold whatever the policy.
class MemoryLayerPolicyTest : public ::testing::TestWithParam<eviction> {};

std::string policy_name(const ::testing::TestParamInfo<eviction>& info) {
  switch (info.param) {
    case eviction::segmented_lru:
      return "segmented_lru";
    case eviction::lru:
      return "lru";
    case eviction::w_tinylfu:
      return "w_tinylfu";
  }
  return "unknown";
}

INSTANTIATE_TEST_SUITE_P(Policies, MemoryLayerPolicyTest,
                         ::testing::Values(eviction::segmented_lru, eviction::lru,
                                           eviction::w_tinylfu),
                         policy_name);

TEST_P(MemoryLayerPolicyTest, MaxEntriesIsAGlobalBoundWhenNotDivisibleByShards) {
  // 1000 entries over 16 shards is 62.5 per shard: rounding each shard up would hold 1008.
  auto l1 = memory_layer::create({.max_entries = 1000, .shards = 16, .policy = GetParam()});
  cache_stack cache({l1});
  for (int i = 0; i < 5000; ++i) {
    ASSERT_TRUE(cache.set<int>("k" + std::to_string(i), i).ok());
  }
  EXPECT_LE(l1->size(), 1000u);
  EXPECT_GE(l1->size(), 900u) << "bound held by evicting far too much";
  EXPECT_EQ(l1->metrics().evictions, 5000u - l1->size());
}

TEST_P(MemoryLayerPolicyTest, KeysHashedUnevenlyAcrossShardsStillFillTheWholeCapacity) {
  // 1,011 keys in 1,024 entries over 16 shards: about a third of the shards draw more than their
  // 64, which a rigid split would evict (issue #11's loop@1024 case).
  auto l1 = memory_layer::create({.max_entries = 1024, .shards = 16, .policy = GetParam()});
  cache_stack cache({l1});
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 1011; ++i) {
      (void)cache.get<int>("loop" + std::to_string(i), [i] { return i; });
    }
  }
  const auto m = l1->metrics();
  EXPECT_EQ(m.evictions, 0u);
  EXPECT_EQ(m.entries, 1011u);
  EXPECT_EQ(l1->size(), 1011u);
  EXPECT_EQ(m.hits, 2u * 1011u);
}

TEST_P(MemoryLayerPolicyTest, AShardWithinItsShareTakesRoomFromAShardOverIt) {
  // Two shards of 32: shard 0 borrowed 16 entries while the layer had room; when the layer is full
  // a new entry of shard 1 evicts one of shard 0's, not one of its own.
  removal_log removed;
  auto l1 = memory_layer::create(
      {.max_entries = 64, .shards = 2, .policy = GetParam(), .on_remove = removed.callback()});
  cache_stack cache({l1});
  std::vector<std::string> keys[2];
  for (int i = 0; keys[0].size() < 48 || keys[1].size() < 17; ++i) {
    std::string key = "k" + std::to_string(i);
    keys[detail::hash_key(key) >> 63].push_back(std::move(key));
  }
  for (std::size_t i = 0; i < 48; ++i) ASSERT_TRUE(cache.set<int>(keys[0][i], 0).ok());
  for (std::size_t i = 0; i < 16; ++i) ASSERT_TRUE(cache.set<int>(keys[1][i], 1).ok());
  ASSERT_EQ(l1->size(), 64u);
  ASSERT_TRUE(removed.take().empty());
  ASSERT_TRUE(cache.set<int>(keys[1][16], 1).ok());
  EXPECT_EQ(l1->size(), 64u);
  auto log = removed.take();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].cause, removal_cause::evicted);
  EXPECT_EQ(detail::hash_key(log[0].key) >> 63, 0u) << log[0].key << " came from shard 1";
  for (std::size_t i = 0; i < 17; ++i) {
    EXPECT_NE(cache.get_if_present<int>(keys[1][i]), nullptr) << keys[1][i];
  }
}

TEST_P(MemoryLayerPolicyTest, MaxEntriesBelowShardCountIsStillABound) {
  auto l1 = memory_layer::create({.max_entries = 3, .shards = 4, .policy = GetParam()});
  cache_stack cache({l1});
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(cache.set<int>("key-" + std::to_string(i), i).ok());
    ASSERT_LE(l1->size(), 3u) << "after " << i + 1 << " writes";
  }
  EXPECT_GE(l1->size(), 1u);
}

TEST_P(MemoryLayerPolicyTest, MaxBytesBoundUsesTheWeigherSpecialisation) {
  constexpr std::size_t max_bytes = 100'000;
  removal_log removed;
  auto l1 = memory_layer::create({.max_entries = 10'000,
                                  .max_bytes = max_bytes,
                                  .shards = 1,
                                  .policy = GetParam(),
                                  .on_remove = removed.callback()});
  cache_stack cache({l1});
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(cache.set<blob>("b" + std::to_string(i), blob{10'000}).ok());
    ASSERT_LE(l1->metrics().bytes, max_bytes);
  }
  const auto m = l1->metrics();
  // sizeof(blob) is 8: only the weigher's 10,000 bytes per value can push this over 100 KB.
  EXPECT_LE(m.entries, 9u);
  EXPECT_GE(m.entries, 8u);
  EXPECT_GE(m.bytes, m.entries * 10'000);
  EXPECT_EQ(m.evictions, 50u - m.entries);
  for (const auto& r : removed.take()) EXPECT_EQ(r.cause, removal_cause::evicted) << r.key;
  // A value heavier than the whole bound is not kept, and does not flush the entries that fit.
  ASSERT_TRUE(cache.set<blob>("huge", blob{max_bytes + 1}).ok());
  EXPECT_EQ(cache.get_if_present<blob>("huge"), nullptr);
  const auto after = l1->metrics();
  EXPECT_LE(after.bytes, max_bytes);
  EXPECT_EQ(after.entries, m.entries) << "an unstorable value evicted entries that fit";
  EXPECT_EQ(after.evictions, m.evictions + 1);
  auto log = removed.take();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].key, "huge");
  EXPECT_EQ(log[0].cause, removal_cause::evicted);
}

// Hot-set hit ratio after a one-off scan, for one policy.
double hot_hit_ratio_after_scan(eviction policy) {
  constexpr int capacity = 100, hot = 50, cold = 300;
  auto l1 = memory_layer::create({.max_entries = capacity, .shards = 1, .policy = policy});
  cache_stack cache({l1});
  auto fetch = [] { return std::string("x"); };
  for (int round = 0; round < 2; ++round) {  // the hot set is read twice: miss, then hit
    for (int i = 0; i < hot; ++i) (void)cache.get<std::string>("hot" + std::to_string(i), fetch);
  }
  for (int i = 0; i < cold; ++i) (void)cache.get<std::string>("cold" + std::to_string(i), fetch);
  int hits = 0;
  for (int i = 0; i < hot; ++i) {
    if (cache.get_if_present<std::string>("hot" + std::to_string(i)) != nullptr) ++hits;
  }
  return static_cast<double>(hits) / hot;
}

TEST(MemoryLayerTest, SegmentedLruKeepsTheHotSetThroughAScanThatFlushesLru) {
  const double slru = hot_hit_ratio_after_scan(eviction::segmented_lru);
  const double lru = hot_hit_ratio_after_scan(eviction::lru);
  EXPECT_GT(slru, lru) << "segmented LRU is not more scan-resistant than LRU";
  EXPECT_GE(slru, 0.9);
  EXPECT_LE(lru, 0.1);
}

TEST(MemoryLayerTest, WTinyLfuKeepsTheHotSetThroughAScanThatFlushesLru) {
  EXPECT_GE(hot_hit_ratio_after_scan(eviction::w_tinylfu), 0.9);
  EXPECT_LE(hot_hit_ratio_after_scan(eviction::lru), 0.1);
}

TEST(MemoryLayerTest, WTinyLfuReportsARejectedNewcomerAsEvicted) {
  removal_log removed;
  auto l1 = memory_layer::create({.max_entries = 10,
                                  .shards = 1,
                                  .policy = eviction::w_tinylfu,
                                  .on_remove = removed.callback()});
  cache_stack cache({l1});
  auto fetch = [] { return std::string("x"); };
  for (int round = 0; round < 3; ++round) {  // ten keys, each read three times
    for (int i = 0; i < 10; ++i) (void)cache.get<std::string>("hot" + std::to_string(i), fetch);
  }
  ASSERT_TRUE(removed.take().empty());
  for (int i = 0; i < 20; ++i) (void)cache.get<std::string>("once" + std::to_string(i), fetch);
  // Each one-off key passes through the one-entry window and loses the admission contest to a hot
  // key; only the newest one, still in the window, is resident.
  auto log = removed.take();
  std::size_t newcomers = 0;
  for (const auto& r : log) {
    EXPECT_EQ(r.cause, removal_cause::evicted) << r.key;
    newcomers += r.key.starts_with("once") ? 1 : 0;
  }
  EXPECT_GE(newcomers, 18u);
  EXPECT_NE(cache.get_if_present<std::string>("once19"), nullptr);
  const auto m = l1->metrics();
  EXPECT_EQ(m.entries, 10u);
  EXPECT_EQ(m.evictions, log.size());
}

TEST(MemoryLayerTest, OnRemoveReportsEachCauseWithItsKey) {
  auto clock = std::make_shared<test::fake_clock>();
  removal_log removed;
  auto l1 = memory_layer::create(
      {.max_entries = 2, .shards = 1, .on_remove = removed.callback(), .clock = clock});
  cache_stack cache({l1}, {.clock = clock});

  ASSERT_TRUE(cache.set<int>("a", 1).ok());
  ASSERT_TRUE(cache.set<int>("a", 2).ok());
  auto log = removed.take();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].key, "a");
  EXPECT_EQ(log[0].cause, removal_cause::replaced);

  ASSERT_TRUE(cache.set<int>("b", 1).ok());
  ASSERT_TRUE(cache.set<int>("c", 1).ok());  // third entry in a 2-entry layer: "a" is oldest
  log = removed.take();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].key, "a");
  EXPECT_EQ(log[0].cause, removal_cause::evicted);

  ASSERT_TRUE(cache.del("b").ok());
  log = removed.take();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].key, "b");
  EXPECT_EQ(log[0].cause, removal_cause::invalidated);

  ASSERT_TRUE(cache.set<int>("d", 1, {.ttl = 1s}).ok());
  clock->advance(1s);
  EXPECT_EQ(cache.get_if_present<int>("d"), nullptr);
  log = removed.take();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].key, "d");
  EXPECT_EQ(log[0].cause, removal_cause::expired);

  ASSERT_TRUE(cache.clear().ok());
  log = removed.take();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].key, "c");
  EXPECT_EQ(log[0].cause, removal_cause::invalidated);
  EXPECT_EQ(l1->size(), 0u);

  // Deleting an absent key removes nothing and reports nothing.
  ASSERT_TRUE(cache.del("absent").ok());
  EXPECT_TRUE(removed.take().empty());
}

TEST_P(MemoryLayerPolicyTest, OnRemoveRunsWithoutTheShardLockHeld) {
  // The callback calls back into the layer; with the (only) shard locked this would deadlock.
  std::shared_ptr<memory_layer> l1;
  std::atomic<std::size_t> seen_size{999};
  l1 = memory_layer::create(
      {.max_entries = 1,
       .shards = 1,
       .policy = GetParam(),
       .on_remove = [&](std::string_view, removal_cause) { seen_size = l1->size(); }});
  cache_stack cache({l1});
  ASSERT_TRUE(cache.set<int>("a", 1).ok());
  ASSERT_TRUE(cache.set<int>("b", 2).ok());
  EXPECT_EQ(seen_size.load(), 1u);
}

TEST_P(MemoryLayerPolicyTest, OnRemoveExceptionIsSwallowed) {
  auto l1 = memory_layer::create({.max_entries = 1,
                                  .shards = 1,
                                  .policy = GetParam(),
                                  .on_remove = [](std::string_view, removal_cause) {
                                    throw std::runtime_error("callback bug");
                                  }});
  cache_stack cache({l1});
  ASSERT_TRUE(cache.set<int>("a", 1).ok());
  EXPECT_NO_THROW((void)cache.set<int>("b", 2));
  EXPECT_EQ(l1->size(), 1u);
  EXPECT_EQ(*cache.get_if_present<int>("b"), 2);
}

TEST(MemoryLayerTest, RemovalCauseHasReadableNames) {
  EXPECT_EQ(to_string(removal_cause::expired), "expired");
  EXPECT_EQ(to_string(removal_cause::evicted), "evicted");
  EXPECT_EQ(to_string(removal_cause::invalidated), "invalidated");
  EXPECT_EQ(to_string(removal_cause::replaced), "replaced");
}

TEST_P(MemoryLayerPolicyTest, ConcurrentReadersAndWritersStayWithinMaxEntries) {
  constexpr std::size_t max_entries = 1000;  // 16 shards: not a multiple, on purpose
  constexpr int threads = 4, ops = 20'000, key_space = 4000;
  std::atomic<std::uint64_t> removals{0};
  auto l1 = memory_layer::create({.max_entries = max_entries,
                                  .shards = 16,
                                  .policy = GetParam(),
                                  .on_remove = [&](std::string_view, removal_cause) {
                                    removals.fetch_add(1, std::memory_order_relaxed);
                                  }});
  cache_stack cache({l1});
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> max_seen{0};
  std::atomic<int> wrong_values{0};

  std::thread observer([&] {
    while (!stop.load()) {
      const std::size_t n = l1->size();
      std::size_t prev = max_seen.load();
      while (n > prev && !max_seen.compare_exchange_weak(prev, n)) {
      }
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(static_cast<std::uint32_t>(t) * 7919u + 1u);
      std::uniform_int_distribution<int> key_dist(0, key_space - 1), op_dist(0, 9);
      for (int i = 0; i < ops; ++i) {
        const int k = key_dist(rng);
        const std::string key = "key" + std::to_string(k);
        switch (op_dist(rng)) {
          case 0:
          case 1:
            (void)cache.set<int>(key, k);
            break;
          case 2:
            (void)cache.del(key);
            break;
          default: {
            auto v = cache.get<int>(key, [k] { return k; });
            if (v == nullptr || *v != k) ++wrong_values;
          }
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  stop = true;
  observer.join();

  EXPECT_LE(l1->size(), max_entries);
  EXPECT_LE(max_seen.load(), max_entries);
  EXPECT_EQ(wrong_values.load(), 0);
  const auto m = l1->metrics();
  EXPECT_EQ(m.entries, l1->size());
  EXPECT_GT(m.evictions, 0u);
  EXPECT_GE(removals.load(), m.evictions);
}

}  // namespace
}  // namespace layercache
