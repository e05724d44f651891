// hiredis_client.cpp — redis_client over hiredis 0.14: our own non-blocking sockets, ppoll, an
// eventfd and futexes; hiredis formats commands (redisFormatSdsCommandArgv, the sprintf-free
// sibling of redisFormatCommandArgv) and parses replies (redisReader, building our reply type
// through its object-function hooks: reply_reader.hpp). Nothing here parses RESP by hand. Which
// commands a shared connection accepts is in command_rules.hpp.
//
// Why not Boost.Asio or the hiredis async API: both route every command through the I/O thread
// (caller → I/O thread → caller), which costs two thread wake-ups per command — more than the whole
// loopback round trip we are trying to match. Asio would also put a heavy header into this file for
// nothing (STACK.md), and hiredis 0.14's async API has no timeouts at all. With a few sockets and a
// handful of events, ppoll is all the multiplexing we need, and the hot path never touches the I/O
// thread.
//
// Concurrency
//   Leader/follower per connection. Each connection has two roles, each held by at most one thread:
//   - writer: sends the connection's queued bytes. A caller whose command finds nothing owed on
//     the connection (every sent command answered) becomes the writer and sends at once from its
//     own thread. A command queued while others are in flight waits in wbuf, and the reader sends
//     everything queued in one send() as soon as the next replies arrive — that is the automatic
//     pipelining: one batch in flight per connection; with N busy callers a batch holds about
//     N/connections commands, and one send(), one recv() and one turn of the server's event loop
//     serve all of them. A writer sends one batch per turn (what is queued meanwhile waits for the
//     replies; if they all came in during the send, the writer sends it too). Measured
//     alternatives, with 32 callers on 2 cores: sending on arrival, or allowing two batches in
//     flight, both fell to ~1 command per send() and lost the gain — a send() is too short for
//     others to queue behind it. On EAGAIN the writer hands the role to the I/O thread, which
//     finishes the write on POLLOUT.
//   - reader: owns the socket's read side and the redisReader. A synchronous caller that queues a
//     command while nobody reads becomes the reader (the leader): it ppolls the socket until its
//     deadline, parses what arrives and completes every command in the batch — its own and other
//     callers' — in order. When its own reply is in, it promotes the first live synchronous waiter
//     (a follower) to reader, or hands the role to the I/O thread if only async/abandoned commands
//     are left, or releases it when nothing is owed.
//   So a lone caller writes, waits and reads on its own thread (no hand-off at all), and concurrent
//   callers share sends and recvs: one syscall carries many commands and replies.
//   Followers sleep on a futex in their own call record, with their deadline as the futex timeout.
//   The I/O thread (one std::jthread) does everything nobody waits for synchronously: connecting
//   and the AUTH/SELECT/PING handshake, reconnect backoff, health PINGs, stall detection, finishing
//   writes after EAGAIN, reading replies owed to async/abandoned commands, async deadlines, and
//   running async callbacks. It sleeps in ppoll on the eventfd plus only the sockets whose roles it
//   holds, so it is not woken per command.
//   Lock order: connection::mu → err_mu_ / init_mu_ / deliver_mu_ (leaves); timers_mu_ is taken
//   with no other lock held. No lock is held across a syscall that can block (ppoll, futex_wait);
//   send()/recv() run without locks too (non-blocking sockets).
//
// Resync (replies lost on the way)
//   TCP never loses bytes, but a middlebox can (the test fault proxy's blackhole does): then one
//   command never gets a reply and every later reply would be matched one command too early —
//   a caller would receive another caller's value. The first sign is always a caller giving up at
//   its deadline. So when a command is abandoned while its reply is still owed, the connection
//   queues a sentinel, ECHO <token unique to this client and sequence number>, behind everything
//   sent so far, and becomes suspect: replies for live commands are held until the sentinel's
//   answer arrives exactly at the sentinel's place, which proves every earlier match right; then
//   the held replies are delivered. A token anywhere else, anything else at the sentinel's place,
//   or no answer within health_interval (1 s if health is disabled) proves or suggests the stream
//   is out of step: the connection is dropped (callers get unavailable, never a wrong value) and
//   re-established. New commands avoid suspect connections while another is up. In the common
//   case — a slow server, late replies — this costs one small ECHO and no reconnect.
//   Limitation: a loss that no caller times out on (e.g. a blackhole shorter than every pending
//   deadline) is not detected by this; real TCP cannot produce it.
//
// Invariants (per connection, under its mu)
//   - inflight holds one entry per command queued on the current socket, in send order; the reply
//     read next belongs to inflight.front(), whose sequence number is head_seq. Sequence numbers
//     keep increasing across reconnects, so (connection, seq) names a command forever.
//   - An entry whose caller gave up (deadline) keeps its place with owner == nullptr: its reply is
//     read and dropped, so replies never shift to the wrong caller.
//   - state == ready and inflight non-empty ⇒ reader != none (somebody will read the replies).
//     A partial send pending ⇒ writer != none. wbuf non-empty ⇒ writer != none, or replies are
//     owed for sent commands (the reader sends wbuf after its next read). So a writer keeps its
//     role while wbuf holds commands and nothing is owed: a reader that read the last replies
//     while the writer was sending left wbuf to it. The last `unsent` entries of inflight are
//     the ones whose bytes are still in wbuf.
//   - Only the I/O thread opens, closes or replaces fd, and only while no role is held; a thread
//     holding a role may therefore use fd without the lock. Whoever sees a socket error marks the
//     connection broken, fails all its entries with unavailable and shutdown()s the socket (which
//     wakes the other role holder); role holders release their roles; the I/O thread then closes
//     and reconnects.
//   - While sentinels is non-empty (the connection is "suspect"), a reply matched to a live command
//     is held, not delivered, until the sentinel behind it is verified (see Resync).
//   - A call is completed exactly once, under mu: by its reply, by the connection breaking, or by
//     its own deadline (which also detaches it from inflight). A synchronous call lives on its
//     caller's stack: after k_done is set (under mu) nobody touches it again except a FUTEX_WAKE on
//     its address, which the kernel treats as a number (a stale wake is a spurious wake-up that
//     every waiter tolerates). An async call is owned by its inflight entry and deleted on
//     completion.
#include "redis/hiredis_client.hpp"

#include <hiredis/hiredis.h>
#include <linux/futex.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <queue>
#include <random>
#include <stop_token>
#include <system_error>
#include <thread>
#include <utility>

#include "layercache/error.hpp"
#include "redis/command_rules.hpp"
#include "redis/errors.hpp"
#include "redis/redis_url.hpp"
#include "redis/reply_reader.hpp"
#include "redis/wire.hpp"

namespace layercache::redis_detail {

// redis_client's out-of-line members live in its only implementation's file.
redis_client::~redis_client() = default;

void client_options::validate() const {
  using std::chrono::milliseconds;
  if (url.empty()) {
    throw invalid_argument_error("client_options::url is empty; expected redis://host:port[/db]");
  }
  if (connections == 0) throw invalid_argument_error("client_options::connections must be >= 1");
  if (connect_timeout <= milliseconds::zero()) {
    throw invalid_argument_error("client_options::connect_timeout must be > 0");
  }
  if (reconnect_min <= milliseconds::zero()) {
    throw invalid_argument_error("client_options::reconnect_min must be > 0");
  }
  if (reconnect_max < reconnect_min) {
    throw invalid_argument_error("client_options::reconnect_max must be >= reconnect_min");
  }
  if (health_interval < milliseconds::zero()) {
    throw invalid_argument_error("client_options::health_interval must be >= 0 (0 disables)");
  }
  if (max_pending == 0) throw invalid_argument_error("client_options::max_pending must be >= 1");
}

namespace {

using steady = std::chrono::steady_clock;
using time_point = steady::time_point;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

// ---- futex-based waiting ------------------------------------------------------------------------
// std::atomic::wait has no timeout, and a condition variable per call would add a mutex round trip
// to every completion; a futex on the call's own word is the cheapest deadline-bounded sleep.

constexpr std::uint32_t k_done = 1;      // every result of the call is final
constexpr std::uint32_t k_promoted = 2;  // the call's thread now holds the reader role
constexpr std::uint32_t k_sleeping = 4;  // the thread sleeps (or is about to) in futex_wait

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

std::uint32_t* futex_word(std::atomic<std::uint32_t>* word) {
  return reinterpret_cast<std::uint32_t*>(word);
}

void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, nanoseconds timeout) {
  const timespec ts = to_timespec(timeout);
  // Returns on wake, timeout, EINTR or when *word != expected; the caller re-checks in all cases.
  syscall(SYS_futex, futex_word(word), FUTEX_WAIT_PRIVATE, expected, &ts, nullptr, 0);
}

void futex_wake(std::atomic<std::uint32_t>* word) {
  syscall(SYS_futex, futex_word(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

// ---- calls and connections ----------------------------------------------------------------------

// One execute / execute_pipeline / execute_async.
struct call {
  std::atomic<std::uint32_t> word{0};
  // Guarded by the mutex of the connection the call is queued on.
  std::uint32_t count = 0;      // commands in the call
  std::uint32_t remaining = 0;  // commands without a final result
  std::uint64_t first_seq = 0;  // sequence number of its first command
  std::span<result> results;    // sync: the caller's storage; async: &async_result
  // Async only: heap-allocated, owned by its inflight entry (or by the delivery that ends it).
  bool async = false;
  std::function<void(result)> on_done;
  result async_result;
};

struct entry {
  call* owner = nullptr;  // nullptr: nobody wants the reply (abandoned, PING or sentinel)
  std::uint32_t index = 0;
  bool internal = false;  // a health PING or a sentinel: not counted as a discarded reply
  bool sentinel = false;  // an ECHO whose answer must be this connection's sync token for it
};

// A reply that arrived while the connection's reply order was unproven (see "Resync" above).
struct held_reply {
  std::uint64_t seq = 0;
  entry e;
  result r;
};

// An ECHO sent to prove the reply order after a caller gave up on a command.
struct pending_sentinel {
  std::uint64_t seq = 0;
  time_point deadline{};
};

enum class role : unsigned char { none, caller, io };
enum class conn_state : unsigned char { disconnected, connecting, handshaking, ready, broken };
enum class actor : unsigned char { caller, io };
enum class handshake_step : unsigned char { auth, select, ping };

using delivery = std::pair<std::function<void(result)>, result>;

// Work a thread must do after releasing a connection's mutex.
struct after_unlock {
  std::vector<std::atomic<std::uint32_t>*> wake;
  std::vector<delivery> deliver;
  bool wake_io = false;
};

constexpr std::size_t k_read_chunk = 64 * 1024;

struct connection {
  explicit connection(std::size_t i) : index(i), rbuf(k_read_chunk) {}
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  ~connection() {
    if (fd >= 0) ::close(fd);
    if (rdr != nullptr) redisReaderFree(rdr);
  }

  const std::size_t index;
  std::mutex mu;
  // ---- guarded by mu ----
  conn_state state = conn_state::disconnected;
  int fd = -1;
  role reader = role::none;
  role writer = role::none;
  std::deque<entry> inflight;
  std::uint64_t head_seq = 0;  // sequence number of inflight.front()
  std::string wbuf;            // formatted commands the writer has not taken yet
  std::size_t unsent = 0;      // inflight entries whose bytes are still in wbuf (the tail)
  time_point last_rx{};        // last time bytes arrived
  time_point last_tx{};        // last progress of a write the I/O thread continued after EAGAIN
  time_point owed_since{};     // last time inflight went from empty to non-empty
  time_point last_activity{};  // last command queued or completed (idle PING timer)
  std::deque<pending_sentinel> sentinels;  // unverified sentinels, in send order
  std::deque<held_reply> held;             // replies waiting for sentinels.front()
  client_stats counters;
  std::atomic<bool> up{false};       // state == ready; stored under mu, read without it
  std::atomic<bool> suspect{false};  // !sentinels.empty(); stored under mu, read without it

  // ---- owned by the reader role (by the I/O thread while not ready) ----
  redisReader* rdr = nullptr;
  std::vector<char> rbuf;
  std::vector<result> rbatch;

  // ---- owned by the writer role ----
  std::string wout;
  std::size_t wout_off = 0;

  // ---- owned by the I/O thread (connect, handshake, backoff) ----
  time_point next_attempt{};
  time_point attempt_deadline{};
  milliseconds backoff{0};
  bool first_attempt_done = false;
  std::string hs_out;
  std::size_t hs_off = 0;
  std::vector<handshake_step> hs_expect;
  std::size_t hs_got = 0;
};

struct async_timer {
  time_point when;
  std::size_t conn = 0;
  std::uint64_t seq = 0;
  milliseconds budget{0};
  bool operator>(const async_timer& o) const noexcept { return when > o.when; }
};

// The I/O thread of the client that is running on this thread, if any.
thread_local const void* tl_io_owner = nullptr;

// Test seam (hiredis_client.hpp): one relaxed load per send when no hook is installed.
std::atomic<bool> g_after_send_installed{false};
std::function<void()> g_after_send;  // written only while no client sends (see the header)

void after_send_seam() {
  if (g_after_send_installed.load(std::memory_order_acquire)) g_after_send();
}

// =================================================================================================

class hiredis_client final : public redis_client {
 public:
  hiredis_client(const client_options& options, redis_endpoint endpoint);
  ~hiredis_client() override;
  hiredis_client(const hiredis_client&) = delete;
  hiredis_client& operator=(const hiredis_client&) = delete;

  using redis_client::execute;
  result execute(std::span<const std::string_view> argv, milliseconds deadline) override;
  std::vector<result> execute_pipeline(std::span<const std::vector<std::string>> commands,
                                       milliseconds deadline) override;
  void execute_async(std::vector<std::string> argv, milliseconds deadline,
                     std::function<void(result)> done) override;
  bool connected() const noexcept override;
  client_stats stats() const override;

 private:
  // ---- any thread ----
  connection* enqueue(call* c, std::string_view bytes, std::uint32_t n, actor who, time_point now,
                      bool& lead_write, bool& lead_read, bool& need_io, std::uint64_t& seq,
                      status& refusal);
  void enqueue_locked(connection& cn, call* c, std::string_view bytes, std::uint32_t n,
                      bool internal, actor who, bool& lead_write, bool& lead_read, bool& need_io,
                      time_point now);
  void run_sync(call& c, std::string_view bytes, milliseconds budget);
  void write_loop(connection& cn, actor who);
  void reader_loop(connection& cn, call& c, time_point deadline, milliseconds budget);
  void follower_wait(connection& cn, call& c, time_point deadline, milliseconds budget);
  bool read_available(connection& cn, actor who, call* self);
  bool complete_front_locked(connection& cn, result&& r, after_unlock& todo);
  static void deliver_locked(connection& cn, const entry& e, result&& r, after_unlock& todo);
  static void finish_locked(call& c, after_unlock& todo);
  static entry* find_unanswered_locked(connection& cn, std::uint64_t seq);
  void add_sentinel_locked(connection& cn, std::uint64_t after_seq, time_point now,
                           after_unlock& todo);
  std::string sync_token(std::uint64_t seq) const;
  void release_reader_locked(connection& cn, after_unlock& todo);
  void abandon_locked(connection& cn, call& c, milliseconds budget, after_unlock& todo);
  void break_locked(connection& cn, const status& cause, after_unlock& todo);
  void flush(after_unlock& todo, actor who);
  void wake_io();
  void set_last_error(const status& s);
  status last_error() const;
  bool on_io_thread() const noexcept { return tl_io_owner == this; }
  void fail_async(call* c, status why);

  // ---- I/O thread ----
  void io_loop(std::stop_token st);
  short service_locked(connection& cn, time_point now, time_point& next, after_unlock& todo);
  void handle_events(connection& cn, short revents);
  void begin_connect_locked(connection& cn, time_point now);
  void start_handshake_locked(connection& cn, time_point now);
  void handshake_io_locked(connection& cn, short revents, time_point now);
  void fail_attempt_locked(connection& cn, const status& why, time_point now);
  void become_ready_locked(connection& cn, time_point now);
  void close_socket_locked(connection& cn);
  void first_attempt_done_locked(connection& cn);
  void run_due_timers(time_point now);
  void run_deliveries(std::vector<delivery>& items);
  void run_queued_deliveries();
  void shutdown_all();
  milliseconds jittered(milliseconds d);

  const client_options opts_;
  const redis_endpoint ep_;
  const std::string peer_;
  const std::size_t per_conn_limit_;
  std::string ping_bytes_;
  std::string sync_prefix_;  // "layercache-sync:<random>:" — sentinel tokens are prefix + seq
  std::vector<std::unique_ptr<connection>> conns_;
  std::atomic<std::size_t> rr_{0};

  int efd_ = -1;
  std::atomic<bool> io_wake_pending_{false};

  mutable std::mutex err_mu_;
  status last_error_;  // guarded by err_mu_: the newest connect/connection failure

  std::mutex timers_mu_;
  // guarded by timers_mu_:
  std::priority_queue<async_timer, std::vector<async_timer>, std::greater<>> timers_;
  time_point io_planned_wake_{};  // when the I/O thread will wake at the latest

  std::mutex deliver_mu_;
  std::vector<delivery> deliveries_;  // guarded by deliver_mu_: async callbacks for the I/O thread

  std::mutex init_mu_;
  std::condition_variable init_cv_;
  std::size_t init_pending_ = 0;  // guarded by init_mu_: connections before their first attempt

  std::minstd_rand rng_;  // I/O thread only (backoff jitter)
  std::jthread io_;       // declared last: started after everything it uses exists
};

hiredis_client::hiredis_client(const client_options& options, redis_endpoint endpoint)
    : opts_(options),
      ep_(std::move(endpoint)),
      peer_(ep_.address()),
      per_conn_limit_((options.max_pending + options.connections - 1) / options.connections),
      rng_(std::random_device{}()) {
  const std::array<std::string_view, 1> ping{"PING"};
  append_command(ping_bytes_, ping);
  {
    std::random_device rd;
    const std::uint64_t nonce = (std::uint64_t{rd()} << 32) ^ rd();
    sync_prefix_ = "layercache-sync:" + std::to_string(nonce) + ":";
  }
  efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd_ < 0) throw std::system_error(errno, std::generic_category(), "redis client: eventfd");
  const time_point now = steady::now();
  for (std::size_t i = 0; i < opts_.connections; ++i) {
    auto cn = std::make_unique<connection>(i);
    cn->rdr = make_reader();
    if (cn->rdr == nullptr) {
      ::close(efd_);
      throw std::bad_alloc();
    }
    cn->next_attempt = now;
    conns_.push_back(std::move(cn));
  }
  init_pending_ = conns_.size();
  try {
    io_ = std::jthread([this](std::stop_token st) { io_loop(std::move(st)); });
  } catch (...) {
    ::close(efd_);
    throw;
  }
  // Give the first connection attempts a chance, so a client built against a running server is
  // usable as soon as it is constructed. Bounded: a dead server costs at most connect_timeout here.
  std::unique_lock lk(init_mu_);
  init_cv_.wait_for(lk, opts_.connect_timeout + milliseconds(100),
                    [&] { return init_pending_ == 0; });
}

hiredis_client::~hiredis_client() {
  // Stop order: the I/O thread fails every pending command (async callbacks run on it), closes the
  // sockets and exits; then the eventfd goes. Callers must not be inside execute() any more.
  io_.request_stop();
  if (io_.joinable()) io_.join();
  ::close(efd_);
}

// ---- public entry points ------------------------------------------------------------------------

result hiredis_client::execute(std::span<const std::string_view> argv, milliseconds deadline) {
  result out;
  if (on_io_thread()) {
    out.error = bad_command(
        "execute() called from an execute_async() callback (it runs on the "
        "I/O thread the call would wait on)");
    return out;
  }
  if (deadline <= milliseconds::zero()) {
    out.error = bad_command("the deadline must be positive");
    return out;
  }
  if (status bad = check_single(argv); !bad.ok()) {
    out.error = std::move(bad);
    return out;
  }
  const formatted_command cmd(argv);
  call c;
  c.count = 1;
  c.results = std::span<result>(&out, 1);
  run_sync(c, cmd.bytes(), deadline);
  return out;
}

std::vector<result> hiredis_client::execute_pipeline(
    std::span<const std::vector<std::string>> commands, milliseconds deadline) {
  std::vector<result> out(commands.size());
  if (commands.empty()) return out;
  status bad;
  if (on_io_thread()) {
    bad = bad_command(
        "execute_pipeline() called from an execute_async() callback (it runs on the "
        "I/O thread the call would wait on)");
  } else if (deadline <= milliseconds::zero()) {
    bad = bad_command("the deadline must be positive");
  } else if (commands.size() > std::numeric_limits<std::uint32_t>::max()) {
    bad = bad_command("pipeline too long");
  } else {
    bool in_multi = false;
    for (const auto& cmd : commands) {
      if (cmd.empty()) {
        bad = bad_command("empty command in pipeline");
        break;
      }
      std::string why;
      const command_class k = classify(cmd, why);
      if (k == command_class::forbidden) {
        bad = bad_command(why);
        break;
      }
      if (k == command_class::multi) {
        if (in_multi) {
          bad = bad_command("nested MULTI in pipeline");
          break;
        }
        in_multi = true;
      } else if (k == command_class::exec) {
        if (!in_multi) {
          bad = bad_command(std::string(cmd[0]) + " without MULTI in the same pipeline");
          break;
        }
        in_multi = false;
      }
    }
    if (bad.ok() && in_multi)
      bad = bad_command("MULTI without EXEC or DISCARD in the same pipeline");
  }
  if (!bad.ok()) {
    for (auto& r : out) r.error = bad;
    return out;
  }
  std::string bytes;
  for (const auto& cmd : commands) append_command(bytes, cmd);
  call c;
  c.count = static_cast<std::uint32_t>(commands.size());
  c.results = std::span<result>(out);
  run_sync(c, bytes, deadline);
  return out;
}

void hiredis_client::execute_async(std::vector<std::string> argv, milliseconds deadline,
                                   std::function<void(result)> done) {
  auto* c = new call;
  c->async = true;
  c->count = 1;
  c->on_done = std::move(done);
  c->results = std::span<result>(&c->async_result, 1);
  if (deadline <= milliseconds::zero())
    return fail_async(c, bad_command("the deadline must be positive"));
  if (status bad = check_single(argv); !bad.ok()) return fail_async(c, std::move(bad));
  const formatted_command cmd(argv);
  const std::string_view bytes = cmd.bytes();
  const actor who = on_io_thread() ? actor::io : actor::caller;
  const time_point now = steady::now();
  const time_point when = now + deadline;
  bool lead_write = false;
  bool lead_read = false;
  bool need_io = false;
  std::uint64_t seq = 0;
  status refusal;
  connection* cn = enqueue(c, bytes, 1, who, now, lead_write, lead_read, need_io, seq, refusal);
  if (cn == nullptr) return fail_async(c, std::move(refusal));
  // From here on `c` belongs to its inflight entry and may already be completed and deleted.
  bool wake = need_io;
  {
    std::lock_guard lk(timers_mu_);
    timers_.push(async_timer{when, cn->index, seq, deadline});
    wake = wake || when < io_planned_wake_;
  }
  if (lead_write) write_loop(*cn, who);
  if (wake && who == actor::caller) wake_io();
}

bool hiredis_client::connected() const noexcept {
  for (const auto& cn : conns_) {
    if (cn->up.load(std::memory_order_acquire)) return true;
  }
  return false;
}

client_stats hiredis_client::stats() const {
  client_stats sum;
  for (const auto& cn : conns_) {
    std::lock_guard lk(cn->mu);
    sum.connects += cn->counters.connects;
    sum.disconnects += cn->counters.disconnects;
    sum.commands += cn->counters.commands;
    sum.write_batches += cn->counters.write_batches;
    sum.timeouts += cn->counters.timeouts;
    sum.discarded_replies += cn->counters.discarded_replies;
  }
  return sum;
}

// ---- caller side --------------------------------------------------------------------------------

connection* hiredis_client::enqueue(call* c, std::string_view bytes, std::uint32_t n, actor who,
                                    time_point now, bool& lead_write, bool& lead_read,
                                    bool& need_io, std::uint64_t& seq, status& refusal) {
  const std::size_t count = conns_.size();
  const std::size_t start = rr_.fetch_add(1, std::memory_order_relaxed);
  bool any_up = false;
  // Pass 0 skips suspect connections (reply order unproven after a timeout): their replies are
  // held until proven, or the connection is dropped. Pass 1 takes any connection that is up.
  for (std::size_t k = 0; k < 2 * count; ++k) {
    connection& cn = *conns_[(start + k) % count];
    if (!cn.up.load(std::memory_order_acquire)) continue;
    if (k < count && cn.suspect.load(std::memory_order_relaxed)) continue;
    std::lock_guard lk(cn.mu);
    if (cn.state != conn_state::ready) continue;
    any_up = true;
    if (cn.inflight.size() + n > per_conn_limit_) continue;
    seq = cn.head_seq + cn.inflight.size();
    enqueue_locked(cn, c, bytes, n, false, who, lead_write, lead_read, need_io, now);
    return &cn;
  }
  refusal = any_up ? too_many_pending(opts_.max_pending) : not_connected(peer_, last_error());
  return nullptr;
}

void hiredis_client::enqueue_locked(connection& cn, call* c, std::string_view bytes,
                                    std::uint32_t n, bool internal, actor who, bool& lead_write,
                                    bool& lead_read, bool& need_io, time_point now) {
  if (cn.inflight.empty()) cn.owed_since = now;
  cn.last_activity = now;
  // Replies owed for commands already sent: if there are some, this command waits in wbuf and
  // the reader sends it together with everything else queued meanwhile as soon as replies come
  // in (one send() for the whole batch). If none, nothing would trigger that, so send now.
  const bool nothing_owed = cn.inflight.size() == cn.unsent;
  if (c != nullptr) {
    c->first_seq = cn.head_seq + cn.inflight.size();
    c->remaining = n;
  }
  for (std::uint32_t i = 0; i < n; ++i) cn.inflight.push_back(entry{c, i, internal});
  cn.wbuf.append(bytes);
  cn.unsent += n;
  if (!internal) cn.counters.commands += n;
  if (cn.writer == role::none && nothing_owed) {
    cn.writer = who == actor::caller ? role::caller : role::io;
    lead_write = true;
  }
  if (cn.reader == role::none) {
    if (c != nullptr && !c->async && who == actor::caller) {
      cn.reader = role::caller;
      lead_read = true;
    } else {
      cn.reader = role::io;
      need_io = true;
    }
  }
}

void hiredis_client::run_sync(call& c, std::string_view bytes, milliseconds budget) {
  const time_point now = steady::now();
  const time_point deadline = now + budget;
  bool lead_write = false;
  bool lead_read = false;
  bool need_io = false;
  std::uint64_t seq = 0;
  status refusal;
  connection* cn =
      enqueue(&c, bytes, c.count, actor::caller, now, lead_write, lead_read, need_io, seq, refusal);
  if (cn == nullptr) {
    for (auto& r : c.results) r.error = refusal;
    return;
  }
  if (lead_write) write_loop(*cn, actor::caller);
  if (lead_read) {
    reader_loop(*cn, c, deadline, budget);
  } else {
    follower_wait(*cn, c, deadline, budget);
  }
}

void hiredis_client::write_loop(connection& cn, actor who) {
  after_unlock todo;
  {
    std::unique_lock lk(cn.mu);
    const int fd = cn.fd;
    bool took_batch = false;
    for (;;) {
      if (cn.state != conn_state::ready) {
        cn.writer = role::none;
        todo.wake_io = true;  // the I/O thread closes the socket once no role is held
        break;
      }
      if (cn.wout_off == cn.wout.size()) {
        // One batch per turn: what was queued while it was being sent waits for the replies to
        // it (the reader sends it then), so it grows into the next batch instead of trickling
        // out in small sends. Unless no reply is owed any more: the reader read them all while
        // this thread still held the role, so it left wbuf to us, and nobody else would send it.
        const bool replies_owed = cn.inflight.size() > cn.unsent;
        if (cn.wbuf.empty() || (took_batch && replies_owed)) {
          cn.writer = role::none;
          break;
        }
        took_batch = true;
        cn.wout.clear();
        cn.wout.swap(cn.wbuf);  // keeps both buffers' capacity
        cn.wout_off = 0;
        cn.unsent = 0;
      }
      lk.unlock();
      const ssize_t sent =
          ::send(fd, cn.wout.data() + cn.wout_off, cn.wout.size() - cn.wout_off, MSG_NOSIGNAL);
      const int err = errno;
      if (sent > 0) after_send_seam();
      lk.lock();
      if (sent > 0) {
        cn.wout_off += static_cast<std::size_t>(sent);
        ++cn.counters.write_batches;
        // A big write still moving is not a stall, even if no reply can come before it ends.
        if (who == actor::io) cn.last_tx = steady::now();
        continue;
      }
      if (sent < 0 && err == EINTR) continue;
      if (sent < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
        // Socket buffer full (big values, slow or blackholed server): the I/O thread finishes the
        // write on POLLOUT, so no caller ever blocks on a send past its deadline.
        if (cn.state == conn_state::ready && who == actor::caller) {
          cn.writer = role::io;
          todo.wake_io = true;
        }
        if (cn.state != conn_state::ready) cn.writer = role::none;
        break;
      }
      break_locked(cn, transport_error(peer_, "send to", sent < 0 ? err : EPIPE), todo);
      cn.writer = role::none;
      break;
    }
  }
  flush(todo, who);
}

void hiredis_client::reader_loop(connection& cn, call& c, time_point deadline,
                                 milliseconds budget) {
  const int fd = cn.fd;  // stable while we hold the reader role
  bool holding = true;
  for (;;) {
    const std::uint32_t w = c.word.load(std::memory_order_acquire);
    const time_point now = steady::now();
    if ((w & k_done) != 0 || now >= deadline) {
      if (!holding) return;
      after_unlock todo;
      {
        std::lock_guard lk(cn.mu);
        if ((c.word.load(std::memory_order_relaxed) & k_done) == 0) {
          abandon_locked(cn, c, budget, todo);
        }
        release_reader_locked(cn, todo);
      }
      flush(todo, actor::caller);
      return;
    }
    pollfd p{fd, POLLIN, 0};
    const timespec ts = to_timespec(deadline - now);
    if (::ppoll(&p, 1, &ts, nullptr) > 0) holding = read_available(cn, actor::caller, &c);
  }
}

void hiredis_client::follower_wait(connection& cn, call& c, time_point deadline,
                                   milliseconds budget) {
  for (;;) {
    std::uint32_t w = c.word.load(std::memory_order_acquire);
    if ((w & k_promoted) != 0) return reader_loop(cn, c, deadline, budget);
    if ((w & k_done) != 0) return;
    const time_point now = steady::now();
    if (now >= deadline) {
      after_unlock todo;
      bool abandoned = false;
      {
        std::lock_guard lk(cn.mu);
        w = c.word.load(std::memory_order_relaxed);
        if ((w & (k_done | k_promoted)) == 0) {
          abandon_locked(cn, c, budget, todo);
          abandoned = true;
        }
      }
      flush(todo, actor::caller);
      if (abandoned) return;
      continue;  // completed or promoted meanwhile: handled above (the reader loop abandons)
    }
    if ((w & k_sleeping) == 0) {
      if (!c.word.compare_exchange_weak(w, w | k_sleeping, std::memory_order_acq_rel,
                                        std::memory_order_acquire)) {
        continue;
      }
      w |= k_sleeping;
    }
    futex_wait(&c.word, w, deadline - now);
  }
}

// Reads what the socket has, completes the answered commands in order. Returns whether the caller
// still holds the reader role (it gives it up when the connection broke, when `self` is done, or —
// for the I/O thread — when nothing is owed any more).
bool hiredis_client::read_available(connection& cn, actor who, call* self) {
  std::size_t total = 0;
  int err = 0;
  bool eof = false;
  bool parse_error = false;
  for (int i = 0; i < 16; ++i) {  // bounded: a firehose must not starve the caller's own deadline
    const ssize_t got = ::recv(cn.fd, cn.rbuf.data(), cn.rbuf.size(), 0);
    if (got > 0) {
      total += static_cast<std::size_t>(got);
      if (redisReaderFeed(cn.rdr, cn.rbuf.data(), static_cast<std::size_t>(got)) != REDIS_OK) {
        parse_error = true;
        break;
      }
      if (static_cast<std::size_t>(got) < cn.rbuf.size()) break;  // drained; skip the EAGAIN recv
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
  cn.rbatch.clear();
  while (!parse_error) {
    reply r;
    const int parsed = next_reply(cn.rdr, r);
    if (parsed < 0) parse_error = true;
    if (parsed <= 0) break;
    cn.rbatch.push_back(to_result(std::move(r)));
  }

  after_unlock todo;
  bool holding = true;
  bool send_queued = false;
  {
    std::lock_guard lk(cn.mu);
    const time_point now = steady::now();
    if (total > 0) cn.last_rx = now;
    if (cn.state == conn_state::ready) {
      bool out_of_step = false;
      for (result& r : cn.rbatch) {
        // A reply nobody asked for, or a sentinel answer out of place: the replies no longer
        // line up with the commands (the network lost bytes). Nothing more is delivered.
        if (cn.inflight.empty() || !complete_front_locked(cn, std::move(r), todo)) {
          out_of_step = true;
          break;
        }
      }
      if (!cn.rbatch.empty()) cn.last_activity = now;
      if (parse_error) {
        break_locked(cn, protocol_error(peer_, cn.rdr->errstr), todo);
      } else if (out_of_step) {
        break_locked(cn, protocol_error(peer_, "replies out of step with commands"), todo);
      } else if (eof) {
        break_locked(cn, connection_closed(peer_), todo);
      } else if (err != 0) {
        break_locked(cn, transport_error(peer_, "recv from", err), todo);
      } else if (!cn.rbatch.empty() && !cn.wbuf.empty() && cn.writer == role::none) {
        // Replies came in: send what was queued behind them as one batch (see enqueue_locked).
        cn.writer = who == actor::caller ? role::caller : role::io;
        send_queued = true;
      }
    }
    // Reader-owned state is finished with before the role can pass to another thread below.
    cn.rbatch.clear();
    if (cn.state != conn_state::ready) {
      cn.reader = role::none;
      todo.wake_io = true;
      holding = false;
    } else if (who == actor::caller) {
      if ((self->word.load(std::memory_order_relaxed) & k_done) != 0) {
        release_reader_locked(cn, todo);
        holding = false;
      }
    } else if (cn.inflight.empty()) {
      cn.reader = role::none;
      holding = false;
    }
  }
  // Send before waking anyone: the server works on the next batch while we hand out this one.
  if (send_queued) write_loop(cn, who);
  flush(todo, who);
  return holding;
}

// Matches the next reply to inflight.front(). Returns false when the reply proves the stream out
// of step (the caller then breaks the connection).
bool hiredis_client::complete_front_locked(connection& cn, result&& r, after_unlock& todo) {
  const entry e = cn.inflight.front();
  cn.inflight.pop_front();
  const std::uint64_t seq = cn.head_seq++;
  if (cn.sentinels.empty()) {
    deliver_locked(cn, e, std::move(r), todo);
    return true;
  }
  const bool is_token =
      r.value.type == reply::kind::string && r.value.str.starts_with(sync_prefix_);
  if (e.sentinel) {
    if (!is_token || r.value.str != sync_token(seq)) return false;
    // Proven in step: every reply before the sentinel belongs where it was matched.
    cn.sentinels.pop_front();
    for (held_reply& h : cn.held) deliver_locked(cn, h.e, std::move(h.r), todo);
    cn.held.clear();
    if (cn.sentinels.empty()) cn.suspect.store(false, std::memory_order_relaxed);
    return true;
  }
  if (is_token) return false;  // a sentinel's answer arrived early: a reply was lost before it
  if (e.owner == nullptr) {
    deliver_locked(cn, e, std::move(r), todo);  // dropped anyway
  } else {
    cn.held.push_back(held_reply{seq, e, std::move(r)});
  }
  return true;
}

void hiredis_client::deliver_locked(connection& cn, const entry& e, result&& r,
                                    after_unlock& todo) {
  if (e.owner == nullptr) {
    if (!e.internal) ++cn.counters.discarded_replies;
    return;
  }
  call& c = *e.owner;
  c.results[e.index] = std::move(r);
  if (--c.remaining == 0) finish_locked(c, todo);
}

// The entry of command `seq` if its reply has not been delivered yet (still owed, or held).
entry* hiredis_client::find_unanswered_locked(connection& cn, std::uint64_t seq) {
  if (seq >= cn.head_seq) return &cn.inflight[seq - cn.head_seq];
  for (held_reply& h : cn.held) {
    if (h.seq == seq) return &h.e;
  }
  return nullptr;
}

std::string hiredis_client::sync_token(std::uint64_t seq) const {
  return sync_prefix_ + std::to_string(seq);
}

// Queues an ECHO sentinel behind command `after_seq` unless one is already queued behind it.
void hiredis_client::add_sentinel_locked(connection& cn, std::uint64_t after_seq, time_point now,
                                         after_unlock& todo) {
  if (cn.state != conn_state::ready) return;
  if (!cn.sentinels.empty() && cn.sentinels.back().seq > after_seq) return;
  const std::uint64_t seq = cn.head_seq + cn.inflight.size();
  const std::string token = sync_token(seq);
  const std::array<std::string_view, 2> echo{"ECHO", token};
  const formatted_command cmd(echo);
  // Replies are owed (the abandoned command's at least), so the reader sends this with its next
  // batch, or the active writer does: no role changes needed.
  cn.inflight.push_back(entry{nullptr, 0, true, true});
  cn.wbuf.append(cmd.bytes());
  ++cn.unsent;
  const milliseconds patience =
      opts_.health_interval > milliseconds::zero() ? opts_.health_interval : milliseconds(1000);
  cn.sentinels.push_back(pending_sentinel{seq, now + patience});
  cn.suspect.store(true, std::memory_order_relaxed);
  todo.wake_io = true;  // the I/O thread watches the sentinel's deadline
}

void hiredis_client::finish_locked(call& c, after_unlock& todo) {
  if (c.async) {
    todo.deliver.emplace_back(std::move(c.on_done), std::move(c.async_result));
    delete &c;
    return;
  }
  const std::uint32_t old = c.word.fetch_or(k_done, std::memory_order_acq_rel);
  if ((old & k_sleeping) != 0) todo.wake.push_back(&c.word);
}

void hiredis_client::release_reader_locked(connection& cn, after_unlock& todo) {
  if (cn.state != conn_state::ready) {
    cn.reader = role::none;
    todo.wake_io = true;
    return;
  }
  if (cn.inflight.empty()) {
    cn.reader = role::none;
    return;
  }
  // Promote the first synchronous caller still waiting: its reply is the next one due (or close).
  const auto promote = [&](const entry& e) {
    if (e.owner == nullptr || e.owner->async) return false;
    cn.reader = role::caller;
    const std::uint32_t old = e.owner->word.fetch_or(k_promoted, std::memory_order_acq_rel);
    // Woken first: the connection's next batch cannot be read until this thread runs.
    if ((old & k_sleeping) != 0) todo.wake.insert(todo.wake.begin(), &e.owner->word);
    return true;
  };
  for (const held_reply& h : cn.held) {
    if (promote(h.e)) return;
  }
  for (const entry& e : cn.inflight) {
    if (promote(e)) return;
  }
  cn.reader = role::io;
  todo.wake_io = true;
}

void hiredis_client::abandon_locked(connection& cn, call& c, milliseconds budget,
                                    after_unlock& todo) {
  const status why = deadline_exceeded(budget);
  bool owed = false;
  std::uint64_t last_owed = 0;
  for (std::uint32_t i = 0; i < c.count; ++i) {
    const std::uint64_t seq = c.first_seq + i;
    entry* e = find_unanswered_locked(cn, seq);
    if (e == nullptr) continue;  // answered in time: keep its result
    e->owner = nullptr;
    c.results[i].error = why;
    c.results[i].value = reply{};
    ++cn.counters.timeouts;
    if (seq >= cn.head_seq) {
      owed = true;
      last_owed = seq;
    }
  }
  c.remaining = 0;
  // If the command's reply was lost on the way (a middlebox dropped bytes), every later reply
  // would be matched one command too early. Prove the order before delivering anything later.
  if (owed) add_sentinel_locked(cn, last_owed, steady::now(), todo);
}

void hiredis_client::break_locked(connection& cn, const status& cause, after_unlock& todo) {
  if (cn.state != conn_state::ready) return;
  cn.state = conn_state::broken;
  cn.up.store(false, std::memory_order_release);
  ++cn.counters.disconnects;
  set_last_error(cause);
  // Wakes a role holder sleeping in ppoll on this socket; the fd stays open until roles are free.
  ::shutdown(cn.fd, SHUT_RDWR);
  const status lost = connection_lost(cause);
  while (!cn.inflight.empty()) {
    const entry e = cn.inflight.front();
    cn.inflight.pop_front();
    ++cn.head_seq;
    if (e.owner == nullptr) continue;
    call& c = *e.owner;
    c.results[e.index].error = lost;
    c.results[e.index].value = reply{};
    if (--c.remaining == 0) finish_locked(c, todo);
  }
  // Held replies came before an unverified sentinel: they cannot be trusted either.
  for (held_reply& h : cn.held) {
    if (h.e.owner == nullptr) continue;
    call& c = *h.e.owner;
    c.results[h.e.index].error = lost;
    c.results[h.e.index].value = reply{};
    if (--c.remaining == 0) finish_locked(c, todo);
  }
  cn.held.clear();
  cn.sentinels.clear();
  cn.suspect.store(false, std::memory_order_relaxed);
  cn.wbuf.clear();
  cn.unsent = 0;
  todo.wake_io = true;
}

void hiredis_client::flush(after_unlock& todo, actor who) {
  for (std::atomic<std::uint32_t>* w : todo.wake) futex_wake(w);
  todo.wake.clear();
  if (!todo.deliver.empty()) {
    if (who == actor::io) {
      run_deliveries(todo.deliver);
    } else {
      std::lock_guard lk(deliver_mu_);
      for (auto& d : todo.deliver) deliveries_.push_back(std::move(d));
      todo.wake_io = true;
    }
    todo.deliver.clear();
  }
  // The I/O thread re-examines every connection on each loop turn; it never needs a wake-up.
  if (todo.wake_io && who == actor::caller) wake_io();
  todo.wake_io = false;
}

void hiredis_client::wake_io() {
  if (io_wake_pending_.exchange(true, std::memory_order_acq_rel)) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(efd_, &one, sizeof one);
}

void hiredis_client::set_last_error(const status& s) {
  std::lock_guard lk(err_mu_);
  last_error_ = s;
}

status hiredis_client::last_error() const {
  std::lock_guard lk(err_mu_);
  return last_error_;
}

void hiredis_client::fail_async(call* c, status why) {
  // The callback still runs on the I/O thread, as promised, even for a call refused up front.
  c->async_result.error = std::move(why);
  delivery d{std::move(c->on_done), std::move(c->async_result)};
  delete c;
  if (on_io_thread()) {
    std::vector<delivery> one;
    one.push_back(std::move(d));
    run_deliveries(one);
    return;
  }
  {
    std::lock_guard lk(deliver_mu_);
    deliveries_.push_back(std::move(d));
  }
  wake_io();
}

// ---- I/O thread ---------------------------------------------------------------------------------

void hiredis_client::io_loop(std::stop_token st) {
  tl_io_owner = this;
  std::stop_callback on_stop(st, [this] { wake_io(); });
  std::vector<pollfd> pfds;
  std::vector<std::size_t> owners;
  after_unlock todo;
  while (!st.stop_requested()) {
    // Cleared before looking at anything, so a wake-up requested after this point is never lost.
    io_wake_pending_.exchange(false, std::memory_order_acq_rel);
    const time_point now = steady::now();
    time_point next = now + std::chrono::seconds(1);
    run_due_timers(now);  // first: a timeout may queue a sentinel whose deadline we plan below
    pfds.clear();
    owners.clear();
    pfds.push_back(pollfd{efd_, POLLIN, 0});
    owners.push_back(0);
    for (auto& cn : conns_) {
      short events = 0;
      {
        std::lock_guard lk(cn->mu);
        events = service_locked(*cn, now, next, todo);
        if (events != 0) {
          pfds.push_back(pollfd{cn->fd, events, 0});
          owners.push_back(cn->index);
        }
      }
      flush(todo, actor::io);
    }
    {
      std::lock_guard lk(timers_mu_);
      if (!timers_.empty()) next = std::min(next, timers_.top().when);
      io_planned_wake_ = next;  // execute_async wakes us for an earlier deadline
    }
    run_queued_deliveries();

    const timespec ts = to_timespec(next - steady::now());
    const int ready = ::ppoll(pfds.data(), pfds.size(), &ts, nullptr);
    if (ready <= 0) continue;
    if (pfds[0].revents != 0) {
      std::uint64_t drained = 0;
      [[maybe_unused]] const ssize_t n = ::read(efd_, &drained, sizeof drained);
    }
    for (std::size_t k = 1; k < pfds.size(); ++k) {
      if (pfds[k].revents != 0) handle_events(*conns_[owners[k]], pfds[k].revents);
    }
  }
  shutdown_all();
}

// Moves one connection along (close, connect, timeouts, health) and returns the events the I/O
// thread must poll its socket for.
short hiredis_client::service_locked(connection& cn, time_point now, time_point& next,
                                     after_unlock& todo) {
  if (cn.state == conn_state::broken) {
    // Roles this thread holds are not in use while it runs this function: let go of them.
    if (cn.reader == role::io) cn.reader = role::none;
    if (cn.writer == role::io) cn.writer = role::none;
  }
  if (cn.state == conn_state::broken && cn.reader == role::none && cn.writer == role::none) {
    close_socket_locked(cn);
    cn.state = conn_state::disconnected;
    cn.next_attempt = now + jittered(opts_.reconnect_min);
  }
  if (cn.state == conn_state::disconnected && now >= cn.next_attempt) begin_connect_locked(cn, now);
  if ((cn.state == conn_state::connecting || cn.state == conn_state::handshaking) &&
      now >= cn.attempt_deadline) {
    fail_attempt_locked(cn, connect_timed_out(peer_, opts_.connect_timeout), now);
  }
  switch (cn.state) {
    case conn_state::disconnected:
      next = std::min(next, cn.next_attempt);
      return 0;
    case conn_state::connecting:
      next = std::min(next, cn.attempt_deadline);
      return POLLOUT;
    case conn_state::handshaking:
      next = std::min(next, cn.attempt_deadline);
      return static_cast<short>(POLLIN | (cn.hs_off < cn.hs_out.size() ? POLLOUT : 0));
    case conn_state::broken:
      return 0;  // a role holder still uses the socket; it wakes us when it lets go
    case conn_state::ready:
      break;
  }
  if (!cn.sentinels.empty()) {
    if (now >= cn.sentinels.front().deadline) {
      break_locked(cn,
                   protocol_error(peer_,
                                  "reply order could not be confirmed after a timeout (no "
                                  "answer to the sync ECHO)"),
                   todo);
      next = now;
      return 0;
    }
    next = std::min(next, cn.sentinels.front().deadline);
  }
  const milliseconds health = opts_.health_interval;
  if (health > milliseconds::zero()) {
    if (cn.inflight.empty()) {
      const time_point due = cn.last_activity + health;
      if (now >= due) {
        bool lw = false;
        bool lr = false;
        bool need = false;
        // The I/O thread takes both roles if free; POLLOUT below sends the PING on this loop turn.
        enqueue_locked(cn, nullptr, ping_bytes_, 1, true, actor::io, lw, lr, need, now);
        next = std::min(next, now + health);
      } else {
        next = std::min(next, due);
      }
    } else {
      const time_point due = std::max({cn.owed_since, cn.last_rx, cn.last_tx}) + health;
      if (now >= due) {
        break_locked(cn, connection_stalled(peer_, health), todo);
        next = now;  // come straight back to close it once the role holders let go
        return 0;
      }
      next = std::min(next, due);
    }
  }
  short events = 0;
  if (cn.reader == role::io) events = static_cast<short>(events | POLLIN | POLLRDHUP);
  // Nobody reads an idle connection: watch it for the peer closing (server killed or restarted,
  // proxy reset) so connected() turns false and calls fail fast at once, not at the next PING.
  // POLLRDHUP is not raised by ordinary replies, so this never wakes us per command.
  if (cn.reader == role::none) events = static_cast<short>(events | POLLRDHUP);
  if (cn.writer == role::io) events = static_cast<short>(events | POLLOUT);
  return events;
}

void hiredis_client::handle_events(connection& cn, short revents) {
  role reader = role::none;
  role writer = role::none;
  after_unlock flush_after_unlock;
  {
    std::lock_guard lk(cn.mu);
    const time_point now = steady::now();
    switch (cn.state) {
      case conn_state::connecting: {
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (::getsockopt(cn.fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) soerr = errno;
        if (soerr != 0) {
          fail_attempt_locked(cn, transport_error(peer_, "connect to", soerr), now);
        } else {
          start_handshake_locked(cn, now);
        }
        return;
      }
      case conn_state::handshaking:
        handshake_io_locked(cn, revents, now);
        return;
      case conn_state::ready:
        reader = cn.reader;
        writer = cn.writer;
        if (reader == role::none && (revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
          // Idle and the peer is gone. (With a reader, the reader sees the EOF itself, after any
          // replies still buffered.)
          after_unlock todo;
          break_locked(cn, connection_closed(peer_), todo);
          flush_after_unlock = std::move(todo);
          reader = role::none;
          writer = role::none;
        }
        break;
      default:
        return;
    }
  }
  flush(flush_after_unlock, actor::io);
  // Only this thread releases roles it holds, so they are still ours here.
  constexpr short k_error_events = POLLERR | POLLHUP | POLLRDHUP;
  if (writer == role::io && (revents & (POLLOUT | k_error_events)) != 0) write_loop(cn, actor::io);
  if (reader == role::io && (revents & (POLLIN | k_error_events)) != 0) {
    read_available(cn, actor::io, nullptr);
  }
}

void hiredis_client::begin_connect_locked(connection& cn, time_point now) {
  cn.attempt_deadline = now + opts_.connect_timeout;
  const tcp_attempt attempt = open_tcp(ep_, peer_);
  if (!attempt.error.ok()) {
    fail_attempt_locked(cn, attempt.error, now);
    return;
  }
  cn.fd = attempt.fd;
  if (attempt.connected) {
    start_handshake_locked(cn, now);
  } else {
    cn.state = conn_state::connecting;
  }
}

void hiredis_client::start_handshake_locked(connection& cn, time_point now) {
  cn.hs_out.clear();
  cn.hs_off = 0;
  cn.hs_expect.clear();
  cn.hs_got = 0;
  if (ep_.needs_auth()) {
    const std::string password = ep_.password.value_or("");
    if (ep_.user.empty()) {
      const std::array<std::string_view, 2> auth{"AUTH", password};
      append_command(cn.hs_out, auth);
    } else {
      const std::array<std::string_view, 3> auth{"AUTH", ep_.user, password};
      append_command(cn.hs_out, auth);
    }
    cn.hs_expect.push_back(handshake_step::auth);
  }
  if (ep_.db != 0) {
    const std::string db = std::to_string(ep_.db);
    const std::array<std::string_view, 2> select{"SELECT", db};
    append_command(cn.hs_out, select);
    cn.hs_expect.push_back(handshake_step::select);
  }
  // PING proves a responsive Redis is behind the socket (a proxy accepts even when it is not).
  cn.hs_out += ping_bytes_;
  cn.hs_expect.push_back(handshake_step::ping);
  cn.state = conn_state::handshaking;
  handshake_io_locked(cn, POLLOUT, now);
}

void hiredis_client::handshake_io_locked(connection& cn, short revents, time_point now) {
  if ((revents & POLLOUT) != 0 && cn.hs_off < cn.hs_out.size()) {
    const ssize_t sent =
        ::send(cn.fd, cn.hs_out.data() + cn.hs_off, cn.hs_out.size() - cn.hs_off, MSG_NOSIGNAL);
    if (sent > 0) {
      cn.hs_off += static_cast<std::size_t>(sent);
    } else if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      fail_attempt_locked(cn, transport_error(peer_, "send to", errno), now);
      return;
    }
  }
  if ((revents & (POLLIN | POLLERR | POLLHUP)) == 0) return;
  const ssize_t got = ::recv(cn.fd, cn.rbuf.data(), cn.rbuf.size(), 0);
  if (got == 0) {
    fail_attempt_locked(cn, connection_closed(peer_), now);
    return;
  }
  if (got < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      fail_attempt_locked(cn, transport_error(peer_, "recv from", errno), now);
    }
    return;
  }
  if (redisReaderFeed(cn.rdr, cn.rbuf.data(), static_cast<std::size_t>(got)) != REDIS_OK) {
    fail_attempt_locked(cn, protocol_error(peer_, cn.rdr->errstr), now);
    return;
  }
  for (;;) {
    reply r;
    const int parsed = next_reply(cn.rdr, r);
    if (parsed < 0) {
      fail_attempt_locked(cn, protocol_error(peer_, cn.rdr->errstr), now);
      return;
    }
    if (parsed == 0) break;
    if (cn.hs_got >= cn.hs_expect.size()) {
      fail_attempt_locked(cn, protocol_error(peer_, "unexpected reply during handshake"), now);
      return;
    }
    const handshake_step step = cn.hs_expect[cn.hs_got++];
    if (r.type == reply::kind::error) {
      status why;
      if (step == handshake_step::auth ||
          classify_error_reply(r.str) == errc::invalid_argument) {  // NOAUTH on PING/SELECT
        why = auth_failed(ep_.user_for_messages(), r.str);
      } else if (step == handshake_step::select) {
        why = select_failed(ep_.db, r.str);
      } else {
        why = error_reply_status(r.str);
      }
      fail_attempt_locked(cn, why, now);
      return;
    }
  }
  if (cn.hs_got == cn.hs_expect.size()) become_ready_locked(cn, now);
}

void hiredis_client::fail_attempt_locked(connection& cn, const status& why, time_point now) {
  close_socket_locked(cn);
  cn.state = conn_state::disconnected;
  set_last_error(why);
  cn.backoff = cn.backoff == milliseconds::zero() ? opts_.reconnect_min
                                                  : std::min(cn.backoff * 2, opts_.reconnect_max);
  cn.next_attempt = now + jittered(cn.backoff);
  first_attempt_done_locked(cn);
}

void hiredis_client::become_ready_locked(connection& cn, time_point now) {
  cn.state = conn_state::ready;
  cn.reader = role::none;
  cn.writer = role::none;
  cn.wbuf.clear();
  cn.unsent = 0;
  cn.held.clear();
  cn.sentinels.clear();
  cn.suspect.store(false, std::memory_order_relaxed);
  cn.wout.clear();
  cn.wout_off = 0;
  cn.last_rx = now;
  cn.last_tx = now;
  cn.owed_since = now;
  cn.last_activity = now;
  cn.backoff = milliseconds::zero();
  ++cn.counters.connects;
  cn.up.store(true, std::memory_order_release);
  first_attempt_done_locked(cn);
}

void hiredis_client::close_socket_locked(connection& cn) {
  if (cn.fd >= 0) {
    ::close(cn.fd);
    cn.fd = -1;
  }
  // A fresh parser: the old one may hold half a reply from the dead stream.
  redisReader* fresh = make_reader();
  if (fresh != nullptr) {
    redisReaderFree(cn.rdr);
    cn.rdr = fresh;
  }
  cn.wout.clear();
  cn.wout_off = 0;
}

void hiredis_client::first_attempt_done_locked(connection& cn) {
  if (cn.first_attempt_done) return;
  cn.first_attempt_done = true;
  std::lock_guard lk(init_mu_);
  if (--init_pending_ == 0) init_cv_.notify_all();
}

void hiredis_client::run_due_timers(time_point now) {
  std::vector<async_timer> due;
  {
    std::lock_guard lk(timers_mu_);
    while (!timers_.empty() && timers_.top().when <= now) {
      due.push_back(timers_.top());
      timers_.pop();
    }
  }
  if (due.empty()) return;
  after_unlock todo;
  for (const async_timer& t : due) {
    connection& cn = *conns_[t.conn];
    std::lock_guard lk(cn.mu);
    entry* e = find_unanswered_locked(cn, t.seq);
    if (e == nullptr || e->owner == nullptr || !e->owner->async) continue;  // answered or failed
    call* c = e->owner;
    e->owner = nullptr;  // the reply, when it comes, is discarded
    ++cn.counters.timeouts;
    c->async_result.error = deadline_exceeded(t.budget);
    todo.deliver.emplace_back(std::move(c->on_done), std::move(c->async_result));
    delete c;
    if (t.seq >= cn.head_seq) add_sentinel_locked(cn, t.seq, now, todo);
  }
  flush(todo, actor::io);
}

void hiredis_client::run_deliveries(std::vector<delivery>& items) {
  for (auto& [fn, res] : items) {
    if (!fn) continue;
    try {
      fn(std::move(res));
    } catch (...) {
      // A throwing callback breaks its contract; keeping the I/O thread alive (and every other
      // caller served) matters more than reporting it here.
    }
  }
  items.clear();
}

void hiredis_client::run_queued_deliveries() {
  std::vector<delivery> items;
  {
    std::lock_guard lk(deliver_mu_);
    items.swap(deliveries_);
  }
  run_deliveries(items);
}

void hiredis_client::shutdown_all() {
  after_unlock todo;
  for (auto& cn : conns_) {
    {
      std::lock_guard lk(cn->mu);
      if (cn->state == conn_state::ready) break_locked(*cn, shutting_down(), todo);
      cn->reader = role::none;  // no caller may be inside execute() during destruction
      cn->writer = role::none;
      close_socket_locked(*cn);
      cn->state = conn_state::disconnected;
      cn->up.store(false, std::memory_order_release);
    }
    flush(todo, actor::io);
  }
  {
    std::lock_guard lk(timers_mu_);
    timers_ = {};
  }
  run_queued_deliveries();
}

milliseconds hiredis_client::jittered(milliseconds d) {
  // Uniform in [d/2, d]: spreads the reconnects of many clients after a server restart.
  std::uniform_int_distribution<long long> dist(d.count() / 2, d.count());
  return milliseconds(dist(rng_));
}

}  // namespace

void set_after_send_hook_for_testing(std::function<void()> hook) {
  g_after_send_installed.store(false, std::memory_order_release);
  g_after_send = std::move(hook);
  if (g_after_send) g_after_send_installed.store(true, std::memory_order_release);
}

std::unique_ptr<redis_client> make_hiredis_client(const client_options& options) {
  options.validate();
  redis_endpoint ep = parse_redis_url(options.url);
  return std::make_unique<hiredis_client>(options, std::move(ep));
}

}  // namespace layercache::redis_detail
