// memory_layer.hpp — L1: an in-process cache of decoded, immutable objects.
//
//   auto l1 = layercache::memory_layer::create({.ttl = 60s, .max_entries = 100'000});
//   layercache::cache_stack cache({l1});
//
// A hit returns another reference to the same immutable object: no decode, no copy, no heap
// allocation. Entries carry an absolute expiry (the entry's lifetime capped by `ttl`).
//
// Eviction: the table is split into shards by key hash, each with its own lock and its own policy.
// The default policy is segmented LRU: new entries enter a probation segment; a second hit promotes
// them to a protected segment (80 % of capacity, recency kept by a second-chance bit so a hit moves
// no list nodes); victims come from probation first. A one-off scan of cold keys therefore churns
// probation only and leaves the hot, protected set in place, where plain LRU would flush it. The
// policy is a seam (src/memory/eviction_policy.hpp): `eviction::lru` is provided for comparison,
// and `eviction::w_tinylfu` puts a small LRU window in front of the segmented main space and admits
// a window graduate into main only if a frequency sketch says it is used more often than main's
// victim (the window's size adapts to the workload). `max_entries` is one budget
// for the whole layer: a shard may hold up to twice its even share while the layer is under the
// bound, so sharding does not lose capacity to uneven hashing. `max_bytes` is divided evenly across
// shards, so an individual shard may evict while others have room; with the default shard count
// that error is below 1/shards.
//
// Removal causes are reported to `on_remove` after the shard lock is released, on the thread that
// caused the removal.
//
// A memory_layer belongs to at most one cache_stack and must be its first layer.
//
// Thread-safety: thread-safe; readers of different shards never contend.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "layercache/clock.hpp"
#include "layercache/layer.hpp"
#include "layercache/metrics.hpp"

namespace layercache {

namespace detail {
struct type_ops;
}  // namespace detail

enum class eviction : unsigned char {
  segmented_lru,  // scan-resistant default
  lru,            // plain LRU, for comparison
  w_tinylfu,      // window LRU + frequency-sketch admission into segmented LRU, adaptive window
};

// Why an entry left the memory layer.
enum class removal_cause : unsigned char {
  expired,      // its lifetime ended
  evicted,      // the size policy chose it (max_entries / max_bytes)
  invalidated,  // del, clear or an invalidation removed it
  replaced,     // a new value was stored under its key
};

std::string_view to_string(removal_cause cause) noexcept;

struct memory_layer_options {
  // Cap on any entry's lifetime in this layer; zero means no cap of its own. Default zero.
  std::chrono::milliseconds ttl{0};
  // Most entries held; must be > 0. Default 10,000.
  std::size_t max_entries = 10'000;
  // Most weighed bytes held (key + value as weighed by weigher<T> + per-entry overhead); zero means
  // no byte bound. Default zero.
  std::size_t max_bytes = 0;
  // Number of shards, a power of two; zero picks one from max_entries (up to 64). Default zero.
  std::size_t shards = 0;
  eviction policy = eviction::segmented_lru;
  // Share of each shard's capacity reserved for the protected segment (segmented_lru only;
  // w_tinylfu keeps 80 % of its main space), in (0, 1). Default 0.8.
  double protected_ratio = 0.8;
  // Called after an entry is removed, with its key and cause. Must not throw. Empty means none.
  std::function<void(std::string_view key, removal_cause cause)> on_remove{};
  // Time source; null means default_clock(). A cache_stack's clock does not override it.
  std::shared_ptr<const ::layercache::clock> clock{};
  // Name in metrics and status. Default "memory".
  std::string name = "memory";

  void validate() const;
};

class memory_layer final : public layer {
 public:
  // Builds a memory layer. Throws invalid_argument_error for invalid options.
  static std::shared_ptr<memory_layer> create(memory_layer_options options = {});
  ~memory_layer() override;

  const layer_info& info() const noexcept override;
  status del(std::string_view key) override;
  status clear() override;

  // Entries resident now (expired ones not yet swept included).
  std::size_t size() const;
  // Counters of this layer (the stack adds them to its metrics snapshot).
  layer_metrics metrics() const;

  // ---- used by cache_stack (not for direct use) -------------------------------------------------
  struct hit {
    std::shared_ptr<const void> value;  // null for a cached "not found"
    const detail::type_ops* ops = nullptr;
    unix_ms expires_at_ms = 0;
    bool negative = false;
  };
  // Looks `key` up; on a live entry copies it to `out` and returns true. No allocation.
  // `record` = false leaves hit/miss counters and sampling alone (the stack's re-checks).
  bool find(std::string_view key, std::uint64_t hash, hit& out, bool record = true);
  // Stores an entry, replacing any previous one. `weight` is the value's weighed size.
  void insert(std::string_view key, std::uint64_t hash, std::shared_ptr<const void> value,
              const detail::type_ops* ops, bool negative, unix_ms expires_at_ms,
              std::size_t weight);
  // Visits a copy of every live entry (taken shard by shard, so the visitor runs without locks)
  // until `visit` returns false. For snapshots.
  void scan(const std::function<bool(std::string_view key, const hit& entry)>& visit) const;
  // True when a live entry exists; touches neither eviction order nor counters.
  bool contains(std::string_view key, std::uint64_t hash) const;
  // Removes `key`; returns whether it was present.
  bool erase(std::string_view key, std::uint64_t hash, removal_cause cause);
  // Removes every entry whose key starts with `prefix` (cause invalidated); returns how many.
  // Visits every shard: O(entries).
  std::size_t erase_prefix(std::string_view prefix);
  // Shortens the lifetime of every entry that would outlive `until` (unix ms) to end then; returns
  // how many. For the stack when it stops hearing about other instances' changes. O(entries).
  std::size_t cap_lifetimes(unix_ms until);
  unix_ms now_ms() const noexcept;
  std::chrono::milliseconds ttl_cap() const noexcept;

 private:
  struct impl;
  explicit memory_layer(memory_layer_options options);
  std::unique_ptr<impl> impl_;
};

}  // namespace layercache
