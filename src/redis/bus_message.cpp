#include "redis/bus_message.hpp"

#include <charconv>

namespace layercache::redis_detail {

namespace {

// Reads a decimal u64 up to `stop`; advances `p` past the stop character.
bool read_number(std::string_view s, std::size_t& p, char stop, std::uint64_t& out) {
  const std::size_t end = s.find(stop, p);
  if (end == std::string_view::npos || end == p || end - p > 20) return false;
  const auto [ptr, ec] = std::from_chars(s.data() + p, s.data() + end, out);
  if (ec != std::errc() || ptr != s.data() + end) return false;
  p = end + 1;
  return true;
}

bool read_items(std::string_view s, std::size_t& p, std::uint64_t n,
                std::vector<std::string>& out) {
  // Every item needs at least "0:", so a count beyond what the bytes can hold is malformed (and
  // never drives an allocation).
  if (n > (s.size() - p) / 2) return false;
  out.reserve(n);
  for (std::uint64_t i = 0; i < n; ++i) {
    std::uint64_t len = 0;
    if (!read_number(s, p, ':', len)) return false;
    if (len > s.size() - p) return false;
    out.emplace_back(s.substr(p, len));
    p += len;
  }
  return true;
}

}  // namespace

std::optional<bus_message> parse_bus_message(std::string_view s, std::string* why) {
  auto fail = [&](const char* rule) -> std::optional<bus_message> {
    if (why != nullptr) *why = rule;
    return std::nullopt;
  };
  if (s.substr(0, 4) != "lc1|") return fail("not a layercache bus message (lc1 header)");
  std::size_t p = 4;
  bus_message m;
  if (!read_number(s, p, '|', m.origin)) return fail("bad origin");
  if (!read_number(s, p, '|', m.seq)) return fail("bad sequence number");
  if (p + 2 > s.size() || s[p + 1] != '|') return fail("bad op");
  m.op = s[p];
  p += 2;
  switch (m.op) {
    case 'k':
    case 't':
    case 'T':
    case 'p':
    case 'c':
    case 'r':
      break;
    default:
      return fail("unknown op");
  }
  std::uint64_t hi = 0, lo = 0;
  if (!read_number(s, p, ':', hi) || !read_number(s, p, '|', lo) || hi > 0xFFFFFFFFu ||
      lo > 0xFFFFFFFFu) {
    return fail("bad version");
  }
  m.version = (hi << 32) | lo;
  std::uint64_t na = 0, nb = 0;
  if (!read_number(s, p, '|', na) || !read_number(s, p, '|', nb)) return fail("bad item counts");
  if (!read_items(s, p, na, m.a) || !read_items(s, p, nb, m.b)) return fail("bad item");
  if (p != s.size()) return fail("trailing bytes");
  return m;
}

std::string format_bus_message(const bus_message& m) {
  std::string out = "lc1|" + std::to_string(m.origin) + '|' + std::to_string(m.seq) + '|';
  out.push_back(m.op);
  out += '|' + std::to_string(m.version >> 32) + ':' + std::to_string(m.version & 0xFFFFFFFFu) +
         '|' + std::to_string(m.a.size()) + '|' + std::to_string(m.b.size()) + '|';
  for (const auto* list : {&m.a, &m.b}) {
    for (const auto& item : *list) out.append(std::to_string(item.size())).append(":").append(item);
  }
  return out;
}

}  // namespace layercache::redis_detail
