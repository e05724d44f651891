// removal_deferral.hpp — holds back memory-layer removal callbacks (on_remove) while the calling
// thread holds a lock of the stack's, and runs them once it does not.
//
// The stack must change L1 under some of its own locks: the single-flight publish inserts under
// the flight-table shard lock (so an invalidation is ordered before or after it), and mutations
// change L1 under the key's order stripe. An insert may replace or evict entries, and an erase
// removes one, each reported to the user's on_remove — which may call back into the cache (for a
// key of the same flight shard or stripe: a deadlock, or a lock-order inversion between two
// threads). While a removal_deferral lives on a thread, memory layers queue that thread's
// notifications; its destructor runs them, in order, after the locks taken inside its scope are
// released. Declare it before taking the lock.
//
// Thread-safety: thread-local state; scopes nest (the outermost runs the queue).
#pragma once

#include <functional>
#include <vector>

namespace layercache::detail {

class removal_deferral {
 public:
  removal_deferral();
  ~removal_deferral();
  removal_deferral(const removal_deferral&) = delete;
  removal_deferral& operator=(const removal_deferral&) = delete;

  // True while a scope lives on this thread.
  static bool active() noexcept;
  // Queues `run` for the end of the outermost scope (call only while active()).
  static void defer(std::function<void()> run);
};

}  // namespace layercache::detail
