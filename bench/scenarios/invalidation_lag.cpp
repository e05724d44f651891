// invalidation-lag: how long a set in one process takes to become visible in another process that
// holds the key in its L1. Two processes, each with its own cache_stack (L1 + a coordinating Redis
// layer on one shared Redis): this process (A, the writer) and a reader B (this binary re-executed
// with the hidden invalidation-lag-reader subcommand).
//
// What is measured, per sample: from just before A's cache.set() call (best_effort, the default)
// to the moment B's cache.get() of that key first returns the new value (or a newer one). That
// span includes A's write-behind queue and background writer, the Redis write script (compare-and-
// set plus the bus PUBLISH), the pub/sub hop to B's bus thread, B dropping its L1 copy, and B's
// next get missing L1 and reading the new value from Redis. B spins on cache.get (an L1 hit until
// the bus message drops the entry); it records (sequence, CLOCK_MONOTONIC ns) whenever it sees a
// new sequence. CLOCK_MONOTONIC is system-wide on Linux, so A's set time and B's seen time compare
// directly. Samples are paced `pace_ms` apart; if B first sees a later sample than k (k was
// superseded before B saw it), k's lag is counted until that first newer value: never less than
// the true lag. The first `warmup` samples are not counted.
//
// B yields between gets (--reader-pause-us sleeps instead). On a small machine the spinning reader
// competes for CPU with the threads that deliver the message (A's writer, redis-server, B's bus
// thread), and any other load on the machine shows in the tail: compare runs on a quiet machine.
//
// Target: p99 <= 2 ms on loopback.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/timing.hpp"
#include "layercache/layercache.hpp"
#include "layercache/redis_layer.hpp"
#include "scenarios/redis_env.hpp"
#include "scenarios/scenario.hpp"
#include "scenarios/worker_process.hpp"
#include "support/child_process.hpp"

namespace layercache::bench {
namespace {

using namespace std::chrono_literals;

struct lag_args {
  int samples = 2000;
  int warmup = 50;
  double pace_ms = 3.0;
  int reader_pause_us = 0;
};

struct reader_args {
  std::string url;
  std::string prefix;
  std::string key;
  long long last_seq = 0;
  int idle_timeout_ms = 10'000;
  int pause_us = 0;  // between two gets; 0 = spin (yield only)
};

// Values are "<sequence>:<CLOCK_MONOTONIC ns just before the set call>".
std::string make_value(long long seq, std::int64_t ns) {
  return std::to_string(seq) + ":" + std::to_string(ns);
}
long long seq_of(const std::string& v) { return std::stoll(v.substr(0, v.find(':'))); }
std::int64_t ns_of(const std::string& v) { return std::stoll(v.substr(v.find(':') + 1)); }

// ---- reader process (B) ---------------------------------------------------------------------

void run_reader(const reader_args& r) {
  cache_stack cache({memory_layer::create({.max_entries = 1000}),
                     redis_layer::create({.url = r.url, .prefix = r.prefix})},
                    {.ttl = 10min});
  long long fetches = 0;
  // The key is always in Redis; a fetch would mean it was not. Not cached (negative_ttl 0).
  auto fetcher = [&]() -> std::optional<std::string> {
    ++fetches;
    return std::nullopt;
  };
  const get_options opts{.negative_ttl = 0ms};
  auto v = cache.get<std::string>(r.key, fetcher, opts);
  if (!v) throw std::runtime_error("invalidation-lag reader: the key is not in Redis");
  long long last = seq_of(*v);
  std::printf("ready\n");
  std::fflush(stdout);

  std::vector<std::pair<long long, std::int64_t>> seen;  // (sequence, first seen ns)
  std::vector<double> own_lag_us;                        // seen ns - timestamp in the value
  std::uint64_t gets = 0;
  std::int64_t last_change = monotonic_ns();
  while (last < r.last_seq) {
    v = cache.get<std::string>(r.key, fetcher, opts);
    const std::int64_t now = monotonic_ns();
    ++gets;
    if (v) {
      const long long seq = seq_of(*v);
      if (seq > last) {
        seen.emplace_back(seq, now);
        own_lag_us.push_back(static_cast<double>(now - ns_of(*v)) / 1e3);
        last = seq;
        last_change = now;
        continue;
      }
    }
    if (now - last_change > std::int64_t{r.idle_timeout_ms} * 1'000'000) break;
    if (r.pause_us > 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(r.pause_us));
    } else {
      std::this_thread::yield();
    }
  }
  const metrics_snapshot m = cache.metrics();
  nlohmann::json seen_json = nlohmann::json::array();
  for (const auto& [seq, ns] : seen) seen_json.push_back({seq, ns});
  nlohmann::json report{{"seen", seen_json},
                        {"gets", gets},
                        {"fetches", fetches},
                        {"l1_hits", m.layers[0].hits},
                        {"redis_hits", m.layers[1].hits},
                        {"redis_misses", m.layers[1].misses},
                        {"bus_received", m.bus_received},
                        {"bus_resyncs", m.bus_resyncs},
                        {"last_seq", last}};
  std::printf("%s\n", report.dump().c_str());
}

// ---- writer (A, this process) ---------------------------------------------------------------

void run(const common_args& common, const lag_args& a) {
  redis_env env(common);
  const std::string prefix = "lagbench:" + std::to_string(monotonic_ns()) + ":";
  const std::string key = "k";
  cache_stack cache({memory_layer::create({.max_entries = 1000}),
                     redis_layer::create({.url = env.url(), .prefix = prefix})},
                    {.ttl = 10min});
  if (!cache.set<std::string>(key, make_value(0, monotonic_ns()), {.policy = write_policy::strict})
           .ok()) {
    throw std::runtime_error("invalidation-lag: could not write the key to Redis");
  }
  const long long total = a.warmup + a.samples;
  test::child_process reader(
      self_exe(),
      {"invalidation-lag-reader", "--url", env.url(), "--prefix", prefix, "--key", key,
       "--last-seq", std::to_string(total), "--pause-us", std::to_string(a.reader_pause_us)},
      {.capture_stdout = true});
  const auto ready_by = std::chrono::steady_clock::now() + 15s;
  while (reader.output().find("ready\n") == std::string::npos) {
    if (auto st = reader.wait_for(0ms)) {
      throw std::runtime_error("invalidation-lag: reader exited early (" + st->to_string() +
                               "):\n" + reader.output());
    }
    if (std::chrono::steady_clock::now() > ready_by) {
      throw std::runtime_error("invalidation-lag: reader not ready within 15 s");
    }
    std::this_thread::sleep_for(1ms);
  }

  std::vector<std::int64_t> set_ns(static_cast<std::size_t>(total) + 1, 0);
  const auto pace = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::duration<double, std::milli>(a.pace_ms));
  std::int64_t next = monotonic_ns();
  int failed_sets = 0;
  for (long long seq = 1; seq <= total; ++seq) {
    next += pace.count();
    sleep_until_monotonic_ns(next);
    const std::int64_t t = monotonic_ns();
    set_ns[static_cast<std::size_t>(seq)] = t;
    if (!cache.set<std::string>(key, make_value(seq, t)).ok()) ++failed_sets;
  }
  auto st = reader.wait_for(30s);
  if (!st || !st->success()) {
    throw std::runtime_error("invalidation-lag: reader failed (" +
                             (st ? st->to_string() : std::string("still running")) + "):\n" +
                             reader.output());
  }
  const nlohmann::json rep = last_json_line(reader.output());

  // Lag of sample k: first time B saw a sequence >= k, minus A's set time of k.
  std::vector<std::pair<long long, std::int64_t>> seen;
  for (const auto& e : rep["seen"])
    seen.emplace_back(e[0].get<long long>(), e[1].get<std::int64_t>());
  std::vector<double> lag_us;
  int superseded = 0, missing = 0;
  std::size_t j = 0;
  for (long long k = a.warmup + 1; k <= total; ++k) {
    while (j < seen.size() && seen[j].first < k) ++j;
    if (j == seen.size()) {
      ++missing;
      continue;
    }
    if (seen[j].first != k) ++superseded;
    lag_us.push_back(static_cast<double>(seen[j].second - set_ns[static_cast<std::size_t>(k)]) /
                     1e3);
  }
  const ms_percentiles s = summarize_ms(lag_us);  // the helper is unit-agnostic: these are us
  const double max_us = lag_us.empty() ? 0.0 : *std::max_element(lag_us.begin(), lag_us.end());
  const bool target_ok = !lag_us.empty() && s.p99 <= 2000.0 && missing == 0;

  std::printf(
      "Invalidation lag: process A sets a key (best_effort) every %.1f ms; process B, holding it "
      "in L1,\nspins on get until it sees the new value. Lag = A's set call -> value visible in B "
      "(write-behind\nqueue + Redis write script + bus hop + B's Redis read). %d samples after %d "
      "warm-up.\n\n",
      a.pace_ms, a.samples, a.warmup);
  print_table(
      {"samples", "p50 us", "p99 us", "max us", "avg us", "superseded", "missing"},
      {{std::to_string(lag_us.size()), fmt_num(s.p50, 0), fmt_num(s.p99, 0), fmt_num(max_us, 0),
        fmt_num(s.avg, 0), std::to_string(superseded), std::to_string(missing)}});
  std::printf("\ntarget: p99 <= 2000 us on loopback, none missing (%s)\n",
              target_ok ? "met" : "MISSED");
  std::printf(
      "reader counters: gets %llu, L1 hits %llu, Redis hits %llu, bus messages %llu, "
      "bus resyncs %llu, fetches %lld\n",
      static_cast<unsigned long long>(rep["gets"].get<std::uint64_t>()),
      static_cast<unsigned long long>(rep["l1_hits"].get<std::uint64_t>()),
      static_cast<unsigned long long>(rep["redis_hits"].get<std::uint64_t>()),
      static_cast<unsigned long long>(rep["bus_received"].get<std::uint64_t>()),
      static_cast<unsigned long long>(rep["bus_resyncs"].get<std::uint64_t>()),
      rep["fetches"].get<long long>());
  emit_json(common, {{"samples", lag_us.size()},
                     {"requested_samples", a.samples},
                     {"warmup", a.warmup},
                     {"pace_ms", a.pace_ms},
                     {"reader_pause_us", a.reader_pause_us},
                     {"p50_us", s.p50},
                     {"p99_us", s.p99},
                     {"max_us", max_us},
                     {"avg_us", s.avg},
                     {"superseded", superseded},
                     {"missing", missing},
                     {"failed_sets", failed_sets},
                     {"target_p99_us", 2000},
                     {"target_met", target_ok},
                     {"reader",
                      {{"gets", rep["gets"]},
                       {"fetches", rep["fetches"]},
                       {"l1_hits", rep["l1_hits"]},
                       {"redis_hits", rep["redis_hits"]},
                       {"redis_misses", rep["redis_misses"]},
                       {"bus_received", rep["bus_received"]},
                       {"bus_resyncs", rep["bus_resyncs"]}}}});
}

}  // namespace

void register_invalidation_lag(CLI::App& app, common_args& args) {
  static lag_args storage;
  auto* sub = app.add_subcommand(
      "invalidation-lag", "set in one process -> new value visible in another's L1: lag p50/p99");
  sub->add_option("--samples", storage.samples)->check(CLI::Range(1, 1'000'000));
  sub->add_option("--warmup", storage.warmup)->check(CLI::Range(0, 100'000));
  sub->add_option("--pace-ms", storage.pace_ms, "time between two sets")
      ->check(CLI::Range(0.1, 1000.0));
  sub->add_option("--reader-pause-us", storage.reader_pause_us,
                  "reader's sleep between gets; 0 = spin (default). Adds up to this much lag")
      ->check(CLI::Range(0, 100'000));
  sub->callback([&args] { run(args, storage); });

  // Hidden: the reader process B, started by the subcommand above.
  static reader_args reader;
  auto* r = app.add_subcommand("invalidation-lag-reader", "");
  r->group("");
  r->add_option("--url", reader.url)->required();
  r->add_option("--prefix", reader.prefix)->required();
  r->add_option("--key", reader.key)->required();
  r->add_option("--last-seq", reader.last_seq)->required();
  r->add_option("--idle-timeout-ms", reader.idle_timeout_ms);
  r->add_option("--pause-us", reader.pause_us);
  r->callback([] { run_reader(reader); });
}

}  // namespace layercache::bench
