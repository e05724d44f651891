// write_behind.cpp — queues, workers, coalescing by version and the layer calls of a batch.
// Retrying failed writes lives in write_retry.cpp. See write_behind.hpp for the design.
#include "core/write_behind.hpp"

#include <algorithm>

#include "layercache/detail/envelope.hpp"
#include "layercache/detail/hash.hpp"

namespace layercache::detail {

namespace {

thread_local bool on_worker_thread = false;

}  // namespace

void write_ticket::complete(status s) {
  {
    std::lock_guard lock(mu_);
    result_ = std::move(s);
    done_ = true;
  }
  cv_.notify_all();
}

status write_ticket::wait() {
  std::unique_lock lock(mu_);
  if (on_worker_thread && !done_) {
    // The op may sit in this very worker's queue: waiting would never end.
    return status(errc::timeout,
                  "strict write not awaited: issued on a background writer thread (an event or "
                  "removal callback); it is queued and lands in the background");
  }
  cv_.wait(lock, [&] { return done_; });
  return result_;
}

write_behind::slot& write_behind::slot::operator=(slot&& other) noexcept {
  if (this != &other) {
    reset();
    owner_ = std::exchange(other.owner_, nullptr);
  }
  return *this;
}

void write_behind::slot::reset() noexcept {
  if (owner_ == nullptr) return;
  owner_->queued_.fetch_sub(1, std::memory_order_relaxed);
  { std::lock_guard lock(owner_->space_mu_); }
  owner_->space_cv_.notify_all();
  owner_ = nullptr;
}

write_behind::write_behind(std::vector<byte_layer*> layers, options opts, error_sink on_error,
                           write_sink on_write, reject_sink on_reject, drop_sink on_drop)
    : layers_(std::move(layers)),
      opts_(opts),
      on_error_(std::move(on_error)),
      on_write_(std::move(on_write)),
      on_reject_(std::move(on_reject)),
      on_drop_(std::move(on_drop)),
      queues_(std::make_unique<queue[]>(std::max<std::size_t>(1, opts.threads))),
      pending_(std::make_unique<pending_shard[]>(pending_count)) {
  failing_ = std::make_unique<std::atomic<bool>[]>(layers_.size());
  opts_.threads = std::max<std::size_t>(1, opts_.threads);
  opts_.batch = std::max<std::size_t>(1, opts_.batch);
  opts_.max_pending = std::max<std::size_t>(1, opts_.max_pending);
  opts_.retry_backoff_first = std::max(opts_.retry_backoff_first, std::chrono::milliseconds(1));
  opts_.retry_backoff_last = std::max(opts_.retry_backoff_last, opts_.retry_backoff_first);
  workers_.reserve(opts_.threads);
  for (std::size_t i = 0; i < opts_.threads; ++i) {
    workers_.emplace_back([this, i](std::stop_token stop) {
      on_worker_thread = true;
      run(stop, queues_[i]);
    });
  }
}

write_behind::~write_behind() {
  flush(opts_.flush_timeout, flush_scope::settled);
  for (auto& w : workers_) w.request_stop();
  workers_.clear();  // joins; workers drop what is still queued or retained
}

write_behind::slot write_behind::reserve(bool may_wait) {
  if (may_wait && !on_worker_thread) {
    std::unique_lock lock(space_mu_);
    space_cv_.wait(lock,
                   [&] { return queued_.load(std::memory_order_relaxed) < opts_.max_pending; });
    queued_.fetch_add(1, std::memory_order_relaxed);
  } else {
    // A worker waiting for room would wait for itself; a caller that said it must not wait holds
    // a lock a worker's callback may need. Either may take the queue past max_pending.
    queued_.fetch_add(1, std::memory_order_relaxed);
  }
  return slot(this);
}

void write_behind::register_pending(const write_op& op) {
  // A local-only delete applies another instance's change to this instance's private layers;
  // readers must not take it for a delete of ours (they would skip Redis, which has the change,
  // and fetch). Until it runs, the tombstone version a lease grant carries covers those layers.
  if (op.local_only) return;
  pending_shard& ps = pending_for(op.hash);
  std::lock_guard pending_lock(ps.mu);
  pending_entry& e = claim(ps, op.key);
  const bool conditional = op.type == write_op::kind::del && op.conditional && op.version != 0;
  if (e.outstanding == 0 || wins(op.version, op.seq, e.version, e.seq)) {
    e.version = op.version;
    e.seq = op.seq;
    e.kind = op.type == write_op::kind::set ? pending_kind::set
             : conditional                  ? pending_kind::fence
                                            : pending_kind::del;
    e.bytes = op.bytes.empty() ? nullptr : op.bytes.front();
  }
  if (conditional) e.fence = std::max(e.fence, op.version);
  ++e.outstanding;
}

void write_behind::submit(write_op op, slot room) {
  room.owner_ = nullptr;  // the room is the op's now; execute() gives it back
  queue& q = queues_[op.hash % opts_.threads];
  {
    // The pending entry and the queue must see a key's ops in the same order: with two threads
    // submitting the same key, updating pending() under its lock and queueing under another let
    // pending() report one op as the latest while the other one was queued (and landed) last.
    // Lock order q.mu -> pending shard mu.
    std::lock_guard lock(q.mu);
    op.seq = seq_.fetch_add(1, std::memory_order_relaxed) + 1;
    register_pending(op);
    q.ops.push_back(std::move(op));
    ++q.submitted;
  }
  q.cv.notify_one();
}

write_behind::pending_entry& write_behind::claim(pending_shard& ps, const std::string& key) {
  pending_entry& e = ps.map[key];
  // An op of our own on a key that so far only reported another key's op (an alias): the entry
  // is the op's now, and no longer goes when that other key's op is done (it reports whichever of
  // the two is newer until then, as for two ops of one key).
  if (e.alias) {
    e.alias = false;
    e.alias_of.clear();
  }
  return e;
}

void write_behind::register_fence(const write_op& fill) {
  pending_shard& ps = pending_for(fill.hash);
  std::lock_guard pending_lock(ps.mu);
  pending_entry& e = claim(ps, fill.key);
  // The fill decides unless a newer op of ours was registered since (it reports itself).
  if (e.outstanding == 0 || !wins(e.version, e.seq, fill.version, fill.seq)) {
    e.version = fill.version;
    e.seq = fill.seq;
    e.kind = pending_kind::fence;
    e.bytes = nullptr;
  }
  e.fence = std::max(e.fence, fill.fences);
  ++e.outstanding;
}

write_behind::pending_kind write_behind::pending(std::string_view key, std::uint64_t hash,
                                                 std::shared_ptr<const std::string>* bytes,
                                                 std::uint64_t* fence) const {
  pending_shard& ps = pending_for(hash);
  std::lock_guard lock(ps.mu);
  if (ps.map.empty()) return pending_kind::none;
  auto it = ps.map.find(std::string(key));
  if (it == ps.map.end()) return pending_kind::none;
  if (bytes != nullptr) *bytes = it->second.bytes;
  if (fence != nullptr) *fence = it->second.fence;
  return it->second.kind;
}

std::vector<std::string> write_behind::pending_keys(
    const std::function<bool(std::string_view)>& match) const {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < pending_count; ++i) {
    pending_shard& ps = pending_[i];
    std::lock_guard lock(ps.mu);
    for (const auto& [key, entry] : ps.map) {
      if (match(key)) out.push_back(key);
    }
  }
  return out;
}

bool write_behind::flush(std::chrono::milliseconds timeout, flush_scope scope) {
  // A worker (a callback on it) waiting would wait for itself: it only looks.
  if (on_worker_thread) timeout = std::chrono::milliseconds(0);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool all = true;
  for (std::size_t i = 0; i < opts_.threads; ++i) {
    queue& q = queues_[i];
    std::unique_lock lock(q.mu);
    const std::uint64_t target = q.submitted;
    all = q.drained.wait_until(lock, deadline, [&] {
      return q.executed >= target && (scope == flush_scope::attempted || q.retained == 0);
    }) && all;
  }
  return all;
}

void write_behind::run(std::stop_token stop, queue& q) {
  std::vector<write_op> batch;
  for (;;) {
    bool retries_due = false;
    {
      std::unique_lock lock(q.mu);
      if (q.next_retry == std::chrono::steady_clock::time_point::max()) {
        q.cv.wait(lock, stop, [&] { return !q.ops.empty() || q.retry_now; });
      } else {
        q.cv.wait_until(lock, stop, q.next_retry, [&] { return !q.ops.empty() || q.retry_now; });
      }
      if (stop.stop_requested()) break;
      const auto now = std::chrono::steady_clock::now();
      if (std::exchange(q.retry_now, false)) {
        for (auto& [key, held] : q.failed) held.due = now;  // this worker owns q.failed
        q.next_retry = now;
      }
      retries_due = now >= q.next_retry;
      const std::size_t n = std::min(q.ops.size(), opts_.batch);
      batch.clear();
      for (std::size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(q.ops.front()));
        q.ops.pop_front();
      }
    }
    execute(batch, q, retries_due);
    {
      std::lock_guard lock(q.mu);
      q.executed += batch.size();
    }
    q.drained.notify_all();
  }
  // Shutdown after the bounded flush: what is left is dropped, and said so (outside the lock:
  // the sinks run user callbacks).
  std::deque<write_op> left;
  {
    std::lock_guard lock(q.mu);
    left.swap(q.ops);
  }
  for (write_op& op : left) {
    const status lost(errc::unavailable, "write dropped at shutdown: the flush timeout passed");
    if (op.ticket) op.ticket->complete(lost);
    if (!op.lease.empty() && opts_.coord != nullptr) opts_.coord->release(op.key, op.lease);
    // Reported per layer like any failed write, so a dropped write is observable (the counter
    // dies with the stack).
    for (std::size_t j = 0; j < op.upto; ++j) report_drop(j, op.key, op.hash, lost);
    queued_.fetch_sub(1, std::memory_order_relaxed);
    retire(op);
  }
  drop_retained(q);
  {
    std::lock_guard lock(q.mu);
    q.executed += left.size();
  }
  q.drained.notify_all();
}

void write_behind::execute(std::vector<write_op>& batch, queue& q, bool retries_due) {
  using plan_map = std::unordered_map<std::string_view, key_plan>;
  plan_map plans;
  plans.reserve(batch.size());
  for (write_op& op : batch) {
    key_plan& p = plans[op.key];
    p.key = op.key;
    p.hash = op.hash;
    p.ops.push_back(&op);
  }
  add_retained(q, plans, retries_due);

  // Per key and layer, the op with the highest version decides (ties: the later one), as Redis's
  // compare-and-set does: a compensating or fence delete of an older version never replaces a
  // newer set or delete, and a delete covering fewer layers does not shrink another's range.
  std::vector<key_plan*> order;
  order.reserve(plans.size());
  for (auto& [key, p] : plans) {
    p.decider.assign(layers_.size(), nullptr);
    p.outcome.assign(layers_.size(), status());
    for (std::size_t j = 0; j < layers_.size(); ++j) {
      write_op* best = p.held != nullptr ? p.held->layers[j].op.get() : nullptr;
      for (write_op* op : p.ops) {
        // A local-only op (another instance's change, applied to this instance's private layers)
        // supersedes nothing in the coordinating layer: our own write of the key may be the
        // newer one and must still reach Redis, where versions decide.
        if (op->upto <= j || (j == opts_.coord_at && op->local_only)) continue;
        if (best == nullptr || wins(op->version, op->seq, best->version, best->seq)) best = op;
      }
      p.decider[j] = best;
    }
    order.push_back(&p);
  }
  if (opts_.coord != nullptr) {
    // A fill that does not decide the coordinating layer never reaches the coordinator: give its
    // lease back so that instances waiting for it do not wait for the lease to expire.
    for (key_plan* p : order) {
      for (write_op* op : p->ops) {
        if (op->lease.empty()) continue;
        if (op->upto <= opts_.coord_at || p->decider[opts_.coord_at] != op) {
          opts_.coord->release(op->key, op->lease);
          op->lease.clear();
        }
      }
    }
  }
  for (std::size_t j = 0; j < layers_.size(); ++j) {
    if (j == opts_.coord_at) {
      execute_coordinated(order);
    } else {
      execute_layer(j, order);
    }
  }
  // The plans of the ops with a ticket, found before settle(): it may erase a retained key whose
  // string a plan of a key with no op in this batch is keyed by, and a later lookup would compare
  // against that freed key.
  std::vector<const key_plan*> ticket_plans(batch.size(), nullptr);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].ticket) ticket_plans[i] = &plans.at(batch[i].key);
  }
  // Failures are reported (settle) before tickets complete: a strict caller that sees its
  // failure can count on the event having been raised.
  settle(q, order);
  // A ticket completes with the first attempt of what decided each layer its op covered
  // (write_policy::strict callers are told; a failure is still retried in the background).
  for (std::size_t i = 0; i < batch.size(); ++i) {
    write_op& op = batch[i];
    if (!op.ticket) continue;
    const key_plan& p = *ticket_plans[i];
    status r;
    for (std::size_t j = 0; j < op.upto && j < layers_.size(); ++j) {
      if (j == opts_.coord_at && op.local_only) continue;
      r.update(p.outcome[j]);
    }
    op.ticket->complete(std::move(r));
    op.ticket.reset();
  }
  for (const write_op& op : batch) retire(op);
  if (!batch.empty()) {
    queued_.fetch_sub(batch.size(), std::memory_order_relaxed);
    { std::lock_guard lock(space_mu_); }
    space_cv_.notify_all();
  }
}

void write_behind::execute_layer(std::size_t j, std::vector<key_plan*>& plans) {
  byte_layer& l = *layers_[j];
  std::vector<byte_write> writes;
  std::vector<std::string> dels;
  std::vector<key_plan*> set_plans, del_plans;
  for (key_plan* p : plans) {
    const write_op* op = p->decider[j];
    if (op == nullptr) continue;
    if (op->type == write_op::kind::set) {
      writes.push_back(byte_write{op->key, *op->bytes[j], op->expires[j]});
      set_plans.push_back(p);
      continue;
    }
    if (op->conditional && op->version != 0) {
      // Only what is not newer than the delete goes. This worker makes every write of the key in
      // this process, so nothing of ours lands between the read and the delete.
      byte_read r = l.get(op->key);
      if (!r.error.ok()) {
        p->outcome[j] = attribute_to(l, r.error);
        continue;
      }
      envelope_header h;
      if (!r.bytes) continue;
      if (peek_envelope_header(*r.bytes, h).ok() && h.version > op->version) continue;
    }
    dels.push_back(op->key);
    del_plans.push_back(p);
  }
  if (!writes.empty()) {
    status s = attribute_to(l, writes.size() == 1
                                   ? l.set(writes[0].key, writes[0].bytes, writes[0].expires_at_ms)
                                   : l.set_many(writes));
    if (s.ok() && on_write_) on_write_(j, writes.size());
    if (!s.ok()) {
      for (key_plan* p : set_plans) p->outcome[j] = s;
    }
  }
  if (!dels.empty()) {
    status s = attribute_to(l, dels.size() == 1 ? l.del(dels[0]) : l.del_many(dels));
    if (!s.ok()) {
      for (key_plan* p : del_plans) p->outcome[j] = s;
    }
  }
}

void write_behind::execute_coordinated(std::vector<key_plan*>& plans) {
  const std::size_t j = opts_.coord_at;
  std::vector<coordinated_write> writes;
  std::vector<key_plan*> sent;
  for (key_plan* p : plans) {
    const write_op* op = p->decider[j];
    if (op == nullptr) continue;
    coordinated_write w;
    w.key = op->key;
    if (op->type == write_op::kind::set) {
      w.type = op->fill ? coordinated_write::kind::fill : coordinated_write::kind::set;
      w.bytes = *op->bytes[j];
      w.expires_at_ms = op->expires[j];
      w.lease = op->lease;
      w.tags = op->tags;
    } else {
      // Conditional or not, a delete is a tombstone of its version there: it removes only what
      // is not newer.
      w.type = coordinated_write::kind::del;
      w.version = op->version;
    }
    writes.push_back(w);
    sent.push_back(p);
  }
  if (writes.empty()) return;
  coordinated_result r = opts_.coord->write(writes);
  status s = attribute_to(*layers_[j], r.error);
  if (s.ok() && on_write_) on_write_(j, writes.size());
  if (!s.ok()) {
    for (key_plan* p : sent) p->outcome[j] = s;
  }
  for (std::size_t k = 0; k < sent.size() && k < r.rejected.size(); ++k) {
    if (r.rejected[k] && on_reject_) on_reject_(sent[k]->key, sent[k]->hash);
  }
}

void write_behind::retire(const write_op& op) {
  if (op.local_only) return;  // never registered (submit)
  std::vector<std::string> aliases;
  {
    pending_shard& ps = pending_for(op.hash);
    std::lock_guard lock(ps.mu);
    auto it = ps.map.find(op.key);
    if (it == ps.map.end()) return;
    if (--it->second.outstanding != 0) return;
    aliases = std::move(it->second.aliases);
    ps.map.erase(it);
  }
  // One shard lock at a time: an alias lives in another shard.
  for (const auto& a : aliases) drop_alias(a);
}

void write_behind::drop_alias(const std::string& key) {
  pending_shard& ps = pending_for(hash_key(key));
  std::lock_guard lock(ps.mu);
  auto it = ps.map.find(key);
  if (it != ps.map.end() && it->second.alias) ps.map.erase(it);
}

void write_behind::alias_pending(std::string_view from, std::string_view to) {
  struct copy {
    std::string original;
    std::string key;
    pending_entry entry;
  };
  std::vector<copy> made;
  for (std::size_t i = 0; i < pending_count; ++i) {
    pending_shard& ps = pending_[i];
    std::lock_guard lock(ps.mu);
    for (const auto& [key, e] : ps.map) {
      if (key.compare(0, from.size(), from) != 0) continue;
      // An alias moves on too (a second rotation before the write landed), still tied to the
      // entry it reports.
      copy c{e.alias ? e.alias_of : key, std::string(to) + key.substr(from.size()), e};
      c.entry.alias = true;
      c.entry.alias_of = c.original;
      c.entry.aliases.clear();
      c.entry.outstanding = 0;
      made.push_back(std::move(c));
    }
  }
  for (auto& c : made) {
    {
      pending_shard& ps = pending_for(hash_key(c.key));
      std::lock_guard lock(ps.mu);
      auto [it, fresh] = ps.map.try_emplace(c.key, c.entry);
      // An op of our own on the new key itself (issued since we moved) reports itself.
      if (!fresh && !it->second.alias) continue;
      if (!fresh) it->second = c.entry;
    }
    // Link it to the original, or take it back if the original is done already.
    bool linked = false;
    {
      pending_shard& ps = pending_for(hash_key(c.original));
      std::lock_guard lock(ps.mu);
      auto it = ps.map.find(c.original);
      if (it != ps.map.end()) {
        it->second.aliases.push_back(c.key);
        linked = true;
      }
    }
    if (!linked) drop_alias(c.key);
  }
}

}  // namespace layercache::detail
