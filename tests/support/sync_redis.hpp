// sync_redis.hpp — one synchronous hiredis connection for test and benchmark bookkeeping (start
// barriers, origin-call counters, command channels between processes), never for the cache under
// test. Header-only so that only targets built with the Redis layer (which link hiredis) pull it
// in.
//
//   layercache::test::sync_redis ctl("127.0.0.1", port, 5s);
//   ctl.command({"INCR", "origin-calls"});   // "1"
//
// Errors: the constructor and command() throw std::runtime_error for a failed connection, a broken
// connection, a timeout or an error reply. No AUTH: the servers these programs talk to have none.
// Thread-safety: command() may be called from several threads (one mutex serialises them).
#pragma once

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <chrono>
#include <cstddef>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace layercache::test {

class sync_redis {
 public:
  // `timeout` bounds the connect and every command (a BLPOP's own timeout must stay below it).
  sync_redis(const std::string& host, int port, std::chrono::milliseconds timeout) {
    const timeval tv{static_cast<time_t>(timeout.count() / 1000),
                     static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    ctx_ = ::redisConnectWithTimeout(host.c_str(), port, tv);
    if (ctx_ == nullptr || ctx_->err != 0) {
      const std::string why = ctx_ != nullptr ? ctx_->errstr : "out of memory";
      if (ctx_ != nullptr) ::redisFree(ctx_);
      throw std::runtime_error("redis connect to " + host + ":" + std::to_string(port) +
                               " failed: " + why);
    }
    if (::redisSetTimeout(ctx_, tv) != REDIS_OK) {
      ::redisFree(ctx_);
      throw std::runtime_error("redisSetTimeout failed");
    }
  }
  ~sync_redis() { ::redisFree(ctx_); }
  sync_redis(const sync_redis&) = delete;
  sync_redis& operator=(const sync_redis&) = delete;

  // Runs one command. Returns a string or status reply as is, an integer in decimal, an array's
  // last element (BLPOP's value); nil or an empty array is nullopt.
  std::optional<std::string> command(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    std::lock_guard lock(mu_);
    auto* reply = static_cast<redisReply*>(
        ::redisCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (reply == nullptr) {
      throw std::runtime_error("redis " + args.front() + " failed: " + ctx_->errstr);
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
          ::freeReplyObject(reply);
          throw std::runtime_error("redis " + args.front() + ": " + why);
        }
        default:
          break;
      }
    }
    ::freeReplyObject(reply);
    return out;
  }

 private:
  std::mutex mu_;
  redisContext* ctx_ = nullptr;
};

}  // namespace layercache::test
