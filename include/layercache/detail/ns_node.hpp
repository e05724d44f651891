// detail/ns_node.hpp — one level of a cache_namespace (not API).
//
// A namespaced key is the stack key "@ns:<name>#<generation>:" per level, outermost first, then the
// key. The generation is shared by every view of the same path in the process and changes when the
// namespace is rotated (here or, via the bus, by another instance), so the prefix is computed per
// call. Thread-safety: immutable except `generation` (atomic).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace layercache::detail {

struct ns_node {
  std::string name;  // this level's name
  std::string path;  // names from the outermost level, joined by '/'
  std::shared_ptr<const ns_node> parent;
  std::shared_ptr<std::atomic<std::uint64_t>> generation;

  // The stack-key prefix of this namespace with its current generations.
  void append_prefix(std::string& out) const {
    if (parent) parent->append_prefix(out);
    out.append("@ns:").append(name).push_back('#');
    out.append(std::to_string(generation->load(std::memory_order_acquire))).push_back(':');
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
