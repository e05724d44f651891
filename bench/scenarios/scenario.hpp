// scenario.hpp — the subcommands of layercache-bench. Each registers itself on the CLI app and,
// when run, prints a human table and, with --json, one JSON object as the last line of output.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>

namespace layercache::bench {

struct common_args {
  bool json = false;
  std::string redis_url;  // --redis URL; empty = start a throwaway redis-server
};

// Prints the JSON line when asked (always last).
inline void emit_json(const common_args& args, const nlohmann::json& j) {
  if (args.json) std::printf("%s\n", j.dump().c_str());
}

void register_hot_path(CLI::App& app, common_args& args);
void register_stampede(CLI::App& app, common_args& args);
void register_hit_ratio(CLI::App& app, common_args& args);
#if LAYERCACHE_BENCH_HAS_REDIS
void register_l2_hit(CLI::App& app, common_args& args);
void register_slow_redis(CLI::App& app, common_args& args);
// Multi-process scenarios also register a hidden worker subcommand each (the binary re-executes
// itself as the worker processes).
void register_multi_process(CLI::App& app, common_args& args);
void register_invalidation_lag(CLI::App& app, common_args& args);
#endif
#if LAYERCACHE_BENCH_HAS_CONSISTENCY
// Runs the coherence node executable of tests/ (see consistency.cpp).
void register_consistency(CLI::App& app, common_args& args);
#endif
#if LAYERCACHE_BENCH_HAS_DISK
void register_disk(CLI::App& app, common_args& args);
#endif

}  // namespace layercache::bench
