// redis_coherence_test.cpp — several processes sharing one Redis behave like one cache (issue #4,
// "distributed coherence"; docs/design.md, "Coordination across processes"). Every test runs the
// helper executable layercache_coherence_node (tests/coherence_node/) as separate child processes
// against ONE real redis-server started by the fixture; nothing is faked.
//
// Covered:
//   - distributed single-flight: 4 processes x 75 threads missing the same key at the same moment
//     call the origin once per key (start barrier through Redis; the origin counts its calls in
//     Redis, outside the cache);
//   - a lease holder killed (SIGKILL) mid-fetch: its lease expires and another process completes
//     the fetch; no caller hangs;
//   - cross-process invalidation latency: A's set (then flush) is seen by B, who held the old value
//     in L1, within k_bound (measured over 100 trials, p50/p99/max printed);
//   - a consistency run: 3 processes doing random reads, writes, deletes and tag invalidations
//     record every operation with its CLOCK_MONOTONIC interval; a checker
//     (coherence_node/op_log.hpp) finds no read of a value older than a write acknowledged more
//     than k_bound before the read started — also while the test kills the bus subscriptions
//     (CLIENT KILL TYPE pubsub) every 300 ms; a negative control without coordination proves the
//     checker sees stale reads;
//   - tags, namespace rotation and every other kind of mutation reach the other processes' L1;
//   - a chaos run (coherence_node/chaos_run.hpp): 3 processes with a disk layer doing every read
//     API and every mutation kind on values up to 256 KiB, while Redis is blackholed for one of
//     them, delayed beyond its write deadline, killed and restarted, the bus killed and one clock
//     skewed by 2 s; the checker counts stale reads, resurrections and read-your-writes violations
//     against the documented bound of each fault window; its negative control runs the same
//     without coordination.
//
// The coherence bound k_bound (docs/design.md, "Staleness bound"): an instance stops serving a
// value at most k_bound after a newer write (or removal) was acknowledged by another instance. It
// covers the write-behind queue, the Redis round trip and the bus delivery (measured: well under
// 50 ms even under TSan; the figures are printed) and, while a killed bus subscription comes back,
// bus_down_l1_ttl (200 ms in the consistency run). 500 ms in every build: generous enough for
// ASan/TSan runs on a loaded 2-core machine.
//
// Every wait has a deadline (no fixed sleeps where a condition can be awaited); every child ends by
// itself and is killed by its destructor otherwise. Tests that measure print "[ measure  ]" lines.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "coherence_node/chaos_run.hpp"
#include "coherence_node/op_log.hpp"
#include "support/await.hpp"
#include "support/child_process.hpp"
#include "support/redis_server.hpp"
#include "support/temp_dir.hpp"

namespace layercache::test {
namespace {

using namespace std::chrono_literals;
using ms = std::chrono::milliseconds;
using coherence::mono_ns;
using facts = std::map<std::string, std::string>;

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr bool k_sanitized = true;
#else
constexpr bool k_sanitized = false;
#endif

// The documented coherence bound (see the header).
constexpr ms k_bound = 500ms;
// Bound on a child reaching a line of its protocol (startup, a round, the end of a run).
constexpr ms k_step = 30s;

constexpr std::int64_t to_ns(ms d) { return std::chrono::nanoseconds(d).count(); }
double ns_to_ms(std::int64_t ns) { return static_cast<double>(ns) / 1e6; }

std::string node_program() { return self_exe_dir() + "/layercache_coherence_node"; }

// Every "name=value" token of a line.
facts parse_facts(std::string_view line) {
  facts out;
  std::istringstream in{std::string(line)};
  for (std::string token; in >> token;) {
    const auto eq = token.find('=');
    if (eq != std::string::npos && eq > 0) out[token.substr(0, eq)] = token.substr(eq + 1);
  }
  return out;
}

// The fact `name` as a number; a missing or malformed fact fails the test and yields -1.
std::int64_t num(const facts& f, const std::string& name) {
  const auto it = f.find(name);
  if (it == f.end()) {
    ADD_FAILURE() << "no fact '" << name << "'";
    return -1;
  }
  try {
    return std::stoll(it->second);
  } catch (const std::exception&) {
    ADD_FAILURE() << "fact '" << name << "' is not a number: " << it->second;
    return -1;
  }
}

std::string fact(const facts& f, const std::string& name) {
  const auto it = f.find(name);
  return it == f.end() ? "<missing>" : it->second;
}

// Facts of the first output line starting with `prefix`, if any.
std::optional<facts> line_of(const std::string& output, std::string_view prefix) {
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) return parse_facts(line);
  }
  return std::nullopt;
}

// Waits (bounded) until the child printed a line starting with `prefix`.
std::optional<facts> await_line(const child_process& p, std::string_view prefix,
                                ms timeout = k_step) {
  std::optional<facts> found;
  (void)eventually(
      [&] {
        found = line_of(p.output(), prefix);
        return found.has_value() || !p.running();
      },
      timeout);
  if (!found) found = line_of(p.output(), prefix);
  return found;
}

// p-th percentile (0..100) of `values` (sorted in place).
std::int64_t percentile(std::vector<std::int64_t>& values, int p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto i = (values.size() - 1) * static_cast<std::size_t>(p) / 100;
  return values[i];
}

// A node in agent mode and its command channel (two Redis lists).
class agent {
 public:
  agent(redis_server& redis, const std::string& ctl, std::unique_ptr<child_process> child,
        std::string id)
      : redis_(redis), ctl_(ctl), child_(std::move(child)), id_(std::move(id)) {
    EXPECT_TRUE(await_line(*child_, "ready")) << "agent " << id_ << " did not start:\n"
                                              << child_->output();
  }
  // Asks the agent to quit and checks that it ended cleanly (a sanitizer report in the agent, even
  // at shutdown, fails the test here).
  ~agent() {
    try {
      send("quit");
    } catch (const std::exception& e) {
      ADD_FAILURE() << "cannot tell agent " << id_ << " to quit: " << e.what();
    }
    const auto st = child_->wait_for(k_step);
    EXPECT_TRUE(st && st->success())
        << "agent " << id_ << " ended badly (" << (st ? st->to_string() : "still running") << "):\n"
        << child_->output();
  }
  agent(const agent&) = delete;
  agent& operator=(const agent&) = delete;

  void send(const std::string& command) {
    (void)redis_.cli({"RPUSH", ctl_ + "in:" + id_, command});
  }
  // The next reply, or {ok=0} after `timeout` (the test fails).
  facts receive(ms timeout = k_step) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string r = redis_.cli({"BLPOP", ctl_ + "out:" + id_, "1"});
      if (r != "(nil)") {
        const auto nl = r.find('\n');
        return parse_facts(nl == std::string::npos ? r : std::string_view(r).substr(nl + 1));
      }
      if (!child_->running()) break;
    }
    ADD_FAILURE() << "agent " << id_ << " did not answer:\n" << child_->output();
    return {{"ok", "0"}};
  }
  facts call(const std::string& command) {
    send(command);
    facts f = receive();
    EXPECT_EQ(fact(f, "ok"), "1") << "agent " << id_ << ": " << command << " -> "
                                  << fact(f, "error") << fact(f, "status");
    return f;
  }
  std::string value(const std::string& command) { return fact(call(command), "value"); }

 private:
  redis_server& redis_;
  std::string ctl_;
  std::unique_ptr<child_process> child_;
  std::string id_;
};

class RedisCoherenceTest : public ::testing::Test {
 protected:
  redis_server redis_;  // first: outlives every child
  temp_dir dir_{"layercache-coherence"};
  const std::string ctl_ = "coh-ctl:";  // control keys, outside the cache prefix "coh:"

  // Starts a node. Its stderr goes to the test's, its stdout is captured.
  std::unique_ptr<child_process> spawn(const std::string& mode, const std::string& id,
                                       const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{mode, "--redis-url", redis_.url(), "--id", id, "--ctl", ctl_};
    args.insert(args.end(), extra.begin(), extra.end());
    return std::make_unique<child_process>(node_program(), std::move(args),
                                           child_process_options{.capture_stdout = true});
  }

  // The start barrier every node polls: <ctl>go.
  void raise_barrier(int value) {
    ASSERT_EQ(redis_.cli({"SET", ctl_ + "go", std::to_string(value)}), "OK");
  }

  // How often the origin was called (all keys, or one key).
  std::int64_t origin_calls(const std::string& key = {}) {
    const std::string v = redis_.cli({"GET", ctl_ + "origin" + (key.empty() ? "" : ":" + key)});
    return v == "(nil)" ? 0 : std::stoll(v);
  }

  // Waits for "done" and a clean exit; returns the node's metrics line.
  facts finish(child_process& p, const std::string& who) {
    const auto done = await_line(p, "done");
    EXPECT_TRUE(done) << who << " did not finish:\n" << p.output();
    const auto st = p.wait_for(k_step);
    EXPECT_TRUE(st && st->success())
        << who << " ended badly (" << (st ? st->to_string() : "still running") << "):\n"
        << p.output();
    return line_of(p.output(), "metrics ").value_or(facts{});
  }

  agent make_agent(const std::string& id) {
    return agent(redis_, ctl_, spawn("agent", id, {"--lease-poll-ms", "50"}), id);
  }
};

// ---- distributed single-flight ------------------------------------------------------------------

TEST_F(RedisCoherenceTest, ColdMissOfOneKeyInFourProcessesCallsTheOriginOncePerKey) {
  constexpr int nodes = 4, threads = 75, rounds = 5;
  std::vector<std::unique_ptr<child_process>> ps;
  for (int i = 0; i < nodes; ++i) {
    ps.push_back(spawn("stampede", std::to_string(i),
                       {"--threads", std::to_string(threads), "--rounds", std::to_string(rounds),
                        "--key", "hot", "--fetch-ms", "300", "--wait-deadline-ms", "20000"}));
  }
  for (auto& p : ps) ASSERT_TRUE(await_line(*p, "ready")) << p->output();

  std::vector<std::int64_t> round_ms;
  for (int r = 0; r < rounds; ++r) {
    const auto go = mono_ns();
    raise_barrier(r + 1);
    std::int64_t last_end = go;
    for (int i = 0; i < nodes; ++i) {
      const auto line =
          await_line(*ps[static_cast<std::size_t>(i)], "round " + std::to_string(r) + " ");
      ASSERT_TRUE(line) << "node " << i << " did not finish round " << r << ":\n"
                        << ps[static_cast<std::size_t>(i)]->output();
      EXPECT_EQ(num(*line, "ok"), threads) << "node " << i << " round " << r;
      EXPECT_EQ(num(*line, "wrong"), 0);
      EXPECT_EQ(num(*line, "timeouts"), 0);
      EXPECT_EQ(num(*line, "errors"), 0);
      last_end = std::max(last_end, num(*line, "last_end_ns"));
    }
    round_ms.push_back((last_end - go) / 1'000'000);
    EXPECT_EQ(origin_calls("hot-" + std::to_string(r)), 1) << "round " << r;
  }
  std::uint64_t grants = 0, waits = 0, fetches = 0, fallbacks = 0, dedupes = 0;
  for (int i = 0; i < nodes; ++i) {
    const facts m = finish(*ps[static_cast<std::size_t>(i)], "node " + std::to_string(i));
    grants += static_cast<std::uint64_t>(num(m, "lease_grants"));
    waits += static_cast<std::uint64_t>(num(m, "lease_waits"));
    fetches += static_cast<std::uint64_t>(num(m, "fetches"));
    fallbacks += static_cast<std::uint64_t>(num(m, "coordination_fallbacks"));
    dedupes += static_cast<std::uint64_t>(num(m, "dedupes"));
  }
  EXPECT_EQ(origin_calls(), rounds) << "the origin was called more than once per key";
  EXPECT_EQ(fetches, static_cast<std::uint64_t>(rounds));
  EXPECT_EQ(grants, static_cast<std::uint64_t>(rounds)) << "one lease per key across processes";
  EXPECT_EQ(fallbacks, 0u) << "a miss was coordinated only within its process";
  EXPECT_GE(waits, 1u) << "no process waited for another's lease";
  std::string per_round;
  for (auto v : round_ms) per_round += " " + std::to_string(v);
  std::printf(
      "[ measure  ] %d processes x %d threads, %d rounds: %lld origin calls; lease grants %llu, "
      "lease waits %llu, in-process dedupes %llu; round wall time (ms, 300 ms origin):%s\n",
      nodes, threads, rounds, static_cast<long long>(origin_calls()),
      static_cast<unsigned long long>(grants), static_cast<unsigned long long>(waits),
      static_cast<unsigned long long>(dedupes), per_round.c_str());
}

TEST_F(RedisCoherenceTest, KilledLeaseHolderIsTakenOverAfterTheLeaseExpiresAndNoCallerHangs) {
  constexpr int nodes = 3, threads = 8;
  constexpr ms lease_ttl = 500ms, wait_deadline = 5000ms;
  std::vector<std::unique_ptr<child_process>> ps;
  for (int i = 0; i < nodes; ++i) {
    // The origin's first call sleeps 60 s (that node is killed meanwhile), any later one 100 ms.
    ps.push_back(spawn(
        "stampede", std::to_string(i),
        {"--threads", std::to_string(threads), "--rounds", "1", "--key", "crash", "--fetch-ms",
         "100", "--first-fetch-ms", "60000", "--lease-ttl-ms", std::to_string(lease_ttl.count()),
         "--lease-poll-ms", "50", "--wait-deadline-ms", std::to_string(wait_deadline.count())}));
  }
  for (auto& p : ps) ASSERT_TRUE(await_line(*p, "ready")) << p->output();
  raise_barrier(1);

  // The holder is the node whose origin call was the first.
  std::size_t holder = nodes;
  ASSERT_TRUE(eventually(
      [&] {
        for (std::size_t i = 0; i < ps.size(); ++i) {
          if (line_of(ps[i]->output(), "fetch key=crash-0 n=1 ")) holder = i;
        }
        return holder < ps.size();
      },
      k_step))
      << "no node started fetching";
  // Let it renew its lease at least once before it dies (renewal every lease_ttl / 3).
  std::this_thread::sleep_for(lease_ttl / 2);
  ps[holder]->kill(SIGKILL);
  const std::int64_t killed_at = mono_ns();
  const auto st = ps[holder]->wait_for(k_step);
  ASSERT_TRUE(st && st->signal == SIGKILL);

  const std::int64_t limit_ns = to_ns(lease_ttl) + to_ns(k_sanitized ? 3000ms : 2000ms);
  std::int64_t slowest_after_kill = 0;
  std::uint64_t grants = 0, fetches = 0, fallbacks = 0, takeovers = 0;
  for (std::size_t i = 0; i < ps.size(); ++i) {
    if (i == holder) continue;
    const auto line = await_line(*ps[i], "round 0 ");
    ASSERT_TRUE(line) << "node " << i << " hangs:\n" << ps[i]->output();
    EXPECT_EQ(num(*line, "ok"), threads) << "node " << i;
    EXPECT_EQ(num(*line, "timeouts"), 0) << "a caller reached its wait deadline";
    EXPECT_EQ(num(*line, "errors"), 0);
    EXPECT_LT(num(*line, "max_ms"), wait_deadline.count());
    const std::int64_t after_kill = num(*line, "last_end_ns") - killed_at;
    slowest_after_kill = std::max(slowest_after_kill, after_kill);
    EXPECT_LE(after_kill, limit_ns)
        << "node " << i << " finished " << ns_to_ms(after_kill)
        << " ms after the holder died (lease_ttl " << lease_ttl.count() << " ms)";
    const facts m = finish(*ps[i], "node " + std::to_string(i));
    grants += static_cast<std::uint64_t>(num(m, "lease_grants"));
    fetches += static_cast<std::uint64_t>(num(m, "fetches"));
    fallbacks += static_cast<std::uint64_t>(num(m, "coordination_fallbacks"));
    takeovers += static_cast<std::uint64_t>(num(m, "lease_takeovers"));
  }
  EXPECT_EQ(origin_calls(), 2) << "the dead holder's call and exactly one completing call";
  EXPECT_EQ(origin_calls("crash-0"), 2);
  EXPECT_EQ(fetches, 1u) << "one survivor fetched";
  EXPECT_EQ(grants, 1u) << "one survivor got the expired lease";
  EXPECT_EQ(fallbacks, 0u);
  std::printf(
      "[ measure  ] lease holder SIGKILLed mid-fetch (lease_ttl %lld ms, poll 50 ms, origin "
      "100 ms): last survivor got the value %.1f ms after the kill; takeovers %llu\n",
      static_cast<long long>(lease_ttl.count()), ns_to_ms(slowest_after_kill),
      static_cast<unsigned long long>(takeovers));
}

// ---- cross-process invalidation -----------------------------------------------------------------

TEST_F(RedisCoherenceTest, SetInOneProcessIsSeenByAnotherHoldingTheOldValueWithinTheBound) {
  agent a = make_agent("a");
  agent b = make_agent("b");
  ASSERT_EQ(fact(a.call("set lat v0"), "ok"), "1");
  const facts first = b.call("get lat");
  ASSERT_EQ(fact(first, "value"), "v0");
  EXPECT_EQ(fact(first, "fetched"), "0");

  constexpr int trials = 100;
  std::vector<std::int64_t> visible;  // ns from A's acknowledgement to B's first read of the value
  int not_warm = 0;
  for (int i = 1; i <= trials; ++i) {
    const std::string old_value = "v" + std::to_string(i - 1), new_value = "v" + std::to_string(i);
    b.send("await lat eq " + new_value + " 5000");
    const facts started = b.receive();  // B's first read is done: it holds the old value in L1
    ASSERT_EQ(fact(started, "first"), old_value) << "trial " << i;
    if (fact(started, "l1_before") != "1") ++not_warm;
    const facts ack = a.call("set lat " + new_value);
    const facts seen = b.receive();
    ASSERT_EQ(fact(seen, "ok"), "1")
        << "trial " << i << ": B still read " << fact(seen, "value") << " after 5 s";
    visible.push_back(std::max<std::int64_t>(0, num(seen, "t_seen") - num(ack, "t_ack")));
  }
  EXPECT_EQ(not_warm, 0) << "B did not hold the old value in L1 before the write";
  const facts bm = b.call("metrics");
  EXPECT_GE(num(bm, "bus_received"), trials) << "B heard fewer invalidations than writes";
  const std::int64_t p50 = percentile(visible, 50), p99 = percentile(visible, 99);
  const std::int64_t worst = visible.back();
  EXPECT_LE(worst, to_ns(k_bound)) << "B saw A's write " << ns_to_ms(worst) << " ms after A's ack";
  std::printf(
      "[ measure  ] cross-process set -> other L1 sees it (%d trials, B polling every 0.1 ms): "
      "p50 %.2f ms, p99 %.2f ms, max %.2f ms (bound %lld ms)\n",
      trials, ns_to_ms(p50), ns_to_ms(p99), ns_to_ms(worst),
      static_cast<long long>(k_bound.count()));
}

// Every mutation of A drops B's L1 copy: B, warm, no longer reads the old value within the bound.
TEST_F(RedisCoherenceTest, EveryKindOfMutationInOneProcessDropsTheOtherProcessCopies) {
  agent a = make_agent("a");
  agent b = make_agent("b");
  const std::string within = std::to_string(k_bound.count());
  // Writes the keys in A, warms B's L1 with them, runs `mutation` in A, then checks that B reads
  // `expected` (a value or "<null>") for each key within the bound.
  auto check = [&](const std::string& what, const std::vector<std::string>& keys,
                   const std::string& mutation, const std::vector<std::string>& expected) {
    SCOPED_TRACE(what);
    for (const auto& k : keys) ASSERT_EQ(fact(a.call("set " + k + " old-" + k), "ok"), "1");
    for (const auto& k : keys) {
      ASSERT_EQ(b.value("get " + k), "old-" + k);
      ASSERT_EQ(fact(b.call("l1 " + k), "l1"), "1") << k << " is not in B's L1";
    }
    ASSERT_EQ(fact(a.call(mutation), "ok"), "1");
    for (std::size_t i = 0; i < keys.size(); ++i) {
      b.send("await " + keys[i] + " eq " + expected[i] + " " + within);
      (void)b.receive();  // started
      const facts r = b.receive();
      EXPECT_EQ(fact(r, "ok"), "1") << "B still reads " << fact(r, "value") << " for " << keys[i]
                                    << " " << within << " ms after A's " << mutation;
    }
  };
  check("set", {"m1"}, "set m1 new", {"new"});
  check("del", {"m2"}, "del m2", {"<null>"});
  check("set_many", {"m3", "m4"}, "set_many m3:n3,m4:n4", {"n3", "n4"});
  check("del_many", {"m5", "m6", "m7"}, "del_many m5,m6", {"<null>", "<null>", "old-m7"});
  check("invalidate_prefix", {"p:1", "p:2", "q:1"}, "prefix p:", {"<null>", "<null>", "old-q:1"});
  check("clear", {"c1", "c2"}, "clear", {"<null>", "<null>"});
  const facts bm = b.call("metrics");
  EXPECT_GE(num(bm, "bus_received"), 6);
  EXPECT_EQ(num(bm, "bus_resyncs"), 0);
}

TEST_F(RedisCoherenceTest, InvalidatedTagDropsTheTaggedKeysFromAnotherProcess) {
  agent a = make_agent("a");
  agent b = make_agent("b");
  const std::string within = std::to_string(k_bound.count());
  auto await_value = [&](const std::string& key, const std::string& expected) {
    b.send("await " + key + " eq " + expected + " " + within);
    (void)b.receive();
    const facts r = b.receive();
    EXPECT_EQ(fact(r, "ok"), "1") << "B reads " << fact(r, "value") << " for " << key
                                  << ", expected " << expected << " within " << within << " ms";
  };

  // Tagged by A's sets.
  ASSERT_EQ(fact(a.call("set user:1 u1 tags=user,team:a"), "ok"), "1");
  ASSERT_EQ(fact(a.call("set user:2 u2 tags=user"), "ok"), "1");
  ASSERT_EQ(fact(a.call("set misc m tags=other"), "ok"), "1");
  // Tagged by B's own fetch (get_options::tags): known to Redis through B's fill.
  const facts fetched = b.call("get report tags=user");
  ASSERT_EQ(fact(fetched, "fetched"), "1");
  const std::string report = fact(fetched, "value");
  for (const std::string k : {"user:1", "user:2", "misc"}) {
    const facts r = b.call("get " + k);
    EXPECT_EQ(fact(r, "fetched"), "0") << k << " was not found in Redis";
  }
  ASSERT_EQ(b.value("peek report"), report);
  for (const std::string k : {"user:1", "user:2", "misc", "report"}) {
    ASSERT_EQ(fact(b.call("l1 " + k), "l1"), "1") << k;
  }

  ASSERT_EQ(fact(a.call("tag user"), "ok"), "1");
  await_value("user:1", "<null>");
  await_value("user:2", "<null>");
  await_value("report", "<null>");
  EXPECT_EQ(b.value("peek misc"), "m") << "a key without the tag was removed";
  // Read-through after the invalidation asks the origin again.
  const facts again = b.call("get user:1");
  EXPECT_EQ(fact(again, "fetched"), "1");

  // tag_match::all: only keys carrying both tags.
  ASSERT_EQ(fact(a.call("set both x tags=red,blue"), "ok"), "1");
  ASSERT_EQ(fact(a.call("set red-only y tags=red"), "ok"), "1");
  ASSERT_EQ(b.value("get both"), "x");
  ASSERT_EQ(b.value("get red-only"), "y");
  ASSERT_EQ(fact(a.call("tags all red,blue"), "ok"), "1");
  await_value("both", "<null>");
  EXPECT_EQ(b.value("peek red-only"), "y") << "tag_match::all removed a key with one tag only";
  // tag_match::any.
  ASSERT_EQ(fact(a.call("set green-only z tags=green"), "ok"), "1");
  ASSERT_EQ(b.value("get green-only"), "z");
  ASSERT_EQ(fact(a.call("tags any red,green"), "ok"), "1");
  await_value("red-only", "<null>");
  await_value("green-only", "<null>");
  EXPECT_EQ(b.value("peek misc"), "m");
}

TEST_F(RedisCoherenceTest, RotatedNamespaceHidesItsOldValuesFromEveryOtherProcess) {
  agent a = make_agent("a");
  agent b = make_agent("b");
  const std::string within = std::to_string(k_bound.count());
  auto await_value = [&](const std::string& key, const std::string& expected,
                         const std::string& ns) {
    b.send("await " + key + " eq " + expected + " " + within + " ns=" + ns);
    (void)b.receive();
    const facts r = b.receive();
    EXPECT_EQ(fact(r, "ok"), "1") << "B reads " << fact(r, "value") << " for " << ns << " " << key
                                  << ", expected " << expected << " within " << within << " ms";
  };

  ASSERT_EQ(fact(a.call("set cart c1 ns=tenant"), "ok"), "1");
  ASSERT_EQ(fact(a.call("set item i1 ns=tenant/sub"), "ok"), "1");
  ASSERT_EQ(fact(a.call("set cart other-c1 ns=other"), "ok"), "1");
  ASSERT_EQ(b.value("get cart ns=tenant"), "c1");
  ASSERT_EQ(b.value("get item ns=tenant/sub"), "i1");
  ASSERT_EQ(b.value("get cart ns=other"), "other-c1");
  ASSERT_EQ(fact(b.call("l1 cart ns=tenant"), "l1"), "1");
  ASSERT_EQ(fact(b.call("l1 item ns=tenant/sub"), "l1"), "1");

  ASSERT_EQ(fact(a.call("rotate tenant"), "ok"), "1");
  await_value("cart", "<null>", "tenant");
  await_value("item", "<null>", "tenant/sub");  // nested namespaces rotate with their parent
  EXPECT_EQ(b.value("peek cart ns=other"), "other-c1") << "another namespace was invalidated";

  // Both processes agree on the new generation: B's fetch under it is what A reads (once B's
  // background write of the fetched value has landed, hence the bounded wait).
  const facts refetched = b.call("get cart ns=tenant");
  EXPECT_EQ(fact(refetched, "fetched"), "1");
  a.send("await cart eq " + fact(refetched, "value") + " " + within + " ns=tenant");
  (void)a.receive();
  const facts seen_by_a = a.receive();
  EXPECT_EQ(fact(seen_by_a, "ok"), "1")
      << "A reads " << fact(seen_by_a, "value") << ", expected " << fact(refetched, "value");
  // A process that starts after the rotation looks the generation up in Redis.
  agent c = make_agent("c");
  EXPECT_EQ(c.value("peek cart ns=tenant"), fact(refetched, "value"));
  EXPECT_EQ(c.value("peek item ns=tenant/sub"), "<null>");
  EXPECT_EQ(origin_calls(), 1);
}

// ---- consistency run ----------------------------------------------------------------------------

struct consistency_figures {
  std::size_t ops = 0;
  coherence::check_report report;
  std::int64_t kills = 0;
};

enum class bus_faults : unsigned char { none, kill_every_300ms };
enum class coordination : unsigned char { on, off };

class RedisConsistencyTest : public RedisCoherenceTest {
 protected:
  // Runs 3 chaos nodes (writer-heavy, reader-heavy, reader only) for `duration`, killing their bus
  // subscriptions every 300 ms when asked, and checks their merged history. `coordination::off` is
  // the checker's negative control.
  consistency_figures run(ms duration, bus_faults faults, coordination coord = coordination::on) {
    constexpr int nodes = 3;
    constexpr int read_percent[nodes] = {30, 70, 100};
    const bool kill_bus = faults == bus_faults::kill_every_300ms;
    const bool coordinated = coord == coordination::on;
    consistency_figures out;
    std::vector<std::unique_ptr<child_process>> ps;
    for (int i = 0; i < nodes; ++i) {
      ps.push_back(spawn("chaos", std::to_string(i),
                         {"--threads", "2", "--duration-ms", std::to_string(duration.count()),
                          "--out", (dir_.path() / ("ops-" + std::to_string(i) + ".log")).string(),
                          "--seed", std::to_string(kill_bus ? 2 : 1), "--bus-down-l1-ttl-ms", "200",
                          "--lease-poll-ms", "50", "--coordinate", coordinated ? "1" : "0",
                          // Node 0 mostly writes, node 1 mostly reads, node 2 only reads: its L1
                          // copies are refreshed by nothing but the bus (and its own fetches).
                          "--read-percent", std::to_string(read_percent[i])}));
    }
    for (auto& p : ps) {
      if (!await_line(*p, "ready")) {
        ADD_FAILURE() << "a node did not start:\n" << p->output();
        return out;
      }
    }
    raise_barrier(1);
    std::atomic<std::int64_t> kills{0};
    std::atomic<bool> kill_errors{false};
    {
      std::jthread killer;
      if (kill_bus) {
        killer = std::jthread([&](std::stop_token stop) {
          const auto end = std::chrono::steady_clock::now() + duration;
          // Bounded by the run's duration; stops early when the test asks.
          while (!stop.stop_requested() && std::chrono::steady_clock::now() < end) {
            std::this_thread::sleep_for(300ms);
            try {
              const std::string n = redis_.cli({"CLIENT", "KILL", "TYPE", "pubsub"});
              kills += std::stoll(n);
            } catch (const std::exception&) {
              kill_errors = true;
            }
          }
        });
      }
      for (auto& p : ps) (void)await_line(*p, "done", duration + k_step);
    }
    EXPECT_FALSE(kill_errors.load()) << "CLIENT KILL TYPE pubsub failed";
    out.kills = kills.load();

    std::vector<coherence::op> ops;
    for (int i = 0; i < nodes; ++i) {
      auto& p = *ps[static_cast<std::size_t>(i)];
      const facts m = finish(p, "node " + std::to_string(i));
      const auto summary = line_of(p.output(), "ops=");
      EXPECT_TRUE(summary) << p.output();
      if (summary && coordinated) {
        EXPECT_EQ(num(*summary, "exceptions"), 0) << "node " << i;
        EXPECT_EQ(num(*summary, "failed_writes"), 0) << "node " << i;
      }
      std::printf(
          "[ measure  ] node %d: %lld ops; lease grants %lld, waits %lld; stale fills "
          "%lld; cas rejections %lld; bus messages %lld, resyncs %lld\n",
          i, static_cast<long long>(summary ? num(*summary, "ops") : -1),
          static_cast<long long>(num(m, "lease_grants")),
          static_cast<long long>(num(m, "lease_waits")),
          static_cast<long long>(num(m, "stale_fills")),
          static_cast<long long>(num(m, "cas_rejections")),
          static_cast<long long>(num(m, "bus_received")),
          static_cast<long long>(num(m, "bus_resyncs")));
      if (kill_bus && out.kills > 0) {
        EXPECT_GE(num(m, "bus_resyncs"), 1) << "node " << i << " never noticed its bus was killed";
      }
      std::ifstream in(dir_.path() / ("ops-" + std::to_string(i) + ".log"));
      for (std::string line; std::getline(in, line);) {
        const auto o = coherence::parse(line);
        EXPECT_TRUE(o) << "unparsable history line: " << line;
        if (o) ops.push_back(*o);
      }
    }
    out.ops = ops.size();
    out.report = coherence::check_history(ops, to_ns(k_bound));
    return out;
  }

  static void print(const consistency_figures& f, const char* what) {
    std::printf(
        "[ measure  ] consistency %s: %zu ops, %zu reads (%zu returned a value, %zu of them a "
        "value already superseded), %zu writes; max staleness %.2f ms (bound %lld ms); %zu "
        "violations; %lld bus kills\n",
        what, f.ops, f.report.reads, f.report.value_reads, f.report.superseded_reads,
        f.report.writes, ns_to_ms(f.report.max_staleness_ns),
        static_cast<long long>(k_bound.count()), f.report.violations,
        static_cast<long long>(f.kills));
  }

  static void expect_consistent(const consistency_figures& f, const char* what) {
    std::string examples;
    for (const auto& e : f.report.examples) examples += "  " + e + "\n";
    EXPECT_EQ(f.report.violations, 0u) << f.report.violations << " violations, first ones:\n"
                                       << examples;
    EXPECT_GT(f.report.value_reads, 1000u) << "too few reads to say anything";
    print(f, what);
  }
};

TEST_F(RedisConsistencyTest, RandomOperationsOfThreeProcessesNeverReadOlderThanTheBound) {
  const consistency_figures f = run(4s, bus_faults::none);
  expect_consistent(f, "(bus up)");
}

TEST_F(RedisConsistencyTest, RandomOperationsStayWithinTheBoundWhileTheBusIsKilledRepeatedly) {
  const consistency_figures f = run(4s, bus_faults::kill_every_300ms);
  EXPECT_GE(f.kills, 3) << "the bus subscriptions were not killed";
  expect_consistent(f, "(bus killed every 300 ms)");
}

// The negative control: without coordination nobody hears of the others' writes, L1 copies stay,
// and the checker must see it — a checker that finds nothing here would prove nothing above.
TEST_F(RedisConsistencyTest, CheckerFindsStaleReadsWhenInstancesDoNotCoordinate) {
  const consistency_figures f = run(3s, bus_faults::none, coordination::off);
  print(f, "(negative control, coordinate = false)");
  EXPECT_GT(f.report.violations, 0u) << "the checker is blind: uncoordinated L1s read stale values";
  EXPECT_GT(f.report.max_staleness_ns, to_ns(k_bound));
}

// The checker itself, on hand-made histories (no process, no Redis).
TEST(RedisCoherenceCheckerTest, FlagsOnlyValuesSupersededByAWriteAcknowledgedLongerThanTheBound) {
  using coherence::check_history;
  using coherence::op;
  constexpr std::int64_t bound = 50;
  const op set_a{'S', "k0", "a", 0, 10};
  auto violations = [&](std::vector<op> ops) { return check_history(ops, bound).violations; };

  // A later set acknowledged at 30: reading "a" from 81 on is stale, up to 80 it is within bound.
  const op set_b{'S', "k0", "b", 20, 30};
  EXPECT_EQ(violations({set_a, set_b, {'G', "k0", "a", 80, 81}}), 0u);
  EXPECT_EQ(violations({set_a, set_b, {'G', "k0", "a", 81, 82}}), 1u);
  const auto r = check_history({set_a, set_b, {'P', "k0", "a", 100, 101}}, bound);
  EXPECT_EQ(r.superseded_reads, 1u);
  EXPECT_EQ(r.max_staleness_ns, 70);
  EXPECT_EQ(check_history({set_a, set_b, {'P', "k0", "a", 100, 101}}, 100).violations, 0u);
  // A write that started before "a" was acknowledged is concurrent, not newer.
  EXPECT_EQ(violations({set_a, {'S', "k0", "b", 5, 30}, {'G', "k0", "a", 1000, 1001}}), 0u);
  // Deletes, fetches and covering tag invalidations supersede too (k0 carries t0 and u0).
  EXPECT_EQ(violations({set_a, {'D', "k0", "-", 20, 30}, {'G', "k0", "a", 100, 101}}), 1u);
  EXPECT_EQ(violations({set_a, {'F', "k0", "f", 20, 30}, {'G', "k0", "a", 100, 101}}), 1u);
  EXPECT_EQ(violations({set_a, {'T', "t0", "any", 20, 30}, {'G', "k0", "a", 100, 101}}), 1u);
  EXPECT_EQ(violations({set_a, {'T', "u1,t1", "any", 20, 30}, {'G', "k0", "a", 100, 101}}), 0u);
  EXPECT_EQ(violations({set_a, {'T', "t0,u1", "all", 20, 30}, {'G', "k0", "a", 100, 101}}), 0u);
  EXPECT_EQ(violations({set_a, {'T', "t0,u0", "all", 20, 30}, {'G', "k0", "a", 100, 101}}), 1u);
  // Another key's writes do not matter; a miss is never stale.
  EXPECT_EQ(violations({set_a, {'S', "k1", "c", 20, 30}, {'G', "k0", "a", 100, 101}}), 0u);
  EXPECT_EQ(violations({set_a, set_b, {'P', "k0", "-", 100, 101}}), 0u);
  // Values nobody wrote, values of another key, values written after the read.
  EXPECT_EQ(violations({set_a, {'G', "k0", "zz", 100, 101}}), 1u);
  EXPECT_EQ(violations({set_a, {'G', "k1", "a", 100, 101}}), 1u);
  EXPECT_EQ(violations({{'S', "k0", "late", 200, 210}, {'G', "k0", "late", 100, 101}}), 1u);
  // Round trip through the text format.
  const auto parsed = coherence::parse(coherence::format({'T', "t0,u1", "all", 12, 34}));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->kind, 'T');
  EXPECT_EQ(parsed->subject, "t0,u1");
  EXPECT_EQ(parsed->value, "all");
  EXPECT_EQ(parsed->start_ns, 12);
  EXPECT_EQ(parsed->end_ns, 34);
}

// ---- consistency under faults (issue 9, "The checker that would have caught them") ------------

class RedisChaosConsistencyTest : public ::testing::Test {
 protected:
  temp_dir dir_{"layercache-chaos"};

  // Short enough for a sanitizer build on 2 cores (each test well under 30 s), long enough for one
  // full cycle of a compressed fault schedule (about 4 s: every kind once).
  coherence::chaos_options options(bool coordinate) {
    coherence::chaos_options o;
    o.node_program = node_program();
    o.dir = dir_.path();
    o.duration = 6s;
    o.warmup = 300ms;
    o.fault_gap = 250ms;
    o.blackhole_for = 500ms;
    o.delay_for = 600ms;
    o.restart_down = 300ms;
    o.skew_for = 1000ms;
    o.coordinate = coordinate;
    o.bound = k_bound;
    o.progress = [](const std::string& line) { std::printf("[ fault    ] %s\n", line.c_str()); };
    return o;
  }

  static void print(const coherence::chaos_result& r, const coherence::chaos_options& o,
                    const char* what) {
    std::printf("[ measure  ] chaos %s: %s\n", what, coherence::describe(r, o).c_str());
  }

  static void expect_ran(const coherence::chaos_result& r) {
    std::string outputs;
    for (std::size_t i = 0; i < r.node_outputs.size(); ++i) {
      outputs += "---- node " + std::to_string(i) + "\n" + r.node_outputs[i];
    }
    ASSERT_TRUE(r.error.empty()) << r.error << "\n" << outputs;
  }
};

// History: on 8817eb3 every run of it fails on ryw_violations
// (2 to 57 per run): get_many, get_if_present, has() and get after the thread's own del, del_many,
// invalidate_tag(s) or invalidate_prefix return the value from before it, also with no fault in
// effect (defect 7: the read APIs without the tombstone / pending-delete check, and the local-only
// disk delete; defect 2: a concurrent get undoing a set/del) and more after a blackhole or a write
// timeout (defect 13: the failed write is dropped, the resync empties L1, Redis still has the old
// value). Some runs also count stale reads and resurrections of the cold key "c0" seconds after a
// write or delete acknowledged during a blackhole or write timeout (defect 13), and gets stall for
// 10 s after a blackhole (the lease of a refused fill is never released: defect 9).
//
// Since: 0 violations of each kind in every run (idle, four at once, TSan) after the fixes of
// issue #9 listed in docs/design.md; `layercache-bench consistency --json` runs the same for
// longer.
TEST_F(RedisChaosConsistencyTest,
       EveryReadAndMutationKindStaysWithinTheBoundUnderRedisBusAndClockFaults) {
  const auto o = options(true);
  const auto r = coherence::run_chaos(o);
  expect_ran(r);
  print(r, o, "(coordinated, faults)");
  for (const auto& [kind, n] : r.faults_injected) {
    EXPECT_GE(n, 1) << "fault " << kind << " was never injected";
  }
  EXPECT_GT(r.report.value_reads, 500u) << "too few reads to say anything";
  EXPECT_EQ(r.report.violations, 0u);
  EXPECT_EQ(r.report.ryw_violations, 0u);
  EXPECT_EQ(r.report.resurrections, 0u);
}

// The negative control of the run above: the same processes, operations and disk layers without
// coordination, and without faults (their windows excuse seconds of staleness, so a short run
// might hide it there): L1 copies outlive every other node's writes, a thread's own delete is
// undone by another node's older value, and the checker must count all three kinds. How many a
// run meets depends on how many operations it gets through: an idle machine does ~15,000 in 4 s
// and finds hundreds of each, a loaded TSan build a few hundred and sometimes no lost own write.
// So a run that misses a kind is followed by another with a new seed, at most four: what must
// hold is that the checker finds every kind, not that one short run happens to produce it.
TEST_F(RedisChaosConsistencyTest,
       CheckerFindsStaleReadsResurrectionsAndLostOwnWritesUncoordinated) {
  auto o = options(false);
  o.duration = 4s;
  o.faults = false;
  std::size_t violations = 0;
  std::size_t resurrections = 0;
  std::size_t ryw_violations = 0;
  std::int64_t max_staleness_ns = 0;
  for (int run = 0; run < 4; ++run) {
    o.seed = 1 + static_cast<std::uint64_t>(run);
    o.dir = dir_.path() / ("run-" + std::to_string(run));  // fresh disk layers and histories
    const auto r = coherence::run_chaos(o);
    expect_ran(r);
    print(r, o, "(negative control, coordinate = false)");
    violations += r.report.violations;
    resurrections += r.report.resurrections;
    ryw_violations += r.report.ryw_violations;
    max_staleness_ns = std::max(max_staleness_ns, r.report.max_staleness_ns);
    if (violations > 0 && resurrections > 0 && ryw_violations > 0 &&
        max_staleness_ns > to_ns(k_bound)) {
      break;
    }
  }
  EXPECT_GT(violations, 0u) << "the checker is blind to uncoordinated L1s";
  EXPECT_GT(resurrections, 0u) << "the checker is blind to deleted values read again";
  EXPECT_GT(ryw_violations, 0u) << "the checker is blind to lost own writes";
  EXPECT_GT(max_staleness_ns, to_ns(k_bound));
}

}  // namespace
}  // namespace layercache::test
