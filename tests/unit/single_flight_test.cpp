// single_flight_test.cpp — one fetch per key across threads: deduplication, shared errors,
// invalidation during a fetch, waiter deadlines and re-entrant fetchers.
//
// Every wait in these tests is bounded: fetchers block on a gate with a timeout, and the tests poll
// the stack's metrics (dedupes) with a deadline to know that waiters are attached before going on.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "support/await.hpp"
#include "support/fake_clock.hpp"
#include "test_byte_layer.hpp"

namespace layercache {
namespace {

using namespace std::chrono_literals;
using sclock = std::chrono::steady_clock;

constexpr auto bound = 10s;  // upper bound of every wait; a test that hits it has failed

using layercache::test::eventually;

using layercache::test::gate;

struct recorded_event {
  event_type type;
  std::string layer;
  std::string key;
  std::thread::id thread;
};

struct event_log {
  std::mutex mu;
  std::vector<recorded_event> events;

  event_callback callback() {
    return [this](const event& e) {
      std::lock_guard lock(mu);
      events.push_back(
          {e.type, std::string(e.layer), std::string(e.key), std::this_thread::get_id()});
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

// A fetcher that announces it started, then blocks until released.
struct blocking_fetch {
  gate entered;
  gate release;
  std::atomic<int> calls{0};

  std::string operator()(const std::string& value) {
    ++calls;
    entered.open();
    EXPECT_TRUE(release.wait()) << "the fetcher was never released";
    return value;
  }
};

TEST(SingleFlightTest, ConcurrentMissesCallFetcherOnce) {
  constexpr int callers = 75;
  cache_stack cache({memory_layer::create({})});
  blocking_fetch fetch;
  std::vector<std::shared_ptr<const std::string>> results(callers);
  std::vector<std::thread> threads;
  for (int i = 0; i < callers; ++i) {
    threads.emplace_back([&, i] {
      results[static_cast<std::size_t>(i)] =
          cache.get<std::string>("hot", [&] { return fetch("fetched"); });
    });
  }
  ASSERT_TRUE(fetch.entered.wait());
  const bool attached = eventually([&] { return cache.metrics().dedupes == callers - 1; });
  fetch.release.open();
  for (auto& t : threads) t.join();
  ASSERT_TRUE(attached) << "only " << cache.metrics().dedupes << " waiters attached";

  EXPECT_EQ(fetch.calls.load(), 1);
  ASSERT_NE(results[0], nullptr);
  EXPECT_EQ(*results[0], "fetched");
  for (const auto& r : results) EXPECT_EQ(r.get(), results[0].get());
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.dedupes, static_cast<std::uint64_t>(callers - 1));
  EXPECT_EQ(m.fetch_errors, 0u);
  EXPECT_EQ(m.layers[0].misses, static_cast<std::uint64_t>(callers));
  EXPECT_EQ(m.layers[0].hits, 0u);
  EXPECT_EQ(m.layers[0].writes, 1u);
  // Afterwards it is an ordinary hit on the same object.
  EXPECT_EQ(cache.get<std::string>("hot", [] { return std::string("again"); }).get(),
            results[0].get());
}

TEST(SingleFlightTest, DifferentKeysAreFetchedConcurrently) {
  cache_stack cache({memory_layer::create({})});
  gate b_fetched;
  std::atomic<bool> a_saw_b{false};
  std::thread a([&] {
    (void)cache.get<std::string>("a", [&] {
      a_saw_b = b_fetched.wait();  // only returns true if "b" can be fetched meanwhile
      return std::string("A");
    });
  });
  // Wait until "a" is in flight, then fetch "b" on this thread.
  ASSERT_TRUE(eventually([&] { return cache.metrics().fetches == 1; }));
  auto b = cache.get<std::string>("b", [&] {
    b_fetched.open();
    return std::string("B");
  });
  a.join();
  EXPECT_TRUE(a_saw_b.load()) << "fetching one key blocked the fetch of another";
  EXPECT_EQ(*b, "B");
  EXPECT_EQ(cache.metrics().fetches, 2u);
  EXPECT_EQ(cache.metrics().dedupes, 0u);
}

// An exception type that counts its constructions (copies included).
struct fetch_failure : std::runtime_error {
  static inline std::atomic<int> constructed{0};
  explicit fetch_failure(const std::string& what) : std::runtime_error(what) { ++constructed; }
  fetch_failure(const fetch_failure& other) : std::runtime_error(other) { ++constructed; }
};

TEST(SingleFlightTest, FetcherExceptionReachesEveryWaiterAsTheSameObject) {
  constexpr int callers = 10;
  fetch_failure::constructed = 0;
  event_log events;
  cache_stack cache({memory_layer::create({})}, {.on_event = events.callback()});
  gate entered, release;
  std::atomic<int> calls{0};
  // Each caller keeps what it caught as an exception_ptr; the objects are inspected on this thread
  // after the joins. (Reading one shared exception object from several threads while the last of
  // them frees it is synchronised inside libstdc++, which ThreadSanitizer cannot see.)
  std::vector<std::exception_ptr> caught(callers);
  std::vector<std::thread> threads;
  for (int i = 0; i < callers; ++i) {
    threads.emplace_back([&, i] {
      try {
        (void)cache.get<std::string>("k", [&]() -> std::string {
          ++calls;
          entered.open();
          EXPECT_TRUE(release.wait());
          throw fetch_failure("database down");
        });
      } catch (...) {
        caught[static_cast<std::size_t>(i)] = std::current_exception();
      }
    });
  }
  ASSERT_TRUE(entered.wait());
  const bool attached = eventually([&] { return cache.metrics().dedupes == callers - 1; });
  release.open();
  for (auto& t : threads) t.join();
  ASSERT_TRUE(attached);
  std::vector<const void*> objects(callers, nullptr);
  std::vector<std::string> messages(callers);
  for (int i = 0; i < callers; ++i) {
    ASSERT_TRUE(caught[static_cast<std::size_t>(i)]) << "caller " << i << " got no error";
    try {
      std::rethrow_exception(caught[static_cast<std::size_t>(i)]);
    } catch (const fetch_failure& e) {
      objects[static_cast<std::size_t>(i)] = &e;
      messages[static_cast<std::size_t>(i)] = e.what();
    } catch (...) {
      ADD_FAILURE() << "caller " << i << " got another exception type";
    }
  }

  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(fetch_failure::constructed.load(), 1) << "the exception was copied for some waiter";
  for (int i = 0; i < callers; ++i) {
    EXPECT_NE(objects[static_cast<std::size_t>(i)], nullptr) << "caller " << i;
    EXPECT_EQ(objects[static_cast<std::size_t>(i)], objects[0]) << "caller " << i;
    EXPECT_EQ(messages[static_cast<std::size_t>(i)], "database down");
  }
  auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.fetch_errors, 1u);
  EXPECT_EQ(m.dedupes, static_cast<std::uint64_t>(callers - 1));
  EXPECT_EQ(m.layers[0].writes, 0u);
  ASSERT_EQ(events.of(event_type::fetch_error).size(), 1u);
  EXPECT_EQ(events.of(event_type::fetch_error)[0].key, "k");

  // Nothing was cached: the next get fetches again.
  EXPECT_FALSE(cache.has("k"));
  EXPECT_EQ(*cache.get<std::string>("k", [] { return std::string("recovered"); }), "recovered");
  m = cache.metrics();
  EXPECT_EQ(m.fetches, 2u);
  EXPECT_EQ(m.fetch_errors, 1u);
}

// The three invalidations that may race a fetch.
enum class invalidation { del, set, clear };

std::string name_of(invalidation how) {
  switch (how) {
    case invalidation::del:
      return "del";
    case invalidation::set:
      return "set";
    case invalidation::clear:
      return "clear";
  }
  return "?";
}

class InvalidationDuringFetchTest : public ::testing::TestWithParam<invalidation> {};

TEST_P(InvalidationDuringFetchTest, WaitersGetTheFetchedValueButNoLayerStoresIt) {
  const invalidation how = GetParam();
  auto clock = std::make_shared<test::fake_clock>();
  auto l1 = memory_layer::create({.clock = clock});
  auto l2 = test::test_byte_layer::create({.clock = clock});
  event_log events;
  cache_stack cache({l1, l2}, {.clock = clock, .on_event = events.callback()});

  blocking_fetch fetch;
  std::atomic<int> follower_fetches{0};
  std::shared_ptr<const std::string> leader_result, follower_result;
  std::thread leader(
      [&] { leader_result = cache.get<std::string>("k", [&] { return fetch("old"); }); });
  ASSERT_TRUE(fetch.entered.wait());
  std::thread follower([&] {
    follower_result = cache.get<std::string>("k", [&] {
      ++follower_fetches;
      return std::string("follower");
    });
  });
  const bool attached = eventually([&] { return cache.metrics().dedupes == 1; });

  status s;
  switch (how) {
    case invalidation::del:
      s = cache.del("k");
      break;
    case invalidation::set:
      s = cache.set<std::string>("k", "new");
      break;
    case invalidation::clear:
      s = cache.clear();
      break;
  }
  fetch.release.open();
  leader.join();
  follower.join();
  ASSERT_TRUE(attached);
  EXPECT_TRUE(s.ok()) << s.message();

  // Callers that asked before the invalidation completed get the fetched value.
  ASSERT_NE(leader_result, nullptr);
  EXPECT_EQ(*leader_result, "old");
  EXPECT_EQ(follower_result.get(), leader_result.get());
  EXPECT_EQ(follower_fetches.load(), 0);

  auto m = cache.metrics();
  EXPECT_EQ(m.stale_fills, 1u);
  EXPECT_EQ(m.fetches, 1u);
  auto stale = events.of(event_type::stale_fill);
  ASSERT_EQ(stale.size(), 1u);
  EXPECT_EQ(stale[0].key, "k");

  // No layer holds the fetched value (once the background byte-layer writes have landed).
  ASSERT_TRUE(cache.flush());
  const auto in_l2 = [&]() -> std::shared_ptr<const std::string> {
    cache_stack l2_only({l2}, {.clock = clock});
    return l2_only.get_if_present<std::string>("k");
  };
  if (how == invalidation::set) {
    // The value written by set() survives in every layer; the fetch does not overwrite it.
    EXPECT_EQ(*cache.get<std::string>("k", [] { return std::string("refetched"); }), "new");
    auto from_l2 = in_l2();
    ASSERT_NE(from_l2, nullptr) << "the stale fill removed what set() wrote to the byte layer";
    EXPECT_EQ(*from_l2, "new");
    EXPECT_EQ(cache.metrics().fetches, 1u);
  } else {
    EXPECT_FALSE(cache.has("k"));
    EXPECT_EQ(l1->size(), 0u);
    EXPECT_FALSE(l2->stored("k").has_value());
    EXPECT_EQ(in_l2(), nullptr);
    // A get after the fetch completed calls the fetcher again.
    EXPECT_EQ(*cache.get<std::string>("k", [] { return std::string("refetched"); }), "refetched");
    EXPECT_EQ(cache.metrics().fetches, 2u);
  }
}

INSTANTIATE_TEST_SUITE_P(SingleFlight, InvalidationDuringFetchTest,
                         ::testing::Values(invalidation::del, invalidation::set,
                                           invalidation::clear),
                         [](const ::testing::TestParamInfo<invalidation>& param) {
                           return name_of(param.param);
                         });

TEST(SingleFlightTest, InvalidationOfAnotherKeyDoesNotMarkTheFetchStale) {
  cache_stack cache({memory_layer::create({})});
  blocking_fetch fetch;
  std::thread leader([&] { (void)cache.get<std::string>("k", [&] { return fetch("v"); }); });
  ASSERT_TRUE(fetch.entered.wait());
  EXPECT_TRUE(cache.del("other").ok());
  fetch.release.open();
  leader.join();
  EXPECT_EQ(cache.metrics().stale_fills, 0u);
  EXPECT_TRUE(cache.has("k"));
}

TEST(SingleFlightTest, WaiterGivesUpAtItsDeadlineAndTheFetchStillCompletes) {
  event_log events;
  cache_stack cache({memory_layer::create({})}, {.on_event = events.callback()});
  blocking_fetch fetch;
  std::shared_ptr<const std::string> leader_result;
  std::thread leader(
      [&] { leader_result = cache.get<std::string>("slow", [&] { return fetch("done"); }); });
  ASSERT_TRUE(fetch.entered.wait());

  const auto start = sclock::now();
  EXPECT_THROW((void)cache.get<std::string>("slow", [] { return std::string("never"); },
                                            {.wait_deadline = 50ms}),
               wait_timeout_error);
  const auto waited = sclock::now() - start;
  EXPECT_GE(waited, 50ms);
  EXPECT_LT(waited, 5s);
  auto m = cache.metrics();
  EXPECT_EQ(m.wait_timeouts, 1u);
  EXPECT_EQ(m.dedupes, 1u);
  auto timeouts = events.of(event_type::wait_timeout);
  ASSERT_EQ(timeouts.size(), 1u);
  EXPECT_EQ(timeouts[0].key, "slow");
  EXPECT_EQ(timeouts[0].thread, std::this_thread::get_id());

  fetch.release.open();
  leader.join();
  ASSERT_NE(leader_result, nullptr);
  EXPECT_EQ(*leader_result, "done");
  EXPECT_EQ(cache.get<std::string>("slow", [] { return std::string("never"); }).get(),
            leader_result.get());
  m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.wait_timeouts, 1u);
  EXPECT_EQ(m.layers[0].hits, 1u);
}

TEST(SingleFlightTest, StackWaitDeadlineAppliesWhenTheCallGivesNone) {
  cache_stack cache({memory_layer::create({})}, {.wait_deadline = 30ms});
  blocking_fetch fetch;
  std::thread leader([&] { (void)cache.get<std::string>("k", [&] { return fetch("v"); }); });
  ASSERT_TRUE(fetch.entered.wait());
  EXPECT_THROW((void)cache.get<std::string>("k", [] { return std::string("x"); }),
               wait_timeout_error);
  fetch.release.open();
  leader.join();
  EXPECT_EQ(cache.metrics().wait_timeouts, 1u);
}

TEST(SingleFlightTest, PerCallZeroWaitDeadlineWaitsAsLongAsTheFetchTakes) {
  cache_stack cache({memory_layer::create({})}, {.wait_deadline = 20ms});
  blocking_fetch fetch;
  std::thread leader([&] { (void)cache.get<std::string>("k", [&] { return fetch("v"); }); });
  ASSERT_TRUE(fetch.entered.wait());
  std::shared_ptr<const std::string> waited;
  std::thread follower([&] {
    waited = cache.get<std::string>("k", [] { return std::string("x"); }, {.wait_deadline = 0ms});
  });
  ASSERT_TRUE(eventually([&] { return cache.metrics().dedupes == 1; }));
  // Time passing is the condition here: hold the fetch well past the stack's 20 ms deadline.
  std::this_thread::sleep_for(80ms);
  fetch.release.open();
  leader.join();
  follower.join();
  ASSERT_NE(waited, nullptr);
  EXPECT_EQ(*waited, "v");
  EXPECT_EQ(cache.metrics().wait_timeouts, 0u);
}

TEST(SingleFlightTest, FetcherReenteringGetForTheSameKeyThrowsInvalidArgument) {
  // A stack deadline turns a regression (self-deadlock) into a failure instead of a hang.
  cache_stack cache({memory_layer::create({})}, {.wait_deadline = 2s});
  std::atomic<int> outer_calls{0};
  EXPECT_THROW((void)cache.get<std::string>("k",
                                            [&] {
                                              ++outer_calls;
                                              return *cache.get<std::string>(
                                                  "k", [] { return std::string("inner"); });
                                            }),
               invalid_argument_error);
  EXPECT_EQ(outer_calls.load(), 1);
  auto m = cache.metrics();
  EXPECT_EQ(m.fetch_errors, 1u);
  EXPECT_EQ(m.wait_timeouts, 0u);
  // The failed flight was cleaned up: the key can be fetched normally afterwards.
  EXPECT_FALSE(cache.has("k"));
  EXPECT_EQ(*cache.get<std::string>("k", [] { return std::string("ok"); }), "ok");
}

TEST(SingleFlightTest, FetcherMayReadOtherKeysThroughTheSameCache) {
  cache_stack cache({memory_layer::create({})}, {.wait_deadline = 2s});
  auto v = cache.get<std::string>("outer", [&] {
    return "outer+" + *cache.get<std::string>("inner", [] { return std::string("inner"); });
  });
  EXPECT_EQ(*v, "outer+inner");
  EXPECT_EQ(cache.metrics().fetches, 2u);
  EXPECT_TRUE(cache.has("inner"));
}

TEST(SingleFlightTest, GetIfPresentInsideAFetcherForTheSameKeyReturnsNull) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l2 = test::test_byte_layer::create({.clock = clock});
  // The deadline turns a self-deadlock into a wait_timeout_error (a failure) instead of a hang.
  cache_stack cache({memory_layer::create({.clock = clock}), l2},
                    {.wait_deadline = 2s, .clock = clock});
  std::shared_ptr<const std::string> seen = std::make_shared<const std::string>("sentinel");
  auto v = cache.get<std::string>("k", [&] {
    seen = cache.get_if_present<std::string>("k");
    return std::string("fetched");
  });
  EXPECT_EQ(*v, "fetched");
  EXPECT_EQ(seen, nullptr) << "nothing is present while the key is being fetched";
  EXPECT_EQ(cache.metrics().wait_timeouts, 0u);
}

TEST(SingleFlightTest, ConcurrentL1MissesOfAByteLayerEntryReadTheByteLayerOnce) {
  constexpr int callers = 8;
  auto clock = std::make_shared<test::fake_clock>();
  auto inner = test::test_byte_layer::create({.clock = clock});
  auto l2 = std::make_shared<test::faulty_byte_layer>(inner);
  {
    cache_stack writer({l2}, {.clock = clock});
    ASSERT_TRUE(writer.set<std::string>("k", "from-l2").ok());
  }
  gate read_started, release_read;
  l2->set_hook([&](unsigned kind, std::string_view) {
    if (kind == test::fault::get) {
      read_started.open();
      EXPECT_TRUE(release_read.wait());
    }
  });
  cache_stack cache({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  std::atomic<int> fetches{0};
  std::vector<std::shared_ptr<const std::string>> results(callers);
  std::vector<std::thread> threads;
  for (int i = 0; i < callers; ++i) {
    threads.emplace_back([&, i] {
      results[static_cast<std::size_t>(i)] = cache.get<std::string>("k", [&] {
        ++fetches;
        return std::string("fetched");
      });
    });
  }
  ASSERT_TRUE(read_started.wait());
  const bool attached = eventually([&] { return cache.metrics().dedupes == callers - 1; });
  release_read.open();
  for (auto& t : threads) t.join();
  ASSERT_TRUE(attached);
  EXPECT_EQ(l2->calls().get.load(), 1u);
  EXPECT_EQ(fetches.load(), 0);
  for (const auto& r : results) {
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r.get(), results[0].get());
  }
  EXPECT_EQ(*results[0], "from-l2");
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 0u);
  EXPECT_EQ(m.layers[1].hits, 1u);
  EXPECT_EQ(m.layers[0].misses, static_cast<std::uint64_t>(callers));
}

TEST(SingleFlightTest, WaitersOfANegativeFetchGetNull) {
  cache_stack cache({memory_layer::create({})});
  gate entered, release;
  std::shared_ptr<const std::string> follower_result =
      std::make_shared<const std::string>("sentinel");
  std::thread leader([&] {
    auto r = cache.get<std::string>("missing", [&] {
      entered.open();
      EXPECT_TRUE(release.wait());
      return std::optional<std::string>{};
    });
    EXPECT_EQ(r, nullptr);
  });
  ASSERT_TRUE(entered.wait());
  std::thread follower([&] {
    follower_result = cache.get<std::string>("missing", [] { return std::string("x"); });
  });
  ASSERT_TRUE(eventually([&] { return cache.metrics().dedupes == 1; }));
  release.open();
  leader.join();
  follower.join();
  EXPECT_EQ(follower_result, nullptr);
  EXPECT_EQ(cache.metrics().fetches, 1u);
}

}  // namespace
}  // namespace layercache
