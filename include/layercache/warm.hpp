// warm.hpp — pre-fetch a list of keys before traffic arrives (after a deploy or a cold start).
//
//   std::vector<layercache::warm_item> items = {{"page:/", 10}, {"page:/pricing", 5}, ...};
//   auto done = layercache::warm<page>(cache, items,
//                                      [&](const std::string& key) { return render(key); },
//                                      {.concurrency = 8, .on_progress = [](const auto& p) {
//                                         log("warmed {}/{}", p.done, p.total); }});
//
// Items are taken in descending priority (ties keep their order) by `concurrency` threads; each
// item is a cache.get (so keys already cached cost nothing, and concurrent requests for the same
// key share the fetch). A fetcher that throws marks that item failed; warming goes on. on_progress
// is called after each item, from the warming threads, one call at a time; an exception it throws
// is caught and ignored.
//
// Thread-safety: warm() may run concurrently with any other use of the cache.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/error.hpp"

namespace layercache {

struct warm_item {
  std::string key;
  int priority = 0;  // higher first
};

struct warm_progress {
  std::size_t done = 0;  // items finished (any outcome)
  std::size_t total = 0;
  std::size_t fetched = 0;  // the fetcher ran for it
  std::size_t cached = 0;   // a layer already held it
  std::size_t failed = 0;   // the fetcher (or the cache) threw
};

struct warm_options {
  // Items in flight at once (threads). Must be >= 1. Default 4.
  std::size_t concurrency = 4;
  // Called after each item with the running totals. Empty means none.
  std::function<void(const warm_progress&)> on_progress{};
  // Options of each get (ttl, ...).
  get_options get{};
};

// Fetches every item not already cached; returns the final totals. `fetch(key)` returns T or
// std::optional<T> like a get() fetcher. Throws invalid_argument_error for concurrency == 0.
template <class T, class Fetcher>
warm_progress warm(cache_stack& cache, std::vector<warm_item> items, Fetcher&& fetch,
                   const warm_options& options = {}) {
  if (options.concurrency == 0) throw invalid_argument_error("warm: concurrency must be >= 1");
  std::stable_sort(items.begin(), items.end(),
                   [](const warm_item& a, const warm_item& b) { return a.priority > b.priority; });
  warm_progress totals;
  totals.total = items.size();
  std::mutex mu;  // guards totals and serialises on_progress
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
    for (std::size_t i = next.fetch_add(1); i < items.size(); i = next.fetch_add(1)) {
      bool fetched = false;
      bool failed = false;
      try {
        (void)cache.get<T>(
            items[i].key,
            [&] {
              fetched = true;
              return fetch(items[i].key);
            },
            options.get);
      } catch (...) {
        failed = true;
      }
      std::lock_guard lock(mu);
      ++totals.done;
      if (failed) {
        ++totals.failed;
      } else if (fetched) {
        ++totals.fetched;
      } else {
        ++totals.cached;
      }
      if (options.on_progress) {
        try {
          options.on_progress(totals);
        } catch (...) {
          // A throwing progress callback must not end the process from a worker thread.
        }
      }
    }
  };
  const std::size_t threads = std::min(options.concurrency, std::max<std::size_t>(1, items.size()));
  {
    std::vector<std::jthread> pool;
    pool.reserve(threads);
    for (std::size_t t = 0; t < threads; ++t) pool.emplace_back(worker);
  }
  return totals;
}

}  // namespace layercache
