// options.hpp — options of a cache_stack and of its calls.
//
// Plain aggregates filled with designated initialisers; per-call options override the stack's, and
// each layer caps lifetimes with its own `ttl`. validate() runs at construction (stack) or at the
// call (per-call options) and throws invalid_argument_error naming the field.
//
//   layercache::cache_stack cache(layers, {.ttl = 10min, .negative_ttl = 30s});
//   cache.get<user>("user:1", fetch, {.ttl = 1min});
//
// Thread-safety: plain values.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layercache/clock.hpp"
#include "layercache/events.hpp"

namespace layercache {

// When a mutation returns.
enum class write_policy : unsigned char {
  // L1 is updated before the call returns; byte layers (Redis, disk) are written in the background,
  // in order per key, and failures are reported through metrics and events only. The process reads
  // its own writes even before they reach the byte layers.
  best_effort,
  // The call waits until every layer has been written and its status lists the layers that failed.
  strict,
};

struct stack_options {
  // Lifetime of an entry when the call gives none. Must be > 0. Default 5 minutes.
  std::chrono::milliseconds ttl = std::chrono::minutes(5);
  // Lifetime of a cached "not found" (a fetcher returning an empty std::optional). Zero means
  // "not found" is never cached: every get calls the fetcher again. Default 30 s.
  std::chrono::milliseconds negative_ttl = std::chrono::seconds(30);
  // Longest accepted key in bytes; longer keys throw invalid_argument_error. 1..65535, default 1
  // KiB.
  std::size_t max_key_bytes = 1024;
  // How long a caller waits for another caller's in-flight fetch of the same key before throwing
  // wait_timeout_error. Zero means "as long as the fetch takes". Default zero.
  std::chrono::milliseconds wait_deadline{0};
  // Time source for expiry; null means default_clock().
  std::shared_ptr<const ::layercache::clock> clock{};
  // Called for errors and notable events (events.hpp). Empty means no callback.
  event_callback on_event{};
  // When set/del/del_many/set_many return (per call via set_options and del_options). Default
  // best_effort.
  write_policy writes = write_policy::best_effort;
  // Threads writing byte layers in the background (ops on one key always go to the same thread).
  // Must be >= 1. Default 2.
  std::size_t write_threads = 2;
  // Background writes queued at most; a mutation blocks while the queue is full (nothing is
  // dropped for it). A mutation made by a callback running on a background writer thread
  // (on_event, a memory layer's on_remove) never blocks: it may take the queue past this bound,
  // since the thread it would wait for is its own. Must be >= 1. Default 65,536.
  std::size_t max_pending_writes = 65'536;
  // How long a failed background write (Redis unreachable, a timeout) is retried, with backoff
  // and in order with the key's later writes, before it is given up: then the key is reported
  // (a layer_error event per key), dropped from L1, and a delete of the write's version is retried
  // in the layer instead until it answers, so no older value survives there. Zero: given up at
  // the first failure. Default 30 s.
  std::chrono::milliseconds write_retry_for = std::chrono::seconds(30);
  // Failed background writes (per key and layer) kept for retry at most. Past it, a new failure
  // is given up at once (reported, dropped from L1; the layer may keep an older value of the key
  // until it expires or the key is written again). Must be >= 1. Default 10,000.
  std::size_t max_retained_writes = 10'000;
  // How long the destructor waits for queued background writes to reach their layers; each write
  // still queued after it is dropped and reported as a layer_error event. Default 2 s.
  std::chrono::milliseconds shutdown_flush_timeout = std::chrono::seconds(2);

  void validate() const;
};

struct del_options {
  // Overrides stack_options::writes for this call.
  std::optional<write_policy> policy{};
};

// How invalidate_tags() combines several tags.
enum class tag_match : unsigned char {
  any,  // keys carrying at least one of the tags
  all,  // keys carrying every one of the tags
};

struct get_options {
  // Lifetime of a fetched value; unset means stack_options::ttl. Must be > 0 when set.
  std::optional<std::chrono::milliseconds> ttl{};
  // Lifetime of a fetched "not found"; unset means stack_options::negative_ttl. Zero: not cached.
  std::optional<std::chrono::milliseconds> negative_ttl{};
  // Bound on waiting for another caller's fetch; unset means stack_options::wait_deadline.
  std::optional<std::chrono::milliseconds> wait_deadline{};
  // Tags of a value this call fetches (invalidate_tag removes it). Not looked at on a hit.
  std::vector<std::string> tags{};

  // Inline because it runs on every get, L1 hits included; the checks run only for set fields.
  void validate() const {
    if (ttl || negative_ttl || wait_deadline) validate_fields();
  }
  void validate_fields() const;
};

struct set_options {
  // Lifetime of the value; unset means stack_options::ttl. Must be > 0 when set.
  std::optional<std::chrono::milliseconds> ttl{};
  // Overrides stack_options::writes for this call.
  std::optional<write_policy> policy{};
  // Tags of the value: invalidate_tag(t) removes it from every layer and every instance.
  std::vector<std::string> tags{};

  void validate() const;
};

}  // namespace layercache
