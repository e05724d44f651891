// detail/ns_node.hpp — one level of a cache_namespace (not API).
//
// A namespaced key is the stack key "@ns:<length of name>:<name>#<generation>:" per level,
// outermost first, then the key. The length makes the encoding unambiguous: without it namespace
// "t" with key "x#0:k" and namespace "t#1:x" with key "k" were the same stack key. The generation
// is shared by every view of the same path in the process and changes when the namespace is rotated
// (here or, via the bus, by another instance), so the prefix is computed per call. Thread-safety:
// immutable except `generation` (atomic).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace layercache::detail {

struct ns_node {
  // A generation with this bit set is a placeholder: the shared layer could not say the real one,
  // so this process uses one nobody else does (misses only) until it can.
  static constexpr std::uint64_t placeholder_bit = std::uint64_t{1} << 63;

  std::string name;  // this level's name
  std::string path;  // names from the outermost level, joined by '/'
  std::shared_ptr<const ns_node> parent;
  std::shared_ptr<std::atomic<std::uint64_t>> generation;
  // While a level of the path is a placeholder: when (unix ms) the next attempt to read the real
  // generation may run.
  mutable std::atomic<std::int64_t> retry_at_ms{0};

  static void append_level(std::string& out, std::string_view level, std::uint64_t gen) {
    out.append("@ns:").append(std::to_string(level.size())).push_back(':');
    out.append(level).push_back('#');
    out.append(std::to_string(gen)).push_back(':');
  }

  // The stack-key prefix of this namespace with its current generations.
  void append_prefix(std::string& out) const {
    if (parent) parent->append_prefix(out);
    append_level(out, name, generation->load(std::memory_order_acquire));
  }
  // Whether this level or one above it uses a placeholder generation.
  bool placeholder_in_path() const {
    return (generation->load(std::memory_order_relaxed) & placeholder_bit) != 0 ||
           (parent && parent->placeholder_in_path());
  }
  std::string prefix() const {
    std::string out;
    append_prefix(out);
    return out;
  }
  std::string key(std::string_view k) const {
    std::string out;
    out.reserve(32 + k.size());
    append_prefix(out);
    out.append(k);
    return out;
  }
};

}  // namespace layercache::detail
