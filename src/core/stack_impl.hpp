// stack_impl.hpp — the state of a cache_stack and the operations its parts share (internal).
//
// cache_stack's type-erased core is split by concern; each part defines its share of
// cache_stack::impl:
//   cache_stack.cpp        construction, destruction, metrics
//   stack_reads.cpp        get, get_if_present, has, get_many: L1, single-flight, byte layers,
//   leases stack_writes.cpp       set, del, clear, tag and prefix invalidation: L1 + the write
//   queue, fills stack_bus.cpp          what other instances announce (the invalidation bus)
//   stack_namespaces.cpp   namespace generations
//
// Concurrency: no lock of these files is held across a fetcher call or a layer call, except the
// single-flight shard lock around the final L1 insert (publish), which takes the memory shard lock
// inside it (order: flight shard → memory shard, never the reverse). set/set_many/del make their
// L1 change and queue their byte-layer op under the key's order stripe (impl::order; order: stripe
// → memory shard / write queue), so racing mutations of one key leave L1 and the byte layers
// agreeing on which came last.
// Invalidation: del/set/clear mark an in-flight fetch stale before touching the layers. A leader
// writes byte layers first, then publishes to L1 under the flight lock; if the flight was marked
// stale meanwhile it stores nothing in L1 and deletes what it wrote to byte layers (a compensating
// delete: the worst outcome of a race is a miss, never an old value outliving the invalidation).
// A flight already stale before the byte writes writes nothing, so an invalidating set() keeps its
// value in the byte layers.
// Invariants: every flight a leader registers is completed exactly once, on every path, including
// exceptions (lead() owns that).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/coordinator.hpp"
#include "core/histogram.hpp"
#include "core/single_flight.hpp"
#include "core/tag_index.hpp"
#include "core/version_clock.hpp"
#include "core/write_behind.hpp"
#include "layercache/cache_namespace.hpp"
#include "layercache/cache_stack.hpp"
#include "layercache/detail/envelope.hpp"
#include "layercache/detail/hash.hpp"

// Helpers of the stack's parts only (this header is included by the stack_*.cpp files alone).
namespace layercache::stack_internal {

using detail::flight;
using steady = std::chrono::steady_clock;

struct byte_layer_stats {
  std::atomic<std::uint64_t> hits{0}, misses{0}, errors{0}, writes{0}, expirations{0};
  detail::latency_histogram latency;
};

inline std::uint64_t elapsed_ns(steady::time_point start) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now() - start).count());
}

inline detail::compression_policy policy_for(const layer_info& info) {
  detail::compression_policy p;
  switch (info.compress) {
    case compression::none:
      p.algorithm = detail::compression_id::none;
      break;
    case compression::zstd:
      p.algorithm = detail::compression_id::zstd;
      break;
    case compression::lz4:
      p.algorithm = detail::compression_id::lz4;
      break;
  }
  p.min_bytes = info.compress_min_bytes;
  return p;
}

// An entry found in a byte layer.
struct found_entry {
  std::shared_ptr<const void> value;
  bool negative = false;
  unix_ms fresh_until_ms = 0;
  std::string bytes;  // the envelope as stored, reused for backfill
  std::vector<std::string> tags;
  std::uint64_t version = 0;
};

// What a fill carries besides the value: the lease it fills (distributed single-flight), the
// version of a fetched value (taken when the miss began, so a delete that came later wins) and its
// tags.
struct fill_info {
  std::string_view lease{};
  std::uint64_t version = 0;
  std::span<const std::string> tags{};
};

// A lease taken by a cold miss; given back on every path that does not fill it.
struct lease_state {
  std::string token;
  // The version of a delete Redis still remembers: a copy below Redis (disk) older than it was
  // deleted elsewhere, maybe while this instance was not listening, and must not be served.
  std::uint64_t tombstone = 0;
};

inline constexpr std::size_t no_layer = static_cast<std::size_t>(-1);
inline constexpr std::uint64_t unknown_generation = detail::ns_node::placeholder_bit;

inline std::uint64_t version_of(std::string_view envelope) {
  detail::envelope_header h;
  return detail::peek_envelope_header(envelope, h).ok() ? h.version : 0;
}

// Adds the failures of `s` to `result`, each layer once: a batch whose keys failed in the same
// layer reports that layer once (status::failures lists layers, not keys).
inline void update_per_layer(status& result, const status& s) {
  for (const layer_failure& f : s.failures()) {
    bool listed = false;
    for (const layer_failure& g : result.failures()) listed = listed || g.layer == f.layer;
    if (!listed) result.update(status::layer_error(f.layer, f.code, f.message));
  }
  if (!s.ok() && s.failures().empty()) result.update(s);
}

[[noreturn]] inline void throw_type_mismatch(std::string_view key, const char* held,
                                             const char* wanted) {
  throw type_mismatch_error("layercache: key '" + std::string(key) + "' holds a value of type " +
                            held + ", read as " + wanted);
}

}  // namespace layercache::stack_internal

namespace layercache {

using namespace stack_internal;  // NOLINT: internal header of the stack's own .cpp files

struct cache_stack::impl {
  std::vector<std::shared_ptr<layer>> layers;
  std::vector<byte_layer*> bytes;                    // byte layers, nearest first
  std::vector<detail::compression_policy> compress;  // per byte layer
  std::unique_ptr<byte_layer_stats[]> stats;         // per byte layer
  memory_layer* l1 = nullptr;
  stack_options options;
  std::shared_ptr<const ::layercache::clock> clock;
  detail::flight_table flights;

  std::atomic<std::uint64_t> fetches{0}, fetch_errors{0}, dedupes{0}, wait_timeouts{0},
      negative_hits{0}, stale_fills{0};
  std::atomic<std::uint64_t> lease_grants{0}, lease_waits{0}, lease_takeovers{0},
      coordination_fallbacks{0}, cas_rejections{0}, bus_received{0}, bus_resyncs{0};
  std::atomic<std::uint64_t> schema_misses{0};  // entries of another type or schema (take())

  // Distributed coherence (coordinator.hpp): the coordinating byte layer, if any.
  detail::coordinator* coord = nullptr;
  std::size_t coord_at = no_layer;
  bool local_byte_layers = false;  // byte layers besides the coordinating one (disk)
  detail::version_clock versions;
  detail::tag_index tags;
  // Namespace generations by path, shared with every view of the path.
  std::mutex ns_mu;
  std::unordered_map<std::string, std::shared_ptr<detail::ns_node>> namespaces;
  std::unique_ptr<detail::bus_listener> bus;
  detail::latency_histogram fetch_latency;
  // A mutation's L1 change and its byte-layer op are made under the key's order stripe, so two
  // mutations of one key racing each other reach L1 and the write queue in the same order;
  // otherwise L1 could keep one value while the byte layers end with the other, for good.
  // Recursive: a memory-layer removal callback (on_remove) may mutate the cache from inside.
  // Held across writer->submit(), which never waits there: room in the queue is reserved before
  // the stripe is taken (a writer thread's callback may need the stripe to make room).
  std::array<std::recursive_mutex, 64> order;
  // The newest version a mutation under each stripe queued (guarded by that stripe): queue order
  // and version order of a key's mutations must agree, or Redis (which keeps the newest version)
  // would end with another value than L1 (which keeps the last one applied).
  std::array<std::uint64_t, 64> order_version{};
  // Last member: destroyed first, flushing queued writes while the layers still exist.
  std::unique_ptr<detail::write_behind> writer;

  std::recursive_mutex& order_of(std::uint64_t hash) { return order[(hash >> 40) % order.size()]; }
  std::uint64_t& order_version_of(std::uint64_t hash) {
    return order_version[(hash >> 40) % order.size()];
  }

  write_policy policy_of(const set_options& o) const { return o.policy.value_or(options.writes); }

  // What a byte-layer read must see of this process's own writes that have not landed yet.
  // A fence kind raises *fence to the version below which a layer's copy is not served.
  detail::write_behind::pending_kind pending(std::string_view key, std::uint64_t hash,
                                             std::shared_ptr<const std::string>* own,
                                             std::uint64_t* fence = nullptr) const {
    if (!writer) return detail::write_behind::pending_kind::none;
    std::uint64_t f = 0;
    const auto kind = writer->pending(key, hash, own, &f);
    if (fence != nullptr && kind == detail::write_behind::pending_kind::fence) {
      *fence = std::max(*fence, f);
    }
    return kind;
  }

  // Queues the envelope of an entry for byte layers [0, upto). `stored_bytes` (an envelope read
  // from a lower layer) is reused as is; otherwise the value is encoded once per distinct
  // compression policy.
  // The op submit_set() queues (encoding happens here, outside any lock of the caller's).
  detail::write_op make_set_op(std::string_view key, std::uint64_t hash,
                               const detail::type_ops& ops,
                               const std::shared_ptr<const void>& value, bool negative,
                               unix_ms fresh_until, std::size_t upto,
                               const std::string* stored_bytes, unix_ms now,
                               std::shared_ptr<detail::write_ticket> ticket, std::uint64_t version,
                               std::span<const std::string> tag_list);

  // One set's L1 insert and byte-layer op, made together under the key's order stripe (encoding
  // stays outside it). Returns the op's ticket when `strict`, else null.
  std::shared_ptr<detail::write_ticket> apply_set(std::string_view key, std::uint64_t hash,
                                                  const detail::type_ops& ops,
                                                  const std::shared_ptr<const void>& value,
                                                  unix_ms fresh_until, unix_ms now, bool strict,
                                                  std::span<const std::string> tag_list);

  // L1 keeps an entry only briefly while the bus is down: it would not hear of other instances'
  // changes (docs/design.md, "When the bus is down").
  unix_ms l1_expiry(unix_ms fresh_until, unix_ms now) const {
    if (coord == nullptr || coord->bus_up()) return fresh_until;
    return std::min(fresh_until, now + coord->bus_down_l1_ttl().count());
  }

  void index_tags(std::string_view key, std::span<const std::string> tag_list) {
    if (tag_list.empty()) return;
    tags.add(key, tag_list,
             [this](const std::string& k) { return l1->contains(k, detail::hash_key(k)); });
  }

  // Queues a delete in `room` (reserved before any stripe was taken). `conditional`: it removes
  // only what is not newer than `version` (a fill's compensation, a fence).
  void submit_del(std::string_view key, std::uint64_t hash, std::size_t upto,
                  std::shared_ptr<detail::write_ticket> ticket, std::uint64_t version,
                  detail::write_behind::slot room, bool local_only = false,
                  bool conditional = false);

  // One delete's L1 erase and byte-layer op, made together under the key's order stripe (the twin
  // of apply_set). `local_only` skips the coordinating layer (another instance's change, or one its
  // script already made); with no layer left to write, only L1 changes. Returns the op's ticket
  // when `strict`, else null. Marking an in-flight fetch stale is the caller's business. `version`
  // 0 means this instance's own delete: its version is taken under the stripe (see order_version);
  // another version makes it a fence, conditional on what is stored not being newer.
  std::shared_ptr<detail::write_ticket> apply_del(std::string_view key, std::uint64_t hash,
                                                  std::uint64_t version, bool strict = false,
                                                  bool local_only = false);

  // Drops this instance's copies of `key` (L1, and the byte layers only this instance uses), for a
  // change another instance announced; the shared layer already has it.
  void drop_local(std::string_view key);

  // Another instance invalidated a group of keys (tag, prefix, clear) with `version`, and its
  // script removed what Redis held then. Our own writes of matching keys still queued would land
  // after it and bring keys back: follow each with a delete of that version. Versions decide in
  // Redis, so a write of ours newer than the invalidation survives (the delete is refused there).
  void fence_pending(std::uint64_t version, const std::function<bool(std::string_view)>& match);

  // Removes the keys starting with `prefix` from byte layer `b` (scan, then batched deletes).
  status erase_prefix_in(byte_layer& b, std::string_view prefix);

  // ---- namespaces --------------------------------------------------------------------------
  std::uint64_t placeholder_generation();
  // How often a namespace on a placeholder generation asks Redis for the real one.
  static constexpr std::chrono::milliseconds placeholder_retry{100};

  void reload_generations();

  // Moves `node` to generation `g` (never backwards, except away from a placeholder) and drops
  // the L1 entries of the generation it leaves.
  // `carry_writes`: our queued writes under the old generation are reported under the new one
  // until they land (another instance rotated; not for our own rotation).
  void move_generation(detail::ns_node& node, std::uint64_t g, bool from_redis,
                       bool carry_writes = true);

  void emit(event_type type, std::string_view layer, std::string_view key, const status& detail) {
    if (!options.on_event) return;
    try {
      options.on_event(event{type, layer, key, detail});
    } catch (...) {
      // The callback must not throw (events.hpp); the operation that raised the event goes on.
    }
  }

  void validate_key(std::string_view key) const {
    if (key.empty() || key.size() > options.max_key_bytes) [[unlikely]] {
      throw_bad_key(key.size());
    }
  }

  // Keys under the coordinating layer's internal marker would collide with its leases, tag sets
  // and counters. Checked off the L1-hit path (a reserved key never gets into L1).
  void check_reserved(std::string_view key) const {
    if (coord != nullptr && key.substr(0, 5) == "__lc:") [[unlikely]] {
      throw invalid_argument_error(
          "layercache: keys starting with '__lc:' are reserved for the "
          "coordination state of the Redis layer");
    }
  }

  [[noreturn]] [[gnu::cold]] void throw_bad_key(std::size_t size) const {
    if (size == 0) throw invalid_argument_error("layercache: key must not be empty");
    throw invalid_argument_error("layercache: key of " + std::to_string(size) +
                                 " bytes exceeds max_key_bytes (" +
                                 std::to_string(options.max_key_bytes) + ")");
  }

  unix_ms expiry_in(const layer_info& info, unix_ms fresh_until, unix_ms now) const {
    if (info.max_ttl.count() > 0) return std::min(fresh_until, now + info.max_ttl.count());
    return fresh_until;
  }

  // Reads `key` from byte layer i. Returns the entry when live and decodable; anything else is a
  // miss (counted and reported): bytes that are no valid envelope are deleted (corruption), a
  // valid envelope of another type or schema is left for the fetched value to overwrite.
  std::optional<found_entry> take(std::size_t i, std::string_view key, byte_read&& r,
                                  const detail::type_ops& ops, unix_ms now);

  // Reads byte layer i; raises `fence` to a delete the layer remembers, and drops (and deletes) a
  // copy not newer than `fence`.
  std::optional<found_entry> read(std::size_t i, std::string_view key, const detail::type_ops& ops,
                                  std::uint64_t& fence);
  // Whether a copy of `key` with `version` in byte layer i is older than a delete (`fence`) a
  // layer above remembers; if so, deletes it there.
  bool fenced(std::size_t i, std::string_view key, std::uint64_t version, std::uint64_t fence);

  // Looks for `key` below L1: first among this process's queued writes (read-your-writes), then in
  // each byte layer in order. `found_at` is the index of the layer that answered (0 for a queued
  // write: nothing above it needs a backfill but L1).
  std::optional<found_entry> find_below(std::string_view key, std::uint64_t hash,
                                        const detail::type_ops& ops, std::size_t& found_at,
                                        lease_state* lease = nullptr,
                                        const get_options* call = nullptr);

  // Round trip 1 of a cold miss at the coordinating layer i (docs/design.md, "Distributed
  // single-flight"): the value, or a lease (then the caller reads lower layers and fetches), or
  // another instance's lease — then wait to be woken, and ask again. Redis trouble degrades to
  // process-local single-flight (no lease).
  std::optional<found_entry> acquire(std::size_t i, std::string_view key,
                                     const detail::type_ops& ops, lease_state& lease,
                                     const get_options& call);

  void give_back(std::string_view key, lease_state& lease) {
    if (lease.token.empty() || coord == nullptr) return;
    coord->release(key, lease.token);
    lease.token.clear();
  }

  // Queues an entry for byte layers [0, upto) and, unless the flight was invalidated meanwhile,
  // stores it in L1. The caller returns as soon as L1 holds it; the byte layers are written in the
  // background, in order with every other write of the key.
  void store(flight* f, std::string_view key, std::uint64_t hash, const detail::type_ops& ops,
             const std::shared_ptr<const void>& value, bool negative, unix_ms fresh_until,
             std::size_t upto, const std::string* stored_bytes, unix_ms now,
             const fill_info& fill = {});

  std::string encode(const detail::type_ops& ops, const std::shared_ptr<const void>& value,
                     bool negative, unix_ms fresh_until, unix_ms now,
                     const detail::compression_policy& policy, std::uint64_t version,
                     std::span<const std::string> tag_list) const;

  std::shared_ptr<const void> wait(flight& f, std::chrono::milliseconds deadline, bool& absent);

  std::chrono::milliseconds wait_deadline(const get_options& o) const {
    return o.wait_deadline ? *o.wait_deadline : options.wait_deadline;
  }

  // Applies other instances' announcements to this instance (stack_bus.cpp).
  struct bus_sink;
  std::unique_ptr<detail::bus_listener> make_bus_sink();
};

}  // namespace layercache
