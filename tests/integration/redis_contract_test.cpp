// redis_contract_test.cpp — the layer contract suite (tests/unit/layer_contract.hpp) over the Redis
// layer against a REAL redis-server: Redis alone, and memory in front of Redis.
//
// One redis-server per test binary process, started lazily by the first test that needs it and
// stopped by a global test environment; every factory call gets its own key prefix, so each test
// (and each instantiation) starts with an empty keyspace of its own and no test sees another's
// keys. The fake clock of the suite is passed to the memory layer and to the Redis layer (whose PX
// is the entry's remaining lifetime on that clock); the suite passes it to the stack.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "layercache/memory_layer.hpp"
#include "layercache/redis_layer.hpp"
#include "support/redis_server.hpp"
#include "unit/layer_contract.hpp"

namespace layercache::test {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<redis_server>& server_slot() {
  static std::unique_ptr<redis_server> server;
  return server;
}

// Started on first use, from the main test thread (which outlives it, see redis_server.hpp).
redis_server& shared_server() {
  auto& s = server_slot();
  if (!s) s = std::make_unique<redis_server>();
  return *s;
}

class stop_shared_server final : public ::testing::Environment {
 public:
  void TearDown() override { server_slot().reset(); }
};

[[maybe_unused]] ::testing::Environment* const shared_server_env =
    ::testing::AddGlobalTestEnvironment(new stop_shared_server);

// A Redis layer with a prefix no other factory call uses. Deadlines are generous: the contract is
// about behaviour, not latency, and must hold under ThreadSanitizer too (1 MiB values).
std::shared_ptr<layer> make_redis(std::string_view family, std::shared_ptr<const clock> c) {
  static std::atomic<int> next{0};
  redis_layer_options o;
  o.url = shared_server().url();
  o.prefix = "contract:" + std::string(family) + ":" + std::to_string(next.fetch_add(1)) + ":";
  o.read_deadline = 2s;
  o.write_deadline = 5s;
  o.connect_timeout = 2s;
  o.clock = std::move(c);
  return redis_layer::create(std::move(o));
}

using layers = std::vector<std::shared_ptr<layer>>;

INSTANTIATE_TEST_SUITE_P(
    Redis, LayerContractTest,
    ::testing::Values(layer_factory{"RedisOnly",
                                    [](std::shared_ptr<const clock> c) {
                                      return layers{make_redis("redis", std::move(c))};
                                    }},
                      layer_factory{"MemoryAndRedis",
                                    [](std::shared_ptr<const clock> c) {
                                      return layers{memory_layer::create({.clock = c}),
                                                    make_redis("memory-redis", c)};
                                    }}),
    layer_factory_name);

}  // namespace
}  // namespace layercache::test
