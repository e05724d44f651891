// Integration tests of tests/support: free ports, temp dirs, child processes, a real redis-server,
// and the TCP fault proxy in front of it. Every wait is bounded and waits for a condition.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/await.hpp"
#include "support/child_process.hpp"
#include "support/free_port.hpp"
#include "support/redis_server.hpp"
#include "support/tcp_fault_proxy.hpp"
#include "support/temp_dir.hpp"

namespace layercache::test {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using steady = std::chrono::steady_clock;

using layercache::test::eventually;

// True when `pid` no longer runs (gone, or a zombie waiting for a reaper that is not us).
bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!stat || !std::getline(stat, line)) return true;
  const std::size_t close_paren = line.rfind(')');
  return close_paren == std::string::npos || close_paren + 2 >= line.size() ||
         line[close_paren + 2] == 'Z' || line[close_paren + 2] == 'X';
}

// A blocking loopback TCP client that speaks raw bytes, for looking at exactly what the proxy does.
class raw_client {
 public:
  explicit raw_client(int port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    if (fd_ < 0) throw std::runtime_error("socket failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd_);
      throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port) + " failed");
    }
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~raw_client() { ::close(fd_); }
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;

  void send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw std::runtime_error("send failed");
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  // Reads until at least `n` bytes arrived, the peer closed, or `timeout` passed; returns them.
  std::string read_at_least(std::size_t n, std::chrono::milliseconds timeout) {
    std::string got;
    const auto deadline = steady::now() + timeout;
    char buf[65536];
    while (got.size() < n) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - steady::now());
      if (left <= 0ms) break;
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
      const ssize_t r = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (r > 0) {
        got.append(buf, static_cast<std::size_t>(r));
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        break;
      }
    }
    return got;
  }

  enum class ending { eof, reset, still_open };
  // Discards incoming data until the peer closes or `timeout` passes.
  ending wait_for_close(std::chrono::milliseconds timeout) {
    const auto deadline = steady::now() + timeout;
    char buf[4096];
    for (;;) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - steady::now());
      if (left <= 0ms) return ending::still_open;
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
      const ssize_t r = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (r == 0) return ending::eof;
      if (r < 0 && errno == ECONNRESET) return ending::reset;
      if (r < 0 && errno != EAGAIN && errno != EINTR) return ending::reset;
    }
  }

 private:
  int fd_;
};

constexpr std::string_view k_ping = "*1\r\n$4\r\nPING\r\n";
constexpr std::string_view k_pong = "+PONG\r\n";

// ---- free_port / temp_dir ----------------------------------------------------------------------

TEST(FreePortTest, ReturnsLoopbackPortThatCanBeBound) {
  const int port = free_port();
  EXPECT_GT(port, 0);
  EXPECT_LE(port, 65535);
  EXPECT_TRUE(port_is_free(port));
}

TEST(FreePortTest, PortIsNotFreeWhileSomeoneListensAndFreeAfterwards) {
  tcp_fault_proxy listener("127.0.0.1", free_port());  // any listener will do
  EXPECT_FALSE(port_is_free(listener.port()));
  EXPECT_FALSE(wait_port_free(listener.port(), 20ms));
}

TEST(TempDirTest, CreatesPrivateDirectoryAndRemovesItRecursively) {
  fs::path path;
  {
    temp_dir dir;
    path = dir.path();
    ASSERT_TRUE(fs::is_directory(path));
    EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, fs::perms::owner_all);
    fs::create_directories(path / "a" / "b");
    std::ofstream(path / "a" / "b" / "file.txt") << "data";
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST(TempDirTest, RemovesSubdirectoriesATestMadeInaccessible) {
  fs::path path;
  {
    temp_dir dir;
    path = dir.path();
    fs::create_directories(path / "locked" / "inner");
    std::ofstream(path / "locked" / "inner" / "file.txt") << "data";
    fs::permissions(path / "locked", fs::perms::none);
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST(TempDirTest, CreatesUnderTmpdirAndMovesOwnership) {
  temp_dir outer;
  const char* old = std::getenv("TMPDIR");
  const std::optional<std::string> saved =
      old != nullptr ? std::optional<std::string>(old) : std::nullopt;
  ::setenv("TMPDIR", outer.path().c_str(), 1);
  std::optional<temp_dir> inner;
  inner.emplace("custom");
  if (saved) {
    ::setenv("TMPDIR", saved->c_str(), 1);
  } else {
    ::unsetenv("TMPDIR");
  }
  EXPECT_EQ(inner->path().parent_path(), outer.path());
  EXPECT_TRUE(inner->path().filename().string().starts_with("custom-"));

  const fs::path path = inner->path();
  temp_dir moved(std::move(*inner));
  EXPECT_EQ(moved.path(), path);
  EXPECT_TRUE(inner->path().empty());
  inner.reset();  // the moved-from object must not remove the directory
  EXPECT_TRUE(fs::is_directory(path));
}

// ---- child_process -----------------------------------------------------------------------------

TEST(ChildProcessTest, CapturesStdoutAndExitCode) {
  child_process p("sh", {"-c", "echo hello; echo world; exit 3"}, {.capture_stdout = true});
  const std::optional<exit_status> st = p.wait_for(5s);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->code, 3);
  EXPECT_EQ(st->signal, 0);
  EXPECT_FALSE(st->success());
  EXPECT_EQ(p.output(), "hello\nworld\n");
  EXPECT_FALSE(p.running());
}

TEST(ChildProcessTest, StderrFollowsStdoutWhenAsked) {
  child_process p("sh", {"-c", "echo out; echo err 1>&2"},
                  {.capture_stdout = true, .stderr_to_stdout = true});
  ASSERT_TRUE(p.wait_for(5s).has_value());
  EXPECT_EQ(p.output(), "out\nerr\n");
}

TEST(ChildProcessTest, WaitForTimesOutWhileChildRunsThenReportsTheSignal) {
  child_process p("sleep", {"30"});
  EXPECT_TRUE(p.running());
  const auto t0 = steady::now();
  EXPECT_FALSE(p.wait_for(50ms).has_value());
  EXPECT_GE(steady::now() - t0, 50ms);
  p.kill(SIGTERM);
  const std::optional<exit_status> st = p.wait_for(5s);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->signal, SIGTERM);
  EXPECT_EQ(st->to_string(), "killed by signal 15 (SIGTERM)");
  EXPECT_FALSE(p.running());
  p.kill(SIGKILL);  // after reaping: a no-op, not a signal to a recycled pid
}

TEST(ChildProcessTest, StopEscalatesToSigkillWhenTermIsIgnored) {
  child_process p("sh", {"-c", "trap '' TERM; echo ready; while :; do sleep 1; done"},
                  {.capture_stdout = true});
  ASSERT_TRUE(eventually([&] { return p.output() == "ready\n"; }));
  const auto t0 = steady::now();
  const exit_status st = p.stop(100ms);
  EXPECT_EQ(st.signal, SIGKILL);
  EXPECT_LT(steady::now() - t0, 5s);
}

TEST(ChildProcessTest, ProcessesLeftInTheGroupAreKilledWhenTheChildExits) {
  child_process p("sh", {"-c", "sleep 30 & echo $!"}, {.capture_stdout = true});
  const std::optional<exit_status> st = p.wait_for(5s);
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(st->success()) << st->to_string();
  const pid_t orphan = std::stoi(p.output());
  EXPECT_TRUE(eventually([&] { return process_gone(orphan); }));
}

TEST(ChildProcessTest, DestructorKillsAndReapsARunningChild) {
  pid_t pid = 0;
  {
    child_process p("sleep", {"30"});
    pid = p.pid();
    ASSERT_GT(pid, 0);
  }
  // Reaped, not a zombie: the pid no longer exists at all.
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST(ChildProcessTest, ThrowsClearlyWhenTheProgramIsMissing) {
  try {
    child_process p("/nonexistent/layercache-no-such-program", {});
    FAIL() << "expected an exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("not found"), std::string::npos) << e.what();
  }
  EXPECT_THROW(child_process("layercache-no-such-program-in-path", {}), std::runtime_error);
}

TEST(ChildProcessTest, ReportsExecFailureAsAnException) {
  temp_dir dir;
  child_process_options options;
  options.working_dir = dir.path() / "missing";
  try {
    child_process p("sh", {"-c", "true"}, options);
    FAIL() << "expected an exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("chdir"), std::string::npos) << e.what();
  }
}

TEST(ChildProcessTest, PassesEnvironmentAndWorkingDirectory) {
  temp_dir dir;
  child_process p("sh", {"-c", "echo \"$LAYERCACHE_SUPPORT_TEST\"; pwd"},
                  {.capture_stdout = true,
                   .working_dir = dir.path(),
                   .env = {"LAYERCACHE_SUPPORT_TEST=hello"}});
  ASSERT_TRUE(p.wait_for(5s).has_value());
  EXPECT_EQ(p.output(), "hello\n" + fs::canonical(dir.path()).string() + "\n");
}

TEST(ChildProcessTest, ChildInheritsOnlyStandardDescriptors) {
  // Deliberately not close-on-exec, like a socket opened by code that forgot the flag.
  const int leaky = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(leaky, 3);
  child_process p("sh", {"-c", "ls /proc/$$/fd"}, {.capture_stdout = true});
  ASSERT_TRUE(p.wait_for(5s).has_value());
  ::close(leaky);
  EXPECT_EQ(p.output().find("\n" + std::to_string(leaky) + "\n"), std::string::npos) << p.output();
  EXPECT_EQ(p.output().rfind("0\n1\n2\n", 0), 0U) << p.output();
}

TEST(ChildProcessTest, SelfExeDirIsTheDirectoryOfTheTestBinary) {
  const fs::path dir = self_exe_dir();
  EXPECT_TRUE(dir.is_absolute());
  EXPECT_TRUE(fs::exists(dir / fs::read_symlink("/proc/self/exe").filename()));
}

TEST(ChildProcessTest, FindExecutableSearchesPath) {
  const std::optional<fs::path> sh = find_executable("sh");
  ASSERT_TRUE(sh.has_value());
  EXPECT_TRUE(sh->is_absolute());
  EXPECT_FALSE(find_executable("layercache-no-such-program-in-path").has_value());
}

// ---- redis_server ------------------------------------------------------------------------------

TEST(RedisServerTest, StartsOnLoopbackWithoutPersistenceAndAnswersPing) {
  redis_server redis;
  EXPECT_TRUE(redis.running());
  EXPECT_GT(redis.pid(), 0);
  EXPECT_EQ(redis.host(), "127.0.0.1");
  EXPECT_EQ(redis.url(), "redis://127.0.0.1:" + std::to_string(redis.port()));
  EXPECT_EQ(redis.cli({"PING"}), "PONG");
  EXPECT_EQ(redis.cli({"CONFIG", "GET", "bind"}), "bind\n127.0.0.1");
  EXPECT_EQ(redis.cli({"CONFIG", "GET", "save"}), "save\n");
  EXPECT_EQ(redis.cli({"CONFIG", "GET", "appendonly"}), "appendonly\nno");
  EXPECT_TRUE(fs::exists(redis.log_path()));
}

TEST(RedisServerTest, CliRoundTripsSetAndGetAndRendersEveryReplyType) {
  redis_server redis;
  const std::string binary("a b\r\nc\0d", 9);
  EXPECT_EQ(redis.cli({"SET", "k", binary}), "OK");
  EXPECT_EQ(redis.cli({"GET", "k"}), binary);
  EXPECT_EQ(redis.cli({"GET", "missing"}), "(nil)");
  EXPECT_EQ(redis.cli({"INCR", "n"}), "1");
  EXPECT_EQ(redis.cli({"RPUSH", "l", "x", "y"}), "2");
  EXPECT_EQ(redis.cli({"LRANGE", "l", "0", "-1"}), "x\ny");
  EXPECT_EQ(redis.cli({"LRANGE", "none", "0", "-1"}), "");
  EXPECT_TRUE(redis.cli({"INCR", "k"}).starts_with("(error) ERR")) << redis.cli({"INCR", "k"});
  EXPECT_EQ(resp_command(redis.host(), redis.port(), {"GET", "k"}), binary);
}

TEST(RedisServerTest, StopFreesThePortAndRestartKeepsPortAndAnswersPing) {
  redis_server redis;
  const int port = redis.port();
  redis.cli({"SET", "k", "v"});
  redis.stop();
  EXPECT_FALSE(redis.running());
  EXPECT_EQ(redis.pid(), 0);
  EXPECT_TRUE(port_is_free(port));
  EXPECT_THROW(redis.cli({"PING"}), std::runtime_error);
  redis.stop();  // idempotent

  redis.start();
  EXPECT_TRUE(redis.running());
  EXPECT_EQ(redis.port(), port);
  EXPECT_EQ(redis.cli({"PING"}), "PONG");
  EXPECT_EQ(redis.cli({"GET", "k"}), "(nil)");  // nothing persists across restarts
  redis.start();                                // no-op while running
  EXPECT_EQ(redis.cli({"PING"}), "PONG");
}

TEST(RedisServerTest, KillEndsTheServerAtOnceAndItCanRestart) {
  redis_server redis;
  const pid_t pid = redis.pid();
  redis.kill();
  EXPECT_FALSE(redis.running());
  EXPECT_EQ(::kill(pid, 0), -1);  // reaped
  EXPECT_EQ(errno, ESRCH);
  redis.start();
  EXPECT_EQ(redis.cli({"PING"}), "PONG");
}

TEST(RedisServerTest, NoticesAServerKilledFromOutsideAndRestartsIt) {
  redis_server redis;
  ASSERT_EQ(::kill(redis.pid(), SIGKILL), 0);
  EXPECT_TRUE(eventually([&] { return !redis.running(); }));
  redis.start();
  EXPECT_EQ(redis.cli({"PING"}), "PONG");
}

TEST(RedisServerTest, PasswordServerAnswersNoauthWithoutAuth) {
  redis_server redis({.requirepass = "s3cret"});
  EXPECT_TRUE(resp_command(redis.host(), redis.port(), {"PING"}).starts_with("(error) NOAUTH"));
  EXPECT_EQ(redis.cli({"PING"}), "PONG");  // cli authenticates
  EXPECT_EQ(redis.url(), "redis://:s3cret@127.0.0.1:" + std::to_string(redis.port()));
  redis.stop();
  redis.start();
  EXPECT_TRUE(resp_command(redis.host(), redis.port(), {"PING"}).starts_with("(error) NOAUTH"));
}

TEST(RedisServerTest, AclUserHasEverythingAndIsRecreatedOnRestart) {
  redis_server redis({.acl_user = "app", .acl_password = "p@ss word"});
  EXPECT_EQ(redis.url(), "redis://app:p%40ss%20word@127.0.0.1:" + std::to_string(redis.port()));
  EXPECT_EQ(redis.cli({"AUTH", "app", "p@ss word"}), "OK");
  EXPECT_EQ(redis.cli({"ACL", "DRYRUN", "app", "SET", "any:key", "v"}), "OK");
  EXPECT_EQ(redis.cli({"ACL", "DRYRUN", "app", "PUBLISH", "any-channel", "m"}), "OK");
  EXPECT_TRUE(redis.cli({"AUTH", "app", "wrong"}).starts_with("(error) WRONGPASS"));
  redis.kill();
  redis.start();
  EXPECT_EQ(redis.cli({"AUTH", "app", "p@ss word"}), "OK");
}

TEST(RedisServerTest, ExtraArgsReachTheServer) {
  redis_server redis({.extra_args = {"--maxmemory", "10mb"}});
  EXPECT_EQ(redis.cli({"CONFIG", "GET", "maxmemory"}), "maxmemory\n10485760");
}

TEST(RedisServerTest, StartFailureThrowsWithTheServersOwnExplanation) {
  const auto t0 = steady::now();
  try {
    redis_server redis({.extra_args = {"--no-such-directive", "1"}});
    FAIL() << "expected an exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("Bad directive"), std::string::npos) << e.what();
  }
  EXPECT_LT(steady::now() - t0, 4s);  // the early exit is noticed, not waited out
}

TEST(RedisServerTest, RestartFailsClearlyWhileThePortStaysTakenAndWorksOnceFree) {
  redis_server redis({.start_timeout = 2s});
  redis.stop();
  // Occupy exactly the server's port: bind it ourselves with a listening socket.
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(redis.port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  const auto t0 = steady::now();
  try {
    redis.start();
    FAIL() << "expected an exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("Address already in use"), std::string::npos) << e.what();
  }
  EXPECT_LT(steady::now() - t0, 6s);  // bounded by start_timeout, plus slack
  EXPECT_FALSE(redis.running());
  ::close(fd);
  redis.start();
  EXPECT_EQ(redis.cli({"PING"}), "PONG");
}

TEST(RedisServerTest, DestructorLeavesNoServerProcess) {
  pid_t pid = 0;
  fs::path dir;
  {
    redis_server redis;
    pid = redis.pid();
    dir = redis.dir();
    ASSERT_TRUE(fs::is_directory(dir));
  }
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
  EXPECT_FALSE(fs::exists(dir));
}

// ---- tcp_fault_proxy ---------------------------------------------------------------------------

class TcpFaultProxyTest : public ::testing::Test {
 protected:
  redis_server redis_;
  tcp_fault_proxy proxy_{redis_.host(), redis_.port()};

  // One PING round trip over `client`; returns how long it took, or fails the test.
  std::chrono::milliseconds ping(raw_client& client, std::chrono::milliseconds timeout = 5s) {
    const auto t0 = steady::now();
    client.send(k_ping);
    EXPECT_EQ(client.read_at_least(k_pong.size(), timeout), k_pong);
    return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0);
  }
};

TEST_F(TcpFaultProxyTest, ForwardsBytesBothWaysAndCountsThem) {
  EXPECT_EQ(proxy_.url(), "redis://127.0.0.1:" + std::to_string(proxy_.port()));
  raw_client client(proxy_.port());
  ping(client);
  EXPECT_TRUE(eventually([&] { return proxy_.connection_count() == 1; }));
  // Counted right after each write, so possibly a moment after the client saw the bytes.
  EXPECT_TRUE(
      eventually([&] { return proxy_.bytes_forwarded() == k_ping.size() + k_pong.size(); }));
  EXPECT_EQ(resp_command(proxy_.host(), proxy_.port(), {"SET", "k", "through-proxy"}), "OK");
  EXPECT_EQ(redis_.cli({"GET", "k"}), "through-proxy");
}

TEST_F(TcpFaultProxyTest, LatencyAddsAtLeastTheConfiguredDelayToARoundTrip) {
  raw_client client(proxy_.port());
  ping(client);
  proxy_.set_latency(60ms, 40ms);
  const auto delayed = ping(client);
  EXPECT_GE(delayed, 100ms);
  EXPECT_LT(delayed, 2s);
  proxy_.set_latency(0ms, 0ms);
  // The best of a few round trips, so one scheduling hiccup on a loaded machine does not count.
  std::chrono::milliseconds best = ping(client);
  for (int i = 0; i < 4; ++i) best = std::min(best, ping(client));
  EXPECT_LT(best, 100ms);
}

TEST_F(TcpFaultProxyTest, PipelinedRequestsAreNotDelayedCumulatively) {
  raw_client client(proxy_.port());
  ping(client);
  proxy_.set_latency(50ms, 50ms);
  constexpr int k_requests = 40;
  const auto t0 = steady::now();
  for (int i = 0; i < k_requests; ++i) {
    client.send(k_ping);
    std::this_thread::sleep_for(5ms);  // pacing the workload, so each PING is its own chunk
  }
  std::string expected;
  for (int i = 0; i < k_requests; ++i) expected += k_pong;
  EXPECT_EQ(client.read_at_least(expected.size(), 10s), expected);
  const auto elapsed = steady::now() - t0;
  EXPECT_GE(elapsed, 100ms);
  // A delay line that serialised the chunks would need at least k_requests * 100 ms = 4 s however
  // fast the machine; a correct one about 100 ms + the pacing (~200 ms). Half of 4 s leaves ample
  // room for a loaded machine without letting the serialised behaviour pass.
  EXPECT_LT(elapsed, k_requests * 100ms / 2);
}

TEST_F(TcpFaultProxyTest, BlackholeSwallowsTrafficAndRevertsWhenTurnedOff) {
  raw_client before(proxy_.port());
  ping(before);
  proxy_.blackhole(true);
  before.send(k_ping);
  EXPECT_EQ(before.read_at_least(1, 200ms), "");
  raw_client during(proxy_.port());  // a new connection is accepted, then hangs as well
  during.send(k_ping);
  EXPECT_EQ(during.read_at_least(1, 200ms), "");

  proxy_.blackhole(false);
  // The swallowed PINGs never reached Redis: exactly one answer per PING sent from now on.
  ping(before);
  ping(during);
  EXPECT_EQ(before.read_at_least(1, 50ms), "");
  EXPECT_EQ(during.read_at_least(1, 50ms), "");
}

TEST_F(TcpFaultProxyTest, PauseHoldsDataAndDeliversItOnResume) {
  raw_client client(proxy_.port());
  ping(client);
  proxy_.pause(true);
  client.send("*3\r\n$3\r\nSET\r\n$6\r\nparked\r\n$1\r\n1\r\n");
  EXPECT_EQ(client.read_at_least(1, 150ms), "");
  EXPECT_EQ(redis_.cli({"GET", "parked"}), "(nil)");  // held in the proxy, not at the server
  proxy_.pause(false);
  EXPECT_EQ(client.read_at_least(5, 5s), "+OK\r\n");
  EXPECT_EQ(redis_.cli({"GET", "parked"}), "1");
}

TEST_F(TcpFaultProxyTest, ResetAllAbortsEveryClientConnection) {
  std::vector<std::unique_ptr<raw_client>> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(std::make_unique<raw_client>(proxy_.port()));
    ping(*clients.back());
  }
  ASSERT_TRUE(eventually([&] { return proxy_.connection_count() == 3; }));
  proxy_.reset_all();
  EXPECT_EQ(proxy_.connection_count(), 0U);
  for (auto& c : clients) EXPECT_NE(c->wait_for_close(2s), raw_client::ending::still_open);

  raw_client fresh(proxy_.port());  // the proxy keeps working
  ping(fresh);
}

TEST_F(TcpFaultProxyTest, ResetAllAlsoResetsConnectionsNotYetAccepted) {
  raw_client client(proxy_.port());  // connect() returned; the proxy may not have accepted yet
  proxy_.reset_all();
  EXPECT_NE(client.wait_for_close(2s), raw_client::ending::still_open);
}

TEST_F(TcpFaultProxyTest, HandlesSixtyFourConcurrentConnections) {
  constexpr std::size_t k_clients = 64;
  {
    std::vector<std::unique_ptr<raw_client>> clients;
    for (std::size_t i = 0; i < k_clients; ++i) {
      clients.push_back(std::make_unique<raw_client>(proxy_.port()));
    }
    for (auto& c : clients) c->send(k_ping);
    for (auto& c : clients) EXPECT_EQ(c->read_at_least(k_pong.size(), 5s), k_pong);
    EXPECT_TRUE(eventually([&] { return proxy_.connection_count() == k_clients; }));
  }
  // Clients closed: the FINs travel through, Redis closes its side, the proxy drops the pairs.
  EXPECT_TRUE(eventually([&] { return proxy_.connection_count() == 0; }));
}

TEST_F(TcpFaultProxyTest, CarriesPipelinedBulkTrafficIntactThroughADelayLine) {
  proxy_.set_latency(5ms, 5ms);
  constexpr int k_commands = 20'000;
  std::string requests;
  std::string expected;
  for (int i = 0; i < k_commands; ++i) {
    const std::string key = "key:" + std::to_string(i);
    const std::string value = "value-" + std::to_string(i) + std::string(20, 'x');
    requests += "*3\r\n$3\r\nSET\r\n$" + std::to_string(key.size()) + "\r\n" + key + "\r\n$" +
                std::to_string(value.size()) + "\r\n" + value + "\r\n";
    expected += "+OK\r\n";
  }
  raw_client client(proxy_.port());
  const auto t0 = steady::now();
  client.send(requests);
  EXPECT_EQ(client.read_at_least(expected.size(), 20s), expected);
  EXPECT_LT(steady::now() - t0, 20s);
  EXPECT_EQ(redis_.cli({"DBSIZE"}), std::to_string(k_commands));
  EXPECT_EQ(redis_.cli({"GET", "key:12345"}), "value-12345" + std::string(20, 'x'));
  EXPECT_TRUE(
      eventually([&] { return proxy_.bytes_forwarded() >= requests.size() + expected.size(); }));
}

TEST_F(TcpFaultProxyTest, ServerCrashClosesClientConnections) {
  auto client = std::make_unique<raw_client>(proxy_.port());
  ping(*client);
  redis_.kill();
  EXPECT_NE(client->wait_for_close(2s), raw_client::ending::still_open);
  // The server's FIN was forwarded; the pair is dropped once the client closes its side too.
  EXPECT_EQ(proxy_.connection_count(), 1U);
  client.reset();
  EXPECT_TRUE(eventually([&] { return proxy_.connection_count() == 0; }));
}

TEST(TcpFaultProxyStandaloneTest, ClientOfAnUnreachableTargetIsDisconnected) {
  tcp_fault_proxy proxy("127.0.0.1", free_port());  // nobody listens there
  raw_client client(proxy.port());
  EXPECT_NE(client.wait_for_close(2s), raw_client::ending::still_open);
}

TEST(TcpFaultProxyStandaloneTest, DestructionClosesClientConnections) {
  redis_server redis;
  std::optional<tcp_fault_proxy> proxy(std::in_place, redis.host(), redis.port());
  raw_client client(proxy->port());
  client.send(k_ping);
  EXPECT_EQ(client.read_at_least(k_pong.size(), 5s), k_pong);
  proxy.reset();
  EXPECT_NE(client.wait_for_close(2s), raw_client::ending::still_open);
}

}  // namespace
}  // namespace layercache::test
