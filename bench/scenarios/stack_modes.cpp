#include "scenarios/stack_modes.hpp"

#include <stdexcept>

#include "layercache/memory_layer.hpp"
#if LAYERCACHE_BENCH_HAS_REDIS
#include "layercache/redis_layer.hpp"
#include "scenarios/redis_env.hpp"
#endif

namespace layercache::bench {

std::vector<std::string> available_stack_modes() {
#if LAYERCACHE_BENCH_HAS_REDIS
  return {"memory", "memory+redis"};
#else
  return {"memory"};
#endif
}

stack_mode make_stack_mode(const std::string& mode, const common_args& args) {
  using namespace std::chrono_literals;
  stack_mode m;
  if (mode == "memory") {
    m.cache = std::make_shared<cache_stack>(
        std::vector<std::shared_ptr<layer>>{memory_layer::create({.max_entries = 100'000})},
        stack_options{.ttl = 10min});
    return m;
  }
#if LAYERCACHE_BENCH_HAS_REDIS
  if (mode == "memory+redis") {
    auto env = std::make_shared<redis_env>(args);
    m.resources = env;
    m.cache = std::make_shared<cache_stack>(
        std::vector<std::shared_ptr<layer>>{
            memory_layer::create({.max_entries = 100'000}),
            redis_layer::create({.url = env->url(), .prefix = "bench:"})},
        stack_options{.ttl = 10min});
    return m;
  }
#else
  (void)args;
#endif
  throw std::invalid_argument("unknown stack mode: " + mode);
}

}  // namespace layercache::bench
