// node_list.hpp — an intrusive, circular, sentinel-headed doubly linked list over entry_node's
// prev/next links: the building block of the eviction policies' segments.
//
// Not thread-safe: used under the owning shard's lock. Never allocates.
#pragma once

#include <cstddef>

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

}  // namespace layercache::detail
