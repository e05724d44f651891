// Concurrency: one I/O thread owns every socket and all proxy state (connections, queues, fault
// settings). Other threads only post commands (std::function run on the I/O thread, the caller
// waits until it ran) and read two atomic counters. No lock is held while touching sockets.
//
// Invariants (I/O thread):
//   - a direction's queue is FIFO; its head is written when its release time has passed, unless the
//     proxy is paused or blackholed, the destination is blocked (EAGAIN, waiting for POLLOUT) or,
//     for client -> target, the target connection is still being established;
//   - queued_bytes == sum of unwritten bytes in the queue, and reads from a source stop while it is
//     >= k_max_queued_bytes (back-pressure instead of unbounded memory);
//   - a FIN is forwarded only after everything read before it was written;
//   - a connection is closed (and later swept) once both directions forwarded their FIN, or aborted
//     with RSTs on both sides after any socket error.
#include "support/tcp_fault_proxy.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace layercache::test {
namespace {

using steady = std::chrono::steady_clock;

constexpr std::size_t k_read_size = 64 * 1024;
// Per direction. At 8 MiB a 50 ms delay line still carries ~160 MB/s.
constexpr std::size_t k_max_queued_bytes = 8 * 1024 * 1024;
// Bytes read from one socket per loop iteration, so one busy connection cannot starve the others.
constexpr std::size_t k_read_budget = 1024 * 1024;
constexpr int k_accept_budget = 64;
// How long to stop accepting after running out of descriptors (otherwise poll() would spin).
constexpr auto k_accept_backoff = std::chrono::milliseconds(50);

struct chunk {
  steady::time_point release;
  std::string bytes;
  std::size_t offset = 0;  // bytes[0, offset) were already written
};

struct direction {
  std::deque<chunk> queue;
  std::size_t queued_bytes = 0;
  bool eof = false;      // the source sent FIN
  bool shut = false;     // the FIN was forwarded: shutdown(destination, SHUT_WR)
  bool blocked = false;  // the destination's send buffer is full: wait for POLLOUT
};

struct connection {
  int client = -1;
  int upstream = -1;
  bool connecting = true;  // non-blocking connect to the target in progress
  bool closed = false;     // fds closed; swept from the list at the next opportunity
  direction up;            // client -> target
  direction down;          // target -> client
};

void set_nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// close() with SO_LINGER {on, 0 s} sends an RST instead of a FIN and discards unsent data.
void close_with_reset(int fd) {
  if (fd < 0) return;
  const linger abort_on_close{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
  ::close(fd);
}

sockaddr_in ipv4_address(const std::string& host, int port) {
  if (port <= 0 || port > 65535) throw std::invalid_argument("tcp_fault_proxy: bad port");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  const std::string ip = host == "localhost" ? "127.0.0.1" : host;
  if (::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr) != 1) {
    throw std::invalid_argument("tcp_fault_proxy: not an IPv4 address: " + host);
  }
  return addr;
}

[[noreturn]] void throw_errno(const char* what) {
  throw std::system_error(errno, std::generic_category(), std::string("tcp_fault_proxy: ") + what);
}

}  // namespace

struct tcp_fault_proxy::impl {
  impl(const std::string& target_host, int target_port);
  ~impl();
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;

  // Runs `fn` on the I/O thread and returns once it ran.
  void apply(std::function<void()> fn);

  // ---- I/O thread only ----
  void run(const std::stop_token& stop);
  void run_commands();
  void accept_new(steady::time_point now);
  void handle_events(connection& c, short client_events, short upstream_events,
                     steady::time_point now);
  void read_into(connection& c, int from, direction& d, steady::duration delay,
                 steady::time_point now);
  void flush(connection& c, int to, direction& d, steady::time_point now);
  void flush_both(connection& c, steady::time_point now);
  std::optional<steady::time_point> next_wakeup() const;
  void abort(connection& c);
  void sweep();
  bool can_write(const connection& c, const direction& d) const;

  void wake() const {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto ignored = ::write(wake_fd_, &one, sizeof one);
  }

  sockaddr_in target_{};
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  int port_ = 0;
  std::atomic<std::size_t> connection_count_{0};
  std::atomic<std::uint64_t> bytes_forwarded_{0};

  // I/O thread state.
  std::vector<std::unique_ptr<connection>> conns_;
  steady::duration up_delay_{0};
  steady::duration down_delay_{0};
  bool blackhole_ = false;
  bool paused_ = false;
  steady::time_point accept_resume_{};
  std::vector<char> read_buf_ = std::vector<char>(k_read_size);

  // Commands posted by other threads.
  std::mutex cmd_mu_;
  std::condition_variable cmd_cv_;
  std::vector<std::function<void()>> cmds_;  // guarded by cmd_mu_
  std::uint64_t cmd_posted_ = 0;             // guarded by cmd_mu_
  std::uint64_t cmd_done_ = 0;               // guarded by cmd_mu_

  // Declared last: started when everything above exists, stopped before anything is destroyed.
  std::jthread thread_;
};

tcp_fault_proxy::impl::impl(const std::string& target_host, int target_port)
    : target_(ipv4_address(target_host, target_port)) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) throw_errno("socket");
  sockaddr_in addr = ipv4_address("127.0.0.1", 1);
  addr.sin_port = 0;  // the kernel picks a free port
  socklen_t len = sizeof addr;
  if (::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, SOMAXCONN) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    ::close(listen_fd_);
    errno = err;
    throw_errno("listen on 127.0.0.1");
  }
  port_ = ntohs(addr.sin_port);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    const int err = errno;
    ::close(listen_fd_);
    errno = err;
    throw_errno("eventfd");
  }
  thread_ = std::jthread([this](const std::stop_token& stop) { run(stop); });
}

tcp_fault_proxy::impl::~impl() {
  thread_.request_stop();
  wake();
  thread_.join();
  for (auto& c : conns_) {
    if (c->closed) continue;
    ::close(c->client);
    ::close(c->upstream);
  }
  ::close(listen_fd_);
  ::close(wake_fd_);
}

void tcp_fault_proxy::impl::apply(std::function<void()> fn) {
  std::unique_lock lock(cmd_mu_);
  cmds_.push_back(std::move(fn));
  const std::uint64_t ticket = ++cmd_posted_;
  wake();
  cmd_cv_.wait(lock, [&] { return cmd_done_ >= ticket; });
}

void tcp_fault_proxy::impl::run_commands() {
  // Drain the eventfd before taking the batch: a command posted after the swap writes the eventfd
  // again, so the next poll() wakes for it.
  std::uint64_t count = 0;
  [[maybe_unused]] const auto ignored = ::read(wake_fd_, &count, sizeof count);
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard lock(cmd_mu_);
    batch.swap(cmds_);
  }
  for (auto& fn : batch) fn();
  {
    std::lock_guard lock(cmd_mu_);
    cmd_done_ += batch.size();
  }
  cmd_cv_.notify_all();
}

void tcp_fault_proxy::impl::run(const std::stop_token& stop) {
  std::vector<pollfd> fds;
  std::vector<connection*> polled;
  while (!stop.stop_requested()) {
    steady::time_point now = steady::now();
    for (auto& c : conns_) flush_both(*c, now);
    sweep();

    fds.clear();
    polled.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({now >= accept_resume_ ? listen_fd_ : -1, POLLIN, 0});
    for (auto& c : conns_) {
      short client_events = 0;
      short upstream_events = 0;
      if (!c->up.eof && c->up.queued_bytes < k_max_queued_bytes) client_events |= POLLIN;
      if (c->down.blocked) client_events |= POLLOUT;
      if (c->connecting) {
        upstream_events |= POLLOUT;  // writable = connected (or failed: SO_ERROR says)
      } else {
        if (!c->down.eof && c->down.queued_bytes < k_max_queued_bytes) upstream_events |= POLLIN;
        if (c->up.blocked) upstream_events |= POLLOUT;
      }
      // A descriptor with nothing to wait for is left out: poll() would report POLLHUP on a
      // half-closed socket over and over.
      fds.push_back({client_events != 0 ? c->client : -1, client_events, 0});
      fds.push_back({upstream_events != 0 ? c->upstream : -1, upstream_events, 0});
      polled.push_back(c.get());
    }

    timespec timeout{};
    const timespec* timeout_ptr = nullptr;  // nothing scheduled: sleep until a socket event
    if (const std::optional<steady::time_point> at = next_wakeup()) {
      const auto wait =
          std::clamp<steady::duration>(*at - now, steady::duration::zero(), std::chrono::hours(1));
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
      timeout.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
      timeout.tv_nsec = static_cast<long>(ns % 1'000'000'000);
      timeout_ptr = &timeout;
    }
    if (::ppoll(fds.data(), fds.size(), timeout_ptr, nullptr) < 0) continue;  // EINTR

    now = steady::now();
    for (std::size_t i = 0; i < polled.size(); ++i) {
      handle_events(*polled[i], fds[2 + 2 * i].revents, fds[3 + 2 * i].revents, now);
    }
    if (fds[1].revents != 0) accept_new(now);
    if (fds[0].revents != 0) run_commands();
  }
}

std::optional<steady::time_point> tcp_fault_proxy::impl::next_wakeup() const {
  std::optional<steady::time_point> next;
  auto consider = [&](steady::time_point t) {
    if (!next || t < *next) next = t;
  };
  if (steady::now() < accept_resume_) consider(accept_resume_);
  for (const auto& c : conns_) {
    for (const direction* d : {&c->up, &c->down}) {
      if (!d->queue.empty() && can_write(*c, *d)) consider(d->queue.front().release);
    }
  }
  return next;
}

bool tcp_fault_proxy::impl::can_write(const connection& c, const direction& d) const {
  if (c.closed || d.blocked || paused_ || blackhole_) return false;
  return &d == &c.down || !c.connecting;
}

void tcp_fault_proxy::impl::accept_new(steady::time_point now) {
  for (int i = 0; i < k_accept_budget; ++i) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        accept_resume_ = now + k_accept_backoff;
      }
      break;  // EAGAIN: nothing more to accept
    }
    set_nodelay(fd);
    auto c = std::make_unique<connection>();
    c->client = fd;
    c->upstream = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->upstream < 0) {
      abort(*c);
      continue;
    }
    set_nodelay(c->upstream);
    if (::connect(c->upstream, reinterpret_cast<const sockaddr*>(&target_), sizeof target_) == 0) {
      c->connecting = false;
    } else if (errno != EINPROGRESS) {
      abort(*c);  // target refused: the client sees a reset, as close to "refused" as we can get
      continue;
    }
    conns_.push_back(std::move(c));
  }
  sweep();
}

void tcp_fault_proxy::impl::handle_events(connection& c, short client_events, short upstream_events,
                                          steady::time_point now) {
  if (c.closed) return;
  if (c.connecting) {
    if (upstream_events != 0) {
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(c.upstream, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        abort(c);
        return;
      }
      c.connecting = false;
    }
  } else {
    // POLLERR/POLLHUP also unblock: the next write or read reports the actual error.
    if ((upstream_events & (POLLOUT | POLLERR | POLLHUP)) != 0) c.up.blocked = false;
    if ((upstream_events & (POLLIN | POLLERR | POLLHUP)) != 0) {
      read_into(c, c.upstream, c.down, down_delay_, now);
    }
  }
  if (c.closed) return;
  if ((client_events & (POLLOUT | POLLERR | POLLHUP)) != 0) c.down.blocked = false;
  if ((client_events & (POLLIN | POLLERR | POLLHUP)) != 0) {
    read_into(c, c.client, c.up, up_delay_, now);
  }
}

void tcp_fault_proxy::impl::read_into(connection& c, int from, direction& d, steady::duration delay,
                                      steady::time_point now) {
  if (d.eof) return;
  const steady::time_point release = now + delay;
  std::size_t budget = k_read_budget;
  while (budget > 0 && (blackhole_ || d.queued_bytes < k_max_queued_bytes)) {
    const ssize_t n = ::recv(from, read_buf_.data(), std::min(read_buf_.size(), budget), 0);
    if (n > 0) {
      const auto size = static_cast<std::size_t>(n);
      budget -= size;
      if (blackhole_) continue;  // a vanished host: the bytes go nowhere
      // Appending to the tail is only allowed when that does not release the new bytes early:
      // the tail is released no sooner than they would be, or they are due at once (no delay).
      if (!d.queue.empty() && (d.queue.back().release >= release || delay <= steady::duration{})) {
        d.queue.back().bytes.append(read_buf_.data(), size);
      } else {
        d.queue.push_back(chunk{release, std::string(read_buf_.data(), size)});
      }
      d.queued_bytes += size;
    } else if (n == 0) {
      d.eof = true;
      return;
    } else if (errno == EAGAIN) {
      return;
    } else if (errno != EINTR) {
      abort(c);  // ECONNRESET and friends: pass the reset on
      return;
    }
  }
}

void tcp_fault_proxy::impl::flush(connection& c, int to, direction& d, steady::time_point now) {
  if (!can_write(c, d)) return;
  while (!d.queue.empty()) {
    chunk& head = d.queue.front();
    if (head.release > now) return;
    const ssize_t n =
        ::send(to, head.bytes.data() + head.offset, head.bytes.size() - head.offset, MSG_NOSIGNAL);
    if (n > 0) {
      const auto size = static_cast<std::size_t>(n);
      head.offset += size;
      d.queued_bytes -= size;
      bytes_forwarded_.fetch_add(size, std::memory_order_relaxed);
      if (head.offset == head.bytes.size()) d.queue.pop_front();
    } else if (n < 0 && errno == EAGAIN) {
      d.blocked = true;
      return;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      abort(c);  // EPIPE / ECONNRESET: the destination is gone
      return;
    }
  }
  if (d.eof && !d.shut) {
    ::shutdown(to, SHUT_WR);
    d.shut = true;
  }
}

void tcp_fault_proxy::impl::flush_both(connection& c, steady::time_point now) {
  flush(c, c.upstream, c.up, now);
  flush(c, c.client, c.down, now);
  if (!c.closed && c.up.shut && c.down.shut) {
    ::close(c.client);
    ::close(c.upstream);
    c.closed = true;
  }
}

void tcp_fault_proxy::impl::abort(connection& c) {
  if (c.closed) return;
  close_with_reset(c.client);
  close_with_reset(c.upstream);
  c.client = c.upstream = -1;
  c.closed = true;
  c.up = direction{};
  c.down = direction{};
}

void tcp_fault_proxy::impl::sweep() {
  std::erase_if(conns_, [](const std::unique_ptr<connection>& c) { return c->closed; });
  connection_count_.store(conns_.size(), std::memory_order_relaxed);
}

tcp_fault_proxy::tcp_fault_proxy(std::string target_host, int target_port)
    : impl_(std::make_unique<impl>(target_host, target_port)) {}

tcp_fault_proxy::~tcp_fault_proxy() = default;

int tcp_fault_proxy::port() const noexcept { return impl_->port_; }

std::string tcp_fault_proxy::url() const { return "redis://127.0.0.1:" + std::to_string(port()); }

void tcp_fault_proxy::set_latency(std::chrono::milliseconds upstream,
                                  std::chrono::milliseconds downstream) {
  impl_->apply([this, upstream, downstream] {
    impl_->up_delay_ = std::max(upstream, std::chrono::milliseconds::zero());
    impl_->down_delay_ = std::max(downstream, std::chrono::milliseconds::zero());
  });
}

void tcp_fault_proxy::blackhole(bool on) {
  impl_->apply([this, on] { impl_->blackhole_ = on; });
}

void tcp_fault_proxy::pause(bool on) {
  impl_->apply([this, on] { impl_->paused_ = on; });
}

void tcp_fault_proxy::reset_all() {
  impl_->apply([this] {
    // A client whose connect() already returned may still sit in the listen backlog: take it in
    // first, so it is reset too.
    impl_->accept_new(steady::now());
    for (auto& c : impl_->conns_) impl_->abort(*c);
    impl_->sweep();
  });
}

std::size_t tcp_fault_proxy::connection_count() const noexcept {
  return impl_->connection_count_.load(std::memory_order_relaxed);
}

std::uint64_t tcp_fault_proxy::bytes_forwarded() const noexcept {
  return impl_->bytes_forwarded_.load(std::memory_order_relaxed);
}

}  // namespace layercache::test
