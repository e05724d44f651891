// The Redis coordinator (src/redis/redis_coordinator.cpp) under skewed clocks, an open write
// breaker, failing write scripts and bus sequence restarts, driven through its internal interface
// (detail::coordinator) against a real redis-server. Each case forces its situation directly:
// versions are given explicitly (a host whose clock runs ahead), the write breaker is opened by a
// script error (a value key of the wrong type), a sequence key is deleted or bumped in Redis, and
// time passes on a fake clock. Every wait is bounded (support/await.hpp).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/coordinator.hpp"
#include "layercache/detail/envelope.hpp"
#include "layercache/redis_layer.hpp"
#include "redis/bus_message.hpp"
#include "redis/redis_coordinator.hpp"
#include "support/await.hpp"
#include "support/fake_clock.hpp"
#include "support/redis_server.hpp"

namespace layercache::test {
namespace {

using namespace std::chrono_literals;
using detail::coordinated_write;

// An envelope of `version` (no expiry) with a payload of `payload_bytes`.
std::string envelope(std::uint64_t version, std::size_t payload_bytes = 8) {
  detail::envelope_header h;
  h.version = version;
  return detail::encode_envelope(h, {}, std::string(payload_bytes, 'v'));
}

coordinated_write value_write(coordinated_write::kind type, std::string_view key,
                              std::string_view bytes, std::span<const std::string> tags = {},
                              std::string_view lease = {}) {
  coordinated_write w;
  w.type = type;
  w.key = key;
  w.bytes = bytes;
  w.tags = tags;
  w.lease = lease;
  return w;
}

// Counts what the bus delivers.
class counting_listener final : public detail::bus_listener {
 public:
  void on_keys(std::span<const std::string>) override {}
  void on_tags(std::span<const std::string>, bool, std::span<const std::string>,
               std::uint64_t) override {}
  void on_prefix(std::string_view, std::uint64_t) override {}
  void on_clear(std::uint64_t) override { clears.fetch_add(1); }
  void on_rotate(std::string_view, std::uint64_t) override {}
  void on_lost(std::string_view) override { lost.fetch_add(1); }
  void on_down() override {}

  std::atomic<int> clears{0};
  std::atomic<int> lost{0};
};

class RedisCoordinatorFaultsTest : public ::testing::Test {
 protected:
  redis_server server_;

  redis_layer_options options() {
    redis_layer_options o;
    o.url = server_.url();
    o.prefix = "co:";
    o.connect_timeout = 500ms;
    o.read_deadline = 500ms;  // sanitizer runs: nothing here is about deadlines
    o.write_deadline = 500ms;
    return o;
  }

  static detail::coordinator& coord(redis_layer& l) {
    detail::coordinator* c = l.coordination();
    if (c == nullptr) throw std::runtime_error("the layer does not coordinate");
    return *c;
  }

  bool is_tombstone_in_redis(const std::string& key) {
    return redis_detail::is_tombstone(server_.cli({"GET", "co:" + key}));
  }
  bool lease_exists(const std::string& key) {
    return server_.cli({"EXISTS", "co:__lc:lease:" + key}) == "1";
  }

  // Publishes a bus message as `origin` would, bypassing its sequence key.
  void publish(std::uint64_t origin, std::uint64_t seq) {
    redis_detail::bus_message m;
    m.origin = origin;
    m.seq = seq;
    m.op = 'c';
    server_.cli({"PUBLISH", "co:__lc:bus", redis_detail::format_bus_message(m)});
  }
};

// ---- tag invalidation and clock skew (defect 4) -------------------------------------------------

TEST_F(RedisCoordinatorFaultsTest, AKeyNewerThanATagInvalidationStaysInTheTagForTheNextOne) {
  auto layer = redis_layer::create(options());
  detail::coordinator& c = coord(*layer);
  const std::vector<std::string> tags{"t"};
  // "ahead" was written by a host whose clock runs ahead of the invalidating one; "behind" is older
  // than the invalidation.
  const std::string ahead = envelope(5000), behind = envelope(100);
  const coordinated_write writes[] = {
      value_write(coordinated_write::kind::set, "ahead", ahead, tags),
      value_write(coordinated_write::kind::set, "behind", behind, tags)};
  ASSERT_TRUE(c.write(writes).error.ok());

  std::vector<std::string> removed;
  ASSERT_TRUE(c.invalidate_tags(tags, /*all=*/false, 1000, removed).ok());
  EXPECT_FALSE(is_tombstone_in_redis("ahead"))
      << "a newer value was deleted by an older invalidation";
  EXPECT_TRUE(is_tombstone_in_redis("behind"));
  EXPECT_EQ(server_.cli({"SISMEMBER", "co:__lc:tag:t", "ahead"}), "1")
      << "the surviving key left its tag";
  EXPECT_EQ(server_.cli({"SISMEMBER", "co:__lc:tag:t", "behind"}), "0");

  removed.clear();
  ASSERT_TRUE(c.invalidate_tags(tags, /*all=*/false, 9000, removed).ok());
  EXPECT_TRUE(is_tombstone_in_redis("ahead")) << "the second invalidation missed the key";
  EXPECT_EQ(removed, std::vector<std::string>{"ahead"});
  EXPECT_EQ(server_.cli({"EXISTS", "co:__lc:tag:t"}), "0");
}

TEST_F(RedisCoordinatorFaultsTest, AKeyNewerThanAnAllTagsInvalidationStaysInEveryTag) {
  auto layer = redis_layer::create(options());
  detail::coordinator& c = coord(*layer);
  const std::vector<std::string> tags{"t", "u"};
  const std::string ahead = envelope(5000), behind = envelope(100);
  const coordinated_write writes[] = {
      value_write(coordinated_write::kind::set, "ahead", ahead, tags),
      value_write(coordinated_write::kind::set, "behind", behind, tags)};
  ASSERT_TRUE(c.write(writes).error.ok());

  std::vector<std::string> removed;
  ASSERT_TRUE(c.invalidate_tags(tags, /*all=*/true, 1000, removed).ok());
  EXPECT_FALSE(is_tombstone_in_redis("ahead"));
  EXPECT_TRUE(is_tombstone_in_redis("behind"));
  for (const char* t : {"co:__lc:tag:t", "co:__lc:tag:u"}) {
    EXPECT_EQ(server_.cli({"SISMEMBER", t, "ahead"}), "1") << t;
    EXPECT_EQ(server_.cli({"SISMEMBER", t, "behind"}), "0") << t;
  }

  removed.clear();
  ASSERT_TRUE(c.invalidate_tags(tags, /*all=*/true, 9000, removed).ok());
  EXPECT_TRUE(is_tombstone_in_redis("ahead")) << "the second invalidation missed the key";
  EXPECT_EQ(removed, std::vector<std::string>{"ahead"});
}

// ---- leases of writes that do not run (defect 9)
// -------------------------------------------------

TEST_F(RedisCoordinatorFaultsTest, AFillRefusedByAnOpenWriteBreakerGivesItsLeaseBack) {
  auto o = options();
  o.breaker_failures = 1;
  o.breaker_open_for = 60s;  // stays open for the whole test
  o.lease_ttl = 600ms;       // renewed every 200 ms while held
  auto a = redis_layer::create(o);
  o.breaker_failures = 5;
  auto b = redis_layer::create(o);

  detail::lease_answer lease = coord(*a).acquire("k", false);
  ASSERT_EQ(lease.type, detail::lease_answer::kind::granted) << lease.error.message();

  // A value key of the wrong type makes the write script fail: one failure opens the breaker.
  server_.cli({"HSET", "co:bad", "f", "v"});
  const std::string bytes = envelope(10);
  const coordinated_write bad[] = {value_write(coordinated_write::kind::set, "bad", bytes)};
  ASSERT_FALSE(coord(*a).write(bad).error.ok());
  const coordinated_write refused[] = {value_write(coordinated_write::kind::set, "x", bytes)};
  const status open = coord(*a).write(refused).error;
  ASSERT_EQ(open.code(), errc::unavailable) << open.message();

  const coordinated_write fill[] = {
      value_write(coordinated_write::kind::fill, "k", bytes, {}, lease.token)};
  EXPECT_FALSE(coord(*a).write(fill).error.ok());
  // Not renewed any more, and given back: gone well before lease_ttl would pass three times.
  EXPECT_TRUE(eventually([&] { return !lease_exists("k"); }, 3 * o.lease_ttl))
      << "the lease of the refused fill is still held (renewed)";
  detail::lease_answer other = coord(*b).acquire("k", false);
  EXPECT_EQ(other.type, detail::lease_answer::kind::granted) << "another instance still waits";
}

TEST_F(RedisCoordinatorFaultsTest, ALeaseCarriedByAFailedWriteScriptIsReleasedAtOnce) {
  auto o = options();
  o.lease_ttl = 30s;  // expiry cannot be what frees it within the test
  auto a = redis_layer::create(o);
  detail::lease_answer lease = coord(*a).acquire("k", false);
  ASSERT_EQ(lease.type, detail::lease_answer::kind::granted) << lease.error.message();

  // The script fails on "bad" before it reaches the fill of "k".
  server_.cli({"HSET", "co:bad", "f", "v"});
  const std::string bytes = envelope(10);
  const coordinated_write batch[] = {
      value_write(coordinated_write::kind::set, "bad", bytes),
      value_write(coordinated_write::kind::fill, "k", bytes, {}, lease.token)};
  ASSERT_FALSE(coord(*a).write(batch).error.ok());
  EXPECT_TRUE(eventually([&] { return !lease_exists("k"); }, 5s))
      << "the lease stays held until it expires";
}

TEST_F(RedisCoordinatorFaultsTest, AnOversizeFillTombstonesAndReleasesItsLeaseInOneStep) {
  auto o = options();
  o.max_value_bytes = 256;
  o.lease_ttl = 30s;
  auto a = redis_layer::create(o);
  const std::string old = envelope(5);
  const coordinated_write first[] = {value_write(coordinated_write::kind::set, "k", old)};
  ASSERT_TRUE(coord(*a).write(first).error.ok());
  server_.cli({"DEL", "co:k"});  // a miss again, so the lease is granted
  detail::lease_answer lease = coord(*a).acquire("k", false);
  ASSERT_EQ(lease.type, detail::lease_answer::kind::granted);
  server_.cli({"SET", "co:k", old});  // an older copy that the tombstone must replace

  const std::string big = envelope(10, 1024);
  const coordinated_write fill[] = {
      value_write(coordinated_write::kind::fill, "k", big, {}, lease.token)};
  EXPECT_EQ(coord(*a).write(fill).error.code(), errc::resource_exhausted);
  // Both in the write script itself: nothing to wait for.
  EXPECT_TRUE(is_tombstone_in_redis("k"));
  EXPECT_FALSE(lease_exists("k"));
}

// ---- bus sequences (defect 14)
// -------------------------------------------------------------------

TEST_F(RedisCoordinatorFaultsTest, ASequenceThatRestartsAfterItsKeyExpiredIsNotALoss) {
  auto a = redis_layer::create(options());
  auto b = redis_layer::create(options());
  counting_listener heard;
  coord(*b).listen(&heard);
  ASSERT_TRUE(eventually([&] { return coord(*b).bus_up(); }));

  ASSERT_TRUE(coord(*a).announce_clear(1).ok());
  ASSERT_TRUE(coord(*a).announce_clear(2).ok());
  // A's sequence key expires (24 h without a message): its counter starts again at 1.
  server_.cli({"DEL", "co:__lc:seq:" + std::to_string(coord(*a).origin())});
  ASSERT_TRUE(coord(*a).announce_clear(3).ok());
  ASSERT_TRUE(eventually([&] { return heard.clears.load() == 3; }));
  EXPECT_EQ(heard.lost.load(), 0) << "a restarted sequence was taken for lost messages";
  coord(*b).unlisten(&heard);
}

TEST_F(RedisCoordinatorFaultsTest, AGapInASequenceIsStillALoss) {
  auto a = redis_layer::create(options());
  auto b = redis_layer::create(options());
  counting_listener heard;
  coord(*b).listen(&heard);
  ASSERT_TRUE(eventually([&] { return coord(*b).bus_up(); }));

  ASSERT_TRUE(coord(*a).announce_clear(1).ok());
  ASSERT_TRUE(coord(*a).announce_clear(2).ok());
  // A message of A's that B never got.
  server_.cli({"INCR", "co:__lc:seq:" + std::to_string(coord(*a).origin())});
  ASSERT_TRUE(coord(*a).announce_clear(3).ok());
  ASSERT_TRUE(eventually([&] { return heard.clears.load() == 3; }));
  EXPECT_EQ(heard.lost.load(), 1);
  coord(*b).unlisten(&heard);
}

TEST_F(RedisCoordinatorFaultsTest, OriginsSilentLongerThanTheirSequenceKeyAreForgotten) {
  auto clock = std::make_shared<fake_clock>();
  auto o = options();
  o.clock = clock;
  auto b = redis_layer::create(o);
  counting_listener heard;
  coord(*b).listen(&heard);
  ASSERT_TRUE(eventually([&] { return coord(*b).bus_up(); }));

  constexpr int origins = 50;
  for (int i = 1; i <= origins; ++i) publish(static_cast<std::uint64_t>(i) * 2 + 1, 7);
  ASSERT_TRUE(eventually([&] { return heard.clears.load() == origins; }));
  EXPECT_EQ(redis_detail::bus_origins_tracked(coord(*b)), static_cast<std::size_t>(origins));

  // A day and an hour without a word from them: their sequence keys are gone in Redis.
  clock->advance(25h);
  publish(1001, 1);
  ASSERT_TRUE(eventually([&] { return heard.clears.load() == origins + 1; }));
  EXPECT_EQ(redis_detail::bus_origins_tracked(coord(*b)), 1u) << "silent origins are remembered";
  // A forgotten origin comes back with a fresh sequence: not a loss.
  publish(3, 1);
  // The remembered one still has its gaps detected.
  publish(1001, 3);
  ASSERT_TRUE(eventually([&] { return heard.clears.load() == origins + 3; }));
  EXPECT_EQ(heard.lost.load(), 1);
  coord(*b).unlisten(&heard);
}

}  // namespace
}  // namespace layercache::test
