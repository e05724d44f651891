// warm_test.cpp — layercache::warm<T> (warm.hpp): it fetches every item not already cached, takes
// items in descending priority (ties in input order), keeps at most `concurrency` fetches in
// flight, counts each item as cached, fetched or failed (a throwing fetcher fails its item only),
// reports progress once per item, and rejects a concurrency of zero.
//
// A memory-only stack on a fake clock: warming is a sequence of cache.get calls, so nothing here
// needs a byte layer. Waits are bounded; the in-flight test waits for a condition, not a duration.
#include "layercache/warm.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/error.hpp"
#include "layercache/memory_layer.hpp"
#include "support/fake_clock.hpp"

namespace layercache {
namespace {

using namespace std::chrono_literals;

class WarmTest : public ::testing::Test {
 protected:
  std::shared_ptr<test::fake_clock> clock_ = std::make_shared<test::fake_clock>();
  cache_stack cache_{{memory_layer::create({.clock = clock_})}, {.clock = clock_}};
};

std::vector<warm_item> keys(int n, const std::string& prefix = "k") {
  std::vector<warm_item> out;
  for (int i = 0; i < n; ++i) out.push_back({prefix + std::to_string(i), 0});
  return out;
}

TEST_F(WarmTest, FetchesEveryItemNotCachedAndCountsTheCachedOnes) {
  ASSERT_TRUE(cache_.set<std::string>("k1", "already").ok());
  ASSERT_TRUE(cache_.set<std::string>("k3", "already").ok());
  std::mutex mu;
  std::vector<std::string> fetched;
  const warm_progress p = warm<std::string>(cache_, keys(5),
                                            [&](const std::string& key) {
                                              std::lock_guard lock(mu);
                                              fetched.push_back(key);
                                              return "value of " + key;
                                            },
                                            {.concurrency = 2});
  EXPECT_EQ(p.total, 5u);
  EXPECT_EQ(p.done, 5u);
  EXPECT_EQ(p.fetched, 3u);
  EXPECT_EQ(p.cached, 2u);
  EXPECT_EQ(p.failed, 0u);
  std::sort(fetched.begin(), fetched.end());
  EXPECT_EQ(fetched, (std::vector<std::string>{"k0", "k2", "k4"}));

  const auto m = cache_.metrics();
  EXPECT_EQ(m.fetches, 3u);
  EXPECT_EQ(m.layers[0].hits, 2u);
  EXPECT_EQ(*cache_.get_if_present<std::string>("k0"), "value of k0");
  EXPECT_EQ(*cache_.get_if_present<std::string>("k1"), "already") << "a cached item was replaced";
}

TEST_F(WarmTest, WarmingTwiceFetchesNothingTheSecondTime) {
  auto fetch = [](const std::string& key) { return key; };
  EXPECT_EQ(warm<std::string>(cache_, keys(6), fetch).fetched, 6u);
  const warm_progress again = warm<std::string>(cache_, keys(6), fetch);
  EXPECT_EQ(again.fetched, 0u);
  EXPECT_EQ(again.cached, 6u);
  EXPECT_EQ(cache_.metrics().fetches, 6u);
}

TEST_F(WarmTest, WithOneThreadItemsAreFetchedInDescendingPriorityTiesInInputOrder) {
  const std::vector<warm_item> items{{"low-a", 1},  {"high-a", 9}, {"mid-a", 5},
                                     {"high-b", 9}, {"zero", 0},   {"mid-b", 5},
                                     {"neg", -3},   {"low-b", 1},  {"high-c", 9}};
  std::vector<std::string> order;
  const warm_progress p = warm<std::string>(cache_, items,
                                            [&](const std::string& key) {
                                              order.push_back(key);  // one thread: no lock needed
                                              return key;
                                            },
                                            {.concurrency = 1});
  EXPECT_EQ(p.fetched, items.size());
  EXPECT_EQ(order, (std::vector<std::string>{"high-a", "high-b", "high-c", "mid-a", "mid-b",
                                             "low-a", "low-b", "zero", "neg"}));
}

TEST_F(WarmTest, NeverExceedsConcurrencyFetchesInFlightAndUsesThemAll) {
  constexpr std::size_t concurrency = 3;
  std::mutex mu;
  std::condition_variable cv;
  std::size_t in_flight = 0;
  std::size_t max_in_flight = 0;
  const warm_progress p =
      warm<std::string>(cache_, keys(15),
                        [&](const std::string& key) {
                          std::unique_lock lock(mu);
                          max_in_flight = std::max(max_in_flight, ++in_flight);
                          cv.notify_all();
                          // Hold the first fetches until `concurrency` of them overlap (bounded: a
                          // warm() that ran fewer threads fails the == check below instead of
                          // hanging), then linger briefly so that a warm() running too many threads
                          // would overlap more of them.
                          cv.wait_for(lock, 5s, [&] { return max_in_flight >= concurrency; });
                          lock.unlock();
                          std::this_thread::sleep_for(2ms);
                          lock.lock();
                          --in_flight;
                          return key;
                        },
                        {.concurrency = concurrency});
  EXPECT_EQ(p.fetched, 15u);
  EXPECT_LE(max_in_flight, concurrency);
  EXPECT_EQ(max_in_flight, concurrency);
  EXPECT_EQ(cache_.metrics().fetches, 15u);
}

TEST_F(WarmTest, AThrowingFetcherFailsItsItemAndWarmingGoesOn) {
  std::atomic<int> calls{0};
  const warm_progress p =
      warm<std::string>(cache_, keys(10),
                        [&](const std::string& key) -> std::string {
                          ++calls;
                          if (key == "k2" || key == "k7")
                            throw std::runtime_error("database down for " + key);
                          return key;
                        },
                        {.concurrency = 2});
  EXPECT_EQ(calls.load(), 10);
  EXPECT_EQ(p.done, 10u);
  EXPECT_EQ(p.failed, 2u);
  EXPECT_EQ(p.fetched, 8u);
  EXPECT_EQ(p.cached, 0u);
  EXPECT_FALSE(cache_.has("k2")) << "a failed fetch was cached";
  EXPECT_TRUE(cache_.has("k9"));
  const auto m = cache_.metrics();
  EXPECT_EQ(m.fetches, 10u);
  EXPECT_EQ(m.fetch_errors, 2u);
}

TEST_F(WarmTest, NotFoundCountsAsFetchedAndIsCached) {
  const warm_progress p = warm<std::string>(cache_, keys(2), [](const std::string& key) {
    return key == "k0" ? std::optional<std::string>{} : std::optional<std::string>(key);
  });
  EXPECT_EQ(p.fetched, 2u);
  EXPECT_EQ(p.failed, 0u);
  EXPECT_TRUE(cache_.has("k0")) << "the not-found answer was not cached";
}

TEST_F(WarmTest, ReportsProgressOncePerItemOneCallAtATime) {
  ASSERT_TRUE(cache_.set<std::string>("k4", "already").ok());
  std::vector<warm_progress> seen;  // appended from the warming threads, one call at a time
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};
  const warm_progress p =
      warm<std::string>(cache_, keys(12), [](const std::string& key) { return key; },
                        {.concurrency = 4, .on_progress = [&](const warm_progress& now) {
                           if (inside.fetch_add(1) != 0) overlapped = true;
                           seen.push_back(now);
                           inside.fetch_sub(1);
                         }});
  EXPECT_FALSE(overlapped.load()) << "on_progress ran concurrently with itself";
  ASSERT_EQ(seen.size(), 12u);
  for (std::size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].done, i + 1) << "call " << i;
    EXPECT_EQ(seen[i].total, 12u);
    EXPECT_EQ(seen[i].done, seen[i].fetched + seen[i].cached + seen[i].failed) << "call " << i;
  }
  EXPECT_EQ(seen.back().fetched, p.fetched);
  EXPECT_EQ(seen.back().cached, p.cached);
  EXPECT_EQ(p.fetched, 11u);
  EXPECT_EQ(p.cached, 1u);
}

TEST_F(WarmTest, EmptyListFinishesAtOnceWithoutProgressCalls) {
  int progress_calls = 0;
  const warm_progress p =
      warm<std::string>(cache_, {}, [](const std::string& key) { return key; },
                        {.on_progress = [&](const warm_progress&) { ++progress_calls; }});
  EXPECT_EQ(p.total, 0u);
  EXPECT_EQ(p.done, 0u);
  EXPECT_EQ(progress_calls, 0);
  EXPECT_EQ(cache_.metrics().fetches, 0u);
}

TEST_F(WarmTest, ZeroConcurrencyThrowsInvalidArgumentAndFetchesNothing) {
  int calls = 0;
  EXPECT_THROW((void)warm<std::string>(cache_, keys(3),
                                       [&](const std::string& key) {
                                         ++calls;
                                         return key;
                                       },
                                       {.concurrency = 0}),
               invalid_argument_error);
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(cache_.metrics().fetches, 0u);
}

}  // namespace
}  // namespace layercache
