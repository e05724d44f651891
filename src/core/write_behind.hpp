// write_behind.hpp — byte-layer writes off the caller's path, in order per key.
//
// Concurrency: ops are routed to one of `threads` worker queues by key hash, so every op on a key
// (and every retry of one) is executed by the same worker. A worker drains up to `batch` ops at a
// time and sends the sets of a batch as one set_many and the dels as one del_many per layer (one
// pipeline each for Redis).
// Coalescing by version: every op carries a version of the process's hybrid logical clock. Per
// key and per layer, the op that decides the layer within a batch is the one with the highest
// version among the ops covering it (ties: the later one), as Redis's compare-and-set decides; the
// others are superseded there. A `conditional` delete (a fill's compensation, a fence) removes only
// what is not newer than its version: on the coordinating layer that is its versioned tombstone,
// on another layer the worker reads the stored envelope's version first (it owns every write of
// the key in this process, so read-check-delete is safe).
// Read-your-writes: until an op has run (or, failed, has been retried to the end), pending()
// reports the deciding op of the key (highest version), and the stack's readers consult it before
// reading a byte layer, so a process never reads older data than it wrote.
// Backpressure: reserve() blocks while `max_pending` ops are queued; take it before any lock the
// caller holds (a worker that runs a user callback may need that lock to make room). A worker
// thread never waits for room (a callback on it mutating the cache may exceed max_pending): it
// would wait for itself. Nor does it wait on a strict ticket or a flush.
// Failures (write_retry.cpp): a failed write of a layer is kept and retried with backoff, in
// order with the key's later ops, until it lands or a newer op of the key supersedes it there;
// pending() keeps reporting it. After `retry_for` a set is given up: its key is reported (one
// error per key and layer) and invalidated (drop sink: L1 and in-flight fetches), and a
// conditional delete of its version is owed to the layer instead (retried until it lands), so no
// older value survives there. At most `max_retained` failed ops are kept; beyond that a failure
// is dropped at once (reported, invalidated; the layer may keep its older value until it expires
// or the key is written again).
// Shutdown: the destructor waits up to `flush_timeout` for queued and retried ops to land, then
// stops the workers; ops still queued or owed then are dropped, counted (`dropped`) and reported
// through the error sink as an `unavailable` failure of each layer they were meant for, and the
// drop sink. Invariants: an op's ticket, if any, is completed exactly once (after its first
// attempt, or when dropped); no callback runs under a lock of this class.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/coordinator.hpp"
#include "layercache/clock.hpp"
#include "layercache/layer.hpp"

namespace layercache::detail {

// A failed status attributed to layer `l` when the layer did not name itself, so a status handed
// to the caller always says which layer failed (cache_stack.hpp: "a status naming the layers that
// failed"). Ok and already-attributed statuses pass through unchanged.
inline status attribute_to(const layer& l, status s) {
  if (s.ok() || !s.failures().empty()) return s;
  std::string message = s.message();  // "<code>: <message>" for an unattributed status
  const std::string_view prefix = to_string(s.code());
  if (message.size() > prefix.size() + 1 && message.compare(0, prefix.size(), prefix) == 0 &&
      message.compare(prefix.size(), 2, ": ") == 0) {
    message.erase(0, prefix.size() + 2);
  }
  return status::layer_error(l.info().name, s.code(), std::move(message));
}

// Completion of one op, for callers that wait (write_policy::strict).
class write_ticket {
 public:
  void complete(status s);
  // The op's status. On a write_behind worker thread (a callback that mutates the cache) it does
  // not wait for an op still queued (the worker may be the one to run it): errc::timeout.
  status wait();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  status result_;
};

struct write_op {
  enum class kind : unsigned char { set, del };
  kind type = kind::set;
  std::string key;
  std::uint64_t hash = 0;
  std::size_t upto = 0;  // applies to byte layers [0, upto)
  // set: the envelope per layer (entries may share one string) and the expiry per layer.
  std::vector<std::shared_ptr<const std::string>> bytes;
  std::vector<unix_ms> expires;
  std::shared_ptr<write_ticket> ticket;  // null: nobody waits
  std::uint64_t seq = 0;                 // assigned by submit()
  // Decides which op of a key wins a layer (highest first, then the later seq). set: the version
  // in its envelope; del: its tombstone's; a fill: the version taken when its miss began.
  std::uint64_t version = 0;
  // del: remove only a stored value not newer than `version` (a fill's compensation, a fence);
  // otherwise the delete removes whatever is stored.
  bool conditional = false;
  // For the coordinating layer (coordinator.hpp):
  bool fill = false;              // set: a fetched/backfilled value (not announced), not a mutation
  std::string lease;              // fill: the lease it fills and releases
  std::vector<std::string> tags;  // set: tag sets the key joins
  bool local_only = false;  // skip the coordinating layer (applying another instance's change)
  // A retained fill that superseded a failed write of ours in a layer: the highest version of
  // those writes, which pending() keeps fencing until the fill lands (write_retry.cpp).
  std::uint64_t fences = 0;
};

class write_behind {
 public:
  struct options {
    std::size_t threads = 2;
    std::size_t max_pending = 65536;
    std::size_t batch = 256;
    std::chrono::milliseconds flush_timeout{2000};
    // How long a failed write is retried before it is given up (see the top of this file).
    std::chrono::milliseconds retry_for{30000};
    // Failed writes (per key and layer) kept for retry at most; beyond it a failure is dropped.
    std::size_t max_retained = 10000;
    // Backoff between retries of a key: doubles from the first to the last.
    std::chrono::milliseconds retry_backoff_first{50};
    std::chrono::milliseconds retry_backoff_last{1000};
    // The coordinating layer, written through the coordinator instead of set_many/del_many.
    coordinator* coord = nullptr;
    std::size_t coord_at = static_cast<std::size_t>(-1);
  };
  // Called on a worker thread for every failed layer write, once per key and layer (for metrics
  // and events), and for every write given up.
  using error_sink = std::function<void(std::size_t layer, std::string_view key, const status&)>;
  using write_sink = std::function<void(std::size_t layer, std::size_t count)>;
  // Called on a worker thread for a write the coordinating layer refused (a newer version there).
  using reject_sink = std::function<void(std::string_view key, std::uint64_t hash)>;
  // Called on a worker thread for a key whose write was given up (after the error sink): the
  // stack drops what it holds of the key (L1, in-flight fetches), which may be older than the
  // layers now hold or newer than they will ever hold.
  using drop_sink = std::function<void(std::string_view key, std::uint64_t hash)>;

  write_behind(std::vector<byte_layer*> layers, options opts, error_sink on_error,
               write_sink on_write, reject_sink on_reject = {}, drop_sink on_drop = {});
  ~write_behind();
  write_behind(const write_behind&) = delete;
  write_behind& operator=(const write_behind&) = delete;

  // Room for one op in the queue, taken by reserve() and used by submit(); given back if unused.
  class slot {
   public:
    slot() = default;
    slot(slot&& other) noexcept : owner_(std::exchange(other.owner_, nullptr)) {}
    slot& operator=(slot&& other) noexcept;
    slot(const slot&) = delete;
    slot& operator=(const slot&) = delete;
    ~slot() { reset(); }

   private:
    friend class write_behind;
    explicit slot(write_behind* owner) : owner_(owner) {}
    void reset() noexcept;
    write_behind* owner_ = nullptr;
  };

  // Waits while `max_pending` ops are queued, unless `may_wait` is false or the calling thread is
  // a worker of a write_behind (then the queue may exceed max_pending). Call it before taking a
  // lock that a callback on a worker thread could need.
  slot reserve(bool may_wait = true);
  // Queues `op` in the room `room` holds (never waits).
  void submit(write_op op, slot room);
  // reserve() then submit().
  void submit(write_op op) { submit(std::move(op), reserve()); }

  // fence: a copy not newer than *fence must not be served, and a newer one may. Either a
  // conditional delete decides the key (it will remove only what is not newer than it: reporting
  // it as a del would hide a newer value the layers keep, which readers would see again once the
  // delete ran), or no write of ours decides it but one did until a fill of the key superseded it
  // and failed too (until the fill lands, a layer may still hold what that write replaced).
  enum class pending_kind : unsigned char { none, set, del, fence };
  // The op deciding `key` among those not yet executed or still retried (highest version, then
  // the latest). For a set, *bytes receives layer 0's envelope; *fence (if given) the version a
  // fence kind names.
  pending_kind pending(std::string_view key, std::uint64_t hash,
                       std::shared_ptr<const std::string>* bytes,
                       std::uint64_t* fence = nullptr) const;

  // Makes every key starting with `from` that has an op pending also report it under `to` + the
  // rest of the key, until that op is done: a namespace moved to a new generation while writes of
  // its old one are still on their way (the shared layer moves them to the new one, lua_write),
  // and reads of the new keys must see them meanwhile.
  void alias_pending(std::string_view from, std::string_view to);

  // The keys with an op not yet executed or still retried (local-only ops excluded) that `match`
  // accepts.
  std::vector<std::string> pending_keys(const std::function<bool(std::string_view)>& match) const;

  enum class flush_scope : unsigned char {
    attempted,  // every op submitted before the call has been attempted once
    settled,    // ... and every failed op has landed, been superseded or been given up
  };
  // Waits until `scope` holds or the timeout passes; returns whether it held. `attempted` keeps
  // a flush quick while a layer is down (the stack's group invalidations flush first); the
  // destructor waits for `settled`. On a worker thread it does not wait (it would wait for itself).
  bool flush(std::chrono::milliseconds timeout, flush_scope scope = flush_scope::attempted);

  std::uint64_t dropped() const noexcept { return dropped_.load(std::memory_order_relaxed); }
  std::uint64_t queued() const noexcept { return queued_.load(std::memory_order_relaxed); }
  // Failed writes (per key and layer) awaiting a retry.
  std::uint64_t retained() const noexcept { return retained_.load(std::memory_order_relaxed); }

 private:
  // A key's failed writes awaiting a retry, per layer (write_retry.cpp).
  struct retained_slot {
    std::shared_ptr<write_op> op;  // null: nothing owed to this layer
    // When the op is given up; max() for a conditional delete owed after giving up a write.
    std::chrono::steady_clock::time_point give_up;
    bool failed_now = false;  // scratch of settle()
  };
  struct retained_key {
    std::uint64_t hash = 0;
    std::vector<retained_slot> layers;  // per byte layer
    std::chrono::steady_clock::time_point due;
    std::chrono::milliseconds backoff{0};
  };
  using retained_map = std::unordered_map<std::string, retained_key>;
  struct queue {
    std::mutex mu;
    std::condition_variable_any cv;
    std::deque<write_op> ops;
    std::uint64_t submitted = 0;  // ops ever pushed
    std::uint64_t executed = 0;   // ops ever finished
    std::size_t retained = 0;     // failed writes of this queue awaiting retry (guarded by mu)
    bool retry_now = false;       // a failing layer recovered: retry what is held (guarded by mu)
    std::condition_variable drained;
    // Failed writes by key, owned by the queue's worker (no lock), and the earliest retry due.
    retained_map failed;
    std::chrono::steady_clock::time_point next_retry = std::chrono::steady_clock::time_point::max();
  };
  struct pending_entry {
    std::uint64_t version = 0;  // of the deciding op
    std::uint64_t seq = 0;
    std::size_t outstanding = 0;
    pending_kind kind = pending_kind::none;
    std::shared_ptr<const std::string> bytes;
    // The highest version a registered conditional delete, or write_op::fences of a registered
    // fill, fences.
    std::uint64_t fence = 0;
    // An alias (alias_pending) reports another key's entry; that entry lists its aliases, which
    // go when it does.
    bool alias = false;
    std::string alias_of;              // an alias: the key whose entry it reports
    std::vector<std::string> aliases;  // not an alias: its aliases
  };
  struct pending_shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, pending_entry> map;
  };
  // One key's share of a batch: its ops, its retained failures, and per layer the op that
  // decides the layer and that op's result.
  struct key_plan {
    std::string_view key;
    std::uint64_t hash = 0;
    std::vector<write_op*> ops;      // the batch's ops of the key, in queue order
    retained_key* held = nullptr;    // its failed writes awaiting retry, if any
    std::vector<write_op*> decider;  // per layer, or null
    std::vector<status> outcome;     // per layer: the decider's result
  };
  // Whether an op of (version, seq) decides over one of (other_version, other_seq).
  static bool wins(std::uint64_t version, std::uint64_t seq, std::uint64_t other_version,
                   std::uint64_t other_seq) noexcept {
    return version > other_version || (version == other_version && seq > other_seq);
  }

  void run(std::stop_token stop, queue& q);
  void execute(std::vector<write_op>& batch, queue& q, bool retries_due);
  void execute_layer(std::size_t j, std::vector<key_plan*>& plans);
  void execute_coordinated(std::vector<key_plan*>& plans);
  void register_pending(const write_op& op);
  // Wakes every queue holding failed writes to retry them at once, backoff or not.
  void retry_all_now();
  void drop_alias(const std::string& key);
  // The entry of `key` for an op of its own (requires ps.mu).
  static pending_entry& claim(pending_shard& ps, const std::string& key);
  void register_fence(const write_op& fill);
  void retire(const write_op& op);
  pending_shard& pending_for(std::uint64_t hash) const { return pending_[hash % pending_count]; }

  // ---- retries (write_retry.cpp) ----
  // Adds the retained ops of `q` to `plans` (those of keys in the batch, and those due).
  void add_retained(queue& q, std::unordered_map<std::string_view, key_plan>& plans,
                    bool retries_due);
  // Keeps what failed, forgets what landed or was superseded, gives up what is past retry_for.
  void settle(queue& q, std::vector<key_plan*>& plans);
  // Drops every retained op of `q` (shutdown).
  void drop_retained(queue& q);
  void report_drop(std::size_t layer, std::string_view key, std::uint64_t hash, const status& why);
  void set_retained_count(queue& q, std::ptrdiff_t delta);

  static constexpr std::size_t pending_count = 16;
  std::vector<byte_layer*> layers_;
  // Per layer: a write to it failed since one last landed (retry_all_now when one lands again).
  std::unique_ptr<std::atomic<bool>[]> failing_;
  options opts_;
  error_sink on_error_;
  write_sink on_write_;
  reject_sink on_reject_;
  drop_sink on_drop_;
  std::unique_ptr<queue[]> queues_;
  mutable std::unique_ptr<pending_shard[]> pending_;
  std::atomic<std::uint64_t> seq_{0};
  std::atomic<std::uint64_t> dropped_{0};
  std::atomic<std::uint64_t> queued_{0};
  std::atomic<std::uint64_t> retained_{0};
  std::mutex space_mu_;
  std::condition_variable space_cv_;
  std::vector<std::jthread> workers_;  // last: started after everything they use exists
};

}  // namespace layercache::detail
