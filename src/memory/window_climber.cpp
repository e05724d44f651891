#include "memory/window_climber.hpp"

#include <algorithm>
#include <cmath>

namespace layercache::detail {
namespace {

// Caffeine's defaults (BoundedLocalCache), which its authors chose on a wide set of traces; they
// are not fitted to ours.
constexpr double initial_main_share = 0.99;
constexpr double step_share = 0.0625;
constexpr double restart_threshold = 0.05;
constexpr double step_decay = 0.98;

constexpr std::uint64_t hits_mask = 0xffffffffULL;

}  // namespace

window_climber::window_climber(std::size_t capacity)
    : capacity_(static_cast<double>(std::max<std::size_t>(capacity, 1))),
      // Kept below 2^31 so a sample's request count cannot overflow its 32 bits.
      sample_size_(std::min<std::size_t>(10 * std::max<std::size_t>(capacity, 1), 1U << 30)),
      share_(0.0),
      window_entries_(capacity_ - std::floor(initial_main_share * capacity_)),
      step_(-step_share * capacity_) {
  share_.store(window_entries_ / capacity_, std::memory_order_relaxed);
}

void window_climber::record(std::uint32_t requests, std::uint32_t hits) noexcept {
  const std::uint64_t batch = (std::uint64_t{requests} << 32) | hits;
  const std::uint64_t before = sample_.fetch_add(batch, std::memory_order_relaxed);
  if (((before + batch) >> 32) < sample_size_) return;
  // The sample is complete: the first batch to get the flag takes it (with whatever was added
  // since); a thread that finds it already taken puts its partial sample back.
  if (climbing_.exchange(true, std::memory_order_acquire)) return;
  const std::uint64_t taken = sample_.exchange(0, std::memory_order_relaxed);
  if ((taken >> 32) >= sample_size_) {
    climb(taken >> 32, taken & hits_mask);
  } else {
    sample_.fetch_add(taken, std::memory_order_relaxed);
  }
  climbing_.store(false, std::memory_order_release);
}

void window_climber::climb(std::uint64_t requests, std::uint64_t hits) noexcept {
  if (requests == 0) return;
  const double hit_ratio = static_cast<double>(hits) / static_cast<double>(requests);
  const double change = hit_ratio - previous_hit_ratio_;
  // Keep going while the hit ratio does not fall; turn round when it does.
  const double amount = change >= 0 ? step_ : -step_;
  step_ = std::abs(change) >= restart_threshold
              ? step_share * capacity_ * (amount >= 0 ? 1.0 : -1.0)
              : step_decay * amount;
  previous_hit_ratio_ = hit_ratio;
  // Whole entries, as Caffeine moves them: a step decayed below one entry stops moving.
  const double delta = std::trunc(amount);
  if (delta == 0) return;
  window_entries_ = std::clamp(window_entries_ + delta, 1.0, std::max(capacity_ - 1.0, 1.0));
  share_.store(window_entries_ / capacity_, std::memory_order_relaxed);
}

}  // namespace layercache::detail
