// temp_dir.hpp — a fresh private directory for one test, removed with everything in it on
// destruction.
//
//   layercache::test::temp_dir dir;                      // e.g. /tmp/layercache-Ab3xYz
//   open_db(dir.path() / "db");
//
// Created with mkdtemp (mode 0700) under $TMPDIR, or /tmp when $TMPDIR is unset or empty.
// Removal also copes with subdirectories a test made unreadable (it restores owner permissions
// first), and never throws.
//
// Thread-safety: a temp_dir is an immutable value after construction; path() may be called from any
// thread. Moving or destroying it must not race with other uses.
#pragma once

#include <filesystem>
#include <string_view>

namespace layercache::test {

class temp_dir {
 public:
  // Creates the directory "<tmp>/<prefix>-XXXXXX". Throws std::system_error if it cannot.
  explicit temp_dir(std::string_view prefix = "layercache");
  // Removes the directory recursively (errors are ignored: a leftover is better than a crash).
  ~temp_dir();

  temp_dir(temp_dir&& other) noexcept;
  temp_dir& operator=(temp_dir&& other) noexcept;
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  // The absolute path of the directory; empty after being moved from.
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  void remove() noexcept;

  std::filesystem::path path_;
};

}  // namespace layercache::test
