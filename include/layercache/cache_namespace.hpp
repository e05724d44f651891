// cache_namespace.hpp — a scoped view of a cache_stack: keys and tags prefixed, rotatable.
//
//   layercache::cache_namespace tenant = cache.ns("tenant:42");
//   auto cart = tenant.get<cart_t>("cart", [&] { return db.load_cart(42); });
//   tenant.rotate();  // every key of tenant:42 (and of its nested namespaces) is gone at once
//
// A view maps each key to the stack key "@ns:9:tenant:42#<generation>:cart" (docs/design.md,
// "Namespaces"). rotate() bumps the generation — kept in Redis and announced on the bus when the
// stack has a coordinating Redis layer, local otherwise — so every instance stops seeing the old
// keys at once, without scanning; the old entries expire on their own (L1 drops them right away).
// Views nest: cache.ns("a").ns("b") is inside "a", and rotating "a" invalidates "b" too. Keys,
// tags and prefixes given to a view are in the view's terms; key limits apply to the full key.
//
// Cost: each call builds the full key, so a hit through a view allocates once the full key is
// longer than the small-string buffer (15 bytes); use the stack directly on the hottest paths.
//
// Thread-safety: a view is a small value (copyable); its members are as thread-safe as the stack's.
// The stack must outlive its views.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/detail/ns_node.hpp"

namespace layercache {

class cache_namespace {
 public:
  // The path of this view: the names of its levels, outermost first, joined by '/'.
  const std::string& path() const noexcept { return node_->path; }
  // The stack key `key` maps to now (changes when the namespace rotates).
  std::string key(std::string_view key) const { return node().key(key); }

  template <class T, class Fetcher>
  std::shared_ptr<const T> get(std::string_view key, Fetcher&& fetcher,
                               const get_options& options = {}) {
    if (options.tags.empty()) {
      return stack_->get<T>(node().key(key), std::forward<Fetcher>(fetcher), options);
    }
    return stack_->get<T>(node().key(key), std::forward<Fetcher>(fetcher), scoped(options));
  }
  template <class T>
  std::shared_ptr<const T> get_if_present(std::string_view key) {
    return stack_->get_if_present<T>(node().key(key));
  }
  template <class T>
  status set(std::string_view key, T value, const set_options& options = {}) {
    if (options.tags.empty()) return stack_->set<T>(node().key(key), std::move(value), options);
    return stack_->set<T>(node().key(key), std::move(value), scoped(options));
  }
  // get_many over the view: the fetcher receives the keys as the view knows them.
  template <class T, class BatchFetcher>
  std::vector<std::shared_ptr<const T>> get_many(std::span<const std::string> keys,
                                                 BatchFetcher&& fetcher,
                                                 const get_options& options = {}) {
    const std::string prefix = node().prefix();
    std::vector<std::string> full;
    full.reserve(keys.size());
    for (const auto& k : keys) full.push_back(prefix + k);
    auto unscoped = [&](std::span<const std::string> missing) {
      std::vector<std::string> local;
      local.reserve(missing.size());
      for (const auto& k : missing) local.push_back(k.substr(prefix.size()));
      return std::forward<BatchFetcher>(fetcher)(std::span<const std::string>(local));
    };
    return stack_->get_many<T>(full, unscoped, options.tags.empty() ? options : scoped(options));
  }
  status del(std::string_view key) { return stack_->del(node().key(key)); }
  status del_many(std::span<const std::string> keys) {
    std::vector<std::string> full;
    full.reserve(keys.size());
    for (const auto& k : keys) full.push_back(node().key(k));
    return stack_->del_many(full);
  }
  bool has(std::string_view key) { return stack_->has(node().key(key)); }

  status invalidate_tag(std::string_view tag) { return stack_->invalidate_tag(node().key(tag)); }
  status invalidate_tags(std::span<const std::string> tags, tag_match match = tag_match::any) {
    std::vector<std::string> full;
    full.reserve(tags.size());
    for (const auto& t : tags) full.push_back(node().key(t));
    return stack_->invalidate_tags(full, match);
  }
  status invalidate_prefix(std::string_view prefix) {
    return stack_->invalidate_prefix(node().key(prefix));
  }

  // Invalidates every key of this namespace and of the namespaces nested in it, in every layer and
  // every instance, by moving to a new generation (one INCR and one bus message; no scan).
  status rotate() { return stack_->rotate_namespace(*node_); }

  // A namespace nested in this one.
  cache_namespace ns(std::string_view name) const { return stack_->make_namespace(node_, name); }

 private:
  friend class cache_stack;
  cache_namespace(cache_stack* stack, std::shared_ptr<const detail::ns_node> node)
      : stack_(stack), node_(std::move(node)) {}

  // The node, after a bounded attempt to replace a placeholder generation on its path by the real
  // one (a single failed read must not split the namespace for good; costs one atomic load when
  // there is none).
  const detail::ns_node& node() const {
    if (node_->placeholder_in_path()) [[unlikely]]
      stack_->refresh_namespace(*node_);
    return *node_;
  }

  template <class Options>
  Options scoped(const Options& options) const {
    Options copy = options;
    for (auto& t : copy.tags) t = node().key(t);
    return copy;
  }

  cache_stack* stack_;
  std::shared_ptr<const detail::ns_node> node_;
};

}  // namespace layercache
