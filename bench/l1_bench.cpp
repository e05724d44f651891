// l1_bench.cpp — Google Benchmark micro-benchmarks of the memory layer through cache_stack:
// L1 hit (1 and 2 threads), miss + fetch, set, and the heap cost of an entry beyond its key and
// value (bytes_per_entry, measured with the counting allocator in common/alloc_counter.cpp).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/alloc_counter.hpp"
#include "layercache/layercache.hpp"

namespace {

using namespace std::chrono_literals;
using layercache::cache_stack;
using layercache::memory_layer;

constexpr std::size_t key_count = 10'000;

std::vector<std::string> make_keys(std::size_t n, const char* prefix = "user:") {
  std::vector<std::string> keys;
  keys.reserve(n);
  for (std::size_t i = 0; i < n; ++i) keys.push_back(prefix + std::to_string(100000 + i));
  return keys;
}

cache_stack& shared_cache() {
  static cache_stack cache({memory_layer::create({.max_entries = key_count * 2})},
                           {.ttl = std::chrono::hours(1)});
  static bool filled = [] {
    const auto keys = make_keys(key_count);
    for (const auto& k : keys) (void)cache.set<std::string>(k, std::string(100, 'v'));
    return true;
  }();
  (void)filled;
  return cache;
}

void BM_L1Hit(benchmark::State& state) {
  cache_stack& cache = shared_cache();
  static const auto keys = make_keys(key_count);
  std::size_t i = static_cast<std::size_t>(state.thread_index()) * 4099;
  const std::uint64_t allocs_before = layercache::bench::thread_allocations();
  for (auto _ : state) {
    auto v = cache.get<std::string>(
        keys[i % key_count], []() -> std::string { throw std::runtime_error("unexpected miss"); });
    benchmark::DoNotOptimize(v);
    i += 7;
  }
  state.counters["allocs_per_hit"] = benchmark::Counter(
      static_cast<double>(layercache::bench::thread_allocations() - allocs_before) /
      static_cast<double>(state.iterations()));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_L1Hit)->Threads(1)->Threads(2)->UseRealTime();

void BM_MissFetch(benchmark::State& state) {
  cache_stack cache({memory_layer::create({.max_entries = 1'000'000})}, {.ttl = 1h});
  std::uint64_t n = 0;
  std::string key;
  for (auto _ : state) {
    key = "miss:" + std::to_string(n++);
    auto v = cache.get<std::string>(key, [] { return std::string(100, 'x'); });
    benchmark::DoNotOptimize(v);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MissFetch);

void BM_Set(benchmark::State& state) {
  cache_stack cache({memory_layer::create({.max_entries = key_count * 2})}, {.ttl = 1h});
  const auto keys = make_keys(key_count);
  std::size_t i = 0;
  for (auto _ : state) {
    auto s = cache.set<std::string>(keys[i++ % key_count], std::string(100, 'x'));
    benchmark::DoNotOptimize(s);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Set);

// Heap bytes per entry beyond the key bytes and the value object (an 8-byte integer, so the value
// owns no heap of its own). Includes allocator rounding, the shared_ptr control block, the entry
// node and the hash-table buckets.
void BM_BytesPerEntry(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto keys = make_keys(n, "session:");  // 14-byte keys
  double overhead = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const std::int64_t before = layercache::bench::live_heap_bytes();
    auto l1 = memory_layer::create({.max_entries = n, .shards = 64});
    {
      cache_stack cache({l1}, {.ttl = 1h});
      const std::int64_t with_stack = layercache::bench::live_heap_bytes();
      for (std::size_t i = 0; i < n; ++i) {
        (void)cache.set<std::int64_t>(keys[i], static_cast<std::int64_t>(i));
      }
      const std::int64_t after = layercache::bench::live_heap_bytes();
      const double per_entry = static_cast<double>(after - with_stack) / static_cast<double>(n);
      overhead = per_entry - static_cast<double>(keys[0].size()) - sizeof(std::int64_t);
      benchmark::DoNotOptimize(before);
    }
    state.ResumeTiming();
  }
  state.counters["bytes_per_entry"] = overhead;
}
BENCHMARK(BM_BytesPerEntry)->Arg(100'000)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
