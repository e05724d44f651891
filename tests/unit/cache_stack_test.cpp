// cache_stack_test.cpp — the read-through API: set/get/del/clear/has/get_if_present, negative
// caching, get_many/set_many/del_many, and the byte-layer paths (backfill with remaining lifetime,
// writes to every layer, corruption, failing layers) over tests/unit/test_byte_layer.hpp.
#include "layercache/cache_stack.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "layercache/detail/envelope.hpp"
#include "support/await.hpp"
#include "support/fake_clock.hpp"
#include "test_byte_layer.hpp"

namespace layercache {
namespace {

using namespace std::chrono_literals;
using sclock = std::chrono::steady_clock;
using strings = std::vector<std::string>;

constexpr auto bound = 10s;

using layercache::test::eventually;

using layercache::test::gate;

struct recorded_event {
  event_type type;
  std::string layer;
  std::string key;
  errc code;
  std::thread::id thread;
};

struct event_log {
  std::mutex mu;
  std::vector<recorded_event> events;

  event_callback callback() {
    return [this](const event& e) {
      std::lock_guard lock(mu);
      events.push_back({e.type, std::string(e.layer), std::string(e.key), e.detail.code(),
                        std::this_thread::get_id()});
    };
  }
  std::vector<recorded_event> of(event_type type) {
    std::lock_guard lock(mu);
    std::vector<recorded_event> out;
    for (const auto& e : events) {
      if (e.type == type) out.push_back(e);
    }
    return out;
  }
};

// Counts fetcher calls and returns a fixed answer.
struct counting_fetch {
  std::atomic<int> calls{0};
  std::optional<std::string> answer = "fetched";

  auto operator()() {
    ++calls;
    return answer;
  }
};

// ---- basic operations --------------------------------------------------------------------------

TEST(CacheStackTest, SetThenGetReturnsTheValueWithoutFetching) {
  cache_stack cache({memory_layer::create({})});
  ASSERT_TRUE(cache.set<std::string>("k", "v").ok());
  counting_fetch fetch;
  auto v = cache.get<std::string>("k", std::ref(fetch));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, "v");
  EXPECT_EQ(fetch.calls.load(), 0);
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 0u);
  EXPECT_EQ(m.layers[0].hits, 1u);
  EXPECT_EQ(m.layers[0].writes, 1u);
}

TEST(CacheStackTest, SetOverwritesTheCachedValue) {
  cache_stack cache({memory_layer::create({})});
  ASSERT_TRUE(cache.set<int>("k", 1).ok());
  ASSERT_TRUE(cache.set<int>("k", 2).ok());
  EXPECT_EQ(*cache.get<int>("k", [] { return -1; }), 2);
  EXPECT_EQ(cache.metrics().fetches, 0u);
}

TEST(CacheStackTest, GetIfPresentNeverFetchesNorCachesAMiss) {
  cache_stack cache({memory_layer::create({})});
  EXPECT_EQ(cache.get_if_present<std::string>("k"), nullptr);
  EXPECT_FALSE(cache.has("k"));
  ASSERT_TRUE(cache.set<std::string>("k", "v").ok());
  auto v = cache.get_if_present<std::string>("k");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, "v");
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 0u);
  EXPECT_EQ(m.layers[0].hits, 1u);
  EXPECT_EQ(m.layers[0].misses, 1u);
}

TEST(CacheStackTest, HasIsTrueForAValueAndForACachedNotFoundAndCountsNothing) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l2 = test::test_byte_layer::create({.clock = clock});
  cache_stack cache({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  ASSERT_TRUE(cache.set<int>("value", 1).ok());
  EXPECT_EQ(cache.get<int>("missing", [] { return std::optional<int>{}; }), nullptr);
  const auto before = cache.metrics();
  EXPECT_TRUE(cache.has("value"));
  EXPECT_TRUE(cache.has("missing")) << "a cached not-found answers get without fetching";
  EXPECT_FALSE(cache.has("never-seen"));
  const auto after = cache.metrics();
  EXPECT_EQ(after.layers[0].hits, before.layers[0].hits);
  EXPECT_EQ(after.layers[0].misses, before.layers[0].misses);
  EXPECT_EQ(after.layers[1].hits, before.layers[1].hits);
  EXPECT_EQ(after.layers[1].misses, before.layers[1].misses);

  // Only the byte layer holds them: has() looks there too, and honours expiry.
  ASSERT_TRUE(cache.flush());
  cache_stack l2_view({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  EXPECT_TRUE(l2_view.has("value"));
  EXPECT_TRUE(l2_view.has("missing"));
  clock->advance(cache.options().negative_ttl);
  EXPECT_FALSE(l2_view.has("missing"));
}

TEST(CacheStackTest, DelRemovesTheKeyFromEveryLayer) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l1 = memory_layer::create({.clock = clock});
  auto l2 = test::test_byte_layer::create({.clock = clock});
  cache_stack cache({l1, l2}, {.clock = clock});
  ASSERT_TRUE(cache.set<std::string>("k", "v").ok());
  ASSERT_TRUE(cache.set<std::string>("other", "w").ok());
  ASSERT_TRUE(cache.flush());
  ASSERT_TRUE(l2->stored("k").has_value());
  ASSERT_TRUE(cache.del("k").ok());
  EXPECT_FALSE(cache.has("k")) << "this process must read its own delete at once";
  ASSERT_TRUE(cache.flush());
  EXPECT_FALSE(l2->stored("k").has_value());
  EXPECT_EQ(l1->size(), 1u);
  counting_fetch fetch;
  EXPECT_EQ(*cache.get<std::string>("k", std::ref(fetch)), "fetched");
  EXPECT_EQ(fetch.calls.load(), 1);
  EXPECT_EQ(*cache.get_if_present<std::string>("other"), "w");
  EXPECT_TRUE(cache.del("absent").ok());
}

TEST(CacheStackTest, ClearRemovesEveryEntryFromEveryLayer) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l1 = memory_layer::create({.clock = clock});
  auto l2 = test::test_byte_layer::create({.clock = clock});
  cache_stack cache({l1, l2}, {.clock = clock});
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(cache.set<int>("k" + std::to_string(i), i).ok());
  ASSERT_TRUE(cache.flush());
  ASSERT_EQ(l1->size(), 10u);
  ASSERT_EQ(l2->size(), 10u);
  ASSERT_TRUE(cache.clear().ok());
  EXPECT_EQ(l1->size(), 0u);
  EXPECT_EQ(l2->size(), 0u);
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(cache.has("k" + std::to_string(i)));
}

TEST(CacheStackTest, ClearAlsoRemovesWritesStillQueuedForTheByteLayers) {
  auto clock = std::make_shared<test::fake_clock>();
  auto inner = test::test_byte_layer::create({.clock = clock});
  auto l2 = std::make_shared<test::faulty_byte_layer>(inner);
  // Hold background byte-layer writes back: long enough that, if clear() does not wait for them,
  // they land after it; bounded, so that a clear() that does wait is not blocked for good.
  gate release_writes;
  l2->set_hook([&](unsigned kind, std::string_view) {
    if (kind == test::fault::set) (void)release_writes.wait(std::chrono::milliseconds(200));
  });
  cache_stack cache({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  ASSERT_TRUE(cache.set<std::string>("queued", "v").ok());  // best effort: returns at once
  ASSERT_TRUE(cache.clear().ok());
  EXPECT_FALSE(cache.has("queued")) << "a write queued before clear() is still visible";
  EXPECT_EQ(cache.get_if_present<std::string>("queued"), nullptr);
  release_writes.open();
  ASSERT_TRUE(cache.flush());
  EXPECT_FALSE(inner->stored("queued").has_value())
      << "a write queued before clear() landed after it and resurrected the entry";
  EXPECT_FALSE(cache.has("queued"));
}

TEST(CacheStackTest, FetcherMayReturnASharedPtr) {
  cache_stack cache({memory_layer::create({})});
  auto made = std::make_shared<std::string>("shared");
  auto v = cache.get<std::string>("k", [&] { return made; });
  EXPECT_EQ(v.get(), made.get()) << "the fetcher's object itself is cached, not a copy";
  EXPECT_EQ(cache.get<std::string>("k", [] { return std::string("x"); }).get(), made.get());
}

// ---- negative caching --------------------------------------------------------------------------

TEST(NegativeCachingTest, EmptyOptionalIsCachedAsNotFound) {
  cache_stack cache({memory_layer::create({})});
  counting_fetch fetch;
  fetch.answer = std::nullopt;
  EXPECT_EQ(cache.get<std::string>("k", std::ref(fetch)), nullptr);
  EXPECT_EQ(cache.get<std::string>("k", std::ref(fetch)), nullptr);
  EXPECT_EQ(fetch.calls.load(), 1);
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.negative_hits, 1u);
  EXPECT_EQ(m.layers[0].hits, 1u);
  EXPECT_EQ(cache.get_if_present<std::string>("k"), nullptr);
  EXPECT_EQ(cache.metrics().negative_hits, 2u);
}

TEST(NegativeCachingTest, NullSharedPtrFromTheFetcherIsNotFound) {
  cache_stack cache({memory_layer::create({})});
  std::atomic<int> calls{0};
  auto fetch = [&] {
    ++calls;
    return std::shared_ptr<const std::string>{};
  };
  EXPECT_EQ(cache.get<std::string>("k", fetch), nullptr);
  EXPECT_EQ(cache.get<std::string>("k", fetch), nullptr);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(cache.metrics().negative_hits, 1u);
}

TEST(NegativeCachingTest, NotFoundIsFetchedAgainAfterNegativeTtl) {
  auto clock = std::make_shared<test::fake_clock>();
  cache_stack cache({memory_layer::create({.clock = clock})}, {.negative_ttl = 5s, .clock = clock});
  counting_fetch fetch;
  fetch.answer = std::nullopt;
  EXPECT_EQ(cache.get<std::string>("k", std::ref(fetch)), nullptr);
  clock->advance(4999ms);
  EXPECT_EQ(cache.get<std::string>("k", std::ref(fetch)), nullptr);
  EXPECT_EQ(fetch.calls.load(), 1);
  clock->advance(1ms);
  fetch.answer = "appeared";
  auto v = cache.get<std::string>("k", std::ref(fetch));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, "appeared");
  EXPECT_EQ(fetch.calls.load(), 2);
  const auto m = cache.metrics();
  EXPECT_EQ(m.negative_hits, 1u);
  EXPECT_EQ(m.layers[0].expirations, 1u);
}

TEST(NegativeCachingTest, ZeroNegativeTtlNeverCachesNotFound) {
  cache_stack cache({memory_layer::create({})}, {.negative_ttl = 0ms});
  counting_fetch fetch;
  fetch.answer = std::nullopt;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(cache.get<std::string>("k", std::ref(fetch)), nullptr);
  EXPECT_EQ(fetch.calls.load(), 3);
  EXPECT_FALSE(cache.has("k"));
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 3u);
  EXPECT_EQ(m.negative_hits, 0u);
  EXPECT_EQ(m.layers[0].writes, 0u);
}

TEST(NegativeCachingTest, PerCallNegativeTtlOverridesTheStack) {
  auto clock = std::make_shared<test::fake_clock>();
  cache_stack cache({memory_layer::create({.clock = clock})},
                    {.negative_ttl = 30s, .clock = clock});
  counting_fetch fetch;
  fetch.answer = std::nullopt;
  EXPECT_EQ(cache.get<std::string>("zero", std::ref(fetch), {.negative_ttl = 0ms}), nullptr);
  EXPECT_EQ(cache.get<std::string>("zero", std::ref(fetch), {.negative_ttl = 0ms}), nullptr);
  EXPECT_EQ(fetch.calls.load(), 2);
  EXPECT_EQ(cache.get<std::string>("short", std::ref(fetch), {.negative_ttl = 1s}), nullptr);
  clock->advance(1s);
  EXPECT_EQ(cache.get<std::string>("short", std::ref(fetch)), nullptr);
  EXPECT_EQ(fetch.calls.load(), 4);
}

TEST(NegativeCachingTest, NotFoundInAByteLayerIsANegativeHitWithoutFetching) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l2 = test::test_byte_layer::create({.clock = clock});
  {
    cache_stack writer({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
    EXPECT_EQ(writer.get<std::string>("k", [] { return std::optional<std::string>{}; }), nullptr);
    ASSERT_TRUE(writer.flush());
    ASSERT_TRUE(l2->stored("k").has_value()) << "not-found was not written to the byte layer";
  }
  cache_stack reader({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  counting_fetch fetch;
  EXPECT_EQ(reader.get<std::string>("k", std::ref(fetch)), nullptr);
  EXPECT_EQ(fetch.calls.load(), 0);
  auto m = reader.metrics();
  EXPECT_EQ(m.layers[1].hits, 1u);
  EXPECT_EQ(m.negative_hits, 1u);
  // Backfilled into L1 as a negative entry.
  EXPECT_EQ(reader.get<std::string>("k", std::ref(fetch)), nullptr);
  m = reader.metrics();
  EXPECT_EQ(m.layers[0].hits, 1u);
  EXPECT_EQ(m.negative_hits, 2u);
  EXPECT_EQ(fetch.calls.load(), 0);
}

// ---- get_many / set_many / del_many ------------------------------------------------------------

// A batch fetcher that records what it was asked and answers "v:<key>".
struct batch_fetch {
  std::mutex mu;
  std::vector<strings> asked;

  std::vector<std::optional<std::string>> operator()(std::span<const std::string> keys) {
    {
      std::lock_guard lock(mu);
      asked.emplace_back(keys.begin(), keys.end());
    }
    std::vector<std::optional<std::string>> out;
    for (const auto& k : keys) out.emplace_back("v:" + k);
    return out;
  }
  std::vector<strings> calls() {
    std::lock_guard lock(mu);
    return asked;
  }
};

TEST(GetManyTest, MissingKeysGoToOneFetcherCall) {
  cache_stack cache({memory_layer::create({})});
  batch_fetch fetch;
  const strings keys{"a", "b", "c"};
  auto out = cache.get_many<std::string>(keys, std::ref(fetch));
  ASSERT_EQ(out.size(), 3u);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    ASSERT_NE(out[i], nullptr);
    EXPECT_EQ(*out[i], "v:" + keys[i]);
  }
  ASSERT_EQ(fetch.calls().size(), 1u);
  EXPECT_EQ(fetch.calls()[0], keys);
  auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.layers[0].misses, 3u);

  auto again = cache.get_many<std::string>(keys, std::ref(fetch));
  EXPECT_EQ(fetch.calls().size(), 1u);
  for (std::size_t i = 0; i < keys.size(); ++i) EXPECT_EQ(again[i].get(), out[i].get());
  m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.layers[0].hits, 3u);
}

TEST(GetManyTest, CachedKeysAreNotPassedToTheFetcher) {
  cache_stack cache({memory_layer::create({})});
  ASSERT_TRUE(cache.set<std::string>("b", "cached").ok());
  batch_fetch fetch;
  auto out = cache.get_many<std::string>(strings{"a", "b", "c"}, std::ref(fetch));
  ASSERT_EQ(fetch.calls().size(), 1u);
  EXPECT_EQ(fetch.calls()[0], (strings{"a", "c"}));
  EXPECT_EQ(*out[0], "v:a");
  EXPECT_EQ(*out[1], "cached");
  EXPECT_EQ(*out[2], "v:c");
}

TEST(GetManyTest, DuplicateKeysAreFetchedOnceAndAnsweredAtEveryPosition) {
  cache_stack cache({memory_layer::create({})});
  batch_fetch fetch;
  auto out = cache.get_many<std::string>(strings{"a", "b", "a", "a"}, std::ref(fetch));
  ASSERT_EQ(out.size(), 4u);
  ASSERT_EQ(fetch.calls().size(), 1u);
  EXPECT_EQ(fetch.calls()[0], (strings{"a", "b"}));
  EXPECT_EQ(*out[0], "v:a");
  EXPECT_EQ(*out[1], "v:b");
  EXPECT_EQ(out[2].get(), out[0].get());
  EXPECT_EQ(out[3].get(), out[0].get());
}

TEST(GetManyTest, EmptyInputReturnsEmptyWithoutFetching) {
  cache_stack cache({memory_layer::create({})});
  batch_fetch fetch;
  auto out = cache.get_many<std::string>(strings{}, std::ref(fetch));
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(fetch.calls().empty());
  EXPECT_EQ(cache.metrics().fetches, 0u);
}

TEST(GetManyTest, KeysInFlightInAnotherGetAreAwaitedNotFetched) {
  cache_stack cache({memory_layer::create({})});
  gate single_entered, release_single;
  std::shared_ptr<const std::string> single;
  std::thread other([&] {
    single = cache.get<std::string>("a", [&] {
      single_entered.open();
      EXPECT_TRUE(release_single.wait());
      return std::string("from-get");
    });
  });
  ASSERT_TRUE(single_entered.wait());

  std::vector<strings> asked;
  auto out = cache.get_many<std::string>(strings{"a", "b"}, [&](std::span<const std::string> keys) {
    asked.emplace_back(keys.begin(), keys.end());
    release_single.open();  // "a" may only finish after the batch was fetched
    return std::vector<std::string>{"batch:" + keys[0]};
  });
  other.join();
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0], strings{"b"});
  ASSERT_NE(out[0], nullptr);
  EXPECT_EQ(out[0].get(), single.get()) << "the awaited key did not get the other fetch's value";
  EXPECT_EQ(*out[0], "from-get");
  EXPECT_EQ(*out[1], "batch:b");
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 2u);
  EXPECT_EQ(m.dedupes, 1u);
}

TEST(GetManyTest, WrongSizedResultThrowsInvalidArgumentToEveryWaiterAndCachesNothing) {
  cache_stack cache({memory_layer::create({})}, {.wait_deadline = 5s});
  std::atomic<bool> follower_got_invalid_argument{false};
  std::thread follower;
  EXPECT_THROW((void)cache.get_many<std::string>(
                   strings{"a", "b"},
                   [&](std::span<const std::string>) {
                     follower = std::thread([&] {
                       try {
                         (void)cache.get<std::string>("a", [] { return std::string("x"); });
                       } catch (const invalid_argument_error&) {
                         follower_got_invalid_argument = true;
                       }
                     });
                     EXPECT_TRUE(eventually([&] { return cache.metrics().dedupes == 1; }));
                     return std::vector<std::string>{"only one"};
                   }),
               invalid_argument_error);
  follower.join();
  EXPECT_TRUE(follower_got_invalid_argument.load());
  EXPECT_FALSE(cache.has("a"));
  EXPECT_FALSE(cache.has("b"));
  // Nothing is left in flight: the keys can be fetched again.
  batch_fetch fetch;
  auto out = cache.get_many<std::string>(strings{"a", "b"}, std::ref(fetch));
  EXPECT_EQ(*out[0], "v:a");
  EXPECT_EQ(fetch.calls().size(), 1u);
}

TEST(GetManyTest, NotFoundResultsAreCachedAsNegative) {
  cache_stack cache({memory_layer::create({})});
  std::atomic<int> calls{0};
  auto fetch = [&](std::span<const std::string> keys) {
    ++calls;
    std::vector<std::optional<int>> out;
    for (const auto& k : keys) {
      out.push_back(k == "present" ? std::optional<int>(1) : std::nullopt);
    }
    return out;
  };
  auto out = cache.get_many<int>(strings{"present", "absent"}, fetch);
  ASSERT_NE(out[0], nullptr);
  EXPECT_EQ(*out[0], 1);
  EXPECT_EQ(out[1], nullptr);
  out = cache.get_many<int>(strings{"present", "absent"}, fetch);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(out[1], nullptr);
  EXPECT_EQ(cache.metrics().negative_hits, 1u);
  EXPECT_TRUE(cache.has("absent"));
}

TEST(GetManyTest, FetcherExceptionReachesTheCallerAndCachesNothing) {
  cache_stack cache({memory_layer::create({})});
  EXPECT_THROW((void)cache.get_many<int>(strings{"a", "b"},
                                         [](std::span<const std::string>) -> std::vector<int> {
                                           throw std::runtime_error("batch failed");
                                         }),
               std::runtime_error);
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.fetch_errors, 1u);
  EXPECT_FALSE(cache.has("a"));
  auto out = cache.get_many<int>(strings{"a"}, [](std::span<const std::string> keys) {
    return std::vector<int>(keys.size(), 5);
  });
  EXPECT_EQ(*out[0], 5);
}

TEST(GetManyTest, ByteLayerIsReadInOneBatchAndBackfillsL1) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l2 = test::test_byte_layer::create({.clock = clock});
  {
    cache_stack writer({l2}, {.clock = clock});
    ASSERT_TRUE(writer.set<std::string>("a", "l2:a").ok());
    ASSERT_TRUE(writer.set<std::string>("c", "l2:c").ok());
  }
  auto l1 = memory_layer::create({.clock = clock});
  cache_stack cache({l1, l2}, {.clock = clock});
  batch_fetch fetch;
  auto out = cache.get_many<std::string>(strings{"a", "b", "c"}, std::ref(fetch));
  EXPECT_EQ(*out[0], "l2:a");
  EXPECT_EQ(*out[1], "v:b");
  EXPECT_EQ(*out[2], "l2:c");
  ASSERT_EQ(fetch.calls().size(), 1u);
  EXPECT_EQ(fetch.calls()[0], strings{"b"});
  EXPECT_EQ(l2->calls().get_many.load(), 1u);
  EXPECT_EQ(l2->calls().get.load(), 0u);
  EXPECT_EQ(l1->size(), 3u);
  ASSERT_TRUE(cache.flush());
  EXPECT_TRUE(l2->stored("b").has_value()) << "fetched value not written to the byte layer";
  const auto m = cache.metrics();
  EXPECT_EQ(m.layers[1].hits, 2u);
  EXPECT_EQ(m.layers[1].misses, 1u);
}

TEST(GetManyTest, SetManyStoresEveryValueInEveryLayer) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l1 = memory_layer::create({.clock = clock});
  auto l2 = test::test_byte_layer::create({.clock = clock});
  cache_stack cache({l1, l2}, {.clock = clock});
  const std::vector<std::pair<std::string, int>> entries{{"a", 1}, {"b", 2}, {"c", 3}};
  ASSERT_TRUE(cache.set_many<int>(entries, {.ttl = 2s}).ok());
  ASSERT_TRUE(cache.flush());
  // Batched: never more byte-layer calls than values.
  EXPECT_LE(l2->calls().set_many.load() + l2->calls().set.load(), entries.size());
  EXPECT_EQ(l1->size(), 3u);
  EXPECT_EQ(l2->size(), 3u);
  EXPECT_EQ(*l2->stored_expiry("b"), clock->now_ms() + 2000);
  auto out = cache.get_many<int>(strings{"a", "b", "c"}, [](std::span<const std::string> k) {
    return std::vector<int>(k.size(), -1);
  });
  EXPECT_EQ(*out[0], 1);
  EXPECT_EQ(*out[1], 2);
  EXPECT_EQ(*out[2], 3);
  EXPECT_EQ(cache.metrics().fetches, 0u);
  clock->advance(2s);
  EXPECT_FALSE(cache.has("a"));
}

TEST(GetManyTest, DelManyRemovesEveryKeyFromEveryLayer) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l1 = memory_layer::create({.clock = clock});
  auto l2 = test::test_byte_layer::create({.clock = clock});
  cache_stack cache({l1, l2}, {.clock = clock});
  for (const char* k : {"a", "b", "c"}) ASSERT_TRUE(cache.set<int>(k, 1).ok());
  ASSERT_TRUE(cache.del_many(strings{"a", "c", "never"}).ok());
  EXPECT_FALSE(cache.has("a"));
  EXPECT_TRUE(cache.has("b"));
  EXPECT_FALSE(cache.has("c"));
  ASSERT_TRUE(cache.flush());
  EXPECT_LE(l2->calls().del_many.load() + l2->calls().del.load(), 3u);
  EXPECT_EQ(l1->size(), 1u);
  EXPECT_EQ(l2->size(), 1u);
}

// ---- byte-layer paths --------------------------------------------------------------------------

TEST(BackfillTest, ByteLayerHitFillsL1WithTheRemainingLifetime) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l2 = test::test_byte_layer::create({.clock = clock});
  {
    cache_stack writer({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
    ASSERT_TRUE(writer.set<std::string>("k", "v", {.ttl = 10s}).ok());
  }
  clock->advance(4s);
  auto l1 = memory_layer::create({.clock = clock});
  cache_stack cache({l1, l2}, {.clock = clock});
  counting_fetch fetch;
  EXPECT_EQ(*cache.get<std::string>("k", std::ref(fetch)), "v");
  EXPECT_EQ(l1->size(), 1u);
  EXPECT_EQ(l2->calls().get.load(), 1u);

  clock->advance(5999ms);  // +9.999 s: still live in L1, and L1 answers
  EXPECT_EQ(*cache.get<std::string>("k", std::ref(fetch)), "v");
  EXPECT_EQ(l2->calls().get.load(), 1u);
  EXPECT_EQ(fetch.calls.load(), 0);

  clock->advance(1ms);  // +10 s: expired everywhere, not at +14 s
  EXPECT_EQ(*cache.get<std::string>("k", std::ref(fetch)), "fetched");
  EXPECT_EQ(fetch.calls.load(), 1);
  const auto m = cache.metrics();
  EXPECT_EQ(m.layers[0].hits, 1u);
  EXPECT_EQ(m.layers[0].expirations, 1u);
  EXPECT_EQ(m.layers[1].hits, 1u);
  EXPECT_EQ(m.fetches, 1u);
}

TEST(BackfillTest, BackfilledLifetimeIsCappedByTheMemoryLayerTtl) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l2 = test::test_byte_layer::create({.clock = clock});
  {
    cache_stack writer({l2}, {.clock = clock});
    ASSERT_TRUE(writer.set<std::string>("k", "v", {.ttl = 10s}).ok());
  }
  clock->advance(4s);
  auto l1 = memory_layer::create({.ttl = 3s, .clock = clock});
  cache_stack cache({l1, l2}, {.clock = clock});
  counting_fetch fetch;
  EXPECT_EQ(*cache.get<std::string>("k", std::ref(fetch)), "v");  // L1 until +7 s
  clock->advance(2999ms);
  EXPECT_EQ(*cache.get<std::string>("k", std::ref(fetch)), "v");
  EXPECT_EQ(l2->calls().get.load(), 1u);
  clock->advance(1ms);  // +7 s: gone from L1, still live in L2
  EXPECT_EQ(*cache.get<std::string>("k", std::ref(fetch)), "v");
  EXPECT_EQ(l2->calls().get.load(), 2u);
  EXPECT_EQ(fetch.calls.load(), 0);
  EXPECT_EQ(cache.metrics().layers[1].hits, 2u);
}

TEST(BackfillTest, HitInALowerByteLayerFillsTheByteLayersAboveIt) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l2 = test::test_byte_layer::create({.name = "l2", .clock = clock});
  auto l3 = test::test_byte_layer::create({.name = "l3", .clock = clock});
  {
    cache_stack writer({l3}, {.clock = clock});
    ASSERT_TRUE(writer.set<std::string>("k", "deep", {.ttl = 10s}).ok());
  }
  const unix_ms expiry = clock->now_ms() + 10'000;
  clock->advance(1s);
  cache_stack cache({memory_layer::create({.clock = clock}), l2, l3}, {.clock = clock});
  EXPECT_EQ(*cache.get<std::string>("k", [] { return std::string("x"); }), "deep");
  ASSERT_TRUE(cache.flush());
  ASSERT_TRUE(l2->stored("k").has_value());
  EXPECT_EQ(*l2->stored_expiry("k"), expiry) << "backfill restarted the lifetime";
  const auto m = cache.metrics();
  EXPECT_EQ(m.layers[1].misses, 1u);
  EXPECT_EQ(m.layers[2].hits, 1u);
  EXPECT_EQ(m.fetches, 0u);
}

TEST(BackfillTest, FetchedValueIsWrittenToEveryLayer) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l1 = memory_layer::create({.clock = clock});
  auto l2 = test::test_byte_layer::create({.name = "l2", .clock = clock});
  auto l3 = test::test_byte_layer::create({.name = "l3", .clock = clock, .max_ttl = 1s});
  cache_stack cache({l1, l2, l3}, {.clock = clock});
  const unix_ms now = clock->now_ms();
  EXPECT_EQ(*cache.get<std::string>("k", [] { return std::string("v"); }, {.ttl = 1min}), "v");
  EXPECT_EQ(l1->size(), 1u);
  ASSERT_TRUE(cache.flush());
  ASSERT_TRUE(l2->stored("k").has_value());
  ASSERT_TRUE(l3->stored("k").has_value());
  EXPECT_EQ(*l2->stored_expiry("k"), now + 60'000);
  EXPECT_EQ(*l3->stored_expiry("k"), now + 1'000) << "the layer's max_ttl did not cap the hint";
  detail::decoded_envelope env;
  ASSERT_TRUE(detail::decode_envelope(*l2->stored("k"), env).ok());
  EXPECT_EQ(env.header.fresh_until_ms, now + 60'000);
  EXPECT_EQ(env.payload, "v");
  const auto m = cache.metrics();
  EXPECT_EQ(m.layers[1].writes, 1u);
  EXPECT_EQ(m.layers[2].writes, 1u);
}

TEST(BackfillTest, StackChecksEnvelopeExpiryEvenWhenTheLayerKeepsTheBytes) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l2 = test::test_byte_layer::create({.clock = clock, .honour_expiry = false});
  {
    cache_stack writer({l2}, {.clock = clock});
    ASSERT_TRUE(writer.set<std::string>("k", "old", {.ttl = 1s}).ok());
  }
  clock->advance(1s);
  cache_stack cache({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  EXPECT_FALSE(cache.has("k"));
  EXPECT_EQ(cache.get_if_present<std::string>("k"), nullptr);
  EXPECT_EQ(*cache.get<std::string>("k", [] { return std::string("new"); }), "new");
  const auto m = cache.metrics();
  EXPECT_EQ(m.layers[1].expirations, 2u);
  EXPECT_EQ(m.layers[1].hits, 0u);
  EXPECT_EQ(m.layers[1].misses, 2u);
  EXPECT_EQ(m.fetches, 1u);
}

// Corrupts the entry of "k" one way, then reads it through a fresh stack.
void expect_corruption_is_a_miss(
    const std::function<void(test::test_byte_layer&, test::faulty_byte_layer&)>& corrupt) {
  auto clock = std::make_shared<test::fake_clock>();
  auto inner = test::test_byte_layer::create({.clock = clock});
  auto l2 = std::make_shared<test::faulty_byte_layer>(inner);
  {
    cache_stack writer({l2}, {.clock = clock});
    ASSERT_TRUE(writer.set<std::string>("k", "good").ok());
  }
  corrupt(*inner, *l2);
  event_log events;
  cache_stack cache({memory_layer::create({.clock = clock}), l2},
                    {.clock = clock, .on_event = events.callback()});
  counting_fetch fetch;
  std::shared_ptr<const std::string> v;
  ASSERT_NO_THROW(v = cache.get<std::string>("k", std::ref(fetch)));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, "fetched");
  EXPECT_EQ(fetch.calls.load(), 1);
  auto corruption = events.of(event_type::corruption);
  ASSERT_EQ(corruption.size(), 1u);
  EXPECT_EQ(corruption[0].layer, "bytes");
  EXPECT_EQ(corruption[0].key, "k");
  EXPECT_EQ(corruption[0].code, errc::corruption);
  EXPECT_EQ(l2->calls().del.load(), 1u) << "corrupt bytes were not deleted from the layer";
  const auto m = cache.metrics();
  EXPECT_EQ(m.layers[1].errors, 1u);
  EXPECT_EQ(m.layers[1].misses, 1u);
  EXPECT_EQ(m.layers[1].hits, 0u);
  // The fetched value replaced the corrupt bytes.
  ASSERT_TRUE(cache.flush());
  cache_stack reader({l2}, {.clock = clock});
  EXPECT_EQ(*reader.get_if_present<std::string>("k"), "fetched");
}

TEST(CorruptionTest, FlippedChecksumByteIsAMissAnEventAndADelete) {
  expect_corruption_is_a_miss([](test::test_byte_layer&, test::faulty_byte_layer& l2) {
    ASSERT_TRUE(l2.corrupt_stored("k"));
  });
}

TEST(CorruptionTest, GarbageBytesAreAMissAnEventAndADelete) {
  expect_corruption_is_a_miss([](test::test_byte_layer& inner, test::faulty_byte_layer&) {
    inner.put("k", "definitely not an envelope");
  });
}

TEST(CorruptionTest, EmptyBytesAreAMissAnEventAndADelete) {
  expect_corruption_is_a_miss(
      [](test::test_byte_layer& inner, test::faulty_byte_layer&) { inner.put("k", ""); });
}

// A valid envelope (its checksum holds) whose payload the type's codec cannot decode was written
// by another build with another layout: a schema miss, not corruption (codec.hpp "type_name";
// tests/unit/type_identity_test.cpp has the rest).
TEST(CorruptionTest, PayloadTheCodecCannotDecodeIsASchemaMissNotADelete) {
  // A well-formed envelope for int (msgpack) whose payload is not msgpack.
  auto clock = std::make_shared<test::fake_clock>();
  auto inner = test::test_byte_layer::create({.clock = clock});
  detail::envelope_header h;
  h.fresh_until_ms = h.stale_until_ms = h.error_until_ms = clock->now_ms() + 60'000;
  h.created_ms = clock->now_ms();
  h.type_fingerprint = detail::ops_of<int>().fingerprint;
  h.codec = detail::codec_id::msgpack;
  inner->put("k", detail::encode_envelope(h, {}, "\xc1\xc1\xc1"));
  event_log events;
  cache_stack cache({memory_layer::create({.clock = clock}), inner},
                    {.clock = clock, .on_event = events.callback()});
  std::shared_ptr<const int> v;
  ASSERT_NO_THROW(v = cache.get<int>("k", [] { return 7; }));
  EXPECT_EQ(*v, 7);
  ASSERT_TRUE(cache.flush());
  EXPECT_TRUE(events.of(event_type::corruption).empty());
  EXPECT_EQ(events.of(event_type::schema_mismatch).size(), 1u);
  EXPECT_EQ(cache.metrics().schema_misses, 1u);
  EXPECT_EQ(cache.metrics().layers[1].errors, 0u);
  EXPECT_EQ(inner->calls().del.load(), 0u);
  // The fetched value replaced it.
  cache_stack reader({inner}, {.clock = clock});
  EXPECT_EQ(*reader.get_if_present<int>("k"), 7);
}

TEST(LayerFailureTest, FailingByteLayerReadFallsThroughToTheFetcher) {
  auto clock = std::make_shared<test::fake_clock>();
  auto inner = test::test_byte_layer::create({.clock = clock});
  auto l2 = std::make_shared<test::faulty_byte_layer>(inner);
  event_log events;
  cache_stack cache({memory_layer::create({.clock = clock}), l2},
                    {.clock = clock, .on_event = events.callback()});
  l2->fail_always(test::fault::all);
  counting_fetch fetch;
  std::shared_ptr<const std::string> v;
  ASSERT_NO_THROW(v = cache.get<std::string>("k", std::ref(fetch)));
  EXPECT_EQ(*v, "fetched");
  EXPECT_EQ(fetch.calls.load(), 1);
  ASSERT_TRUE(cache.flush());  // the write of the fetched value runs in the background
  auto errors = events.of(event_type::layer_error);
  ASSERT_EQ(errors.size(), 2u) << "one failed read, one failed write";
  EXPECT_EQ(errors[0].layer, "bytes");
  EXPECT_EQ(errors[0].key, "k");
  EXPECT_EQ(errors[0].code, errc::unavailable);
  const auto m = cache.metrics();
  EXPECT_EQ(m.layers[1].errors, 2u);
  EXPECT_EQ(m.layers[1].misses, 1u);
  EXPECT_EQ(m.fetches, 1u);
  // L1 still caches it.
  EXPECT_EQ(cache.get<std::string>("k", std::ref(fetch)).get(), v.get());
  EXPECT_EQ(fetch.calls.load(), 1);
}

TEST(LayerFailureTest, FailingByteLayerIsSkippedForTheNextLayer) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l2 = std::make_shared<test::faulty_byte_layer>(
      test::test_byte_layer::create({.name = "l2", .clock = clock}));
  auto l3 = test::test_byte_layer::create({.name = "l3", .clock = clock});
  {
    cache_stack writer({l3}, {.clock = clock});
    ASSERT_TRUE(writer.set<std::string>("k", "from-l3").ok());
  }
  cache_stack cache({memory_layer::create({.clock = clock}), l2, l3}, {.clock = clock});
  l2->fail_next(1, test::fault::get);
  counting_fetch fetch;
  EXPECT_EQ(*cache.get<std::string>("k", std::ref(fetch)), "from-l3");
  EXPECT_EQ(fetch.calls.load(), 0);
  const auto m = cache.metrics();
  EXPECT_EQ(m.layers[1].errors, 1u);
  EXPECT_EQ(m.layers[2].hits, 1u);
}

TEST(LayerFailureTest, StrictMutationsReturnAStatusNamingTheFailingLayer) {
  auto clock = std::make_shared<test::fake_clock>();
  auto good = test::test_byte_layer::create({.name = "good", .clock = clock});
  auto bad = std::make_shared<test::faulty_byte_layer>(
      test::test_byte_layer::create({.name = "bad", .clock = clock}));
  event_log events;
  auto l1 = memory_layer::create({.clock = clock});
  cache_stack cache(
      {l1, good, bad},
      {.clock = clock, .on_event = events.callback(), .writes = write_policy::strict});
  bad->fail_always(test::fault::writes, errc::resource_exhausted);

  const auto expect_names_bad = [](const status& s, const char* what) {
    EXPECT_FALSE(s.ok()) << what;
    EXPECT_EQ(s.code(), errc::resource_exhausted) << what;
    ASSERT_EQ(s.failures().size(), 1u) << what << ": " << s.message();
    EXPECT_EQ(s.failures()[0].layer, "bad") << what;
    EXPECT_EQ(s.failures()[0].code, errc::resource_exhausted) << what;
    EXPECT_NE(s.message().find("bad"), std::string::npos) << what << ": " << s.message();
  };
  expect_names_bad(cache.set<std::string>("k", "v"), "set");
  EXPECT_EQ(*cache.get_if_present<std::string>("k"), "v") << "L1 was not written";
  EXPECT_TRUE(good->stored("k").has_value()) << "the healthy layer was not written";
  const std::vector<std::pair<std::string, std::string>> entries{{"a", "1"}, {"b", "2"}};
  expect_names_bad(cache.set_many<std::string>(entries), "set_many");
  expect_names_bad(cache.del("k"), "del");
  EXPECT_FALSE(good->stored("k").has_value());
  expect_names_bad(cache.del_many(strings{"a", "b"}), "del_many");
  expect_names_bad(cache.clear(), "clear");

  auto errors = events.of(event_type::layer_error);
  ASSERT_GE(errors.size(), 2u);
  EXPECT_EQ(errors[0].layer, "bad");
  EXPECT_EQ(errors[0].key, "k");
  EXPECT_GE(cache.metrics().layers[2].errors, 2u);
  EXPECT_EQ(cache.metrics().layers[1].errors, 0u);

  bad->heal();
  EXPECT_TRUE(cache.set<std::string>("k", "v").ok());
}

TEST(LayerFailureTest, PerCallStrictPolicyOverridesBestEffort) {
  auto clock = std::make_shared<test::fake_clock>();
  auto bad = std::make_shared<test::faulty_byte_layer>(
      test::test_byte_layer::create({.name = "bad", .clock = clock}));
  cache_stack cache({memory_layer::create({.clock = clock}), bad}, {.clock = clock});
  bad->fail_always(test::fault::set);
  const status s = cache.set<int>("k", 1, {.policy = write_policy::strict});
  EXPECT_FALSE(s.ok());
  ASSERT_EQ(s.failures().size(), 1u) << s.message();
  EXPECT_EQ(s.failures()[0].layer, "bad");
}

TEST(LayerFailureTest, BestEffortMutationsReportLayerFailuresThroughEventsAndMetrics) {
  auto clock = std::make_shared<test::fake_clock>();
  auto bad = std::make_shared<test::faulty_byte_layer>(
      test::test_byte_layer::create({.name = "bad", .clock = clock}));
  event_log events;
  cache_stack cache({memory_layer::create({.clock = clock}), bad},
                    {.clock = clock, .on_event = events.callback()});
  ASSERT_EQ(cache.options().writes, write_policy::best_effort);
  bad->fail_always(test::fault::writes);
  EXPECT_TRUE(cache.set<std::string>("k", "v").ok()) << "best effort does not wait for layers";
  EXPECT_EQ(*cache.get_if_present<std::string>("k"), "v");
  ASSERT_TRUE(cache.flush());
  auto errors = events.of(event_type::layer_error);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].layer, "bad");
  EXPECT_EQ(errors[0].key, "k");
  EXPECT_EQ(errors[0].code, errc::unavailable);
  EXPECT_NE(errors[0].thread, std::this_thread::get_id())
      << "a background write failure is reported on the library's writer thread";
  EXPECT_EQ(cache.metrics().layers[1].errors, 1u);
  EXPECT_EQ(cache.metrics().pending_writes, 0u);
}

}  // namespace
}  // namespace layercache
