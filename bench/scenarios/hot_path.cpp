// hot-path: L1 hit latency and throughput against a hand-rolled mutex + unordered_map + list LRU.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <list>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "common/alloc_counter.hpp"
#include "common/timing.hpp"
#include "layercache/layercache.hpp"
#include "scenarios/scenario.hpp"

namespace layercache::bench {
namespace {

// The baseline a C++ team would write in an afternoon: one mutex, a hash map into an LRU list.
class naive_lru {
 public:
  explicit naive_lru(std::size_t capacity) : capacity_(capacity) {}
  std::shared_ptr<const std::string> get(const std::string& key) {
    std::lock_guard lock(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return nullptr;
    list_.splice(list_.begin(), list_, it->second);
    return it->second->second;
  }
  void put(const std::string& key, std::shared_ptr<const std::string> value) {
    std::lock_guard lock(mu_);
    if (auto it = map_.find(key); it != map_.end()) {
      it->second->second = std::move(value);
      list_.splice(list_.begin(), list_, it->second);
      return;
    }
    list_.emplace_front(key, std::move(value));
    map_.emplace(key, list_.begin());
    if (map_.size() > capacity_) {
      map_.erase(list_.back().first);
      list_.pop_back();
    }
  }

 private:
  using entry = std::pair<std::string, std::shared_ptr<const std::string>>;
  std::mutex mu_;
  std::list<entry> list_;
  std::unordered_map<std::string, std::list<entry>::iterator> map_;
  std::size_t capacity_;
};

struct hot_path_args {
  std::size_t hits = 2'000'000;
  std::size_t keys = 10'000;
  double seconds = 1.0;
};

std::vector<std::string> make_keys(std::size_t n) {
  std::vector<std::string> keys;
  keys.reserve(n);
  for (std::size_t i = 0; i < n; ++i) keys.push_back("user:" + std::to_string(100000 + i));
  return keys;
}

// Key visiting order shared by every measured loop.
std::vector<std::uint32_t> make_order(std::size_t n, std::size_t keys) {
  std::vector<std::uint32_t> order(n);
  std::mt19937 rng(42);
  std::uniform_int_distribution<std::uint32_t> pick(0, static_cast<std::uint32_t>(keys - 1));
  for (auto& o : order) o = pick(rng);
  return order;
}

template <class Get>
percentiles time_hits(const std::vector<std::string>& keys, const std::vector<std::uint32_t>& order,
                      Get&& get) {
  std::vector<std::uint64_t> samples(order.size());
  std::size_t sink = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const std::string& k = keys[order[i]];
    const std::uint64_t t0 = ticks();
    auto v = get(k);
    const std::uint64_t t1 = ticks();
    sink += v->size();
    samples[i] = t1 - t0;
  }
  if (sink == 0) std::printf("impossible\n");
  return summarize_ticks(samples);
}

template <class Get>
double throughput(int threads, double seconds, const std::vector<std::string>& keys, Get&& get) {
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::vector<std::uint64_t> counts(static_cast<std::size_t>(threads) * 8, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      auto order = make_order(1 << 16, keys.size());
      for (auto& o : order)
        o = (o + static_cast<std::uint32_t>(t) * 7919) % static_cast<std::uint32_t>(keys.size());
      ready.fetch_add(1);
      while (ready.load() < threads) {
      }
      std::uint64_t n = 0;
      std::size_t sink = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int b = 0; b < 256; ++b) {
          sink += get(keys[order[n & 0xFFFF]])->size();
          ++n;
        }
      }
      counts[static_cast<std::size_t>(t) * 8] = n + (sink == 0 ? 1 : 0);
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  for (auto& th : pool) th.join();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::uint64_t total = 0;
  for (int t = 0; t < threads; ++t) total += counts[static_cast<std::size_t>(t) * 8];
  return static_cast<double>(total) / elapsed;
}

void run(const common_args& args, const hot_path_args& a) {
  const auto keys = make_keys(a.keys);
  const auto order = make_order(a.hits, a.keys);
  auto value = [](std::size_t i) { return std::string(100, static_cast<char>('a' + i % 26)); };

  cache_stack cache({memory_layer::create({.max_entries = a.keys * 2})},
                    {.ttl = std::chrono::hours(1)});
  for (std::size_t i = 0; i < keys.size(); ++i) (void)cache.set<std::string>(keys[i], value(i));
  naive_lru baseline(a.keys * 2);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    baseline.put(keys[i], std::make_shared<const std::string>(value(i)));
  }
  auto lc_get = [&](const std::string& k) {
    return cache.get<std::string>(k, []() -> std::string { throw std::runtime_error("miss"); });
  };
  auto base_get = [&](const std::string& k) { return baseline.get(k); };

  // Warm-up: caches, branch predictors, TSC calibration.
  (void)ticks_per_ns();
  (void)timer_overhead_ticks();
  for (std::size_t i = 0; i < std::min<std::size_t>(order.size(), 200'000); ++i) {
    (void)lc_get(keys[order[i]]);
    (void)base_get(keys[order[i]]);
  }

  const std::uint64_t allocs_before = thread_allocations();
  const percentiles lc = time_hits(keys, order, lc_get);
  const std::uint64_t allocs_after = thread_allocations();
  const percentiles base = time_hits(keys, order, base_get);
  // time_hits allocates its sample vector once; everything else in the loop is the hits.
  const double allocs_per_hit =
      static_cast<double>(allocs_after - allocs_before - 1) / static_cast<double>(order.size());

  const double ops1 = throughput(1, a.seconds, keys, lc_get);
  const double ops2 = throughput(2, a.seconds, keys, lc_get);
  const double base1 = throughput(1, a.seconds, keys, base_get);
  const double base2 = throughput(2, a.seconds, keys, base_get);

  std::printf("L1 hit latency over %zu sequential hits on %zu keys (timer overhead subtracted)\n\n",
              order.size(), keys.size());
  print_table(
      {"cache", "avg ns", "p50 ns", "p95 ns", "p99 ns", "ops/s 1 thread", "ops/s 2 threads"},
      {{"layercache L1", fmt_num(lc.avg_ns), fmt_num(lc.p50_ns), fmt_num(lc.p95_ns),
        fmt_num(lc.p99_ns), fmt_num(ops1, 0), fmt_num(ops2, 0)},
       {"mutex+unordered_map+list LRU", fmt_num(base.avg_ns), fmt_num(base.p50_ns),
        fmt_num(base.p95_ns), fmt_num(base.p99_ns), fmt_num(base1, 0), fmt_num(base2, 0)}});
  std::printf(
      "\nheap allocations per hit: %.4f; 2-thread scaling %.2fx; vs baseline at 2 threads %.2fx\n",
      allocs_per_hit, ops2 / ops1, ops2 / base2);
  emit_json(args,
            {{"hits", order.size()},
             {"keys", keys.size()},
             {"avg_ns", lc.avg_ns},
             {"p50_ns", lc.p50_ns},
             {"p95_ns", lc.p95_ns},
             {"p99_ns", lc.p99_ns},
             {"baseline_avg_ns", base.avg_ns},
             {"baseline_p50_ns", base.p50_ns},
             {"baseline_p99_ns", base.p99_ns},
             {"ops_per_s_1t", ops1},
             {"ops_per_s_2t", ops2},
             {"baseline_ops_per_s_1t", base1},
             {"baseline_ops_per_s_2t", base2},
             {"scaling_2t", ops2 / ops1},
             {"vs_baseline_2t", ops2 / base2},
             {"allocs_per_hit", allocs_per_hit},
             {"timer_overhead_ns", static_cast<double>(timer_overhead_ticks()) / ticks_per_ns()}});
}

}  // namespace

void register_hot_path(CLI::App& app, common_args& args) {
  static hot_path_args storage;  // CLI11 binds options to it for the program's lifetime
  hot_path_args* a = &storage;
  auto* sub =
      app.add_subcommand("hot-path", "L1 hit latency and throughput vs a mutex+map+list LRU");
  sub->add_option("--hits", a->hits, "timed sequential hits (>= 1,000,000)")
      ->check(CLI::Range(1'000'000ul, 100'000'000ul));
  sub->add_option("--keys", a->keys, "distinct keys");
  sub->add_option("--seconds", a->seconds, "duration of each throughput run");
  sub->callback([&args, a] { run(args, *a); });
}

}  // namespace layercache::bench
