// redis_client.hpp — the internal Redis client interface (not public API) that the redis layer, the
// distributed single-flight and the invalidation bus are built on.
//
// A client multiplexes many caller threads over a few connections and pipelines their commands
// automatically. Every call has a deadline; a call whose deadline passes returns errc::timeout and
// the connection stays usable (its late reply is discarded when it arrives). While no connection is
// up, calls fail fast — errc::unavailable, or the last authentication failure — instead of queueing
// or waiting. Lost connections are re-established in the background with exponential backoff.
//
//   auto client = make_hiredis_client({.url = "redis://127.0.0.1:6379/0"});   // hiredis_client.hpp
//   result set = client->execute({"SET", "user:1", bytes}, 50ms);
//   result got = client->execute({"GET", "user:1"}, 50ms);
//   if (!got.error.ok()) return fall_through(got.error);        // timeout, unavailable, ...
//   if (got.value.type == reply::kind::string) use(got.value.str);
//
// The interface is transport-agnostic on purpose: hiredis 0.14 implements it today; a newer hiredis
// (TLS, RESP3) or a cluster-routing client can implement it later without touching callers.
//
// Commands that change the state of a connection or hold it (SELECT, AUTH, HELLO, QUIT, RESET,
// WATCH/UNWATCH, SUBSCRIBE and friends, MONITOR, CLIENT REPLY, blocking pops, WAIT) are refused
// with errc::invalid_argument: connections are shared by every caller. MULTI ... EXEC is allowed
// inside one execute_pipeline() call (a pipeline is written contiguously on one connection).
//
// Thread-safety: every member function may be called from any thread concurrently, except that an
// execute_async() callback must not call execute() or execute_pipeline() (it runs on the I/O thread
// those would wait on; they return errc::invalid_argument there). reply, result and client_options
// are plain values.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "layercache/status.hpp"

namespace layercache::redis_detail {

// One decoded reply (RESP2 types; RESP3 kinds can be added when a transport speaks RESP3).
struct reply {
  enum class kind : unsigned char { nil, status, error, integer, string, array };
  kind type = kind::nil;
  std::string str;              // status text, error text (without '-'), or the bulk string bytes
  long long integer = 0;        // kind::integer
  std::vector<reply> elements;  // kind::array
};

// The outcome of one command. `error` is not ok when the command failed: transport trouble
// (unavailable), deadline (timeout), an error reply (classified by errors.hpp; `value` then holds
// the error reply too, so callers can look at its text, e.g. NOSCRIPT), or a refused call.
struct result {
  layercache::status error;
  reply value;
};

struct client_options {
  // redis://[user[:password]@]host:port[/db] (see redis_url.hpp). Required.
  std::string url;
  // Connections to open. Concurrent callers are spread over them and pipelined on each. Default 2;
  // must be >= 1.
  std::size_t connections = 2;
  // Bound on one connection attempt: TCP connect + AUTH + SELECT + PING. Default 200 ms; must be >
  // 0. The constructor waits at most this long (plus a little) for the first attempts.
  std::chrono::milliseconds connect_timeout{200};
  // Reconnect backoff: the first retry after a loss or a failed attempt waits about reconnect_min,
  // each further failure doubles the wait up to reconnect_max (each wait jittered down to half).
  // Defaults 10 ms and 1000 ms; reconnect_min must be > 0 and <= reconnect_max.
  std::chrono::milliseconds reconnect_min{10};
  std::chrono::milliseconds reconnect_max{1000};
  // Health: an idle connection is PINGed every health_interval, and a connection that owes replies
  // but has received nothing (and made no progress writing) for health_interval is declared dead
  // and re-established (its pending commands fail with unavailable). It also bounds how long a
  // connection may stay unproven after a caller gave up on a reply (see hiredis_client.cpp,
  // "Resync"). Default 1000 ms; zero disables the PINGs and the stall check. Keep it well above
  // the slowest command you run (scripts), since Redis answers nothing while one runs.
  std::chrono::milliseconds health_interval{1000};
  // Commands sent or queued but not answered yet (abandoned ones included), across the client;
  // beyond it calls fail fast with resource_exhausted. Default 100000; must be >= 1.
  std::size_t max_pending = 100000;

  // Throws layercache::invalid_argument_error naming the first invalid field (the URL is checked by
  // parse_redis_url at construction).
  void validate() const;
};

// Counters since construction, for metrics and tests. Monotonic; read with stats().
struct client_stats {
  std::uint64_t connects = 0;           // connections established (handshake done)
  std::uint64_t disconnects = 0;        // established connections lost (error, EOF, stall, reset)
  std::uint64_t commands = 0;           // commands queued for sending (internal PINGs excluded)
  std::uint64_t write_batches = 0;      // send() calls that carried command bytes
  std::uint64_t timeouts = 0;           // commands whose caller gave up at the deadline
  std::uint64_t discarded_replies = 0;  // late replies to such commands, dropped on arrival
};

class redis_client {
 public:
  virtual ~redis_client();

  // Sends one command and waits for its reply or the deadline (a relative duration, > 0). On
  // timeout the reply is abandoned (discarded when it arrives) and the connection stays usable.
  // Cost: one round trip; concurrent calls share writes and reads. Fails fast (no wait) with
  // unavailable while no connection is up, with resource_exhausted above max_pending.
  //   result r = client.execute({"INCR", "counter"}, 20ms);
  virtual result execute(std::span<const std::string_view> argv,
                         std::chrono::milliseconds deadline) = 0;
  result execute(std::initializer_list<std::string_view> argv, std::chrono::milliseconds deadline) {
    return execute(std::span<const std::string_view>(argv.begin(), argv.size()), deadline);
  }

  // Sends all commands back to back on one connection (one pipeline; nothing interleaves) and
  // returns one result per command, in order. The deadline covers the whole pipeline: replies
  // that arrived in time are returned, the rest are timeouts.
  virtual std::vector<result> execute_pipeline(std::span<const std::vector<std::string>> commands,
                                               std::chrono::milliseconds deadline) = 0;

  // Sends one command without waiting. `done` runs exactly once, on the client's I/O thread, with
  // the reply, a timeout at the deadline, or a failure (also when the client is destroyed first).
  // It must be short, must not block, and must not call execute()/execute_pipeline().
  virtual void execute_async(std::vector<std::string> argv, std::chrono::milliseconds deadline,
                             std::function<void(result)> done) = 0;

  // True while at least one connection is up (handshake done and not known to be lost).
  virtual bool connected() const noexcept = 0;

  virtual client_stats stats() const = 0;
};

}  // namespace layercache::redis_detail
