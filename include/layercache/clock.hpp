// clock.hpp — the time source seam.
//
// All expiry in layercache is absolute wall-clock time (milliseconds since the Unix epoch) because
// entries travel between processes through Redis and disk. The default clock reads
// CLOCK_REALTIME_COARSE (about 7 ns instead of about 34 ns for system_clock::now() on the reference
// machine) because it is read on every L1 hit; its resolution is the kernel tick (1–4 ms), so an
// entry can outlive its expiry by at most one tick, never expire early. Tests install a fake clock.
//
// Thread-safety: implementations must be safe to call from any thread concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

namespace layercache {

// Milliseconds since the Unix epoch; the unit of every absolute timestamp in the library.
using unix_ms = std::int64_t;

class clock {
 public:
  virtual ~clock() = default;
  // Current wall-clock time in milliseconds since the Unix epoch.
  virtual unix_ms now_ms() const noexcept = 0;
  // The same time in microseconds, for the versions that order writes of different processes
  // (read once per mutation or fill, never on a hit). It must agree with now_ms(); the default,
  // now_ms() * 1000, suits a test clock. The default clock reads the precise CLOCK_REALTIME here:
  // two instances' writes a millisecond apart must not fall in one coarse tick (1-4 ms), where
  // their versions would be ordered by per-process counters instead of by time.
  virtual std::int64_t now_us() const noexcept { return now_ms() * 1000; }
};

// The default coarse wall clock (see above). Never null.
std::shared_ptr<const clock> default_clock();

// Converts a duration to whole milliseconds, rounding up so a 1 µs TTL is not zero.
template <class Rep, class Period>
constexpr std::int64_t to_ms_ceil(std::chrono::duration<Rep, Period> d) {
  return std::chrono::ceil<std::chrono::milliseconds>(d).count();
}

}  // namespace layercache
