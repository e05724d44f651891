// crc32c.hpp — CRC-32C (Castagnoli), the checksum that guards every envelope.
//
// crc32c() picks, once per process, the SSE4.2 `crc32` instruction when the CPU has it and a
// slicing-by-8 table otherwise; both compute the same function (the iSCSI / RFC 3720 CRC: reflected
// polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF), so crc32c("123456789") ==
// 0xE3069283 on every machine. The two implementations are exposed separately so tests can hold
// them against each other.
//
//   std::uint32_t crc = crc32c(bytes);
//   crc = crc32c_extend(crc, more_bytes);  // == crc32c(bytes + more_bytes)
//
// Thread-safety: pure functions; safe from any thread.
#pragma once

#include <cstdint>
#include <string_view>

namespace layercache::detail {

// CRC-32C of `bytes`, using the fastest implementation this CPU supports.
std::uint32_t crc32c(std::string_view bytes) noexcept;

// CRC-32C of the concatenation of the bytes that produced `crc` and `bytes`.
std::uint32_t crc32c_extend(std::uint32_t crc, std::string_view bytes) noexcept;

// The table-driven implementation (any CPU). Same contract as crc32c_extend.
std::uint32_t crc32c_extend_portable(std::uint32_t crc, std::string_view bytes) noexcept;

// Whether crc32c_extend_hardware() may be called on this CPU (x86 with SSE4.2).
bool crc32c_hardware_available() noexcept;

// The SSE4.2 implementation. Same contract as crc32c_extend; calling it when
// crc32c_hardware_available() is false is undefined (illegal instruction).
std::uint32_t crc32c_extend_hardware(std::uint32_t crc, std::string_view bytes) noexcept;

}  // namespace layercache::detail
