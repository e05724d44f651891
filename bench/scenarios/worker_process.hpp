// worker_process.hpp — helpers for scenarios that run several layercache-bench processes.
//
// The parent re-executes its own binary (/proc/self/exe) with a hidden worker subcommand through
// tests/support's child_process (own process group, killed when the parent dies, stdout captured).
// Parent and workers coordinate through Redis lists on a raw hiredis connection, under a key prefix
// the caches under test never use, and each worker reports one JSON object on the last line of its
// stdout. Timestamps are CLOCK_MONOTONIC nanoseconds, which Linux keeps system-wide, so a value
// taken in one process can be compared with one taken in another.
//
// Thread-safety: raw_redis is not thread-safe (one connection, one caller at a time); the free
// functions are.
#pragma once

#include <sys/time.h>
#include <time.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/sync_redis.hpp"

namespace layercache::bench {

// CLOCK_MONOTONIC in nanoseconds: comparable across processes of one machine.
inline std::int64_t monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns` (returns at once when it has passed).
inline void sleep_until_monotonic_ns(std::int64_t deadline_ns) noexcept {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(deadline_ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(deadline_ns % 1'000'000'000);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

// Path of the running layercache-bench binary, to start workers from.
inline std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

// Last non-empty line of a worker's output, parsed as JSON. Throws std::runtime_error quoting the
// output when there is none.
inline nlohmann::json last_json_line(const std::string& output) {
  std::size_t end = output.size();
  while (end > 0 && (output[end - 1] == '\n' || output[end - 1] == '\r')) --end;
  const std::size_t begin = output.rfind('\n', end == 0 ? 0 : end - 1);
  const std::string line =
      output.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin + 1));
  auto parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    throw std::runtime_error("worker printed no JSON report; its output was:\n" + output);
  }
  return parsed;
}

// The scenario's own bookkeeping connection (barriers, counters): a synchronous hiredis connection
// whose commands time out after 70 s (longer than any barrier wait of a scenario).
class raw_redis : public test::sync_redis {
 public:
  raw_redis(const std::string& host, int port) : sync_redis(host, port, std::chrono::seconds(70)) {}
};

}  // namespace layercache::bench
