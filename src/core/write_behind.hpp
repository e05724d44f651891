// write_behind.hpp — byte-layer writes off the caller's path, in order per key.
//
// Concurrency: ops are routed to one of `threads` worker queues by key hash, so every op on a key
// is executed by the same worker in submission order. A worker drains up to `batch` ops at a time,
// keeps only the last op per key (a later set or del supersedes an earlier one: same final state,
// fewer round trips), and sends the sets of a batch as one set_many and the dels as one del_many
// per layer (one pipeline each for Redis). Read-your-writes: until an op has run, pending() reports
// it (latest op per key), and the stack's readers consult it before reading a byte layer, so a
// process never reads older data than it wrote. Backpressure: submit() blocks while `max_pending`
// ops are queued (dropping a delete would leave a stale value behind, so nothing is dropped while
// the stack lives). Shutdown: the destructor waits up to `flush_timeout` for the queues to drain,
// then stops the workers; ops still queued then are dropped, counted (`dropped`) and reported
// through the error sink as an `unavailable` failure of each layer they were meant for. Invariants:
// an op's ticket, if any, is completed exactly once (after it ran, or when dropped).
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
  // For the coordinating layer (coordinator.hpp):
  bool fill = false;              // set: a fetched/backfilled value (not announced), not a mutation
  std::string lease;              // fill: the lease it fills and releases
  std::uint64_t version = 0;      // del: the tombstone's version
  std::vector<std::string> tags;  // set: tag sets the key joins
  bool local_only = false;  // skip the coordinating layer (applying another instance's change)
};

class write_behind {
 public:
  struct options {
    std::size_t threads = 2;
    std::size_t max_pending = 65536;
    std::size_t batch = 256;
    std::chrono::milliseconds flush_timeout{2000};
    // The coordinating layer, written through the coordinator instead of set_many/del_many.
    coordinator* coord = nullptr;
    std::size_t coord_at = static_cast<std::size_t>(-1);
  };
  // Called on a worker thread for every failed layer write (for metrics and events).
  using error_sink = std::function<void(std::size_t layer, std::string_view key, const status&)>;
  using write_sink = std::function<void(std::size_t layer, std::size_t count)>;
  // Called on a worker thread for a write the coordinating layer refused (a newer version there).
  using reject_sink = std::function<void(std::string_view key, std::uint64_t hash)>;

  write_behind(std::vector<byte_layer*> layers, options opts, error_sink on_error,
               write_sink on_write, reject_sink on_reject = {});
  ~write_behind();
  write_behind(const write_behind&) = delete;
  write_behind& operator=(const write_behind&) = delete;

  void submit(write_op op);

  enum class pending_kind : unsigned char { none, set, del };
  // The latest op on `key` not yet executed. For a set, *bytes receives layer 0's envelope.
  pending_kind pending(std::string_view key, std::uint64_t hash,
                       std::shared_ptr<const std::string>* bytes) const;

  // The keys with an op not yet executed (local-only ops excluded) that `match` accepts.
  std::vector<std::string> pending_keys(const std::function<bool(std::string_view)>& match) const;

  // Waits until every op submitted before the call has run, or the timeout passes.
  bool flush(std::chrono::milliseconds timeout);

  std::uint64_t dropped() const noexcept { return dropped_.load(std::memory_order_relaxed); }
  std::uint64_t queued() const noexcept { return queued_.load(std::memory_order_relaxed); }

 private:
  struct queue {
    std::mutex mu;
    std::condition_variable_any cv;
    std::deque<write_op> ops;
    std::uint64_t submitted = 0;  // ops ever pushed
    std::uint64_t executed = 0;   // ops ever finished
    std::condition_variable drained;
  };
  struct pending_entry {
    std::uint64_t latest_seq = 0;
    std::size_t outstanding = 0;
    pending_kind kind = pending_kind::none;
    std::shared_ptr<const std::string> bytes;
  };
  struct pending_shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, pending_entry> map;
  };

  void run(std::stop_token stop, queue& q);
  void execute(std::vector<write_op>& batch);
  void execute_coordinated(std::vector<write_op>& batch,
                           const std::unordered_map<std::string_view, std::size_t>& last,
                           std::vector<status>& result);
  void retire(const write_op& op);
  pending_shard& pending_for(std::uint64_t hash) const { return pending_[hash % pending_count]; }

  static constexpr std::size_t pending_count = 16;
  std::vector<byte_layer*> layers_;
  options opts_;
  error_sink on_error_;
  write_sink on_write_;
  reject_sink on_reject_;
  std::unique_ptr<queue[]> queues_;
  mutable std::unique_ptr<pending_shard[]> pending_;
  std::atomic<std::uint64_t> seq_{0};
  std::atomic<std::uint64_t> dropped_{0};
  std::atomic<std::uint64_t> queued_{0};
  std::mutex space_mu_;
  std::condition_variable space_cv_;
  std::vector<std::jthread> workers_;  // last: started after everything they use exists
};

}  // namespace layercache::detail
