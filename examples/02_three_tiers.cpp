// 02_three_tiers.cpp — memory (L1) + Redis (L2) + disk (L3) in one cache.
//
//   02_three_tiers [redis-url] [disk-directory]
//     redis-url       default redis://127.0.0.1:6379
//     disk-directory  default: a temporary directory created here and removed at the end
//
// What it shows:
//   1. A miss everywhere: the database is asked once, and the value is written to all three tiers.
//   2. Another instance of the service (its own L1, the shared Redis) misses L1 and is served by
//      Redis without asking the database.
//   3. A restart: a new process-like stack over the same disk directory, with Redis emptied (a
//      Redis restart, a flush), is served from disk — and the disk hit refills Redis and L1.
//   4. The per-layer metrics of each stack.
// Redis being down is not an error for a cache: the program says so, and every step still works
// (step 2 then has to ask the database). The exit code is non-zero only if an expectation fails,
// e.g. the restart in step 3 had to call the database.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <layercache/disk_layer.hpp>
#include <layercache/layercache.hpp>
#include <layercache/redis_layer.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

struct product {
  int id = 0;
  std::string name;
  double price = 0;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(product, id, name, price)  // the codec for Redis and disk
};

std::atomic<int> database_calls{0};

product load_product(int id) {
  database_calls.fetch_add(1);
  std::this_thread::sleep_for(5ms);  // a slow database
  return product{id, "product-" + std::to_string(id), 9.99 * id};
}

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("  EXPECTATION FAILED: %s\n", what);
    ++failures;
  }
}

// Layer errors are expected while Redis is down: count them instead of printing each one.
std::atomic<int> layer_errors{0};

layercache::stack_options stack_opts() {
  return {.ttl = 10min, .on_event = [](const layercache::event& e) {
            if (e.type == layercache::event_type::layer_error) layer_errors.fetch_add(1);
          }};
}

// Each instance (stack) gets its own connection to Redis, as separate processes would.
std::shared_ptr<layercache::redis_layer> connect_redis(const std::string& url) {
  return layercache::redis_layer::create(
      {.url = url, .prefix = "example02:", .connect_timeout = 500ms});
}

void print_metrics(const char* title, const layercache::cache_stack& cache) {
  const layercache::metrics_snapshot m = cache.metrics();
  std::printf("  metrics of %s (database calls by this stack: %llu)\n", title,
              static_cast<unsigned long long>(m.fetches));
  for (const auto& l : m.layers) {
    std::printf(
        "    %-7s hits %3llu  misses %3llu  writes %3llu  errors %3llu%s%s\n", l.name.c_str(),
        static_cast<unsigned long long>(l.hits), static_cast<unsigned long long>(l.misses),
        static_cast<unsigned long long>(l.writes), static_cast<unsigned long long>(l.errors),
        l.breaker_state.empty() ? "" : "  breaker ", l.breaker_state.c_str());
  }
}

int run(const std::string& url, const std::string& dir) {
  auto redis_a = connect_redis(url);
  const bool redis_up = redis_a->connected();
  if (redis_up) {
    std::printf("Redis at %s: connected\n", url.c_str());
  } else {
    std::printf(
        "Redis at %s is unreachable: continuing with memory + disk "
        "(Redis reads fall through, its writes are counted as errors)\n",
        url.c_str());
  }
  std::printf("disk tier in %s\n\n", dir.c_str());

  const auto fetch = [] { return load_product(1); };
  {
    auto disk = layercache::disk_layer::create({.directory = dir, .max_bytes = 64ull << 20});
    layercache::cache_stack cache({layercache::memory_layer::create({.ttl = 1min}), redis_a, disk},
                                  stack_opts());
    (void)cache.clear();  // start cold, whatever an earlier run left (Redis: our prefix only)

    std::printf("1. first read: a miss in every tier\n");
    auto p = cache.get<product>("product:1", fetch);
    (void)cache.flush();  // byte tiers are written in the background; wait to show them
    const auto m = cache.metrics();
    std::printf("  got %s (%.2f); database calls: %d; writes: redis %llu, disk %llu\n",
                p->name.c_str(), p->price, database_calls.load(),
                static_cast<unsigned long long>(m.layers[1].writes),
                static_cast<unsigned long long>(m.layers[2].writes));
    expect(database_calls.load() == 1, "the first read asks the database once");
    expect(m.layers[2].writes == 1, "the fetched value is written to disk");
    if (redis_up) expect(m.layers[1].writes == 1, "the fetched value is written to Redis");

    std::printf("\n2. another instance (its own L1, the same Redis) reads it\n");
    {
      layercache::cache_stack other(
          {layercache::memory_layer::create({.ttl = 1min}), connect_redis(url)}, stack_opts());
      auto q = other.get<product>("product:1", fetch);
      const auto mo = other.metrics();
      if (redis_up) {
        std::printf("  got %s from Redis; database calls still %d\n", q->name.c_str(),
                    database_calls.load());
        expect(mo.layers[1].hits == 1, "the other instance is served by Redis");
        expect(mo.fetches == 0, "the other instance does not ask the database");
      } else {
        std::printf("  Redis is down: the other instance had to ask the database (calls: %d)\n",
                    database_calls.load());
      }
      print_metrics("the other instance", other);
    }
    print_metrics("the first instance", cache);
  }  // the first instance shuts down: its disk store is closed

  std::printf("\n3. restart: a new stack over the same disk directory, Redis emptied\n");
  const int calls_before = database_calls.load();
  auto redis_c = connect_redis(url);
  if (redis_up) expect(redis_c->clear().ok(), "Redis is emptied");
  {
    auto disk = layercache::disk_layer::create({.directory = dir, .max_bytes = 64ull << 20});
    layercache::cache_stack cache({layercache::memory_layer::create({.ttl = 1min}), redis_c, disk},
                                  stack_opts());
    auto p = cache.get<product>("product:1", fetch);
    (void)cache.flush();
    const auto m = cache.metrics();
    std::printf("  got %s; database calls during the restart: %d; served by disk: %s\n",
                p->name.c_str(), database_calls.load() - calls_before,
                m.layers[2].hits == 1 ? "yes" : "no");
    expect(database_calls.load() == calls_before, "the restarted stack does not ask the database");
    expect(m.layers[2].hits == 1, "the restarted stack is served by disk");
    if (redis_up) expect(m.layers[1].writes == 1, "the disk hit is written back to Redis");
    auto again = cache.get<product>("product:1", fetch);
    expect(again == p, "the next read is an L1 hit returning the same object");
    print_metrics("the restarted instance", cache);
  }

  std::printf("\nlayer errors reported: %d%s\n", layer_errors.load(),
              redis_up ? "" : " (Redis is down)");
  if (redis_up) expect(layer_errors.load() == 0, "no layer errors while Redis is up");
  std::printf("%s\n", failures == 0 ? "all expectations met" : "SOME EXPECTATIONS FAILED");
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string url = argc > 1 ? argv[1] : "redis://127.0.0.1:6379";
  std::string dir;
  bool own_dir = false;
  if (argc > 2) {
    dir = argv[2];
  } else {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/layercache-example-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::perror("mkdtemp");
      return 2;
    }
    dir = pattern + "/l3";
    own_dir = true;
  }
  int rc = 2;
  try {
    rc = run(url, dir);
  } catch (const layercache::error& e) {
    // Misconfiguration (a malformed URL, rejected credentials, a directory in use): not degradable.
    std::fprintf(stderr, "02_three_tiers: %s\n", e.what());
  }
  if (own_dir) {
    std::error_code ec;
    std::filesystem::remove_all(std::filesystem::path(dir).parent_path(), ec);
  }
  return rc;
}
