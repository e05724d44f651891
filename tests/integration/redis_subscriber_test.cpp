// Integration tests of the pub/sub subscriber (src/redis/subscriber.*) against a real
// redis-server, directly and through a tcp_fault_proxy: delivery order, binary and large payloads,
// several channels, loss reporting and resubscription after a killed connection, a server restart
// or a silent network, a server down at start, authentication (including recovery after a refused
// AUTH), health PINGs and prompt shutdown. Messages are published with the ordinary redis_client.
// Every wait is bounded and waits for a condition; timing assertions allow slack.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "layercache/error.hpp"
#include "redis/hiredis_client.hpp"
#include "redis/redis_client.hpp"
#include "redis/subscriber.hpp"
#include "support/await.hpp"
#include "support/free_port.hpp"
#include "support/redis_server.hpp"
#include "support/tcp_fault_proxy.hpp"

namespace layercache::redis_detail {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using test::eventually;
using test::redis_server;
using test::redis_server_options;
using test::tcp_fault_proxy;

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr auto k_slack = 400ms;  // sanitizers slow everything down, the scheduler included
#else
constexpr auto k_slack = 150ms;  // a loaded 2-core CI machine still wakes us within this
#endif
// For bounds whose failure mode is seconds long (a 10 s backoff or health wait not interrupted):
// generous, so a loaded machine cannot fail them (issue #9 defect 16), yet far below the failure.
constexpr auto k_backstop = 1s;

subscriber_options options_for(const std::string& url,
                               std::vector<std::string> channels = {"inv"}) {
  subscriber_options o;
  o.url = url;
  o.channels = std::move(channels);
  o.connect_timeout = 500ms;  // generous: sanitizer builds on a busy machine
  o.reconnect_min = 10ms;
  o.reconnect_max = 100ms;  // keeps "resubscribes within a bounded time" short in tests
  return o;
}

std::unique_ptr<redis_client> publisher_for(const std::string& url) {
  client_options o;
  o.url = url;
  o.connections = 1;
  o.connect_timeout = 500ms;
  o.reconnect_min = 10ms;
  o.reconnect_max = 100ms;
  return make_hiredis_client(o);
}

// PUBLISH and return how many subscribers received the message (fails the test on error).
long long publish(redis_client& c, std::string_view channel, std::string_view payload) {
  const result r = c.execute({"PUBLISH", channel, payload}, 5s);
  EXPECT_TRUE(r.error.ok()) << r.error.message();
  EXPECT_EQ(r.value.type, reply::kind::integer);
  return r.value.integer;
}

struct message {
  std::string channel;
  std::string payload;
  bool operator==(const message&) const = default;
};

// Everything the callbacks saw, in order: "up" / "down" for states, "msg:<payload>" for messages
// (channel and payload are kept separately in messages()).
class recorder {
 public:
  subscriber::message_fn on_message() {
    return [this](std::string_view channel, std::string_view payload) {
      std::lock_guard lk(mu_);
      events_.push_back("msg:" + std::string(payload));
      messages_.push_back({std::string(channel), std::string(payload)});
    };
  }
  subscriber::state_fn on_state() {
    return [this](bool up) {
      std::lock_guard lk(mu_);
      events_.emplace_back(up ? "up" : "down");
    };
  }
  std::vector<std::string> events() const {
    std::lock_guard lk(mu_);
    return events_;
  }
  std::vector<message> messages() const {
    std::lock_guard lk(mu_);
    return messages_;
  }
  std::size_t message_count() const {
    std::lock_guard lk(mu_);
    return messages_.size();
  }
  std::size_t event_count() const {
    std::lock_guard lk(mu_);
    return events_.size();
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> events_;
  std::vector<message> messages_;
};

std::string describe(const std::vector<std::string>& events) {
  std::string out;
  for (const std::string& e : events) {
    out += e.size() > 40 ? e.substr(0, 40) + "..." : e;
    out += ' ';
  }
  return out;
}

// PINGs the server has answered since it started (every client's, ours included).
long ping_calls(const redis_server& redis) {
  const std::string stats = redis.cli({"INFO", "commandstats"});
  const std::size_t at = stats.find("cmdstat_ping:calls=");
  if (at == std::string::npos) return 0L;
  return std::stol(stats.substr(at + 19));
}

// ---- construction -------------------------------------------------------------------------------

TEST(RedisSubscriberTest, InvalidOptionsThrowInvalidArgumentNamingTheField) {
  const auto noop_message = [](std::string_view, std::string_view) {};
  const auto expect_invalid = [&](const subscriber_options& o, const std::string& needle) {
    try {
      subscriber s(o, noop_message, nullptr);
      ADD_FAILURE() << "no exception; expected one naming " << needle;
    } catch (const invalid_argument_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::string url = "redis://127.0.0.1:1";
  subscriber_options o = options_for(url);
  o.url.clear();
  expect_invalid(o, "url");
  o = options_for(url, {});
  expect_invalid(o, "channels");
  o = options_for(url);
  o.connect_timeout = 0ms;
  expect_invalid(o, "connect_timeout");
  o = options_for(url);
  o.reconnect_min = 0ms;
  expect_invalid(o, "reconnect_min");
  o = options_for(url);
  o.reconnect_max = 5ms;
  expect_invalid(o, "reconnect_max");
  o = options_for(url);
  o.health_interval = -1ms;
  expect_invalid(o, "health_interval");
  expect_invalid(options_for("redis://127.0.0.1"), "port");
  EXPECT_THROW(subscriber(options_for("rediss://127.0.0.1:6379"), noop_message, nullptr),
               invalid_argument_error);
  EXPECT_THROW(subscriber(options_for(url), nullptr, nullptr), invalid_argument_error);
}

TEST(RedisSubscriberTest, IsSubscribedToEveryChannelWhenConstructionReturns) {
  redis_server redis;
  recorder rec;
  subscriber sub(options_for(redis.url(), {"a", "b"}), rec.on_message(), rec.on_state());
  EXPECT_TRUE(sub.subscribed());
  EXPECT_TRUE(eventually([&] { return rec.event_count() == 1; }));
  EXPECT_EQ(rec.events(), std::vector<std::string>{"up"});
  EXPECT_EQ(redis.cli({"PUBSUB", "NUMSUB", "a", "b"}), "a\n1\nb\n1");
  const subscriber_stats s = sub.stats();
  EXPECT_EQ(s.connects, 1u);
  EXPECT_EQ(s.disconnects, 0u);
  EXPECT_EQ(s.messages, 0u);
  EXPECT_TRUE(sub.last_error().ok()) << sub.last_error().message();
}

// ---- delivery -----------------------------------------------------------------------------------

TEST(RedisSubscriberTest, DeliversMessagesInPublishOrder) {
  redis_server redis;
  recorder rec;
  subscriber sub(options_for(redis.url()), rec.on_message(), rec.on_state());
  ASSERT_TRUE(sub.subscribed());
  auto pub = publisher_for(redis.url());
  constexpr int k_count = 2000;
  // Pipelined from one connection, so Redis receives (and fans out) them in this order.
  std::vector<std::vector<std::string>> batch;
  for (int i = 0; i < k_count; ++i) {
    batch.push_back({"PUBLISH", "inv", "m" + std::to_string(i)});
    if (batch.size() == 100) {
      for (const result& r : pub->execute_pipeline(batch, 5s)) {
        ASSERT_TRUE(r.error.ok()) << r.error.message();
        ASSERT_EQ(r.value.integer, 1);
      }
      batch.clear();
    }
  }
  ASSERT_TRUE(eventually([&] { return rec.message_count() == k_count; })) << rec.message_count();
  const std::vector<message> got = rec.messages();
  for (int i = 0; i < k_count; ++i) {
    ASSERT_EQ(got[static_cast<std::size_t>(i)], (message{"inv", "m" + std::to_string(i)})) << i;
  }
  EXPECT_EQ(sub.stats().messages, static_cast<std::uint64_t>(k_count));
}

TEST(RedisSubscriberTest, DeliversEachMessageWithItsChannelAndNothingFromOtherChannels) {
  redis_server redis;
  recorder rec;
  const std::string binary_channel("inv\0\r\nbin", 9);
  subscriber sub(options_for(redis.url(), {"a", "b", binary_channel}), rec.on_message(),
                 rec.on_state());
  ASSERT_TRUE(sub.subscribed());
  auto pub = publisher_for(redis.url());
  EXPECT_EQ(publish(*pub, "a", "1"), 1);
  EXPECT_EQ(publish(*pub, "other", "ignored"), 0);
  EXPECT_EQ(publish(*pub, binary_channel, "2"), 1);
  EXPECT_EQ(publish(*pub, "b", "3"), 1);
  ASSERT_TRUE(eventually([&] { return rec.message_count() == 3; }));
  const std::vector<message> want{{"a", "1"}, {binary_channel, "2"}, {"b", "3"}};
  EXPECT_EQ(rec.messages(), want);
  EXPECT_EQ(sub.stats().messages, 3u);
}

TEST(RedisSubscriberTest, DeliversBinaryAndLargePayloads) {
  redis_server redis;
  recorder rec;
  subscriber sub(options_for(redis.url()), rec.on_message(), rec.on_state());
  ASSERT_TRUE(sub.subscribed());
  auto pub = publisher_for(redis.url());

  std::string every_byte;
  for (int round = 0; round < 4; ++round) {
    for (int b = 0; b < 256; ++b) every_byte.push_back(static_cast<char>(b));
  }
  every_byte += "\r\n*3\r\n$7\r\nmessage\r\n";  // RESP-looking bytes inside a payload
  std::string large(std::size_t{1024} * 1024, '\0');
  std::mt19937 rng(42);
  for (char& c : large) c = static_cast<char>(rng());
  const std::vector<std::string> payloads{every_byte, std::string(), large, std::string("\0", 1),
                                          "after-large"};
  for (const std::string& p : payloads) ASSERT_EQ(publish(*pub, "inv", p), 1);

  ASSERT_TRUE(eventually([&] { return rec.message_count() == payloads.size(); }))
      << rec.message_count();
  const std::vector<message> got = rec.messages();
  for (std::size_t i = 0; i < payloads.size(); ++i) {
    EXPECT_EQ(got[i].channel, "inv");
    EXPECT_EQ(got[i].payload.size(), payloads[i].size()) << i;
    EXPECT_TRUE(got[i].payload == payloads[i]) << "payload " << i << " differs";
  }
  EXPECT_EQ(sub.stats().disconnects, 0u);
}

TEST(RedisSubscriberTest, ThrowingCallbacksDoNotStopDelivery) {
  redis_server redis;
  std::atomic<int> seen{0};
  subscriber sub(
      options_for(redis.url()),
      [&](std::string_view, std::string_view) {
        ++seen;
        throw std::runtime_error("callback bug");
      },
      [](bool) { throw std::runtime_error("callback bug"); });
  ASSERT_TRUE(sub.subscribed());
  auto pub = publisher_for(redis.url());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(publish(*pub, "inv", "x"), 1);
  EXPECT_TRUE(eventually([&] { return seen.load() == 3; }));
  EXPECT_TRUE(sub.subscribed());
  EXPECT_EQ(sub.stats().disconnects, 0u);
}

// ---- losses and recovery ------------------------------------------------------------------------

TEST(RedisSubscriberTest, ReportsLossAndResubscribesAfterConnectionKilled) {
  redis_server redis;
  recorder rec;
  subscriber sub(options_for(redis.url()), rec.on_message(), rec.on_state());
  ASSERT_TRUE(sub.subscribed());
  auto pub = publisher_for(redis.url());
  ASSERT_EQ(publish(*pub, "inv", "before"), 1);
  ASSERT_TRUE(eventually([&] { return rec.message_count() == 1; }));

  // Only pub/sub connections are killed: the publisher's connection survives.
  EXPECT_EQ(redis.cli({"CLIENT", "KILL", "TYPE", "pubsub"}), "1");
  ASSERT_TRUE(eventually([&] { return sub.stats().disconnects == 1; }, 5s));
  ASSERT_TRUE(eventually([&] { return sub.subscribed(); }, 5s));
  // Subscribed again: the confirmation came back, so the next PUBLISH reaches us.
  ASSERT_EQ(publish(*pub, "inv", "after"), 1);
  ASSERT_TRUE(eventually([&] { return rec.message_count() == 2; }));

  const std::vector<std::string> want{"up", "msg:before", "down", "up", "msg:after"};
  EXPECT_EQ(rec.events(), want) << describe(rec.events());
  const subscriber_stats s = sub.stats();
  EXPECT_EQ(s.connects, 2u);
  EXPECT_EQ(s.disconnects, 1u);
  EXPECT_EQ(s.messages, 2u);
  EXPECT_EQ(sub.last_error().code(), errc::unavailable) << sub.last_error().message();
}

TEST(RedisSubscriberTest, ReportsLossAndRecoversAfterServerRestart) {
  redis_server redis;
  recorder rec;
  subscriber sub(options_for(redis.url()), rec.on_message(), rec.on_state());
  ASSERT_TRUE(sub.subscribed());

  redis.kill();
  ASSERT_TRUE(eventually([&] { return !sub.subscribed(); }, 5s));
  ASSERT_TRUE(eventually([&] { return rec.event_count() == 2; }));
  EXPECT_EQ(rec.events().back(), "down");
  EXPECT_EQ(sub.last_error().code(), errc::unavailable);

  const auto restarted = steady::now();
  redis.start();
  // Bounded: reconnect_max (100 ms) + jitter + connect; 5 s leaves room for a loaded machine.
  ASSERT_TRUE(eventually([&] { return sub.subscribed(); }, 5s));
  EXPECT_LT(steady::now() - restarted, 5s);
  auto pub = publisher_for(redis.url());
  ASSERT_EQ(publish(*pub, "inv", "after-restart"), 1);
  ASSERT_TRUE(eventually([&] { return rec.message_count() == 1; }));
  const std::vector<std::string> want{"up", "down", "up", "msg:after-restart"};
  EXPECT_EQ(rec.events(), want) << describe(rec.events());
  EXPECT_EQ(sub.stats().connects, 2u);
  EXPECT_EQ(sub.stats().disconnects, 1u);
}

TEST(RedisSubscriberTest, StartsUnsubscribedWhenServerIsDownAndSubscribesWhenItComesUp) {
  redis_server redis;
  redis.stop();
  recorder rec;
  const auto before = steady::now();
  subscriber sub(options_for(redis.url()), rec.on_message(), rec.on_state());
  EXPECT_LT(steady::now() - before, 500ms + k_backstop);  // bounded by connect_timeout
  EXPECT_FALSE(sub.subscribed());
  EXPECT_EQ(sub.last_error().code(), errc::unavailable);
  EXPECT_NE(sub.last_error().message().find(std::to_string(redis.port())), std::string::npos)
      << sub.last_error().message();

  redis.start();
  ASSERT_TRUE(eventually([&] { return sub.subscribed(); }, 5s));
  auto pub = publisher_for(redis.url());
  ASSERT_EQ(publish(*pub, "inv", "hello"), 1);
  ASSERT_TRUE(eventually([&] { return rec.message_count() == 1; }));
  // Failed attempts report nothing: the state was already "not subscribed".
  const std::vector<std::string> want{"up", "msg:hello"};
  EXPECT_EQ(rec.events(), want) << describe(rec.events());
  EXPECT_EQ(sub.stats().connects, 1u);
  EXPECT_EQ(sub.stats().disconnects, 0u);
}

TEST(RedisSubscriberTest, DeclaresASilentConnectionDeadAfterThreeHealthIntervals) {
  redis_server redis;
  tcp_fault_proxy proxy(redis.host(), redis.port());
  recorder rec;
  subscriber_options o = options_for(proxy.url());
  o.health_interval = 100ms;
  subscriber sub(o, rec.on_message(), rec.on_state());
  ASSERT_TRUE(sub.subscribed());

  // The network swallows everything and closes nothing: only the health check can notice.
  proxy.blackhole(true);
  ASSERT_TRUE(eventually([&] { return !sub.subscribed(); }, 5s));
  EXPECT_EQ(sub.stats().disconnects, 1u);
  EXPECT_NE(sub.last_error().message().find("300 ms"), std::string::npos)
      << sub.last_error().message();

  proxy.blackhole(false);
  ASSERT_TRUE(eventually([&] { return sub.subscribed(); }, 5s));
  auto pub = publisher_for(redis.url());
  ASSERT_EQ(publish(*pub, "inv", "back"), 1);
  ASSERT_TRUE(eventually([&] { return rec.message_count() == 1; }));
  const std::vector<std::string> want{"up", "down", "up", "msg:back"};
  EXPECT_EQ(rec.events(), want) << describe(rec.events());
}

TEST(RedisSubscriberTest, HealthPingsKeepAnIdleSubscriptionAlive) {
  redis_server redis;
  subscriber_options o = options_for(redis.url());
  o.health_interval = 30ms;
  recorder rec;
  subscriber sub(o, rec.on_message(), rec.on_state());
  ASSERT_TRUE(sub.subscribed());
  // About one PING per 30 ms of silence.
  EXPECT_TRUE(eventually([&] { return ping_calls(redis) >= 10; }, 5s)) << ping_calls(redis);
  EXPECT_TRUE(sub.subscribed());
  EXPECT_EQ(sub.stats().disconnects, 0u);
  EXPECT_EQ(rec.events(), std::vector<std::string>{"up"});
}

TEST(RedisSubscriberTest, SlowCallbacksAreNotMistakenForADeadConnection) {
  redis_server redis;
  subscriber_options o = options_for(redis.url());
  o.health_interval = 30ms;
  std::atomic<int> seen{0};
  subscriber sub(
      o,
      [&](std::string_view, std::string_view payload) {
        // A consumer stuck for many health intervals: the thread neither reads nor PINGs.
        if (payload == "slow") std::this_thread::sleep_for(300ms);
        ++seen;
      },
      nullptr);
  ASSERT_TRUE(sub.subscribed());
  auto pub = publisher_for(redis.url());
  ASSERT_EQ(publish(*pub, "inv", "slow"), 1);
  ASSERT_EQ(publish(*pub, "inv", "next"), 1);
  ASSERT_TRUE(eventually([&] { return seen.load() == 2; }));
  // Health keeps running afterwards (PINGs answered), on the same connection.
  const long pings = ping_calls(redis);
  EXPECT_TRUE(eventually([&] { return ping_calls(redis) >= pings + 3; }, 5s));
  EXPECT_EQ(sub.stats().disconnects, 0u) << sub.last_error().message();
  EXPECT_TRUE(sub.subscribed());
  EXPECT_EQ(sub.stats().connects, 1u);
}

// ---- authentication -----------------------------------------------------------------------------

TEST(RedisSubscriberTest, AuthenticatesWithPasswordOnlyAndReportsAMissingOne) {
  redis_server redis(redis_server_options{.requirepass = "s3cret"});
  recorder rec;
  subscriber sub(options_for(redis.url()), rec.on_message(), rec.on_state());
  ASSERT_TRUE(sub.subscribed()) << sub.last_error().message();
  auto pub = publisher_for(redis.url());
  ASSERT_EQ(publish(*pub, "inv", "authed"), 1);
  ASSERT_TRUE(eventually([&] { return rec.message_count() == 1; }));

  recorder rec2;
  subscriber anonymous(options_for("redis://127.0.0.1:" + std::to_string(redis.port())),
                       rec2.on_message(), rec2.on_state());
  EXPECT_FALSE(anonymous.subscribed());
  EXPECT_EQ(anonymous.last_error().code(), errc::invalid_argument);
  EXPECT_NE(anonymous.last_error().message().find("authentication failed for user default"),
            std::string::npos)
      << anonymous.last_error().message();
  EXPECT_TRUE(rec2.events().empty());
}

TEST(RedisSubscriberTest, RetriesAfterAuthenticationFailure) {
  redis_server redis(redis_server_options{.acl_user = "app", .acl_password = "right"});
  const std::string url = "redis://app:not-yet@127.0.0.1:" + std::to_string(redis.port());
  recorder rec;
  subscriber sub(options_for(url), rec.on_message(), rec.on_state());
  EXPECT_FALSE(sub.subscribed());
  const status why = sub.last_error();
  EXPECT_EQ(why.code(), errc::invalid_argument) << why.message();
  EXPECT_NE(why.message().find("authentication failed for user app: WRONGPASS"), std::string::npos)
      << why.message();
  EXPECT_EQ(why.message().find("not-yet"), std::string::npos) << "password leaked";

  // The operator fixes the credentials on the server: the retries (with backoff) succeed.
  EXPECT_EQ(redis.cli({"ACL", "SETUSER", "app", ">not-yet"}), "OK");
  ASSERT_TRUE(eventually([&] { return sub.subscribed(); }, 5s));
  auto pub = publisher_for(redis.url());
  ASSERT_EQ(publish(*pub, "inv", "finally"), 1);
  ASSERT_TRUE(eventually([&] { return rec.message_count() == 1; }));
  const std::vector<std::string> want{"up", "msg:finally"};
  EXPECT_EQ(rec.events(), want) << describe(rec.events());
  EXPECT_EQ(sub.stats().connects, 1u);
}

// ---- shutdown -----------------------------------------------------------------------------------

TEST(RedisSubscriberTest, DestructorReturnsPromptlyWhileDisconnected) {
  const int port = test::free_port();  // nobody listens there
  subscriber_options o = options_for("redis://127.0.0.1:" + std::to_string(port));
  o.reconnect_min = 10s;  // the thread sits in a long backoff wait
  o.reconnect_max = 10s;
  auto sub = std::make_unique<subscriber>(
      o, [](std::string_view, std::string_view) {}, nullptr);
  EXPECT_FALSE(sub->subscribed());
  const auto t0 = steady::now();
  sub.reset();
  EXPECT_LT(steady::now() - t0, 50ms + k_backstop);
}

TEST(RedisSubscriberTest, DestructorReturnsPromptlyWhileSubscribedAndIdle) {
  redis_server redis;
  subscriber_options o = options_for(redis.url());
  o.health_interval = 10s;  // nothing would wake the thread for a long time
  recorder rec;
  auto sub = std::make_unique<subscriber>(o, rec.on_message(), rec.on_state());
  ASSERT_TRUE(sub->subscribed());
  // subscribed() turns true just before on_state(true) runs; a destructor that came first would
  // (rightly) keep it from running at all.
  ASSERT_TRUE(eventually([&] { return rec.event_count() == 1; }));
  const auto t0 = steady::now();
  sub.reset();
  EXPECT_LT(steady::now() - t0, 50ms + k_backstop);
  EXPECT_EQ(rec.events(), std::vector<std::string>{"up"}) << "no state change on destruction";
  EXPECT_TRUE(eventually([&] { return redis.cli({"PUBSUB", "NUMSUB", "inv"}) == "inv\n0"; }));
}

TEST(RedisSubscriberTest, DestructorReturnsPromptlyDuringAHangingHandshake) {
  redis_server redis;
  tcp_fault_proxy proxy(redis.host(), redis.port());
  proxy.pause(true);  // TCP connects, the SUBSCRIBE confirmation never comes back
  subscriber_options o = options_for(proxy.url());
  o.connect_timeout = 200ms;
  auto sub = std::make_unique<subscriber>(
      o, [](std::string_view, std::string_view) {}, nullptr);
  EXPECT_FALSE(sub->subscribed());
  EXPECT_NE(sub->last_error().message().find("did not finish within 200 ms"), std::string::npos)
      << sub->last_error().message();
  const auto t0 = steady::now();
  sub.reset();
  EXPECT_LT(steady::now() - t0, 50ms + k_slack);
}

TEST(RedisSubscriberTest, NoCallbackRunsAfterDestructorReturns) {
  redis_server redis;
  auto pub = publisher_for(redis.url());
  std::atomic<int> calls{0};
  std::atomic<bool> stop{false};
  std::atomic<int> published{0};
  auto sub = std::make_unique<subscriber>(
      options_for(redis.url()), [&](std::string_view, std::string_view) { ++calls; },
      [&](bool) { ++calls; });
  ASSERT_TRUE(sub->subscribed());
  std::thread flood([&] {
    for (int i = 0; i < 100000 && !stop.load(); ++i) {
      (void)pub->execute({"PUBLISH", "inv", "x"}, 2s);
      ++published;
    }
  });
  EXPECT_TRUE(eventually([&] { return calls.load() >= 50; }));
  sub.reset();
  const int after = calls.load();
  // The flood goes on for a while and later PUBLISHes find no subscriber: nothing reaches the
  // destroyed subscriber's callbacks (the thread that would run them has been joined).
  const int published_at_reset = published.load();
  EXPECT_TRUE(eventually([&] { return published.load() >= published_at_reset + 50; }));
  stop = true;
  flood.join();
  EXPECT_TRUE(eventually([&] { return publish(*pub, "inv", "late") == 0; }));
  EXPECT_EQ(calls.load(), after);
}

}  // namespace
}  // namespace layercache::redis_detail
