// layer.hpp — the interface every cache layer implements.
//
// A cache_stack is an ordered list of layers, nearest first. There are two kinds:
//
//  * object layers (memory_layer) hold decoded, immutable C++ objects; a hit hands out another
//    reference to the same object. At most one, and only at the front of a stack.
//  * byte layers (redis_layer, disk_layer, or your own) hold encoded envelopes (docs/format.md):
//    self-describing bytes carrying absolute expiry, version, tags and the payload. The stack
//    encodes and decodes envelopes and checks expiry; a byte layer only stores bytes under keys,
//    with a time-to-live hint so the backend can drop them on its own.
//
// Writing a byte layer: derive from byte_layer, implement get/set/del/clear (the *_many forms have
// loop defaults; override them when the backend can batch), report failures through status (never
// throw for backend trouble), and keep every call bounded in time.
//
// Thread-safety: every layer must be safe for concurrent calls from any thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "layercache/clock.hpp"
#include "layercache/events.hpp"
#include "layercache/metrics.hpp"
#include "layercache/status.hpp"

namespace layercache {

namespace detail {
class coordinator;
}  // namespace detail

enum class layer_kind : unsigned char { objects, bytes };

// Payload compression a byte layer asks the stack to apply when it encodes envelopes for it
// (recorded in the envelope, so any reader can decode it).
enum class compression : unsigned char { none, zstd, lz4 };

// Static facts about a layer, fixed at construction.
struct layer_info {
  std::string name;  // "memory", "redis", "disk", ... used in metrics and status
  layer_kind kind = layer_kind::bytes;
  // Upper bound on how long this layer keeps an entry; zero means "no cap of its own". An entry's
  // lifetime in this layer is min(entry lifetime, max_ttl).
  std::chrono::milliseconds max_ttl{0};
  bool remote = false;  // true for layers reached over a network (breaker, bus)
  compression compress = compression::none;  // byte layers: payload compression to apply
  std::size_t compress_min_bytes = 1024;     // payloads shorter than this stay uncompressed
};

// How a layer reports what it detects itself (breaker transitions, background failures) to the
// stack that owns it.
using layer_event_sink =
    std::function<void(event_type type, std::string_view key, const status& detail)>;

class layer {
 public:
  virtual ~layer() = default;
  layer(const layer&) = delete;
  layer& operator=(const layer&) = delete;

  virtual const layer_info& info() const noexcept = 0;

  // Removes `key`. Removing an absent key is ok.
  virtual status del(std::string_view key) = 0;
  virtual status del_many(std::span<const std::string> keys);
  // Removes every entry this layer holds for this stack (a prefixed Redis layer removes only its
  // prefix).
  virtual status clear() = 0;

  // Called by the cache_stack that takes the layer, and again with an empty sink when the stack is
  // destroyed: once attach() returns, the previous sink must not be running or be called again
  // (guard it with a lock). Default: events are not reported.
  virtual void attach(layer_event_sink sink) { (void)sink; }
  // Adds the layer's own counters (timeouts, breaker state, ...) to its metrics. Default: none.
  virtual void contribute_metrics(layer_metrics& out) const { (void)out; }
  // A shared layer that coordinates instances (distributed single-flight, versioned writes, the
  // invalidation bus: the Redis layer) returns its coordinator; the stack uses the first one it
  // finds. Internal interface (src/core/coordinator.hpp). Default: none.
  virtual detail::coordinator* coordination() noexcept { return nullptr; }

 protected:
  layer() = default;
};

// The answer of one byte-layer read.
struct byte_read {
  status error;                      // not ok when the backend failed (the read counts as a miss)
  std::optional<std::string> bytes;  // the stored envelope, when present
  // When absent: the version of a delete the layer still remembers (a tombstone), else 0. A copy
  // of the key in a layer below with a version not newer than it was deleted and must not be
  // served.
  std::uint64_t deleted_version = 0;
};

// One write of a batch.
struct byte_write {
  std::string_view key;
  std::string_view bytes;     // an encoded envelope
  unix_ms expires_at_ms = 0;  // absolute; the backend may drop the entry after it (0 = never)
};

class byte_layer : public layer {
 public:
  // Reads the envelope stored under `key`. Never throws for backend trouble.
  virtual byte_read get(std::string_view key) = 0;
  // Reads several keys; the result has one element per key, in order. Default: a loop over get().
  virtual std::vector<byte_read> get_many(std::span<const std::string> keys);
  // Stores `bytes` under `key` until `expires_at_ms`.
  virtual status set(std::string_view key, std::string_view bytes, unix_ms expires_at_ms) = 0;
  // Default: a loop over set().
  virtual status set_many(std::span<const byte_write> writes);
  // Visits the entries this layer holds for this stack — the key as the stack knows it (without a
  // layer's own prefix) and the stored envelope — until `visit` returns false. Used by snapshots;
  // entries written during the scan may or may not be seen. Default: errc::invalid_argument ("this
  // layer cannot enumerate its entries").
  virtual status scan(
      const std::function<bool(std::string_view key, std::string_view bytes)>& visit);
};

}  // namespace layercache
