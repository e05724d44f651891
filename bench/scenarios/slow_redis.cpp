// slow-redis: the TypeScript original's table. Redis behind the fault proxy with 0, 100 and 500 ms
// added per round trip, and blackholed (dead): L1 hit, L2 hit and cold-miss latency, each the
// median of >= 20 samples. Those rows use the tight read_deadline (50 ms by default), so a Redis
// slower than that is skipped (timeouts, then the breaker).
//
// "Healthy but slow" rows (default: +100 ms with a 1 s read_deadline) let every round trip finish,
// so they show how many round trips each path costs on the caller's path, as (median - origin) /
// added RTT. With coordination on (the default) a cold miss is two round trips (docs/design.md,
// "Distributed single-flight"): RT1, the acquire script (the value, or a lease for this caller),
// then the fetch; RT2, the write script storing the value and releasing the lease, runs in the
// background after the caller has its value. Baseline: the TypeScript original's cold miss took
// 4-5 round trips (404-504 ms at +100 ms).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "common/timing.hpp"
#include "layercache/layercache.hpp"
#include "layercache/redis_layer.hpp"
#include "scenarios/redis_env.hpp"
#include "scenarios/scenario.hpp"
#include "support/tcp_fault_proxy.hpp"

namespace layercache::bench {
namespace {

struct slow_args {
  int samples = 20;
  int origin_ms = 5;
  int read_deadline_ms = 50;
  std::vector<int> delays{0, 100, 500};
  // Healthy but slow: these added RTTs with the generous read deadline below.
  std::vector<int> slow_delays{100};
  int generous_deadline_ms = 1000;
};

struct slow_case {
  int delay_ms = 0;  // added per round trip; -1 = blackholed
  int read_deadline_ms = 0;
  bool generous = false;
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void run(const common_args& common, const slow_args& a) {
  using namespace std::chrono_literals;
  redis_env env(common);
  // Values for the L2-hit samples are written straight to Redis by a second, direct stack.
  cache_stack writer({redis_layer::create({.url = env.url(), .prefix = "slow:"})}, {.ttl = 1h});
  auto origin = [&](const std::string& key) {
    std::this_thread::sleep_for(std::chrono::milliseconds(a.origin_ms));
    return "origin:" + key;
  };

  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::vector<std::string>> table;
  std::vector<slow_case> cases;
  for (int d : a.delays) cases.push_back({d, a.read_deadline_ms, false});
  cases.push_back({-1, a.read_deadline_ms, false});  // dead: proxy blackholed
  for (int d : a.slow_delays) cases.push_back({d, a.generous_deadline_ms, true});
  int round = 0;
  for (const slow_case& c : cases) {
    const int delay = c.delay_ms;
    ++round;
    test::tcp_fault_proxy proxy(env.host(), env.port());
    if (delay > 0) {
      proxy.set_latency(std::chrono::milliseconds(delay / 2),
                        std::chrono::milliseconds(delay - delay / 2));
    }
    // Healthy-but-slow rows give writes and connects the generous deadline too, so the
    // background fill (RT2) lands instead of timing out.
    const std::chrono::milliseconds deadline(c.read_deadline_ms);
    cache_stack cache(
        {memory_layer::create({.max_entries = 10'000}),
         redis_layer::create(
             {.url = proxy.url(),
              .prefix = "slow:",
              .read_deadline = deadline,
              .write_deadline = c.generous ? deadline : redis_layer_options{}.write_deadline,
              .connect_timeout = c.generous ? std::max(deadline, 1000ms) : 1000ms})},
        {.ttl = 1h, .shutdown_flush_timeout = 100ms});
    const std::string tag = "r" + std::to_string(round) + ":";
    for (int i = 0; i < a.samples; ++i) {
      (void)writer.set<std::string>(tag + "l2:" + std::to_string(i), "stored",
                                    {.policy = write_policy::strict});
    }
    if (delay == -1) proxy.blackhole(true);

    std::vector<double> l1, l2, cold;
    (void)cache.get<std::string>(tag + "hot", [&] { return origin("hot"); });
    for (int i = 0; i < a.samples; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      (void)cache.get<std::string>(tag + "hot", [&] { return origin("hot"); });
      l1.push_back(ms_since(t0));
    }
    for (int i = 0; i < a.samples; ++i) {
      const std::string key = tag + "l2:" + std::to_string(i);
      auto t0 = std::chrono::steady_clock::now();
      (void)cache.get<std::string>(key, [&] { return origin(key); });
      l2.push_back(ms_since(t0));
    }
    for (int i = 0; i < a.samples; ++i) {
      const std::string key = tag + "cold:" + std::to_string(i);
      auto t0 = std::chrono::steady_clock::now();
      (void)cache.get<std::string>(key, [&] { return origin(key); });
      cold.push_back(ms_since(t0));
    }
    const auto m = cache.metrics();
    const double l1_ms = summarize_ms(l1).p50, l2_ms = summarize_ms(l2).p50,
                 cold_ms = summarize_ms(cold).p50;
    nlohmann::json row{{"delay_ms", delay},
                       {"read_deadline_ms", c.read_deadline_ms},
                       {"healthy_slow", c.generous},
                       {"l1_hit_ms", l1_ms},
                       {"l2_hit_ms", l2_ms},
                       {"cold_miss_ms", cold_ms},
                       {"redis_hits", m.layers[1].hits},
                       {"redis_timeouts", m.layers[1].timeouts},
                       {"breaker_state", m.layers[1].breaker_state},
                       {"lease_grants", m.lease_grants},
                       {"coordination_fallbacks", m.coordination_fallbacks}};
    std::string rtts;
    if (delay > 0 && m.layers[1].timeouts == 0) {
      // Round trips a path costs, from its median: (latency - origin) / added RTT. Only where
      // Redis answered every call (otherwise the layer was skipped and the figure means nothing).
      const double l2_rtts = l2_ms / delay;
      const double cold_rtts = (cold_ms - a.origin_ms) / delay;
      row["l2_hit_round_trips"] = l2_rtts;
      row["cold_miss_round_trips"] = cold_rtts;
      rtts = fmt_num(l2_rtts, 1) + " / " + fmt_num(cold_rtts, 1);
    }
    rows.push_back(std::move(row));
    table.push_back({delay < 0 ? std::string("dead") : std::to_string(delay),
                     std::to_string(c.read_deadline_ms), fmt_num(l1_ms, 4), fmt_num(l2_ms, 2),
                     fmt_num(cold_ms, 2), rtts, std::to_string(m.layers[1].hits),
                     std::to_string(m.layers[1].timeouts), m.layers[1].breaker_state});
  }
  std::printf("Slow Redis: latency medians of %d samples, origin %d ms\n\n", a.samples,
              a.origin_ms);
  print_table({"added RTT ms", "read deadline ms", "L1 hit ms", "L2 hit ms", "cold miss ms",
               "RTTs L2 hit / cold miss", "redis hits", "redis timeouts", "breaker"},
              table);
  std::printf(
      "\nRTTs = (median - origin) / added RTT, on the caller's path. Baseline, the TypeScript "
      "original: a cold miss took\n4-5 round trips (404-504 ms at +100 ms). Coordinated cold miss "
      "here: RT1 (acquire: value or lease), the fetch;\nRT2 (write the value, release the lease) "
      "runs in the background.\n");
  emit_json(common, {{"origin_ms", a.origin_ms},
                     {"read_deadline_ms", a.read_deadline_ms},
                     {"generous_read_deadline_ms", a.generous_deadline_ms},
                     {"samples", a.samples},
                     {"baseline_ts_cold_miss_round_trips", {4, 5}},
                     {"baseline_ts_cold_miss_ms_at_100", {404, 504}},
                     {"rows", rows}});
}

}  // namespace

void register_slow_redis(CLI::App& app, common_args& args) {
  static slow_args storage;
  auto* sub = app.add_subcommand("slow-redis", "latency with Redis slowed down or dead");
  sub->add_option("--samples", storage.samples)->check(CLI::Range(20, 100000));
  sub->add_option("--origin-ms", storage.origin_ms);
  sub->add_option("--read-deadline-ms", storage.read_deadline_ms);
  sub->add_option("--delays", storage.delays, "added RTTs (ms) run with --read-deadline-ms");
  sub->add_option("--slow-delays", storage.slow_delays,
                  "added RTTs (ms) run with --generous-deadline-ms (healthy but slow Redis)");
  sub->add_option("--generous-deadline-ms", storage.generous_deadline_ms)
      ->check(CLI::Range(1, 600000));
  sub->callback([&args] { run(args, storage); });
}

}  // namespace layercache::bench
