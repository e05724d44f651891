#include "memory/eviction_policy.hpp"

namespace layercache::detail {
namespace {

// A circular doubly linked list with a sentinel, over entry_node's prev/next.
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
  entry_node* back() noexcept { return empty() ? nullptr : head_.prev; }

 private:
  entry_node head_;
  std::size_t size_ = 0;
};

class lru_policy final : public eviction_policy {
 public:
  void on_insert(entry_node* n) noexcept override { list_.push_front(n); }
  void on_access(entry_node* n) noexcept override { list_.move_to_front(n); }
  void on_remove(entry_node* n) noexcept override { list_.unlink(n); }
  entry_node* victim() noexcept override { return list_.back(); }

 private:
  node_list list_;
};

// Segmented LRU (Karedla et al. 1994): probation holds entries seen once, protected those hit
// again. Protected is bounded; its overflow is demoted to probation's front, not evicted, so a hot
// entry gets a second chance. Victims come from probation's tail first.
class slru_policy final : public eviction_policy {
  static constexpr std::uint8_t probation = 0;
  static constexpr std::uint8_t protected_segment = 1;

 public:
  explicit slru_policy(std::size_t protected_capacity)
      : protected_capacity_(protected_capacity == 0 ? 1 : protected_capacity) {}

  void on_insert(entry_node* n) noexcept override {
    n->segment = probation;
    probation_.push_front(n);
  }
  void on_access(entry_node* n) noexcept override {
    if (n->segment == protected_segment) {
      protected_.move_to_front(n);
      return;
    }
    probation_.unlink(n);
    n->segment = protected_segment;
    protected_.push_front(n);
    if (protected_.size() > protected_capacity_) {
      entry_node* demoted = protected_.back();
      protected_.unlink(demoted);
      demoted->segment = probation;
      probation_.push_front(demoted);
    }
  }
  void on_remove(entry_node* n) noexcept override {
    (n->segment == protected_segment ? protected_ : probation_).unlink(n);
  }
  entry_node* victim() noexcept override {
    entry_node* v = probation_.back();
    return v != nullptr ? v : protected_.back();
  }

 private:
  std::size_t protected_capacity_;
  node_list probation_;
  node_list protected_;
};

}  // namespace

std::unique_ptr<eviction_policy> make_policy(eviction kind, std::size_t capacity,
                                             double protected_ratio) {
  switch (kind) {
    case eviction::lru:
      return std::make_unique<lru_policy>();
    case eviction::segmented_lru:
      break;
  }
  return std::make_unique<slru_policy>(
      static_cast<std::size_t>(static_cast<double>(capacity) * protected_ratio));
}

}  // namespace layercache::detail
