// Distributed coherence within one test process: each cache_stack has its own redis_layer (its own
// connections, subscriber and origin id), so two stacks behave like two instances against one real
// redis-server. The multi-process versions are in redis_coherence_test.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "layercache/cache_namespace.hpp"
#include "layercache/cache_stack.hpp"
#include "layercache/clock.hpp"
#include "layercache/error.hpp"
#if LAYERCACHE_TEST_WITH_DISK
#include "layercache/disk_layer.hpp"
#endif
#include "layercache/memory_layer.hpp"
#include "layercache/redis_layer.hpp"
#include "support/await.hpp"
#include "support/fake_clock.hpp"
#include "support/redis_server.hpp"
#include "support/tcp_fault_proxy.hpp"
#include "support/temp_dir.hpp"

namespace layercache::test {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

struct instance {
  std::shared_ptr<memory_layer> l1;
  std::shared_ptr<redis_layer> l2;
  std::unique_ptr<cache_stack> cache;
};

class RedisCoordinationTest : public ::testing::Test {
 protected:
  redis_server server_;

  redis_layer_options options(std::string prefix = "co:") {
    redis_layer_options o;
    o.url = server_.url();
    o.prefix = std::move(prefix);
    o.connect_timeout = 500ms;
    o.read_deadline = 500ms;  // sanitizer runs: nothing here is about deadlines
    o.write_deadline = 500ms;
    return o;
  }

  // An instance whose bus subscription is confirmed by the server. A redis_layer's constructor
  // waits for its subscription only up to connect_timeout + 100 ms; under a sanitizer on a loaded
  // machine it can return before, and an instance that is not yet subscribed misses what others
  // announce meanwhile (its L1 copies are then bounded by bus_down_l1_ttl, but a write it has
  // queued is not fenced by a group invalidation it never heard).
  instance make(redis_layer_options o, stack_options so = {}) {
    const std::string bus = o.prefix + "__lc:bus";
    const int before = bus_subscribers(bus);
    instance i;
    i.l1 = memory_layer::create({});
    i.l2 = redis_layer::create(std::move(o));
    i.cache = std::make_unique<cache_stack>(std::vector<std::shared_ptr<layer>>{i.l1, i.l2},
                                            std::move(so));
    EXPECT_TRUE(eventually([&] { return bus_subscribers(bus) > before; }))
        << "the instance never subscribed to " << bus;
    return i;
  }
  instance make() { return make(options()); }

  // Connections subscribed to `channel`, as the server counts them.
  int bus_subscribers(const std::string& channel) {
    // The reply is the array {channel, count}, joined with newlines by cli().
    const std::string out = server_.cli({"PUBSUB", "NUMSUB", channel});
    const auto nl = out.rfind('\n');
    try {
      return std::stoi(nl == std::string::npos ? out : out.substr(nl + 1));
    } catch (const std::exception&) {
      return -1;
    }
  }

  static std::string l1_of(instance& i, const std::string& key) {
    auto v = i.cache->get_if_present<std::string>(key);
    return v ? *v : "<absent>";
  }
};

TEST_F(RedisCoordinationTest, ConcurrentMissesInTwoInstancesFetchOnce) {
  instance a = make(), b = make();
  std::atomic<int> origin{0};
  constexpr int threads_each = 8;
  std::barrier start(2 * threads_each);
  std::vector<std::jthread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 2 * threads_each; ++t) {
    cache_stack& c = t % 2 == 0 ? *a.cache : *b.cache;
    threads.emplace_back([&] {
      start.arrive_and_wait();
      auto v = c.get<std::string>("hot", [&] {
        origin.fetch_add(1);
        std::this_thread::sleep_for(100ms);
        return std::string("value");
      });
      if (v && *v == "value") ok.fetch_add(1);
    });
  }
  threads.clear();
  EXPECT_EQ(ok.load(), 2 * threads_each);
  EXPECT_EQ(origin.load(), 1) << "both instances fetched";
  const auto ma = a.cache->metrics(), mb = b.cache->metrics();
  EXPECT_EQ(ma.lease_grants + mb.lease_grants, 1u);
  EXPECT_EQ(ma.lease_waits + mb.lease_waits, 1u);
  EXPECT_EQ(ma.coordination_fallbacks + mb.coordination_fallbacks, 0u);
}

TEST_F(RedisCoordinationTest, AFailedFetchReleasesTheLeaseAndTheWaiterFetchesAtOnce) {
  auto o = options();
  o.lease_ttl = 10s;  // a waiter must not be saved by the lease expiring
  instance a = make(o), b = make(o);
  std::atomic<bool> a_fetching{false};
  std::jthread holder([&] {
    EXPECT_THROW(a.cache->get<std::string>("k",
                                           [&]() -> std::string {
                                             a_fetching = true;
                                             std::this_thread::sleep_for(200ms);
                                             throw std::runtime_error("origin down");
                                           }),
                 std::runtime_error);
  });
  ASSERT_TRUE(eventually([&] { return a_fetching.load(); }));
  const auto start = steady::now();
  auto v = b.cache->get<std::string>("k", [] { return std::string("from-b"); });
  const auto took = steady::now() - start;
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, "from-b");
  // Generous on purpose (a loaded machine must not fail it): without the release the waiter
  // would sleep until the lease expired or lease_wait passed, 10 s either way.
  EXPECT_LT(took, 5s) << "the waiter waited for the lease to expire instead of being woken";
  EXPECT_EQ(b.cache->metrics().lease_waits, 1u);
}

TEST_F(RedisCoordinationTest, AWaiterTakesOverAfterLeaseWait) {
  auto o = options();
  o.lease_wait = 300ms;
  instance a = make(o), b = make(o);
  std::atomic<bool> a_fetching{false};
  std::jthread holder([&] {
    (void)a.cache->get<std::string>("k", [&] {
      a_fetching = true;
      std::this_thread::sleep_for(2s);
      return std::string("from-a");
    });
  });
  ASSERT_TRUE(eventually([&] { return a_fetching.load(); }));
  // B's miss must begin in a later millisecond of the stacks' (coarse, ~4 ms) clock than A's, as a
  // later miss on another host would. In the same millisecond the two stacks' versions tie by
  // their independent counters, and A's fenced-out fill can then tombstone B's value: issue #9
  // defect 16 — this test failed 9 times in 60 on an idle machine with C reading "refetched" over
  // a tombstone (a library defect, reported; not what this test is about).
  const unix_ms a_began = default_clock()->now_ms();
  ASSERT_TRUE(eventually([&] { return default_clock()->now_ms() > a_began; }));
  // No wall-clock bound on B's get: "from-b" and the takeover counter prove B did not wait for
  // A's fill (it would have read "from-a"), and a timed bound only fails on a loaded machine.
  auto v = b.cache->get<std::string>("k", [] { return std::string("from-b"); });
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, "from-b");
  EXPECT_EQ(b.cache->metrics().lease_takeovers, 1u);
  // B's fill goes to Redis in the background: wait for it before C reads.
  ASSERT_TRUE(b.cache->flush());
  holder.join();
  // A's lease was taken over, so its late fill is fenced out: B's value stays.
  ASSERT_TRUE(a.cache->flush());
  EXPECT_GE(a.cache->metrics().cas_rejections, 1u) << "A's fill was not fenced out";
  instance c = make(o);
  EXPECT_EQ(*c.cache->get<std::string>("k", [] { return std::string("refetched"); }), "from-b");
}

TEST_F(RedisCoordinationTest, AWaiterPastItsWaitDeadlineThrowsWaitTimeout) {
  instance a = make(), b = make();
  std::atomic<bool> a_fetching{false};
  std::jthread holder([&] {
    (void)a.cache->get<std::string>("k", [&] {
      a_fetching = true;
      std::this_thread::sleep_for(1s);
      return std::string("v");
    });
  });
  ASSERT_TRUE(eventually([&] { return a_fetching.load(); }));
  EXPECT_THROW((void)b.cache->get<std::string>("k", [] { return std::string("x"); },
                                               {.wait_deadline = 100ms}),
               wait_timeout_error);
}

TEST_F(RedisCoordinationTest, ASetInOneInstanceDropsTheOtherInstancesL1Copy) {
  instance a = make(), b = make();
  ASSERT_TRUE(a.cache->set<std::string>("k", "v1", {.policy = write_policy::strict}).ok());
  EXPECT_EQ(*b.cache->get<std::string>("k", [] { return std::string("fetched"); }), "v1");
  ASSERT_TRUE(a.cache->set<std::string>("k", "v2").ok());
  EXPECT_TRUE(eventually([&] { return l1_of(b, "k") == "v2"; })) << l1_of(b, "k");
  EXPECT_GE(b.cache->metrics().bus_received, 1u);
  EXPECT_EQ(a.cache->metrics().bus_received, 0u) << "an instance applied its own message";

  ASSERT_TRUE(a.cache->del("k").ok());
  EXPECT_TRUE(eventually([&] { return l1_of(b, "k") == "<absent>"; })) << l1_of(b, "k");
}

TEST_F(RedisCoordinationTest, AFetchThatStartedBeforeADeleteDoesNotResurrectTheKey) {
  instance a = make(), b = make();
  std::atomic<bool> fetching{false}, deleted{false};
  std::jthread filler([&] {
    (void)a.cache->get<std::string>("k", [&] {
      fetching = true;
      while (!deleted) std::this_thread::sleep_for(1ms);
      return std::string("stale");
    });
  });
  ASSERT_TRUE(eventually([&] { return fetching.load(); }));
  // The delete must begin in a later millisecond of the stacks' (coarse, ~4 ms) clock than A's
  // miss: in the same millisecond the versions of two stacks tie by their independent counters
  // and A's fill may win over the tombstone (issue #9 defect 16: this test failed 6 times in 100,
  // C reading "stale"; a library defect, reported — not what this test is about).
  const unix_ms a_began = default_clock()->now_ms();
  ASSERT_TRUE(eventually([&] { return default_clock()->now_ms() > a_began; }));
  ASSERT_TRUE(b.cache->del("k").ok());
  ASSERT_TRUE(b.cache->flush());
  deleted = true;
  filler.join();
  ASSERT_TRUE(a.cache->flush());
  instance c = make();
  EXPECT_EQ(*c.cache->get<std::string>("k", [] { return std::string("fresh"); }), "fresh")
      << "a fill from before the delete replaced its tombstone";
}

// Library defect found while fixing the flaky test above (issue #9 defect 16): two instances issue
// versions from independent clocks (wall milliseconds << 16 | a per-process counter), so a delete
// that begins after another instance's miss, within the same millisecond of the (coarse, ~4 ms)
// clock, gets an EQUAL version, and lua_write's "not older" (>=) lets the older fill overwrite the
// tombstone: the deleted value comes back for every instance. version_clock.hpp's "exactly on one
// host" does not hold for two processes on one host. Forced here: both stacks read one frozen
// clock, and A's bus messages are held (paused proxy) so that its fill is not marked stale by the
// delete's announcement before it is queued. Disabled until the library is fixed: fails on main.
TEST_F(RedisCoordinationTest, ADeleteIssuedAfterAMissElsewhereWinsInTheSameMillisecond) {
  auto frozen = std::make_shared<fake_clock>(default_clock()->now_ms());
  tcp_fault_proxy proxy(server_.host(), server_.port());
  auto via_proxy = options();
  via_proxy.url = proxy.url();
  instance a = make(via_proxy, {.clock = frozen}), b = make(options(), {.clock = frozen});
  gate fetching, release;
  std::jthread filler([&] {
    (void)a.cache->get<std::string>("k", [&] {
      fetching.open();
      release.wait();
      return std::string("stale");
    });
  });
  ASSERT_TRUE(fetching.wait());
  proxy.pause(true);  // A hears nothing and sends nothing until its fill is queued
  ASSERT_TRUE(b.cache->del("k").ok());
  ASSERT_TRUE(b.cache->flush());
  release.open();
  filler.join();
  proxy.pause(false);
  ASSERT_TRUE(a.cache->flush());
  instance c = make();
  EXPECT_EQ(*c.cache->get<std::string>("k", [] { return std::string("fresh"); }), "fresh")
      << "a fill whose miss began before the delete replaced its tombstone (equal versions)";
}

TEST_F(RedisCoordinationTest, AnOlderWriteLandingLateIsRefusedAndItsWriterDropsItsCopy) {
  // A reaches Redis through a proxy that delays its commands, so A's set — issued first — lands
  // after B's newer one.
  tcp_fault_proxy proxy(server_.host(), server_.port());
  auto slow = options();
  slow.url = proxy.url();
  instance a = make(slow), b = make();
  proxy.set_latency(300ms, 0ms);
  ASSERT_TRUE(a.cache->set<std::string>("k", "old-from-a").ok());
  std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(b.cache->set<std::string>("k", "new-from-b", {.policy = write_policy::strict}).ok());
  ASSERT_TRUE(a.cache->flush());
  proxy.set_latency(0ms, 0ms);
  instance c = make();
  EXPECT_EQ(*c.cache->get<std::string>("k", [] { return std::string("x"); }), "new-from-b")
      << "a late, older write replaced a newer one";
  EXPECT_EQ(a.cache->metrics().cas_rejections, 1u);
  // A's L1 held its own older value; the refusal dropped it, so A converges on B's.
  EXPECT_TRUE(eventually([&] { return l1_of(a, "k") == "new-from-b"; })) << l1_of(a, "k");
}

TEST_F(RedisCoordinationTest, TagInvalidationRemovesKeysInEveryInstance) {
  instance a = make(), b = make();
  const set_options tagged{.policy = write_policy::strict, .tags = {"user:1"}};
  ASSERT_TRUE(a.cache->set<std::string>("profile:1", "p", tagged).ok());
  ASSERT_TRUE(a.cache->set<std::string>("orders:1", "o", tagged).ok());
  ASSERT_TRUE(a.cache->set<std::string>("profile:2", "q", {.policy = write_policy::strict}).ok());
  // B fetches one with a tag of its own.
  (void)b.cache->get<std::string>("avatar:1", [] { return std::string("img"); },
                                  {.tags = {"user:1"}});
  ASSERT_TRUE(b.cache->flush());
  EXPECT_EQ(l1_of(b, "profile:1"), "p");  // warm B's L1 from Redis
  ASSERT_TRUE(a.cache->invalidate_tag("user:1").ok());
  EXPECT_EQ(l1_of(a, "profile:1"), "<absent>");
  EXPECT_EQ(l1_of(a, "avatar:1"), "<absent>");
  EXPECT_TRUE(eventually(
      [&] { return l1_of(b, "profile:1") == "<absent>" && l1_of(b, "avatar:1") == "<absent>"; }));
  EXPECT_EQ(l1_of(b, "profile:2"), "q");
  EXPECT_EQ(server_.cli({"EXISTS", "co:__lc:tag:user:1"}), "0") << "the tag set outlived it";
}

TEST_F(RedisCoordinationTest, ATaggedFillStillOnItsWayIsFencedOutByATagInvalidationElsewhere) {
  // B's commands reach Redis 300 ms late, so its fill of a tagged value is still on its way when A
  // invalidates the tag: A's script cannot see the key in the tag set. B hears the invalidation
  // and follows its queued fill with a delete of the invalidation's version.
  tcp_fault_proxy proxy(server_.host(), server_.port());
  auto slow = options();
  slow.url = proxy.url();
  instance b = make(slow), a = make();
  proxy.set_latency(300ms, 0ms);
  (void)b.cache->get<std::string>("report", [] { return std::string("stale"); },
                                  {.tags = {"user:1"}});
  ASSERT_TRUE(a.cache->invalidate_tag("user:1").ok());
  ASSERT_TRUE(eventually([&] { return b.cache->get_if_present<std::string>("report") == nullptr; }))
      << "bus subscribers " << bus_subscribers("co:__lc:bus") << ", B received "
      << b.cache->metrics().bus_received << " messages, resyncs " << b.cache->metrics().bus_resyncs
      << ", pending writes " << b.cache->metrics().pending_writes << ", Redis holds "
      << server_.cli({"GET", "co:report"}).size() << " bytes";
  ASSERT_TRUE(b.cache->flush());
  proxy.set_latency(0ms, 0ms);
  instance c = make();
  EXPECT_EQ(*c.cache->get<std::string>("report", [] { return std::string("fresh"); }), "fresh")
      << "a fill that began before the tag invalidation outlived it";
}

// Found by the chaos benchmark (ryw violations under write timeouts): B's set was acknowledged
// (queued) before A's invalidation began, but reached Redis after it. The invalidation could not
// tombstone a key it did not find, and B, cut off, never heard of it (a bus that comes back
// resyncs L1 but cannot tell which queued writes the missed messages covered), so the set
// outlived the invalidation and A read a value older than its own invalidation. Redis now
// remembers recent invalidations (the fence hash) and refuses a write not newer than one covering
// it.
class LateWriteTest : public RedisCoordinationTest {
 protected:
  // B's set of `key` (tags `tags`) is acknowledged while B is cut off from Redis, `invalidate`
  // runs on A, then B comes back and retries its write; returns what a new instance reads
  // afterwards ("fresh" when the set lost).
  std::string read_after_late_set(const std::string& key, std::vector<std::string> tags,
                                  const std::function<status(cache_stack&)>& invalidate) {
    tcp_fault_proxy proxy(server_.host(), server_.port());
    auto slow = options();
    slow.url = proxy.url();
    instance b = make(slow), a = make();
    proxy.blackhole(true);
    EXPECT_TRUE(b.cache->set<std::string>(key, "late", {.tags = std::move(tags)}).ok());
    EXPECT_TRUE(b.cache->flush());           // attempted once: it timed out and awaits a retry
    EXPECT_TRUE(invalidate(*a.cache).ok());  // B's bus is cut off too: it never hears of it
    proxy.blackhole(false);
    proxy.reset_all();
    // Settled: stored or refused (or it reached Redis before the blackhole bit and the
    // invalidation found it there).
    EXPECT_TRUE(eventually(
        [&] {
          const auto m = b.cache->metrics();
          return m.retained_writes == 0 && m.pending_writes == 0;
        },
        20s))
        << "B's write was never retried";
    instance c = make();
    return *c.cache->get<std::string>(key, [] { return std::string("fresh"); });
  }
};

TEST_F(LateWriteTest, ASetAcknowledgedBeforeATagInvalidationDoesNotOutliveIt) {
  EXPECT_EQ(read_after_late_set("report", {"user:1"},
                                [](cache_stack& a) { return a.invalidate_tag("user:1"); }),
            "fresh");
}

TEST_F(LateWriteTest, ASetAcknowledgedBeforeAnAllTagsInvalidationDoesNotOutliveIt) {
  const std::vector<std::string> both{"y", "x"};
  EXPECT_EQ(
      read_after_late_set("both", {"x", "y", "z"},
                          [&](cache_stack& a) { return a.invalidate_tags(both, tag_match::all); }),
      "fresh");
}

TEST_F(LateWriteTest, AnAllTagsInvalidationSparesALateSetMissingOneOfTheTags) {
  const std::vector<std::string> both{"x", "y"};
  EXPECT_EQ(
      read_after_late_set("only-x", {"x"},
                          [&](cache_stack& a) { return a.invalidate_tags(both, tag_match::all); }),
      "late");
}

TEST_F(LateWriteTest, ASetAcknowledgedBeforeAPrefixInvalidationDoesNotOutliveIt) {
  EXPECT_EQ(read_after_late_set("user:7:name", {},
                                [](cache_stack& a) { return a.invalidate_prefix("user:7:"); }),
            "fresh");
}

TEST_F(LateWriteTest, APrefixInvalidationSparesALateSetOfAnotherPrefix) {
  EXPECT_EQ(read_after_late_set("user:8:name", {},
                                [](cache_stack& a) { return a.invalidate_prefix("user:7:"); }),
            "late");
}

TEST_F(LateWriteTest, ASetAcknowledgedBeforeAClearDoesNotOutliveIt) {
  EXPECT_EQ(read_after_late_set("anything", {}, [](cache_stack& a) { return a.clear(); }), "fresh");
}

TEST_F(LateWriteTest, ASetStartedAfterAnInvalidationIsStored) {
  instance a = make();
  ASSERT_TRUE(a.cache->invalidate_tag("user:1").ok());
  ASSERT_TRUE(a.cache->invalidate_prefix("user:").ok());
  ASSERT_TRUE(a.cache->clear().ok());
  ASSERT_TRUE(a.cache
                  ->set<std::string>("user:1:name", "new",
                                     {.policy = write_policy::strict, .tags = {"user:1"}})
                  .ok());
  instance c = make();
  EXPECT_EQ(*c.cache->get<std::string>("user:1:name", [] { return std::string("fetched"); }),
            "new");
}

TEST_F(LateWriteTest, TheFenceHashKeepsOnlyInvalidationsWithinTheTombstoneLifetime) {
  auto o = options();
  o.tombstone_ttl = 200ms;
  instance a = make(o);
  ASSERT_TRUE(a.cache->invalidate_prefix("old:").ok());
  ASSERT_TRUE(a.cache->invalidate_tag("old").ok());
  EXPECT_EQ(server_.cli({"HLEN", "co:__lc:fence"}), "2");
  const long long pttl = std::stoll(server_.cli({"PTTL", "co:__lc:fence"}));
  EXPECT_GT(pttl, 0);
  EXPECT_LE(pttl, 200);
  // Versions follow the wall clock: 300 ms later the first two are older than the lifetime.
  std::this_thread::sleep_for(300ms);
  ASSERT_TRUE(a.cache->invalidate_prefix("new:").ok());
  EXPECT_EQ(server_.cli({"HLEN", "co:__lc:fence"}), "1") << "the fence hash grows without bound";
}

TEST_F(RedisCoordinationTest, TagsAllMatchesOnlyKeysWithEveryTag) {
  instance a = make();
  ASSERT_TRUE(
      a.cache->set<std::string>("both", "1", {.policy = write_policy::strict, .tags = {"x", "y"}})
          .ok());
  ASSERT_TRUE(
      a.cache->set<std::string>("only-x", "2", {.policy = write_policy::strict, .tags = {"x"}})
          .ok());
  const std::vector<std::string> tags{"x", "y"};
  ASSERT_TRUE(a.cache->invalidate_tags(tags, tag_match::all).ok());
  EXPECT_EQ(l1_of(a, "both"), "<absent>");
  EXPECT_EQ(l1_of(a, "only-x"), "2");
  ASSERT_TRUE(a.cache->invalidate_tag("x").ok());
  EXPECT_EQ(l1_of(a, "only-x"), "<absent>");
}

TEST_F(RedisCoordinationTest, TagSetsExpireWithTheirKeys) {
  instance a = make();
  ASSERT_TRUE(
      a.cache
          ->set<std::string>("k", "v", {.ttl = 2s, .policy = write_policy::strict, .tags = {"t"}})
          .ok());
  const long long pttl = std::stoll(server_.cli({"PTTL", "co:__lc:tag:t"}));
  EXPECT_GT(pttl, 0) << "a tag set without expiry grows forever";
  EXPECT_LE(pttl, 2000);
}

TEST_F(RedisCoordinationTest, PrefixInvalidationReachesEveryInstance) {
  instance a = make(), b = make();
  const set_options strict{.policy = write_policy::strict};
  ASSERT_TRUE(a.cache->set<std::string>("img:1", "a", strict).ok());
  ASSERT_TRUE(a.cache->set<std::string>("img:2", "b", strict).ok());
  ASSERT_TRUE(a.cache->set<std::string>("doc:1", "c", strict).ok());
  EXPECT_EQ(l1_of(b, "img:1"), "a");
  ASSERT_TRUE(a.cache->invalidate_prefix("img:").ok());
  EXPECT_EQ(l1_of(a, "img:2"), "<absent>");
  EXPECT_TRUE(eventually([&] { return l1_of(b, "img:1") == "<absent>"; }));
  EXPECT_EQ(l1_of(b, "img:2"), "<absent>");
  EXPECT_EQ(l1_of(b, "doc:1"), "c");
}

TEST_F(RedisCoordinationTest, NamespaceRotationInvalidatesEveryInstanceWithoutScanning) {
  instance a = make(), b = make();
  cache_namespace ta = a.cache->ns("tenant:42");
  cache_namespace tb = b.cache->ns("tenant:42");
  cache_namespace nested = ta.ns("carts");
  ASSERT_TRUE(ta.set<std::string>("k", "v1", {.policy = write_policy::strict}).ok());
  ASSERT_TRUE(nested.set<std::string>("c", "cart", {.policy = write_policy::strict}).ok());
  EXPECT_EQ(*tb.get<std::string>("k", [] { return std::string("x"); }), "v1");
  ASSERT_TRUE(tb.rotate().ok());
  EXPECT_EQ(*tb.get<std::string>("k", [] { return std::string("after"); }), "after");
  EXPECT_TRUE(eventually([&] {
    return ta.get_if_present<std::string>("k") == nullptr ||
           *ta.get_if_present<std::string>("k") == "after";
  }));
  EXPECT_EQ(*nested.get<std::string>("c", [] { return std::string("new-cart"); }), "new-cart")
      << "rotating the outer namespace left the nested one";
  // A fresh instance reads the generation from Redis.
  instance c = make();
  EXPECT_EQ(*c.cache->ns("tenant:42").get<std::string>("k", [] { return std::string("y"); }),
            "after");
}

// Found by the chaos benchmark (read-your-writes under write timeouts): A rotated a namespace;
// B, whose traffic was delayed, had not heard of it and wrote under the old generation; once it
// heard, its threads read the new generation, which held A's value, older than B's own write.
// Redis now moves a write under an old generation that is newer than the rotation to the current
// one (older ones belonged to what the rotation dropped), and B reports its writes still on their
// way under the new keys until they land. B reaches Redis through a proxy the tests pause.
class RotationElsewhereTest : public RedisCoordinationTest {
 protected:
  redis_layer_options via_proxy() {
    auto o = options();
    o.url = proxy_.url();
    return o;
  }
  // Whether B has moved on from the generation its key for "k" had when `old` was taken.
  bool b_heard_the_rotation(const std::string& old) {
    return eventually([&] { return nb_.key("k") != old; });
  }

  tcp_fault_proxy proxy_{server_.host(), server_.port()};
  instance b_ = make(via_proxy());
  instance a_ = make();
  cache_namespace na_ = a_.cache->ns("space");
  cache_namespace nb_ = b_.cache->ns("space");
};

TEST_F(RotationElsewhereTest, AWriteIntoANamespaceRotatedBeforeItsWriterHeardIsNotLost) {
  ASSERT_TRUE(na_.set<std::string>("k", "before", {.policy = write_policy::strict}).ok());
  const std::string old_key = nb_.key("k");
  proxy_.pause(true);  // B hears nothing and sends nothing
  ASSERT_TRUE(na_.rotate().ok());
  ASSERT_TRUE(na_.set<std::string>("k", "a-after", {.policy = write_policy::strict}).ok());
  ASSERT_TRUE(nb_.set<std::string>("k", "b-after").ok());  // queued under the old generation
  proxy_.pause(false);
  ASSERT_TRUE(b_heard_the_rotation(old_key)) << "B never heard the rotation";
  EXPECT_EQ(*nb_.get<std::string>("k", [] { return std::string("fetched"); }), "b-after")
      << "B read a value older than its own write";
  ASSERT_TRUE(b_.cache->flush());
  instance c = make();
  EXPECT_EQ(*c.cache->ns("space").get<std::string>("k", [] { return std::string("fetched"); }),
            "b-after");
}

TEST_F(RotationElsewhereTest, AWriteIssuedBeforeTheRotationDoesNotReachTheNewGeneration) {
  const std::string old_key = nb_.key("k");
  proxy_.pause(true);
  ASSERT_TRUE(nb_.set<std::string>("k", "b-before").ok());  // before the rotation, landing after it
  ASSERT_TRUE(na_.rotate().ok());
  proxy_.pause(false);
  ASSERT_TRUE(b_heard_the_rotation(old_key)) << "B never heard the rotation";
  ASSERT_TRUE(b_.cache->flush());
  EXPECT_EQ(*na_.get<std::string>("k", [] { return std::string("fetched"); }), "fetched")
      << "a write the rotation dropped came back in the new generation";
}

TEST_F(RedisCoordinationTest, ClearReachesEveryInstanceAndKeepsNamespaceGenerations) {
  instance a = make(), b = make();
  ASSERT_TRUE(a.cache->ns("n").rotate().ok());
  ASSERT_TRUE(a.cache->set<std::string>("k", "v", {.policy = write_policy::strict}).ok());
  EXPECT_EQ(l1_of(b, "k"), "v");
  ASSERT_TRUE(a.cache->clear().ok());
  EXPECT_TRUE(eventually([&] { return l1_of(b, "k") == "<absent>"; }));
  EXPECT_EQ(server_.cli({"GET", "co:__lc:ns:n"}), "1");
}

TEST_F(RedisCoordinationTest, KilledBusConnectionDropsL1AndResubscribes) {
  instance a = make(), b = make();
  ASSERT_TRUE(a.cache->set<std::string>("k", "v1", {.policy = write_policy::strict}).ok());
  EXPECT_EQ(l1_of(b, "k"), "v1");
  ASSERT_EQ(std::system(("redis-cli -p " + std::to_string(server_.port()) +
                         " CLIENT KILL TYPE pubsub > /dev/null")
                            .c_str()),
            0);
  EXPECT_TRUE(eventually([&] { return b.cache->metrics().bus_resyncs >= 1; }));
  // After the resubscription, invalidations flow again.
  EXPECT_EQ(l1_of(b, "k"), "v1");
  ASSERT_TRUE(a.cache->set<std::string>("k", "v2").ok());
  EXPECT_TRUE(eventually([&] { return l1_of(b, "k") == "v2"; }));
}

TEST_F(RedisCoordinationTest, UnreachableRedisDegradesSingleFlightToTheProcess) {
  auto o = options();
  o.url = "redis://127.0.0.1:1";  // nothing listens there
  o.connect_timeout = 50ms;
  instance a;  // not make(): it would wait for a subscription that cannot happen
  a.l1 = memory_layer::create({});
  a.l2 = redis_layer::create(o);
  a.cache = std::make_unique<cache_stack>(std::vector<std::shared_ptr<layer>>{a.l1, a.l2});
  int calls = 0;
  auto v = a.cache->get<std::string>("k", [&] {
    ++calls;
    return std::string("v");
  });
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(a.cache->metrics().coordination_fallbacks, 1u);
}

TEST_F(RedisCoordinationTest, ReservedKeysAreRefused) {
  instance a = make();
  EXPECT_THROW((void)a.cache->set<std::string>("__lc:lease:x", "v"), invalid_argument_error);
  EXPECT_THROW((void)a.cache->get<std::string>("__lc:x", [] { return std::string("v"); }),
               invalid_argument_error);
}

#if LAYERCACHE_TEST_WITH_DISK
TEST_F(RedisCoordinationTest, ADiskCopyOlderThanADeleteElsewhereIsNotServed) {
  temp_dir dir;
  const std::string disk_dir = (dir.path() / "disk").string();
  auto stack_with_disk = [&] {
    return std::make_unique<cache_stack>(std::vector<std::shared_ptr<layer>>{
        memory_layer::create({}), redis_layer::create(options()),
        disk_layer::create({.directory = disk_dir})});
  };
  {
    auto b = stack_with_disk();
    (void)b->get<std::string>("k", [] { return std::string("old"); });
    ASSERT_TRUE(b->flush());
  }  // B is gone (not listening) while A deletes the key
  instance a = make();
  ASSERT_TRUE(a.cache->del("k").ok());
  ASSERT_TRUE(a.cache->flush());
  auto b = stack_with_disk();
  int fetched = 0;
  auto v = b->get<std::string>("k", [&] {
    ++fetched;
    return std::string("new");
  });
  EXPECT_EQ(*v, "new") << "B served its disk copy of a key deleted while it was away";
  EXPECT_EQ(fetched, 1);
}
#endif

}  // namespace
}  // namespace layercache::test
