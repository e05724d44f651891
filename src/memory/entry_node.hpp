// entry_node.hpp — one memory-layer entry: links for the hash chain and the policy's lists, the
// value reference and its metadata, followed in the same allocation by the key bytes.
//
// Invariants: a node is owned by exactly one shard while linked; it is only touched under that
// shard's lock; it is freed after being unlinked, outside the lock (so a large value's destructor
// never runs while other threads wait on the shard).
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string_view>

#include "layercache/clock.hpp"

namespace layercache::detail {

struct type_ops;

struct entry_node {
  entry_node* hash_next = nullptr;
  entry_node* prev = nullptr;  // policy list links (circular, sentinel-headed)
  entry_node* next = nullptr;
  std::shared_ptr<const void> value;
  const type_ops* ops = nullptr;
  unix_ms expires_at_ms = 0;  // 0 = never
  std::uint64_t hash = 0;
  std::uint32_t key_len = 0;
  std::uint32_t weight = 0;  // charged against max_bytes
  std::uint32_t stamp = 0;   // policy-defined (recency tick of the last move)
  std::uint8_t segment = 0;  // policy-defined
  bool referenced = false;   // policy-defined (second-chance bit)
  bool negative = false;

  std::string_view key() const noexcept {
    return {reinterpret_cast<const char*>(this + 1), key_len};
  }

  // One allocation: the node, then the key bytes.
  static entry_node* make(std::string_view key) {
    void* mem = ::operator new(sizeof(entry_node) + key.size());
    auto* n = new (mem) entry_node();
    n->key_len = static_cast<std::uint32_t>(key.size());
    if (!key.empty()) std::memcpy(reinterpret_cast<char*>(n + 1), key.data(), key.size());
    return n;
  }
  static void destroy(entry_node* n) noexcept {
    n->~entry_node();
    ::operator delete(static_cast<void*>(n));
  }
};

}  // namespace layercache::detail
