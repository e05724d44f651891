// layercache-bench — scenario benchmarks. `layercache-bench --help` lists the subcommands.
#include "scenarios/scenario.hpp"

int main(int argc, char** argv) {
  CLI::App app{"layercache scenario benchmarks"};
  app.require_subcommand(1);
  app.fallthrough();  // lets --json and --redis follow the subcommand too
  layercache::bench::common_args args;
  app.add_flag("--json", args.json, "print one JSON object as the last line");
  app.add_option("--redis", args.redis_url,
                 "Redis URL to use; default: start a throwaway redis-server on a free port");
  layercache::bench::register_hot_path(app, args);
  layercache::bench::register_stampede(app, args);
  layercache::bench::register_hit_ratio(app, args);
#if LAYERCACHE_BENCH_HAS_REDIS
  layercache::bench::register_l2_hit(app, args);
  layercache::bench::register_slow_redis(app, args);
  layercache::bench::register_multi_process(app, args);
  layercache::bench::register_invalidation_lag(app, args);
#endif
#if LAYERCACHE_BENCH_HAS_CONSISTENCY
  layercache::bench::register_consistency(app, args);
#endif
#if LAYERCACHE_BENCH_HAS_DISK
  layercache::bench::register_disk(app, args);
#endif
  CLI11_PARSE(app, argc, argv);
  return 0;
}
