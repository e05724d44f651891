#include "core/single_flight.hpp"

#include "core/tag_index.hpp"

namespace layercache::detail {

flight_table::flight_table(std::size_t shards)
    : shards_(std::make_unique<shard[]>(shards)), count_(shards) {}

flight_table::joined flight_table::join(std::string_view key, std::uint64_t hash,
                                        const type_ops* ops) {
  shard& s = shard_for(hash);
  std::lock_guard lock(s.mu);
  const std::uint64_t ended = sweeps_ended_.load(std::memory_order_seq_cst);
  if (auto it = s.map.find(key); it != s.map.end()) {
    // A stale fetch answers only those who asked before the invalidation; a caller arriving after
    // it (maybe the thread whose del marked it) must not get the value it removed: lead anew. A
    // doomed one may be shared while no sweep has ended since it began (every caller is then
    // concurrent with that sweep).
    const flight& cur = *it->second;
    if (!cur.invalidated && (!cur.doomed || cur.born_after_ends == ended)) {
      return {it->second, false};
    }
    s.map.erase(it);
  }
  auto f = std::make_shared<flight>();
  f->key.assign(key);
  f->hash = hash;
  f->ops = ops;
  f->leader = std::this_thread::get_id();
  f->doomed = sweeps_.load(std::memory_order_seq_cst) > 0;
  f->born_after_ends = ended;
  s.map.emplace(f->key, f);
  return {std::move(f), true};
}

bool flight_table::invalidate(std::string_view key, std::uint64_t hash) {
  shard& s = shard_for(hash);
  std::lock_guard lock(s.mu);
  auto it = s.map.find(key);
  if (it == s.map.end()) return false;
  it->second->invalidated = true;
  return true;
}

void flight_table::invalidate_all() {
  for (std::size_t i = 0; i < count_; ++i) {
    std::lock_guard lock(shards_[i].mu);
    for (auto& [key, f] : shards_[i].map) f->invalidated = true;
  }
}

void flight_table::begin_sweep() {
  sweeps_.fetch_add(1, std::memory_order_seq_cst);
  invalidate_all();
}

void flight_table::end_sweep() {
  // Ended before lowered: a join that sees the sweep gone also sees that it ended.
  sweeps_ended_.fetch_add(1, std::memory_order_seq_cst);
  sweeps_.fetch_sub(1, std::memory_order_seq_cst);
}

void flight_table::tag(flight& f, std::span<const std::string> tags) {
  if (tags.empty()) return;
  shard& s = shard_for(f.hash);
  std::lock_guard lock(s.mu);
  f.tags.assign(tags.begin(), tags.end());
}

void flight_table::invalidate_tagged(std::span<const std::string> tags, bool all) {
  if (tags.empty()) return;
  for (std::size_t i = 0; i < count_; ++i) {
    std::lock_guard lock(shards_[i].mu);
    for (auto& [key, f] : shards_[i].map) {
      const bool hit = !f->tags.empty() && carries_tags(f->tags, tags, all);
      if (hit) f->invalidated = true;
    }
  }
}

void flight_table::abandon(flight& f) {
  shard& s = shard_for(f.hash);
  std::lock_guard lock(s.mu);
  erase_if_current(s, f);
}

void flight_table::complete(flight& f, std::shared_ptr<const void> value, bool negative,
                            std::exception_ptr error, bool absent) {
  {
    std::lock_guard lock(f.mu);
    f.absent = absent;
    f.value = std::move(value);
    f.negative = negative;
    f.error = std::move(error);
    f.done = true;
  }
  f.cv.notify_all();
}

}  // namespace layercache::detail
