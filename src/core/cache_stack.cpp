// cache_stack.cpp — the type-erased core of cache_stack.
//
// Concurrency: no lock of this file is held across a fetcher call or a layer call, except the
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
#include "layercache/cache_stack.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <unordered_map>

#include "core/coordinator.hpp"
#include "core/histogram.hpp"
#include "core/single_flight.hpp"
#include "core/tag_index.hpp"
#include "core/version_clock.hpp"
#include "core/write_behind.hpp"
#include "layercache/cache_namespace.hpp"
#include "layercache/detail/envelope.hpp"
#include "layercache/detail/hash.hpp"

namespace layercache {

namespace {

using detail::flight;
using steady = std::chrono::steady_clock;

struct byte_layer_stats {
  std::atomic<std::uint64_t> hits{0}, misses{0}, errors{0}, writes{0}, expirations{0};
  detail::latency_histogram latency;
};

std::uint64_t elapsed_ns(steady::time_point start) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now() - start).count());
}

detail::compression_policy policy_for(const layer_info& info) {
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

constexpr std::size_t no_layer = static_cast<std::size_t>(-1);
constexpr std::uint64_t unknown_generation = std::uint64_t{1} << 63;

std::uint64_t version_of(std::string_view envelope) {
  detail::envelope_header h;
  return detail::peek_envelope_header(envelope, h).ok() ? h.version : 0;
}

// Adds the failures of `s` to `result`, each layer once: a batch whose keys failed in the same
// layer reports that layer once (status::failures lists layers, not keys).
void update_per_layer(status& result, const status& s) {
  for (const layer_failure& f : s.failures()) {
    bool listed = false;
    for (const layer_failure& g : result.failures()) listed = listed || g.layer == f.layer;
    if (!listed) result.update(status::layer_error(f.layer, f.code, f.message));
  }
  if (!s.ok() && s.failures().empty()) result.update(s);
}

[[noreturn]] void throw_type_mismatch(std::string_view key, const char* held, const char* wanted) {
  throw type_mismatch_error("layercache: key '" + std::string(key) + "' holds a value of type " +
                            held + ", read as " + wanted);
}

}  // namespace

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
  // Held across writer->submit(), which may block on backpressure; nothing else takes it.
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
  detail::write_behind::pending_kind pending(std::string_view key, std::uint64_t hash,
                                             std::shared_ptr<const std::string>* own) const {
    if (!writer) return detail::write_behind::pending_kind::none;
    return writer->pending(key, hash, own);
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
                               std::span<const std::string> tag_list) {
    detail::write_op op;
    op.type = detail::write_op::kind::set;
    op.key.assign(key);
    op.hash = hash;
    op.upto = upto;
    op.bytes.resize(upto);
    op.expires.resize(upto);
    std::shared_ptr<const std::string> shared_stored =
        stored_bytes != nullptr ? std::make_shared<const std::string>(*stored_bytes) : nullptr;
    for (std::size_t j = 0; j < upto; ++j) {
      op.expires[j] = expiry_in(bytes[j]->info(), fresh_until, now);
      if (shared_stored) {
        op.bytes[j] = shared_stored;
        continue;
      }
      for (std::size_t k = 0; k < j; ++k) {
        if (compress[k].algorithm == compress[j].algorithm &&
            compress[k].min_bytes == compress[j].min_bytes) {
          op.bytes[j] = op.bytes[k];
          break;
        }
      }
      if (!op.bytes[j]) {
        op.bytes[j] = std::make_shared<const std::string>(
            encode(ops, value, negative, fresh_until, now, compress[j], version, tag_list));
      }
    }
    op.ticket = std::move(ticket);
    op.tags.assign(tag_list.begin(), tag_list.end());
    return op;
  }

  // One set's L1 insert and byte-layer op, made together under the key's order stripe (encoding
  // stays outside it). Returns the op's ticket when `strict`, else null.
  std::shared_ptr<detail::write_ticket> apply_set(std::string_view key, std::uint64_t hash,
                                                  const detail::type_ops& ops,
                                                  const std::shared_ptr<const void>& value,
                                                  unix_ms fresh_until, unix_ms now, bool strict,
                                                  std::span<const std::string> tag_list) {
    if (l1 != nullptr) index_tags(key, tag_list);
    if (bytes.empty()) {
      if (l1 != nullptr) {
        l1->insert(key, hash, value, &ops, false, l1_expiry(fresh_until, now),
                   ops.weigh(value.get()));
      }
      return nullptr;
    }
    auto ticket = strict ? std::make_shared<detail::write_ticket>() : nullptr;
    std::uint64_t version = versions.next(now);
    detail::write_op op = make_set_op(key, hash, ops, value, false, fresh_until, bytes.size(),
                                      nullptr, now, ticket, version, tag_list);
    std::lock_guard stripe(order_of(hash));
    std::uint64_t& newest = order_version_of(hash);
    if (version <= newest) {
      // A mutation that took a later version reached the stripe first: ours is applied after it,
      // so it needs a later version too. Rare (a race on the stripe); the encoding is redone here.
      version = versions.next(now);
      op = make_set_op(key, hash, ops, value, false, fresh_until, bytes.size(), nullptr, now,
                       ticket, version, tag_list);
    }
    newest = version;
    if (l1 != nullptr) {
      l1->insert(key, hash, value, &ops, false, l1_expiry(fresh_until, now),
                 ops.weigh(value.get()));
    }
    writer->submit(std::move(op));
    return ticket;
  }

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

  void submit_del(std::string_view key, std::uint64_t hash, std::size_t upto,
                  std::shared_ptr<detail::write_ticket> ticket, std::uint64_t version,
                  bool local_only = false) {
    detail::write_op op;
    op.type = detail::write_op::kind::del;
    op.key.assign(key);
    op.hash = hash;
    op.upto = upto;
    op.ticket = std::move(ticket);
    op.version = version;
    op.local_only = local_only;
    writer->submit(std::move(op));
  }

  // One delete's L1 erase and byte-layer op, made together under the key's order stripe (the twin
  // of apply_set). `local_only` skips the coordinating layer (another instance's change, or one its
  // script already made); with no layer left to write, only L1 changes. Returns the op's ticket
  // when `strict`, else null. Marking an in-flight fetch stale is the caller's business. `version`
  // 0 means this instance's own delete: its version is taken under the stripe (see order_version).
  std::shared_ptr<detail::write_ticket> apply_del(std::string_view key, std::uint64_t hash,
                                                  std::uint64_t version, bool strict = false,
                                                  bool local_only = false) {
    if (bytes.empty() || (local_only && !local_byte_layers)) {
      if (l1 != nullptr) l1->erase(key, hash, removal_cause::invalidated);
      return nullptr;
    }
    auto ticket = strict ? std::make_shared<detail::write_ticket>() : nullptr;
    std::lock_guard stripe(order_of(hash));
    std::uint64_t& newest = order_version_of(hash);
    if (version == 0) version = versions.next(clock->now_ms());
    newest = std::max(newest, version);
    if (l1 != nullptr) l1->erase(key, hash, removal_cause::invalidated);
    submit_del(key, hash, bytes.size(), ticket, version, local_only);
    return ticket;
  }

  // Drops this instance's copies of `key` (L1, and the byte layers only this instance uses), for a
  // change another instance announced; the shared layer already has it.
  void drop_local(std::string_view key) {
    const std::uint64_t hash = detail::hash_key(key);
    flights.invalidate(key, hash);
    (void)apply_del(key, hash, 0, false, /*local_only=*/true);
  }

  // Another instance invalidated a group of keys (tag, prefix, clear) with `version`, and its
  // script removed what Redis held then. Our own writes of matching keys still queued would land
  // after it and bring keys back: follow each with a delete of that version. Versions decide in
  // Redis, so a write of ours newer than the invalidation survives (the delete is refused there).
  void fence_pending(std::uint64_t version, const std::function<bool(std::string_view)>& match) {
    if (!writer || version == 0) return;
    versions.observe(version);
    for (const auto& key : writer->pending_keys(match)) {
      (void)apply_del(key, detail::hash_key(key), version);
    }
  }

  // Removes the keys starting with `prefix` from byte layer `b` (scan, then batched deletes).
  status erase_prefix_in(byte_layer& b, std::string_view prefix) {
    std::vector<std::string> doomed;
    status s = b.scan([&](std::string_view key, std::string_view) {
      if (key.substr(0, prefix.size()) == prefix) doomed.emplace_back(key);
      return true;
    });
    if (!s.ok()) return detail::attribute_to(b, s);
    for (std::size_t i = 0; i < doomed.size(); i += 512) {
      const std::size_t n = std::min<std::size_t>(512, doomed.size() - i);
      status d = b.del_many(std::span<const std::string>(doomed.data() + i, n));
      if (!d.ok()) return detail::attribute_to(b, d);
    }
    return {};
  }

  // ---- namespaces --------------------------------------------------------------------------
  std::uint64_t placeholder_generation() {
    // Redis could not say: a generation nobody else uses, so nothing stale is served meanwhile
    // (only misses); replaced by the real one when the bus comes back (reload_generations).
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    return unknown_generation | (rng() >> 1);
  }

  void reload_generations() {
    if (coord == nullptr) return;
    std::vector<std::shared_ptr<detail::ns_node>> nodes;
    {
      std::lock_guard lock(ns_mu);
      for (auto& [path, node] : namespaces) nodes.push_back(node);
    }
    for (auto& node : nodes) {
      status error;
      if (auto g = coord->generation(node->path, error)) move_generation(*node, *g, true);
    }
  }

  // Moves `node` to generation `g` (never backwards, except away from a placeholder) and drops
  // the L1 entries of the generation it leaves.
  void move_generation(detail::ns_node& node, std::uint64_t g, bool from_redis) {
    std::uint64_t old = node.generation->load(std::memory_order_acquire);
    for (;;) {
      const bool placeholder = (old & unknown_generation) != 0;
      if (old == g || (!placeholder && g < old) || (placeholder && !from_redis)) return;
      if (node.generation->compare_exchange_weak(old, g, std::memory_order_acq_rel)) break;
    }
    if (l1 == nullptr) return;
    std::string prefix;
    if (node.parent) node.parent->append_prefix(prefix);
    prefix.append("@ns:").append(node.name).push_back('#');
    prefix.append(std::to_string(old)).push_back(':');
    l1->erase_prefix(prefix);
  }

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
  // miss (counted and reported). Throws type_mismatch_error when the entry holds another type.
  std::optional<found_entry> take(std::size_t i, std::string_view key, byte_read&& r,
                                  const detail::type_ops& ops, unix_ms now) {
    byte_layer_stats& st = stats[i];
    const std::string& name = bytes[i]->info().name;
    if (!r.error.ok()) {
      st.errors.fetch_add(1, std::memory_order_relaxed);
      st.misses.fetch_add(1, std::memory_order_relaxed);
      emit(event_type::layer_error, name, key, r.error);
      return std::nullopt;
    }
    if (!r.bytes) {
      st.misses.fetch_add(1, std::memory_order_relaxed);
      return std::nullopt;
    }
    detail::decoded_envelope env;
    status decoded = detail::decode_envelope(*r.bytes, env);
    std::shared_ptr<const void> value;
    if (decoded.ok() && env.header.fresh_until_ms <= now) {
      st.expirations.fetch_add(1, std::memory_order_relaxed);
      st.misses.fetch_add(1, std::memory_order_relaxed);
      return std::nullopt;
    }
    // The type check comes before the codec check: a value of another type usually has another
    // codec too, and it is misuse to report, not corruption to delete.
    if (decoded.ok() && env.header.type_fingerprint != 0 &&
        env.header.type_fingerprint != ops.fingerprint) {
      throw type_mismatch_error("layercache: key '" + std::string(key) + "' in layer " + name +
                                " holds a value of another type than " + ops.name);
    }
    if (decoded.ok() && env.header.codec != ops.codec && !env.header.negative) {
      decoded = status(errc::corruption, "envelope codec does not match the codec of the type");
    }
    if (decoded.ok() && !env.header.negative) {
      try {
        value = ops.decode(env.payload);
      } catch (const std::exception& e) {
        decoded = status(errc::corruption, std::string("payload does not decode: ") + e.what());
      } catch (...) {
        decoded = status(errc::corruption, "payload does not decode");
      }
    }
    if (!decoded.ok()) {
      st.errors.fetch_add(1, std::memory_order_relaxed);
      st.misses.fetch_add(1, std::memory_order_relaxed);
      emit(event_type::corruption, name, key,
           status::layer_error(name, decoded.code(), decoded.message()));
      // Corrupt bytes would fail the same way for every reader: remove them.
      (void)bytes[i]->del(key);
      return std::nullopt;
    }
    st.hits.fetch_add(1, std::memory_order_relaxed);
    if (env.header.negative) negative_hits.fetch_add(1, std::memory_order_relaxed);
    versions.observe(env.header.version);
    return found_entry{std::move(value),    env.header.negative, env.header.fresh_until_ms,
                       std::move(*r.bytes), std::move(env.tags), env.header.version};
  }

  std::optional<found_entry> read(std::size_t i, std::string_view key,
                                  const detail::type_ops& ops) {
    const auto start = steady::now();
    byte_read r = bytes[i]->get(key);
    stats[i].latency.record(elapsed_ns(start));
    return take(i, key, std::move(r), ops, clock->now_ms());
  }

  // Looks for `key` below L1: first among this process's queued writes (read-your-writes), then in
  // each byte layer in order. `found_at` is the index of the layer that answered (0 for a queued
  // write: nothing above it needs a backfill but L1).
  std::optional<found_entry> find_below(std::string_view key, std::uint64_t hash,
                                        const detail::type_ops& ops, std::size_t& found_at,
                                        lease_state* lease = nullptr,
                                        const get_options* call = nullptr) {
    std::shared_ptr<const std::string> own;
    switch (pending(key, hash, &own)) {
      case detail::write_behind::pending_kind::del:
        return std::nullopt;
      case detail::write_behind::pending_kind::set:
        found_at = 0;
        return take(0, key, byte_read{status(), std::string(*own)}, ops, clock->now_ms());
      case detail::write_behind::pending_kind::none:
        break;
    }
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      if (i == coord_at && lease != nullptr) {
        if (auto e = acquire(i, key, ops, *lease, *call)) {
          found_at = i;
          return e;
        }
        continue;
      }
      if (auto e = read(i, key, ops)) {
        if (lease != nullptr && i > coord_at && e->version < lease->tombstone) {
          (void)bytes[i]->del(key);  // deleted elsewhere after this copy was written
          continue;
        }
        found_at = i;
        return e;
      }
    }
    return std::nullopt;
  }

  // Round trip 1 of a cold miss at the coordinating layer i (docs/design.md, "Distributed
  // single-flight"): the value, or a lease (then the caller reads lower layers and fetches), or
  // another instance's lease — then wait to be woken, and ask again. Redis trouble degrades to
  // process-local single-flight (no lease).
  std::optional<found_entry> acquire(std::size_t i, std::string_view key,
                                     const detail::type_ops& ops, lease_state& lease,
                                     const get_options& call) {
    byte_layer_stats& st = stats[i];
    const auto start = steady::now();
    const auto take_over_at = start + coord->lease_wait();
    const auto deadline = wait_deadline(call);
    const auto give_up_at = deadline.count() > 0 ? start + deadline : steady::time_point::max();
    bool force = false, waited = false, retried = false;
    for (;;) {
      const auto t0 = steady::now();
      detail::lease_answer a = coord->acquire(key, force);
      st.latency.record(elapsed_ns(t0));
      switch (a.type) {
        case detail::lease_answer::kind::value: {
          if (auto e =
                  take(i, key, byte_read{status(), std::move(a.bytes)}, ops, clock->now_ms())) {
            return e;
          }
          // Expired (a clock ahead of Redis's) or corrupt (take() removed it): ask once more,
          // then fetch without a lease rather than loop.
          if (retried) return std::nullopt;
          retried = true;
          continue;
        }
        case detail::lease_answer::kind::granted:
          if (!retried)
            st.misses.fetch_add(1, std::memory_order_relaxed);  // else counted by take()
          lease_grants.fetch_add(1, std::memory_order_relaxed);
          lease.token = std::move(a.token);
          lease.tombstone = a.tombstone;
          return std::nullopt;
        case detail::lease_answer::kind::held: {
          if (!waited) {
            waited = true;
            lease_waits.fetch_add(1, std::memory_order_relaxed);
          }
          const auto now = steady::now();
          if (now >= give_up_at || now >= take_over_at) coord->stop_waiting(key);
          if (now >= give_up_at) {
            wait_timeouts.fetch_add(1, std::memory_order_relaxed);
            status s(errc::timeout, "waited " + std::to_string(deadline.count()) +
                                        " ms for another instance's fetch");
            emit(event_type::wait_timeout, bytes[i]->info().name, key, s);
            throw wait_timeout_error("layercache: waited " + std::to_string(deadline.count()) +
                                     " ms for another instance's fetch of '" + std::string(key) +
                                     "'");
          }
          if (now >= take_over_at) {
            if (!force) lease_takeovers.fetch_add(1, std::memory_order_relaxed);
            force = true;
            continue;
          }
          coord->await_fill(key, a.wakeups, std::min(take_over_at, give_up_at));
          continue;
        }
        case detail::lease_answer::kind::failed:
          st.errors.fetch_add(1, std::memory_order_relaxed);
          st.misses.fetch_add(1, std::memory_order_relaxed);
          coordination_fallbacks.fetch_add(1, std::memory_order_relaxed);
          emit(event_type::layer_error, bytes[i]->info().name, key, a.error);
          emit(event_type::coordination_degraded, bytes[i]->info().name, key,
               status::layer_error(bytes[i]->info().name, a.error.code(),
                                   "single-flight within this process only: " + a.error.message()));
          return std::nullopt;
      }
    }
  }

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
             const fill_info& fill = {}) {
    // A flight invalidated before we queue anything queues nothing: its compensating delete below
    // would also remove what an invalidating set() queued for the byte layers.
    const bool stale_already = f != nullptr && flights.invalidated(*f);
    const std::uint64_t version =
        stored_bytes != nullptr ? version_of(*stored_bytes) : fill.version;
    const bool queue = upto > 0 && !stale_already;
    if (queue) {
      detail::write_op op = make_set_op(key, hash, ops, value, negative, fresh_until, upto,
                                        stored_bytes, now, nullptr, version, fill.tags);
      op.fill = true;
      op.lease.assign(fill.lease);
      writer->submit(std::move(op));
    } else if (!fill.lease.empty() && coord != nullptr) {
      coord->release(key, fill.lease);
    }
    const unix_ms l1_until = l1_expiry(fresh_until, now);
    auto insert_l1 = [&] {
      if (l1 != nullptr) {
        l1->insert(key, hash, value, &ops, negative, l1_until, value ? ops.weigh(value.get()) : 0);
      }
    };
    if (f == nullptr) {
      insert_l1();
      if (l1 != nullptr) index_tags(key, fill.tags);
      return;
    }
    if (!flights.publish(*f, insert_l1)) {
      stale_fills.fetch_add(1, std::memory_order_relaxed);
      emit(event_type::stale_fill, "", key,
           status(errc::ok, "fetched value not stored: invalidated during the fetch"));
      // Queued after our write, so it undoes it in the byte layers. It carries the fill's own
      // version: in Redis it removes our fill, never the newer value that invalidated it.
      if (queue) submit_del(key, hash, upto, nullptr, version);
    } else if (l1 != nullptr) {
      index_tags(key, fill.tags);
    }
  }

  std::string encode(const detail::type_ops& ops, const std::shared_ptr<const void>& value,
                     bool negative, unix_ms fresh_until, unix_ms now,
                     const detail::compression_policy& policy, std::uint64_t version,
                     std::span<const std::string> tag_list) const {
    detail::envelope_header h;
    h.fresh_until_ms = fresh_until;
    h.stale_until_ms = fresh_until;
    h.error_until_ms = fresh_until;
    h.created_ms = now;
    h.type_fingerprint = ops.fingerprint;
    h.codec = ops.codec;
    h.negative = negative;
    h.version = version;
    std::string payload;
    if (!negative) ops.encode(value.get(), payload);
    return detail::encode_envelope(h, tag_list, payload, policy);
  }

  std::shared_ptr<const void> wait(flight& f, std::chrono::milliseconds deadline, bool& absent) {
    std::unique_lock lock(f.mu);
    if (deadline.count() > 0) {
      if (!f.cv.wait_for(lock, deadline, [&] { return f.done; })) {
        lock.unlock();
        wait_timeouts.fetch_add(1, std::memory_order_relaxed);
        status s(errc::timeout,
                 "waited " + std::to_string(deadline.count()) + " ms for another caller's fetch");
        emit(event_type::wait_timeout, "", f.key, s);
        throw wait_timeout_error("layercache: waited " + std::to_string(deadline.count()) +
                                 " ms for another caller's fetch of '" + f.key + "'");
      }
    } else {
      f.cv.wait(lock, [&] { return f.done; });
    }
    if (f.error) std::rethrow_exception(f.error);
    absent = f.absent;
    return f.value;
  }

  std::chrono::milliseconds wait_deadline(const get_options& o) const {
    return o.wait_deadline ? *o.wait_deadline : options.wait_deadline;
  }

  // ---- the invalidation bus: what other instances changed ------------------------------------
  // Runs on the coordinator's bus thread. Everything here only drops local copies; the shared
  // layer already holds the change.
  struct bus_sink final : detail::bus_listener {
    explicit bus_sink(impl& owner) : m(owner) {}
    impl& m;

    void on_keys(std::span<const std::string> keys) override {
      m.bus_received.fetch_add(1, std::memory_order_relaxed);
      for (const auto& k : keys) m.drop_local(k);
    }
    void on_tags(std::span<const std::string> tag_list, bool all, std::span<const std::string> keys,
                 std::uint64_t version) override {
      m.bus_received.fetch_add(1, std::memory_order_relaxed);
      std::vector<std::string> ours = m.tags.take(tag_list, all);
      for (const auto& k : keys) m.drop_local(k);
      for (const auto& k : ours) m.drop_local(k);
      // A tagged write of ours still queued was not in the shared tag set the invalidation read.
      m.fence_pending(version, [&](std::string_view k) {
        return std::find(ours.begin(), ours.end(), k) != ours.end();
      });
    }
    void on_prefix(std::string_view prefix, std::uint64_t version) override {
      m.bus_received.fetch_add(1, std::memory_order_relaxed);
      m.flights.invalidate_all();
      if (m.l1 != nullptr) m.l1->erase_prefix(prefix);
      for (std::size_t i = 0; i < m.bytes.size(); ++i) {
        if (i != m.coord_at) (void)m.erase_prefix_in(*m.bytes[i], prefix);
      }
      m.fence_pending(version,
                      [&](std::string_view k) { return k.substr(0, prefix.size()) == prefix; });
    }
    void on_clear(std::uint64_t version) override {
      m.bus_received.fetch_add(1, std::memory_order_relaxed);
      m.flights.invalidate_all();
      m.tags.clear();
      if (m.l1 != nullptr) (void)m.l1->clear();
      for (std::size_t i = 0; i < m.bytes.size(); ++i) {
        if (i != m.coord_at) (void)m.bytes[i]->clear();
      }
      m.fence_pending(version, [](std::string_view) { return true; });
    }
    void on_rotate(std::string_view path, std::uint64_t generation) override {
      m.bus_received.fetch_add(1, std::memory_order_relaxed);
      std::shared_ptr<detail::ns_node> node;
      {
        std::lock_guard lock(m.ns_mu);
        auto it = m.namespaces.find(std::string(path));
        if (it == m.namespaces.end()) return;  // never used here: nothing to drop
        node = it->second;
      }
      m.move_generation(*node, generation, true);
    }
    void on_lost(std::string_view why) override {
      // Which keys were changed meanwhile is unknown: drop all of L1 (the shared layer is the
      // truth) and re-read the namespace generations. The disk layer is kept: its entries are
      // versioned against Redis's tombstones (docs/design.md, "When the bus is down").
      m.bus_resyncs.fetch_add(1, std::memory_order_relaxed);
      m.flights.invalidate_all();
      m.tags.clear();
      if (m.l1 != nullptr) (void)m.l1->clear();
      m.emit(event_type::bus_resync, m.bytes[m.coord_at]->info().name, "",
             status(errc::unavailable, std::string(why) + ": L1 dropped"));
      m.reload_generations();
    }
  };
};

cache_stack::cache_stack(std::vector<std::shared_ptr<layer>> layers, stack_options options)
    : impl_(std::make_unique<impl>()) {
  options.validate();
  if (layers.empty()) throw invalid_argument_error("cache_stack: at least one layer is required");
  impl& m = *impl_;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i])
      throw invalid_argument_error("cache_stack: layer " + std::to_string(i) + " is null");
    const layer_info& info = layers[i]->info();
    if (info.kind == layer_kind::objects) {
      auto* mem = dynamic_cast<memory_layer*>(layers[i].get());
      if (i != 0 || mem == nullptr) {
        throw invalid_argument_error("cache_stack: a memory layer may only be the first layer");
      }
      m.l1 = mem;
    } else {
      auto* b = dynamic_cast<byte_layer*>(layers[i].get());
      if (b == nullptr) {
        throw invalid_argument_error("cache_stack: layer '" + info.name +
                                     "' says it stores bytes but is not a byte_layer");
      }
      m.bytes.push_back(b);
      m.compress.push_back(policy_for(info));
    }
  }
  m.stats = std::make_unique<byte_layer_stats[]>(m.bytes.size());
  for (std::size_t i = 0; i < m.bytes.size() && m.coord == nullptr; ++i) {
    if (auto* c = m.bytes[i]->coordination()) {
      m.coord = c;
      m.coord_at = i;
    }
  }
  m.local_byte_layers = m.bytes.size() > (m.coord != nullptr ? 1U : 0U);
  m.layers = std::move(layers);
  for (auto& l : m.layers) {
    impl* self = &m;
    const std::string name = l->info().name;
    l->attach([self, name](event_type type, std::string_view key, const status& detail) {
      self->emit(type, name, key, detail);
    });
  }
  m.options = std::move(options);
  m.clock = m.options.clock ? m.options.clock : default_clock();
  l1_ = m.l1;
  if (!m.bytes.empty()) {
    impl* self = &m;
    m.writer = std::make_unique<detail::write_behind>(
        m.bytes,
        detail::write_behind::options{.threads = m.options.write_threads,
                                      .max_pending = m.options.max_pending_writes,
                                      .batch = 256,
                                      .flush_timeout = m.options.shutdown_flush_timeout,
                                      .coord = m.coord,
                                      .coord_at = m.coord_at},
        [self](std::size_t j, std::string_view key, const status& s) {
          self->stats[j].errors.fetch_add(1, std::memory_order_relaxed);
          self->emit(event_type::layer_error, self->bytes[j]->info().name, key, s);
        },
        [self](std::size_t j, std::size_t n) {
          self->stats[j].writes.fetch_add(n, std::memory_order_relaxed);
        },
        [self](std::string_view key, std::uint64_t hash) {
          // Redis holds a newer version than the write we made: our L1 copy is the older one.
          self->cas_rejections.fetch_add(1, std::memory_order_relaxed);
          self->flights.invalidate(key, hash);
          if (self->l1 != nullptr) self->l1->erase(key, hash, removal_cause::invalidated);
        });
  }
  if (m.coord != nullptr) {
    m.bus = std::make_unique<impl::bus_sink>(m);
    m.coord->listen(m.bus.get());
  }
}

cache_stack::~cache_stack() {
  if (impl_->coord != nullptr) impl_->coord->unlisten(impl_->bus.get());  // no callback after it
  impl_->writer.reset();  // flush queued writes (bounded) while layers and sinks are valid
  for (auto& l : impl_->layers) l->attach({});  // layers may outlive the stack
}

const std::vector<std::shared_ptr<layer>>& cache_stack::layers() const noexcept {
  return impl_->layers;
}
const stack_options& cache_stack::options() const noexcept { return impl_->options; }

bool cache_stack::l1_lookup(std::string_view key, const detail::type_ops& ops,
                            const get_options& options, std::uint64_t& hash,
                            memory_layer::hit& hit) {
  impl_->validate_key(key);
  options.validate();
  hash = detail::hash_key(key);
  if (l1_ == nullptr || !l1_->find(key, hash, hit)) return false;
  if (!detail::same_type(hit.ops, &ops)) throw_type_mismatch(key, hit.ops->name, ops.name);
  if (hit.negative) impl_->negative_hits.fetch_add(1, std::memory_order_relaxed);
  return true;
}

std::shared_ptr<const void> cache_stack::get_slow(std::string_view key, std::uint64_t hash,
                                                  const detail::type_ops& ops, fetch_fn fetch,
                                                  const get_options& options) {
  impl& m = *impl_;
  for (;;) {
    auto [f, leader] = m.flights.join(key, hash, &ops);
    if (!leader) {
      if (f->leader == std::this_thread::get_id()) {
        throw invalid_argument_error("layercache: the fetcher for '" + std::string(key) +
                                     "' called get for the same key (it would wait for itself)");
      }
      if (!detail::same_type(f->ops, &ops)) throw_type_mismatch(key, f->ops->name, ops.name);
      m.dedupes.fetch_add(1, std::memory_order_relaxed);
      bool absent = false;
      auto value = m.wait(*f, m.wait_deadline(options), absent);
      if (!absent) return value;
      continue;  // the leader only looked; fetch ourselves
    }

    flight& fl = *f;
    lease_state lease;
    try {
      // The value may have landed between our L1 miss and join(): look again before fetching, or
      // a caller descheduled in that window would fetch a second time.
      memory_layer::hit hit;
      if (l1_ != nullptr && l1_->find(key, hash, hit, /*record=*/false)) {
        if (!detail::same_type(hit.ops, &ops)) throw_type_mismatch(key, hit.ops->name, ops.name);
        m.flights.abandon(fl);
        detail::flight_table::complete(fl, hit.value, hit.negative, nullptr);
        return hit.value;
      }
      m.check_reserved(key);
      // A fetched value is as old as the moment the miss began: a delete issued after it has a
      // newer version and wins in Redis, whenever the fill lands.
      const std::uint64_t version = m.versions.next(m.clock->now_ms());
      std::size_t at = 0;
      if (auto e = m.find_below(key, hash, ops, at, &lease, &options)) {
        m.store(&fl, key, hash, ops, e->value, e->negative, e->fresh_until_ms, at, &e->bytes,
                m.clock->now_ms(), fill_info{lease.token, 0, e->tags});
        lease.token.clear();  // store() filled or released it
        detail::flight_table::complete(fl, e->value, e->negative, nullptr);
        return e->value;
      }
      const auto start = steady::now();
      m.fetches.fetch_add(1, std::memory_order_relaxed);
      detail::fetch_result r;
      try {
        r = fetch();
      } catch (const std::exception& e) {
        m.fetch_errors.fetch_add(1, std::memory_order_relaxed);
        m.emit(event_type::fetch_error, "", key, status(errc::internal, e.what()));
        throw;
      } catch (...) {
        m.fetch_errors.fetch_add(1, std::memory_order_relaxed);
        m.emit(event_type::fetch_error, "", key, status(errc::internal, "non-standard exception"));
        throw;
      }
      m.fetch_latency.record(elapsed_ns(start));
      const unix_ms now = m.clock->now_ms();
      const auto ttl = r.negative ? options.negative_ttl.value_or(m.options.negative_ttl)
                                  : options.ttl.value_or(m.options.ttl);
      if (ttl.count() > 0) {
        m.store(&fl, key, hash, ops, r.value, r.negative, now + ttl.count(), m.bytes.size(),
                nullptr, now, fill_info{lease.token, version, options.tags});
        lease.token.clear();
      } else {
        m.flights.abandon(fl);
        m.give_back(key, lease);
      }
      detail::flight_table::complete(fl, r.value, r.negative, nullptr);
      return r.value;
    } catch (...) {
      m.give_back(key, lease);
      m.flights.abandon(fl);
      detail::flight_table::complete(fl, nullptr, false, std::current_exception());
      throw;
    }
  }
}

std::shared_ptr<const void> cache_stack::get_if_present_erased(std::string_view key,
                                                               const detail::type_ops& ops) {
  impl& m = *impl_;
  std::uint64_t hash = 0;
  memory_layer::hit hit;
  if (l1_lookup(key, ops, {}, hash, hit)) return hit.value;
  if (m.bytes.empty()) return nullptr;
  // Lower layers are read under a flight so a concurrent del cannot be undone by our backfill.
  auto [f, leader] = m.flights.join(key, hash, &ops);
  if (!leader) {
    if (!detail::same_type(f->ops, &ops)) throw_type_mismatch(key, f->ops->name, ops.name);
    // Called from this thread's own fetcher for the key: every layer already missed, and waiting
    // for ourselves would never end.
    if (f->leader == std::this_thread::get_id()) return nullptr;
    bool absent = false;
    return m.wait(*f, m.wait_deadline({}), absent);
  }
  flight& fl = *f;
  try {
    std::size_t at = 0;
    if (auto e = m.find_below(key, hash, ops, at)) {
      m.store(&fl, key, hash, ops, e->value, e->negative, e->fresh_until_ms, at, &e->bytes,
              m.clock->now_ms(), fill_info{{}, 0, e->tags});
      detail::flight_table::complete(fl, e->value, e->negative, nullptr);
      return e->value;
    }
    m.flights.abandon(fl);
    detail::flight_table::complete(fl, nullptr, false, nullptr, /*absent=*/true);
    return nullptr;
  } catch (...) {
    m.flights.abandon(fl);
    detail::flight_table::complete(fl, nullptr, false, std::current_exception());
    throw;
  }
}

status cache_stack::set_erased(std::string_view key, const detail::type_ops& ops,
                               std::shared_ptr<const void> value, const set_options& options) {
  impl& m = *impl_;
  m.validate_key(key);
  options.validate();
  m.check_reserved(key);
  const std::uint64_t hash = detail::hash_key(key);
  m.flights.invalidate(key, hash);
  const unix_ms now = m.clock->now_ms();
  const unix_ms fresh_until = now + options.ttl.value_or(m.options.ttl).count();
  auto ticket = m.apply_set(key, hash, ops, value, fresh_until, now,
                            m.policy_of(options) == write_policy::strict, options.tags);
  return ticket ? ticket->wait() : status();
}

status cache_stack::set_many_erased(
    std::span<const std::pair<std::string_view, std::shared_ptr<const void>>> entries,
    const detail::type_ops& ops, const set_options& options) {
  impl& m = *impl_;
  options.validate();
  for (const auto& [key, value] : entries) {
    m.validate_key(key);
    m.check_reserved(key);
  }
  const unix_ms now = m.clock->now_ms();
  const unix_ms fresh_until = now + options.ttl.value_or(m.options.ttl).count();
  const bool strict = m.policy_of(options) == write_policy::strict;
  std::vector<std::shared_ptr<detail::write_ticket>> tickets;
  for (const auto& [key, value] : entries) {
    const std::uint64_t hash = detail::hash_key(key);
    m.flights.invalidate(key, hash);
    // The background writer batches queued sets into one set_many per layer.
    if (auto ticket = m.apply_set(key, hash, ops, value, fresh_until, now, strict, options.tags)) {
      tickets.push_back(std::move(ticket));
    }
  }
  status result;
  for (auto& t : tickets) update_per_layer(result, t->wait());
  return result;
}

status cache_stack::del(std::string_view key) {
  return del_many(std::span<const std::string_view>(&key, 1));
}

status cache_stack::del_many(std::span<const std::string> keys) {
  std::vector<std::string_view> views(keys.begin(), keys.end());
  return del_many(std::span<const std::string_view>(views));
}

status cache_stack::del_many(std::span<const std::string_view> keys) {
  impl& m = *impl_;
  for (const auto& key : keys) {
    m.validate_key(key);
    m.check_reserved(key);
  }
  const bool strict = m.options.writes == write_policy::strict;
  std::vector<std::shared_ptr<detail::write_ticket>> tickets;
  for (const auto& key : keys) {
    const std::uint64_t hash = detail::hash_key(key);
    m.flights.invalidate(key, hash);
    if (auto ticket = m.apply_del(key, hash, 0, strict)) {
      tickets.push_back(std::move(ticket));
    }
  }
  status result;
  for (auto& t : tickets) update_per_layer(result, t->wait());
  return result;
}

bool cache_stack::has(std::string_view key) {
  impl& m = *impl_;
  m.validate_key(key);
  const std::uint64_t hash = detail::hash_key(key);
  if (m.l1 != nullptr && m.l1->contains(key, hash)) return true;
  const unix_ms now = m.clock->now_ms();
  std::shared_ptr<const std::string> own;
  switch (m.pending(key, hash, &own)) {
    case detail::write_behind::pending_kind::del:
      return false;
    case detail::write_behind::pending_kind::set: {
      detail::envelope_header h;
      return own && detail::peek_envelope_header(*own, h).ok() && h.fresh_until_ms > now;
    }
    case detail::write_behind::pending_kind::none:
      break;
  }
  for (auto* b : m.bytes) {
    byte_read r = b->get(key);
    detail::envelope_header h;
    if (r.error.ok() && r.bytes && detail::peek_envelope_header(*r.bytes, h).ok() &&
        h.fresh_until_ms > now) {
      return true;
    }
  }
  return false;
}

status cache_stack::clear() {
  impl& m = *impl_;
  m.flights.invalidate_all();
  status result;
  // Writes queued before the clear must land before it, or they would resurrect cleared entries
  // (and read-your-writes would keep serving them meanwhile).
  if (m.writer) (void)m.writer->flush(m.options.shutdown_flush_timeout);
  m.tags.clear();
  for (auto& l : m.layers) result.update(detail::attribute_to(*l, l->clear()));
  if (m.coord != nullptr) {
    result.update(detail::attribute_to(
        *m.bytes[m.coord_at], m.coord->announce_clear(m.versions.next(m.clock->now_ms()))));
  }
  return result;
}

std::vector<std::shared_ptr<const void>> cache_stack::get_many_erased(
    std::span<const std::string> keys, const detail::type_ops& ops, batch_fetch_fn fetch,
    const get_options& options) {
  impl& m = *impl_;
  options.validate();
  for (const auto& key : keys) {
    m.validate_key(key);
    m.check_reserved(key);
  }
  std::vector<std::shared_ptr<const void>> results(keys.size());

  // Unique keys, each with the positions it fills.
  std::unordered_map<std::string_view, std::vector<std::size_t>> positions;
  std::vector<std::string_view> unique;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    auto [it, inserted] = positions.try_emplace(keys[i]);
    if (inserted) unique.push_back(keys[i]);
    it->second.push_back(i);
  }
  auto fill = [&](std::string_view key, const std::shared_ptr<const void>& v) {
    for (std::size_t p : positions[key]) results[p] = v;
  };

  struct pending {
    std::string_view key;
    std::uint64_t hash;
    std::shared_ptr<flight> f;
    bool done = false;
    bool skip_layers = false;  // a queued write of ours decides; the byte layers are behind it
  };
  std::vector<pending> led, awaited;
  for (std::string_view key : unique) {
    const std::uint64_t hash = detail::hash_key(key);
    memory_layer::hit hit;
    if (m.l1 != nullptr && m.l1->find(key, hash, hit)) {
      if (!detail::same_type(hit.ops, &ops)) throw_type_mismatch(key, hit.ops->name, ops.name);
      if (hit.negative) m.negative_hits.fetch_add(1, std::memory_order_relaxed);
      fill(key, hit.value);
      continue;
    }
    auto [f, leader] = m.flights.join(key, hash, &ops);
    if (!leader && f->leader == std::this_thread::get_id()) {
      // Only possible from inside a fetcher of this thread: waiting would deadlock.
      for (auto& p : led) {
        m.flights.abandon(*p.f);
        detail::flight_table::complete(
            *p.f, nullptr, false,
            std::make_exception_ptr(invalid_argument_error("layercache: re-entrant get_many")));
      }
      throw invalid_argument_error("layercache: the fetcher for '" + std::string(key) +
                                   "' called get_many for the same key");
    }
    (leader ? led : awaited).push_back(pending{key, hash, std::move(f)});
  }

  // Lead our keys to completion before waiting on anyone else's, so two get_many calls that lead
  // keys the other awaits cannot deadlock.
  if (!led.empty()) {
    // get_many coordinates its fetch within the process only (no leases: a batch would need one per
    // key); its fills are still versioned, so they never replace a newer value in Redis.
    const std::uint64_t version = m.versions.next(m.clock->now_ms());
    try {
      std::size_t remaining = led.size();
      for (auto& p : led) {
        if (p.done) continue;
        std::shared_ptr<const std::string> own;
        const auto pk = m.pending(p.key, p.hash, &own);
        if (pk == detail::write_behind::pending_kind::none) continue;
        // Our own queued write decides: a queued delete means "fetch", a queued set answers.
        p.skip_layers = true;
        if (pk == detail::write_behind::pending_kind::set) {
          if (auto e = m.take(0, p.key, byte_read{status(), std::string(*own)}, ops,
                              m.clock->now_ms())) {
            m.store(p.f.get(), p.key, p.hash, ops, e->value, e->negative, e->fresh_until_ms, 0,
                    &e->bytes, m.clock->now_ms(), fill_info{{}, 0, e->tags});
            detail::flight_table::complete(*p.f, e->value, e->negative, nullptr);
            fill(p.key, e->value);
            p.done = true;
            --remaining;
          }
        }
      }
      for (auto& p : led) {
        memory_layer::hit hit;
        if (p.done) continue;
        if (m.l1 != nullptr && m.l1->find(p.key, p.hash, hit, false)) {
          if (!detail::same_type(hit.ops, &ops)) {
            throw_type_mismatch(p.key, hit.ops->name, ops.name);
          }
          m.flights.abandon(*p.f);
          detail::flight_table::complete(*p.f, hit.value, hit.negative, nullptr);
          fill(p.key, hit.value);
          p.done = true;
          --remaining;
        }
      }
      for (std::size_t i = 0; i < m.bytes.size() && remaining > 0; ++i) {
        std::vector<std::string> ask;
        std::vector<pending*> asked;
        for (auto& p : led) {
          if (!p.done && !p.skip_layers) {
            ask.emplace_back(p.key);
            asked.push_back(&p);
          }
        }
        if (ask.empty()) break;
        const auto t0 = steady::now();
        std::vector<byte_read> reads = m.bytes[i]->get_many(ask);
        m.stats[i].latency.record(elapsed_ns(t0));
        const unix_ms now = m.clock->now_ms();
        for (std::size_t k = 0; k < asked.size(); ++k) {
          byte_read r = k < reads.size() ? std::move(reads[k])
                                         : byte_read{status(errc::internal, "short get_many"), {}};
          if (auto e = m.take(i, asked[k]->key, std::move(r), ops, now)) {
            pending& p = *asked[k];
            m.store(p.f.get(), p.key, p.hash, ops, e->value, e->negative, e->fresh_until_ms, i,
                    &e->bytes, now, fill_info{{}, 0, e->tags});
            detail::flight_table::complete(*p.f, e->value, e->negative, nullptr);
            fill(p.key, e->value);
            p.done = true;
            --remaining;
          }
        }
      }
      if (remaining > 0) {
        std::vector<std::string> missing;
        std::vector<pending*> fetched;
        for (auto& p : led) {
          if (!p.done) {
            missing.emplace_back(p.key);
            fetched.push_back(&p);
          }
        }
        const auto t0 = steady::now();
        m.fetches.fetch_add(1, std::memory_order_relaxed);
        std::vector<detail::fetch_result> produced;
        try {
          produced = fetch(missing);
        } catch (const std::exception& e) {
          m.fetch_errors.fetch_add(1, std::memory_order_relaxed);
          m.emit(event_type::fetch_error, "", missing.front(), status(errc::internal, e.what()));
          throw;
        } catch (...) {
          m.fetch_errors.fetch_add(1, std::memory_order_relaxed);
          m.emit(event_type::fetch_error, "", missing.front(),
                 status(errc::internal, "non-standard exception"));
          throw;
        }
        m.fetch_latency.record(elapsed_ns(t0));
        if (produced.size() != missing.size()) {
          throw invalid_argument_error("layercache: get_many fetcher returned " +
                                       std::to_string(produced.size()) + " results for " +
                                       std::to_string(missing.size()) + " keys");
        }
        const unix_ms now = m.clock->now_ms();
        for (std::size_t k = 0; k < fetched.size(); ++k) {
          pending& p = *fetched[k];
          detail::fetch_result& r = produced[k];
          const auto ttl = r.negative ? options.negative_ttl.value_or(m.options.negative_ttl)
                                      : options.ttl.value_or(m.options.ttl);
          if (ttl.count() > 0) {
            m.store(p.f.get(), p.key, p.hash, ops, r.value, r.negative, now + ttl.count(),
                    m.bytes.size(), nullptr, now, fill_info{{}, version, options.tags});
          } else {
            m.flights.abandon(*p.f);
          }
          detail::flight_table::complete(*p.f, r.value, r.negative, nullptr);
          fill(p.key, r.value);
          p.done = true;
        }
      }
    } catch (...) {
      auto error = std::current_exception();
      for (auto& p : led) {
        if (p.done) continue;
        m.flights.abandon(*p.f);
        detail::flight_table::complete(*p.f, nullptr, false, error);
      }
      throw;
    }
  }

  for (auto& p : awaited) {
    if (!detail::same_type(p.f->ops, &ops)) throw_type_mismatch(p.key, p.f->ops->name, ops.name);
    m.dedupes.fetch_add(1, std::memory_order_relaxed);
    bool absent = false;
    auto value = m.wait(*p.f, m.wait_deadline(options), absent);
    if (absent) {
      // The leader only looked; fetch this key through the single-key path.
      value = get_slow(
          p.key, p.hash, ops,
          [&]() -> detail::fetch_result {
            std::string one(p.key);
            auto produced = fetch(std::span<const std::string>(&one, 1));
            if (produced.size() != 1) {
              throw invalid_argument_error("layercache: get_many fetcher returned " +
                                           std::to_string(produced.size()) + " results for 1 key");
            }
            return std::move(produced.front());
          },
          options);
    }
    fill(p.key, value);
  }
  return results;
}

bool cache_stack::flush(std::chrono::milliseconds timeout) {
  return !impl_->writer || impl_->writer->flush(timeout);
}

metrics_snapshot cache_stack::metrics() const {
  const impl& m = *impl_;
  metrics_snapshot out;
  std::size_t b = 0;
  for (const auto& l : m.layers) {
    if (l.get() == m.l1) {
      out.layers.push_back(m.l1->metrics());
      continue;
    }
    const byte_layer_stats& st = m.stats[b++];
    layer_metrics lm;
    lm.name = l->info().name;
    lm.hits = st.hits.load(std::memory_order_relaxed);
    lm.misses = st.misses.load(std::memory_order_relaxed);
    lm.errors = st.errors.load(std::memory_order_relaxed);
    lm.writes = st.writes.load(std::memory_order_relaxed);
    lm.expirations = st.expirations.load(std::memory_order_relaxed);
    lm.read_latency = st.latency.summary();
    l->contribute_metrics(lm);
    out.layers.push_back(std::move(lm));
  }
  out.fetches = m.fetches.load(std::memory_order_relaxed);
  out.fetch_errors = m.fetch_errors.load(std::memory_order_relaxed);
  out.dedupes = m.dedupes.load(std::memory_order_relaxed);
  out.wait_timeouts = m.wait_timeouts.load(std::memory_order_relaxed);
  out.negative_hits = m.negative_hits.load(std::memory_order_relaxed);
  out.stale_fills = m.stale_fills.load(std::memory_order_relaxed);
  out.fetch_latency = m.fetch_latency.summary();
  out.pending_writes = m.writer ? m.writer->queued() : 0;
  out.lease_grants = m.lease_grants.load(std::memory_order_relaxed);
  out.lease_waits = m.lease_waits.load(std::memory_order_relaxed);
  out.lease_takeovers = m.lease_takeovers.load(std::memory_order_relaxed);
  out.coordination_fallbacks = m.coordination_fallbacks.load(std::memory_order_relaxed);
  out.cas_rejections = m.cas_rejections.load(std::memory_order_relaxed);
  out.bus_received = m.bus_received.load(std::memory_order_relaxed);
  out.bus_resyncs = m.bus_resyncs.load(std::memory_order_relaxed);
  return out;
}

status cache_stack::invalidate_tag(std::string_view tag) {
  const std::string one(tag);
  return invalidate_tags(std::span<const std::string>(&one, 1), tag_match::any);
}

status cache_stack::invalidate_tags(std::span<const std::string> tag_list, tag_match match) {
  impl& m = *impl_;
  if (tag_list.empty()) return {};
  const bool all = match == tag_match::all;
  // Our own queued writes first: a tagged set still in the queue would otherwise land after the
  // invalidation and bring the key back.
  if (m.writer) (void)m.writer->flush(m.options.shutdown_flush_timeout);
  std::vector<std::string> keys = m.tags.take(tag_list, all);
  status result;
  if (m.coord != nullptr) {
    std::vector<std::string> removed;
    status s = m.coord->invalidate_tags(tag_list, all, m.versions.next(m.clock->now_ms()), removed);
    result.update(detail::attribute_to(*m.bytes[m.coord_at], s));
    keys.insert(keys.end(), std::make_move_iterator(removed.begin()),
                std::make_move_iterator(removed.end()));
  }
  // This instance's copies; the coordinating layer was handled by its script (tombstones).
  for (const auto& key : keys) {
    const std::uint64_t hash = detail::hash_key(key);
    m.flights.invalidate(key, hash);
    (void)m.apply_del(key, hash, 0, false, /*local_only=*/m.coord != nullptr);
  }
  return result;
}

status cache_stack::invalidate_prefix(std::string_view prefix) {
  impl& m = *impl_;
  if (prefix.empty()) return clear();
  if (m.writer) (void)m.writer->flush(m.options.shutdown_flush_timeout);
  m.flights.invalidate_all();
  if (m.l1 != nullptr) m.l1->erase_prefix(prefix);
  status result;
  for (std::size_t i = 0; i < m.bytes.size(); ++i) {
    if (i == m.coord_at) {
      result.update(detail::attribute_to(
          *m.bytes[i], m.coord->invalidate_prefix(prefix, m.versions.next(m.clock->now_ms()))));
    } else {
      result.update(m.erase_prefix_in(*m.bytes[i], prefix));
    }
  }
  return result;
}

cache_namespace cache_stack::ns(std::string_view name) { return make_namespace(nullptr, name); }

cache_namespace cache_stack::make_namespace(std::shared_ptr<const detail::ns_node> parent,
                                            std::string_view name) {
  impl& m = *impl_;
  if (name.empty() || name.find('/') != std::string_view::npos) {
    throw invalid_argument_error("layercache: a namespace name must be non-empty and free of '/'");
  }
  std::string path = parent ? parent->path + "/" + std::string(name) : std::string(name);
  {
    std::lock_guard lock(m.ns_mu);
    auto it = m.namespaces.find(path);
    if (it != m.namespaces.end()) return cache_namespace(this, it->second);
  }
  auto node = std::make_shared<detail::ns_node>();
  node->name = std::string(name);
  node->path = path;
  node->parent = std::move(parent);
  std::uint64_t generation = 0;
  if (m.coord != nullptr) {
    status error;
    if (auto g = m.coord->generation(path, error)) {
      generation = *g;
    } else {
      generation = m.placeholder_generation();
      m.emit(event_type::layer_error, m.bytes[m.coord_at]->info().name, path,
             status::layer_error(m.bytes[m.coord_at]->info().name, error.code(),
                                 "namespace generation unknown (" + error.message() +
                                     "): using a private one until the bus is back"));
    }
  }
  node->generation = std::make_shared<std::atomic<std::uint64_t>>(generation);
  std::lock_guard lock(m.ns_mu);
  auto [it, inserted] = m.namespaces.try_emplace(std::move(path), std::move(node));
  return cache_namespace(this, it->second);
}

status cache_stack::rotate_namespace(const detail::ns_node& node) {
  impl& m = *impl_;
  std::shared_ptr<detail::ns_node> registered;
  {
    std::lock_guard lock(m.ns_mu);
    auto it = m.namespaces.find(node.path);
    if (it == m.namespaces.end()) return status(errc::internal, "namespace not registered");
    registered = it->second;
  }
  std::uint64_t next = 0;
  if (m.coord != nullptr) {
    status error;
    auto g = m.coord->rotate(node.path, error);
    if (!g) return detail::attribute_to(*m.bytes[m.coord_at], error);
    next = *g;
  } else {
    next = (registered->generation->load(std::memory_order_acquire) & ~unknown_generation) + 1;
  }
  m.move_generation(*registered, next, true);
  return {};
}

}  // namespace layercache
