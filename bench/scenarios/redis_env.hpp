// redis_env.hpp — a Redis for the scenarios: the one named by --redis, or a throwaway
// redis-server on a free loopback port (tests/support/redis_server.hpp), stopped on destruction.
#pragma once

#include <memory>
#include <string>

#include "scenarios/scenario.hpp"

namespace layercache::bench {

class redis_env {
 public:
  explicit redis_env(const common_args& args);
  ~redis_env();
  redis_env(const redis_env&) = delete;
  redis_env& operator=(const redis_env&) = delete;

  const std::string& url() const noexcept { return url_; }
  const std::string& host() const noexcept { return host_; }
  int port() const noexcept { return port_; }

 private:
  struct server;
  std::unique_ptr<server> server_;
  std::string url_;
  std::string host_;
  int port_ = 0;
};

}  // namespace layercache::bench
