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

#include <hiredis/hiredis.h>
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

// One synchronous hiredis connection for the scenario's own bookkeeping (barriers, counters), not
// for the cache under test. Assumes a server without a password (like l2-hit's raw baseline).
class raw_redis {
 public:
  raw_redis(const std::string& host, int port,
            std::chrono::milliseconds io_timeout = std::chrono::seconds(70)) {
    timeval connect_tv{5, 0};
    c_ = redisConnectWithTimeout(host.c_str(), port, connect_tv);
    if (c_ == nullptr || c_->err != 0) {
      const std::string why = c_ != nullptr ? c_->errstr : "out of memory";
      redisFree(c_);
      throw std::runtime_error("raw redis connect to " + host + ":" + std::to_string(port) +
                               " failed: " + why);
    }
    timeval io_tv{static_cast<time_t>(io_timeout.count() / 1000),
                  static_cast<suseconds_t>((io_timeout.count() % 1000) * 1000)};
    redisSetTimeout(c_, io_tv);
  }
  ~raw_redis() { redisFree(c_); }
  raw_redis(const raw_redis&) = delete;
  raw_redis& operator=(const raw_redis&) = delete;

  // Runs one command. Returns a string or status reply as is, an integer in decimal, nil as
  // nullopt, an array's last element (BLPOP: the popped value). Throws on an error reply or a
  // broken connection.
  std::optional<std::string> command(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* reply = static_cast<redisReply*>(
        redisCommandArgv(c_, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (reply == nullptr) {
      throw std::runtime_error("raw redis " + args.front() + " failed: " + c_->errstr);
    }
    std::optional<std::string> out;
    const redisReply* r = reply;
    if (r->type == REDIS_REPLY_ARRAY) r = r->elements == 0 ? nullptr : r->element[r->elements - 1];
    if (r != nullptr) {
      switch (r->type) {
        case REDIS_REPLY_STRING:
        case REDIS_REPLY_STATUS:
          out = std::string(r->str, r->len);
          break;
        case REDIS_REPLY_INTEGER:
          out = std::to_string(r->integer);
          break;
        case REDIS_REPLY_ERROR: {
          const std::string why(r->str, r->len);
          freeReplyObject(reply);
          throw std::runtime_error("raw redis " + args.front() + ": " + why);
        }
        default:
          break;
      }
    }
    freeReplyObject(reply);
    return out;
  }

 private:
  redisContext* c_ = nullptr;
};

}  // namespace layercache::bench
