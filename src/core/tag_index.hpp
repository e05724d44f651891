// tag_index.hpp — which keys this process's L1 holds under each tag.
//
// invalidate_tag must drop L1 copies that Redis may not know of (memory-only stacks, writes that
// failed to reach Redis), and the copies another instance's message names only by tag. Only tagged
// entries cost anything. Entries are not removed when L1 evicts or replaces a key (that would put
// a callback on every eviction); instead, when the index has doubled since the last sweep, a sweep
// drops keys L1 no longer holds — so it stays within a small multiple of the tagged entries L1
// holds. A stale key in the index is harmless: invalidating it erases nothing.
//
// Thread-safety: thread-safe (one mutex; a sweep runs under it, amortised O(1) per add).
#pragma once

#include <cstddef>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace layercache::detail {

class tag_index {
 public:
  using still_held = std::function<bool(const std::string& key)>;

  void add(std::string_view key, std::span<const std::string> tags, const still_held& held) {
    if (tags.empty()) return;
    std::lock_guard lock(mu_);
    for (const auto& t : tags) {
      if (by_tag_[t].emplace(key).second) ++size_;
    }
    if (size_ >= 2 * swept_size_ + 1024) sweep(held);
  }

  // Removes and returns the keys under the tags: under any of them, or under all of them.
  std::vector<std::string> take(std::span<const std::string> tags, bool all) {
    std::vector<std::string> out;
    std::lock_guard lock(mu_);
    if (tags.empty()) return out;
    if (!all) {
      for (const auto& t : tags) {
        auto it = by_tag_.find(t);
        if (it == by_tag_.end()) continue;
        out.insert(out.end(), it->second.begin(), it->second.end());
        size_ -= it->second.size();
        by_tag_.erase(it);
      }
      return out;
    }
    auto first = by_tag_.find(tags.front());
    if (first == by_tag_.end()) return out;
    for (const auto& key : first->second) {
      bool in_all = true;
      for (const auto& t : tags.subspan(1)) {
        auto it = by_tag_.find(t);
        in_all = in_all && it != by_tag_.end() && it->second.contains(key);
      }
      if (in_all) out.push_back(key);
    }
    for (const auto& t : tags) {
      auto it = by_tag_.find(t);
      if (it == by_tag_.end()) continue;
      for (const auto& key : out) size_ -= it->second.erase(key);
      if (it->second.empty()) by_tag_.erase(it);
    }
    return out;
  }

  void clear() {
    std::lock_guard lock(mu_);
    by_tag_.clear();
    size_ = swept_size_ = 0;
  }

  std::size_t size() const {
    std::lock_guard lock(mu_);
    return size_;
  }

 private:
  void sweep(const still_held& held) {
    for (auto it = by_tag_.begin(); it != by_tag_.end();) {
      auto& keys = it->second;
      for (auto k = keys.begin(); k != keys.end();) {
        if (held(*k)) {
          ++k;
        } else {
          k = keys.erase(k);
          --size_;
        }
      }
      it = keys.empty() ? by_tag_.erase(it) : std::next(it);
    }
    swept_size_ = size_;
  }

  mutable std::mutex mu_;
  std::unordered_map<std::string, std::unordered_set<std::string>> by_tag_;
  std::size_t size_ = 0;
  std::size_t swept_size_ = 0;
};

}  // namespace layercache::detail
