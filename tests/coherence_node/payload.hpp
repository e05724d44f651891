// payload.hpp — the values a coherence node writes in the full mix: a unique id (writer + counter,
// so a read names the write it saw) padded to a chosen size (tens of bytes up to 256 KiB), in a
// form a reader can verify, so a torn, truncated or mixed-up value is caught rather than trusted.
//
//   "<id>|<total size>|<padding>"   padding: one letter derived from the id, repeated
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace layercache::test::coherence {

inline char pad_char(std::string_view id) {
  std::uint32_t h = 2166136261u;  // FNV-1a: any stable mix will do
  for (char c : id) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  return static_cast<char>('a' + h % 26);
}

// A value of about `size` bytes (never shorter than its header) carrying `id`.
inline std::string make_payload(const std::string& id, std::size_t size) {
  std::string head = id + "|";
  // The size field counts itself: settle on a total that holds after appending it.
  std::size_t total = size;
  for (int i = 0; i < 3; ++i) {
    const std::size_t need = head.size() + std::to_string(total).size() + 1;
    if (total < need) total = need;
  }
  std::string out = head + std::to_string(total) + "|";
  out.append(total > out.size() ? total - out.size() : 0, pad_char(id));
  return out;
}

// The id a value carries, or "!corrupt" when it is not a well-formed payload.
inline std::string payload_id(std::string_view v) {
  const auto bar = v.find('|');
  if (bar == std::string_view::npos || bar == 0) return "!corrupt";
  const auto bar2 = v.find('|', bar + 1);
  if (bar2 == std::string_view::npos) return "!corrupt";
  std::size_t total = 0;
  for (char c : v.substr(bar + 1, bar2 - bar - 1)) {
    if (c < '0' || c > '9') return "!corrupt";
    total = total * 10 + static_cast<std::size_t>(c - '0');
  }
  const std::string_view id = v.substr(0, bar);
  if (total != v.size()) return "!corrupt";
  const char p = pad_char(id);
  for (char c : v.substr(bar2 + 1)) {
    if (c != p) return "!corrupt";
  }
  return std::string(id);
}

}  // namespace layercache::test::coherence
