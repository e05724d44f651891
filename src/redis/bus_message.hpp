// bus_message.hpp — the invalidation bus's message format (docs/design.md, "Invalidation bus").
//
// Messages are built inside Redis by the coordination scripts (so the per-origin sequence number
// is assigned in publish order) and parsed here. Text header, binary-safe items:
//
//   lc1|<origin>|<seq>|<op>|<version>|<nA>|<nB>|<len>:<bytes><len>:<bytes>...
//
// origin: decimal u64 instance id; seq: decimal, per origin, 1, 2, 3... in delivery order; op: one
// byte (k keys changed, t tags any, T tags all, p prefix, c clear, r namespace rotated); version:
// "<hi>:<lo>" of the newest version involved (or 0:0); then nA items of list A and nB of list B:
//   k: A = keys            t/T: A = tags, B = keys      p: A = [prefix]
//   c: none                r: A = [namespace path], B = [new generation]
// parse_bus_message never reads out of bounds and rejects anything malformed (it is fed by a
// network peer). Thread-safety: free functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace layercache::redis_detail {

struct bus_message {
  std::uint64_t origin = 0;
  std::uint64_t seq = 0;
  char op = 0;
  std::uint64_t version = 0;
  std::vector<std::string> a;
  std::vector<std::string> b;
};

// Nullopt when `bytes` is not a well-formed message (`why` says which rule failed).
std::optional<bus_message> parse_bus_message(std::string_view bytes, std::string* why = nullptr);

// The same format, built in C++ (tests, and messages this process publishes without a script).
std::string format_bus_message(const bus_message& m);

}  // namespace layercache::redis_detail
