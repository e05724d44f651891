// eviction_policy.hpp — the seam between a memory-layer shard and its replacement policy.
//
// A policy orders the entries of one shard and names the next victim. It is called with the shard
// lock held and must not allocate on on_access (the L1 hit path). Policies: segmented LRU (default,
// scan-resistant), LRU (baseline) and W-TinyLFU (w_tinylfu_policy.hpp). An admission policy needs
// no extra call: the shard asks victim() only when it is over a bound, so W-TinyLFU decides there
// between the newcomer graduating from its window and main's victim, and returns the loser — a
// rejected newcomer is evicted like any other victim, and reported so.
#pragma once

#include <cstddef>
#include <memory>

#include "layercache/memory_layer.hpp"
#include "memory/entry_node.hpp"

namespace layercache::detail {

class eviction_policy {
 public:
  virtual ~eviction_policy() = default;
  // A new entry joined the shard.
  virtual void on_insert(entry_node* n) noexcept = 0;
  // An entry was read (hit).
  virtual void on_access(entry_node* n) noexcept = 0;
  // An entry is leaving the shard (any cause); unlink it.
  virtual void on_remove(entry_node* n) noexcept = 0;
  // The entry to evict next, or null when empty. Called only when the shard is over a bound, and
  // the shard then evicts exactly this entry. Does not unlink it.
  virtual entry_node* victim() noexcept = 0;
};

class window_climber;

// capacity: the shard's entry bound, used to size the segments. climber: the layer's W-TinyLFU
// window climber (w_tinylfu only; null gives the policy one of its own); it must outlive the
// policy.
std::unique_ptr<eviction_policy> make_policy(eviction kind, std::size_t capacity,
                                             double protected_ratio,
                                             window_climber* climber = nullptr);

}  // namespace layercache::detail
