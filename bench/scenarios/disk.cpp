// disk: RocksDB layer hit latency with L1 bypassed (warm block cache, and cold after reopening),
// for 1 KiB and 64 KiB values; write throughput; and how fast a restarted process serves 10,000
// keys from L3 compared with fetching them again.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include "common/timing.hpp"
#include "layercache/disk_layer.hpp"
#include "layercache/layercache.hpp"
#include "scenarios/scenario.hpp"
#include "support/temp_dir.hpp"

namespace layercache::bench {
namespace {

struct disk_args {
  std::size_t keys_1k = 10'000;
  std::size_t keys_64k = 1'000;
  std::size_t samples = 20'000;
  std::size_t restart_keys = 10'000;
  int origin_ms = 2;
  int threads = 8;
};

using namespace std::chrono_literals;

double us_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

std::shared_ptr<disk_layer> open_disk(const std::filesystem::path& dir) {
  return disk_layer::create({.directory = dir.string(), .max_bytes = std::uint64_t{4} << 30});
}

struct hit_figures {
  double warm_p50 = 0, warm_p99 = 0, cold_p50 = 0;
};

// Writes `keys` values of `bytes` each, then measures gets through a disk-only stack.
hit_figures measure_hits(const std::filesystem::path& dir, std::size_t keys, std::size_t bytes,
                         std::size_t samples, double& writes_per_s) {
  const std::string value(bytes, 'd');
  auto never = []() -> std::string { throw std::runtime_error("disk bench: unexpected miss"); };
  {
    cache_stack cache({open_disk(dir)}, {.ttl = 1h});
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < keys; ++i)
      (void)cache.set<std::string>("k" + std::to_string(i), value);
    if (!cache.flush(60s)) throw std::runtime_error("disk bench: writes did not land");
    writes_per_s = static_cast<double>(keys) / (us_since(t0) / 1e6);
  }
  hit_figures f;
  {
    // Reopened: RocksDB's block cache is empty (the OS page cache may still hold the files).
    cache_stack cache({open_disk(dir)}, {.ttl = 1h});
    std::vector<double> cold;
    const std::size_t cold_n = std::min<std::size_t>(keys, 2'000);
    for (std::size_t i = 0; i < cold_n; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      auto v = cache.get<std::string>("k" + std::to_string(i * (keys / cold_n)), never);
      cold.push_back(us_since(t0));
      if (!v || v->size() != bytes) throw std::runtime_error("disk bench: wrong value");
    }
    f.cold_p50 = summarize_ms(cold).p50;
    for (std::size_t i = 0; i < keys; ++i)
      (void)cache.get<std::string>("k" + std::to_string(i), never);
    std::vector<double> warm;
    warm.reserve(samples);
    for (std::size_t i = 0; i < samples; ++i) {
      const std::string key = "k" + std::to_string((i * 7919) % keys);
      const auto t0 = std::chrono::steady_clock::now();
      auto v = cache.get<std::string>(key, never);
      warm.push_back(us_since(t0));
      if (!v) throw std::runtime_error("disk bench: miss");
    }
    const auto s = summarize_ms(warm);
    f.warm_p50 = s.p50;
    f.warm_p99 = s.p99;
  }
  return f;
}

template <class Body>
double parallel_ms(int threads, std::size_t n, Body&& body) {
  std::atomic<std::size_t> next{0};
  const auto t0 = std::chrono::steady_clock::now();
  {
    std::vector<std::jthread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&] {
        for (std::size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(i);
      });
    }
  }
  return us_since(t0) / 1000.0;
}

void run(const common_args& common, const disk_args& a) {
  test::temp_dir root("layercache-disk-bench");
  double wps_1k = 0, wps_64k = 0;
  const hit_figures f1 = measure_hits(root.path() / "1k", a.keys_1k, 1024, a.samples, wps_1k);
  const hit_figures f64 =
      measure_hits(root.path() / "64k", a.keys_64k, 64 * 1024, a.samples, wps_64k);

  // Restart warm-up: a memory+disk stack fills L3; a "restarted" stack over the same directory
  // serves everything from disk, against an empty stack that must fetch everything.
  const auto dir = root.path() / "restart";
  std::atomic<int> origin_calls{0};
  auto origin = [&](std::size_t i) {
    origin_calls.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(a.origin_ms));
    return std::string(1024, static_cast<char>('a' + i % 26));
  };
  {
    cache_stack first({memory_layer::create({.max_entries = a.restart_keys * 2}), open_disk(dir)},
                      {.ttl = 1h});
    (void)parallel_ms(a.threads, a.restart_keys, [&](std::size_t i) {
      (void)first.get<std::string>("page:" + std::to_string(i), [&] { return origin(i); });
    });
  }  // destroyed: queued disk writes flushed
  const int calls_before = origin_calls.load();
  double restart_serve_ms = 0;
  {
    const auto t0 = std::chrono::steady_clock::now();
    cache_stack restarted(
        {memory_layer::create({.max_entries = a.restart_keys * 2}), open_disk(dir)}, {.ttl = 1h});
    (void)parallel_ms(a.threads, a.restart_keys, [&](std::size_t i) {
      (void)restarted.get<std::string>("page:" + std::to_string(i), [&] { return origin(i); });
    });
    restart_serve_ms = us_since(t0) / 1000.0;
  }
  const int served_origin_calls = origin_calls.load() - calls_before;
  const double refetch_ms = [&] {
    cache_stack empty({memory_layer::create({.max_entries = a.restart_keys * 2})}, {.ttl = 1h});
    return parallel_ms(a.threads, a.restart_keys, [&](std::size_t i) {
      (void)empty.get<std::string>("page:" + std::to_string(i), [&] { return origin(i); });
    });
  }();

  std::printf("Disk layer (RocksDB), L1 bypassed; latencies in microseconds\n\n");
  print_table({"value", "warm p50 us", "warm p99 us", "cold p50 us (reopened)", "writes/s"},
              {{"1 KiB", fmt_num(f1.warm_p50, 1), fmt_num(f1.warm_p99, 1), fmt_num(f1.cold_p50, 1),
                fmt_num(wps_1k, 0)},
               {"64 KiB", fmt_num(f64.warm_p50, 1), fmt_num(f64.warm_p99, 1),
                fmt_num(f64.cold_p50, 1), fmt_num(wps_64k, 0)}});
  std::printf(
      "\nRestart: %zu keys served from L3 in %.0f ms (%d origin calls) vs refetched in %.0f ms "
      "(origin %d ms, %d threads)\n",
      a.restart_keys, restart_serve_ms, served_origin_calls, refetch_ms, a.origin_ms, a.threads);
  emit_json(common, {{"warm_p50_us", f1.warm_p50},
                     {"warm_p99_us", f1.warm_p99},
                     {"cold_p50_us", f1.cold_p50},
                     {"warm_p50_us_64k", f64.warm_p50},
                     {"warm_p99_us_64k", f64.warm_p99},
                     {"cold_p50_us_64k", f64.cold_p50},
                     {"writes_per_s", wps_1k},
                     {"writes_per_s_64k", wps_64k},
                     {"restart_keys", a.restart_keys},
                     {"restart_serve_ms", restart_serve_ms},
                     {"restart_origin_calls", served_origin_calls},
                     {"refetch_ms", refetch_ms},
                     {"origin_ms", a.origin_ms},
                     {"threads", a.threads}});
}

}  // namespace

void register_disk(CLI::App& app, common_args& args) {
  static disk_args storage;
  auto* sub = app.add_subcommand("disk", "RocksDB layer: hit latency, writes, restart warm-up");
  sub->add_option("--samples", storage.samples);
  sub->add_option("--origin-ms", storage.origin_ms);
  sub->add_option("--threads", storage.threads);
  sub->callback([&args] { run(args, storage); });
}

}  // namespace layercache::bench
