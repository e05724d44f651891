#include "scenarios/redis_env.hpp"

#include <stdexcept>

#include "support/redis_server.hpp"

namespace layercache::bench {

struct redis_env::server {
  test::redis_server instance;
};

redis_env::redis_env(const common_args& args) {
  if (!args.redis_url.empty()) {
    url_ = args.redis_url;
    // redis://[user[:password]@]host:port[/db] → host and port for raw baselines.
    std::string rest =
        url_.substr(url_.find("://") == std::string::npos ? 0 : url_.find("://") + 3);
    if (auto at = rest.rfind('@'); at != std::string::npos) rest = rest.substr(at + 1);
    if (auto slash = rest.find('/'); slash != std::string::npos) rest = rest.substr(0, slash);
    const auto colon = rest.rfind(':');
    host_ = rest.substr(0, colon);
    port_ = colon == std::string::npos ? 6379 : std::stoi(rest.substr(colon + 1));
    return;
  }
  server_ = std::make_unique<server>();
  url_ = server_->instance.url();
  host_ = server_->instance.host();
  port_ = server_->instance.port();
}

redis_env::~redis_env() = default;

}  // namespace layercache::bench
