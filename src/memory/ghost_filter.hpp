// ghost_filter.hpp — which keys were among the last `span` added, in fixed memory: the "ghost"
// lists of W-TinyLFU's window climber (the keys a segment one step larger would still hold).
//
// Keys are remembered by a 32-bit fingerprint of their hash and the sequence number of their
// addition, in an open-addressing table four times the span: a key is looked for in 8 slots
// from its hash and, when added, replaces the oldest (or a stale) one of them. It is approximate
// both ways — a fingerprint collision can report a key never added, a crowded neighbourhood can
// drop a key before it is `span` additions old — which only adds noise to the climber's counts.
//
// Not thread-safe: used under the owning shard's lock. Allocates only in the constructor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace layercache::detail {

class ghost_filter {
 public:
  explicit ghost_filter(std::size_t span);

  // Remembers the key with this hash as the newest addition.
  void add(std::uint64_t hash) noexcept;
  // True when the key was among the last `span` additions; forgets it then (one re-request is
  // one piece of evidence).
  bool take(std::uint64_t hash) noexcept;

 private:
  struct slot {
    std::uint32_t fingerprint = 0;  // 0 = empty
    std::uint32_t seq = 0;
  };
  static constexpr std::size_t probes = 8;

  std::unique_ptr<slot[]> slots_;
  std::size_t mask_ = 0;
  std::uint32_t span_;
  std::uint32_t seq_ = 0;  // wraps; ages are differences, so wrapping is harmless
};

}  // namespace layercache::detail
