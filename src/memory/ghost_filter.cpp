#include "memory/ghost_filter.hpp"

#include <algorithm>
#include <bit>
#include <limits>

namespace layercache::detail {
namespace {

std::uint32_t fingerprint_of(std::uint64_t hash) noexcept {
  return static_cast<std::uint32_t>(hash >> 32) | 1U;  // never 0, the empty mark
}

}  // namespace

ghost_filter::ghost_filter(std::size_t span)
    : span_(static_cast<std::uint32_t>(
          std::clamp<std::size_t>(span, 1, std::numeric_limits<std::uint32_t>::max() / 8))) {
  const std::size_t n = std::bit_ceil(std::max<std::size_t>(std::size_t{4} * span_, 16));
  slots_ = std::make_unique<slot[]>(n);
  mask_ = n - 1;
}

void ghost_filter::add(std::uint64_t hash) noexcept {
  ++seq_;
  std::size_t oldest = hash & mask_;
  std::uint32_t oldest_age = 0;
  for (std::size_t i = 0; i < probes; ++i) {
    const std::size_t k = (hash + i) & mask_;
    const std::uint32_t age = slots_[k].fingerprint == 0 ? std::numeric_limits<std::uint32_t>::max()
                                                         : seq_ - slots_[k].seq;
    if (age >= oldest_age) {
      oldest_age = age;
      oldest = k;
    }
  }
  slots_[oldest] = {fingerprint_of(hash), seq_};
}

bool ghost_filter::take(std::uint64_t hash) noexcept {
  const std::uint32_t fingerprint = fingerprint_of(hash);
  for (std::size_t i = 0; i < probes; ++i) {
    slot& s = slots_[(hash + i) & mask_];
    if (s.fingerprint == fingerprint && seq_ - s.seq < span_) {
      s.fingerprint = 0;
      return true;
    }
  }
  return false;
}

}  // namespace layercache::detail
