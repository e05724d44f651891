// stack_modes.hpp — the stack configurations the scenarios compare ("memory", later
// "memory+redis", ...). A mode owns whatever servers it started.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "scenarios/scenario.hpp"

namespace layercache::bench {

struct stack_mode {
  std::shared_ptr<void> resources;  // servers etc.; declared first so the cache goes first
  std::shared_ptr<cache_stack> cache;
};

std::vector<std::string> available_stack_modes();
stack_mode make_stack_mode(const std::string& mode, const common_args& args);

}  // namespace layercache::bench
