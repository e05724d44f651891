// 01_read_through.cpp — a first program: read-through caching with single-flight.
//
// A slow "database" answers in 20 ms. Eight threads ask for the same user at once: the fetcher runs
// once and every thread gets the same object. Later reads are L1 hits (tens of nanoseconds), a
// missing user is cached as "not found", and del() forces the next read to fetch again.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <layercache/layercache.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

struct user {
  int id = 0;
  std::string name;
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(user, id, name)  // gives user a codec for Redis and disk layers
};

std::atomic<int> database_calls{0};

std::optional<user> load_user(int id) {
  database_calls.fetch_add(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (id == 404) return std::nullopt;  // not found: worth caching too
  return user{id, "user-" + std::to_string(id)};
}

int main() {
  using namespace std::chrono_literals;
  layercache::cache_stack cache(
      {layercache::memory_layer::create({.ttl = 1min, .max_entries = 10'000})},
      {.ttl = 5min, .negative_ttl = 30s});

  // Eight concurrent misses, one database call.
  std::vector<std::thread> threads;
  std::vector<std::shared_ptr<const user>> seen(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      seen[static_cast<std::size_t>(i)] = cache.get<user>("user:42", [] { return load_user(42); });
    });
  }
  for (auto& t : threads) t.join();
  std::printf(
      "8 concurrent gets: %d database call(s), same object for all: %s\n", database_calls.load(),
      std::all_of(seen.begin(), seen.end(), [&](auto& p) { return p == seen[0]; }) ? "yes" : "no");

  // Hits: no database call, no copy.
  auto again = cache.get<user>("user:42", [] { return load_user(42); });
  std::printf("hit: %s (id %d), database calls still %d\n", again->name.c_str(), again->id,
              database_calls.load());

  // "Not found" is cached for negative_ttl.
  auto missing = cache.get<user>("user:404", [] { return load_user(404); });
  auto missing_again = cache.get<user>("user:404", [] { return load_user(404); });
  std::printf("user:404 -> %s twice, database calls %d\n",
              missing || missing_again ? "found?!" : "not found", database_calls.load());

  // Invalidate: the next read fetches again.
  (void)cache.del("user:42");
  (void)cache.get<user>("user:42", [] { return load_user(42); });
  const auto m = cache.metrics();
  std::printf("after del: database calls %d; L1 hits %llu, misses %llu, deduped waiters %llu\n",
              database_calls.load(), static_cast<unsigned long long>(m.layers[0].hits),
              static_cast<unsigned long long>(m.layers[0].misses),
              static_cast<unsigned long long>(m.dedupes));
  return database_calls.load() == 3 ? 0 : 1;
}
