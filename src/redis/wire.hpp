// wire.hpp — the socket-level pieces both Redis connections need (the pipelined client in
// hiredis_client.cpp and the pub/sub subscriber in subscriber.cpp): formatting a command with
// hiredis, opening a non-blocking TCP connection to an endpoint, and ppoll timeouts.
//
// Not API. Thread-safety: free functions and a value type without shared state.
#pragma once

#include <hiredis/hiredis.h>
#include <time.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "layercache/status.hpp"
#include "redis/redis_url.hpp"

namespace layercache::redis_detail {

// A command formatted by hiredis. The sds variant of redisFormatCommandArgv writes the same bytes
// but with hiredis's own sdscatfmt instead of libc sprintf for the length prefixes, which was ~4%
// of a caller's CPU per command in profiles of 32 callers on 2 cores.
class formatted_command {
 public:
  template <class Args>
  explicit formatted_command(const Args& argv) {
    constexpr std::size_t k_inline = 16;
    std::array<const char*, k_inline> ptr_inline{};
    std::array<std::size_t, k_inline> len_inline{};
    std::vector<const char*> ptr_heap;
    std::vector<std::size_t> len_heap;
    const char** ptrs = ptr_inline.data();
    std::size_t* lens = len_inline.data();
    const std::size_t argc = std::size(argv);
    if (argc > k_inline) {
      ptr_heap.resize(argc);
      len_heap.resize(argc);
      ptrs = ptr_heap.data();
      lens = len_heap.data();
    }
    std::size_t i = 0;
    for (const std::string_view a : argv) {
      ptrs[i] = a.empty() ? "" : a.data();  // hiredis memcpy()s from it even for length 0
      lens[i] = a.size();
      ++i;
    }
    const int len = redisFormatSdsCommandArgv(&cmd_, static_cast<int>(argc), ptrs, lens);
    if (len < 0 || cmd_ == nullptr) throw std::bad_alloc();
    len_ = static_cast<std::size_t>(len);
  }
  formatted_command(const formatted_command&) = delete;
  formatted_command& operator=(const formatted_command&) = delete;
  ~formatted_command() { redisFreeSdsCommand(cmd_); }
  std::string_view bytes() const noexcept { return {cmd_, len_}; }

 private:
  sds cmd_ = nullptr;
  std::size_t len_ = 0;
};

template <class Args>
void append_command(std::string& out, const Args& argv) {
  out += formatted_command(argv).bytes();
}

// A relative timeout for ppoll/futex; negative durations become zero.
inline timespec to_timespec(std::chrono::nanoseconds d) {
  if (d < std::chrono::nanoseconds::zero()) d = std::chrono::nanoseconds::zero();
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(d.count() / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(d.count() % 1'000'000'000);
  return ts;
}

// `s` as a literal SCAN MATCH pattern: * ? [ ] \ are glob syntax there.
std::string glob_escape(std::string_view s);

// The PX argument of a SET for an entry expiring at `expires_at_ms` (0 = never), capped by the
// layer's `cap` (zero = none): 0 means "store without expiry"; a value <= 0 for an entry that has
// an expiry means it has already expired.
std::int64_t px_for(std::int64_t expires_at_ms, std::int64_t now_ms, std::chrono::milliseconds cap);

// The start of one connection attempt.
struct tcp_attempt {
  int fd = -1;             // the socket (non-blocking, close-on-exec, TCP_NODELAY, keep-alive)
  bool connected = false;  // connect() completed at once; otherwise it is in progress (EINPROGRESS)
  status error;            // not ok: no socket (resolution, socket() or connect() failed)
};

// Resolves `ep` (on every attempt, so a moved name is followed; names are expected to be local —
// a slow DNS server stalls the calling thread for its lookup), prefers IPv4 ("localhost" may list
// ::1 first while the server binds 127.0.0.1 only) and starts a non-blocking connect. `peer` names
// the endpoint in error messages.
tcp_attempt open_tcp(const redis_endpoint& ep, std::string_view peer);

}  // namespace layercache::redis_detail
