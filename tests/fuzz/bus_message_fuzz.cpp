// libFuzzer target for the invalidation bus parser: anyone who can PUBLISH on the bus channel
// controls its input. Properties: never crashes or reads out of bounds (ASan/UBSan), and whatever
// it accepts survives a format/parse round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "redis/bus_message.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using layercache::redis_detail::format_bus_message;
  using layercache::redis_detail::parse_bus_message;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  auto m = parse_bus_message(input);
  if (!m) return 0;
  auto again = parse_bus_message(format_bus_message(*m));
  if (!again || again->origin != m->origin || again->seq != m->seq || again->op != m->op ||
      again->version != m->version || again->a != m->a || again->b != m->b) {
    std::abort();
  }
  return 0;
}
