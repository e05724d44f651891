// layer_contract_test.cpp — the layer contract suite (tests/unit/layer_contract.hpp) over the real
// backends: Redis against a REAL redis-server, and the disk layer on a real RocksDB store, alone
// and stacked (memory + Redis, memory + disk, memory + Redis + disk).
//
// layer_contract.hpp defines tests, so it is included by exactly this one file of the integration
// binary; each backend's instantiations are compiled only when that backend is built
// (LAYERCACHE_TEST_WITH_REDIS / LAYERCACHE_TEST_WITH_DISK, set by tests/CMakeLists.txt).
//
// Redis: one redis-server per test binary process, started lazily by the first test that needs it
// and stopped by a global test environment; every factory call gets its own key prefix, so each
// test (and each instantiation) starts with an empty keyspace of its own and no test sees another's
// keys. Disk: every factory call opens a store in a temporary directory of its own, removed when
// the last reference to the layer goes away (the directory is owned by the layer's deleter). The
// fake clock of the suite is passed to every layer that keeps time (memory, Redis PX, disk expiry);
// the suite passes it to the stack.
#include "unit/layer_contract.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "layercache/memory_layer.hpp"

#if LAYERCACHE_TEST_WITH_REDIS
#include "layercache/redis_layer.hpp"
#include "support/redis_server.hpp"
#endif

#if LAYERCACHE_TEST_WITH_DISK
#include "layercache/disk_layer.hpp"
#include "support/temp_dir.hpp"
#endif

namespace layercache::test {
namespace {

using namespace std::chrono_literals;
using layers = std::vector<std::shared_ptr<layer>>;

#if LAYERCACHE_TEST_WITH_REDIS

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

INSTANTIATE_TEST_SUITE_P(
    Redis, LayerContractTest,
    ::testing::Values(
        layer_factory{"RedisOnly",
                      [](std::shared_ptr<const clock> c) {
                        return layers{make_redis("redis", std::move(c))};
                      }},
        layer_factory{
            "MemoryAndRedis",
            [](std::shared_ptr<const clock> c) {
              return layers{memory_layer::create({.clock = c}), make_redis("memory-redis", c)};
            }}),
    layer_factory_name);

#endif  // LAYERCACHE_TEST_WITH_REDIS

#if LAYERCACHE_TEST_WITH_DISK

// A disk layer over a fresh store in a temporary directory of its own. The returned pointer owns
// the directory: its deleter closes the store first, then removes the directory, so the directory
// lives exactly as long as the last reference to the layer (the test's stacks, byte_view()).
// Small bounds keep RocksDB's memory and files small; 64 MiB still admits the suite's 1 MiB value
// (entries up to max_bytes / 16).
std::shared_ptr<layer> make_disk(std::shared_ptr<const clock> c) {
  auto dir = std::make_shared<temp_dir>("layer-contract-disk");
  std::shared_ptr<disk_layer> disk = disk_layer::create({.directory = (dir->path() / "db").string(),
                                                         .max_bytes = 64ull << 20,
                                                         .block_cache_bytes = 8ull << 20,
                                                         .clock = std::move(c)});
  layer* raw = disk.get();
  return std::shared_ptr<layer>(raw,
                                [disk = std::move(disk), dir = std::move(dir)](layer*) mutable {
                                  disk.reset();  // close the store before its directory goes
                                  dir.reset();
                                });
}

// The disk stacks; memory + Redis + disk only where Redis is built too.
std::vector<layer_factory> disk_factories() {
  std::vector<layer_factory> out{
      {"DiskOnly", [](std::shared_ptr<const clock> c) { return layers{make_disk(std::move(c))}; }},
      {"MemoryAndDisk",
       [](std::shared_ptr<const clock> c) {
         return layers{memory_layer::create({.clock = c}), make_disk(c)};
       }},
  };
#if LAYERCACHE_TEST_WITH_REDIS
  out.push_back({"MemoryRedisAndDisk", [](std::shared_ptr<const clock> c) {
                   return layers{memory_layer::create({.clock = c}),
                                 make_redis("memory-redis-disk", c), make_disk(c)};
                 }});
#endif
  return out;
}

INSTANTIATE_TEST_SUITE_P(Disk, LayerContractTest, ::testing::ValuesIn(disk_factories()),
                         layer_factory_name);

#endif  // LAYERCACHE_TEST_WITH_DISK

#if !LAYERCACHE_TEST_WITH_REDIS && !LAYERCACHE_TEST_WITH_DISK
// A build without Redis and disk runs the suite from tests/unit/ only.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(LayerContractTest);
#endif

}  // namespace
}  // namespace layercache::test
