// stack_writes.cpp — the mutations of cache_stack (set, del, clear, tag and prefix invalidation)
// and the fills of the read paths: an L1 change plus a byte-layer op queued on the write-behind
// queue, ordered per key. See stack_impl.hpp for the concurrency rules.
#include "core/stack_impl.hpp"
#include "memory/removal_deferral.hpp"

namespace layercache {

namespace {

// Order stripes the calling thread holds. A thread holding one must not wait for room in the
// write queue: a writer thread's callback that mutates a key of that stripe is what makes room.
thread_local int stripes_held = 0;

class stripe_guard {
 public:
  explicit stripe_guard(std::recursive_mutex& m) : lock_(m) { ++stripes_held; }
  ~stripe_guard() { --stripes_held; }
  stripe_guard(const stripe_guard&) = delete;
  stripe_guard& operator=(const stripe_guard&) = delete;

 private:
  std::lock_guard<std::recursive_mutex> lock_;
};

// Room in the write queue, taken before any stripe (see stripe_guard).
detail::write_behind::slot room_in(detail::write_behind& writer) {
  return writer.reserve(/*may_wait=*/stripes_held == 0);
}

}  // namespace

detail::write_op cache_stack::impl::make_set_op(
    std::string_view key, std::uint64_t hash, const detail::type_ops& ops,
    const std::shared_ptr<const void>& value, bool negative, unix_ms fresh_until, std::size_t upto,
    const std::string* stored_bytes, unix_ms now, std::shared_ptr<detail::write_ticket> ticket,
    std::uint64_t version, std::span<const std::string> tag_list) {
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
  op.version = version;
  op.tags.assign(tag_list.begin(), tag_list.end());
  return op;
}

std::shared_ptr<detail::write_ticket> cache_stack::impl::apply_set(
    std::string_view key, std::uint64_t hash, const detail::type_ops& ops,
    const std::shared_ptr<const void>& value, unix_ms fresh_until, unix_ms now, bool strict,
    std::span<const std::string> tag_list) {
  detail::removal_deferral defer;  // the L1 change below runs under the flight shard lock
  if (l1 != nullptr) index_tags(key, tag_list);
  if (bytes.empty()) {
    flights.invalidate_with(key, hash, [&] {
      if (l1 != nullptr) {
        l1->insert(key, hash, value, &ops, false, l1_expiry(fresh_until, now),
                   ops.weigh(value.get()));
      }
    });
    return nullptr;
  }
  auto ticket = strict ? std::make_shared<detail::write_ticket>() : nullptr;
  std::uint64_t version = versions.next(clock->now_us());
  detail::write_op op = make_set_op(key, hash, ops, value, false, fresh_until, bytes.size(),
                                    nullptr, now, ticket, version, tag_list);
  auto room = room_in(*writer);
  stripe_guard stripe(order_of(hash));
  std::uint64_t& newest = order_version_of(hash);
  if (version <= newest) {
    // A mutation that took a later version reached the stripe first: ours is applied after it,
    // so it needs a later version too. Rare (a race on the stripe); the encoding is redone here.
    version = versions.next(clock->now_us());
    op = make_set_op(key, hash, ops, value, false, fresh_until, bytes.size(), nullptr, now, ticket,
                     version, tag_list);
  }
  newest = version;
  // L1 and the queue (which read-your-writes consults) change together with the flight's mark:
  // see flight_table::invalidate_with. The room was reserved above, so submit does not wait.
  flights.invalidate_with(key, hash, [&] {
    if (l1 != nullptr) {
      l1->insert(key, hash, value, &ops, false, l1_expiry(fresh_until, now),
                 ops.weigh(value.get()));
    }
    writer->submit(std::move(op), std::move(room));
  });
  return ticket;
}

void cache_stack::impl::submit_del(std::string_view key, std::uint64_t hash, std::size_t upto,
                                   std::shared_ptr<detail::write_ticket> ticket,
                                   std::uint64_t version, detail::write_behind::slot room,
                                   bool local_only, bool conditional) {
  detail::write_op op;
  op.type = detail::write_op::kind::del;
  op.key.assign(key);
  op.hash = hash;
  op.upto = upto;
  op.ticket = std::move(ticket);
  op.version = version;
  op.local_only = local_only;
  op.conditional = conditional;
  writer->submit(std::move(op), std::move(room));
}

std::shared_ptr<detail::write_ticket> cache_stack::impl::apply_del(std::string_view key,
                                                                   std::uint64_t hash,
                                                                   std::uint64_t version,
                                                                   bool strict, bool local_only) {
  detail::removal_deferral defer;  // the L1 change below runs under the flight shard lock
  if (bytes.empty() || (local_only && !local_byte_layers)) {
    flights.invalidate_with(key, hash, [&] {
      if (l1 != nullptr) l1->erase(key, hash, removal_cause::invalidated);
    });
    return nullptr;
  }
  auto ticket = strict ? std::make_shared<detail::write_ticket>() : nullptr;
  // A delete handed a version (a fence: another instance's group invalidation) may be older than
  // what a write of ours stores: it removes only what is not newer.
  const bool conditional = version != 0;
  auto room = room_in(*writer);
  stripe_guard stripe(order_of(hash));
  std::uint64_t& newest = order_version_of(hash);
  if (version == 0) version = versions.next(clock->now_us());
  newest = std::max(newest, version);
  flights.invalidate_with(key, hash, [&] {  // see apply_set
    if (l1 != nullptr) l1->erase(key, hash, removal_cause::invalidated);
    submit_del(key, hash, bytes.size(), ticket, version, std::move(room), local_only, conditional);
  });
  return ticket;
}

void cache_stack::impl::fence_pending(std::uint64_t version,
                                      const std::function<bool(std::string_view)>& match) {
  if (!writer || version == 0) return;
  versions.observe(version);
  for (const auto& key : writer->pending_keys(match)) {
    (void)apply_del(key, detail::hash_key(key), version);
  }
}

status cache_stack::impl::erase_prefix_in(byte_layer& b, std::string_view prefix) {
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

void cache_stack::impl::store(flight* f, std::string_view key, std::uint64_t hash,
                              const detail::type_ops& ops, const std::shared_ptr<const void>& value,
                              bool negative, unix_ms fresh_until, std::size_t upto,
                              const std::string* stored_bytes, unix_ms now, const fill_info& fill) {
  // The L1 insert and the queued write below run under the flight-table shard lock (publish):
  // removals the insert causes are reported to on_remove after the lock is released.
  detail::removal_deferral defer;
  const std::uint64_t version = stored_bytes != nullptr ? version_of(*stored_bytes) : fill.version;
  // Encoded (slow) and room reserved (may wait) before the lock; a flight already stale skips
  // both. Whether it is stale is decided once, under the lock, for L1 and the byte layers alike:
  // queueing the fill before that check (as this did) let a del land in between, and the fill,
  // queued after it and reported by pending() until its compensating delete followed, was read
  // back by other threads and stored in L1 after the del had returned (found by the stress).
  std::optional<detail::write_op> op;
  detail::write_behind::slot room;
  if (upto > 0 && (f == nullptr || !flights.invalidated(*f))) {
    op = make_set_op(key, hash, ops, value, negative, fresh_until, upto, stored_bytes, now, nullptr,
                     version, fill.tags);
    op->fill = true;
    op->lease.assign(fill.lease);
    room = room_in(*writer);
  }
  const unix_ms l1_until = l1_expiry(fresh_until, now);
  bool queued = false;
  auto publish = [&] {
    if (l1 != nullptr) {
      l1->insert(key, hash, value, &ops, negative, l1_until, value ? ops.weigh(value.get()) : 0);
    }
    if (op) {
      writer->submit(std::move(*op), std::move(room));
      queued = true;
    }
  };
  bool stored = true;
  if (f == nullptr) {
    publish();
  } else {
    stored = flights.publish(*f, publish);
  }
  // A lease not handed to a queued fill (whose write script releases it) goes back now.
  if (!queued && !fill.lease.empty() && coord != nullptr) coord->release(key, fill.lease);
  if (stored) {
    if (l1 != nullptr) index_tags(key, fill.tags);
    return;
  }
  // Stale: nothing was stored or queued.
  stale_fills.fetch_add(1, std::memory_order_relaxed);
  emit(event_type::stale_fill, "", key,
       status(errc::ok, "fetched value not stored: invalidated during the fetch"));
}

std::string cache_stack::impl::encode(const detail::type_ops& ops,
                                      const std::shared_ptr<const void>& value, bool negative,
                                      unix_ms fresh_until, unix_ms now,
                                      const detail::compression_policy& policy,
                                      std::uint64_t version,
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

status cache_stack::del(std::string_view key, const del_options& options) {
  return del_many(std::span<const std::string_view>(&key, 1), options);
}

status cache_stack::del_many(std::span<const std::string> keys) {
  std::vector<std::string_view> views(keys.begin(), keys.end());
  return del_many(std::span<const std::string_view>(views));
}

status cache_stack::del_many(std::span<const std::string_view> keys, const del_options& options) {
  impl& m = *impl_;
  for (const auto& key : keys) {
    m.validate_key(key);
    m.check_reserved(key);
  }
  const bool strict = options.policy.value_or(m.options.writes) == write_policy::strict;
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

status cache_stack::clear() {
  impl& m = *impl_;
  const detail::flight_table::sweep sweeping(m.flights);  // until L1 is empty too
  status result;
  // Writes queued before the clear must land before it, or they would resurrect cleared entries
  // (and read-your-writes would keep serving them meanwhile).
  if (m.writer) (void)m.writer->flush(m.options.shutdown_flush_timeout);
  // flush() covers first attempts only: a write still waiting for a retry (Redis was down) would
  // land after the clear. Deletes of the clear's version supersede them (write_behind.hpp).
  const std::uint64_t version = m.versions.next(m.clock->now_us());
  m.fence_pending(version, [](std::string_view) { return true; });
  // The tag index is kept: a key set meanwhile must stay findable (stale keys cost a sweep).
  // Redis refuses writes not newer than the clear from now on (another instance's queued set
  // would otherwise land after the clear walked past its key).
  if (m.coord != nullptr) {
    result.update(detail::attribute_to(*m.bytes[m.coord_at], m.coord->fence_clear(version)));
  }
  // Byte layers first, then L1: a get that read a byte layer before it was cleared either
  // published before the sweep began (the L1 clear removes it, the byte-layer write was flushed
  // above) or was marked or doomed by the sweep and publishes nothing.
  for (auto* b : m.bytes) result.update(detail::attribute_to(*b, b->clear()));
  if (m.l1 != nullptr) result.update(detail::attribute_to(*m.l1, m.l1->clear()));
  if (m.coord != nullptr) {
    result.update(detail::attribute_to(*m.bytes[m.coord_at], m.coord->announce_clear(version)));
  }
  return result;
}

bool cache_stack::flush(std::chrono::milliseconds timeout) {
  return !impl_->writer || impl_->writer->flush(timeout);
}

status cache_stack::invalidate_tag(std::string_view tag) {
  const std::string one(tag);
  return invalidate_tags(std::span<const std::string>(&one, 1), tag_match::any);
}

status cache_stack::invalidate_tags(std::span<const std::string> tag_list, tag_match match) {
  impl& m = *impl_;
  if (tag_list.empty()) return {};
  const bool all = match == tag_match::all;
  // Fetches of tagged keys already running are stale: their keys are in no tag index or tag set
  // yet. A fetch that tags its flight after this takes a newer version than the invalidation's
  // (single_flight.hpp: tag, then version) and began after it: its value may stand.
  const std::uint64_t version = m.versions.next(m.clock->now_us());
  m.flights.invalidate_tagged(tag_list, all);
  // Our own queued writes first: a tagged set still in the queue would otherwise land after the
  // invalidation and bring the key back.
  if (m.writer) (void)m.writer->flush(m.options.shutdown_flush_timeout);
  std::vector<std::string> keys = m.tags.find(tag_list, all);
  std::uint64_t del_version = version;
  status result;
  if (m.coord == nullptr) {
    // No shared tag sets: the index knows only what L1 holds, so a tagged entry of a byte layer
    // whose L1 copy was evicted, or that was written before a restart, is found by the tags its
    // envelope carries. O(entries) per invalidation (docs/design.md, "Tags, prefixes and
    // namespaces").
    for (auto* b : m.bytes) {
      status s = b->scan([&](std::string_view key, std::string_view bytes) {
        detail::decoded_envelope env;
        if (detail::decode_envelope(bytes, env).ok() &&
            detail::carries_tags(env.tags, tag_list, all)) {
          keys.emplace_back(key);
          // Written before this invalidation, maybe by an earlier process whose versions this one
          // never saw: the deletes below must not be older than it.
          del_version = std::max(del_version, env.header.version);
        }
        return true;
      });
      // A layer that cannot enumerate (invalid_argument) is not an error here: it is skipped.
      if (!s.ok() && s.code() != errc::invalid_argument) result.update(detail::attribute_to(*b, s));
    }
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  } else {
    std::vector<std::string> removed;
    status s = m.coord->invalidate_tags(tag_list, all, version, removed);
    result.update(detail::attribute_to(*m.bytes[m.coord_at], s));
    keys.insert(keys.end(), std::make_move_iterator(removed.begin()),
                std::make_move_iterator(removed.end()));
  }
  // Every layer, Redis too, gets a delete of the invalidation's version through the write queue:
  // it is a delete of ours that read-your-writes must see until it lands (a local-only one is
  // not), and it supersedes a write of the key still waiting for a retry, which the script could
  // not see. In Redis it repeats the script's tombstone (same version) for the keys it found.
  for (const auto& key : keys) {
    const std::uint64_t hash = detail::hash_key(key);
    m.flights.invalidate(key, hash);
    (void)m.apply_del(key, hash, del_version);
  }
  return result;
}

status cache_stack::invalidate_prefix(std::string_view prefix) {
  impl& m = *impl_;
  if (prefix.empty()) {
    throw invalid_argument_error(
        "layercache: invalidate_prefix(\"\") would remove every key of every instance; call "
        "clear() for that");
  }
  // Before the flush: a fetch publishing between the two would queue a write the flush does not
  // wait for, which could land after the sweep passed its key.
  const detail::flight_table::sweep sweeping(m.flights);  // until L1 is swept too
  if (m.writer) (void)m.writer->flush(m.options.shutdown_flush_timeout);
  const std::uint64_t version = m.versions.next(m.clock->now_us());
  // Writes still waiting for a retry are not covered by flush(): see clear().
  m.fence_pending(version,
                  [&](std::string_view k) { return k.substr(0, prefix.size()) == prefix; });
  status result;
  for (std::size_t i = 0; i < m.bytes.size(); ++i) {
    if (i == m.coord_at) {
      result.update(detail::attribute_to(*m.bytes[i], m.coord->invalidate_prefix(prefix, version)));
    } else {
      result.update(m.erase_prefix_in(*m.bytes[i], prefix));
    }
  }
  if (m.l1 != nullptr) m.l1->erase_prefix(prefix);  // byte layers, then L1: see clear()
  return result;
}

}  // namespace layercache
