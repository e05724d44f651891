// coherence_races_test.cpp — the races between a process's own reads and mutations (issue #9):
// read-your-writes against a concurrent get, invalidations that reach in-flight fetches, callbacks
// that re-enter the cache. Each test forces its interleaving with gates (a codec that blocks in
// encode, a byte layer that blocks in a named operation) instead of hoping for it.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/detail/hash.hpp"
#include "support/await.hpp"
#include "support/fake_clock.hpp"
#include "test_byte_layer.hpp"

namespace layercache::test {
namespace {

using namespace std::chrono_literals;

// A value whose encoding can be made to stop at a gate: the window between the start of a set and
// its L1 change (encoding happens first, outside every lock).
struct gated_text {
  std::string s;
};

struct encode_pause {
  std::atomic<bool> armed{false};
  gate entered;
  gate release;
};
encode_pause* g_encode_pause = nullptr;

}  // namespace
}  // namespace layercache::test

template <>
struct layercache::codec<layercache::test::gated_text> {
  static constexpr bool is_defined = true;
  static constexpr detail::codec_id id = detail::codec_id::identity;
  static void encode(const layercache::test::gated_text& v, std::string& out) {
    auto* p = layercache::test::g_encode_pause;
    if (p != nullptr && p->armed.exchange(false)) {
      p->entered.open();
      p->release.wait();
    }
    out += v.s;
  }
  static layercache::test::gated_text decode(std::string_view bytes) {
    return layercache::test::gated_text{std::string(bytes)};
  }
};

namespace layercache::test {
namespace {

// Pauses the first operation named `op` that a faulty_byte_layer receives once armed.
struct op_pause {
  explicit op_pause(std::string op_name) : op(std::move(op_name)) {}
  std::string op;
  std::atomic<bool> armed{false};
  gate entered;
  gate release;

  void maybe_pause(std::string_view name) {
    if (name == op && armed.exchange(false)) {
      entered.open();
      release.wait();
    }
  }
};

std::string text_of(const std::shared_ptr<const gated_text>& v) { return v ? v->s : "<none>"; }

// Defect 2: a get that joins its flight after a set marked the key's flights stale, but reads the
// byte layer before the set reached L1 and the write queue, used to publish the old bytes over the
// new L1 value: the writing thread (and every other) then read the old value after set returned.
TEST(ReadYourWritesTest, AGetRacingASetNeverPutsTheOldValueBackInL1) {
  encode_pause encode;
  g_encode_pause = &encode;
  op_pause read("get"), write("set");
  auto l1 = memory_layer::create({});
  auto faulty = std::make_shared<faulty_byte_layer>(test_byte_layer::create({}));
  faulty->set_hook([&](unsigned, std::string_view op) {
    read.maybe_pause(op);
    write.maybe_pause(op);
  });
  cache_stack cache({l1, faulty});
  ASSERT_TRUE(cache.set<gated_text>("k", {"old"}).ok());
  ASSERT_TRUE(cache.flush());
  l1->erase("k", detail::hash_key("k"), removal_cause::invalidated);

  encode.armed = true;
  write.armed = true;  // the new value stays queued: the byte layer keeps "old" meanwhile
  std::thread setter([&] { (void)cache.set<gated_text>("k", {"new"}); });
  ASSERT_TRUE(encode.entered.wait());  // the set has begun, its L1 change has not
  read.armed = true;
  std::thread getter(
      [&] { (void)cache.get<gated_text>("k", [] { return gated_text{"fetched"}; }); });
  ASSERT_TRUE(read.entered.wait());  // the get is about to read "old" from the byte layer
  encode.release.open();
  setter.join();  // set() has returned
  read.release.open();
  getter.join();

  EXPECT_EQ(text_of(cache.get_if_present<gated_text>("k")), "new");
  write.release.open();
  ASSERT_TRUE(cache.flush());
  EXPECT_EQ(text_of(cache.get_if_present<gated_text>("k")), "new");
  g_encode_pause = nullptr;
}

// Defect 3: invalidate_tag must reach a fetch of a tagged key that is still running — its key is
// in no tag index yet, so only the flight's own tags can tell.
// Found by the chaos benchmark (Redis restarting): a del failed and waited for a retry; a get
// fetched, and its fill superseded the del in the layer and failed too. Nothing reported the del
// any more, so once L1 let the fill go the thread read the value its own del had removed.
TEST(ReadYourWritesTest, ADeleteWaitingForARetryStillHidesItsValueAfterAFillSupersededIt) {
  auto clock = std::make_shared<fake_clock>();
  auto l2 = std::make_shared<faulty_byte_layer>(test_byte_layer::create({.clock = clock}));
  cache_stack cache({memory_layer::create({.clock = clock}), l2}, {.clock = clock});
  ASSERT_TRUE(cache.set<std::string>("k", "old", {.ttl = 1h}).ok());
  ASSERT_TRUE(cache.flush());
  l2->fail_always(fault::set | fault::del);
  ASSERT_TRUE(cache.del("k").ok());  // best effort: it fails in the layer and awaits a retry
  ASSERT_TRUE(cache.flush());
  int fetches = 0;
  auto fetch = [&] { return "fetched-" + std::to_string(++fetches); };
  EXPECT_EQ(*cache.get<std::string>("k", fetch, {.ttl = 1s}), "fetched-1");
  ASSERT_TRUE(cache.flush());  // the fill failed too; it decides the layer now
  clock->advance(2s);          // L1 lets the fill go; "old" is still in the layer
  EXPECT_EQ(*cache.get<std::string>("k", fetch, {.ttl = 1s}), "fetched-2")
      << "read the value of before its own delete";
  EXPECT_FALSE(cache.get_if_present<std::string>("k") &&
               *cache.get_if_present<std::string>("k") == "old");
  const std::vector<std::string> keys{"k"};
  clock->advance(2s);
  const auto many = cache.get_many<std::string>(keys, [&](std::span<const std::string> ks) {
    std::vector<std::optional<std::string>> out;
    for (std::size_t i = 0; i < ks.size(); ++i) out.emplace_back(fetch());
    return out;
  });
  ASSERT_EQ(many.size(), 1u);
  ASSERT_TRUE(many[0]);
  EXPECT_NE(*many[0], "old");
  l2->heal();
}

// Found by the stress: a sweep (invalidate_prefix, clear) is paused at the lower layer, the upper
// one already swept. A get that begins then reads the lower layer's old copy; it joined after the
// sweep's first mark and published before its second, so its backfill into the upper layer
// landed after that layer was swept, and the value came back from it once the sweep had
// returned. A fetch begun during a sweep now stores nothing. Returns what a get reads after the
// sweep ("fresh" when nothing came back); `pause_at` names the lower layer's operation the sweep
// is held in.
std::string read_after_a_sweep(std::string_view pause_at,
                               const std::function<status(cache_stack&)>& sweep) {
  auto l2 = std::make_shared<faulty_byte_layer>(test_byte_layer::create({.name = "l2"}));
  auto l3 = std::make_shared<faulty_byte_layer>(test_byte_layer::create({.name = "l3"}));
  {
    cache_stack writer({l3});
    EXPECT_TRUE(writer.set<std::string>("a1", "old").ok());
    EXPECT_TRUE(writer.flush());
  }
  gate paused, release;
  std::atomic<bool> armed{false};
  l3->set_hook([&](unsigned, std::string_view op) {
    if (op == pause_at && armed.exchange(false)) {
      paused.open();
      release.wait();
    }
  });
  cache_stack cache({memory_layer::create({}), l2, l3});
  armed = true;
  std::jthread sweeper([&] { EXPECT_TRUE(sweep(cache).ok()); });
  if (!paused.wait()) {
    release.open();
    return "the sweep never reached the lower layer";
  }
  // l2 has been swept, l3 not yet: this get reads l3's old copy (it may: it is concurrent).
  (void)cache.get<std::string>("a1", [] { return std::string("fetched"); });
  EXPECT_TRUE(cache.flush());  // a backfill into l2, if it queued one, has landed
  release.open();
  sweeper.join();
  return *cache.get<std::string>("a1", [] { return std::string("fresh"); });
}

TEST(SweepTest, AGetBegunDuringAPrefixInvalidationDoesNotBringTheOldValueBack) {
  EXPECT_EQ(read_after_a_sweep("scan", [](cache_stack& c) { return c.invalidate_prefix("a"); }),
            "fresh");
}

TEST(SweepTest, ClearDoesNotLetAGetBegunDuringItBringTheOldValueBack) {
  EXPECT_EQ(read_after_a_sweep("clear", [](cache_stack& c) { return c.clear(); }), "fresh");
}

TEST(SweepTest, CallersOfOneKeyDuringASweepStillShareOneFetch) {
  // Flights begun during a sweep store nothing, but they are still shared: the sweep must not
  // turn a burst of misses into one fetch per caller.
  auto l2 = std::make_shared<faulty_byte_layer>(test_byte_layer::create({.name = "l2"}));
  gate scanning, release, fetching, fetched;
  std::atomic<bool> armed{false};
  l2->set_hook([&](unsigned, std::string_view op) {
    if (op == "scan" && armed.exchange(false)) {
      scanning.open();
      release.wait();
    }
  });
  cache_stack cache({memory_layer::create({}), l2});
  armed = true;
  std::jthread sweeper([&] { EXPECT_TRUE(cache.invalidate_prefix("a").ok()); });
  ASSERT_TRUE(scanning.wait());
  std::atomic<int> fetches{0};
  std::jthread first([&] {
    (void)cache.get<std::string>("b1", [&] {
      ++fetches;
      fetching.open();
      fetched.wait();
      return std::string("v");
    });
  });
  ASSERT_TRUE(fetching.wait());
  std::jthread second([&] {
    (void)cache.get<std::string>("b1", [&] {
      ++fetches;
      return std::string("v");
    });
  });
  EXPECT_TRUE(eventually([&] { return cache.metrics().dedupes == 1 || fetches.load() == 2; }));
  fetched.open();
  first.join();
  second.join();
  release.open();
  sweeper.join();
  EXPECT_EQ(fetches.load(), 1);
}

TEST(TagInvalidationTest, AFetchOfATaggedKeyInFlightIsStaleAfterInvalidateTag) {
  auto l1 = memory_layer::create({});
  auto bytes = test_byte_layer::create({});
  cache_stack cache({l1, bytes});
  gate fetching, release;
  std::thread getter([&] {
    (void)cache.get<std::string>("k",
                                 [&] {
                                   fetching.open();
                                   release.wait();
                                   return std::string("before-invalidation");
                                 },
                                 {.tags = {"t"}});
  });
  ASSERT_TRUE(fetching.wait());
  ASSERT_TRUE(cache.invalidate_tag("t").ok());
  release.open();
  getter.join();
  ASSERT_TRUE(cache.flush());
  EXPECT_EQ(cache.get_if_present<std::string>("k"), nullptr);
  EXPECT_FALSE(bytes->stored("k").has_value());
  EXPECT_EQ(cache.metrics().stale_fills, 1U);
}

TEST(TagInvalidationTest, AnAllTagsInvalidationSparesAFetchMissingOneOfTheTags) {
  auto l1 = memory_layer::create({});
  cache_stack cache({l1});
  gate fetching, release;
  std::thread getter([&] {
    (void)cache.get<std::string>("k",
                                 [&] {
                                   fetching.open();
                                   release.wait();
                                   return std::string("v");
                                 },
                                 {.tags = {"a"}});
  });
  ASSERT_TRUE(fetching.wait());
  const std::vector<std::string> both{"a", "b"};
  ASSERT_TRUE(cache.invalidate_tags(both, tag_match::all).ok());
  release.open();
  getter.join();
  ASSERT_NE(cache.get_if_present<std::string>("k"), nullptr);
}

// Defect 11: an on_remove callback runs after the stack's locks are released, so it may call the
// cache for any key — here for a key of the same single-flight shard as the insert that evicted
// it (the insert runs under that shard's lock), which used to deadlock.
TEST(CallbackReentryTest, OnRemoveMayCallTheCacheForAKeyOfTheSameFlightShard) {
  std::string other;  // a key whose flight shard is the same as "a"'s (64 shards, hash % 64)
  for (int i = 0; other.empty(); ++i) {
    const std::string k = "b" + std::to_string(i);
    if (detail::hash_key(k) % 64 == detail::hash_key("a") % 64) other = k;
  }
  std::atomic<bool> armed{false};
  std::atomic<int> reentered{0};
  // Leaked on failure: a deadlocked thread still uses it, and must not outlive it.
  cache_stack* cache = nullptr;
  auto l1 = memory_layer::create({
      .max_entries = 1,
      .on_remove =
          [&](std::string_view key, removal_cause cause) {
            if (key == "a" && cause == removal_cause::evicted && armed.exchange(false)) {
              (void)cache->get<std::string>("a", [] { return std::string("A2"); });
              ++reentered;
            }
          },
  });
  cache = new cache_stack({l1});
  ASSERT_TRUE(cache->set<std::string>("a", "A").ok());
  armed = true;
  gate done;
  std::thread t([&] {
    (void)cache->get<std::string>(other, [] { return std::string("B"); });
    done.open();
  });
  if (!done.wait()) {
    t.detach();
    FAIL() << "get deadlocked in an on_remove callback that called the cache";
  }
  t.join();
  EXPECT_EQ(reentered.load(), 1);
  delete cache;
}

// Defect 8: without a shared layer, invalidate_tag found only keys the in-memory tag index held —
// not a tagged entry of a byte layer whose L1 copy was evicted, nor one written before a restart.
TEST(TagInvalidationTest, ATaggedEntryOnlyAByteLayerHoldsIsInvalidatedWithoutRedis) {
  auto bytes = test_byte_layer::create({});
  {
    auto l1 = memory_layer::create({});
    cache_stack cache({l1, bytes});
    ASSERT_TRUE(cache.set<std::string>("evicted", "1", {.tags = {"t"}}).ok());
    ASSERT_TRUE(cache.set<std::string>("other", "2", {.tags = {"u"}}).ok());
    ASSERT_TRUE(cache.flush());
    l1->erase("evicted", detail::hash_key("evicted"), removal_cause::evicted);
    ASSERT_TRUE(cache.invalidate_tag("t").ok());
    ASSERT_TRUE(cache.flush());
    EXPECT_EQ(cache.get_if_present<std::string>("evicted"), nullptr);
    EXPECT_FALSE(bytes->stored("evicted").has_value());
    ASSERT_TRUE(cache.set<std::string>("before-restart", "3", {.tags = {"t"}}).ok());
  }
  cache_stack restarted({memory_layer::create({}), bytes});  // an empty tag index
  ASSERT_TRUE(restarted.invalidate_tag("t").ok());
  ASSERT_TRUE(restarted.flush());
  EXPECT_EQ(restarted.get_if_present<std::string>("before-restart"), nullptr);
  EXPECT_FALSE(bytes->stored("before-restart").has_value());
  EXPECT_NE(restarted.get_if_present<std::string>("other"), nullptr) << "another tag's entry";
}

// A set that lands while a tag invalidation without Redis is between its scan and its delete of
// the key: the delete carries a version older than the set's, so the byte layer keeps the set's
// value. The delete used to report the key as deleted to readers until it ran (and L1 lost its
// copy), after which the set's value was read again: gone, then back. A delete conditional on the
// stored version now hides only copies not newer than it, as the layer will.
TEST(TagInvalidationTest, ASetLandingDuringAnInvalidationIsNotHiddenAndThenReadAgain) {
  auto inner = test_byte_layer::create({});
  auto bytes = std::make_shared<faulty_byte_layer>(inner);
  op_pause worker_read("get");  // the read a conditional delete makes before removing
  bytes->set_hook([&](unsigned, std::string_view op) { worker_read.maybe_pause(op); });
  cache_stack* cache = nullptr;
  std::atomic<bool> armed{false};
  auto l1 = memory_layer::create({
      .on_remove =
          [&](std::string_view key, removal_cause cause) {
            // Between the invalidation's deletes of k0 and k1 (its keys are sorted).
            if (key != "k0" || cause != removal_cause::invalidated || !armed.exchange(false))
              return;
            ASSERT_TRUE(cache->set<std::string>("k1", "new", {.tags = {"t"}}).ok());
            ASSERT_TRUE(cache->flush());
            worker_read.armed = true;
          },
  });
  cache_stack stack({l1, bytes});
  cache = &stack;
  ASSERT_TRUE(stack.set<std::string>("k0", "old", {.tags = {"t"}}).ok());
  ASSERT_TRUE(stack.set<std::string>("k1", "old", {.tags = {"t"}}).ok());
  ASSERT_TRUE(stack.flush());
  armed = true;
  ASSERT_TRUE(stack.invalidate_tag("t").ok());
  ASSERT_FALSE(armed.load()) << "the seam did not run";
  ASSERT_TRUE(worker_read.entered.wait());  // k1's delete is queued, not yet run
  auto text = [](const std::shared_ptr<const std::string>& v) { return v ? *v : "<none>"; };
  const std::string during = text(stack.get_if_present<std::string>("k1"));
  worker_read.release.open();
  ASSERT_TRUE(stack.flush());
  const std::string after = text(stack.get_if_present<std::string>("k1"));
  EXPECT_TRUE(during == after || after == "<none>")
      << "read " << during << " while the delete was queued, then " << after;
  EXPECT_EQ(stack.get_if_present<std::string>("k0"), nullptr);
}

}  // namespace
}  // namespace layercache::test
