#include "support/temp_dir.hpp"

#include <cerrno>
#include <cstdlib>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace layercache::test {
namespace {

namespace fs = std::filesystem;

fs::path temp_root() {
  const char* env = std::getenv("TMPDIR");
  if (env != nullptr && *env != '\0') return fs::path(env);
  return fs::path("/tmp");
}

// Gives the owner full access to `p` and, for directories, everything below it, so that
// remove_all can descend into directories a test made unreadable or unwritable.
void make_owner_accessible(const fs::path& p) noexcept {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(p, ec);
  if (ec || !fs::is_directory(st)) return;
  fs::permissions(p, fs::perms::owner_all, fs::perm_options::add, ec);
  for (fs::directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec)) {
    make_owner_accessible(it->path());
  }
}

}  // namespace

temp_dir::temp_dir(std::string_view prefix) {
  std::string templ = (temp_root() / std::string(prefix)).string() + "-XXXXXX";
  // mkdtemp rewrites the XXXXXX in place, so it needs a mutable, NUL-terminated buffer.
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    throw std::system_error(errno, std::generic_category(), "mkdtemp " + templ);
  }
  path_ = fs::path(buf.data());
}

temp_dir::~temp_dir() { remove(); }

temp_dir::temp_dir(temp_dir&& other) noexcept : path_(std::exchange(other.path_, {})) {}

temp_dir& temp_dir::operator=(temp_dir&& other) noexcept {
  if (this != &other) {
    remove();
    path_ = std::exchange(other.path_, {});
  }
  return *this;
}

void temp_dir::remove() noexcept {
  if (path_.empty()) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
  if (ec) {
    make_owner_accessible(path_);
    fs::remove_all(path_, ec);
  }
  path_.clear();
}

}  // namespace layercache::test
