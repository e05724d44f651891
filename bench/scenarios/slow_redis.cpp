// slow-redis: the TypeScript original's table. Redis behind the fault proxy with 0, 100 and 500 ms
// added per round trip, and blackholed (dead): L1 hit, L2 hit and cold-miss latency, each the
// median of >= 20 samples.
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
  std::vector<int> cases = a.delays;
  cases.push_back(-1);  // dead: proxy blackholed
  int round = 0;
  for (int delay : cases) {
    ++round;
    test::tcp_fault_proxy proxy(env.host(), env.port());
    if (delay > 0) {
      proxy.set_latency(std::chrono::milliseconds(delay / 2),
                        std::chrono::milliseconds(delay - delay / 2));
    }
    cache_stack cache(
        {memory_layer::create({.max_entries = 10'000}),
         redis_layer::create({.url = proxy.url(),
                              .prefix = "slow:",
                              .read_deadline = std::chrono::milliseconds(a.read_deadline_ms),
                              .connect_timeout = 1000ms})},
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
    rows.push_back({{"delay_ms", delay},
                    {"l1_hit_ms", l1_ms},
                    {"l2_hit_ms", l2_ms},
                    {"cold_miss_ms", cold_ms},
                    {"redis_hits", m.layers[1].hits},
                    {"redis_timeouts", m.layers[1].timeouts},
                    {"breaker_state", m.layers[1].breaker_state}});
    table.push_back({delay < 0 ? std::string("dead") : std::to_string(delay), fmt_num(l1_ms, 4),
                     fmt_num(l2_ms, 2), fmt_num(cold_ms, 2), std::to_string(m.layers[1].hits),
                     std::to_string(m.layers[1].timeouts), m.layers[1].breaker_state});
  }
  std::printf("Slow Redis: latency medians of %d samples, origin %d ms, read_deadline %d ms\n\n",
              a.samples, a.origin_ms, a.read_deadline_ms);
  print_table({"added RTT ms", "L1 hit ms", "L2 hit ms", "cold miss ms", "redis hits",
               "redis timeouts", "breaker"},
              table);
  emit_json(common, {{"origin_ms", a.origin_ms},
                     {"read_deadline_ms", a.read_deadline_ms},
                     {"samples", a.samples},
                     {"rows", rows}});
}

}  // namespace

void register_slow_redis(CLI::App& app, common_args& args) {
  static slow_args storage;
  auto* sub = app.add_subcommand("slow-redis", "latency with Redis slowed down or dead");
  sub->add_option("--samples", storage.samples)->check(CLI::Range(20, 100000));
  sub->add_option("--origin-ms", storage.origin_ms);
  sub->add_option("--read-deadline-ms", storage.read_deadline_ms);
  sub->callback([&args] { run(args, storage); });
}

}  // namespace layercache::bench
