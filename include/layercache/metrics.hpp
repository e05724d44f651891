// metrics.hpp — counters and latency summaries of a cache_stack, read as a snapshot.
//
//   layercache::metrics_snapshot m = cache.metrics();
//   for (const auto& l : m.layers) fmt::print("{}: {} hits, p99 {} ns\n", l.name, l.hits,
//                                              l.read_latency.p99_ns);
//
// Counters are cumulative since the stack was built. Taking a snapshot locks each memory-layer
// shard briefly in turn (it never stops the whole cache) and is meant for a scrape every few
// seconds, not for every request. Latencies are recorded in a log-linear histogram (8 sub-buckets
// per power of two, so a percentile is within 12.5 % of the true value). L1 hit latency is sampled:
// one hit in 64 per thread is timed, because timing every hit would cost as much as the hit itself.
//
// Thread-safety: metrics_snapshot is a plain value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace layercache {

struct latency_summary {
  std::uint64_t count = 0;  // samples recorded
  std::uint64_t p50_ns = 0;
  std::uint64_t p99_ns = 0;
  std::uint64_t max_ns = 0;  // upper bound of the highest non-empty bucket
};

struct layer_metrics {
  std::string name;
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t errors = 0;         // failed reads or writes (backend trouble, corrupt bytes)
  std::uint64_t writes = 0;         // successful writes (byte layers: entries written)
  std::uint64_t evictions = 0;      // removed by the size policy (memory layer)
  std::uint64_t expirations = 0;    // found expired and dropped
  std::uint64_t entries = 0;        // resident now (memory layer; 0 where unknown)
  std::uint64_t bytes = 0;          // weighed bytes resident now (memory layer)
  std::uint64_t timeouts = 0;       // operations that missed their deadline (remote layers)
  std::uint64_t breaker_opens = 0;  // times the circuit breaker opened (remote layers)
  std::string breaker_state;        // "closed", "open", "half_open"; empty without a breaker
  latency_summary read_latency;
};

struct metrics_snapshot {
  std::vector<layer_metrics> layers;  // in stack order
  std::uint64_t fetches = 0;          // fetcher calls (a get_many batch counts once)
  std::uint64_t fetch_errors = 0;     // fetcher calls that threw
  std::uint64_t dedupes = 0;  // callers that waited on another caller's fetch instead of fetching
  std::uint64_t wait_timeouts = 0;   // waiters that gave up at their wait_deadline
  std::uint64_t negative_hits = 0;   // hits on a cached "not found"
  std::uint64_t stale_fills = 0;     // fetched values not stored because an invalidation raced them
  std::uint64_t pending_writes = 0;  // background byte-layer writes queued now
  // Failed byte-layer writes kept for a retry now, one per key and layer (write_retry_for).
  std::uint64_t retained_writes = 0;
  // Entries read from a byte layer that held another type or schema (a rolling deploy, codec.hpp):
  // each is also a miss of its layer. One per entry read: a get may read one twice (Redis answers
  // a cold miss's lease request with the entry, and is asked once more).
  std::uint64_t schema_misses = 0;
  // Distributed coherence (a coordinating Redis layer in the stack):
  std::uint64_t lease_grants = 0;     // cold misses this instance fetched under a lease
  std::uint64_t lease_waits = 0;      // cold misses that waited for another instance's fetch
  std::uint64_t lease_takeovers = 0;  // waits that outlasted lease_wait and took the lease over
  std::uint64_t coordination_fallbacks = 0;  // misses coordinated only within the process
  std::uint64_t cas_rejections = 0;          // writes refused because a newer version was stored
  std::uint64_t bus_received = 0;            // invalidation messages applied from other instances
  std::uint64_t bus_resyncs = 0;  // times L1 was dropped because messages may have been lost
  latency_summary fetch_latency;
};

}  // namespace layercache
