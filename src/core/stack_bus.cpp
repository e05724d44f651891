// stack_bus.cpp — what other instances announce on the invalidation bus, applied to this
// instance: drop local copies, fence queued writes, resync after a loss.
#include "core/stack_impl.hpp"

namespace layercache {

// Runs on the coordinator's bus thread. Everything here only drops local copies; the shared
// layer already holds the change.
struct cache_stack::impl::bus_sink final : detail::bus_listener {
  explicit bus_sink(impl& owner) : m(owner) {}
  impl& m;

  void on_keys(std::span<const std::string> keys) override {
    m.bus_received.fetch_add(1, std::memory_order_relaxed);
    for (const auto& k : keys) m.drop_local(k);
  }
  void on_tags(std::span<const std::string> tag_list, bool all, std::span<const std::string> keys,
               std::uint64_t version) override {
    m.bus_received.fetch_add(1, std::memory_order_relaxed);
    m.flights.invalidate_tagged(tag_list, all);  // fetches of tagged keys no index knows yet
    std::vector<std::string> ours = m.tags.find(tag_list, all);
    for (const auto& k : keys) m.drop_local(k);
    for (const auto& k : ours) m.drop_local(k);
    // A tagged write of ours still queued was not in the shared tag set the invalidation read.
    m.fence_pending(version, [&](std::string_view k) {
      return std::find(ours.begin(), ours.end(), k) != ours.end();
    });
  }
  void on_prefix(std::string_view prefix, std::uint64_t version) override {
    m.bus_received.fetch_add(1, std::memory_order_relaxed);
    const detail::flight_table::sweep sweeping(m.flights);
    for (std::size_t i = 0; i < m.bytes.size(); ++i) {
      if (i != m.coord_at) (void)m.erase_prefix_in(*m.bytes[i], prefix);
    }
    if (m.l1 != nullptr) m.l1->erase_prefix(prefix);  // byte layers, then L1: see clear()
    m.fence_pending(version,
                    [&](std::string_view k) { return k.substr(0, prefix.size()) == prefix; });
  }
  void on_clear(std::uint64_t version) override {
    m.bus_received.fetch_add(1, std::memory_order_relaxed);
    const detail::flight_table::sweep sweeping(m.flights);
    for (std::size_t i = 0; i < m.bytes.size(); ++i) {
      if (i != m.coord_at) (void)m.bytes[i]->clear();
    }
    if (m.l1 != nullptr) (void)m.l1->clear();  // byte layers, then L1: see clear()
    m.fence_pending(version, [](std::string_view) { return true; });
  }
  void on_rotate(std::string_view path, std::uint64_t generation) override {
    m.bus_received.fetch_add(1, std::memory_order_relaxed);
    std::shared_ptr<detail::ns_node> node;
    {
      std::lock_guard lock(m.ns_mu);
      auto it = m.namespaces.find(std::string(path));
      if (it == m.namespaces.end()) return;  // never used here: nothing to drop
      node = it->second;
    }
    m.move_generation(*node, generation, true);
  }
  void on_down() override {
    // New inserts get at most bus_down_l1_ttl from now on (l1_expiry); entries cached before the
    // loss get the same bound, or a partitioned instance would serve them until their own expiry.
    if (m.l1 != nullptr)
      (void)m.l1->cap_lifetimes(m.clock->now_ms() + m.coord->bus_down_l1_ttl().count());
  }
  void on_lost(std::string_view why) override {
    // Which keys were changed meanwhile is unknown: drop all of L1 (the shared layer is the
    // truth) and re-read the namespace generations. The disk layer is kept: its entries are
    // versioned against Redis's tombstones (docs/design.md, "When the bus is down").
    m.bus_resyncs.fetch_add(1, std::memory_order_relaxed);
    m.flights.invalidate_all();
    if (m.l1 != nullptr) (void)m.l1->clear();
    m.emit(event_type::bus_resync, m.bytes[m.coord_at]->info().name, "",
           status(errc::unavailable, std::string(why) + ": L1 dropped"));
    m.reload_generations();
  }
};

void cache_stack::impl::drop_local(std::string_view key) {
  const std::uint64_t hash = detail::hash_key(key);
  flights.invalidate(key, hash);
  (void)apply_del(key, hash, 0, false, /*local_only=*/true);
}

std::unique_ptr<detail::bus_listener> cache_stack::impl::make_bus_sink() {
  return std::make_unique<bus_sink>(*this);
}

}  // namespace layercache
