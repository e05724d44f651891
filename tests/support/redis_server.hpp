// redis_server.hpp — a real redis-server on a free 127.0.0.1 port, private to one test.
//
//   layercache::test::redis_server redis;                     // waits until PING answers
//   auto layer = redis_layer::create({.url = redis.url()});  // "redis://127.0.0.1:41237"
//   redis.cli({"SET", "app:k", "garbage"});                   // corrupt a value behind our back
//   redis.stop();  ...  redis.start();                        // outage, then same port again
//
// The server runs in the foreground as a child process (see child_process.hpp: own process group,
// killed if the test binary dies) with no persistence (--save "" --appendonly no), --dir and
// --logfile in a private temp_dir. Startup waits (bounded by start_timeout) until PING over a
// socket answers +PONG (-NOAUTH with a password) *from this server's pid* — another process that
// grabbed the port cannot fool it — and retries on a new port when the port turns out to be taken.
// Failures throw std::runtime_error carrying the tail of the server's log.
//
// Thread-safety: start(), stop(), kill() and destruction must not race with any other call.
// Between them, port(), host(), url(), running(), pid() and cli() may be called from any thread.
// Construct and start() from a thread that outlives the server: the kernel kills the server when
// the thread that spawned it exits (PR_SET_PDEATHSIG, see child_process.hpp).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "support/child_process.hpp"
#include "support/temp_dir.hpp"

namespace layercache::test {

// Every field has a default member initialiser, so designated initialisers may name any subset
// (g++ 12's -Wmissing-field-initializers would flag the others).
struct redis_server_options {
  // Password of the default user (--requirepass); empty = no password.
  std::string requirepass{};
  // Optional extra user, created after every start with
  // ACL SETUSER <acl_user> reset on ><acl_password> ~* &* +@all (all keys, channels, commands).
  // Empty = none.
  std::string acl_user{};
  std::string acl_password{};
  // Appended verbatim to the command line, e.g. {"--maxmemory", "10mb"}. They come after the
  // defaults, and Redis lets the last occurrence win, so they may also override e.g. --save.
  std::vector<std::string> extra_args{};
  // How long a start may take until PING answers; also bounds waiting for a busy port on restart.
  std::chrono::milliseconds start_timeout{5000};
};

class redis_server {
 public:
  // Starts the server and waits until it answers. Throws std::runtime_error if redis-server is not
  // in $PATH (LAYERCACHE_REDIS_SERVER may name the binary instead), exits early, or does not answer
  // within start_timeout; the message includes the end of its log.
  explicit redis_server(redis_server_options options = {});
  // Stops the server (SIGTERM, SIGKILL after 2 s) and removes its directory. Never throws.
  ~redis_server();

  redis_server(const redis_server&) = delete;
  redis_server& operator=(const redis_server&) = delete;
  redis_server(redis_server&&) = delete;
  redis_server& operator=(redis_server&&) = delete;

  // The port, fixed for the object's lifetime (restarts reuse it).
  int port() const noexcept { return port_; }
  // Always "127.0.0.1".
  std::string host() const { return "127.0.0.1"; }
  // "redis://127.0.0.1:PORT"; with an ACL user "redis://USER:PASSWORD@127.0.0.1:PORT", with only
  // requirepass "redis://:PASSWORD@127.0.0.1:PORT" (credentials percent-encoded).
  std::string url() const;

  // Graceful stop: SIGTERM, wait (SIGKILL after 2 s), reap. The port is free on return.
  // No-op when not running.
  void stop();
  // Crash: SIGKILL and reap immediately. No-op when not running.
  void kill();
  // (Re)starts on the same port and directory and waits until PING answers (ACL user re-created:
  // nothing persists). If the port is still taken, retries until start_timeout. No-op if running.
  void start();
  // True while the server process is alive (a server killed from outside counts as not running).
  bool running() const;
  // The server's pid while it runs (e.g. to SIGSTOP it and simulate a hung server), else 0.
  pid_t pid() const;

  // Runs one command over a fresh connection (AUTH with requirepass first, if set) and returns the
  // reply as text: simple string and bulk string as is ("OK", "v"), integer in decimal ("3"),
  // nil "(nil)", error "(error) ERR ...", array elements joined by '\n' (nested arrays flattened).
  // Throws std::runtime_error if the server cannot be reached or does not answer within 5 s.
  //   redis.cli({"SET", "k", "v"}) == "OK";  redis.cli({"GET", "k"}) == "v";
  std::string cli(const std::vector<std::string>& args) const;

  // The server's --dir and its log file.
  const std::filesystem::path& dir() const noexcept { return dir_.path(); }
  std::filesystem::path log_path() const { return dir_.path() / "redis.log"; }

 private:
  void launch(std::chrono::steady_clock::time_point deadline);
  bool answers_ping(std::chrono::steady_clock::time_point deadline) const;
  std::string failure_details() const;

  redis_server_options options_;
  std::string exe_;
  temp_dir dir_;
  int port_ = 0;
  std::unique_ptr<child_process> child_;
  std::uintmax_t log_offset_ = 0;     // size of redis.log when the current start began
  std::uintmax_t stdout_offset_ = 0;  // same for redis.stdout
};

// Sends one command to host:port over a fresh connection and returns the reply formatted as in
// redis_server::cli. For tests that talk to a server through a tcp_fault_proxy or need a server's
// raw answer without authentication. Throws std::runtime_error on connection failure or when no
// complete reply arrives within `timeout`.
std::string resp_command(const std::string& host, int port, const std::vector<std::string>& args,
                         std::chrono::milliseconds timeout = std::chrono::seconds(5));

}  // namespace layercache::test
