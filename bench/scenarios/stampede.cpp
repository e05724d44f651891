// stampede: many concurrent gets of one missing key; counts origin calls and round wall time.
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <functional>
#include <thread>

#include "common/timing.hpp"
#include "layercache/layercache.hpp"
#include "scenarios/scenario.hpp"
#include "scenarios/stack_modes.hpp"

namespace layercache::bench {
namespace {

struct stampede_args {
  int rounds = 5;
  int concurrency = 75;
  int origin_ms = 5;
  std::vector<std::string> modes;
};

nlohmann::json run_mode(const std::string& mode, const common_args& common,
                        const stampede_args& a) {
  stack_mode sm = make_stack_mode(mode, common);
  std::atomic<int> origin_calls{0};
  std::vector<double> round_ms;
  for (int r = 0; r < a.rounds; ++r) {
    const std::string key =
        "stampede:" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) +
        ":" + std::to_string(r);
    std::barrier start(a.concurrency + 1);
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < a.concurrency; ++t) {
      threads.emplace_back([&] {
        start.arrive_and_wait();
        auto v = sm.cache->get<std::string>(key, [&] {
          origin_calls.fetch_add(1);
          std::this_thread::sleep_for(std::chrono::milliseconds(a.origin_ms));
          return std::string("value-of-") + key;
        });
        if (!v || *v != "value-of-" + key) wrong.fetch_add(1);
      });
    }
    start.arrive_and_wait();
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& th : threads) th.join();
    round_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    if (wrong.load() != 0) {
      std::fprintf(stderr, "stampede: %d callers got a wrong value\n", wrong.load());
      std::exit(1);
    }
  }
  const ms_percentiles s = summarize_ms(round_ms);
  return {{"mode", mode},
          {"rounds", a.rounds},
          {"concurrency", a.concurrency},
          {"origin_calls", origin_calls.load()},
          {"origin_ms", a.origin_ms},
          {"avg_ms", s.avg},
          {"p50_ms", s.p50}};
}

void run(const common_args& common, const stampede_args& a) {
  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::vector<std::string>> table;
  const std::vector<std::string> modes = a.modes.empty() ? available_stack_modes() : a.modes;
  for (const auto& mode : modes) {
    nlohmann::json row = run_mode(mode, common, a);
    table.push_back({mode, std::to_string(a.rounds), std::to_string(a.concurrency),
                     std::to_string(row["origin_calls"].get<int>()), std::to_string(a.origin_ms),
                     fmt_num(row["avg_ms"].get<double>(), 2)});
    rows.push_back(std::move(row));
  }
  std::printf(
      "Stampede: %d concurrent gets of one missing key, %d rounds (new key each), origin %d ms\n\n",
      a.concurrency, a.rounds, a.origin_ms);
  print_table({"mode", "rounds", "concurrency", "origin calls", "origin ms", "avg ms/round"},
              table);
  emit_json(common, {{"rows", rows}});
}

}  // namespace

void register_stampede(CLI::App& app, common_args& args) {
  static stampede_args storage;
  auto* sub =
      app.add_subcommand("stampede", "concurrent misses of one key: origin calls and latency");
  sub->add_option("--rounds", storage.rounds);
  sub->add_option("--concurrency", storage.concurrency);
  sub->add_option("--origin-ms", storage.origin_ms);
  sub->add_option("--mode", storage.modes, "stack modes to run (default: all available)");
  sub->callback([&args] { run(args, storage); });
}

}  // namespace layercache::bench
