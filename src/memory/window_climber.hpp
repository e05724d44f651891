// window_climber.hpp — the hill climber that sizes W-TinyLFU's window, one per memory layer.
//
// A frequency-biased workload wants a tiny window; a recency-biased one (keys used in short bursts
// and then never) wants a large one. Every sample (10 × the layer's capacity requests, counted
// once the cache is full) the climber compares the sample's hit ratio with the previous one and
// moves the window one step in the direction that improved it, or back if it got worse. The step
// is 6.25 % of capacity after a change in hit ratio of 5 points or more, and otherwise decays by
// 2 % per sample so the size settles (Caffeine ≥ 2.7's climber, with its defaults). The window
// starts at 1 % of capacity.
//
// One climber serves all shards of a layer, so its sample is the whole layer's traffic: per-shard
// climbers would decide on samples a shard-count times smaller, whose noise alone moves the window.
// Shards report their requests in batches (one atomic add per batch, off the common hit) and read
// the window's share of capacity when they insert.
//
// Thread-safe: record() and window_share() may be called from any thread; the climb step runs on
// the thread whose batch completes a sample.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace layercache::detail {

class window_climber {
 public:
  // capacity: the layer's entry bound.
  explicit window_climber(std::size_t capacity);

  // Adds a batch of `requests` (of which `hits` hit) from one shard; runs a climb step when the
  // batch completes a sample.
  void record(std::uint32_t requests, std::uint32_t hits) noexcept;
  // The window's current share of capacity, in (0, 1).
  double window_share() const noexcept { return share_.load(std::memory_order_relaxed); }
  // Requests per climb step.
  std::size_t sample_size() const noexcept { return sample_size_; }

 private:
  void climb(std::uint64_t requests, std::uint64_t hits) noexcept;

  double capacity_;
  std::size_t sample_size_;
  // Requests in the high 32 bits, hits in the low 32: a batch is one fetch_add.
  std::atomic<std::uint64_t> sample_{0};
  std::atomic<double> share_;
  std::atomic<bool> climbing_{false};
  // Owned by the thread running climb() (climbing_ held).
  double window_entries_;
  double previous_hit_ratio_ = 0.0;
  double step_;
};

}  // namespace layercache::detail
