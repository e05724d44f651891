// stack_reads.cpp — the read paths of cache_stack: get (L1, single-flight, byte layers, the lease
// of a cold miss, the fetch), get_if_present, has and get_many. See stack_impl.hpp for the
// concurrency rules shared with the other parts.
#include <cstdio>

#include "core/stack_impl.hpp"

namespace layercache {

std::optional<found_entry> cache_stack::impl::take(std::size_t i, std::string_view key,
                                                   byte_read&& r, const detail::type_ops& ops,
                                                   unix_ms now) {
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
  const status decoded = detail::decode_envelope(*r.bytes, env);
  if (!decoded.ok()) {
    st.errors.fetch_add(1, std::memory_order_relaxed);
    st.misses.fetch_add(1, std::memory_order_relaxed);
    emit(event_type::corruption, name, key,
         status::layer_error(name, decoded.code(), decoded.message()));
    // Bytes that are no envelope (checksum, structure) fail the same way for every reader: remove
    // them.
    (void)bytes[i]->del(key);
    return std::nullopt;
  }
  if (env.header.fresh_until_ms <= now) {
    st.expirations.fetch_add(1, std::memory_order_relaxed);
    st.misses.fetch_add(1, std::memory_order_relaxed);
    return std::nullopt;
  }
  // A valid envelope this reader cannot use was written by another build of the application (a
  // rolling deploy: the type renamed without a type_name, another codec, a field added): a miss,
  // and the fetched value overwrites it. Not corruption: deleting it would have the old and the
  // new build delete each other's values. Not misuse either: type_mismatch_error is for L1, where
  // both types live in this process. A "not found" has a type too, so it is checked the same way.
  std::shared_ptr<const void> value;
  bool usable = true;
  std::string why;
  if (env.header.type_fingerprint != 0 && env.header.type_fingerprint != ops.fingerprint) {
    auto fingerprint_hex = [](std::uint64_t f) {
      char out[19];
      std::snprintf(out, sizeof out, "0x%016llx", static_cast<unsigned long long>(f));
      return std::string(out);
    };
    usable = false;
    why = "holds a value of another type (fingerprint " +
          fingerprint_hex(env.header.type_fingerprint) + ") than " + ops.name + " (" +
          fingerprint_hex(ops.fingerprint) + ")";
  } else if (!env.header.negative && env.header.codec != ops.codec) {
    usable = false;
    why = "holds a value of codec " + std::to_string(static_cast<int>(env.header.codec)) +
          ", the codec of " + ops.name + " is " + std::to_string(static_cast<int>(ops.codec));
  } else if (!env.header.negative) {
    try {
      value = ops.decode(env.payload);
    } catch (const std::exception& e) {
      usable = false;
      why = std::string("holds a payload that does not decode as ") + ops.name + ": " + e.what();
    } catch (...) {
      usable = false;
      why = std::string("holds a payload that does not decode as ") + ops.name;
    }
  }
  if (!usable) {
    st.misses.fetch_add(1, std::memory_order_relaxed);
    schema_misses.fetch_add(1, std::memory_order_relaxed);
    // The fill that replaces it must not carry an older version (Redis keeps the newest).
    versions.observe(env.header.version);
    emit(event_type::schema_mismatch, name, key,
         status::layer_error(name, errc::type_mismatch, "key '" + std::string(key) + "' " + why));
    return std::nullopt;
  }
  st.hits.fetch_add(1, std::memory_order_relaxed);
  if (env.header.negative) negative_hits.fetch_add(1, std::memory_order_relaxed);
  versions.observe(env.header.version);
  return found_entry{std::move(value),    env.header.negative, env.header.fresh_until_ms,
                     std::move(*r.bytes), std::move(env.tags), env.header.version};
}

std::optional<found_entry> cache_stack::impl::read(std::size_t i, std::string_view key,
                                                   const detail::type_ops& ops,
                                                   std::uint64_t& fence) {
  const auto start = steady::now();
  byte_read r = bytes[i]->get(key);
  stats[i].latency.record(elapsed_ns(start));
  fence = std::max(fence, r.deleted_version);
  auto e = take(i, key, std::move(r), ops, clock->now_ms());
  if (e && fenced(i, key, e->version, fence)) return std::nullopt;
  return e;
}

bool cache_stack::impl::fenced(std::size_t i, std::string_view key, std::uint64_t version,
                               std::uint64_t fence) {
  if (fence == 0 || version > fence) return false;
  // Deleted after this copy was written (maybe while this instance was away): every reader would
  // be fenced the same way, so the copy goes.
  (void)bytes[i]->del(key);
  return true;
}

std::optional<found_entry> cache_stack::impl::find_below(std::string_view key, std::uint64_t hash,
                                                         const detail::type_ops& ops,
                                                         std::size_t& found_at, lease_state* lease,
                                                         const get_options* call) {
  std::shared_ptr<const std::string> own;
  // The newest delete a layer above remembers (a tombstone), or a write of ours a failed fill
  // superseded: older copies below are not served.
  std::uint64_t fence = 0;
  switch (pending(key, hash, &own, &fence)) {
    case detail::write_behind::pending_kind::del:
      return std::nullopt;
    case detail::write_behind::pending_kind::set:
      found_at = 0;
      return take(0, key, byte_read{status(), std::string(*own)}, ops, clock->now_ms());
    case detail::write_behind::pending_kind::none:
    case detail::write_behind::pending_kind::fence:
      break;
  }
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (i == coord_at && lease != nullptr) {
      if (auto e = acquire(i, key, ops, *lease, *call)) {
        // A value, so no lease: a fenced one is fetched again without one.
        if (fenced(i, key, e->version, fence)) continue;
        found_at = i;
        return e;
      }
      fence = std::max(fence, lease->tombstone);
      continue;
    }
    if (auto e = read(i, key, ops, fence)) {
      found_at = i;
      return e;
    }
  }
  return std::nullopt;
}

std::optional<found_entry> cache_stack::impl::acquire(std::size_t i, std::string_view key,
                                                      const detail::type_ops& ops,
                                                      lease_state& lease, const get_options& call) {
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
        if (auto e = take(i, key, byte_read{status(), std::move(a.bytes)}, ops, clock->now_ms())) {
          return e;
        }
        // Expired (a clock ahead of Redis's) or corrupt (take() removed it): ask once more,
        // then fetch without a lease rather than loop.
        if (retried) return std::nullopt;
        retried = true;
        continue;
      }
      case detail::lease_answer::kind::granted:
        if (!retried) st.misses.fetch_add(1, std::memory_order_relaxed);  // else counted by take()
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

std::shared_ptr<const void> cache_stack::impl::wait(flight& f, std::chrono::milliseconds deadline,
                                                    bool& absent) {
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
      // Tagged before the version is taken: a tag invalidation either marks this flight stale or
      // has an older version than its value (cache_stack::invalidate_tags).
      m.flights.tag(fl, options.tags);
      // A fetched value is as old as the moment the miss began: a delete issued after it has a
      // newer version and wins in Redis, whenever the fill lands.
      const std::uint64_t version = m.versions.next(m.clock->now_us());
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

bool cache_stack::has(std::string_view key) {
  impl& m = *impl_;
  m.validate_key(key);
  const std::uint64_t hash = detail::hash_key(key);
  if (m.l1 != nullptr && m.l1->contains(key, hash)) return true;
  const unix_ms now = m.clock->now_ms();
  std::shared_ptr<const std::string> own;
  std::uint64_t fence = 0;  // as in find_below: a copy older than a delete above is not there
  switch (m.pending(key, hash, &own, &fence)) {
    case detail::write_behind::pending_kind::del:
      return false;
    case detail::write_behind::pending_kind::set: {
      detail::envelope_header h;
      return own && detail::peek_envelope_header(*own, h).ok() && h.fresh_until_ms > now;
    }
    case detail::write_behind::pending_kind::none:
    case detail::write_behind::pending_kind::fence:
      break;
  }
  for (std::size_t i = 0; i < m.bytes.size(); ++i) {
    byte_read r = m.bytes[i]->get(key);
    fence = std::max(fence, r.deleted_version);
    detail::envelope_header h;
    if (r.error.ok() && r.bytes && detail::peek_envelope_header(*r.bytes, h).ok() &&
        h.fresh_until_ms > now && !m.fenced(i, key, h.version, fence)) {
      return true;
    }
  }
  return false;
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
    std::uint64_t fence = 0;   // a delete a layer read so far remembers (find_below)
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
    for (auto& p : led) m.flights.tag(*p.f, options.tags);  // before the version: see get_slow
    const std::uint64_t version = m.versions.next(m.clock->now_us());
    try {
      std::size_t remaining = led.size();
      for (auto& p : led) {
        if (p.done) continue;
        std::shared_ptr<const std::string> own;
        const auto pk = m.pending(p.key, p.hash, &own, &p.fence);
        if (pk == detail::write_behind::pending_kind::none ||
            pk == detail::write_behind::pending_kind::fence) {
          continue;
        }
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
          asked[k]->fence = std::max(asked[k]->fence, r.deleted_version);
          auto e = m.take(i, asked[k]->key, std::move(r), ops, now);
          if (e && m.fenced(i, asked[k]->key, e->version, asked[k]->fence)) e.reset();
          if (e) {
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

}  // namespace layercache
