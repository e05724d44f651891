#include "core/crc32c.hpp"

#include <array>
#include <cstddef>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define LAYERCACHE_CRC32C_X86 1
#else
#define LAYERCACHE_CRC32C_X86 0
#endif

namespace layercache::detail {
namespace {

constexpr std::uint32_t reflected_polynomial = 0x82F63B78u;

// tables[k][b] is the CRC contribution of byte b followed by k zero bytes, which lets the portable
// loop fold 8 input bytes per iteration with independent lookups (slicing-by-8).
using crc_tables = std::array<std::array<std::uint32_t, 256>, 8>;

constexpr crc_tables make_tables() {
  crc_tables t{};
  for (std::uint32_t b = 0; b < 256; ++b) {
    std::uint32_t crc = b;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1u) ? reflected_polynomial : 0u);
    t[0][b] = crc;
  }
  for (std::size_t k = 1; k < 8; ++k) {
    for (std::size_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFFu];
  }
  return t;
}

constexpr crc_tables tables = make_tables();

std::uint64_t load_le64(const unsigned char* p) noexcept {
  // Assembled byte by byte so the result is the same on big-endian hosts; compilers fold it into
  // one unaligned load on little-endian ones.
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

#if LAYERCACHE_CRC32C_X86
__attribute__((target("sse4.2"))) std::uint32_t extend_sse42(std::uint32_t crc,
                                                             const unsigned char* p,
                                                             std::size_t n) noexcept {
  std::uint64_t c = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, sizeof word);
    c = _mm_crc32_u64(c, word);
  }
  auto c32 = static_cast<std::uint32_t>(c);
  for (; n > 0; ++p, --n) c32 = _mm_crc32_u8(c32, *p);
  return ~c32;
}
#endif

using extend_fn = std::uint32_t (*)(std::uint32_t, std::string_view) noexcept;

extend_fn choose_implementation() noexcept {
  return crc32c_hardware_available() ? &crc32c_extend_hardware : &crc32c_extend_portable;
}

}  // namespace

std::uint32_t crc32c_extend_portable(std::uint32_t crc, std::string_view bytes) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t n = bytes.size();
  std::uint32_t c = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    const std::uint64_t w = load_le64(p) ^ c;
    c = tables[7][w & 0xFFu] ^ tables[6][(w >> 8) & 0xFFu] ^ tables[5][(w >> 16) & 0xFFu] ^
        tables[4][(w >> 24) & 0xFFu] ^ tables[3][(w >> 32) & 0xFFu] ^ tables[2][(w >> 40) & 0xFFu] ^
        tables[1][(w >> 48) & 0xFFu] ^ tables[0][w >> 56];
  }
  for (; n > 0; ++p, --n) c = (c >> 8) ^ tables[0][(c ^ *p) & 0xFFu];
  return ~c;
}

bool crc32c_hardware_available() noexcept {
#if LAYERCACHE_CRC32C_X86
  // Needed in case this runs from a static initialiser before libgcc has probed the CPU.
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
#else
  return false;
#endif
}

std::uint32_t crc32c_extend_hardware(std::uint32_t crc, std::string_view bytes) noexcept {
#if LAYERCACHE_CRC32C_X86
  return extend_sse42(crc, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
#else
  return crc32c_extend_portable(crc, bytes);
#endif
}

std::uint32_t crc32c_extend(std::uint32_t crc, std::string_view bytes) noexcept {
  static const extend_fn impl = choose_implementation();
  return impl(crc, bytes);
}

std::uint32_t crc32c(std::string_view bytes) noexcept { return crc32c_extend(0, bytes); }

}  // namespace layercache::detail
