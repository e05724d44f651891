// detail/hash.hpp — the key hash used for sharding (memory layer, single-flight table).
// Not API. A wyhash-style mix reading 8 bytes at a time: keys are hashed once per call, on the L1 hit
// path, so this must be fast for typical 10–100 byte keys.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace layercache::detail {

inline std::uint64_t mix64(std::uint64_t a, std::uint64_t b) noexcept {
  __uint128_t r = static_cast<__uint128_t>(a) * b;
  return static_cast<std::uint64_t>(r) ^ static_cast<std::uint64_t>(r >> 64);
}

inline std::uint64_t hash_key(std::string_view key) noexcept {
  constexpr std::uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull,
                          k2 = 0x8ebc6af09c88c6e3ull;
  const char* p = key.data();
  std::size_t n = key.size();
  std::uint64_t h = k0 ^ n;
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    h = mix64(h ^ w, k1);
    p += 8;
    n -= 8;
  }
  std::uint64_t tail = 0;
  if (n > 0) std::memcpy(&tail, p, n);
  return mix64(h ^ tail ^ k2, k1 ^ n);
}

}  // namespace layercache::detail
