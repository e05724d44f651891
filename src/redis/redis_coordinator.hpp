// redis_coordinator.hpp — detail::coordinator over Redis: Lua scripts for leases and versioned
// writes, a pub/sub subscriber for the invalidation bus and lease wake-ups, a renewal thread.
//
// The protocols, key names and failure cases are in docs/design.md ("Coordination across
// processes") and the scripts in redis_coordinator.cpp. Owned by redis_layer, which hands it the
// client and its breakers (one breaker per direction covers layer and coordinator alike: they
// talk to the same server).
//
// Thread-safety: thread-safe (coordinator.hpp).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "core/coordinator.hpp"
#include "layercache/redis_layer.hpp"
#include "redis/redis_client.hpp"

namespace layercache::redis_detail {

// What the coordinator needs from its redis_layer.
struct coordinator_context {
  redis_client* client = nullptr;
  const redis_layer_options* options = nullptr;
  std::shared_ptr<const ::layercache::clock> clock;  // for PX (remaining lifetime)
  // Breaker gates and accounting of the layer (see redis_layer.cpp): *_allowed asks the breaker,
  // *_outcome feeds it and returns the named status to report.
  std::function<bool()> read_allowed, write_allowed;
  std::function<status(const status&)> read_outcome, write_outcome;
};

// Values stored under a key after a delete: "\xA7\xFE" + the delete's version (u64 LE). Readers
// treat it as absent; scripts compare versions against it (docs/format.md, "Redis tombstone").
bool is_tombstone(std::string_view bytes) noexcept;
// The version a tombstone carries (little-endian after the two marker bytes).
std::uint64_t tombstone_version(std::string_view tombstone) noexcept;

// The internal keys of a layer with prefix P live under P + "__lc:"; user keys must not start with
// it (the stack rejects them when this layer coordinates).
inline constexpr std::string_view internal_marker = "__lc:";

std::unique_ptr<detail::coordinator> make_redis_coordinator(coordinator_context context);

// Test seam: how many peer origins the coordinator `c` (made by make_redis_coordinator) remembers
// bus sequence numbers for; 0 for another coordinator.
std::size_t bus_origins_tracked(detail::coordinator& c);

}  // namespace layercache::redis_detail
