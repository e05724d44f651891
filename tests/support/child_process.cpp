#include "support/child_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <utility>

extern char** environ;  // NOLINT: POSIX global, declared by no standard header

namespace layercache::test {
namespace {

// ---- process-wide registry of live children -----------------------------------------------------
//
// Read by an atexit handler and by fatal-signal handlers, so it is a fixed array of lock-free
// atomics (async-signal-safe), not a container behind a mutex. Each slot packs the registering
// process's pid (high half) and the child's process group id (low half): a forked copy of the test
// binary (a gtest death test calling exit()) must not kill the children of its parent.

constexpr std::size_t k_registry_slots = 1024;
std::atomic<std::uint64_t> g_registry[k_registry_slots];  // 0 = free slot
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

std::uint64_t pack(pid_t owner, pid_t pgid) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(owner)) << 32U) |
         static_cast<std::uint32_t>(pgid);
}

int register_child(pid_t pgid) {
  const std::uint64_t value = pack(::getpid(), pgid);
  for (std::size_t i = 0; i < k_registry_slots; ++i) {
    std::uint64_t expected = 0;
    if (g_registry[i].compare_exchange_strong(expected, value)) return static_cast<int>(i);
  }
  std::cerr << "layercache::test::child_process: registry full, pid " << pgid
            << " will not be killed if the test binary dies\n";
  return -1;
}

void unregister_child(int slot) {
  if (slot >= 0) g_registry[static_cast<std::size_t>(slot)].store(0);
}

// Async-signal-safe: getpid, kill and atomic loads only.
void kill_registered_children() noexcept {
  const auto self = static_cast<std::uint32_t>(::getpid());
  for (auto& slot : g_registry) {
    const std::uint64_t v = slot.load();
    if (v != 0 && static_cast<std::uint32_t>(v >> 32U) == self) {
      ::kill(-static_cast<pid_t>(static_cast<std::uint32_t>(v)), SIGKILL);
    }
  }
}

constexpr int k_fatal_signals[] = {SIGINT,  SIGTERM, SIGHUP, SIGQUIT, SIGABRT,
                                   SIGSEGV, SIGBUS,  SIGFPE, SIGILL};
struct sigaction g_previous_action[NSIG];  // written once before the handlers are installed

void on_fatal_signal(int sig, siginfo_t* info, void*) {
  const int saved_errno = errno;
  kill_registered_children();
  // Hand the signal back to whoever handled it before us (often the default action: die).
  ::sigaction(sig, &g_previous_action[sig], nullptr);
  // A real fault (si_code > 0: the kernel reporting SIGSEGV/SIGBUS/SIGFPE/SIGILL for an
  // instruction) re-executes the faulting instruction on return and so reaches the previous
  // handler; a signal that was sent (kill, raise, abort) must be raised again — it stays blocked
  // until we return.
  const bool fault = (sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL) &&
                     info != nullptr && info->si_code > 0;
  if (!fault) ::raise(sig);
  errno = saved_errno;
}

void install_cleanup_handlers_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    std::atexit(kill_registered_children);
    for (const int sig : k_fatal_signals) {
      struct sigaction previous {};
      if (::sigaction(sig, nullptr, &previous) != 0) continue;
      // A signal someone chose to ignore stays ignored: we must not turn it into a crash.
      if ((previous.sa_flags & SA_SIGINFO) == 0 && previous.sa_handler == SIG_IGN) continue;
      g_previous_action[sig] = previous;
      struct sigaction action {};
      action.sa_sigaction = on_fatal_signal;
      sigemptyset(&action.sa_mask);
      action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
      ::sigaction(sig, &action, nullptr);
    }
  });
}

// ---- spawning -----------------------------------------------------------------------------------

// What the child reports through the close-on-exec error pipe when it cannot reach execve.
struct spawn_failure {
  int stage;  // index into k_stage_names
  int error;  // errno
};
constexpr const char* k_stage_names[] = {"exec", "chdir to working_dir for", "set up stdio for"};
constexpr int k_stage_exec = 0;
constexpr int k_stage_chdir = 1;
constexpr int k_stage_stdio = 2;

void close_fd(int& fd) noexcept {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

[[noreturn]] void child_fail(int report_fd, int stage) {
  const spawn_failure failure{stage, errno};
  // Nothing useful can be done if this write fails: the parent then sees exit code 127.
  [[maybe_unused]] const auto ignored = ::write(report_fd, &failure, sizeof failure);
  ::_exit(127);
}

// Everything the child needs, prepared by the parent: after fork() in a multi-threaded process the
// child may only make async-signal-safe calls (no allocation, no locks) until execve.
struct child_setup {
  const char* exe;
  char* const* argv;
  char* const* envp;
  const char* working_dir;  // nullptr: inherit
  int stdin_fd;
  int stdout_fd;  // -1: inherit
  bool stderr_to_stdout;
  bool kill_on_parent_death;
  pid_t parent;
  int report_fd;
};

[[noreturn]] void run_child(const child_setup& s) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  ::setpgid(0, 0);
  if (s.kill_on_parent_death) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    // The parent may have died before prctl took effect; then nobody will ever stop us.
    if (::getppid() != s.parent) ::_exit(127);
  }

  if (::dup2(s.stdin_fd, STDIN_FILENO) < 0) child_fail(s.report_fd, k_stage_stdio);
  if (s.stdout_fd >= 0 && ::dup2(s.stdout_fd, STDOUT_FILENO) < 0) {
    child_fail(s.report_fd, k_stage_stdio);
  }
  if (s.stderr_to_stdout && ::dup2(STDOUT_FILENO, STDERR_FILENO) < 0) {
    child_fail(s.report_fd, k_stage_stdio);
  }
  if (s.working_dir != nullptr && ::chdir(s.working_dir) != 0) {
    child_fail(s.report_fd, k_stage_chdir);
  }
  // Descriptors the test holds (listening sockets, proxy connections, database files) must not
  // leak into the child: a leaked listening socket would keep a port bound after its owner closed
  // it. Mark all of them close-on-exec; the report pipe then closes exactly at a successful exec.
  if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    const long max_fd = std::min(::sysconf(_SC_OPEN_MAX), 65536L);
    for (int fd = 3; fd < max_fd; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  ::execve(s.exe, s.argv, s.envp);
  child_fail(s.report_fd, k_stage_exec);
}

std::vector<std::string> build_environment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) env.emplace_back(*e);
  for (const std::string& entry : extra) {
    const std::string name = entry.substr(0, entry.find('=') + 1);  // "NAME="
    std::erase_if(env, [&](const std::string& existing) { return existing.starts_with(name); });
    env.push_back(entry);
  }
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

bool is_executable_file(const std::filesystem::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
}

exit_status decode_wait_status(int st) {
  exit_status out;
  if (WIFEXITED(st)) {
    out.code = WEXITSTATUS(st);
  } else if (WIFSIGNALED(st)) {
    out.signal = WTERMSIG(st);
  }
  return out;
}

std::runtime_error sys_error(const std::string& what) {
  return std::runtime_error("child_process: " + what + ": " + std::strerror(errno));
}

}  // namespace

std::string exit_status::to_string() const {
  if (signal == 0) return "exit code " + std::to_string(code);
  const char* abbrev = ::sigabbrev_np(signal);
  return "killed by signal " + std::to_string(signal) +
         (abbrev != nullptr ? std::string(" (SIG") + abbrev + ")" : std::string());
}

child_process::child_process(std::string program, std::vector<std::string> args,
                             child_process_options options) {
  const std::optional<std::filesystem::path> exe = find_executable(program);
  if (!exe) {
    throw std::runtime_error("child_process: program not found: " + program +
                             (program.find('/') == std::string::npos ? " (searched $PATH)" : ""));
  }

  std::vector<std::string> argv_strings;
  argv_strings.reserve(args.size() + 1);
  argv_strings.push_back(program);
  for (std::string& a : args) argv_strings.push_back(std::move(a));
  std::vector<char*> argv = c_strings(argv_strings);
  std::vector<std::string> env_strings = build_environment(options.env);
  std::vector<char*> envp = c_strings(env_strings);
  const std::string exe_path = exe->string();
  const std::string working_dir = options.working_dir.string();

  // Every descriptor is opened close-on-exec: dup2 onto 0-2 in the child clears the flag there,
  // and nothing leaks into children spawned concurrently by other threads.
  int stdin_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (stdin_fd < 0) throw sys_error("open /dev/null");
  int stdout_fd = -1;
  int out_pipe[2] = {-1, -1};
  int report_pipe[2] = {-1, -1};
  auto close_all = [&] {
    close_fd(stdin_fd);
    close_fd(stdout_fd);
    close_fd(out_pipe[0]);
    close_fd(out_pipe[1]);
    close_fd(report_pipe[0]);
    close_fd(report_pipe[1]);
  };
  if (options.capture_stdout) {
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
      close_all();
      throw sys_error("pipe");
    }
    stdout_fd = out_pipe[1];
    out_pipe[1] = -1;
  } else if (!options.output_file.empty()) {
    stdout_fd =
        ::open(options.output_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (stdout_fd < 0) {
      const std::runtime_error err = sys_error("open " + options.output_file.string());
      close_all();
      throw err;
    }
  }
  if (::pipe2(report_pipe, O_CLOEXEC) != 0) {
    close_all();
    throw sys_error("pipe");
  }

  const child_setup setup{exe_path.c_str(),
                          argv.data(),
                          envp.data(),
                          working_dir.empty() ? nullptr : working_dir.c_str(),
                          stdin_fd,
                          stdout_fd,
                          options.stderr_to_stdout,
                          options.kill_on_parent_death,
                          ::getpid(),
                          report_pipe[1]};

  install_cleanup_handlers_once();
  // Block every signal across fork so the child cannot run one of our handlers before it has reset
  // the dispositions to default.
  sigset_t all;
  sigset_t previous_mask;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &previous_mask);
  const pid_t pid = ::fork();
  if (pid == 0) run_child(setup);
  const int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &previous_mask, nullptr);
  if (pid < 0) {
    close_all();
    errno = fork_errno;
    throw sys_error("fork");
  }
  pid_ = pid;
  // Both sides call setpgid so the group exists before this constructor returns, whichever runs
  // first (EACCES after the child's exec is expected and harmless).
  ::setpgid(pid_, pid_);
  registry_slot_ = register_child(pid_);

  close_fd(report_pipe[1]);
  close_fd(stdin_fd);
  close_fd(stdout_fd);
  spawn_failure failure{};
  ssize_t got = 0;
  do {
    got = ::read(report_pipe[0], &failure, sizeof failure);
  } while (got < 0 && errno == EINTR);
  close_fd(report_pipe[0]);
  if (got == static_cast<ssize_t>(sizeof failure)) {
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    unregister_child(registry_slot_);
    close_fd(out_pipe[0]);
    throw std::runtime_error(std::string("child_process: cannot ") + k_stage_names[failure.stage] +
                             " " + exe_path + ": " + std::strerror(failure.error));
  }

  pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));  // -1: old kernel or seccomp
  if (out_pipe[0] >= 0) {
    out_fd_ = out_pipe[0];
    out_wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    out_eof_ = false;
    reader_ = std::jthread([this] { read_output(); });
  }
}

child_process::~child_process() {
  {
    std::lock_guard lock(mu_);
    if (!status_) ::kill(-pid_, SIGKILL);
  }
  try {
    // SIGKILL cannot be caught; only a process stuck in the kernel (D state) outlives this bound,
    // and it stays registered, so the atexit handler tries again.
    if (!wait_for(std::chrono::seconds(10))) {
      std::cerr << "layercache::test::child_process: pid " << pid_
                << " survived SIGKILL for 10 s; leaving it\n";
    }
  } catch (...) {
    // A destructor must not throw; the registry still covers the child.
  }
  if (reader_.joinable()) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto ignored = ::write(out_wake_fd_, &one, sizeof one);
    reader_.join();
  }
  close_fd(out_fd_);
  close_fd(out_wake_fd_);
  close_fd(pidfd_);
}

bool child_process::running() const {
  std::lock_guard lock(mu_);
  if (status_) return false;
  siginfo_t info{};
  // WNOWAIT: look without reaping, so the pid stays ours until try_reap_locked reaps it.
  if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    return false;
  }
  return info.si_pid == 0;
}

bool child_process::try_reap_locked() {
  if (status_) return true;
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    if (errno == EINTR) return false;
    // ECHILD: someone else reaped it (SIGCHLD set to SIG_IGN). It is gone; the status is unknown.
    status_ = exit_status{};
    unregister_child(registry_slot_);
    return true;
  }
  if (info.si_pid == 0) return false;
  // The exited leader is a zombie until reaped, which keeps its pid (= the group id) from being
  // reused: killing the group now can only hit processes the child left behind.
  ::kill(-pid_, SIGKILL);
  int st = 0;
  while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
  status_ = decode_wait_status(st);
  unregister_child(registry_slot_);
  return true;
}

std::optional<exit_status> child_process::wait_for(std::chrono::milliseconds timeout) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + timeout;
  auto backoff = std::chrono::milliseconds(1);
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (try_reap_locked()) {
        const exit_status st = *status_;
        lock.unlock();
        // The child is gone; its last writes may still be in the pipe.
        wait_output_eof(std::chrono::seconds(2));
        return st;
      }
    }
    const auto now = clock::now();
    if (now >= deadline) return std::nullopt;
    const auto remaining = deadline - now;
    if (pidfd_ >= 0) {
      // A pidfd becomes readable when the process exits: a real wait, no polling.
      pollfd pfd{pidfd_, POLLIN, 0};
      const auto ms = std::chrono::ceil<std::chrono::milliseconds>(remaining).count();
      ::poll(&pfd, 1, static_cast<int>(std::min<std::int64_t>(ms, 60'000)));
    } else {
      std::this_thread::sleep_for(std::min<clock::duration>(backoff, remaining));
      backoff = std::min(backoff * 2, std::chrono::milliseconds(10));
    }
  }
}

void child_process::kill(int sig) {
  std::lock_guard lock(mu_);
  if (!status_) ::kill(pid_, sig);
}

exit_status child_process::stop(std::chrono::milliseconds grace) {
  kill(SIGTERM);
  if (auto st = wait_for(grace)) return *st;
  {
    std::lock_guard lock(mu_);
    // Under mu_ the leader is not reaped yet, so its pid still names this group.
    if (!status_) ::kill(-pid_, SIGKILL);
  }
  if (auto st = wait_for(std::chrono::seconds(10))) return *st;
  throw std::runtime_error("child_process: pid " + std::to_string(pid_) +
                           " did not exit within 10 s of SIGKILL");
}

std::string child_process::output() const {
  std::lock_guard lock(out_mu_);
  return out_;
}

void child_process::read_output() {
  char buf[16384];
  pollfd fds[2] = {{out_fd_, POLLIN, 0}, {out_wake_fd_, POLLIN, 0}};
  for (;;) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents != 0) break;  // the destructor wants us gone
    if (fds[0].revents == 0) continue;
    const ssize_t n = ::read(out_fd_, buf, sizeof buf);
    if (n > 0) {
      std::lock_guard lock(out_mu_);
      out_.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
      break;  // EOF: every writer (the child and anything it forked) closed the pipe
    }
  }
  std::lock_guard lock(out_mu_);
  out_eof_ = true;
  out_cv_.notify_all();
}

void child_process::wait_output_eof(std::chrono::milliseconds timeout) {
  std::unique_lock lock(out_mu_);
  out_cv_.wait_for(lock, timeout, [this] { return out_eof_; });
}

std::string self_exe_dir() {
  return std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
}

std::optional<std::filesystem::path> find_executable(std::string_view name) {
  if (name.empty()) return std::nullopt;
  if (name.find('/') != std::string_view::npos) {
    std::filesystem::path p(name);
    if (is_executable_file(p)) return p;
    return std::nullopt;
  }
  const char* env = std::getenv("PATH");
  const std::string_view path = env != nullptr ? env : "/usr/local/bin:/usr/bin:/bin";
  std::size_t begin = 0;
  for (;;) {
    const std::size_t end = path.find(':', begin);
    std::string_view dir = path.substr(begin, end == std::string_view::npos ? end : end - begin);
    if (dir.empty()) dir = ".";  // an empty PATH entry means the current directory
    std::filesystem::path candidate = std::filesystem::path(dir) / name;
    if (is_executable_file(candidate)) return candidate;
    if (end == std::string_view::npos) return std::nullopt;
    begin = end + 1;
  }
}

}  // namespace layercache::test
