// coordinator.hpp — what a shared byte layer (Redis) offers the stack to make many processes
// behave like one cache: distributed single-flight (leases), versioned compare-and-set writes, the
// invalidation bus, tag sets and namespace generations. Internal interface, not API; the design and
// its bounds are in docs/design.md ("Coordination across processes").
//
// The stack asks each layer for it (layer::coordination()); at most one layer of a stack
// coordinates (the first that offers it). Thread-safety: every member may be called concurrently;
// listener callbacks run on the coordinator's bus thread, one at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "layercache/clock.hpp"
#include "layercache/status.hpp"

namespace layercache::detail {

// What other instances announce on the bus, delivered to the stack. Own messages are filtered out.
class bus_listener {
 public:
  virtual ~bus_listener() = default;
  // Values of these keys changed or went away elsewhere: drop local copies.
  virtual void on_keys(std::span<const std::string> keys) = 0;
  // Keys carrying these tags (any of them, or all of them) were invalidated; `keys` are those the
  // shared tag sets knew. `version` is the invalidation's: a write of ours still queued for one of
  // the keys began before it (the shared layer did not know the key yet) and must be fenced out.
  virtual void on_tags(std::span<const std::string> tags, bool all,
                       std::span<const std::string> keys, std::uint64_t version) = 0;
  virtual void on_prefix(std::string_view prefix, std::uint64_t version) = 0;
  virtual void on_clear(std::uint64_t version) = 0;
  // Namespace `path` moved to `generation`.
  virtual void on_rotate(std::string_view path, std::uint64_t generation) = 0;
  // Messages may have been lost (a sequence gap, or the subscription broke and came back): drop
  // whatever could be stale. `why` is for the event.
  virtual void on_lost(std::string_view why) = 0;
  // The subscription is down (broken, or silent past its health check): until it is back, no
  // change made elsewhere is heard. Entries already cached must not outlive the bound that new
  // ones get (bus_down_l1_ttl).
  virtual void on_down() = 0;
};

// The answer to a cold miss's first round trip.
struct lease_answer {
  enum class kind : unsigned char { value, granted, held, failed };
  kind type = kind::failed;
  std::optional<std::string> bytes;  // value: the stored envelope
  std::string token;                 // granted: the lease's fencing token
  std::uint64_t tombstone = 0;       // granted: the version of a delete Redis remembers, if any
  std::chrono::milliseconds held_for{0};  // held: the lease's remaining lifetime
  // held: the caller is registered for wake-ups of `key` from before the request was sent (so a
  // fill landing before the answer arrives is not missed); pass it to await_fill or stop_waiting.
  std::uint64_t wakeups = 0;
  status error;  // failed: why (Redis unreachable, breaker open, ...)
};

// One write of a background batch to the coordinating layer.
struct coordinated_write {
  enum class kind : unsigned char {
    set,   // a mutation: compare-and-set by version, announced on the bus
    fill,  // a fetched or backfilled value: compare-and-set; releases `lease` when it still holds
    del,   // a mutation: a tombstone carrying `version`, announced on the bus
  };
  kind type = kind::set;
  std::string_view key;
  std::string_view bytes;  // set, fill: the envelope (its version is the one compared)
  unix_ms expires_at_ms = 0;
  std::uint64_t version = 0;            // del: the tombstone's version
  std::string_view lease;               // fill: the token granted by acquire(), or empty
  std::span<const std::string> tags{};  // set, fill: tag sets the key joins
};

struct coordinated_result {
  status error;  // transport trouble: nothing is known about the writes
  // Per write: true when a newer value (or tombstone) was already stored, so this one was not.
  std::vector<bool> rejected;
};

class coordinator {
 public:
  virtual ~coordinator() = default;

  // Starts delivering bus messages to `listener` (a layer may serve several stacks).
  virtual void listen(bus_listener* listener) = 0;
  // Stops it; once this returns, the listener is not running and will not be called again.
  virtual void unlisten(bus_listener* listener) = 0;
  // This instance's id on the bus.
  virtual std::uint64_t origin() const noexcept = 0;
  // True while the bus subscription is confirmed (messages from others arrive).
  virtual bool bus_up() const noexcept = 0;
  // How long L1 may keep an entry while the bus is down (it would not hear invalidations).
  virtual std::chrono::milliseconds bus_down_l1_ttl() const noexcept = 0;

  // Round trip 1 of a cold miss: the stored value, or a lease for this caller, or "another instance
  // holds it". `force` takes the lease even when another instance holds it (a waiter past its
  // patience). A granted lease is renewed in the background until fill or release.
  virtual lease_answer acquire(std::string_view key, bool force) = 0;
  // After a `held` answer: waits until another instance's lease on `key` is filled or released
  // (bus notification; also one that arrived since the acquire was sent), or until `until` or a
  // poll interval passes, whichever is first. Then the caller acquires again.
  virtual void await_fill(std::string_view key, std::uint64_t wakeups,
                          std::chrono::steady_clock::time_point until) = 0;
  // After a `held` answer the caller will not wait for (it gives up or takes over).
  virtual void stop_waiting(std::string_view key) = 0;
  // Gives a lease up without a value (the fetch failed, or its result is not cached) and wakes
  // instances waiting for it. Asynchronous; never fails loudly (the lease expires anyway).
  virtual void release(std::string_view key, std::string_view token) = 0;
  // How long a waiter waits for another instance's lease before taking it over.
  virtual std::chrono::milliseconds lease_wait() const noexcept = 0;

  // Round trip 2 (in the background): writes a batch — compare-and-set by version, leases released,
  // tag sets extended, mutations announced in one bus message.
  virtual coordinated_result write(std::span<const coordinated_write> writes) = 0;

  // Removes (tombstones with `version`) every key carrying the tags (any or all) from the shared
  // layer and removes those keys from the tag sets; a member whose value is newer than `version`
  // (another host's clock ahead) survives and stays a member. Announces it; `keys` receives every
  // matched key.
  virtual status invalidate_tags(std::span<const std::string> tags, bool all, std::uint64_t version,
                                 std::vector<std::string>& keys) = 0;
  // Removes every key starting with `prefix` from the shared layer and announces it. Like a tag
  // invalidation, it first records itself so that a write of a covered key not newer than
  // `version` reaching the shared layer later (queued, retried) is refused.
  virtual status invalidate_prefix(std::string_view prefix, std::uint64_t version) = 0;
  // Records a clear of `version` the same way, before the layer's clear() removes anything.
  virtual status fence_clear(std::uint64_t version) = 0;
  // Announces a clear (the layer's clear() does the removing), with the clear's version.
  virtual status announce_clear(std::uint64_t version) = 0;
  // The current generation of namespace `path` (0 when never rotated), or an error.
  virtual std::optional<std::uint64_t> generation(std::string_view path, status& error) = 0;
  // Bumps the generation of `path` and announces it; returns the new one.
  // `version`: the rotation's; a write under the old generation reaching the shared layer later is
  // moved to the new one when it is newer than that, and refused otherwise.
  virtual std::optional<std::uint64_t> rotate(std::string_view path, std::uint64_t version,
                                              status& error) = 0;
};

}  // namespace layercache::detail
