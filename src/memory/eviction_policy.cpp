#include "memory/eviction_policy.hpp"

#include <algorithm>
#include <cstdint>

#include "memory/node_list.hpp"
#include "memory/w_tinylfu_policy.hpp"

namespace layercache::detail {
namespace {

// Moving a node to the front touches its two neighbours, usually two cache misses on an L1 hit.
// A node that fewer than `window` other nodes have passed since its last move is still in the front
// part of its list, so moving it again changes nothing an eviction could see: skip the move. With
// window = capacity / 4 the order is exact for small lists and within the front quarter otherwise
// (memcached rate-limits its LRU bumps for the same reason, by time).
class recency {
 public:
  explicit recency(std::size_t capacity)
      : window_(static_cast<std::uint32_t>(std::min<std::size_t>(capacity / 4, UINT32_MAX))) {}
  void stamp(entry_node* n) noexcept { n->stamp = ++tick_; }
  bool near_front(const entry_node* n) const noexcept { return tick_ - n->stamp < window_; }

 private:
  std::uint32_t tick_ = 0;
  std::uint32_t window_;
};

// Aligned so the policies of different shards (their list heads) never share a cache line.
class alignas(64) lru_policy final : public eviction_policy {
 public:
  explicit lru_policy(std::size_t capacity) : recency_(capacity) {}
  void on_insert(entry_node* n) noexcept override {
    list_.push_front(n);
    recency_.stamp(n);
  }
  void on_access(entry_node* n) noexcept override {
    if (recency_.near_front(n)) return;
    list_.move_to_front(n);
    recency_.stamp(n);
  }
  void on_remove(entry_node* n) noexcept override { list_.unlink(n); }
  entry_node* victim() noexcept override { return list_.back(); }

 private:
  node_list list_;
  recency recency_;
};

// Segmented LRU (Karedla et al. 1994): probation holds entries seen once, protected those hit
// again. Protected is bounded; its overflow is demoted to probation's front, not evicted, so a hot
// entry gets a second chance. Victims come from probation's tail first.
//
// Inside protected, recency is kept CLOCK-style (second chance) rather than by moving nodes: a hit
// only sets the node's `referenced` bit (and only if it is clear), so the L1 hit path writes no
// list pointers and no shared list head — under uniform access an exact LRU would splice on nearly
// every hit, touching two neighbour nodes and the head, which both costs cache misses and makes two
// threads contend on lines they never meant to share. When protected overflows (or must give up a
// victim), its tail is examined: a referenced node has its bit cleared and goes back to the front;
// the first unreferenced one is demoted. Each step clears a bit, so a sweep is bounded by the
// segment's size and amortised O(1).
class alignas(64) slru_policy final : public eviction_policy {
  static constexpr std::uint8_t probation = 0;
  static constexpr std::uint8_t protected_segment = 1;

 public:
  explicit slru_policy(std::size_t protected_capacity)
      : protected_capacity_(protected_capacity == 0 ? 1 : protected_capacity) {}

  void on_insert(entry_node* n) noexcept override {
    n->segment = probation;
    n->referenced = false;
    probation_.push_front(n);
  }
  void on_access(entry_node* n) noexcept override {
    if (n->segment == protected_segment) {
      if (!n->referenced) n->referenced = true;
      return;
    }
    probation_.unlink(n);
    n->segment = protected_segment;
    n->referenced = false;
    protected_.push_front(n);
    demote_overflow(protected_, protected_capacity_, probation_, probation);
  }
  void on_remove(entry_node* n) noexcept override {
    (n->segment == protected_segment ? protected_ : probation_).unlink(n);
  }
  entry_node* victim() noexcept override {
    entry_node* v = probation_.back();
    if (v != nullptr) return v;
    return second_chance_tail(protected_);
  }

 private:
  std::size_t protected_capacity_;
  node_list probation_;
  node_list protected_;
};

}  // namespace

std::unique_ptr<eviction_policy> make_policy(eviction kind, std::size_t capacity,
                                             double protected_ratio, window_climber* climber) {
  switch (kind) {
    case eviction::lru:
      return std::make_unique<lru_policy>(capacity);
    case eviction::w_tinylfu:
      return std::make_unique<w_tinylfu_policy>(capacity, climber);
    case eviction::segmented_lru:
      break;
  }
  return std::make_unique<slru_policy>(
      static_cast<std::size_t>(static_cast<double>(capacity) * protected_ratio));
}

}  // namespace layercache::detail
