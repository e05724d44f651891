// verified_value.hpp — self-verifying values for the disk layer's crash and persistence tests.
//
// A value written for sequence number i carries i, a payload derived from (seed, i) and a checksum
// over both, so a reader can tell a whole value from a torn, mixed or foreign one without knowing
// what was written:  [i: 8 bytes LE][payload size: 4 bytes LE][payload][FNV-1a 64 of all before].
// Shared by the helper executable (the writer) and tests/integration/disk_layer_test.cpp.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace layercache::test::disk {

inline std::uint64_t fnv1a64(std::string_view bytes) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

inline void append_le(std::string& out, std::uint64_t v, std::size_t bytes) {
  for (std::size_t i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

inline std::uint64_t read_le(std::string_view in, std::size_t at, std::size_t bytes) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < bytes; ++i) {
    v |= static_cast<std::uint64_t>(static_cast<unsigned char>(in[at + i])) << (8 * i);
  }
  return v;
}

// The key under which sequence number i is written: writers cycle over `key_space` keys, so later
// writes overwrite earlier ones.
inline std::string key_for(std::uint64_t i, std::uint64_t key_space) {
  return "crash/" + std::to_string(i % key_space);
}

// The value for sequence number i: 100..(100 + max_extra) payload bytes, pseudo-random (barely
// compressible, so flushes produce real table files).
inline std::string make_value(std::uint64_t i, std::uint64_t seed, std::size_t max_extra = 4000) {
  std::uint64_t x = (seed ^ (i * 0x9E3779B97F4A7C15ull)) | 1u;
  auto next = [&x] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  const std::size_t size = 100 + static_cast<std::size_t>(next() % (max_extra + 1));
  std::string out;
  out.reserve(size + 20);
  append_le(out, i, 8);
  append_le(out, size, 4);
  while (out.size() < 12 + size) out.push_back(static_cast<char>(next() & 0xFF));
  append_le(out, fnv1a64(out), 8);
  return out;
}

// The sequence number of a whole, valid value; nullopt for anything torn or foreign.
inline std::optional<std::uint64_t> verify_value(std::string_view v) {
  if (v.size() < 20) return std::nullopt;
  const std::uint64_t size = read_le(v, 8, 4);
  if (v.size() != 12 + size + 8) return std::nullopt;
  if (read_le(v, 12 + size, 8) != fnv1a64(v.substr(0, 12 + size))) return std::nullopt;
  return read_le(v, 0, 8);
}

}  // namespace layercache::test::disk
