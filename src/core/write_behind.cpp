#include "core/write_behind.hpp"

#include <algorithm>

namespace layercache::detail {

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
  cv_.wait(lock, [&] { return done_; });
  return result_;
}

write_behind::write_behind(std::vector<byte_layer*> layers, options opts, error_sink on_error,
                           write_sink on_write, reject_sink on_reject)
    : layers_(std::move(layers)),
      opts_(opts),
      on_error_(std::move(on_error)),
      on_write_(std::move(on_write)),
      on_reject_(std::move(on_reject)),
      queues_(std::make_unique<queue[]>(std::max<std::size_t>(1, opts.threads))),
      pending_(std::make_unique<pending_shard[]>(pending_count)) {
  opts_.threads = std::max<std::size_t>(1, opts_.threads);
  opts_.batch = std::max<std::size_t>(1, opts_.batch);
  opts_.max_pending = std::max<std::size_t>(1, opts_.max_pending);
  workers_.reserve(opts_.threads);
  for (std::size_t i = 0; i < opts_.threads; ++i) {
    workers_.emplace_back([this, i](std::stop_token stop) { run(stop, queues_[i]); });
  }
}

write_behind::~write_behind() {
  flush(opts_.flush_timeout);
  for (auto& w : workers_) w.request_stop();
  workers_.clear();  // joins; workers drop what is still queued
}

void write_behind::submit(write_op op) {
  {
    std::unique_lock lock(space_mu_);
    space_cv_.wait(lock,
                   [&] { return queued_.load(std::memory_order_relaxed) < opts_.max_pending; });
    queued_.fetch_add(1, std::memory_order_relaxed);
  }
  queue& q = queues_[op.hash % opts_.threads];
  {
    // The pending entry and the queue must see a key's ops in the same order: with two threads
    // submitting the same key, updating pending() under its lock and queueing under another let
    // pending() report one op as the latest while the other one was queued (and landed) last.
    // Lock order q.mu -> pending shard mu, as in run()'s shutdown path.
    std::lock_guard lock(q.mu);
    op.seq = seq_.fetch_add(1, std::memory_order_relaxed) + 1;
    // A local-only delete applies another instance's change to this instance's private layers;
    // readers must not take it for a delete of ours (they would skip Redis, which has the change,
    // and fetch). Until it runs, the tombstone version a lease grant carries covers those layers.
    if (!op.local_only) {
      pending_shard& ps = pending_for(op.hash);
      std::lock_guard pending_lock(ps.mu);
      pending_entry& e = ps.map[op.key];
      e.latest_seq = op.seq;
      ++e.outstanding;
      e.kind = op.type == write_op::kind::set ? pending_kind::set : pending_kind::del;
      e.bytes = op.bytes.empty() ? nullptr : op.bytes.front();
    }
    q.ops.push_back(std::move(op));
    ++q.submitted;
  }
  q.cv.notify_one();
}

write_behind::pending_kind write_behind::pending(std::string_view key, std::uint64_t hash,
                                                 std::shared_ptr<const std::string>* bytes) const {
  pending_shard& ps = pending_for(hash);
  std::lock_guard lock(ps.mu);
  if (ps.map.empty()) return pending_kind::none;
  auto it = ps.map.find(std::string(key));
  if (it == ps.map.end()) return pending_kind::none;
  if (bytes != nullptr) *bytes = it->second.bytes;
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

bool write_behind::flush(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool all = true;
  for (std::size_t i = 0; i < opts_.threads; ++i) {
    queue& q = queues_[i];
    std::unique_lock lock(q.mu);
    const std::uint64_t target = q.submitted;
    all = q.drained.wait_until(lock, deadline, [&] { return q.executed >= target; }) && all;
  }
  return all;
}

void write_behind::run(std::stop_token stop, queue& q) {
  std::vector<write_op> batch;
  for (;;) {
    {
      std::unique_lock lock(q.mu);
      q.cv.wait(lock, stop, [&] { return !q.ops.empty(); });
      if (stop.stop_requested()) {
        // Shutdown after the bounded flush: what is left is dropped, and said so.
        while (!q.ops.empty()) {
          write_op op = std::move(q.ops.front());
          q.ops.pop_front();
          const status lost(errc::unavailable,
                            "write dropped at shutdown: the flush timeout passed");
          if (op.ticket) op.ticket->complete(lost);
          if (!op.lease.empty() && opts_.coord != nullptr) opts_.coord->release(op.key, op.lease);
          // Reported per layer like any failed write, so a dropped write is observable (the
          // counter dies with the stack).
          if (on_error_) {
            for (std::size_t j = 0; j < op.upto; ++j) on_error_(j, op.key, lost);
          }
          dropped_.fetch_add(1, std::memory_order_relaxed);
          queued_.fetch_sub(1, std::memory_order_relaxed);
          retire(op);
          ++q.executed;
        }
        q.drained.notify_all();
        return;
      }
      const std::size_t n = std::min(q.ops.size(), opts_.batch);
      batch.clear();
      for (std::size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(q.ops.front()));
        q.ops.pop_front();
      }
    }
    execute(batch);
    {
      std::lock_guard lock(q.mu);
      q.executed += batch.size();
    }
    q.drained.notify_all();
  }
}

void write_behind::execute(std::vector<write_op>& batch) {
  // The last op per key decides the key's final state; earlier ones are superseded.
  std::unordered_map<std::string_view, std::size_t> last;
  last.reserve(batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i) last[batch[i].key] = i;

  std::vector<status> result(batch.size());
  std::unordered_map<std::string_view, std::size_t> last_shared;
  if (opts_.coord != nullptr) {
    // For the coordinating layer, a local-only op (another instance's change, applied to this
    // instance's private layers) supersedes nothing: our own write of the key may be the newer one
    // and must still reach Redis, where versions decide.
    last_shared.reserve(batch.size());
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (!batch[i].local_only) last_shared[batch[i].key] = i;
    }
    // A superseded fill never reaches the coordinator: give its lease back so that instances
    // waiting for it do not wait for the lease to expire.
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const write_op& op = batch[i];
      if (!op.lease.empty() && last_shared[op.key] != i) opts_.coord->release(op.key, op.lease);
    }
    execute_coordinated(batch, last_shared, result);
  }
  for (std::size_t j = 0; j < layers_.size(); ++j) {
    if (j == opts_.coord_at) continue;
    std::vector<byte_write> writes;
    std::vector<std::string> dels;
    std::vector<std::size_t> set_idx, del_idx;
    for (const auto& [key, i] : last) {
      const write_op& op = batch[i];
      if (op.upto <= j) continue;
      (void)key;
      if (op.type == write_op::kind::set) {
        writes.push_back(byte_write{op.key, *op.bytes[j], op.expires[j]});
        set_idx.push_back(i);
      } else {
        dels.push_back(op.key);
        del_idx.push_back(i);
      }
    }
    if (!writes.empty()) {
      status s = attribute_to(*layers_[j], writes.size() == 1
                                               ? layers_[j]->set(writes[0].key, writes[0].bytes,
                                                                 writes[0].expires_at_ms)
                                               : layers_[j]->set_many(writes));
      if (s.ok() && on_write_) on_write_(j, writes.size());
      if (!s.ok()) {
        if (on_error_) on_error_(j, writes.front().key, s);
        for (std::size_t i : set_idx) result[i].update(s);
      }
    }
    if (!dels.empty()) {
      status s = attribute_to(
          *layers_[j], dels.size() == 1 ? layers_[j]->del(dels[0]) : layers_[j]->del_many(dels));
      if (!s.ok()) {
        if (on_error_) on_error_(j, dels.front(), s);
        for (std::size_t i : del_idx) result[i].update(s);
      }
    }
  }
  for (std::size_t i = 0; i < batch.size(); ++i) {
    write_op& op = batch[i];
    if (op.ticket) {
      status r = result[last[op.key]];
      if (auto it = last_shared.find(op.key);
          it != last_shared.end() && it->second != last[op.key]) {
        r.update(result[it->second]);
      }
      op.ticket->complete(std::move(r));
    }
    retire(op);
  }
  queued_.fetch_sub(batch.size(), std::memory_order_relaxed);
  { std::lock_guard lock(space_mu_); }
  space_cv_.notify_all();
}

void write_behind::execute_coordinated(
    std::vector<write_op>& batch, const std::unordered_map<std::string_view, std::size_t>& last,
    std::vector<status>& result) {
  const std::size_t j = opts_.coord_at;
  std::vector<coordinated_write> writes;
  std::vector<std::size_t> idx;
  for (const auto& [key, i] : last) {
    const write_op& op = batch[i];
    if (op.upto <= j) {
      // Not meant for this layer, but a lease taken for it must still be given back.
      if (!op.lease.empty()) opts_.coord->release(op.key, op.lease);
      continue;
    }
    coordinated_write w;
    w.key = op.key;
    if (op.type == write_op::kind::set) {
      w.type = op.fill ? coordinated_write::kind::fill : coordinated_write::kind::set;
      w.bytes = *op.bytes[j];
      w.expires_at_ms = op.expires[j];
      w.lease = op.lease;
      w.tags = op.tags;
    } else {
      w.type = coordinated_write::kind::del;
      w.version = op.version;
    }
    writes.push_back(w);
    idx.push_back(i);
  }
  if (writes.empty()) return;
  coordinated_result r = opts_.coord->write(writes);
  status s = attribute_to(*layers_[j], r.error);
  if (s.ok() && on_write_) on_write_(j, writes.size());
  if (!s.ok()) {
    if (on_error_) on_error_(j, writes.front().key, s);
    for (std::size_t i : idx) result[i].update(s);
  }
  for (std::size_t k = 0; k < idx.size() && k < r.rejected.size(); ++k) {
    if (r.rejected[k] && on_reject_) on_reject_(batch[idx[k]].key, batch[idx[k]].hash);
  }
}

void write_behind::retire(const write_op& op) {
  if (op.local_only) return;  // never registered (submit)
  pending_shard& ps = pending_for(op.hash);
  std::lock_guard lock(ps.mu);
  auto it = ps.map.find(op.key);
  if (it == ps.map.end()) return;
  if (--it->second.outstanding == 0) ps.map.erase(it);
}

}  // namespace layercache::detail
