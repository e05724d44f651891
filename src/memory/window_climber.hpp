// window_climber.hpp — the hill climber that sizes W-TinyLFU's window, one per memory layer.
//
// A frequency-biased workload wants a tiny window; a recency-biased one (keys used in short bursts
// and then never) wants a large one. The climber moves the window's share of capacity in steps of
// 6.25 % of capacity (Caffeine's step), one step per sample of 10 × capacity requests, in the
// direction that would have hit more during the sample.
//
// Which direction that is, is measured on the sample's own requests rather than inferred from the
// change in hit ratio between consecutive samples (Caffeine's climber). Each shard remembers, in
// two ghost filters, the keys it recently evicted from the window side (newcomers that lost the
// admission contest) and from main, as many as one step of capacity. A miss on a window ghost is a
// hit a window one step larger would have had; a miss on a main ghost is a hit a main one step
// larger would have had. The step is scaled by (window ghost hits − main ghost hits) / (their
// sum), so the window settles where the two margins balance and stays put when neither side
// would gain (as on a loop). Comparing consecutive samples instead mistakes a workload's phase
// changes for the effect of the last step: on the sprite trace at 100 entries the per-sample
// hit ratio swings between about 6 % and 77 %, and Caffeine's rule walked the window at random
// between 1 % and 99 %.
//
// The window starts at 1 % of capacity. One climber serves all shards of a layer, so a step is
// decided on the whole layer's traffic. Shards report in batches (two atomic adds per batch, off
// the common hit) and read the window's share of capacity when they insert.
//
// Thread-safe: record() and window_share() may be called from any thread; a step runs on the
// thread whose batch completes a sample.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace layercache::detail {

class window_climber {
 public:
  // Caffeine's step, also the span of the shards' ghost filters.
  static constexpr double step_share = 0.0625;

  // capacity: the layer's entry bound.
  explicit window_climber(std::size_t capacity);

  // Adds a shard's batch: `requests` requests, of which `window_ghost_hits` missed on a key the
  // window side had evicted within one step and `main_ghost_hits` on one main had. Runs a step
  // when the batch completes a sample.
  void record(std::uint32_t requests, std::uint32_t window_ghost_hits,
              std::uint32_t main_ghost_hits) noexcept;
  // The window's current share of capacity, in (0, 1).
  double window_share() const noexcept { return share_.load(std::memory_order_relaxed); }
  // Requests per step.
  std::size_t sample_size() const noexcept { return sample_size_; }

 private:
  void step(double window_ghost_hits, double main_ghost_hits) noexcept;

  double capacity_;
  std::size_t sample_size_;
  // Requests in the high 32 bits, window ghost hits in the low 32: a batch is one fetch_add.
  std::atomic<std::uint64_t> sample_{0};
  std::atomic<std::uint64_t> main_ghost_hits_{0};
  std::atomic<double> share_;
  std::atomic<bool> stepping_{false};
  double window_entries_;  // owned by the thread holding stepping_
};

}  // namespace layercache::detail
