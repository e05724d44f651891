#include "support/free_port.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>
#include <thread>

namespace layercache::test {
namespace {

// Owns one socket descriptor for the duration of a probe.
class socket_guard {
 public:
  socket_guard() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "socket");
  }
  ~socket_guard() { ::close(fd_); }
  socket_guard(const socket_guard&) = delete;
  socket_guard& operator=(const socket_guard&) = delete;
  int get() const noexcept { return fd_; }

 private:
  int fd_;
};

sockaddr_in loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

bool bind_to(int fd, const sockaddr_in& addr) {
  // sockaddr_in and sockaddr are layout-compatible by POSIX contract; the cast is the socket API.
  return ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
}

}  // namespace

int free_port() {
  // bind(port 0) makes the kernel choose. On Linux >= 4.6 binds prefer odd ports and connect()
  // prefers even ones, so a client reconnecting in a loop to a stopped server on this port rarely
  // picks it as its own source port (a loopback self-connect that would hold the port).
  socket_guard sock;
  sockaddr_in addr = loopback(0);
  if (!bind_to(sock.get(), addr)) {
    throw std::system_error(errno, std::generic_category(), "bind 127.0.0.1:0");
  }
  socklen_t len = sizeof addr;
  if (::getsockname(sock.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    throw std::system_error(errno, std::generic_category(), "getsockname");
  }
  return ntohs(addr.sin_port);
}

bool port_is_free(int port) {
  if (port <= 0 || port > 65535) return false;
  socket_guard sock;
  const int one = 1;
  ::setsockopt(sock.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  return bind_to(sock.get(), loopback(port));
}

bool wait_port_free(int port, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto backoff = std::chrono::milliseconds(1);
  for (;;) {
    if (port_is_free(port)) return true;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return false;
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(20));
  }
}

}  // namespace layercache::test
