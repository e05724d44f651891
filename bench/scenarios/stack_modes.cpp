#include "scenarios/stack_modes.hpp"

#include <stdexcept>

#include "layercache/memory_layer.hpp"

namespace layercache::bench {

std::vector<std::string> available_stack_modes() { return {"memory"}; }

stack_mode make_stack_mode(const std::string& mode, const common_args& /*args*/) {
  using namespace std::chrono_literals;
  if (mode == "memory") {
    stack_mode m;
    m.cache = std::make_shared<cache_stack>(
        std::vector<std::shared_ptr<layer>>{memory_layer::create({.max_entries = 100'000})},
        stack_options{.ttl = 10min});
    return m;
  }
  throw std::invalid_argument("unknown stack mode: " + mode);
}

}  // namespace layercache::bench
