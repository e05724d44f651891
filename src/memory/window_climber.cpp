#include "memory/window_climber.hpp"

#include <algorithm>
#include <cmath>

namespace layercache::detail {
namespace {

// Caffeine's initial split (BoundedLocalCache): 1 % window, 99 % main.
constexpr double initial_main_share = 0.99;

constexpr std::uint64_t low_mask = 0xffffffffULL;

}  // namespace

window_climber::window_climber(std::size_t capacity)
    : capacity_(static_cast<double>(std::max<std::size_t>(capacity, 1))),
      // Kept below 2^31 so a sample's request count cannot overflow its 32 bits.
      sample_size_(std::min<std::size_t>(10 * std::max<std::size_t>(capacity, 1), 1U << 30)),
      share_(0.0),
      window_entries_(capacity_ - std::floor(initial_main_share * capacity_)) {
  share_.store(window_entries_ / capacity_, std::memory_order_relaxed);
}

void window_climber::record(std::uint32_t requests, std::uint32_t window_ghost_hits,
                            std::uint32_t main_ghost_hits) noexcept {
  if (main_ghost_hits != 0) main_ghost_hits_.fetch_add(main_ghost_hits, std::memory_order_relaxed);
  const std::uint64_t batch = (std::uint64_t{requests} << 32) | window_ghost_hits;
  const std::uint64_t before = sample_.fetch_add(batch, std::memory_order_relaxed);
  if (((before + batch) >> 32) < sample_size_) return;
  // The sample is complete: the first batch to get the flag takes it (with whatever was added
  // since); a thread that finds it already taken puts its partial sample back.
  if (stepping_.exchange(true, std::memory_order_acquire)) return;
  const std::uint64_t taken = sample_.exchange(0, std::memory_order_relaxed);
  if ((taken >> 32) >= sample_size_) {
    // The two counters are taken a moment apart: a batch may land in the next sample's main
    // count. The step only needs the proportion.
    const std::uint64_t main = main_ghost_hits_.exchange(0, std::memory_order_relaxed);
    step(static_cast<double>(taken & low_mask), static_cast<double>(main));
  } else {
    sample_.fetch_add(taken, std::memory_order_relaxed);
  }
  stepping_.store(false, std::memory_order_release);
}

void window_climber::step(double window_ghost_hits, double main_ghost_hits) noexcept {
  const double evidence = window_ghost_hits + main_ghost_hits;
  if (evidence == 0) return;  // neither a larger window nor a larger main would have hit
  // Whole entries, as Caffeine moves them.
  const double delta =
      std::trunc(step_share * capacity_ * (window_ghost_hits - main_ghost_hits) / evidence);
  if (delta == 0) return;
  window_entries_ = std::clamp(window_entries_ + delta, 1.0, std::max(capacity_ - 1.0, 1.0));
  share_.store(window_entries_ / capacity_, std::memory_order_relaxed);
}

}  // namespace layercache::detail
