// child_process.hpp — runs a program as a child process for tests: real servers, helper binaries
// built beside the test, crash-and-restart scenarios.
//
//   layercache::test::child_process p(self_exe_dir() + "/layercache_worker", {"--id", "1"},
//                                     {.capture_stdout = true});
//   std::optional<exit_status> st = p.wait_for(5s);   // bounded: nullopt if still running
//   ASSERT_TRUE(st && st->success()) << p.output();
//
// The child runs in its own process group (so a terminal's Ctrl-C reaches only the test, which then
// cleans up) with stdin on /dev/null, default signal dispositions and only descriptors 0-2 open.
// Nothing is left behind:
//   - when the child exits (or is killed), every process still in its process group is killed
//     with SIGKILL before the child is reaped — a daemon it forked dies with it;
//   - the destructor kills (SIGKILL) and reaps a child that is still running;
//   - live children are registered process-wide: an atexit handler and handlers for fatal signals
//     (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL; previous
//     handlers are chained) kill their process groups when the test binary dies early;
//   - with kill_on_parent_death (default), the kernel kills the child if the test binary is killed
//     with SIGKILL (e.g. by a ctest timeout). Caveat: Linux ties this to the *thread* that spawned
//     the child — spawn from a thread that outlives the child, or turn the option off.
//
// Thread-safety: all member functions may be called concurrently (e.g. kill() from a watchdog
// thread while another thread is in wait_for()); destruction must not race with other calls. The
// captured output is collected by a background thread so a chatty child never blocks on a full
// pipe.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace layercache::test {

// How a child process ended.
struct exit_status {
  int code = -1;   // exit code when it exited normally, else -1
  int signal = 0;  // the signal that terminated it, else 0

  bool exited() const noexcept { return signal == 0; }
  bool success() const noexcept { return signal == 0 && code == 0; }
  // "exit code 3" or "killed by signal 9 (Killed)", for assertion messages.
  std::string to_string() const;
};

// Every field has a default member initialiser, so designated initialisers may name any subset.
struct child_process_options {
  // Read the child's stdout through a pipe into a string (see output()). Default: inherit.
  bool capture_stdout = false;
  // Send stderr wherever stdout goes (captured, output_file, or inherited). Default: inherit.
  bool stderr_to_stdout = false;
  // When non-empty and capture_stdout is false: stdout is appended to this file (created 0644).
  std::filesystem::path output_file{};
  // Working directory of the child; empty = the test's.
  std::filesystem::path working_dir{};
  // Extra environment entries "NAME=value", added to (or replacing) the test's environment.
  std::vector<std::string> env{};
  // PR_SET_PDEATHSIG(SIGKILL): see the caveat in the header comment. Default on.
  bool kill_on_parent_death = true;
};

class child_process {
 public:
  // Starts `program` with `args` (argv[1..]). A program without '/' is looked up in $PATH.
  // Throws std::runtime_error when the program is not found or cannot be executed (the exec error
  // is reported back from the child, so a bad path fails here, not as a mysterious exit code 127).
  child_process(std::string program, std::vector<std::string> args,
                child_process_options options = {});
  // Kills (SIGKILL) the process group if the child still runs and reaps it (bounded: 10 s).
  ~child_process();

  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  child_process(child_process&&) = delete;
  child_process& operator=(child_process&&) = delete;

  // The child's pid (also its process group id). Stays valid as a number after the child exited,
  // but must not be signalled then: use kill(), which knows.
  pid_t pid() const noexcept { return pid_; }

  // True until the child has exited (an exited-but-unreaped child counts as not running).
  bool running() const;

  // Waits up to `timeout` for the child to exit; returns how it ended, or nullopt if it still runs.
  // Once it returned a status, output() holds everything the child wrote (bounded wait for EOF).
  // Blocks without spinning (a pidfd where the kernel supports it, else a short backoff).
  std::optional<exit_status> wait_for(std::chrono::milliseconds timeout);

  // Sends `sig` to the child (not its group). No-op once the child has been reaped.
  void kill(int sig = SIGKILL);

  // Graceful stop: SIGTERM, wait up to `grace`, then SIGKILL and wait. Returns how it ended.
  exit_status stop(std::chrono::milliseconds grace = std::chrono::seconds(2));

  // The stdout captured so far (empty unless capture_stdout). Cost: copies the buffer.
  std::string output() const;

 private:
  bool try_reap_locked();  // requires mu_; true once status_ is set
  void read_output();
  void wait_output_eof(std::chrono::milliseconds timeout);

  pid_t pid_ = -1;
  int pidfd_ = -1;  // -1 when pidfd_open is unavailable: wait_for polls instead
  int registry_slot_ = -1;

  mutable std::mutex mu_;  // guards status_ and the reap (so kill() never hits a recycled pid)
  std::optional<exit_status> status_;

  // Output capture: pipe read end, a wake-up eventfd to stop the reader, and the reader thread.
  int out_fd_ = -1;
  int out_wake_fd_ = -1;
  mutable std::mutex out_mu_;
  std::condition_variable out_cv_;
  std::string out_;      // guarded by out_mu_
  bool out_eof_ = true;  // guarded by out_mu_; false while the reader may still append
  std::jthread reader_;
};

// Directory of the running executable (readlink /proc/self/exe), without a trailing '/', so tests
// find helper binaries built beside them. Throws std::system_error if the link cannot be read.
std::string self_exe_dir();

// Looks `name` up like a shell would: as given when it contains '/', else in each $PATH entry
// (default "/usr/local/bin:/usr/bin:/bin"). Returns the first executable regular file, or nullopt.
std::optional<std::filesystem::path> find_executable(std::string_view name);

}  // namespace layercache::test
