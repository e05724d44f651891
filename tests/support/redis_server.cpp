#include "support/redis_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

#include "support/free_port.hpp"

namespace layercache::test {
namespace {

using steady = std::chrono::steady_clock;

// The port was taken by someone else between free_port() and the server's bind.
class port_in_use : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

int remaining_ms(steady::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - steady::now()).count();
  return static_cast<int>(std::clamp<std::int64_t>(left, 0, 60'000));
}

// A minimal RESP2 client for tests: one connection, requests in order, replies rendered as text.
// Every operation honours one deadline for the whole exchange.
class resp_connection {
 public:
  resp_connection(const std::string& host, int port, steady::time_point deadline)
      : deadline_(deadline), where_(host + ":" + std::to_string(port)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    const std::string ip = host == "localhost" ? "127.0.0.1" : host;
    if (::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr) != 1) {
      throw std::invalid_argument("resp: not an IPv4 address: " + host);
    }
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd_ < 0) fail("socket");
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      if (errno != EINPROGRESS) fail("connect");
      wait_for(POLLOUT, "connect");
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        errno = err;
        fail("connect");
      }
    }
  }
  ~resp_connection() { ::close(fd_); }
  resp_connection(const resp_connection&) = delete;
  resp_connection& operator=(const resp_connection&) = delete;

  void send_command(const std::vector<std::string>& args) {
    std::string out = "*" + std::to_string(args.size()) + "\r\n";
    for (const std::string& a : args) {
      out += "$" + std::to_string(a.size()) + "\r\n";
      out += a;
      out += "\r\n";
    }
    std::size_t sent = 0;
    while (sent < out.size()) {
      const ssize_t n = ::send(fd_, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<std::size_t>(n);
      } else if (n < 0 && errno == EAGAIN) {
        wait_for(POLLOUT, "send");
      } else if (n < 0 && errno != EINTR) {
        fail("send");
      }
    }
  }

  std::string read_reply() {
    const std::string line = read_line();
    if (line.empty()) throw std::runtime_error("resp: empty reply line from " + where_);
    const std::string body = line.substr(1);
    switch (line[0]) {
      case '+':
      case ':':
        return body;
      case '-':
        return "(error) " + body;
      case '$': {
        const long long len = parse_length(body);
        if (len < 0) return "(nil)";
        std::string data = read_exact(static_cast<std::size_t>(len) + 2);
        data.resize(static_cast<std::size_t>(len));  // drop the trailing CRLF
        return data;
      }
      case '*': {
        const long long count = parse_length(body);
        if (count < 0) return "(nil)";
        std::string joined;
        for (long long i = 0; i < count; ++i) {
          if (i > 0) joined += '\n';
          joined += read_reply();
        }
        return joined;
      }
      default:
        throw std::runtime_error("resp: unexpected reply type '" + line.substr(0, 1) + "' from " +
                                 where_);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("resp: " + what + " " + where_ + ": " + std::strerror(errno));
  }

  void wait_for(short events, const char* what) const {
    for (;;) {
      pollfd pfd{fd_, events, 0};
      const int r = ::poll(&pfd, 1, remaining_ms(deadline_));
      if (r > 0) return;
      if (r == 0) {
        throw std::runtime_error(std::string("resp: ") + what + " " + where_ + ": timed out");
      }
      if (errno != EINTR) fail(what);
    }
  }

  long long parse_length(const std::string& s) const {
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || v < -1 || v > (1LL << 32)) {
      throw std::runtime_error("resp: bad length '" + s + "' from " + where_);
    }
    return v;
  }

  void fill() {
    char buf[16384];
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        buf_.erase(0, pos_);
        pos_ = 0;
        buf_.append(buf, static_cast<std::size_t>(n));
        return;
      }
      if (n == 0) throw std::runtime_error("resp: connection closed by " + where_);
      if (errno == EAGAIN) {
        wait_for(POLLIN, "read reply from");
      } else if (errno != EINTR) {
        fail("recv from");
      }
    }
  }

  std::string read_line() {
    for (;;) {
      const std::size_t eol = buf_.find("\r\n", pos_);
      if (eol != std::string::npos) {
        std::string line = buf_.substr(pos_, eol - pos_);
        pos_ = eol + 2;
        return line;
      }
      fill();
    }
  }

  std::string read_exact(std::size_t n) {
    while (buf_.size() - pos_ < n) fill();
    std::string out = buf_.substr(pos_, n);
    pos_ += n;
    return out;
  }

  steady::time_point deadline_;
  std::string where_;
  int fd_ = -1;
  std::string buf_;
  std::size_t pos_ = 0;
};

std::uintmax_t file_size_or_zero(const std::filesystem::path& p) {
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(p, ec);
  return ec ? 0 : size;
}

// The part of `p` written since `offset`, at most the last `max_bytes` of it.
std::string read_tail(const std::filesystem::path& p, std::uintmax_t offset,
                      std::size_t max_bytes = 3000) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return {};
  in.seekg(static_cast<std::streamoff>(offset));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > max_bytes) text = "..." + text.substr(text.size() - max_bytes);
  return text;
}

std::string percent_encode(const std::string& s) {
  static constexpr char k_hex[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= 'A' && u <= 'Z') || (u >= 'a' && u <= 'z') || (u >= '0' && u <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out += c;
    } else {
      out += '%';
      out += k_hex[u >> 4U];
      out += k_hex[u & 0xFU];
    }
  }
  return out;
}

std::string locate_redis_server() {
  if (const char* env = std::getenv("LAYERCACHE_REDIS_SERVER"); env != nullptr && *env != '\0') {
    if (auto p = find_executable(env)) return p->string();
    throw std::runtime_error(std::string("redis_server: LAYERCACHE_REDIS_SERVER=") + env +
                             " is not an executable file");
  }
  if (auto p = find_executable("redis-server")) return p->string();
  throw std::runtime_error(
      "redis_server: redis-server not found in $PATH (install the redis-server package, or set "
      "LAYERCACHE_REDIS_SERVER to its path)");
}

}  // namespace

std::string resp_command(const std::string& host, int port, const std::vector<std::string>& args,
                         std::chrono::milliseconds timeout) {
  resp_connection conn(host, port, steady::now() + timeout);
  conn.send_command(args);
  return conn.read_reply();
}

redis_server::redis_server(redis_server_options options)
    : options_(std::move(options)), exe_(locate_redis_server()), dir_("layercache-redis") {
  // free_port() only says the port was free a moment ago; lose the race a few times at most.
  constexpr int k_port_attempts = 8;
  for (int attempt = 1;; ++attempt) {
    port_ = free_port();
    try {
      launch(steady::now() + options_.start_timeout);
      return;
    } catch (const port_in_use& e) {
      if (attempt == k_port_attempts) {
        throw std::runtime_error("redis_server: every port tried was taken; last: " +
                                 std::string(e.what()));
      }
    }
  }
}

redis_server::~redis_server() {
  try {
    stop();
  } catch (...) {
    // child_'s destructor still kills and reaps whatever is left.
  }
}

std::string redis_server::url() const {
  std::string userinfo;
  if (!options_.acl_user.empty()) {
    userinfo =
        percent_encode(options_.acl_user) + ":" + percent_encode(options_.acl_password) + "@";
  } else if (!options_.requirepass.empty()) {
    userinfo = ":" + percent_encode(options_.requirepass) + "@";
  }
  return "redis://" + userinfo + host() + ":" + std::to_string(port_);
}

void redis_server::stop() {
  if (!child_) return;
  child_->stop(std::chrono::seconds(2));
  child_.reset();
}

void redis_server::kill() {
  if (!child_) return;
  child_->kill(SIGKILL);
  child_.reset();  // reaps (and sweeps the process group)
}

void redis_server::start() {
  if (running()) return;
  child_.reset();  // reap a server that died on its own
  const auto deadline = steady::now() + options_.start_timeout;
  for (;;) {
    try {
      launch(deadline);
      return;
    } catch (const port_in_use& e) {
      // Clients were configured with this port, so a restart may not move; wait for it instead.
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
      if (left <= std::chrono::milliseconds::zero() || !wait_port_free(port_, left)) {
        throw std::runtime_error(std::string(e.what()) + " (a restart must reuse the port)");
      }
    }
  }
}

bool redis_server::running() const { return child_ != nullptr && child_->running(); }

pid_t redis_server::pid() const { return running() ? child_->pid() : 0; }

std::string redis_server::cli(const std::vector<std::string>& args) const {
  resp_connection conn(host(), port_, steady::now() + std::chrono::seconds(5));
  if (!options_.requirepass.empty()) {
    conn.send_command({"AUTH", options_.requirepass});
    if (const std::string r = conn.read_reply(); r != "OK") {
      throw std::runtime_error("redis_server::cli: AUTH failed: " + r);
    }
  }
  conn.send_command(args);
  return conn.read_reply();
}

void redis_server::launch(steady::time_point deadline) {
  const std::filesystem::path stdout_path = dir_.path() / "redis.stdout";
  log_offset_ = file_size_or_zero(log_path());
  stdout_offset_ = file_size_or_zero(stdout_path);

  const std::pair<const char*, std::string> defaults[] = {
      {"--port", std::to_string(port_)},
      {"--bind", "127.0.0.1"},
      {"--save", ""},  // an empty argument: no RDB snapshots
      {"--appendonly", "no"},
      {"--dir", dir_.path().string()},
      {"--daemonize", "no"},  // stay our child, so we can wait for and signal it
      {"--protected-mode", "no"},
      {"--logfile", log_path().string()},
  };
  std::vector<std::string> args;
  for (const auto& [flag, value] : defaults) args.insert(args.end(), {flag, value});
  if (!options_.requirepass.empty()) {
    args.insert(args.end(), {"--requirepass", options_.requirepass});
  }
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  // Errors in the arguments are printed before the log file is opened: keep stdout/stderr too.
  child_ = std::make_unique<child_process>(
      exe_, std::move(args),
      child_process_options{.stderr_to_stdout = true, .output_file = stdout_path});

  auto backoff = std::chrono::milliseconds(2);
  for (;;) {
    if (const std::optional<exit_status> st = child_->wait_for(std::chrono::milliseconds(0))) {
      child_.reset();
      const std::string details = failure_details();
      const std::string message = "redis_server: redis-server on port " + std::to_string(port_) +
                                  " exited (" + st->to_string() + ") before answering PING" +
                                  details;
      if (details.find("Address already in use") != std::string::npos) throw port_in_use(message);
      throw std::runtime_error(message);
    }
    if (answers_ping(deadline)) break;
    const auto now = steady::now();
    if (now >= deadline) {
      child_.reset();  // SIGKILL + reap
      throw std::runtime_error("redis_server: redis-server on port " + std::to_string(port_) +
                               " did not answer PING within " +
                               std::to_string(options_.start_timeout.count()) + " ms" +
                               failure_details());
    }
    std::this_thread::sleep_for(std::min<steady::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(50));
  }

  if (!options_.acl_user.empty()) {
    // ACL users live in memory only (no ACL file), so every start re-creates it. &* matters: Redis
    // 7 gives new users no pub/sub channels by default (acl-pubsub-default resetchannels).
    const std::string reply = cli({"ACL", "SETUSER", options_.acl_user, "reset", "on",
                                   ">" + options_.acl_password, "~*", "&*", "+@all"});
    if (reply != "OK") {
      child_.reset();
      throw std::runtime_error("redis_server: ACL SETUSER " + options_.acl_user +
                               " failed: " + reply);
    }
  }
}

bool redis_server::answers_ping(steady::time_point deadline) const {
  try {
    // A short per-probe bound: something that accepts but never answers must not eat the budget.
    const auto probe_deadline = std::min(deadline, steady::now() + std::chrono::milliseconds(500));
    resp_connection conn(host(), port_, probe_deadline);
    conn.send_command({"PING"});
    const std::string pong = conn.read_reply();
    // Anything else: -LOADING, or our own PING echoed by a loopback self-connected socket.
    const bool noauth_expected =
        !options_.requirepass.empty() && pong.starts_with("(error) NOAUTH");
    if (pong != "PONG" && !noauth_expected) return false;
    // The answer must come from our child, not from another server that owns this port while
    // ours is about to fail with "Address already in use".
    if (!options_.requirepass.empty()) {
      conn.send_command({"AUTH", options_.requirepass});
      if (conn.read_reply() != "OK") return false;
    }
    conn.send_command({"INFO", "server"});
    const std::string info = conn.read_reply();
    return info.find("process_id:" + std::to_string(child_->pid()) + "\r\n") != std::string::npos;
  } catch (const std::exception&) {
    return false;  // not up yet
  }
}

std::string redis_server::failure_details() const {
  std::ostringstream out;
  const std::string log = read_tail(log_path(), log_offset_);
  const std::string output = read_tail(dir_.path() / "redis.stdout", stdout_offset_);
  if (!output.empty()) out << "\n--- redis-server stdout/stderr ---\n" << output;
  if (!log.empty()) out << "\n--- " << log_path().string() << " (tail) ---\n" << log;
  if (output.empty() && log.empty()) out << " (redis-server wrote no log)";
  return out.str();
}

}  // namespace layercache::test
