// l2-hit: Redis hit latency through a Redis-only stack (no L1) against a raw synchronous hiredis
// GET of the same bytes, and throughput with 32 caller threads against a pool of 32 hiredis
// connections (one per thread).
#include <hiredis/hiredis.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <thread>

#include "common/timing.hpp"
#include "layercache/layercache.hpp"
#include "layercache/redis_layer.hpp"
#include "scenarios/redis_env.hpp"
#include "scenarios/scenario.hpp"

namespace layercache::bench {
namespace {

struct l2_args {
  std::size_t samples = 20'000;
  std::size_t value_bytes = 1024;
  int threads = 32;
  double seconds = 2.0;
};

struct raw_connection {
  redisContext* c = nullptr;
  raw_connection(const std::string& host, int port) {
    c = redisConnect(host.c_str(), port);
    if (c == nullptr || c->err != 0) throw std::runtime_error("raw hiredis connect failed");
  }
  ~raw_connection() { redisFree(c); }
  std::size_t get(const std::string& key) {
    auto* r = static_cast<redisReply*>(redisCommand(c, "GET %b", key.data(), key.size()));
    if (r == nullptr) throw std::runtime_error("raw hiredis GET failed");
    const std::size_t n = r->type == REDIS_REPLY_STRING ? r->len : 0;
    freeReplyObject(r);
    return n;
  }
};

double elapsed_us(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

template <class Op>
double run_threads(int threads, double seconds, Op&& op_factory) {
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> total{0};
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      auto op = op_factory(t);
      ready.fetch_add(1);
      while (ready.load() < threads) std::this_thread::yield();
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        op(n);
        ++n;
      }
      total.fetch_add(n);
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  for (auto& th : pool) th.join();
  return static_cast<double>(total.load()) / (elapsed_us(t0) / 1e6);
}

void run(const common_args& common, const l2_args& a) {
  redis_env env(common);
  auto l2 = redis_layer::create({.url = env.url(), .prefix = "l2bench:", .connections = 2});
  cache_stack cache({l2}, {.ttl = std::chrono::hours(1)});
  const std::string value(a.value_bytes, 'v');
  constexpr int key_count = 64;
  std::vector<std::string> keys;
  for (int i = 0; i < key_count; ++i) {
    keys.push_back("k" + std::to_string(i));
    if (!cache.set<std::string>(keys.back(), value, {.policy = write_policy::strict}).ok()) {
      throw std::runtime_error("l2-hit: could not write to redis");
    }
  }
  auto never = []() -> std::string { throw std::runtime_error("l2-hit: unexpected miss"); };
  raw_connection raw(env.host(), env.port());
  std::vector<std::string> raw_keys;
  for (const auto& k : keys) raw_keys.push_back("l2bench:" + k);

  // Warm up both paths, then interleave blocks so drift affects both equally.
  for (int i = 0; i < 2000; ++i) {
    (void)cache.get<std::string>(keys[static_cast<std::size_t>(i % key_count)], never);
    (void)raw.get(raw_keys[static_cast<std::size_t>(i % key_count)]);
  }
  std::vector<double> ours, theirs;
  ours.reserve(a.samples);
  theirs.reserve(a.samples);
  for (std::size_t i = 0; i < a.samples; ++i) {
    const auto idx = i % key_count;
    auto t0 = std::chrono::steady_clock::now();
    auto v = cache.get<std::string>(keys[idx], never);
    ours.push_back(elapsed_us(t0));
    if (!v || v->size() != a.value_bytes) throw std::runtime_error("l2-hit: wrong value");
    t0 = std::chrono::steady_clock::now();
    (void)raw.get(raw_keys[idx]);
    theirs.push_back(elapsed_us(t0));
  }
  const ms_percentiles o = summarize_ms(ours);
  const ms_percentiles r = summarize_ms(theirs);

  const double ops32 = run_threads(a.threads, a.seconds, [&](int t) {
    return [&, t](std::uint64_t n) {
      (void)cache.get<std::string>(keys[(n + static_cast<std::uint64_t>(t)) % key_count], never);
    };
  });
  const double raw32 = run_threads(a.threads, a.seconds, [&](int t) {
    auto conn = std::make_shared<raw_connection>(env.host(), env.port());
    return [&, conn, t](std::uint64_t n) {
      (void)conn->get(raw_keys[(n + static_cast<std::uint64_t>(t)) % key_count]);
    };
  });

  std::printf("L2 (Redis) hit, L1 bypassed, %zu-byte values, %zu samples each, interleaved\n\n",
              a.value_bytes, a.samples);
  print_table({"path", "p50 us", "p99 us", "avg us", "ops/s with 32 threads"},
              {{"layercache redis_layer get", fmt_num(o.p50, 1), fmt_num(o.p99, 1),
                fmt_num(o.avg, 1), fmt_num(ops32, 0)},
               {"raw hiredis sync GET (pool of 32)", fmt_num(r.p50, 1), fmt_num(r.p99, 1),
                fmt_num(r.avg, 1), fmt_num(raw32, 0)}});
  std::printf("\nratio p50 %.2f; 32-thread throughput ratio %.2fx\n", o.p50 / r.p50, ops32 / raw32);
  emit_json(common, {{"samples", a.samples},
                     {"value_bytes", a.value_bytes},
                     {"p50_us", o.p50},
                     {"p99_us", o.p99},
                     {"raw_p50_us", r.p50},
                     {"raw_p99_us", r.p99},
                     {"ratio_p50", o.p50 / r.p50},
                     {"ops_per_s_32t", ops32},
                     {"raw_pool_ops_per_s_32t", raw32},
                     {"throughput_ratio_32t", ops32 / raw32}});
}

}  // namespace

void register_l2_hit(CLI::App& app, common_args& args) {
  static l2_args storage;
  auto* sub =
      app.add_subcommand("l2-hit", "Redis hit latency and 32-thread throughput vs raw hiredis");
  sub->add_option("--samples", storage.samples);
  sub->add_option("--value-bytes", storage.value_bytes);
  sub->add_option("--threads", storage.threads);
  sub->add_option("--seconds", storage.seconds);
  sub->callback([&args] { run(args, storage); });
}

}  // namespace layercache::bench
