// single_flight.hpp — one fetch per key at a time within a process.
//
// Concurrency: the table is sharded by key hash; a shard's mutex guards its map and the
// `invalidated` flags of its flights. A flight's own mutex guards its result. The leader (the
// caller that created the flight) fetches without holding any lock; followers block on the flight's
// condition variable, optionally with a deadline.
// Invalidation: invalidate()/invalidate_all() set `invalidated` under the shard lock. The leader
// stores its result through publish(), which re-checks the flag and runs the store callback under
// the same lock, then unregisters the flight — so an invalidation is ordered either before publish
// (the value is not stored) or after it (the invalidation removes what was stored). Invariants: a
// flight is in the table from join() until publish()/abandon(); it is completed (done = true)
// exactly once, after it left the table.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "layercache/detail/type_ops.hpp"

namespace layercache::detail {

struct flight {
  std::string key;
  std::uint64_t hash = 0;
  const type_ops* ops = nullptr;
  std::thread::id leader;
  bool invalidated = false;  // guarded by the table shard's mutex
  // Begun during a sweep (begin_sweep): it may have read a layer before the sweep emptied it, so
  // it stores nothing; callers may still share it until a sweep ends. Guarded like `invalidated`.
  bool doomed = false;
  std::uint64_t born_after_ends = 0;  // sweeps ended before it began
  // The tags the fetched value will carry (get_options::tags), so a tag invalidation reaches a
  // fetch whose key no tag index knows yet. Guarded by the table shard's mutex.
  std::vector<std::string> tags;

  std::mutex mu;
  std::condition_variable cv;
  bool done = false;  // guarded by mu
  std::shared_ptr<const void> value;
  bool negative = false;
  // The leader only looked (get_if_present) and found nothing: followers that can fetch must
  // try again instead of taking "absent" as "not found".
  bool absent = false;
  std::exception_ptr error;
};

class flight_table {
 public:
  struct joined {
    std::shared_ptr<flight> f;
    bool leader = false;
  };

  explicit flight_table(std::size_t shards = 64);

  // Returns the in-flight fetch of `key`, or registers a new one led by the caller — also when the
  // one in flight was invalidated (it stays with its leader and earlier followers).
  joined join(std::string_view key, std::uint64_t hash, const type_ops* ops);

  // Marks an in-flight fetch of `key` stale. Returns whether there was one.
  bool invalidate(std::string_view key, std::uint64_t hash);
  void invalidate_all();
  // A sweep (clear, a prefix invalidation) empties layers directly, key by key or all at once,
  // then L1. invalidate_all() at its start covers the fetches already running; a fetch that begins
  // while it runs could read a layer before the sweep reaches it and publish after the sweep
  // passed, so every flight begun between begin_sweep() and end_sweep() is doomed: it stores
  // nothing in L1 or the byte layers. Sweeps may overlap.
  void begin_sweep();
  void end_sweep();
  // begin_sweep() for its lifetime (end_sweep() after the sweep's last step, L1 included).
  class sweep {
   public:
    explicit sweep(flight_table& t) : t_(t) { t_.begin_sweep(); }
    ~sweep() { t_.end_sweep(); }
    sweep(const sweep&) = delete;
    sweep& operator=(const sweep&) = delete;

   private:
    flight_table& t_;
  };
  // Marks an in-flight fetch of `key` stale and runs `change` (a mutation's L1 change and queued
  // byte-layer op) under the same shard lock, so a fetch publishes either entirely before the
  // change (which then replaces or removes what it stored) or after it — then it is stale and
  // stores nothing. Marking before and after the change instead left a window: a fetch joining
  // between the marks could read the old bytes and publish them before the second mark.
  // `change` must not block or call back into the table.
  template <class Change>
  void invalidate_with(std::string_view key, std::uint64_t hash, Change&& change) {
    shard& s = shard_for(hash);
    std::lock_guard lock(s.mu);
    if (auto it = s.map.find(key); it != s.map.end()) it->second->invalidated = true;
    change();
  }
  // Records the tags `f`'s value will carry (its leader, before it takes the fill's version).
  void tag(flight& f, std::span<const std::string> tags);
  // Marks stale every in-flight fetch whose tags include any of `tags` (or all of them).
  void invalidate_tagged(std::span<const std::string> tags, bool all);

  // Unregisters `f`; if it was not invalidated, runs store() first, under the shard lock.
  // Returns whether store() ran.
  template <class Store>
  bool publish(flight& f, Store&& store) {
    shard& s = shard_for(f.hash);
    std::lock_guard lock(s.mu);
    const bool fresh = !f.invalidated && !f.doomed;
    if (fresh) store();
    erase_if_current(s, f);
    return fresh;
  }

  // Whether `f` was marked stale (or doomed) so far (a later invalidation may still mark it).
  bool invalidated(const flight& f) {
    shard& s = shard_for(f.hash);
    std::lock_guard lock(s.mu);
    return f.invalidated || f.doomed;
  }

  // Unregisters `f` without storing (fetch failed).
  void abandon(flight& f);

  // Completes `f` and wakes its waiters.
  static void complete(flight& f, std::shared_ptr<const void> value, bool negative,
                       std::exception_ptr error, bool absent = false);

 private:
  struct shard {
    std::mutex mu;
    std::unordered_map<std::string_view, std::shared_ptr<flight>> map;
  };
  shard& shard_for(std::uint64_t hash) noexcept { return shards_[hash % count_]; }
  // A flight may already have been replaced by a newer one for the same key; never erase that.
  static void erase_if_current(shard& s, const flight& f) {
    auto it = s.map.find(f.key);
    if (it != s.map.end() && it->second.get() == &f) s.map.erase(it);
  }

  std::unique_ptr<shard[]> shards_;
  std::size_t count_;
  // Sweeps running, and sweeps ended so far. Read under a shard lock by join(); begin_sweep()
  // raises `sweeps_` before invalidate_all() takes each shard lock, so a join that locks its shard
  // after that sees it, and one that locked it before has its flight marked.
  std::atomic<int> sweeps_{0};
  std::atomic<std::uint64_t> sweeps_ended_{0};
};

}  // namespace layercache::detail
