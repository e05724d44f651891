// timing.hpp — per-operation timing for latency percentiles.
//
// Timing a 50 ns operation with steady_clock (about 34 ns per read on the reference VM) would
// mostly measure the clock. We read the TSC with rdtscp (about 22 ns), calibrate it against
// steady_clock, and subtract the median cost of an empty timed region, so reported latencies are
// the operation's own. Both our cache and the baselines are measured the same way in the same run.
#pragma once

#include <x86intrin.h>

#include <cstdint>
#include <string>
#include <vector>

namespace layercache::bench {

inline std::uint64_t ticks() noexcept {
  unsigned aux = 0;
  return __rdtscp(&aux);
}

// TSC ticks per nanosecond, measured once against steady_clock.
double ticks_per_ns();
// Median ticks of an empty timed region.
std::uint64_t timer_overhead_ticks();

struct percentiles {
  double avg_ns = 0, p50_ns = 0, p95_ns = 0, p99_ns = 0;
};
// Converts raw tick samples (overhead already included) into corrected nanosecond percentiles.
percentiles summarize_ticks(std::vector<std::uint64_t>& samples);

struct ms_percentiles {
  double avg = 0, p50 = 0, p99 = 0;
};
ms_percentiles summarize_ms(std::vector<double> samples);

// Prints a simple aligned table.
void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows);
std::string fmt_num(double v, int precision = 1);

}  // namespace layercache::bench
