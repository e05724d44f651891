// events.hpp — the event callback: things an operator wants to know about as they happen.
//
//   stack_options opts{.on_event = [](const layercache::event& e) {
//     if (e.type == layercache::event_type::layer_error) log_warn("{}", e.detail.message());
//   }};
//
// Which thread calls it: the thread on which the event happened — a caller of get/set, or one of
// the library's background threads. No library lock is held during the call, so the callback may
// call back into the cache; it must be quick (it delays the operation that raised it) and must not
// throw (an exception is caught and dropped). The string_views are valid only during the call.
//
// Thread-safety: the callback may be invoked from several threads at once.
#pragma once

#include <functional>
#include <string_view>

#include "layercache/status.hpp"

namespace layercache {

enum class event_type : unsigned char {
  fetch_error,        // a fetcher threw; detail says what (the exception reached every waiter)
  layer_error,        // a layer failed a read or write; the operation went on without it
  corruption,         // a layer held bytes that are no valid envelope; the entry was removed
  wait_timeout,       // a caller gave up waiting for another caller's fetch
  stale_fill,         // a fetched value was not stored: an invalidation arrived during the fetch
  breaker_open,       // a remote layer failed repeatedly and is skipped for a while
  breaker_half_open,  // one probe call is let through to a skipped layer
  breaker_closed,     // the probe succeeded: the layer is used again
  coordination_degraded,  // Redis could not coordinate a miss: single-flight fell back to the
                          // process
  bus_resync,             // invalidations from other instances may have been lost: L1 was dropped
  schema_mismatch,        // a byte layer held a valid entry of another type or schema (another
                          // build's, codec.hpp): a miss; the entry is left to be overwritten
};

std::string_view to_string(event_type type) noexcept;

struct event {
  event_type type;
  std::string_view layer;  // layer name, empty when not about one layer
  std::string_view key;
  const status& detail;
};

using event_callback = std::function<void(const event&)>;

}  // namespace layercache
