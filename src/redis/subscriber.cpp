// subscriber.cpp — the pub/sub connection of subscriber.hpp over hiredis 0.14: our own
// non-blocking socket and ppoll; hiredis formats the commands (redisFormatSdsCommandArgv) and
// parses everything the server sends (a redisReader with hiredis's default reply objects — one
// reply per message, so the extra allocation hiredis_client avoids does not matter here). Nothing
// here parses RESP by hand.
//
// Why not reuse hiredis_client's connections: a subscribed connection answers nothing but pub/sub
// pushes, so it cannot be shared or pipelined with commands; and its failure handling differs — a
// lost connection is a gap in the message stream that must be reported, not a command to fail.
//
// Concurrency
//   One std::jthread owns the socket, the reader and the whole connection state machine
//     idle --(next_attempt)--> connecting --(TCP up)--> handshaking --(all confirmed)--> subscribed
//   and any failure goes back to idle (closing the socket). It sleeps in ppoll on the socket and an
//   eventfd; the eventfd is written only by the stop callback, so destruction wakes it at once
//   whatever it waits for (connect, backoff, an idle subscription). Both user callbacks run on this
//   thread, so they are serialised and ordered without a lock. Other threads only read atomics
//   (subscribed_, the counters) and last_error_ (under err_mu_); the constructor waits on init_cv_
//   for the first attempt. No lock is held while a callback runs or across a syscall.
//
// Handshake
//   AUTH (when the URL has credentials) and one SUBSCRIBE naming every channel are written in one
//   send. Redis runs a SUBSCRIBE atomically, so its confirmations (one per channel, in argument
//   order) all arrive before any message published afterwards; there is no window in which a
//   message for a confirmed channel could come first. No SELECT: channels are not per database.
//
// Health
//   No bytes for health_interval → PING (answered with a "pong" push, which is all we need: any
//   byte proves the path alive). No bytes for 3 × health_interval, with a PING unanswered for at
//   least 2 of them and nothing waiting unread → the connection is dead: a vanished host or a
//   blackholing middlebox never closes the socket, and without this the subscription would
//   silently deliver nothing. The PING condition keeps slow callbacks (during which this thread
//   neither reads nor PINGs) from being mistaken for a silent server. A server that drops a slow
//   subscriber (client-output-buffer-limit pubsub) closes the socket, which is reported like any
//   other loss.
//
// Invariants (thread-owned state, no lock)
//   - phase_ != idle ⇒ fd_ >= 0 and rdr_ is a reader fresh for this socket (a lost stream's half
//     reply never reaches a new connection).
//   - subscribed_ is true exactly while phase_ == subscribed; on_state(true) was delivered on
//     entering that phase and on_state(false) is delivered on leaving it, before anything else.
//   - While handshaking, confirmed_ subscribe confirmations have arrived, matching channels[0..),
//     and auth_owed_ says whether the AUTH reply is still to come (it precedes them).
//   - No callback starts once stop was requested, so the destructor's join is the last word.
#include "redis/subscriber.hpp"

#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <new>
#include <random>
#include <stop_token>
#include <system_error>
#include <thread>
#include <utility>

#include "layercache/error.hpp"
#include "redis/errors.hpp"
#include "redis/redis_url.hpp"
#include "redis/wire.hpp"

namespace layercache::redis_detail {

void subscriber_options::validate() const {
  using std::chrono::milliseconds;
  if (url.empty()) {
    throw invalid_argument_error(
        "subscriber_options::url is empty; expected redis://host:port[/db]");
  }
  if (channels.empty()) {
    throw invalid_argument_error("subscriber_options::channels must name at least one channel");
  }
  if (connect_timeout <= milliseconds::zero()) {
    throw invalid_argument_error("subscriber_options::connect_timeout must be > 0");
  }
  if (reconnect_min <= milliseconds::zero()) {
    throw invalid_argument_error("subscriber_options::reconnect_min must be > 0");
  }
  if (reconnect_max < reconnect_min) {
    throw invalid_argument_error("subscriber_options::reconnect_max must be >= reconnect_min");
  }
  if (health_interval < milliseconds::zero()) {
    throw invalid_argument_error("subscriber_options::health_interval must be >= 0 (0 disables)");
  }
}

namespace {

using steady = std::chrono::steady_clock;
using time_point = steady::time_point;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

constexpr std::size_t k_read_chunk = std::size_t{64} * 1024;
// Reads per wake-up before the thread looks at its timers and the stop request again, so a
// firehose of messages cannot delay shutdown or the connect deadline indefinitely.
constexpr int k_reads_per_turn = 16;

struct reader_deleter {
  void operator()(redisReader* r) const noexcept { redisReaderFree(r); }
};
using reader_ptr = std::unique_ptr<redisReader, reader_deleter>;

struct reply_deleter {
  void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;

std::string_view str_of(const redisReply& r) noexcept {
  return r.str == nullptr ? std::string_view() : std::string_view(r.str, r.len);
}

bool is_bulk(const redisReply& r) noexcept { return r.type == REDIS_REPLY_STRING; }

// A RESP2 pub/sub push: an array whose first element is the bulk string `kind`.
bool is_push(const redisReply& r, std::string_view kind) noexcept {
  return r.type == REDIS_REPLY_ARRAY && r.elements >= 1 && is_bulk(*r.element[0]) &&
         str_of(*r.element[0]) == kind;
}

enum class phase : unsigned char { idle, connecting, handshaking, subscribed };

}  // namespace

struct subscriber::impl {
  impl(subscriber_options options, redis_endpoint endpoint, message_fn on_message,
       state_fn on_state);
  ~impl();
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;

  void run(const std::stop_token& st);
  void service(time_point now, time_point& next);
  short poll_events() const noexcept;
  void on_socket(short revents);
  void begin_connect(time_point now);
  void start_handshake(time_point now);
  bool write_out(time_point now);
  void read_in();
  bool on_reply(const redisReply& r, time_point now);
  bool on_handshake_reply(const redisReply& r, time_point now);
  void become_subscribed(time_point now);
  void drop(const status& cause, time_point now);
  void close_socket() noexcept;
  void first_attempt_done();
  void set_last_error(const status& s);
  milliseconds jittered(milliseconds d);
  void notify_state(bool up) noexcept;

  const subscriber_options opts_;
  const redis_endpoint ep_;
  const std::string peer_;
  const message_fn on_message_;
  const state_fn on_state_;
  std::string handshake_bytes_;  // AUTH (if any) + SUBSCRIBE, formatted once
  std::string ping_bytes_;
  int efd_ = -1;

  std::atomic<bool> subscribed_{false};
  std::atomic<std::uint64_t> connects_{0};
  std::atomic<std::uint64_t> disconnects_{0};
  std::atomic<std::uint64_t> messages_{0};

  mutable std::mutex err_mu_;
  status last_error_;  // guarded by err_mu_

  std::mutex init_mu_;
  std::condition_variable init_cv_;
  bool first_attempt_done_ = false;  // guarded by init_mu_

  // ---- owned by the thread ----
  std::stop_token st_;
  phase phase_ = phase::idle;
  int fd_ = -1;
  reader_ptr rdr_;
  std::vector<char> rbuf_;
  std::string out_;
  std::size_t out_off_ = 0;
  bool auth_owed_ = false;
  std::size_t confirmed_ = 0;
  time_point next_attempt_{};
  time_point attempt_deadline_{};
  time_point last_rx_{};     // last bytes received
  time_point last_ping_{};   // last health PING sent
  time_point first_ping_{};  // first PING sent since last_rx_ (valid while ping_owed_)
  bool ping_owed_ = false;   // a PING went out and no byte has come in since
  milliseconds backoff_{0};
  std::minstd_rand rng_;

  std::jthread thread_;  // last: starts once everything above is initialised
};

subscriber::impl::impl(subscriber_options options, redis_endpoint endpoint, message_fn on_message,
                       state_fn on_state)
    : opts_(std::move(options)),
      ep_(std::move(endpoint)),
      peer_(ep_.address()),
      on_message_(std::move(on_message)),
      on_state_(std::move(on_state)),
      rbuf_(k_read_chunk),
      rng_(std::random_device{}()) {
  std::vector<std::string_view> argv;
  const std::string password = ep_.password.value_or("");
  if (ep_.needs_auth()) {
    argv = {"AUTH"};
    if (!ep_.user.empty()) argv.emplace_back(ep_.user);
    argv.emplace_back(password);
    append_command(handshake_bytes_, argv);
  }
  argv = {"SUBSCRIBE"};
  argv.insert(argv.end(), opts_.channels.begin(), opts_.channels.end());
  append_command(handshake_bytes_, argv);
  append_command(ping_bytes_, std::array<std::string_view, 1>{"PING"});

  efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd_ < 0) {
    throw std::system_error(errno, std::generic_category(), "redis subscriber: eventfd");
  }
  try {
    thread_ = std::jthread([this](const std::stop_token& st) { run(st); });
  } catch (...) {
    ::close(efd_);
    throw;
  }
  // A subscriber built against a running server is subscribed when construction returns; a dead
  // server costs at most about connect_timeout here (a refused connect returns at once).
  std::unique_lock lk(init_mu_);
  init_cv_.wait_for(lk, opts_.connect_timeout + milliseconds(100),
                    [&] { return first_attempt_done_; });
}

subscriber::impl::~impl() {
  // Stop order: the stop callback writes the eventfd, the thread leaves ppoll (or finishes the
  // callback it is running), closes the socket and exits; only then does the eventfd go.
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
  ::close(efd_);
}

void subscriber::impl::run(const std::stop_token& st) {
  const std::stop_callback wake(st, [this] {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(efd_, &one, sizeof one);
  });
  st_ = st;
  next_attempt_ = steady::now();
  while (!st.stop_requested()) {
    const time_point now = steady::now();
    time_point next = now + std::chrono::seconds(1);
    service(now, next);
    if (st.stop_requested()) break;  // service may have run on_state(false)
    std::array<pollfd, 2> pfds{pollfd{efd_, POLLIN, 0}, pollfd{fd_, poll_events(), 0}};
    const nfds_t count = fd_ >= 0 ? 2 : 1;
    const timespec ts = to_timespec(next - steady::now());
    const int ready = ::ppoll(pfds.data(), count, &ts, nullptr);
    if (ready <= 0) continue;  // timeout or EINTR: service() looks at the clock
    if (pfds[0].revents != 0) {
      std::uint64_t drained = 0;
      [[maybe_unused]] const ssize_t n = ::read(efd_, &drained, sizeof drained);
      continue;  // only the stop callback writes it
    }
    if (count == 2 && pfds[1].revents != 0) on_socket(pfds[1].revents);
  }
  close_socket();
  phase_ = phase::idle;
  subscribed_.store(false, std::memory_order_release);
}

// Starts attempts when due, enforces the attempt deadline and health, and lowers `next` to the
// next time something is due.
void subscriber::impl::service(time_point now, time_point& next) {
  if (phase_ == phase::idle && now >= next_attempt_) begin_connect(now);
  if ((phase_ == phase::connecting || phase_ == phase::handshaking) && now >= attempt_deadline_) {
    drop(connect_timed_out(peer_, opts_.connect_timeout), now);
  }
  const milliseconds health = opts_.health_interval;
  if (phase_ == phase::subscribed && health > milliseconds::zero()) {
    // Dead only if the server had two intervals to answer a PING too: silence that comes from
    // this thread sitting in slow callbacks (not reading, not PINGing) proves nothing. Bytes
    // waiting unread prove the opposite (the PONG may be there, behind a slow callback).
    if (ping_owed_ && now - last_rx_ >= 3 * health && now - first_ping_ >= 2 * health) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 0) == 0) drop(connection_stalled(peer_, 3 * health), now);
    } else if (now - std::max(last_rx_, last_ping_) >= health) {
      last_ping_ = now;
      if (!ping_owed_) first_ping_ = now;
      ping_owed_ = true;
      // A PING still stuck in the socket buffer proves the same thing as a second one would.
      if (out_off_ == out_.size()) {
        out_ = ping_bytes_;
        out_off_ = 0;
        write_out(now);
      }
    }
  }
  switch (phase_) {
    case phase::idle:
      next = std::min(next, next_attempt_);
      break;
    case phase::connecting:
    case phase::handshaking:
      next = std::min(next, attempt_deadline_);
      break;
    case phase::subscribed:
      if (health > milliseconds::zero()) {
        next = std::min(next, std::max(last_rx_, last_ping_) + health);
        if (ping_owed_) {
          next = std::min(next, std::max(last_rx_ + 3 * health, first_ping_ + 2 * health));
        }
      }
      break;
  }
}

short subscriber::impl::poll_events() const noexcept {
  switch (phase_) {
    case phase::idle:
      return 0;
    case phase::connecting:
      return POLLOUT;
    case phase::handshaking:
    case phase::subscribed:
      break;
  }
  short events = POLLIN | POLLRDHUP;
  if (out_off_ < out_.size()) events = static_cast<short>(events | POLLOUT);
  return events;
}

void subscriber::impl::on_socket(short revents) {
  const time_point now = steady::now();
  if (phase_ == phase::connecting) {
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) soerr = errno;
    if (soerr != 0) {
      drop(transport_error(peer_, "connect to", soerr), now);
    } else {
      start_handshake(now);
    }
    return;
  }
  if ((revents & POLLOUT) != 0 && out_off_ < out_.size() && !write_out(now)) return;
  if ((revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) != 0) read_in();
}

void subscriber::impl::begin_connect(time_point now) {
  attempt_deadline_ = now + opts_.connect_timeout;
  rdr_.reset(redisReaderCreate());
  if (rdr_ == nullptr) {
    drop(status(errc::resource_exhausted, "redis: out of memory creating a reply reader"), now);
    return;
  }
  const tcp_attempt attempt = open_tcp(ep_, peer_);
  if (!attempt.error.ok()) {
    drop(attempt.error, now);
    return;
  }
  fd_ = attempt.fd;
  phase_ = phase::connecting;
  if (attempt.connected) start_handshake(now);
}

void subscriber::impl::start_handshake(time_point now) {
  phase_ = phase::handshaking;
  out_ = handshake_bytes_;
  out_off_ = 0;
  auth_owed_ = ep_.needs_auth();
  confirmed_ = 0;
  write_out(now);
}

// Sends what out_ still holds, as far as the socket takes it. Returns false if the connection
// was dropped.
bool subscriber::impl::write_out(time_point now) {
  while (out_off_ < out_.size()) {
    const ssize_t sent = ::send(fd_, out_.data() + out_off_, out_.size() - out_off_, MSG_NOSIGNAL);
    if (sent > 0) {
      out_off_ += static_cast<std::size_t>(sent);
      continue;
    }
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;  // POLLOUT resumes
    drop(transport_error(peer_, "send to", sent < 0 ? errno : EPIPE), now);
    return false;
  }
  out_.clear();
  out_off_ = 0;
  return true;
}

void subscriber::impl::read_in() {
  bool eof = false;
  int err = 0;
  bool got_bytes = false;
  for (int i = 0; i < k_reads_per_turn; ++i) {
    const ssize_t got = ::recv(fd_, rbuf_.data(), rbuf_.size(), 0);
    if (got > 0) {
      got_bytes = true;
      if (redisReaderFeed(rdr_.get(), rbuf_.data(), static_cast<std::size_t>(got)) != REDIS_OK) {
        drop(protocol_error(peer_, rdr_->errstr), steady::now());
        return;
      }
      if (static_cast<std::size_t>(got) < rbuf_.size()) break;  // drained; skip the EAGAIN recv
      continue;
    }
    if (got == 0) {
      eof = true;
    } else if (errno == EINTR) {
      continue;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      err = errno;
    }
    break;
  }
  const time_point now = steady::now();
  if (got_bytes) {
    last_rx_ = now;
    ping_owed_ = false;
  }
  // Every complete reply first, EOF after: messages the server sent before closing are delivered.
  for (;;) {
    if (st_.stop_requested()) return;
    void* raw = nullptr;
    if (redisReaderGetReply(rdr_.get(), &raw) != REDIS_OK) {
      drop(protocol_error(peer_, rdr_->errstr), now);
      return;
    }
    if (raw == nullptr) break;
    const reply_ptr r(static_cast<redisReply*>(raw));
    if (!on_reply(*r, now)) return;
  }
  if (eof) {
    drop(connection_closed(peer_), now);
  } else if (err != 0) {
    drop(transport_error(peer_, "recv from", err), now);
  }
}

// Returns false if the connection was dropped.
bool subscriber::impl::on_reply(const redisReply& r, time_point now) {
  if (phase_ == phase::handshaking) return on_handshake_reply(r, now);
  if (is_push(r, "message")) {
    if (r.elements != 3 || !is_bulk(*r.element[1]) || !is_bulk(*r.element[2])) {
      drop(protocol_error(peer_, "malformed message push"), now);
      return false;
    }
    messages_.fetch_add(1, std::memory_order_relaxed);
    try {
      on_message_(str_of(*r.element[1]), str_of(*r.element[2]));
    } catch (...) {
      // Contract breach by the callback; the subscription (and every later message) matters more.
    }
    return true;
  }
  if (is_push(r, "pong")) return true;  // a health PING's answer; the bytes already counted
  if (r.type == REDIS_REPLY_ERROR) {
    // Most likely a PING the ACL user may not run. The bytes prove the connection alive and the
    // subscription is unaffected, so keep it; the error is visible in last_error().
    set_last_error(error_reply_status(str_of(r)));
    return true;
  }
  // An unsubscribe (or anything else) means our channel set is no longer what we think it is.
  drop(protocol_error(peer_, "unexpected push while subscribed"), now);
  return false;
}

bool subscriber::impl::on_handshake_reply(const redisReply& r, time_point now) {
  if (auth_owed_) {
    auth_owed_ = false;
    if (r.type == REDIS_REPLY_ERROR) {
      drop(auth_failed(ep_.user_for_messages(), str_of(r)), now);
      return false;
    }
    return true;
  }
  if (r.type == REDIS_REPLY_ERROR) {
    const std::string_view msg = str_of(r);
    // NOAUTH when the URL has no password but the server wants one; NOPERM for a channel the ACL
    // user may not subscribe to (internal: a configuration bug, retried like everything else).
    drop(classify_error_reply(msg) == errc::invalid_argument
             ? auth_failed(ep_.user_for_messages(), msg)
             : error_reply_status(msg),
         now);
    return false;
  }
  if (!is_push(r, "subscribe") || r.elements != 3 || !is_bulk(*r.element[1]) ||
      str_of(*r.element[1]) != opts_.channels[confirmed_]) {
    drop(protocol_error(peer_, "unexpected reply to SUBSCRIBE"), now);
    return false;
  }
  if (++confirmed_ == opts_.channels.size()) become_subscribed(now);
  return true;
}

void subscriber::impl::become_subscribed(time_point now) {
  phase_ = phase::subscribed;
  backoff_ = milliseconds::zero();
  last_rx_ = now;
  last_ping_ = now;
  ping_owed_ = false;
  connects_.fetch_add(1, std::memory_order_relaxed);
  subscribed_.store(true, std::memory_order_release);
  first_attempt_done();
  notify_state(true);
}

// Ends the current attempt or connection: reports a lost subscription, schedules the next attempt.
void subscriber::impl::drop(const status& cause, time_point now) {
  const bool was_subscribed = phase_ == phase::subscribed;
  close_socket();
  phase_ = phase::idle;
  set_last_error(cause);
  if (was_subscribed) {
    // The connection worked: the server is probably back in a moment (restart, killed client).
    next_attempt_ = now + jittered(opts_.reconnect_min);
    subscribed_.store(false, std::memory_order_release);
    disconnects_.fetch_add(1, std::memory_order_relaxed);
    notify_state(false);
    return;
  }
  backoff_ = backoff_ == milliseconds::zero() ? opts_.reconnect_min
                                              : std::min(backoff_ * 2, opts_.reconnect_max);
  next_attempt_ = now + jittered(backoff_);
  first_attempt_done();
}

void subscriber::impl::close_socket() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  rdr_.reset();
  out_.clear();
  out_off_ = 0;
}

void subscriber::impl::first_attempt_done() {
  {
    std::lock_guard lk(init_mu_);
    if (first_attempt_done_) return;
    first_attempt_done_ = true;
  }
  init_cv_.notify_all();
}

void subscriber::impl::set_last_error(const status& s) {
  std::lock_guard lk(err_mu_);
  last_error_ = s;
}

milliseconds subscriber::impl::jittered(milliseconds d) {
  // Uniform in [d/2, d]: spreads the reconnects of many subscribers after a server restart.
  std::uniform_int_distribution<long long> dist(d.count() / 2, d.count());
  return milliseconds(dist(rng_));
}

void subscriber::impl::notify_state(bool up) noexcept {
  if (!on_state_ || st_.stop_requested()) return;
  try {
    on_state_(up);
  } catch (...) {
    // Contract breach by the callback; staying subscribed (or reconnecting) matters more.
  }
}

// ---- subscriber ---------------------------------------------------------------------------------

subscriber::subscriber(subscriber_options options, message_fn on_message, state_fn on_state) {
  options.validate();
  if (!on_message) throw invalid_argument_error("subscriber: on_message must not be empty");
  redis_endpoint ep = parse_redis_url(options.url);
  impl_ = std::make_unique<impl>(std::move(options), std::move(ep), std::move(on_message),
                                 std::move(on_state));
}

subscriber::~subscriber() = default;

bool subscriber::subscribed() const noexcept {
  return impl_->subscribed_.load(std::memory_order_acquire);
}

subscriber_stats subscriber::stats() const {
  subscriber_stats s;
  s.connects = impl_->connects_.load(std::memory_order_relaxed);
  s.disconnects = impl_->disconnects_.load(std::memory_order_relaxed);
  s.messages = impl_->messages_.load(std::memory_order_relaxed);
  return s;
}

status subscriber::last_error() const {
  std::lock_guard lk(impl_->err_mu_);
  return impl_->last_error_;
}

}  // namespace layercache::redis_detail
