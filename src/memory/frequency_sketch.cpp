#include "memory/frequency_sketch.hpp"

#include <algorithm>
#include <bit>

namespace layercache::detail {
namespace {

// The table never exceeds 2^22 blocks (256 MiB) however large the bound it serves: beyond that the
// sketch is already far more precise than the admission decision needs.
constexpr std::size_t max_blocks = std::size_t{1} << 22;

// Re-mixes the key hash: the shard and bucket already consumed its high and low bits, and the
// counters must not be correlated with either.
std::uint64_t remix(std::uint64_t h) noexcept {
  h ^= h >> 31;
  h *= 0x9e3779b97f4a7c15ULL;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 32;
  return h;
}

// Counter `depth` (0–3) of a key within its block: word 2·depth or 2·depth+1 (so the four counters
// are in four different words and never alias each other), nibble from 4 more hash bits.
struct counter_ref {
  unsigned word;
  unsigned shift;
};
counter_ref counter_of(std::uint64_t h, unsigned depth) noexcept {
  const auto bits = static_cast<unsigned>(h >> (40 + depth * 5));
  return {(depth << 1) | (bits & 1U), ((bits >> 1) & 15U) << 2};
}

}  // namespace

frequency_sketch::frequency_sketch(std::size_t capacity, std::size_t sample_size) {
  // 8 bytes (16 counters) per entry of capacity, as 64-byte blocks of 8 words.
  const std::size_t wanted = std::max<std::size_t>(capacity, 8) / 8;
  const std::size_t blocks = std::min(std::bit_ceil(std::max<std::size_t>(wanted, 1)), max_blocks);
  blocks_ = std::make_unique<block[]>(blocks);
  block_mask_ = blocks - 1;
  sample_size_ = sample_size != 0 ? sample_size : 10 * std::max<std::size_t>(capacity, 1);
}

void frequency_sketch::increment(std::uint64_t hash) noexcept {
  const std::uint64_t h = remix(hash);
  block& b = blocks_[h & block_mask_];
  bool added = false;
  for (unsigned depth = 0; depth < 4; ++depth) {
    const counter_ref c = counter_of(h, depth);
    if (((b.words[c.word] >> c.shift) & 15U) != 15U) {
      b.words[c.word] += std::uint64_t{1} << c.shift;
      added = true;
    }
  }
  if (added && ++additions_ >= sample_size_) age();
}

unsigned frequency_sketch::estimate(std::uint64_t hash) const noexcept {
  const std::uint64_t h = remix(hash);
  const block& b = blocks_[h & block_mask_];
  unsigned least = 15;
  for (unsigned depth = 0; depth < 4; ++depth) {
    const counter_ref c = counter_of(h, depth);
    least = std::min(least, static_cast<unsigned>((b.words[c.word] >> c.shift) & 15U));
  }
  return least;
}

void frequency_sketch::age() noexcept {
  // Halving every counter loses the low bit of the odd ones; a key's four counters each lose it, so
  // a quarter of the odd counters approximates the increments that vanished with them.
  constexpr std::uint64_t low_bits = 0x1111111111111111ULL;
  constexpr std::uint64_t keep_bits = 0x7777777777777777ULL;
  std::size_t odd = 0;
  for (std::size_t i = 0; i <= block_mask_; ++i) {
    for (std::uint64_t& w : blocks_[i].words) {
      odd += static_cast<std::size_t>(std::popcount(w & low_bits));
      w = (w >> 1) & keep_bits;
    }
  }
  additions_ = (additions_ - std::min(additions_, odd / 4)) / 2;
  ++agings_;
}

}  // namespace layercache::detail
