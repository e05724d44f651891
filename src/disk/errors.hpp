// errors.hpp — the one place where RocksDB statuses become layercache codes and messages.
//
// Private to the disk layer. Deliberately free of RocksDB headers (a forward declaration is enough)
// so that including it costs nothing.
//
// Thread-safety: stateless free functions.
#pragma once

#include <string>
#include <string_view>

#include "layercache/status.hpp"

namespace rocksdb {
class Status;
}

namespace layercache::disk_detail {

// What the caller should do about a RocksDB status (see errc). Returns errc::ok for an ok status.
// NotFound is not an error for reads (a miss); callers handle it before translating.
//   IOError/NoSpace, disk quota, file too large, SpaceLimit, MemoryLimit → resource_exhausted
//   IOError (other), Busy, TryAgain, lock held, Incomplete, ShutdownInProgress → unavailable
//   Corruption → corruption         TimedOut → timeout
//   InvalidArgument, NotSupported → invalid_argument      anything else → internal
errc to_errc(const rocksdb::Status& s) noexcept;

// A failed status attributed to layer `layer_name`: "<operation>: <RocksDB's message>".
status to_status(std::string_view layer_name, std::string_view operation, const rocksdb::Status& s);

// True when `s` is DB::Open's failure to take the directory's LOCK file.
bool is_lock_held(const rocksdb::Status& s) noexcept;

// The exception create() throws when DB::Open fails: names the directory and the cause.
[[noreturn]] void throw_open_error(const std::string& directory, const rocksdb::Status& s);

}  // namespace layercache::disk_detail
