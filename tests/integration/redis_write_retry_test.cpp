// redis_write_retry_test.cpp — background writes that fail during a short Redis outage are
// retried until they land (issue 9, defect 13), against a REAL redis-server behind the TCP fault
// proxy: a set and a del made while Redis is blackholed reach Redis once it answers again, with
// no further call, and another instance (its own redis_layer on the same server) then reads the
// new value or misses. Also: del's per-call write_policy::strict.
//
// Every wait is bounded (k_bound). The outage lasts at least `outage` by design (that is the
// scenario, not a synchronisation): the write is attempted, fails, and must be retried after it.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/memory_layer.hpp"
#include "layercache/redis_layer.hpp"
#include "support/await.hpp"
#include "support/redis_server.hpp"
#include "support/sync_redis.hpp"
#include "support/tcp_fault_proxy.hpp"

namespace layercache::test {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

constexpr auto k_bound = 10s;
constexpr auto outage = 600ms;
const std::string prefix = "wr:";

bool is_tombstone(const std::optional<std::string>& b) {
  return b && b->size() == 10 && static_cast<unsigned char>((*b)[0]) == 0xA7 &&
         static_cast<unsigned char>((*b)[1]) == 0xFE;
}

class RedisWriteRetryTest : public ::testing::Test {
 protected:
  redis_server server_;
  tcp_fault_proxy proxy_{server_.host(), server_.port()};
  sync_redis direct_{server_.host(), server_.port(), 2s};

  redis_layer_options options(std::string url) {
    redis_layer_options o;
    o.url = std::move(url);
    o.prefix = prefix;
    o.connect_timeout = 100ms;
    o.read_deadline = 100ms;
    o.write_deadline = 100ms;
    return o;
  }
  // The instance whose Redis goes away (through the proxy), and a second one that keeps it.
  std::unique_ptr<cache_stack> writer() {
    return std::make_unique<cache_stack>(
        std::vector<std::shared_ptr<layer>>{memory_layer::create({}),
                                            redis_layer::create(options(proxy_.url()))},
        stack_options{.on_event =
                          [this](const event& e) {
                            if (e.type == event_type::layer_error) ++errors_;
                          },
                      .shutdown_flush_timeout = 500ms});
  }
  std::unique_ptr<cache_stack> other() {
    return std::make_unique<cache_stack>(std::vector<std::shared_ptr<layer>>{
        memory_layer::create({}), redis_layer::create(options(server_.url()))});
  }
  std::optional<std::string> in_redis(const std::string& key) {
    return direct_.command({"GET", prefix + key});
  }
  static std::string read(cache_stack& c, const std::string& key) {
    return *c.get<std::string>(key, [] { return std::string("fetched"); });
  }

  std::atomic<int> errors_{0};
};

TEST_F(RedisWriteRetryTest, SetDuringAShortOutageReachesRedisOnceItAnswersAgain) {
  auto a = writer();
  auto b = other();
  ASSERT_TRUE(a->set<std::string>("k", "old-value", {.policy = write_policy::strict}).ok());
  ASSERT_EQ(read(*b, "k"), "old-value");  // b's L1 holds the old value now

  const auto start = steady::now();
  proxy_.blackhole(true);
  ASSERT_TRUE(a->set<std::string>("k", "new-value").ok());  // best effort: queued
  ASSERT_TRUE(eventually([&] { return errors_.load() >= 1; }, k_bound))
      << "the write never failed: the outage did not happen";
  EXPECT_EQ(read(*a, "k"), "new-value") << "read-your-writes while the write awaits a retry";
  std::this_thread::sleep_until(start + outage);
  proxy_.blackhole(false);

  // No further call: the retried write lands.
  EXPECT_TRUE(eventually(
      [&] {
        auto v = in_redis("k");
        return v && !is_tombstone(v) && v->find("new-value") != std::string::npos;
      },
      k_bound))
      << "Redis still holds the old value after the outage";
  EXPECT_TRUE(eventually([&] { return read(*b, "k") == "new-value"; }, k_bound))
      << "the other instance still serves the old value";
  auto c = other();  // a new instance
  EXPECT_EQ(read(*c, "k"), "new-value");
}

TEST_F(RedisWriteRetryTest, DeleteDuringAShortOutageLeavesATombstoneOnceRedisAnswersAgain) {
  auto a = writer();
  auto b = other();
  ASSERT_TRUE(a->set<std::string>("k", "old-value", {.policy = write_policy::strict}).ok());
  ASSERT_EQ(read(*b, "k"), "old-value");

  const auto start = steady::now();
  proxy_.blackhole(true);
  ASSERT_TRUE(a->del("k").ok());
  ASSERT_TRUE(eventually([&] { return errors_.load() >= 1; }, k_bound));
  // (No fetch here: a fill would be newer than the delete and rightly replace it in Redis.)
  EXPECT_EQ(a->get_if_present<std::string>("k"), nullptr)
      << "the deleted value came back while the delete waits";
  std::this_thread::sleep_until(start + outage);
  proxy_.blackhole(false);

  EXPECT_TRUE(eventually([&] { return is_tombstone(in_redis("k")); }, k_bound))
      << "the old value outlived the delete in Redis";
  EXPECT_TRUE(eventually([&] { return read(*b, "k") == "fetched"; }, k_bound))
      << "the other instance still serves the deleted value";
  auto c = other();
  EXPECT_EQ(read(*c, "k"), "fetched");
}

TEST_F(RedisWriteRetryTest, StrictDeleteReportsTheOutageAndIsRetriedAfterIt) {
  auto a = writer();
  ASSERT_TRUE(a->set<std::string>("k", "old-value", {.policy = write_policy::strict}).ok());
  // Healthy: the strict delete has reached Redis when it returns.
  ASSERT_TRUE(a->set<std::string>("j", "v", {.policy = write_policy::strict}).ok());
  const status healthy = a->del("j", {.policy = write_policy::strict});
  EXPECT_TRUE(healthy.ok()) << healthy.message();
  EXPECT_TRUE(is_tombstone(in_redis("j"))) << "strict del returned before Redis had it";

  const auto start = steady::now();
  proxy_.blackhole(true);
  const status failed = a->del("k", {.policy = write_policy::strict});
  EXPECT_FALSE(failed.ok()) << "the strict caller was not told of the outage";
  ASSERT_FALSE(failed.failures().empty());
  EXPECT_EQ(failed.failures().front().layer, "redis");
  std::this_thread::sleep_until(start + outage);
  proxy_.blackhole(false);
  EXPECT_TRUE(eventually([&] { return is_tombstone(in_redis("k")); }, k_bound))
      << "a strict delete that failed was not retried";
}

}  // namespace
}  // namespace layercache::test
