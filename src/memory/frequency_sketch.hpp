// frequency_sketch.hpp — how often each key was seen recently, in a few bits per cache entry: the
// admission filter of the W-TinyLFU policy (Einziger, Friedman, Manes: "TinyLFU: A Highly Efficient
// Cache Admission Policy", 2017).
//
// A count-min sketch of depth 4 with 4-bit counters (saturating at 15). A key's estimate is the
// minimum of its four counters, so it never under-counts what was recorded for the key since the
// last aging; collisions can only over-count. The four counters of a key live in one 64-byte block
// (a "blocked" sketch), so an increment or an estimate touches one cache line — it runs on the L1
// hit path. Aging: after sample_size() increments (10 × the capacity it was built for) every
// counter is halved, so the sketch follows a changing workload instead of remembering forever.
//
// Not thread-safe: used under the owning shard's lock. Allocates only in the constructor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace layercache::detail {

class frequency_sketch {
 public:
  // capacity: the number of entries of the cache the sketch serves (sizes the table: 8 bytes per
  // entry, like Caffeine's, rounded up to a power of two and to at least one block).
  // sample_size: increments between two agings; 0 means 10 × capacity (the TinyLFU paper's
  // choice: long enough for the counts to rank keys, short enough to forget a past phase).
  explicit frequency_sketch(std::size_t capacity, std::size_t sample_size = 0);

  // Records one access of the key with this (well mixed, 64-bit) hash. Never allocates.
  void increment(std::uint64_t hash) noexcept;
  // The key's estimated accesses since the last aging (halved by each aging), 0–15.
  unsigned estimate(std::uint64_t hash) const noexcept;

  // Increments between two agings.
  std::size_t sample_size() const noexcept { return sample_size_; }
  // How many times the counters were halved so far (for tests and diagnostics).
  std::uint64_t agings() const noexcept { return agings_; }

 private:
  struct alignas(64) block {
    std::uint64_t words[8];
  };
  void age() noexcept;

  std::unique_ptr<block[]> blocks_;
  std::size_t block_mask_ = 0;
  std::size_t sample_size_ = 0;
  std::size_t additions_ = 0;  // increments that raised at least one counter, since the last aging
  std::uint64_t agings_ = 0;
};

}  // namespace layercache::detail
