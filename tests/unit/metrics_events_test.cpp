// metrics_events_test.cpp — the counters and latency summaries of metrics(), and the event callback
// (right type, layer, key and thread; exceptions swallowed; re-entry allowed).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/events.hpp"
#include "layercache/metrics.hpp"
#include "support/fake_clock.hpp"
#include "test_byte_layer.hpp"

namespace layercache {
namespace {

using namespace std::chrono_literals;

struct recorded_event {
  event_type type;
  std::string layer;
  std::string key;
  errc code;
  std::string message;
  std::thread::id thread;
};

struct event_log {
  std::mutex mu;
  std::vector<recorded_event> events;

  event_callback callback() {
    return [this](const event& e) {
      std::lock_guard lock(mu);
      events.push_back({e.type, std::string(e.layer), std::string(e.key), e.detail.code(),
                        e.detail.message(), std::this_thread::get_id()});
    };
  }
  std::vector<recorded_event> all() {
    std::lock_guard lock(mu);
    return events;
  }
};

struct stack_with_l2 {
  std::shared_ptr<test::fake_clock> clock = std::make_shared<test::fake_clock>();
  std::shared_ptr<memory_layer> l1 = memory_layer::create({.clock = clock, .name = "l1"});
  std::shared_ptr<test::faulty_byte_layer> l2 = std::make_shared<test::faulty_byte_layer>(
      test::test_byte_layer::create({.name = "l2", .clock = clock}));
};

TEST(MetricsTest, CountsEveryOutcomePerLayerAndForTheStack) {
  stack_with_l2 s;
  cache_stack cache({s.l1, s.l2}, {.clock = s.clock});
  auto fetch = [] { return std::string("v"); };

  (void)cache.get<std::string>("a", fetch);  // L1 miss, L2 miss, fetch, written to both
  (void)cache.get<std::string>("a", fetch);  // L1 hit
  ASSERT_TRUE(s.l1->del("a").ok());          // drop from L1 only
  (void)cache.get<std::string>("a", fetch);  // L1 miss, L2 hit, backfill
  (void)cache.get<std::string>("n", [] { return std::optional<std::string>{}; });  // fetch
  (void)cache.get<std::string>("n", fetch);  // L1 negative hit
  EXPECT_THROW(
      (void)cache.get<std::string>("e", []() -> std::string { throw std::runtime_error("boom"); }),
      std::runtime_error);  // L1 miss, L2 miss, fetch error
  s.l2->fail_next(1, test::fault::get);
  (void)cache.get<std::string>("f", fetch);  // L1 miss, L2 error (a miss), fetch
  ASSERT_TRUE(cache.flush());                // byte-layer writes run in the background

  const metrics_snapshot m = cache.metrics();
  ASSERT_EQ(m.layers.size(), 2u);
  EXPECT_EQ(m.layers[0].name, "l1");
  EXPECT_EQ(m.layers[1].name, "l2");
  EXPECT_EQ(m.layers[0].hits, 2u);
  EXPECT_EQ(m.layers[0].misses, 5u);
  EXPECT_EQ(m.layers[0].writes, 4u);  // a (fetch), a (backfill), n, f
  EXPECT_EQ(m.layers[0].entries, 3u);
  EXPECT_GT(m.layers[0].bytes, 0u);
  EXPECT_EQ(m.layers[1].hits, 1u);
  EXPECT_EQ(m.layers[1].misses, 4u);  // a, n, e, f (failed)
  EXPECT_EQ(m.layers[1].errors, 1u);
  EXPECT_EQ(m.layers[1].writes, 3u);  // a, n, f
  EXPECT_EQ(m.fetches, 4u);           // a, n, e, f
  EXPECT_EQ(m.fetch_errors, 1u);
  EXPECT_EQ(m.negative_hits, 1u);
  EXPECT_EQ(m.dedupes, 0u);
  EXPECT_EQ(m.wait_timeouts, 0u);
  EXPECT_EQ(m.stale_fills, 0u);
  EXPECT_EQ(m.pending_writes, 0u);
}

TEST(MetricsTest, EvictionsAndExpirationsAreCounted) {
  auto clock = std::make_shared<test::fake_clock>();
  auto l1 = memory_layer::create({.max_entries = 2, .shards = 1, .clock = clock});
  cache_stack cache({l1}, {.clock = clock});
  ASSERT_TRUE(cache.set<int>("a", 1, {.ttl = 1s}).ok());
  ASSERT_TRUE(cache.set<int>("b", 2, {.ttl = 1s}).ok());
  ASSERT_TRUE(cache.set<int>("c", 3, {.ttl = 1s}).ok());
  auto m = cache.metrics();
  EXPECT_EQ(m.layers[0].evictions, 1u);
  EXPECT_EQ(m.layers[0].expirations, 0u);
  EXPECT_EQ(m.layers[0].entries, 2u);
  clock->advance(1s);
  EXPECT_EQ(cache.get_if_present<int>("b"), nullptr);
  EXPECT_EQ(cache.get_if_present<int>("c"), nullptr);
  m = cache.metrics();
  EXPECT_EQ(m.layers[0].evictions, 1u);
  EXPECT_EQ(m.layers[0].expirations, 2u);
  EXPECT_EQ(m.layers[0].entries, 0u);
  EXPECT_EQ(m.layers[0].bytes, 0u);
}

TEST(MetricsTest, LatencySummariesAreFilledByTraffic) {
  stack_with_l2 s;
  cache_stack cache({s.l1, s.l2}, {.clock = s.clock});
  auto before = cache.metrics();
  EXPECT_EQ(before.fetch_latency.count, 0u);
  EXPECT_EQ(before.layers[0].read_latency.count, 0u);
  EXPECT_EQ(before.layers[1].read_latency.count, 0u);

  for (int i = 0; i < 20; ++i) {
    (void)cache.get<std::string>("k" + std::to_string(i), [] {
      // Some work, so the fetch latency is visibly above zero.
      std::string v;
      for (int j = 0; j < 1000; ++j) v += static_cast<char>('a' + j % 26);
      return v;
    });
  }
  for (int i = 0; i < 64 * 20; ++i) (void)cache.get_if_present<std::string>("k1");

  const auto m = cache.metrics();
  EXPECT_EQ(m.fetch_latency.count, 20u);
  EXPECT_GT(m.fetch_latency.p50_ns, 0u);
  EXPECT_GE(m.fetch_latency.p99_ns, m.fetch_latency.p50_ns);
  EXPECT_GE(m.fetch_latency.max_ns, m.fetch_latency.p99_ns);
  // One L1 lookup in 64 per thread is timed.
  EXPECT_GE(m.layers[0].read_latency.count, 20u);
  EXPECT_LE(m.layers[0].read_latency.count, (20u + 64u * 20u) / 64u + 1u);
  EXPECT_GT(m.layers[0].read_latency.p50_ns, 0u);
  EXPECT_GE(m.layers[0].read_latency.max_ns, m.layers[0].read_latency.p50_ns);
  // Every byte-layer read is timed.
  EXPECT_EQ(m.layers[1].read_latency.count, 20u);
  EXPECT_GT(m.layers[1].read_latency.p99_ns, 0u);
}

TEST(EventsTest, EventTypesHaveReadableNames) {
  EXPECT_EQ(to_string(event_type::fetch_error), "fetch_error");
  EXPECT_EQ(to_string(event_type::layer_error), "layer_error");
  EXPECT_EQ(to_string(event_type::corruption), "corruption");
  EXPECT_EQ(to_string(event_type::wait_timeout), "wait_timeout");
  EXPECT_EQ(to_string(event_type::stale_fill), "stale_fill");
}

TEST(EventsTest, CallbackRunsOnTheThreadThatRaisedTheEventWithItsTypeLayerAndKey) {
  stack_with_l2 s;
  event_log log;
  cache_stack cache({s.l1, s.l2}, {.clock = s.clock, .on_event = log.callback()});

  std::thread::id fetch_thread, read_thread;
  std::thread a([&] {
    fetch_thread = std::this_thread::get_id();
    EXPECT_THROW((void)cache.get<std::string>(
                     "fetch-key", []() -> std::string { throw std::runtime_error("db down"); }),
                 std::runtime_error);
  });
  a.join();
  std::thread b([&] {
    read_thread = std::this_thread::get_id();
    s.l2->fail_next(1, test::fault::get, errc::timeout);
    (void)cache.get<std::string>("read-key", [] { return std::string("v"); });
  });
  b.join();

  const auto events = log.all();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type, event_type::fetch_error);
  EXPECT_EQ(events[0].layer, "");
  EXPECT_EQ(events[0].key, "fetch-key");
  EXPECT_NE(events[0].message.find("db down"), std::string::npos) << events[0].message;
  EXPECT_EQ(events[0].thread, fetch_thread);

  EXPECT_EQ(events[1].type, event_type::layer_error);
  EXPECT_EQ(events[1].layer, "l2");
  EXPECT_EQ(events[1].key, "read-key");
  EXPECT_EQ(events[1].code, errc::timeout);
  EXPECT_EQ(events[1].thread, read_thread);
}

TEST(EventsTest, ExceptionThrownByTheCallbackIsSwallowed) {
  stack_with_l2 s;
  std::atomic<int> calls{0};
  cache_stack cache({s.l1, s.l2}, {.clock = s.clock, .on_event = [&](const event&) {
                                     ++calls;
                                     throw std::logic_error("callback bug");
                                   }});
  // The fetcher's own exception reaches the caller, not the callback's.
  EXPECT_THROW((void)cache.get<std::string>(
                   "k", []() -> std::string { throw std::out_of_range("fetcher"); }),
               std::out_of_range);
  // A read and a write failure are reported and the operations go on.
  s.l2->fail_always(test::fault::all);
  std::shared_ptr<const std::string> v;
  EXPECT_NO_THROW(v = cache.get<std::string>("k", [] { return std::string("v"); }));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, "v");
  // (Each flush keeps the writes in separate batches: a failed batch is one event.)
  ASSERT_TRUE(cache.flush());
  EXPECT_EQ(calls.load(), 3);  // fetch_error, layer_error (read), layer_error (write of "k")
  status st;
  EXPECT_NO_THROW(st = cache.set<std::string>("k2", "v2", {.policy = write_policy::strict}));
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(calls.load(), 4);
  // Background writes raise events on the writer thread; its exceptions are swallowed too.
  EXPECT_NO_THROW((void)cache.set<std::string>("k3", "v3"));
  ASSERT_TRUE(cache.flush());
  EXPECT_EQ(calls.load(), 5);
  EXPECT_EQ(cache.metrics().fetch_errors, 1u);
}

TEST(EventsTest, CallbackMayCallBackIntoTheCache) {
  stack_with_l2 s;
  cache_stack* self = nullptr;
  std::atomic<int> reentered{0};
  cache_stack cache({s.l1, s.l2}, {.clock = s.clock, .on_event = [&](const event& e) {
                                     // No library lock may be held here.
                                     (void)self->metrics();
                                     (void)self->has(e.key.empty() ? "other" : e.key);
                                     (void)self->set<int>("from-callback", 1);
                                     ++reentered;
                                   }});
  self = &cache;
  s.l2->fail_next(1, test::fault::get);
  EXPECT_EQ(*cache.get<std::string>("k", [] { return std::string("v"); }), "v");
  EXPECT_THROW(
      (void)cache.get<std::string>("e", []() -> std::string { throw std::runtime_error("x"); }),
      std::runtime_error);
  EXPECT_EQ(reentered.load(), 2);
  EXPECT_EQ(*cache.get_if_present<int>("from-callback"), 1);
}

}  // namespace
}  // namespace layercache
