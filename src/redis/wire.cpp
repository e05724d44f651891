#include "redis/wire.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "redis/errors.hpp"

namespace layercache::redis_detail {

std::string glob_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 1);
  for (char c : s) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

std::int64_t px_for(std::int64_t expires_at_ms, std::int64_t now_ms,
                    std::chrono::milliseconds cap) {
  std::int64_t remaining = expires_at_ms == 0 ? 0 : expires_at_ms - now_ms;
  if (cap.count() > 0 && (expires_at_ms == 0 || remaining > cap.count())) remaining = cap.count();
  return remaining;
}

tcp_attempt open_tcp(const redis_endpoint& ep, std::string_view peer) {
  tcp_attempt out;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(ep.port);
  const int rc = ::getaddrinfo(ep.host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0 || found == nullptr) {
    std::string msg = "redis: cannot resolve ";
    msg += ep.host;
    msg += ": ";
    msg += ::gai_strerror(rc);
    if (found != nullptr) ::freeaddrinfo(found);
    out.error = status(errc::unavailable, std::move(msg));
    return out;
  }
  const addrinfo* pick = found;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      pick = a;
      break;
    }
  }
  const int fd = ::socket(pick->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    const int err = errno;
    ::freeaddrinfo(found);
    out.error = transport_error(peer, "socket for", err);
    return out;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  const int r = ::connect(fd, pick->ai_addr, pick->ai_addrlen);
  const int err = errno;
  ::freeaddrinfo(found);
  if (r != 0 && err != EINPROGRESS) {
    ::close(fd);
    out.error = transport_error(peer, "connect to", err);
    return out;
  }
  out.fd = fd;
  out.connected = r == 0;
  return out;
}

}  // namespace layercache::redis_detail
