// detail/hash.hpp — the key hash used for sharding (memory layer, single-flight table).
// Not API. A wyhash-style function: short keys (the common case) are read with at most four
// overlapping loads and no byte loop, longer ones 16 bytes per step. Keys are hashed once per call,
// on the L1 hit path, so every instruction here shows up in the hit latency.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace layercache::detail {

inline std::uint64_t mix64(std::uint64_t a, std::uint64_t b) noexcept {
  __uint128_t r = static_cast<__uint128_t>(a) * b;
  return static_cast<std::uint64_t>(r) ^ static_cast<std::uint64_t>(r >> 64);
}

inline std::uint64_t load64(const char* p) noexcept {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline std::uint64_t load32(const char* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline std::uint64_t hash_key(std::string_view key) noexcept {
  constexpr std::uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull;
  const char* p = key.data();
  const std::size_t n = key.size();
  std::uint64_t seed = k0 ^ n;
  std::uint64_t a = 0, b = 0;
  if (n <= 16) {
    if (n >= 4) {
      const std::size_t step = (n >> 3) << 2;  // 0 for 4..7 bytes, 4 for 8..16
      a = (load32(p) << 32) | load32(p + step);
      b = (load32(p + n - 4) << 32) | load32(p + n - 4 - step);
    } else if (n > 0) {
      a = (static_cast<std::uint64_t>(static_cast<unsigned char>(p[0])) << 16) |
          (static_cast<std::uint64_t>(static_cast<unsigned char>(p[n >> 1])) << 8) |
          static_cast<unsigned char>(p[n - 1]);
    }
  } else {
    std::size_t i = n;
    while (i > 16) {
      seed = mix64(load64(p) ^ k1, load64(p + 8) ^ seed);
      p += 16;
      i -= 16;
    }
    a = load64(p + i - 16);
    b = load64(p + i - 8);
  }
  return mix64(k1 ^ n, mix64(a ^ k1, b ^ seed));
}

// Key equality without a libc call for keys up to 16 bytes (two overlapping 8-byte compares).
inline bool keys_equal(std::string_view x, std::string_view y) noexcept {
  const std::size_t n = x.size();
  if (n != y.size()) return false;
  if (n >= 8 && n <= 16) {
    return load64(x.data()) == load64(y.data()) &&
           load64(x.data() + n - 8) == load64(y.data() + n - 8);
  }
  return std::memcmp(x.data(), y.data(), n) == 0;
}

}  // namespace layercache::detail
