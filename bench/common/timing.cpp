#include "common/timing.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <thread>

namespace layercache::bench {

double ticks_per_ns() {
  static const double value = [] {
    const auto t0 = std::chrono::steady_clock::now();
    const std::uint64_t c0 = ticks();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const std::uint64_t c1 = ticks();
    const auto t1 = std::chrono::steady_clock::now();
    const double ns =
        static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
    return static_cast<double>(c1 - c0) / ns;
  }();
  return value;
}

std::uint64_t timer_overhead_ticks() {
  static const std::uint64_t value = [] {
    std::vector<std::uint64_t> s(200'000);
    for (auto& x : s) {
      const std::uint64_t a = ticks();
      const std::uint64_t b = ticks();
      x = b - a;
    }
    std::nth_element(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(s.size() / 2), s.end());
    return s[s.size() / 2];
  }();
  return value;
}

percentiles summarize_ticks(std::vector<std::uint64_t>& samples) {
  percentiles out;
  if (samples.empty()) return out;
  const double tpn = ticks_per_ns();
  const double overhead = static_cast<double>(timer_overhead_ticks());
  std::sort(samples.begin(), samples.end());
  auto at = [&](double q) {
    const auto idx = static_cast<std::size_t>(q * static_cast<double>(samples.size() - 1));
    return std::max(0.0, (static_cast<double>(samples[idx]) - overhead) / tpn);
  };
  const double sum =
      std::accumulate(samples.begin(), samples.end(), 0.0,
                      [](double acc, std::uint64_t v) { return acc + static_cast<double>(v); });
  out.avg_ns = std::max(0.0, (sum / static_cast<double>(samples.size()) - overhead) / tpn);
  out.p50_ns = at(0.50);
  out.p95_ns = at(0.95);
  out.p99_ns = at(0.99);
  return out;
}

ms_percentiles summarize_ms(std::vector<double> samples) {
  ms_percentiles out;
  if (samples.empty()) return out;
  std::sort(samples.begin(), samples.end());
  out.avg =
      std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(samples.size());
  out.p50 = samples[(samples.size() - 1) / 2];
  out.p99 = samples[static_cast<std::size_t>(0.99 * static_cast<double>(samples.size() - 1))];
  return out;
}

std::string fmt_num(double v, int precision) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(header.size());
  for (std::size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size() && i < width.size(); ++i) {
      width[i] = std::max(width[i], r[i].size());
    }
  }
  auto line = [&](const std::vector<std::string>& cells) {
    for (std::size_t i = 0; i < cells.size(); ++i) {
      std::printf("%s%-*s", i == 0 ? "" : "  ", static_cast<int>(width[i]), cells[i].c_str());
    }
    std::printf("\n");
  };
  line(header);
  std::vector<std::string> rule;
  for (auto w : width) rule.emplace_back(w, '-');
  line(rule);
  for (const auto& r : rows) line(r);
}

}  // namespace layercache::bench
