// node_list.hpp — an intrusive, circular, sentinel-headed doubly linked list over entry_node's
// prev/next links: the building block of the eviction policies' segments.
//
// Not thread-safe: used under the owning shard's lock. Never allocates.
#pragma once

#include <cstddef>
#include <cstdint>

#include "memory/entry_node.hpp"

namespace layercache::detail {

class node_list {
 public:
  node_list() { head_.prev = head_.next = &head_; }
  node_list(const node_list&) = delete;
  node_list& operator=(const node_list&) = delete;

  bool empty() const noexcept { return head_.next == &head_; }
  std::size_t size() const noexcept { return size_; }
  void push_front(entry_node* n) noexcept {
    n->next = head_.next;
    n->prev = &head_;
    head_.next->prev = n;
    head_.next = n;
    ++size_;
  }
  void unlink(entry_node* n) noexcept {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = nullptr;
    --size_;
  }
  void move_to_front(entry_node* n) noexcept {
    if (head_.next == n) return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = head_.next;
    n->prev = &head_;
    head_.next->prev = n;
    head_.next = n;
  }
  entry_node* front() noexcept { return empty() ? nullptr : head_.next; }
  entry_node* back() noexcept { return empty() ? nullptr : head_.prev; }

 private:
  entry_node head_;
  std::size_t size_ = 0;
};

// CLOCK-style second chance over a list's tail (the protected segments): a referenced tail node has
// its bit cleared and goes back to the front; the first unreferenced one is returned, still linked
// (null when the list is empty). Each step clears a bit, so a sweep is bounded by the list's size
// and amortised O(1).
inline entry_node* second_chance_tail(node_list& l) noexcept {
  for (;;) {
    entry_node* t = l.back();
    if (t == nullptr || !t->referenced) return t;
    t->referenced = false;
    l.move_to_front(t);
  }
}

// Moves what `from` holds beyond `max` entries, chosen by second chance, to the front of `to`,
// marking each with `to_segment`: a protected segment's overflow demoted to probation.
inline void demote_overflow(node_list& from, std::size_t max, node_list& to,
                            std::uint8_t to_segment) noexcept {
  while (from.size() > max) {
    entry_node* demoted = second_chance_tail(from);
    from.unlink(demoted);
    demoted->segment = to_segment;
    to.push_front(demoted);
  }
}

}  // namespace layercache::detail
