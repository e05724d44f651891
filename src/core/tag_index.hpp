// tag_index.hpp — which keys this process's L1 holds under each tag.
//
// invalidate_tag must drop L1 copies that Redis may not know of (memory-only stacks, writes that
// failed to reach Redis), and the copies another instance's message names only by tag. Only tagged
// entries cost anything. A key is indexed under the tags of its latest tagged write only: writing
// it again with other tags moves it (otherwise one key re-set with ever new tags grows the index
// without bound). Entries are not removed when L1 evicts a key (that would put a callback on every
// eviction); instead, when the index has doubled since the last sweep, a sweep drops keys L1 no
// longer holds — so it stays within a small multiple of the tagged entries L1 holds. A stale key
// in the index is harmless: invalidating it erases nothing.
//
// Thread-safety: thread-safe (one mutex; a sweep runs under it, amortised O(1) per add). The
// `held` callback runs under the mutex: it must not call back into the index.
#pragma once

#include <algorithm>
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

// Whether an entry carrying `tags` matches an invalidation of `wanted`: any of them, or all.
inline bool carries_tags(std::span<const std::string> tags, std::span<const std::string> wanted,
                         bool all) {
  auto has = [&](const std::string& t) {
    return std::find(tags.begin(), tags.end(), t) != tags.end();
  };
  return all ? std::all_of(wanted.begin(), wanted.end(), has)
             : std::any_of(wanted.begin(), wanted.end(), has);
}

class tag_index {
 public:
  using still_held = std::function<bool(const std::string& key)>;

  // Indexes `key` under `tags`, replacing the tags of its previous tagged write.
  void add(std::string_view key, std::span<const std::string> tags, const still_held& held) {
    if (tags.empty()) return;
    std::lock_guard lock(mu_);
    auto [it, fresh] = by_key_.try_emplace(std::string(key));
    std::vector<std::string>& current = it->second;
    if (!fresh) {
      for (const auto& old : current) {
        if (std::find(tags.begin(), tags.end(), old) == tags.end()) unlink(old, it->first);
      }
    }
    current.clear();
    for (const auto& t : tags) {
      if (std::find(current.begin(), current.end(), t) != current.end()) continue;
      current.push_back(t);
      if (by_tag_[t].emplace(it->first).second) ++size_;
    }
    if (size_ >= 2 * swept_size_ + 1024) sweep(held);
  }

  // The keys under the tags: under any of them, or under all of them. The index keeps them: two
  // invalidations running at once must both find a key (taking it, the first could return before
  // the second, which found nothing, had removed it), and a removed key costs nothing but a sweep.
  std::vector<std::string> find(std::span<const std::string> tags, bool all) const {
    std::vector<std::string> out;
    std::lock_guard lock(mu_);
    if (tags.empty()) return out;
    if (!all) {
      std::unordered_set<std::string_view> seen;
      for (const auto& t : tags) {
        auto it = by_tag_.find(t);
        if (it == by_tag_.end()) continue;
        for (const auto& key : it->second) {
          if (seen.insert(key).second) out.push_back(key);
        }
      }
    } else {
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
    }
    return out;
  }

  // Key-tag pairs indexed.
  std::size_t size() const {
    std::lock_guard lock(mu_);
    return size_;
  }

 private:
  void unlink(const std::string& tag, const std::string& key) {
    auto it = by_tag_.find(tag);
    if (it == by_tag_.end()) return;
    size_ -= it->second.erase(key);
    if (it->second.empty()) by_tag_.erase(it);
  }

  void forget(const std::string& key) {
    auto it = by_key_.find(key);
    if (it == by_key_.end()) return;
    const std::vector<std::string> tags = std::move(it->second);
    by_key_.erase(it);
    for (const auto& t : tags) unlink(t, key);
  }

  void sweep(const still_held& held) {
    std::vector<std::string> gone;
    for (const auto& [key, tags] : by_key_) {
      if (!held(key)) gone.push_back(key);
    }
    for (const auto& key : gone) forget(key);
    swept_size_ = size_;
  }

  mutable std::mutex mu_;
  std::unordered_map<std::string, std::unordered_set<std::string>> by_tag_;
  std::unordered_map<std::string, std::vector<std::string>> by_key_;  // the tags of each key
  std::size_t size_ = 0;
  std::size_t swept_size_ = 0;
};

}  // namespace layercache::detail
