#include "memory/removal_deferral.hpp"

#include <utility>

namespace layercache::detail {

namespace {

struct deferral_state {
  int depth = 0;
  std::vector<std::function<void()>> queued;
};

thread_local deferral_state t_deferral;

}  // namespace

removal_deferral::removal_deferral() { ++t_deferral.depth; }

removal_deferral::~removal_deferral() {
  if (--t_deferral.depth > 0) return;
  // A callback may mutate the cache and so queue more work in a nested scope of its own; those
  // run inside it. Take the queue first so what runs here is exactly what was deferred.
  while (!t_deferral.queued.empty()) {
    std::vector<std::function<void()>> run = std::move(t_deferral.queued);
    t_deferral.queued.clear();
    for (auto& f : run) f();
  }
}

bool removal_deferral::active() noexcept { return t_deferral.depth > 0; }

void removal_deferral::defer(std::function<void()> run) {
  t_deferral.queued.push_back(std::move(run));
}

}  // namespace layercache::detail
