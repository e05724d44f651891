// layer_contract.hpp — the behaviour every layer, and every stack of layers, shows through
// cache_stack. One suite, run over every layer (STYLE.md "Tests"), not copied per layer.
//
// A layer_factory builds the layers of one stack, nearest first, given the clock the test controls.
// Pass that clock to every layer that keeps time (memory_layer_options::clock, a byte layer's clock
// for its expiry hints): the suite advances it instead of sleeping, and the stack checks envelope
// expiry against the same clock.
//
//   #include "layer_contract.hpp"   // in exactly ONE .cpp file of a test binary: it defines tests
//   INSTANTIATE_TEST_SUITE_P(
//       Redis, LayerContractTest,
//       ::testing::Values(layercache::test::layer_factory{
//           "MemoryAndRedis", [&](std::shared_ptr<const layercache::clock> clock) {
//             return std::vector<std::shared_ptr<layercache::layer>>{
//                 layercache::memory_layer::create({.clock = clock}), make_redis_layer(clock)};
//           }}),
//       layercache::test::layer_factory_name);
//
// The factory is called once per test (fresh, empty layers) and may be called again within a test
// for the byte layers alone (see byte_view()): layers that share a backend must see the same data.
// Everything here is public API plus tests/support; nothing in it is specific to unit tests.
//
// Thread-safety: the tests start their own threads; every wait is bounded.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/layer.hpp"
#include "layercache/memory_layer.hpp"
#include "support/await.hpp"
#include "support/fake_clock.hpp"

namespace layercache::test {

struct layer_factory {
  std::string name;  // a valid GoogleTest name: letters, digits, underscores
  std::function<std::vector<std::shared_ptr<layer>>(std::shared_ptr<const clock>)> make;
};

inline std::string layer_factory_name(const ::testing::TestParamInfo<layer_factory>& info) {
  return info.param.name;
}

// GoogleTest prints parameters of failing tests: print the name, not the bytes.
inline void PrintTo(const layer_factory& f, std::ostream* os) { *os << f.name; }

namespace contract_detail {

inline constexpr std::chrono::seconds bound{10};  // upper bound of every wait

using layercache::test::eventually;

inline std::uint64_t total_hits(const metrics_snapshot& m) {
  std::uint64_t n = 0;
  for (const auto& l : m.layers) n += l.hits;
  return n;
}

// Keys a backend could mangle: NUL inside, bytes that are not UTF-8, multi-byte UTF-8, and the
// longest key the stack accepts by default (every byte value).
inline std::vector<std::string> binary_keys() {
  std::vector<std::string> keys{
      std::string("a\0b", 3),
      std::string("a\0c", 3),
      std::string("\0", 1),
      std::string("\xff\xfe\x80", 3),
      "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87",  // "ключ"
      "\xf0\x9f\x94\x91",                  // U+1F511
      "with space\tand\nnewline",
  };
  std::string longest(1024, '\0');
  for (std::size_t i = 0; i < longest.size(); ++i) longest[i] = static_cast<char>(i % 256);
  keys.push_back(longest);
  return keys;
}

}  // namespace contract_detail

class LayerContractTest : public ::testing::TestWithParam<layer_factory> {
 protected:
  void SetUp() override {
    clock_ = std::make_shared<fake_clock>();
    layers_ = GetParam().make(clock_);
    ASSERT_FALSE(layers_.empty()) << "the factory built no layer";
    for (const auto& l : layers_) ASSERT_NE(l, nullptr);
  }

  // The stack under test, over the factory's layers and the test's clock.
  std::unique_ptr<cache_stack> make_stack(stack_options options = {}) {
    options.clock = clock_;
    return std::make_unique<cache_stack>(layers_, std::move(options));
  }

  // The byte layers of the stack under test (without its memory layer), or empty when there are
  // none: reading through them proves a value really reached the lower layers. Use it after the
  // stack that wrote has been destroyed (so its writes have landed).
  std::vector<std::shared_ptr<layer>> byte_layers() const {
    std::vector<std::shared_ptr<layer>> out;
    for (const auto& l : layers_) {
      if (l->info().kind == layer_kind::bytes) out.push_back(l);
    }
    return out;
  }
  std::unique_ptr<cache_stack> byte_view() {
    auto bytes = byte_layers();
    if (bytes.empty()) return nullptr;
    return std::make_unique<cache_stack>(std::move(bytes), stack_options{.clock = clock_});
  }

  std::shared_ptr<fake_clock> clock_;
  std::vector<std::shared_ptr<layer>> layers_;
};

// A fetcher that must not run.
inline auto no_fetch() {
  return []() -> std::string {
    ADD_FAILURE() << "the fetcher ran for a key that should have been cached";
    return "unexpected";
  };
}

TEST_P(LayerContractTest, SetThenGetReturnsTheValueWithoutFetching) {
  auto cache = make_stack();
  ASSERT_TRUE(cache->set<std::string>("k", "v").ok());
  auto v = cache->get<std::string>("k", no_fetch());
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, "v");
  EXPECT_EQ(*cache->get_if_present<std::string>("k"), "v");
  const auto m = cache->metrics();
  EXPECT_EQ(m.fetches, 0u);
  EXPECT_GE(contract_detail::total_hits(m), 2u);
}

TEST_P(LayerContractTest, GetFetchesOnceThenAnswersFromTheCache) {
  auto cache = make_stack();
  std::atomic<int> calls{0};
  auto fetch = [&] {
    ++calls;
    return 42;
  };
  EXPECT_EQ(*cache->get<int>("answer", fetch), 42);
  EXPECT_EQ(*cache->get<int>("answer", fetch), 42);
  EXPECT_EQ(calls.load(), 1);
  const auto m = cache->metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_GE(contract_detail::total_hits(m), 1u);
  EXPECT_GE(m.layers.back().misses, 1u) << "the first get did not reach the last layer";
}

TEST_P(LayerContractTest, OverwriteReplacesTheValue) {
  auto cache = make_stack();
  ASSERT_TRUE(cache->set<std::string>("k", "first").ok());
  ASSERT_TRUE(cache->set<std::string>("k", "second").ok());
  EXPECT_EQ(*cache->get<std::string>("k", no_fetch()), "second");
}

TEST_P(LayerContractTest, DelRemovesTheValueAndTheNextGetFetches) {
  auto cache = make_stack();
  ASSERT_TRUE(cache->set<std::string>("k", "v").ok());
  ASSERT_TRUE(cache->set<std::string>("kept", "w").ok());
  ASSERT_TRUE(cache->del("k").ok());
  EXPECT_FALSE(cache->has("k"));
  EXPECT_EQ(cache->get_if_present<std::string>("k"), nullptr);
  EXPECT_EQ(*cache->get<std::string>("k", [] { return std::string("fetched"); }), "fetched");
  EXPECT_EQ(cache->metrics().fetches, 1u);
  EXPECT_EQ(*cache->get<std::string>("kept", no_fetch()), "w");
  EXPECT_TRUE(cache->del("never-existed").ok());
}

TEST_P(LayerContractTest, HasTellsWhetherGetWouldFetch) {
  auto cache = make_stack();
  EXPECT_FALSE(cache->has("k"));
  ASSERT_TRUE(cache->set<int>("k", 1).ok());
  EXPECT_TRUE(cache->has("k"));
  EXPECT_EQ(cache->get<int>("nf", [] { return std::optional<int>{}; }), nullptr);
  EXPECT_TRUE(cache->has("nf")) << "a cached not-found answers get without fetching";
  ASSERT_TRUE(cache->del("k").ok());
  EXPECT_FALSE(cache->has("k"));
}

TEST_P(LayerContractTest, ClearRemovesEveryEntry) {
  auto cache = make_stack();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(cache->set<int>("k" + std::to_string(i), i).ok());
  ASSERT_TRUE(cache->clear().ok());
  for (int i = 0; i < 20; ++i) {
    EXPECT_FALSE(cache->has("k" + std::to_string(i))) << i;
    EXPECT_EQ(cache->get_if_present<int>("k" + std::to_string(i)), nullptr) << i;
  }
  ASSERT_TRUE(cache->set<int>("after", 1).ok());
  EXPECT_EQ(*cache->get_if_present<int>("after"), 1);
}

TEST_P(LayerContractTest, EntryExpiresExactlyAtItsTtl) {
  auto cache = make_stack();
  ASSERT_TRUE(cache->set<std::string>("k", "v", {.ttl = std::chrono::seconds(10)}).ok());
  clock_->advance(std::chrono::milliseconds(9999));
  EXPECT_TRUE(cache->has("k"));
  EXPECT_EQ(*cache->get<std::string>("k", no_fetch()), "v");
  clock_->advance(std::chrono::milliseconds(1));
  EXPECT_FALSE(cache->has("k"));
  EXPECT_EQ(cache->get_if_present<std::string>("k"), nullptr);
  EXPECT_EQ(*cache->get<std::string>("k", [] { return std::string("new"); }), "new");
  EXPECT_EQ(cache->metrics().fetches, 1u);
}

TEST_P(LayerContractTest, FetchedValueExpiresAtTheCallTtl) {
  auto cache = make_stack({.ttl = std::chrono::minutes(5)});
  std::atomic<int> calls{0};
  auto fetch = [&] { return "v" + std::to_string(++calls); };
  EXPECT_EQ(*cache->get<std::string>("k", fetch, {.ttl = std::chrono::seconds(2)}), "v1");
  clock_->advance(std::chrono::milliseconds(1999));
  EXPECT_EQ(*cache->get<std::string>("k", fetch), "v1");
  clock_->advance(std::chrono::milliseconds(1));
  EXPECT_EQ(*cache->get<std::string>("k", fetch), "v2");
}

TEST_P(LayerContractTest, GetManySetManyAndDelMany) {
  auto cache = make_stack();
  const std::vector<std::pair<std::string, int>> entries{{"a", 1}, {"b", 2}};
  ASSERT_TRUE(cache->set_many<int>(entries).ok());
  std::vector<std::vector<std::string>> asked;
  auto fetch = [&](std::span<const std::string> keys) {
    asked.emplace_back(keys.begin(), keys.end());
    std::vector<std::optional<int>> out;
    for (const auto& k : keys) out.push_back(k == "c" ? std::optional<int>(3) : std::nullopt);
    return out;
  };
  const std::vector<std::string> keys{"a", "b", "c", "d", "a"};
  auto out = cache->get_many<int>(keys, fetch);
  ASSERT_EQ(out.size(), keys.size());
  EXPECT_EQ(*out[0], 1);
  EXPECT_EQ(*out[1], 2);
  EXPECT_EQ(*out[2], 3);
  EXPECT_EQ(out[3], nullptr);
  EXPECT_EQ(out[4].get(), out[0].get());
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0], (std::vector<std::string>{"c", "d"}));

  out = cache->get_many<int>(keys, fetch);
  EXPECT_EQ(asked.size(), 1u) << "cached values and not-founds were fetched again";
  EXPECT_EQ(*out[2], 3);
  EXPECT_EQ(out[3], nullptr);

  ASSERT_TRUE(cache->del_many(std::vector<std::string>{"a", "c"}).ok());
  EXPECT_FALSE(cache->has("a"));
  EXPECT_TRUE(cache->has("b"));
  EXPECT_FALSE(cache->has("c"));
  EXPECT_EQ(cache->metrics().fetches, 1u);
}

TEST_P(LayerContractTest, BinaryKeysAreDistinctAndRoundTrip) {
  const auto keys = contract_detail::binary_keys();
  {
    auto cache = make_stack();
    for (std::size_t i = 0; i < keys.size(); ++i) {
      ASSERT_TRUE(cache->set<std::string>(keys[i], "value-" + std::to_string(i)).ok()) << i;
    }
    for (std::size_t i = 0; i < keys.size(); ++i) {
      auto v = cache->get<std::string>(keys[i], no_fetch());
      ASSERT_NE(v, nullptr) << i;
      EXPECT_EQ(*v, "value-" + std::to_string(i)) << "key " << i;
    }
    ASSERT_TRUE(cache->del(keys[0]).ok());
    EXPECT_FALSE(cache->has(keys[0]));
    EXPECT_TRUE(cache->has(keys[1])) << "deleting \"a\\0b\" touched \"a\\0c\"";
  }
  if (auto bytes = byte_view()) {
    EXPECT_EQ(bytes->get_if_present<std::string>(keys[0]), nullptr);
    for (std::size_t i = 1; i < keys.size(); ++i) {
      auto v = bytes->get_if_present<std::string>(keys[i]);
      ASSERT_NE(v, nullptr) << "key " << i << " did not reach the byte layers intact";
      EXPECT_EQ(*v, "value-" + std::to_string(i)) << "key " << i;
    }
  }
}

TEST_P(LayerContractTest, LargeValueRoundTrips) {
  std::string big(std::size_t{1} << 20, '\0');
  std::uint32_t x = 12345;
  for (auto& c : big) {  // not trivially compressible
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 24);
  }
  {
    auto cache = make_stack();
    ASSERT_TRUE(cache->set<std::string>("big", big).ok());
    auto v = cache->get<std::string>("big", no_fetch());
    ASSERT_NE(v, nullptr);
    EXPECT_TRUE(*v == big) << "the 1 MiB value came back different";
  }
  if (auto bytes = byte_view()) {
    auto v = bytes->get_if_present<std::string>("big");
    ASSERT_NE(v, nullptr) << "the 1 MiB value did not reach the byte layers";
    EXPECT_TRUE(*v == big) << "the 1 MiB value came back different from the byte layers";
  }
}

TEST_P(LayerContractTest, NotFoundIsCachedForNegativeTtl) {
  auto cache = make_stack({.negative_ttl = std::chrono::seconds(5)});
  std::atomic<int> calls{0};
  auto fetch = [&] {
    ++calls;
    return std::optional<std::string>{};
  };
  EXPECT_EQ(cache->get<std::string>("nf", fetch), nullptr);
  EXPECT_EQ(cache->get<std::string>("nf", fetch), nullptr);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(cache->metrics().negative_hits, 1u);
  clock_->advance(std::chrono::seconds(5));
  EXPECT_EQ(cache->get<std::string>("nf", fetch), nullptr);
  EXPECT_EQ(calls.load(), 2);
}

TEST_P(LayerContractTest, ZeroNegativeTtlNeverCachesNotFound) {
  auto cache = make_stack({.negative_ttl = std::chrono::milliseconds(0)});
  std::atomic<int> calls{0};
  auto fetch = [&] {
    ++calls;
    return std::optional<std::string>{};
  };
  EXPECT_EQ(cache->get<std::string>("nf", fetch), nullptr);
  EXPECT_EQ(cache->get<std::string>("nf", fetch), nullptr);
  EXPECT_EQ(calls.load(), 2);
  EXPECT_FALSE(cache->has("nf"));
}

TEST_P(LayerContractTest, ConcurrentMissesCallTheFetcherOnce) {
  constexpr int callers = 8;
  auto cache = make_stack();
  std::atomic<int> calls{0};
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::vector<std::shared_ptr<const std::string>> results(callers);
  std::vector<std::thread> threads;
  for (int i = 0; i < callers; ++i) {
    threads.emplace_back([&, i] {
      results[static_cast<std::size_t>(i)] = cache->get<std::string>("hot", [&] {
        ++calls;
        std::unique_lock lock(mu);
        EXPECT_TRUE(cv.wait_for(lock, contract_detail::bound, [&] { return release; }));
        return std::string("once");
      });
    });
  }
  const bool attached = contract_detail::eventually(
      [&] { return calls.load() == 1 && cache->metrics().dedupes == callers - 1; });
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
  ASSERT_TRUE(attached) << "waiters attached: " << cache->metrics().dedupes;
  EXPECT_EQ(calls.load(), 1);
  for (const auto& r : results) {
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r.get(), results[0].get());
  }
  EXPECT_EQ(*results[0], "once");
  const auto m = cache->metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.dedupes, static_cast<std::uint64_t>(callers - 1));
}

// In L1 (one process) a key read as another type is misuse and throws; in a byte layer it is what
// another build wrote (a rolling deploy, codec.hpp "type_name"): a counted miss and a refetch.
TEST_P(LayerContractTest, ReadingAKeyAsAnotherTypeThrowsInL1AndIsASchemaMissInByteLayers) {
  const bool has_l1 = layers_.front()->info().kind == layer_kind::objects;
  {
    auto cache = make_stack();
    ASSERT_TRUE(cache->set<std::string>("typed", "text").ok());
    if (has_l1) {
      EXPECT_THROW((void)cache->get<int>("typed", [] { return 1; }), type_mismatch_error);
      EXPECT_THROW((void)cache->get_if_present<int>("typed"), type_mismatch_error);
      EXPECT_EQ(*cache->get_if_present<std::string>("typed"), "text");
      EXPECT_EQ(cache->metrics().fetches, 0u);
    }
  }
  if (auto bytes = byte_view()) {
    EXPECT_EQ(bytes->get_if_present<int>("typed"), nullptr);
    EXPECT_EQ(*bytes->get_if_present<std::string>("typed"), "text")
        << "a value read as the wrong type was dropped";
    std::shared_ptr<const int> v;
    EXPECT_NO_THROW(v = bytes->get<int>("typed", [] { return 1; }));
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(*v, 1);
    const auto m = bytes->metrics();
    EXPECT_EQ(m.fetches, 1u);
    EXPECT_GE(m.schema_misses, 2u);
    for (const auto& l : m.layers) EXPECT_EQ(l.errors, 0u) << l.name;
  }
  if (auto bytes = byte_view()) {  // the previous view flushed its fill when destroyed
    auto v = bytes->get_if_present<int>("typed");
    ASSERT_NE(v, nullptr) << "the fetched value did not replace the entry of another type";
    EXPECT_EQ(*v, 1);
  }
}

TEST_P(LayerContractTest, ValuesReachTheByteLayersWithTheirRemainingLifetime) {
  if (byte_layers().empty()) GTEST_SKIP() << "no byte layer in this stack";
  {
    auto cache = make_stack();
    ASSERT_TRUE(cache->set<std::string>("k", "v", {.ttl = std::chrono::seconds(10)}).ok());
    EXPECT_EQ(*cache->get<std::string>("fetched", [] { return std::string("f"); },
                                       {.ttl = std::chrono::seconds(10)}),
              "f");
  }
  clock_->advance(std::chrono::seconds(4));
  auto bytes = byte_view();
  EXPECT_EQ(*bytes->get<std::string>("k", no_fetch()), "v");
  EXPECT_EQ(*bytes->get<std::string>("fetched", no_fetch()), "f");
  clock_->advance(std::chrono::seconds(6));  // 10 s after the writes, not 10 s after the reads
  EXPECT_FALSE(bytes->has("k"));
  EXPECT_EQ(bytes->get_if_present<std::string>("fetched"), nullptr);
}

}  // namespace layercache::test
