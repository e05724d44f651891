// coherence_node.cpp — one instance of a service (memory L1 + coordinating Redis L2), run as
// several child processes against one redis-server by the multi-process coherence tests
// (tests/integration/redis_coherence_test.cpp).
//
//   layercache_coherence_node <mode> --redis-url redis://127.0.0.1:PORT --id N [--option value]...
//
// Modes (each ends by itself: every wait is bounded, nothing outlives `self_limit`):
//   stampede  --threads T --rounds R --key K --fetch-ms F [--first-fetch-ms X]
//             Prints "ready", then per round r (from 0): waits until the control key <ctl>go holds
//             at least r + 1 (the start barrier the test raises once every node is ready), releases
//             T threads that all call get("K-r") at once, and prints
//             "round r ok= wrong= timeouts= errors= max_ms= last_end_ns=". The origin's first call
//             for a key sleeps X ms (when given; the test kills that node), every other F ms.
//   chaos     --threads T --duration-ms D --out FILE [--seed S] [--read-percent R]
//             After the barrier (<ctl>go >= 1), T threads run random get / get_if_present / set /
//             del / set_many / del_many / tag invalidations on the keys of op_log.hpp for D ms and
//             record every operation with its interval; the history goes to FILE (op_log.hpp).
//   agent     Executes one command at a time from the Redis list <ctl>in:<id> and pushes each reply
//             (one line of "name=value" facts) to <ctl>out:<id>; see run_command() for the
//             commands. Ends on "quit", or after 60 s without a command.
// Every mode ends with "metrics name=value ..." (the stack's coordination counters and the events
// seen) and "done".
//
// Common options: --prefix (the cache's Redis prefix, default "coh:"), --ctl (control keys, default
// "coh-ctl:"; outside the prefix, so a clear() leaves them), --lease-ttl-ms, --lease-poll-ms,
// --bus-down-l1-ttl-ms, --wait-deadline-ms (get_options::wait_deadline; 0 = unbounded),
// --coordinate 0 (a plain shared Redis without coordination: the checker's negative control).
//
// The origin: every fetcher call INCRs <ctl>origin and <ctl>origin:<key> over a plain hiredis
// connection (outside the cache), so the test can read how often the origin was asked in total.
//
// Redis deadlines are generous and the breakers practically never open (breaker_failures 1000): the
// tests check coordination logic, and a sanitizer-slowed machine must not turn a slow reply into an
// uncoordinated fetch.
//
// Output on stdout, unbuffered (a SIGKILL loses no line). Exit codes: 0 done, 1 unexpected failure
// (message on stderr), 2 usage.
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "coherence_node/op_log.hpp"
#include "coherence_node/payload.hpp"
#include "layercache/cache_stack.hpp"
#include "layercache/detail/hash.hpp"
#if LAYERCACHE_NODE_HAS_DISK
#include "layercache/disk_layer.hpp"
#endif
#include "layercache/error.hpp"
#include "layercache/memory_layer.hpp"
#include "layercache/redis_layer.hpp"
#include "support/child_io.hpp"
#include "support/sync_redis.hpp"

namespace {

using namespace std::chrono_literals;
namespace lc = layercache;
namespace co = layercache::test::coherence;
using ms = std::chrono::milliseconds;
using co::mono_ns;

constexpr auto self_limit = 120s;  // no wait of any mode lasts longer

using layercache::test::say;

[[noreturn]] void fail(const std::string& why) {
  std::cerr << "coherence_node: " << why << std::endl;
  std::_Exit(1);  // no destructors: the state is already wrong; stderr is flushed above
}

// ---- command line -------------------------------------------------------------------------------

class options {
 public:
  options(int argc, char** argv) {
    for (int i = 2; i < argc; ++i) {
      std::string_view a = argv[i];
      if (a.substr(0, 2) != "--" || i + 1 >= argc) fail("bad argument " + std::string(a));
      values_[std::string(a.substr(2))] = argv[++i];
    }
  }
  std::string text(const std::string& name, std::string fallback = {}) const {
    const auto it = values_.find(name);
    return it == values_.end() ? std::move(fallback) : it->second;
  }
  std::int64_t number(const std::string& name, std::int64_t fallback) const {
    const auto it = values_.find(name);
    return it == values_.end() ? fallback : std::stoll(it->second);
  }
  ms millis(const std::string& name, std::int64_t fallback) const {
    return ms(number(name, fallback));
  }

 private:
  std::map<std::string, std::string> values_;
};

// ---- plain Redis (the origin's counter, barriers, the command channel) --------------------------

// The shared bookkeeping connection (tests/support/sync_redis.hpp), where transport or protocol
// trouble ends the process (the test then fails on the exit status and stderr).
class plain_redis {
 public:
  plain_redis(const std::string& url, ms timeout) : redis_(connect(url, timeout)) {}

  // The reply as text: strings as is, integers in decimal, arrays as their last element (BLPOP's
  // value); nil is nullopt.
  std::optional<std::string> command(const std::vector<std::string>& args) {
    try {
      return redis_.command(args);
    } catch (const std::exception& e) {
      fail(e.what());
    }
  }
  std::int64_t incr(const std::string& key) { return std::stoll(command({"INCR", key}).value()); }

 private:
  // redis://host:port[/db] (the tests use neither credentials nor a database).
  static layercache::test::sync_redis connect(const std::string& url, ms timeout) {
    std::string rest = url.substr(url.find("//") == std::string::npos ? 0 : url.find("//") + 2);
    rest = rest.substr(0, rest.find('/'));
    const auto colon = rest.rfind(':');
    if (colon == std::string::npos) fail("cannot parse --redis-url " + url);
    try {
      return layercache::test::sync_redis(rest.substr(0, colon), std::stoi(rest.substr(colon + 1)),
                                          timeout);
    } catch (const std::exception& e) {
      fail("cannot connect to " + url + ": " + e.what());
    }
  }

  layercache::test::sync_redis redis_;
};

// Waits until the integer at `key` is at least `at_least` (the test raises it).
void wait_barrier(plain_redis& ctl, const std::string& key, std::int64_t at_least) {
  const auto deadline = std::chrono::steady_clock::now() + self_limit;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto v = ctl.command({"GET", key});
    if (v && std::stoll(*v) >= at_least) return;
    std::this_thread::sleep_for(1ms);
  }
  fail("the start barrier " + key + " never reached " + std::to_string(at_least));
}

// ---- the cache ------------------------------------------------------------------------------

// The node's time source: the default clock plus an offset the driver may change while the node
// runs (--skew-file), so one instance's clock can be skewed by seconds against the others. It is
// the clock of the stack, of the Redis layer and of the disk layer, so expiry and versions move
// together as on a host whose clock is off.
class skewed_clock final : public lc::clock {
 public:
  lc::unix_ms now_ms() const noexcept override {
    return base_->now_ms() + offset_ms_.load(std::memory_order_relaxed);
  }
  std::int64_t now_us() const noexcept override {
    return base_->now_us() + offset_ms_.load(std::memory_order_relaxed) * 1000;
  }
  void set_offset(std::int64_t offset_ms) noexcept {
    offset_ms_.store(offset_ms, std::memory_order_relaxed);
  }

 private:
  std::shared_ptr<const lc::clock> base_ = lc::default_clock();
  std::atomic<std::int64_t> offset_ms_{0};
};

struct node {
  std::string id;
  std::string ctl_prefix;
  std::shared_ptr<lc::memory_layer> l1;
  std::shared_ptr<skewed_clock> clock = std::make_shared<skewed_clock>();
  std::unique_ptr<lc::cache_stack> cache;
  std::array<std::atomic<std::uint64_t>, 16> events{};  // by event_type
  std::atomic<int> errors_logged{0};

  // Whether L1 holds a live entry for the stack key `key` (no counters touched).
  bool in_l1(const std::string& key) const { return l1->contains(key, lc::detail::hash_key(key)); }

  std::string metrics_line() const {
    const lc::metrics_snapshot m = cache->metrics();
    auto ev = [this](lc::event_type t) {
      return std::to_string(events[static_cast<std::size_t>(t)].load());
    };
    std::uint64_t l2_errors = 0;
    for (const auto& l : m.layers) {
      if (l.name == "redis") l2_errors = l.errors;
    }
    return "fetches=" + std::to_string(m.fetches) + " dedupes=" + std::to_string(m.dedupes) +
           " wait_timeouts=" + std::to_string(m.wait_timeouts) +
           " stale_fills=" + std::to_string(m.stale_fills) +
           " lease_grants=" + std::to_string(m.lease_grants) +
           " lease_waits=" + std::to_string(m.lease_waits) +
           " lease_takeovers=" + std::to_string(m.lease_takeovers) +
           " coordination_fallbacks=" + std::to_string(m.coordination_fallbacks) +
           " cas_rejections=" + std::to_string(m.cas_rejections) +
           " bus_received=" + std::to_string(m.bus_received) +
           " bus_resyncs=" + std::to_string(m.bus_resyncs) +
           " redis_errors=" + std::to_string(l2_errors) +
           " ev_layer_error=" + ev(lc::event_type::layer_error) +
           " ev_coordination_degraded=" + ev(lc::event_type::coordination_degraded) +
           " ev_bus_resync=" + ev(lc::event_type::bus_resync) +
           " ev_breaker_open=" + ev(lc::event_type::breaker_open);
  }
};

std::unique_ptr<node> make_node(const options& o) {
  auto n = std::make_unique<node>();
  n->id = o.text("id", "0");
  n->ctl_prefix = o.text("ctl", "coh-ctl:");
  lc::redis_layer_options r;
  // --cache-redis-url: the cache's own path to Redis (a fault proxy in the chaos runs); the control
  // connections (barrier, origin counter, agent channel) use --redis-url directly.
  r.url = o.text("cache-redis-url", o.text("redis-url"));
  r.prefix = o.text("prefix", "coh:");
  r.connect_timeout = o.millis("connect-timeout-ms", 1000);
  r.read_deadline = o.millis("read-deadline-ms", 1000);
  r.write_deadline = o.millis("write-deadline-ms", 2000);
  r.breaker_failures = static_cast<std::uint32_t>(o.number("breaker-failures", 1000));
  r.clock = n->clock;
  r.lease_ttl = o.millis("lease-ttl-ms", 3000);
  r.lease_poll = o.millis("lease-poll-ms", 100);
  r.bus_down_l1_ttl = o.millis("bus-down-l1-ttl-ms", 1000);
  r.coordinate = o.number("coordinate", 1) != 0;
  n->l1 = lc::memory_layer::create({.max_entries = 100'000});
  node* self = n.get();
  lc::stack_options s;
  s.ttl = 10min;
  s.clock = n->clock;
  s.on_event = [self](const lc::event& e) {
    const auto i = static_cast<std::size_t>(e.type);
    if (i < self->events.size()) self->events[i].fetch_add(1, std::memory_order_relaxed);
    // Expected in these tests, and frequent: not logged.
    if (e.type == lc::event_type::stale_fill || e.type == lc::event_type::bus_resync) return;
    if (self->errors_logged.fetch_add(1) < 20) {
      std::cerr << "coherence_node " << self->id << ": event " << lc::to_string(e.type) << " ["
                << e.layer << "] " << e.key << ": " << e.detail.message() << "\n";
    }
  };
  std::vector<std::shared_ptr<lc::layer>> layers{n->l1, lc::redis_layer::create(std::move(r))};
  // --disk-dir: a disk layer (L3) in that directory, private to this node.
  if (const std::string disk = o.text("disk-dir"); !disk.empty()) {
#if !LAYERCACHE_NODE_HAS_DISK
    fail("--disk-dir: built without the disk layer");
#else
    layers.push_back(lc::disk_layer::create({.directory = disk,
                                             .max_bytes = 64ull << 20,
                                             .block_cache_bytes = 4ull << 20,
                                             .clock = n->clock}));
#endif
  }
  n->cache = std::make_unique<lc::cache_stack>(std::move(layers), std::move(s));
  return n;
}

// The origin: counts the call in Redis, outside the cache, and says so on stdout.
std::int64_t count_origin_call(node& n, plain_redis& ctl, const std::string& key) {
  const std::int64_t call = ctl.incr(n.ctl_prefix + "origin:" + key);
  (void)ctl.incr(n.ctl_prefix + "origin");
  say("fetch key=" + key + " n=" + std::to_string(call) + " id=" + n.id +
      " t_ns=" + std::to_string(mono_ns()));
  return call;
}

// ---- stampede ---------------------------------------------------------------------------------

int stampede(const options& o) {
  auto n = make_node(o);
  plain_redis ctl(o.text("redis-url"), 5s);
  const int threads = static_cast<int>(o.number("threads", 75));
  const int rounds = static_cast<int>(o.number("rounds", 5));
  const std::string base = o.text("key", "stampede");
  const ms fetch_time = o.millis("fetch-ms", 300);
  const ms first_fetch_time = o.millis("first-fetch-ms", 0);
  const ms wait_deadline = o.millis("wait-deadline-ms", 0);

  struct result {
    bool ok = false, wrong = false, timeout = false, error = false;
    std::int64_t start_ns = 0, end_ns = 0;
  };
  std::vector<result> results(static_cast<std::size_t>(threads));
  std::mutex mu;
  std::condition_variable cv;
  int round = -1;      // guarded by mu: the round the threads may run
  int finished = 0;    // guarded by mu: threads done with `round`
  bool abort = false;  // guarded by mu

  auto caller = [&](int t) {
    for (int r = 0; r < rounds; ++r) {
      {
        std::unique_lock lock(mu);
        if (!cv.wait_for(lock, self_limit, [&] { return round >= r || abort; }) || abort) return;
      }
      const std::string key = base + "-" + std::to_string(r);
      const std::string expected = "value-of-" + key;
      result& res = results[static_cast<std::size_t>(t)];
      res = {};
      res.start_ns = mono_ns();
      try {
        lc::get_options g;
        if (wait_deadline > 0ms) g.wait_deadline = wait_deadline;
        auto v = n->cache->get<std::string>(
            key,
            [&] {
              const auto call = count_origin_call(*n, ctl, key);
              std::this_thread::sleep_for(call == 1 && first_fetch_time > 0ms ? first_fetch_time
                                                                              : fetch_time);
              return expected;
            },
            g);
        res.ok = v && *v == expected;
        res.wrong = !res.ok;
      } catch (const lc::wait_timeout_error&) {
        res.timeout = true;
      } catch (const std::exception& e) {
        res.error = true;
        std::cerr << "coherence_node " << n->id << ": get threw: " << e.what() << "\n";
      }
      res.end_ns = mono_ns();
      {
        std::lock_guard lock(mu);
        ++finished;
      }
      cv.notify_all();
    }
  };
  std::vector<std::jthread> pool;
  pool.reserve(static_cast<std::size_t>(threads));
  for (int t = 0; t < threads; ++t) pool.emplace_back(caller, t);
  auto stop_pool = [&] {
    {
      std::lock_guard lock(mu);
      abort = true;
    }
    cv.notify_all();
  };

  say("ready id=" + n->id);
  for (int r = 0; r < rounds; ++r) {
    wait_barrier(ctl, n->ctl_prefix + "go", r + 1);
    {
      std::lock_guard lock(mu);
      finished = 0;
      round = r;
    }
    cv.notify_all();
    {
      std::unique_lock lock(mu);
      if (!cv.wait_for(lock, self_limit, [&] { return finished == threads; })) {
        lock.unlock();
        stop_pool();
        fail("round " + std::to_string(r) + ": callers still waiting after the self limit");
      }
    }
    int ok = 0, wrong = 0, timeouts = 0, errors = 0;
    std::int64_t max_ns = 0, last_end = 0;
    for (const auto& res : results) {
      ok += res.ok;
      wrong += res.wrong;
      timeouts += res.timeout;
      errors += res.error;
      max_ns = std::max(max_ns, res.end_ns - res.start_ns);
      last_end = std::max(last_end, res.end_ns);
    }
    say("round " + std::to_string(r) + " ok=" + std::to_string(ok) +
        " wrong=" + std::to_string(wrong) + " timeouts=" + std::to_string(timeouts) +
        " errors=" + std::to_string(errors) + " max_ms=" + std::to_string(max_ns / 1'000'000) +
        " last_end_ns=" + std::to_string(last_end));
  }
  pool.clear();  // every thread has finished its last round
  if (!n->cache->flush(10s)) fail("queued writes did not land within 10 s");
  say("metrics " + n->metrics_line());
  say("done");
  return 0;
}

int chaos_full(const options& o);  // below: --mix full

// ---- chaos ----------------------------------------------------------------------------------

int chaos(const options& o) {
  if (o.text("mix", "basic") == "full") return chaos_full(o);
  auto n = make_node(o);
  plain_redis ctl(o.text("redis-url"), 5s);
  const int threads = static_cast<int>(o.number("threads", 2));
  const ms duration = o.millis("duration-ms", 4000);
  const std::string out_path = o.text("out");
  if (out_path.empty()) fail("chaos needs --out");
  const auto seed = static_cast<std::uint64_t>(o.number("seed", 1));
  const int read_percent = static_cast<int>(o.number("read-percent", 55));

  say("ready id=" + n->id);
  wait_barrier(ctl, n->ctl_prefix + "go", 1);
  const std::int64_t end_ns = mono_ns() + std::chrono::nanoseconds(duration).count();

  std::vector<std::vector<co::op>> logs(static_cast<std::size_t>(threads));
  std::atomic<std::uint64_t> exceptions{0}, failed_writes{0};
  auto worker = [&](int t) {
    std::mt19937_64 rng(seed * 1'000'003 + std::hash<std::string>{}(n->id) * 31 +
                        static_cast<std::uint64_t>(t));
    auto& log = logs[static_cast<std::size_t>(t)];
    std::uint64_t counter = 0;
    const std::string me = n->id + "." + std::to_string(t) + ".";
    auto fresh = [&] { return me + std::to_string(++counter); };
    auto note_status = [&](const lc::status& s) {
      if (!s.ok()) failed_writes.fetch_add(1);
    };
    // Bounded in time (end_ns) and in count.
    for (int i = 0; i < 1'000'000 && mono_ns() < end_ns; ++i) {
      // Reads (3 get : 1 get_if_present) make up read_percent of the operations; the writes keep
      // the proportions set 18 : del 10 : set_many 5 : del_many 4 : tag invalidation 8.
      const bool read = static_cast<int>(rng() % 100) < read_percent;
      const int roll = read ? static_cast<int>(rng() % 4) : 55 + static_cast<int>(rng() % 45);
      const int k = static_cast<int>(rng() % co::key_count);
      const std::string key = co::key_name(k);
      try {
        if (roll < 3) {  // read-through; the fetcher is a write of a fresh value
          const auto start = mono_ns();
          const auto v = n->cache->get<std::string>(
              key,
              [&] {
                co::op f{'F', key, "f" + fresh(), mono_ns(), 0};
                std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
                f.end_ns = mono_ns();
                log.push_back(f);
                return f.value;
              },
              {.tags = co::tags_of(k)});
          log.push_back({'G', key, v ? *v : "-", start, mono_ns()});
        } else if (roll < 4) {
          const auto start = mono_ns();
          const auto v = n->cache->get_if_present<std::string>(key);
          log.push_back({'P', key, v ? *v : "-", start, mono_ns()});
        } else if (roll < 73) {
          const std::string value = fresh();
          lc::set_options so{.tags = co::tags_of(k)};
          if (rng() % 2 == 0) so.policy = lc::write_policy::strict;
          const auto start = mono_ns();
          note_status(n->cache->set<std::string>(key, value, so));
          log.push_back({'S', key, value, start, mono_ns()});
        } else if (roll < 83) {
          const auto start = mono_ns();
          note_status(n->cache->del(key));
          log.push_back({'D', key, "-", start, mono_ns()});
        } else if (roll < 88) {
          // Keys i and i + 6 share their tags, so one set_options fits both.
          const int a = static_cast<int>(rng() % 2);
          const std::vector<std::pair<std::string, std::string>> entries{
              {co::key_name(a), fresh()}, {co::key_name(a + 6), fresh()}};
          const auto start = mono_ns();
          note_status(n->cache->set_many<std::string>(entries, {.tags = co::tags_of(a)}));
          const auto end = mono_ns();
          for (const auto& [ek, ev] : entries) log.push_back({'S', ek, ev, start, end});
        } else if (roll < 92) {
          const std::vector<std::string> keys{
              key, co::key_name((k + 1 + static_cast<int>(rng() % 7)) % co::key_count)};
          const auto start = mono_ns();
          note_status(n->cache->del_many(keys));
          const auto end = mono_ns();
          for (const auto& dk : keys) log.push_back({'D', dk, "-", start, end});
        } else {
          const auto& tags = co::all_tags();
          std::vector<std::string> chosen{tags[rng() % tags.size()]};
          const int how = static_cast<int>(rng() % 3);
          if (how > 0)
            chosen.push_back(chosen[0][0] == 't' ? "u" + std::to_string(rng() % 3)
                                                 : "t" + std::to_string(rng() % 2));
          const bool all = how == 2;
          const auto start = mono_ns();
          if (how == 0) {
            note_status(n->cache->invalidate_tag(chosen[0]));
          } else {
            note_status(
                n->cache->invalidate_tags(chosen, all ? lc::tag_match::all : lc::tag_match::any));
          }
          std::string joined = chosen[0];
          for (std::size_t j = 1; j < chosen.size(); ++j) joined += "," + chosen[j];
          log.push_back({'T', joined, all ? "all" : "any", start, mono_ns()});
        }
      } catch (const std::exception& e) {
        if (exceptions.fetch_add(1) < 10) {
          std::cerr << "coherence_node " << n->id << ": operation threw: " << e.what() << "\n";
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 1000));
    }
  };
  {
    std::vector<std::jthread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(worker, t);
  }
  if (!n->cache->flush(10s)) fail("queued writes did not land within 10 s");

  std::ofstream out(out_path);
  std::size_t count = 0;
  for (const auto& log : logs) {
    for (const auto& op : log) {
      out << co::format(op) << '\n';
      ++count;
    }
  }
  out.close();
  if (!out) fail("cannot write " + out_path);
  say("ops=" + std::to_string(count) + " exceptions=" + std::to_string(exceptions.load()) +
      " failed_writes=" + std::to_string(failed_writes.load()));
  say("metrics " + n->metrics_line());
  say("done");
  return 0;
}

// ---- chaos, full mix ---------------------------------------------------------------------------

// Polls --skew-file (the driver writes the offset in ms there, atomically by rename) and applies
// it to the node's clock. A file, not Redis: the driver kills Redis meanwhile.
class skew_poller {
 public:
  skew_poller(std::string path, std::shared_ptr<skewed_clock> clock)
      : path_(std::move(path)), clock_(std::move(clock)) {
    if (path_.empty()) return;
    thread_ = std::jthread([this](std::stop_token stop) {
      std::int64_t applied = 0;
      while (!stop.stop_requested()) {
        std::ifstream in(path_);
        std::int64_t offset = 0;
        if (in >> offset && offset != applied) {
          clock_->set_offset(offset);
          applied = offset;
        }
        std::this_thread::sleep_for(2ms);
      }
    });
  }

 private:
  std::string path_;
  std::shared_ptr<skewed_clock> clock_;
  std::jthread thread_;
};

// A value size: mostly small, sometimes large, up to `max_bytes` (0 = ids only, as the basic mix).
std::size_t value_size(std::mt19937_64& rng, std::size_t max_bytes) {
  if (max_bytes == 0) return 0;
  const auto roll = rng() % 100;
  std::size_t lo = 16, hi = 64;
  if (roll >= 60) lo = 1024, hi = 8 * 1024;
  if (roll >= 85) lo = 8 * 1024, hi = 64 * 1024;
  if (roll >= 95) lo = 64 * 1024, hi = 256 * 1024;
  hi = std::min(hi, max_bytes);
  lo = std::min(lo, hi);
  return lo + static_cast<std::size_t>(rng() % (hi - lo + 1));
}

// --mix full: every read API (get, get_many, get_if_present, has), every mutation (set, set_many,
// del, del_many, tag and prefix invalidations, namespace rotations), values up to
// --max-value-bytes, plain keys k0..k7 on the stack and k8..k11 in the namespace "space". Records
// each operation with its node, thread and outcome (op_log.hpp) for the checker.
int chaos_full(const options& o) {
  auto n = make_node(o);
  plain_redis ctl(o.text("redis-url"), 5s);
  const int threads = static_cast<int>(o.number("threads", 2));
  const ms duration = o.millis("duration-ms", 4000);
  const std::string out_path = o.text("out");
  if (out_path.empty()) fail("chaos needs --out");
  const auto seed = static_cast<std::uint64_t>(o.number("seed", 1));
  const int read_percent = static_cast<int>(o.number("read-percent", 55));
  const auto max_bytes = static_cast<std::size_t>(o.number("max-value-bytes", 256 * 1024));
  skew_poller skew(o.text("skew-file"), n->clock);

  say("ready id=" + n->id);
  wait_barrier(ctl, n->ctl_prefix + "go", 1);
  const std::int64_t end_ns = mono_ns() + std::chrono::nanoseconds(duration).count();

  std::vector<std::vector<co::op>> logs(static_cast<std::size_t>(threads));
  std::atomic<std::uint64_t> exceptions{0}, failed_writes{0};
  auto worker = [&](int t) {
    std::mt19937_64 rng(seed * 1'000'003 + std::hash<std::string>{}(n->id) * 31 +
                        static_cast<std::uint64_t>(t));
    auto& log = logs[static_cast<std::size_t>(t)];
    lc::cache_namespace space = n->cache->ns(co::ns_name);
    std::uint64_t counter = 0;
    const std::string me = n->id + "." + std::to_string(t) + ".";
    auto fresh_id = [&] { return me + std::to_string(++counter); };
    auto record = [&](char kind, std::string subject, std::string value, std::int64_t start,
                      std::int64_t end, bool ok = true) {
      log.push_back({kind, std::move(subject), std::move(value), start, end, n->id, t, ok});
    };
    auto ok_of = [&](const lc::status& s) {
      if (!s.ok()) failed_writes.fetch_add(1);
      return s.ok();
    };
    auto id_of = [](const std::shared_ptr<const std::string>& v) {
      return v ? co::payload_id(*v) : std::string("-");
    };
    // Runs f on the stack for a plain key, on the namespace view for a namespace key.
    auto on = [&](int k, auto&& f) {
      if (co::in_namespace(k)) return f(space);
      return f(*n->cache);
    };
    // A fetcher's answer: a fresh value, recorded as a write spanning the fetch.
    auto fetch_one = [&](const std::string& key) {
      const auto start = mono_ns();
      const std::string id = "f" + fresh_id();
      std::string v = co::make_payload(id, value_size(rng, max_bytes));
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
      record('F', key, id, start, mono_ns());
      return v;
    };
    // Two distinct keys of the same group as k (plain keys i and i + 6 share their tags).
    auto pair_of = [&](int k) {
      if (co::in_namespace(k)) {
        const int other = co::key_count +
                          (k - co::key_count + 1 + static_cast<int>(rng() % 3)) % co::ns_key_count;
        return std::pair<int, int>{k, other};
      }
      const int a = static_cast<int>(rng() % 2);
      return std::pair<int, int>{a, a + 6};
    };

    for (int i = 0; i < 1'000'000 && mono_ns() < end_ns; ++i) {
      const bool read = static_cast<int>(rng() % 100) < read_percent;
      const int roll = static_cast<int>(rng() % 100);
      int k = static_cast<int>(rng() % co::all_key_count);
      // The cold key: 99 of 100 direct mutations of it go to another key (see op_log.hpp).
      if (!read && k == co::cold_key && rng() % 100 != 0) {
        k = static_cast<int>(rng() % co::cold_key);
      }
      const std::string key = co::key_name(k);
      const lc::get_options get_opts{.tags = co::tags_of(k)};
      try {
        if (read && roll < 40) {  // read-through
          const auto start = mono_ns();
          const auto v = on(k, [&](auto& c) {
            return c.template get<std::string>(
                key, [&] { return fetch_one(key); }, get_opts);
          });
          record('G', key, id_of(v), start, mono_ns());
        } else if (read && roll < 60) {  // get_many of 2 keys of one group (3 with a duplicate)
          const auto [a, b] = pair_of(k);
          std::vector<std::string> keys{co::key_name(a), co::key_name(b)};
          if (rng() % 4 == 0) keys.push_back(keys[0]);
          const auto start = mono_ns();
          const auto vs = on(k, [&](auto& c) {
            return c.template get_many<std::string>(
                keys,
                [&](std::span<const std::string> missing) {
                  std::vector<std::optional<std::string>> out;
                  for (const auto& m : missing) out.emplace_back(fetch_one(m));
                  return out;
                },
                lc::get_options{.tags = co::tags_of(a)});
          });
          const auto end = mono_ns();
          for (std::size_t j = 0; j < keys.size() && j < vs.size(); ++j) {
            record('M', keys[j], id_of(vs[j]), start, end);
          }
        } else if (read && roll < 80) {
          const auto start = mono_ns();
          const auto v =
              on(k, [&](auto& c) { return c.template get_if_present<std::string>(key); });
          record('P', key, id_of(v), start, mono_ns());
        } else if (read) {
          const auto start = mono_ns();
          const bool has = on(k, [&](auto& c) { return c.has(key); });
          record('H', key, has ? "1" : "0", start, mono_ns());
        } else if (roll < 38) {
          const std::string id = fresh_id();
          lc::set_options so{.tags = co::tags_of(k)};
          if (rng() % 2 == 0) so.policy = lc::write_policy::strict;
          std::string v = co::make_payload(id, value_size(rng, max_bytes));
          const auto start = mono_ns();
          const bool ok =
              ok_of(on(k, [&](auto& c) { return c.template set<std::string>(key, v, so); }));
          record('S', key, id, start, mono_ns(), ok);
        } else if (roll < 52) {
          const auto start = mono_ns();
          const bool ok = ok_of(on(k, [&](auto& c) { return c.del(key); }));
          record('D', key, "-", start, mono_ns(), ok);
        } else if (roll < 60) {
          const auto [a, b] = pair_of(k);
          const std::string ida = fresh_id(), idb = fresh_id();
          // The view has no set_many: namespace keys go by their stack keys (and no tags).
          auto stack_key = [&](int x) {
            return co::in_namespace(x) ? space.key(co::key_name(x)) : co::key_name(x);
          };
          const std::vector<std::pair<std::string, std::string>> entries{
              {stack_key(a), co::make_payload(ida, value_size(rng, max_bytes))},
              {stack_key(b), co::make_payload(idb, value_size(rng, max_bytes))}};
          const auto start = mono_ns();
          const bool ok = ok_of(n->cache->set_many<std::string>(entries, {.tags = co::tags_of(a)}));
          const auto end = mono_ns();
          record('S', co::key_name(a), ida, start, end, ok);
          record('S', co::key_name(b), idb, start, end, ok);
        } else if (roll < 68) {
          const auto [a, b] = pair_of(k);
          const std::vector<std::string> keys{co::key_name(a), co::key_name(b)};
          const auto start = mono_ns();
          const bool ok = ok_of(on(k, [&](auto& c) { return c.del_many(keys); }));
          const auto end = mono_ns();
          for (const auto& dk : keys) record('D', dk, "-", start, end, ok);
        } else if (roll < 84) {
          const auto& tags = co::all_tags();
          std::vector<std::string> chosen{tags[rng() % tags.size()]};
          const int how = static_cast<int>(rng() % 3);
          if (how > 0)
            chosen.push_back(chosen[0][0] == 't' ? "u" + std::to_string(rng() % 3)
                                                 : "t" + std::to_string(rng() % 2));
          const bool all = how == 2;
          const auto start = mono_ns();
          const bool ok =
              ok_of(how == 0 ? n->cache->invalidate_tag(chosen[0])
                             : n->cache->invalidate_tags(
                                   chosen, all ? lc::tag_match::all : lc::tag_match::any));
          std::string joined = chosen[0];
          for (std::size_t j = 1; j < chosen.size(); ++j) joined += "," + chosen[j];
          record('T', joined, all ? "all" : "any", start, mono_ns(), ok);
        } else if (roll < 94) {
          // "k<i>" removes one plain key (k10, k11 live in the namespace), "k" all eight.
          const std::string prefix =
              rng() % 8 == 0 ? std::string("k") : "k" + std::to_string(rng() % co::key_count);
          const auto start = mono_ns();
          const bool ok = ok_of(n->cache->invalidate_prefix(prefix));
          record('X', prefix, "-", start, mono_ns(), ok);
        } else {
          const auto start = mono_ns();
          const bool ok = ok_of(space.rotate());
          record('N', co::ns_name, "-", start, mono_ns(), ok);
        }
      } catch (const std::exception& e) {
        if (exceptions.fetch_add(1) < 10) {
          std::cerr << "coherence_node " << n->id << ": operation threw: " << e.what() << "\n";
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 1000));
    }
  };
  {
    std::vector<std::jthread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(worker, t);
  }
  if (!n->cache->flush(30s)) fail("queued writes did not land within 30 s");

  std::ofstream out(out_path);
  std::size_t count = 0;
  for (const auto& log : logs) {
    for (const auto& op : log) {
      out << co::format(op) << '\n';
      ++count;
    }
  }
  out.close();
  if (!out) fail("cannot write " + out_path);
  say("ops=" + std::to_string(count) + " exceptions=" + std::to_string(exceptions.load()) +
      " failed_writes=" + std::to_string(failed_writes.load()));
  say("metrics " + n->metrics_line());
  say("done");
  return 0;
}

// ---- agent ----------------------------------------------------------------------------------

// A parsed command: positional words and name=value options.
struct command {
  std::vector<std::string> words;
  std::map<std::string, std::string> opts;

  explicit command(const std::string& line) {
    std::istringstream in(line);
    for (std::string w; in >> w;) {
      const auto eq = w.find('=');
      if (eq != std::string::npos && eq > 0 && words.size() >= 1 &&
          (w.substr(0, eq) == "tags" || w.substr(0, eq) == "ns")) {
        opts[w.substr(0, eq)] = w.substr(eq + 1);
      } else {
        words.push_back(w);
      }
    }
  }
  const std::string& at(std::size_t i) const {
    if (i >= words.size()) throw std::invalid_argument("missing argument " + std::to_string(i));
    return words[i];
  }
  std::vector<std::string> tags() const {
    return opts.count("tags") ? co::split(opts.at("tags"), ',') : std::vector<std::string>{};
  }
};

class agent {
 public:
  agent(const options& o)
      : n_(make_node(o)),
        ctl_(o.text("redis-url"), 5s),
        channel_(o.text("redis-url"), 5s),
        in_(n_->ctl_prefix + "in:" + n_->id),
        out_(n_->ctl_prefix + "out:" + n_->id) {}

  int run() {
    say("ready id=" + n_->id);
    auto idle_since = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - idle_since < 60s) {
      const auto line = channel_.command({"BLPOP", in_, "1"});
      if (!line) continue;
      idle_since = std::chrono::steady_clock::now();
      if (*line == "quit") break;
      std::string reply;
      try {
        reply = run_command(command(*line));
      } catch (const std::exception& e) {
        reply = "ok=0 error=" + std::string(e.what());
      }
      reply_(reply);
    }
    if (!n_->cache->flush(10s)) fail("queued writes did not land within 10 s");
    say("metrics " + n_->metrics_line());
    say("done");
    return 0;
  }

 private:
  void reply_(const std::string& line) { (void)channel_.command({"RPUSH", out_, line}); }

  // The view for "a/b" (cache.ns("a").ns("b")), created once and kept, as an application would.
  lc::cache_namespace& view(const std::string& path) {
    auto it = views_.find(path);
    if (it != views_.end()) return it->second;
    const auto slash = path.rfind('/');
    lc::cache_namespace v = slash == std::string::npos
                                ? n_->cache->ns(path)
                                : view(path.substr(0, slash)).ns(path.substr(slash + 1));
    return views_.emplace(path, v).first->second;
  }

  // Runs `f` on the namespace view named by ns=..., or on the stack itself.
  template <class F>
  auto on_target(const command& c, F&& f) {
    if (c.opts.count("ns")) return f(view(c.opts.at("ns")));
    return f(*n_->cache);
  }
  std::string stack_key(const command& c, const std::string& key) {
    return c.opts.count("ns") ? view(c.opts.at("ns")).key(key) : key;
  }

  // A mutation, then flush: t_ack is when both returned (what the test measures from).
  std::string acked(const lc::status& s) {
    const bool flushed = n_->cache->flush(10s);
    return "ok=" + std::string(s.ok() && flushed ? "1" : "0") +
           " status=" + (s.ok() ? std::string("ok") : s.message()) +
           " flushed=" + (flushed ? "1" : "0") + " t_ack=" + std::to_string(mono_ns());
  }

  std::string peek(const command& c, const std::string& key) {
    auto v = on_target(c, [&](auto& t) { return t.template get_if_present<std::string>(key); });
    return v ? *v : "<null>";
  }

  // Commands (replies are "name=value" facts separated by spaces; values contain no spaces):
  //   set K V [tags=a,b] [ns=path]      set, flush            ok= t_ack=
  //   set_many K1:V1,K2:V2 [tags=..]     set_many, flush       ok= t_ack=
  //   del K [ns=]   del_many K1,K2 [ns=] del / del_many, flush  ok= t_ack=
  //   tag T [ns=]   tags any|all T1,T2 [ns=]   prefix P [ns=]   clear   rotate PATH
  //   get K [tags=] [ns=]                read-through; the fetcher answers "fetched-<id>-<n>"
  //                                      value= fetched=0|1 l1_before=0|1
  //   peek K [ns=]                       get_if_present        value=(or <null>) l1_before=
  //   l1 K [ns=]                         l1=0|1
  //   await K eq|ne V TIMEOUT_MS [ns=]   replies "started first= l1_before=" after the first read,
  //                                      then polls get_if_present every 100 us until the value
  //                                      equals (eq) / differs from (ne) V: "ok=1 value= t_seen=
  //                                      t_last_other= reads=" (t_seen: end of the first matching
  //                                      read) or "ok=0 value=<last>" at the timeout
  //   metrics                            the metrics line
  std::string run_command(const command& c) {
    const std::string& verb = c.at(0);
    if (verb == "set") {
      const std::string key = c.at(1), value = c.at(2);
      return acked(on_target(
          c, [&](auto& t) { return t.template set<std::string>(key, value, {.tags = c.tags()}); }));
    }
    if (verb == "set_many") {
      std::vector<std::pair<std::string, std::string>> entries;
      for (const auto& kv : co::split(c.at(1), ',')) {
        const auto colon = kv.find(':');
        entries.emplace_back(kv.substr(0, colon), kv.substr(colon + 1));
      }
      return acked(n_->cache->set_many<std::string>(entries, {.tags = c.tags()}));
    }
    if (verb == "del") {
      const std::string key = c.at(1);
      return acked(on_target(c, [&](auto& t) { return t.del(key); }));
    }
    if (verb == "del_many") {
      const auto keys = co::split(c.at(1), ',');
      return acked(on_target(c, [&](auto& t) { return t.del_many(keys); }));
    }
    if (verb == "tag") {
      const std::string tag = c.at(1);
      return acked(on_target(c, [&](auto& t) { return t.invalidate_tag(tag); }));
    }
    if (verb == "tags") {
      const auto match = c.at(1) == "all" ? lc::tag_match::all : lc::tag_match::any;
      const auto tags = co::split(c.at(2), ',');
      return acked(on_target(c, [&](auto& t) { return t.invalidate_tags(tags, match); }));
    }
    if (verb == "prefix") {
      const std::string prefix = c.at(1);
      return acked(on_target(c, [&](auto& t) { return t.invalidate_prefix(prefix); }));
    }
    if (verb == "clear") return acked(n_->cache->clear());
    if (verb == "rotate") return acked(view(c.at(1)).rotate());
    if (verb == "get") {
      const std::string key = c.at(1);
      const bool l1_before = n_->in_l1(stack_key(c, key));
      bool fetched = false;
      const auto v = on_target(c, [&](auto& t) {
        return t.template get<std::string>(key,
                                           [&] {
                                             fetched = true;
                                             const auto call = count_origin_call(*n_, ctl_, key);
                                             return "fetched-" + n_->id + "-" +
                                                    std::to_string(call);
                                           },
                                           {.tags = c.tags()});
      });
      return "ok=1 value=" + (v ? *v : std::string("<null>")) +
             " fetched=" + (fetched ? "1" : "0") + " l1_before=" + (l1_before ? "1" : "0");
    }
    if (verb == "peek") {
      const std::string key = c.at(1);
      const bool l1_before = n_->in_l1(stack_key(c, key));
      const std::string v = peek(c, key);
      return "ok=1 value=" + v + " l1_before=" + (l1_before ? "1" : "0");
    }
    if (verb == "l1") {
      return "ok=1 l1=" + std::string(n_->in_l1(stack_key(c, c.at(1))) ? "1" : "0");
    }
    if (verb == "await") {
      const std::string key = c.at(1), how = c.at(2), wanted = c.at(3);
      const ms timeout(std::stoll(c.at(4)));
      auto matches = [&](const std::string& v) { return (v == wanted) == (how == "eq"); };
      const bool l1_before = n_->in_l1(stack_key(c, key));
      std::int64_t start = mono_ns();
      std::string v = peek(c, key);
      reply_("started first=" + v + " l1_before=" + (l1_before ? "1" : "0"));
      std::int64_t last_other = 0;
      std::uint64_t reads = 1;
      const std::int64_t deadline = mono_ns() + std::chrono::nanoseconds(timeout).count();
      while (!matches(v)) {
        last_other = start;
        if (mono_ns() >= deadline) return "ok=0 value=" + v + " reads=" + std::to_string(reads);
        std::this_thread::sleep_for(100us);
        start = mono_ns();
        v = peek(c, key);
        ++reads;
      }
      return "ok=1 value=" + v + " t_seen=" + std::to_string(mono_ns()) +
             " t_last_other=" + std::to_string(last_other) + " reads=" + std::to_string(reads);
    }
    if (verb == "metrics") return "ok=1 " + n_->metrics_line();
    throw std::invalid_argument("unknown command " + verb);
  }

  std::unique_ptr<node> n_;
  plain_redis ctl_;      // the origin's counter
  plain_redis channel_;  // BLPOP / RPUSH of the command channel
  std::string in_, out_;
  std::map<std::string, lc::cache_namespace> views_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: see the header of tests/coherence_node/coherence_node.cpp\n";
    return 2;
  }
  const std::string_view mode = argv[1];
  try {
    const options o(argc, argv);
    if (o.text("redis-url").empty()) fail("--redis-url is required");
    if (mode == "stampede") return stampede(o);
    if (mode == "chaos") return chaos(o);
    if (mode == "agent") return agent(o).run();
  } catch (const std::exception& e) {
    fail(std::string("exception: ") + e.what());
  }
  std::cerr << "usage: see the header of tests/coherence_node/coherence_node.cpp\n";
  return 2;
}
