// w_tinylfu_policy.hpp — W-TinyLFU (Einziger, Friedman, Manes 2017; the policy of Caffeine): a
// small LRU window in front of a segmented-LRU main space, with admission into main decided by a
// frequency sketch, and the window's share adapted to the workload by hill climbing.
//
// Eviction: a new entry enters the window. When the window is over its share, its LRU entry moves
// to the front of main's probation segment as the *candidate*. When the shard must evict, the
// candidate and main's own victim (probation's LRU entry, else protected's) are compared by their
// sketch estimates: the candidate is admitted only if it was seen more often; otherwise the
// candidate itself is the victim (reported as evicted). So a burst of one-off keys passes through
// the window without displacing entries that are used again and again, while a new key that keeps
// coming back wins its place. Ties reject the candidate; a candidate with an estimate of 6 or more
// wins a tie-or-loss once in 128 (Caffeine's defence against an attacker who keeps the victim's
// counters high by hash collisions, and a way out of a stale main set).
//
// Window size: set by a window_climber (window_climber.hpp), shared by all shards of a layer;
// each shard applies the climber's share of capacity to its own capacity when it inserts, staying
// in [1, capacity − 1] entries (one at least, so the newest write is never its own victim).
// Protected is 80 % of main. The shard feeds the climber: it remembers its last window-side and
// main evictions (one climber step's worth each, in ghost filters) and counts the misses on them,
// reporting in batches of 64 requests, so the hit path writes shared state once per 64 requests
// at most.
//
// Inside protected, recency is kept CLOCK-style as in the segmented-LRU policy (a hit sets the
// referenced bit; no list moves on the hit path). A hit in the window moves the node to the
// window's front (the window is small and hot in cache). Every hit and insert increments the
// sketch: one 64-byte block, no allocation.
//
// Not thread-safe: used under the owning shard's lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "memory/eviction_policy.hpp"
#include "memory/frequency_sketch.hpp"
#include "memory/ghost_filter.hpp"
#include "memory/node_list.hpp"
#include "memory/window_climber.hpp"

namespace layercache::detail {

class alignas(64) w_tinylfu_policy final : public eviction_policy {
 public:
  // capacity: the shard's entry bound (sizes the window, protected segment and sketch).
  // climber: the layer's window climber, which must outlive the policy; null means a climber of
  // the policy's own (a layer of one shard, or a test).
  explicit w_tinylfu_policy(std::size_t capacity, window_climber* climber = nullptr);

  void on_insert(entry_node* n) noexcept override;
  void on_access(entry_node* n) noexcept override;
  void on_remove(entry_node* n) noexcept override;
  entry_node* victim() noexcept override;

  // The window's current bound, in entries (for tests and diagnostics).
  std::size_t window_capacity() const noexcept { return window_max_; }
  const frequency_sketch& sketch() const noexcept { return sketch_; }

 private:
  bool admit(const entry_node* candidate, const entry_node* victim) noexcept;
  entry_node* main_victim() noexcept;
  void promote(entry_node* n) noexcept;
  void record_request() noexcept;
  void apply_window_share() noexcept;

  std::size_t capacity_;
  std::size_t window_max_;
  std::size_t protected_max_;
  node_list window_;
  node_list probation_;
  node_list protected_;
  entry_node* candidate_ = nullptr;  // the window graduate not yet judged against a main victim
  frequency_sketch sketch_;
  std::uint64_t random_;  // xorshift state for the 1-in-128 admission
  std::unique_ptr<window_climber> own_climber_;
  window_climber* climber_;
  ghost_filter window_ghosts_;  // recent window-side evictions (rejected newcomers)
  ghost_filter main_ghosts_;    // recent main evictions
  std::uint32_t batch_requests_ = 0;
  std::uint32_t batch_window_ghost_hits_ = 0;
  std::uint32_t batch_main_ghost_hits_ = 0;
};

}  // namespace layercache::detail
