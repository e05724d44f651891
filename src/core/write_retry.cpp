// write_retry.cpp — what write_behind does with a failed layer write: keep it, retry it with
// backoff in order with the key's later ops, forget it once it landed or a newer op of the key
// superseded it in that layer, and give it up after retry_for (reported and invalidated, with a
// conditional delete of its version owed to the layer instead). See write_behind.hpp.
//
// Concurrency: a queue's retained writes (queue::failed) are touched by its worker only; the
// count flush() waits on is kept under the queue's lock. Callbacks run with no lock held.
#include <algorithm>
#include <string>

#include "core/write_behind.hpp"

namespace layercache::detail {

namespace {

using sclock = std::chrono::steady_clock;

// Transport trouble may pass; a refusal of the value itself (too large, invalid) will not.
bool retryable(const status& s) {
  auto transient = [](errc c) { return c == errc::unavailable || c == errc::timeout; };
  if (transient(s.code())) return true;
  return std::any_of(s.failures().begin(), s.failures().end(),
                     [&](const layer_failure& f) { return transient(f.code); });
}

}  // namespace

void write_behind::set_retained_count(queue& q, std::ptrdiff_t delta) {
  if (delta >= 0) {
    retained_.fetch_add(static_cast<std::uint64_t>(delta), std::memory_order_relaxed);
  } else {
    retained_.fetch_sub(static_cast<std::uint64_t>(-delta), std::memory_order_relaxed);
  }
  {
    std::lock_guard lock(q.mu);
    q.retained = static_cast<std::size_t>(static_cast<std::ptrdiff_t>(q.retained) + delta);
  }
  if (delta < 0) q.drained.notify_all();
}

void write_behind::report_drop(std::size_t layer, std::string_view key, std::uint64_t hash,
                               const status& why) {
  dropped_.fetch_add(1, std::memory_order_relaxed);
  if (on_error_) on_error_(layer, key, why);
  if (on_drop_) on_drop_(key, hash);
}

void write_behind::add_retained(queue& q, std::unordered_map<std::string_view, key_plan>& plans,
                                bool retries_due) {
  const auto now = sclock::now();
  for (auto& [key, held] : q.failed) {
    // A key with new ops meets its failed ones now: the newest decides, in queue order.
    if (auto it = plans.find(key); it != plans.end()) {
      it->second.held = &held;
      continue;
    }
    if (!retries_due || held.due > now) continue;
    key_plan& p = plans[key];
    p.key = key;
    p.hash = held.hash;
    p.held = &held;
  }
}

void write_behind::settle(queue& q, std::vector<key_plan*>& plans) {
  const auto now = sclock::now();
  std::ptrdiff_t delta = 0;
  // Batch ops kept for retry, copied once however many layers they failed in. The copy retires
  // its pending() entry when the last layer lets go of it.
  std::unordered_map<const write_op*, std::shared_ptr<write_op>> kept;
  // A fill awaiting a retry is not reported by pending(): it is no write of ours that
  // read-your-writes owes, and serving it from there would outlive the staleness bounds L1 keeps
  // while Redis and the bus are down. Readers look in the layers and fetch again instead. But a
  // fill that superseded a failed write of ours (`fences`, the highest version of those) keeps
  // fencing what that write replaced: the layer may still hold it, and the thread that wrote
  // must not read it once L1 lets the fill go.
  auto keep = [&](const write_op& op, std::uint64_t fences) {
    auto& sp = kept[&op];
    if (!sp) {
      auto* copy = new write_op(op);
      copy->ticket.reset();
      copy->fences = std::max(copy->fences, fences);
      const bool listed = !copy->fill || copy->fences != 0;
      sp = std::shared_ptr<write_op>(copy, [this, listed](write_op* p) {
        if (listed) retire(*p);
        delete p;
      });
      // Before the batch retires the original: never a gap.
      if (!copy->fill) {
        register_pending(*sp);
      } else if (listed) {
        register_fence(*sp);
      }
    }
    return sp;
  };
  bool recovered = false;  // a layer that was failing took a write again
  for (key_plan* p : plans) {
    bool failed_now = false;
    // What the failed writes of ours that newer ops supersede now still fence (see keep).
    std::uint64_t fences = 0;
    for (std::size_t j = 0; p->held != nullptr && j < layers_.size(); ++j) {
      const write_op* old = p->held->layers[j].op.get();
      if (old == nullptr || old == p->decider[j] || p->decider[j] == nullptr) continue;
      fences = std::max(fences, old->fill ? old->fences : (old->local_only ? 0 : old->version));
    }
    for (std::size_t j = 0; j < layers_.size(); ++j) {
      write_op* d = p->decider[j];
      retained_slot* held_slot =
          p->held != nullptr && p->held->layers[j].op ? &p->held->layers[j] : nullptr;
      if (held_slot != nullptr && held_slot->op.get() != d) {
        // A newer op of the key decided the layer: the failed one is not needed any more.
        if (j == opts_.coord_at && !held_slot->op->lease.empty()) {
          opts_.coord->release(held_slot->op->key, held_slot->op->lease);
        }
        held_slot->op.reset();
        --delta;
        held_slot = nullptr;
      }
      if (d == nullptr) continue;
      const status& s = p->outcome[j];
      if (s.ok()) {
        if (failing_[j].exchange(false, std::memory_order_relaxed)) recovered = true;
      } else if (retryable(s)) {
        failing_[j].store(true, std::memory_order_relaxed);
      }
      if (s.ok() || !retryable(s)) {
        // Landed; or refused for good (reported, as a retry would be refused again).
        if (!s.ok() && on_error_) on_error_(j, p->key, s);
        if (held_slot != nullptr) {
          held_slot->op.reset();
          --delta;
        }
        continue;
      }
      failed_now = true;
      if (held_slot != nullptr) {
        held_slot->failed_now = true;  // failed again: reported once already
        continue;
      }
      if (on_error_) on_error_(j, p->key, s);
      if (retained_.load(std::memory_order_relaxed) +
              static_cast<std::uint64_t>(std::max(delta, std::ptrdiff_t{0})) >=
          opts_.max_retained) {
        report_drop(
            j, p->key, p->hash,
            status::layer_error(layers_[j]->info().name, s.code(),
                                "write dropped: " + std::to_string(opts_.max_retained) +
                                    " failed writes already await a retry; " + s.message()));
        continue;
      }
      if (p->held == nullptr) {
        retained_key& fresh = q.failed[std::string(p->key)];
        fresh.hash = p->hash;
        fresh.layers.resize(layers_.size());
        p->held = &fresh;
      }
      retained_slot& fresh_slot = p->held->layers[j];
      fresh_slot.op = keep(*d, fences);
      fresh_slot.give_up = now + opts_.retry_for;
      fresh_slot.failed_now = true;
      ++delta;
    }
    if (p->held == nullptr) continue;
    retained_key& held = *p->held;
    if (failed_now) {
      held.backoff = held.backoff.count() == 0
                         ? opts_.retry_backoff_first
                         : std::min(held.backoff * 2, opts_.retry_backoff_last);
      held.due = now + held.backoff;
    } else if (std::none_of(held.layers.begin(), held.layers.end(),
                            [](const retained_slot& r) { return r.op != nullptr; })) {
      held.backoff = std::chrono::milliseconds(0);
    }
    for (std::size_t j = 0; j < held.layers.size(); ++j) {
      retained_slot& owed_slot = held.layers[j];
      const bool expired = owed_slot.failed_now && owed_slot.give_up <= now;
      owed_slot.failed_now = false;
      if (!expired) continue;
      // Given up: the key is reported and invalidated, and what the layer may still hold of an
      // older value must go: a conditional delete of the op's version is owed to it instead.
      const write_op& gone = *owed_slot.op;
      report_drop(
          j, p->key, p->hash,
          status::layer_error(
              layers_[j]->info().name, errc::unavailable,
              "write given up after retrying for " + std::to_string(opts_.retry_for.count()) +
                  " ms; a delete of its version is retried until the layer answers"));
      write_op owed;
      owed.type = write_op::kind::del;
      owed.key = gone.key;
      owed.hash = gone.hash;
      owed.upto = j + 1;
      owed.version = gone.version;
      owed.conditional = gone.version != 0;
      owed.local_only = gone.local_only;
      owed.seq = seq_.fetch_add(1, std::memory_order_relaxed) + 1;
      auto* copy = new write_op(std::move(owed));
      std::shared_ptr<write_op> debt(copy, [this](write_op* o) {
        retire(*o);
        delete o;
      });
      register_pending(*debt);
      owed_slot.op = std::move(debt);
      owed_slot.give_up = sclock::time_point::max();
    }
    if (std::none_of(held.layers.begin(), held.layers.end(),
                     [](const retained_slot& r) { return r.op != nullptr; })) {
      q.failed.erase(std::string(p->key));
    }
  }
  q.next_retry = sclock::time_point::max();
  for (const auto& [key, held] : q.failed) q.next_retry = std::min(q.next_retry, held.due);
  if (delta != 0) set_retained_count(q, delta);
  if (recovered) retry_all_now();
}

void write_behind::retry_all_now() {
  // The backoff grew while the layer was down (up to retry_backoff_last): without this, what a
  // queue holds would wait for it after the layer is back, and so would the staleness it causes.
  for (std::size_t i = 0; i < opts_.threads; ++i) {
    queue& q = queues_[i];
    {
      std::lock_guard lock(q.mu);
      if (q.retained == 0) continue;
      q.retry_now = true;
    }
    q.cv.notify_all();
  }
}

void write_behind::drop_retained(queue& q) {
  std::ptrdiff_t delta = 0;
  const status lost(errc::unavailable, "failed write dropped at shutdown: retried until then");
  for (auto& [key, held] : q.failed) {
    for (std::size_t j = 0; j < held.layers.size(); ++j) {
      if (!held.layers[j].op) continue;
      report_drop(j, key, held.hash, lost);
      held.layers[j].op.reset();
      --delta;
    }
  }
  q.failed.clear();
  q.next_retry = sclock::time_point::max();
  if (delta != 0) set_retained_count(q, delta);
}

}  // namespace layercache::detail
