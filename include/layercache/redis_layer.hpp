// redis_layer.hpp — L2: Redis shared by every instance of a service.
//
//   auto l2 = layercache::redis_layer::create({.url = "redis://127.0.0.1:6379/0", .prefix = "app:",
//                                              .ttl = 1h});
//   layercache::cache_stack cache({layercache::memory_layer::create({}), l2});
//
// Stores envelopes (docs/format.md) under prefix + key with PX = the entry's remaining lifetime
// (capped by `ttl`); the stack checks expiry itself on read, so a clock skew between Redis and the
// instances never serves an expired entry. Payloads above `compress_min_bytes` are compressed
// (lz4 by default), recorded in the envelope.
//
// I/O model: a few multiplexed connections; commands from concurrent callers are pipelined; every
// read has `read_deadline` and every write `write_deadline`. A caller whose deadline passes gives
// up the reply, not the connection. get_many is one MGET, set_many one pipeline, del_many one DEL.
//
// Failures never throw from reads or writes: they return a status (unavailable, timeout,
// resource_exhausted for a value over max_value_bytes) and the stack falls through to the next
// layer or the fetcher. Reads and writes each have a circuit breaker (their deadlines differ: a
// Redis too slow for reads may still take writes) that opens after `breaker_failures` consecutive
// errors or deadline misses; while open the layer answers "unavailable" at once without touching
// the network, and after `breaker_open_for` a single probe call decides whether it closes again.
//
// Authentication: with a URL carrying credentials, AUTH (ACL user + password) and SELECT run on
// every connection. A server that rejects the credentials makes create() throw
// invalid_argument_error ("redis: authentication failed ..."): that is a configuration error. A
// server that is merely unreachable at create() does not throw — the layer starts disconnected,
// reconnects in the background, and reads fall through meanwhile.
//
// Thread-safety: thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "layercache/clock.hpp"
#include "layercache/layer.hpp"

namespace layercache {

struct redis_layer_options {
  // redis://[user[:password]@]host:port[/db]. Default "redis://127.0.0.1:6379".
  std::string url = "redis://127.0.0.1:6379";
  // Prepended to every key. clear() removes only keys with this prefix (SCAN + UNLINK); an empty
  // prefix means clear() removes every key of the database. Default empty.
  std::string prefix{};
  // Cap on an entry's lifetime in Redis; zero means no cap of its own. Default zero.
  std::chrono::milliseconds ttl{0};
  // Deadline of a read (GET, MGET). Must be > 0. Default 50 ms.
  std::chrono::milliseconds read_deadline{50};
  // Deadline of a write (SET, DEL, pipelines). Must be > 0. Default 200 ms.
  std::chrono::milliseconds write_deadline{200};
  // Payload compression and the size from which it applies. Default lz4 from 1 KiB.
  compression compress = compression::lz4;
  std::size_t compress_min_bytes = 1024;
  // Largest envelope stored; a larger one is not written (status resource_exhausted) and the key is
  // deleted so no older value outlives it. Must be > 0. Default 8 MiB.
  std::size_t max_value_bytes = std::size_t{8} << 20;
  // Multiplexed connections. Must be >= 1. Default 2.
  std::size_t connections = 2;
  // Bound on one connection attempt (TCP + AUTH + SELECT + PING); create() waits at most about
  // this long for the first one. Must be > 0. Default 200 ms.
  std::chrono::milliseconds connect_timeout{200};
  // Consecutive failures (errors or deadline misses) that open the circuit breaker. >= 1.
  // Default 5.
  std::uint32_t breaker_failures = 5;
  // How long an open breaker skips Redis before one probe is let through. > 0. Default 1 s.
  std::chrono::milliseconds breaker_open_for{1000};
  // Time source for PX (remaining lifetime); null means default_clock(). Use the stack's clock.
  std::shared_ptr<const ::layercache::clock> clock{};
  // Name in metrics, events and status. Default "redis".
  std::string name = "redis";

  // ---- Coordination across instances (docs/design.md, "Coordination across processes") -------
  // Distributed single-flight (leases), versioned compare-and-set writes, the invalidation bus, tag
  // sets and namespace generations. Off: the layer is a plain shared byte store and every instance
  // keeps its own L1 without hearing of others' writes. Default on.
  bool coordinate = true;
  // Lifetime of a fetch lease; the holder renews it every lease_ttl / 3 while its fetch runs, so it
  // bounds how long others wait for a holder that died. Must be > 0. Default 3 s.
  std::chrono::milliseconds lease_ttl{3000};
  // While waiting for another instance's fetch, waiters are woken by a bus notification; this poll
  // is only the safety net for a lost one. Must be > 0. Default 100 ms.
  std::chrono::milliseconds lease_poll{100};
  // A waiter that has waited this long for another instance's (live, renewing) lease takes it over
  // and fetches itself. Must be > 0. Default 10 s.
  std::chrono::milliseconds lease_wait{10000};
  // How long a delete's tombstone (its version) stays in Redis, fencing out writes and fills that
  // started before the delete. Must be > 0. Default 60 s.
  std::chrono::milliseconds tombstone_ttl{60000};
  // Cap on an L1 entry's lifetime while the bus subscription is down (this instance would not hear
  // of other instances' writes). Must be > 0. Default 1 s.
  std::chrono::milliseconds bus_down_l1_ttl{1000};

  void validate() const;
};

class redis_layer final : public byte_layer {
 public:
  // Connects (see "Authentication" above). Throws invalid_argument_error for invalid options, a
  // malformed URL or rejected credentials.
  static std::shared_ptr<redis_layer> create(redis_layer_options options);
  ~redis_layer() override;

  const layer_info& info() const noexcept override;
  byte_read get(std::string_view key) override;
  std::vector<byte_read> get_many(std::span<const std::string> keys) override;
  status set(std::string_view key, std::string_view bytes, unix_ms expires_at_ms) override;
  status set_many(std::span<const byte_write> writes) override;
  status del(std::string_view key) override;
  status del_many(std::span<const std::string> keys) override;
  status clear() override;
  // SCAN over the prefix plus MGET per batch; keys are returned without the prefix.
  status scan(
      const std::function<bool(std::string_view key, std::string_view bytes)>& visit) override;
  void attach(layer_event_sink sink) override;
  void contribute_metrics(layer_metrics& out) const override;
  detail::coordinator* coordination() noexcept override;

  // True while at least one connection is up.
  bool connected() const noexcept;

 private:
  struct impl;
  explicit redis_layer(std::unique_ptr<impl> state);
  std::unique_ptr<impl> impl_;
};

}  // namespace layercache
