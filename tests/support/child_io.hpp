// child_io.hpp — how the helper programs run as child processes by the tests (disk_child,
// coherence_node) report to their parent. Header-only: those programs link no test support.
//
// Thread-safety: say() may be called from any thread; each line is one write(), so lines of
// concurrent threads never interleave.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <string>
#include <string_view>

namespace layercache::test {

// Writes `line` and a newline to stdout, unbuffered, so that a SIGKILL right after the call never
// loses it.
inline void say(std::string_view line) {
  std::string l(line);
  l.push_back('\n');
  const char* p = l.data();
  std::size_t left = l.size();
  while (left > 0) {
    const ssize_t n = ::write(STDOUT_FILENO, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace layercache::test
