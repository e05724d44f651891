// tcp_fault_proxy.hpp — a loopback TCP proxy between a client under test and a server (usually a
// redis_server), which injects network faults on demand: latency, a dead host, a stall, resets.
//
//   layercache::test::redis_server redis;
//   layercache::test::tcp_fault_proxy proxy(redis.host(), redis.port());
//   auto layer = redis_layer::create({.url = proxy.url(), .timeout = 50ms});
//   proxy.set_latency(20ms, 20ms);   // every round trip now takes >= 40 ms
//   proxy.blackhole(true);           // the server "dies" without closing anything
//   proxy.reset_all();               // every open connection gets an RST
//
// Connections are accepted on 127.0.0.1:port() and each is paired with a new connection to the
// target. One I/O thread drives every socket (non-blocking, poll()); each direction of each
// connection is a FIFO of (release time, bytes), so latency is a true delay line: a chunk read at t
// is written at t + delay, bytes and order preserved, and pipelined traffic is not delayed
// cumulatively. Queued data per direction is capped (8 MiB) by pausing reads on the source (TCP
// back-pressure), and the thread sleeps in poll() until the next socket event or release time — it
// never spins. Half-closes are forwarded (EOF -> shutdown(SHUT_WR) after the queue drained); a
// reset or error on one side resets the other. If the target refuses the connection, the client is
// reset.
//
// Thread-safety: every member function may be called from any thread. The fault controls are
// synchronous: when set_latency/blackhole/pause/reset_all return, the I/O thread has applied them,
// so bytes the test sends afterwards are subject to the new setting.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace layercache::test {

class tcp_fault_proxy {
 public:
  // Listens on a free 127.0.0.1 port and starts the I/O thread. `target_host` is an IPv4 literal
  // (or "localhost"). The target is connected per accepted connection, so it may be down when the
  // proxy starts. Throws std::system_error / std::invalid_argument on setup failure.
  tcp_fault_proxy(std::string target_host, int target_port);
  // Stops the I/O thread and closes every connection.
  ~tcp_fault_proxy();

  tcp_fault_proxy(const tcp_fault_proxy&) = delete;
  tcp_fault_proxy& operator=(const tcp_fault_proxy&) = delete;
  tcp_fault_proxy(tcp_fault_proxy&&) = delete;
  tcp_fault_proxy& operator=(tcp_fault_proxy&&) = delete;

  // The listening port.
  int port() const noexcept;
  // Always "127.0.0.1".
  std::string host() const { return "127.0.0.1"; }
  // "redis://127.0.0.1:PORT" (no credentials: add them yourself if the target needs them).
  std::string url() const;

  // Delays every chunk client -> target by `upstream` and target -> client by `downstream`, from
  // the moment the proxy reads it. Applies to data read after the call; zero = no delay (default).
  void set_latency(std::chrono::milliseconds upstream, std::chrono::milliseconds downstream);

  // While on, the target behaves like a host that vanished: connections (old and new) stay open and
  // are read, but whatever is read in either direction is discarded and nothing is written, not
  // even a FIN. Data queued before it was turned on is held and delivered once it is turned off.
  void blackhole(bool on);

  // While on, data keeps being read (up to the cap) but is held; turning it off releases everything
  // held, in order, at its release time (at once if that passed). New connections are held too.
  void pause(bool on);

  // Aborts every current connection on both sides with an RST (SO_LINGER 0) and drops queued data;
  // this includes connections still waiting in the listen backlog. New connections afterwards work
  // normally.
  void reset_all();

  // Client connections currently open through the proxy (counted once the I/O thread accepted
  // them, so shortly after the client's connect() returned: wait for the value, don't assume it).
  std::size_t connection_count() const noexcept;
  // Total bytes written to either side since construction.
  std::uint64_t bytes_forwarded() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace layercache::test
