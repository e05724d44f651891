// stack_namespaces.cpp — namespace views (cache_namespace.hpp): generations read from and rotated
// in the coordinating layer, placeholders while it cannot be read.
#include <random>

#include "core/stack_impl.hpp"

namespace layercache {

std::uint64_t cache_stack::impl::placeholder_generation() {
  // Redis could not say: a generation nobody else uses, so nothing stale is served meanwhile
  // (only misses); replaced by the real one when the bus comes back (reload_generations) or when
  // a use of the namespace finds Redis answering again (refresh_namespace).
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return unknown_generation | (rng() >> 1);
}

void cache_stack::impl::reload_generations() {
  if (coord == nullptr) return;
  std::vector<std::shared_ptr<detail::ns_node>> nodes;
  {
    std::lock_guard lock(ns_mu);
    for (auto& [path, node] : namespaces) nodes.push_back(node);
  }
  for (auto& node : nodes) {
    status error;
    if (auto g = coord->generation(node->path, error)) move_generation(*node, *g, true);
  }
}

void cache_stack::impl::move_generation(detail::ns_node& node, std::uint64_t g, bool from_redis,
                                        bool carry_writes) {
  std::string parent;
  if (node.parent) node.parent->append_prefix(parent);
  std::uint64_t old = node.generation->load(std::memory_order_acquire);
  for (;;) {
    const bool placeholder = (old & unknown_generation) != 0;
    if (old == g || (!placeholder && g < old) || (placeholder && !from_redis)) return;
    if (carry_writes && writer) {
      // Our writes under the old generation still on their way land in the new one (lua_write
      // moves those newer than the rotation): reads of the new keys must see them until then.
      std::string from = parent, to = parent;
      detail::ns_node::append_level(from, node.name, old);
      detail::ns_node::append_level(to, node.name, g);
      writer->alias_pending(from, to);
    }
    if (node.generation->compare_exchange_weak(old, g, std::memory_order_acq_rel)) break;
  }
  if (l1 == nullptr) return;
  std::string prefix = parent;
  detail::ns_node::append_level(prefix, node.name, old);
  l1->erase_prefix(prefix);
}

void cache_stack::refresh_namespace(const detail::ns_node& node) {
  impl& m = *impl_;
  if (m.coord == nullptr) return;
  for (const detail::ns_node* level = &node; level != nullptr; level = level->parent.get()) {
    if ((level->generation->load(std::memory_order_acquire) & unknown_generation) == 0) continue;
    // One attempt per level per interval, whoever asks: a dead Redis is not asked on every call.
    const std::int64_t now = m.clock->now_ms();
    std::int64_t due = level->retry_at_ms.load(std::memory_order_relaxed);
    if (now < due || !level->retry_at_ms.compare_exchange_strong(
                         due, now + impl::placeholder_retry.count(), std::memory_order_relaxed)) {
      continue;
    }
    std::shared_ptr<detail::ns_node> registered;
    {
      std::lock_guard lock(m.ns_mu);
      auto it = m.namespaces.find(level->path);
      if (it == m.namespaces.end()) continue;
      registered = it->second;
    }
    status error;
    if (auto g = m.coord->generation(level->path, error)) m.move_generation(*registered, *g, true);
  }
}

cache_namespace cache_stack::ns(std::string_view name) { return make_namespace(nullptr, name); }

cache_namespace cache_stack::make_namespace(std::shared_ptr<const detail::ns_node> parent,
                                            std::string_view name) {
  impl& m = *impl_;
  if (name.empty() || name.find('/') != std::string_view::npos) {
    throw invalid_argument_error("layercache: a namespace name must be non-empty and free of '/'");
  }
  std::string path = parent ? parent->path + "/" + std::string(name) : std::string(name);
  {
    std::lock_guard lock(m.ns_mu);
    auto it = m.namespaces.find(path);
    if (it != m.namespaces.end()) return cache_namespace(this, it->second);
  }
  auto node = std::make_shared<detail::ns_node>();
  node->name = std::string(name);
  node->path = path;
  node->parent = std::move(parent);
  std::uint64_t generation = 0;
  if (m.coord != nullptr) {
    status error;
    if (auto g = m.coord->generation(path, error)) {
      generation = *g;
    } else {
      generation = m.placeholder_generation();
      m.emit(event_type::layer_error, m.bytes[m.coord_at]->info().name, path,
             status::layer_error(m.bytes[m.coord_at]->info().name, error.code(),
                                 "namespace generation unknown (" + error.message() +
                                     "): using a private one until the bus is back"));
    }
  }
  node->generation = std::make_shared<std::atomic<std::uint64_t>>(generation);
  std::lock_guard lock(m.ns_mu);
  auto [it, inserted] = m.namespaces.try_emplace(std::move(path), std::move(node));
  return cache_namespace(this, it->second);
}

status cache_stack::rotate_namespace(const detail::ns_node& node) {
  impl& m = *impl_;
  std::shared_ptr<detail::ns_node> registered;
  {
    std::lock_guard lock(m.ns_mu);
    auto it = m.namespaces.find(node.path);
    if (it == m.namespaces.end()) return status(errc::internal, "namespace not registered");
    registered = it->second;
  }
  std::uint64_t next = 0;
  if (m.coord != nullptr) {
    status error;
    auto g = m.coord->rotate(node.path, m.versions.next(m.clock->now_us()), error);
    if (!g) return detail::attribute_to(*m.bytes[m.coord_at], error);
    next = *g;
  } else {
    next = (registered->generation->load(std::memory_order_acquire) & ~unknown_generation) + 1;
  }
  // Our own rotation: our writes under the old generation came before it and stay there.
  m.move_generation(*registered, next, true, /*carry_writes=*/false);
  return {};
}

}  // namespace layercache
