// errors.cpp — translation of RocksDB statuses (see errors.hpp).
#include "disk/errors.hpp"

#include <rocksdb/status.h>

#include "layercache/error.hpp"

namespace layercache::disk_detail {
namespace {

bool contains(const rocksdb::Status& s, std::string_view needle) {
  const char* state = s.getState();
  return state != nullptr && std::string_view(state).find(needle) != std::string_view::npos;
}

// RocksDB maps only ENOSPC to the NoSpace subcode; other "no room" errnos arrive as a plain IOError
// whose message carries strerror(). They mean the same thing to the caller: free space or shrink.
bool is_out_of_space(const rocksdb::Status& s) {
  return s.IsNoSpace() || contains(s, "No space left") || contains(s, "Disk quota exceeded") ||
         contains(s, "File too large");
}

}  // namespace

bool is_lock_held(const rocksdb::Status& s) noexcept {
  // Another process: "While lock file: <dir>/LOCK: Resource temporarily unavailable" (fcntl F_SETLK
  // EAGAIN). This process: "lock hold by current process, acquire time ... lock file: <dir>/LOCK".
  return s.IsIOError() && (contains(s, "/LOCK:") || contains(s, "lock hold by current process"));
}

errc to_errc(const rocksdb::Status& s) noexcept {
  if (s.ok()) return errc::ok;
  switch (s.code()) {
    case rocksdb::Status::kCorruption:
      return errc::corruption;
    case rocksdb::Status::kIOError:
      return is_out_of_space(s) ? errc::resource_exhausted : errc::unavailable;
    case rocksdb::Status::kAborted:
      return s.IsMemoryLimit() ? errc::resource_exhausted : errc::unavailable;
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTryAgain:
    case rocksdb::Status::kIncomplete:  // a write stall with no_slowdown, or a bounded read
    case rocksdb::Status::kShutdownInProgress:
    case rocksdb::Status::kColumnFamilyDropped:
      return errc::unavailable;
    case rocksdb::Status::kTimedOut:
      return errc::timeout;
    case rocksdb::Status::kCompactionTooLarge:
      return errc::resource_exhausted;
    case rocksdb::Status::kInvalidArgument:
    case rocksdb::Status::kNotSupported:
      return errc::invalid_argument;
    default:
      break;
  }
  if (s.subcode() == rocksdb::Status::kSpaceLimit) return errc::resource_exhausted;
  return errc::internal;
}

status to_status(std::string_view layer_name, std::string_view operation,
                 const rocksdb::Status& s) {
  if (s.ok()) return {};
  std::string message(operation);
  message += ": ";
  message += s.ToString();
  return status::layer_error(layer_name, to_errc(s), std::move(message));
}

void throw_open_error(const std::string& directory, const rocksdb::Status& s) {
  if (is_lock_held(s)) {
    if (contains(s, "lock hold by current process")) {
      throw error(errc::unavailable, "disk_layer: directory " + directory +
                                         " is already open in this process (LOCK held); share "
                                         "the existing disk_layer instead of creating another");
    }
    throw error(errc::unavailable, "disk_layer: directory " + directory +
                                       " is already in use by another process (LOCK held)");
  }
  const errc code = to_errc(s);
  if (code == errc::corruption) {
    throw error(code,
                "disk_layer: directory " + directory + " holds corrupt data: " + s.ToString());
  }
  // Open failures are about the directory, not the call: unavailable unless more precise.
  throw error(code == errc::internal ? errc::unavailable : code,
              "disk_layer: cannot open directory " + directory + ": " + s.ToString());
}

}  // namespace layercache::disk_detail
