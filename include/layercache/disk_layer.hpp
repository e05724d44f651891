// disk_layer.hpp — a persistent byte layer on RocksDB (the optional L3 of a cache_stack).
//
// Defines disk_layer_options (with the disk_sync and disk_compression enums) and disk_layer, a
// byte_layer that keeps envelopes in a RocksDB store in one directory. It survives process restarts
// and crashes, bounds its size by evicting the oldest data first, and caps every entry's lifetime.
//
//   auto disk = layercache::disk_layer::create({
//       .directory = "/var/cache/myapp/l3",   // created 0700 if absent
//       .max_bytes = 4ull << 30,              // 4 GiB, oldest data evicted first
//       .ttl = std::chrono::hours(24),        // nothing lives longer than a day in this layer
//   });
//   layercache::cache_stack cache({layercache::memory_layer::create({}), disk});
//
// Eviction: FIFO by write time. The store is a sequence of immutable table files in write order;
// when their total size passes the bound the oldest file is deleted whole. A read does not refresh
// an entry. Entries also expire: each one carries its absolute expiry, checked on every read with
// the layer's clock (an expired entry is a miss and is deleted; its space goes with its file).
//
// Durability: a write returns once it is in RocksDB's write-ahead log in the operating system's
// page cache. A killed process (SIGKILL, crash) loses nothing that was acknowledged, and never
// leaves a torn value. A power failure or kernel crash may lose the last acknowledged writes unless
// `sync = disk_sync::every_write` (one fsync per write or batch); it still leaves no torn values.
//
// Files: the directory is created with mode 0700 (parents too) and every file in it is made 0600,
// whatever the process umask. An existing directory keeps its mode. Only one process at a time may
// open a directory (RocksDB's LOCK file); a second one gets a clear error naming the directory.
//
// Errors: get/set/del never throw for disk trouble. A failed read is a miss with `byte_read::error`
// set; a failed write returns a status (errc::resource_exhausted for a full disk or an oversized
// entry, errc::unavailable for a read-only or failing disk, errc::corruption for damaged data).
// After a disk error RocksDB refuses every write; the layer then fails writes at once with the same
// code, keeps serving reads, and reopens the store on a later write call (first after 1 s, backing
// off to 30 s), so writes come back by themselves once space is freed or the disk is writable
// again. create() throws for invalid options and unusable directories.
//
// Thread-safety: a disk_layer is safe for concurrent use from any number of threads. clear() and
// the reopen after a disk error briefly exclude every other call (they replace the store's
// handles); everything else runs concurrently. Destroying the layer waits for RocksDB's background
// flushes and compactions.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "layercache/clock.hpp"
#include "layercache/layer.hpp"
#include "layercache/metrics.hpp"
#include "layercache/status.hpp"

namespace layercache {

// When the write-ahead log is forced to stable storage.
enum class disk_sync : unsigned char {
  none,         // written to the OS page cache: survives a killed process, not a power failure
  every_write,  // fsync before each set/del/batch returns: survives power failure; ~1 ms per write
};

// How table files are compressed (block by block; incompressible blocks are stored raw).
enum class disk_compression : unsigned char { none, lz4, zstd };

struct disk_layer_options {
  // Directory of the store. Required (empty is invalid). Created with its missing parents, each
  // with mode 0700; an existing directory is used as it is.
  std::string directory{};
  // Size bound in bytes for the table files plus the unflushed write buffers: about the directory's
  // size (plus a few hundred KiB of metadata and logs). Default 1 GiB. Oldest data is evicted first
  // when it is reached, by a background job: under sustained writes the size can pass the bound for
  // a moment by the few table files written while eviction waits for CPU. Minimum 1 MiB (zero is
  // invalid). An entry larger than max_bytes / 16 is refused with errc::resource_exhausted: it
  // would evict a sixteenth of the cache at once.
  // RAM: two write buffers of max_bytes / 16 each (at most 64 MiB each), plus the block cache.
  std::uint64_t max_bytes = 1ull << 30;
  // Cap on an entry's lifetime in this layer, from the moment it is written: an entry expires at
  // min(its own expiry, write time + ttl). Default and zero: no cap (entries keep their own
  // expiry). Precision 1 ms; must not be negative.
  std::chrono::milliseconds ttl{0};
  // Compression of table files, block by block. Default lz4 (fast, about 2x on text). The stack
  // does not compress envelopes for this layer (layer_info::compress is none): compressing whole
  // blocks also catches the redundancy across small values, and compressing twice wastes CPU.
  disk_compression compression = disk_compression::lz4;
  // Durability of acknowledged writes (see disk_sync). Default none.
  disk_sync sync = disk_sync::none;
  // Bytes of RocksDB's block cache (uncompressed table blocks, LRU). Default 64 MiB. Zero disables
  // it: every read then decodes a block from the OS page cache (a few µs slower).
  std::size_t block_cache_bytes = 64ull << 20;
  // Name of the layer in statuses, metrics and events. Default "disk". Must not be empty.
  std::string name = "disk";
  // Time source for expiry. Default (null): default_clock(). Tests install a fake clock.
  std::shared_ptr<const layercache::clock> clock{};

  // Throws invalid_argument_error naming the first invalid field and why.
  void validate() const;
};

namespace detail {
struct disk_layer_testing;  // test seam (src/disk/disk_layer_testing.hpp); not API
}

class disk_layer final : public byte_layer {
 public:
  // Opens (or creates) the store in options.directory.
  //
  // Throws invalid_argument_error when options.validate() fails, and layercache::error when the
  // directory cannot be used; the message names the directory and the cause, e.g.
  //   "disk_layer: directory /x is already in use by another process (LOCK held)"  (unavailable)
  //   "disk_layer: cannot create directory /x: Permission denied"                 (unavailable)
  //   "disk_layer: directory /x holds corrupt data: ..."                          (corruption)
  // Cost: replays the write-ahead log (up to 2 write buffers) and opens every table file.
  static std::shared_ptr<disk_layer> create(disk_layer_options options);

  // Closes the store: waits for running background flushes and compactions. Unflushed writes stay
  // in the write-ahead log and are replayed by the next create().
  ~disk_layer() override;

  const layer_info& info() const noexcept override;

  // The bytes stored under `key`, or a miss. An expired entry is a miss (and is deleted). A damaged
  // entry is a miss with error errc::corruption (and is deleted). Cost: about 3 µs (p99 5 µs) for
  // 1 KiB values when the block is cached, plus one disk read otherwise.
  byte_read get(std::string_view key) override;
  // One result per key, in order; one batched RocksDB lookup.
  std::vector<byte_read> get_many(std::span<const std::string> keys) override;
  // Stores `bytes` under `key` until min(expires_at_ms, now + ttl) (expires_at_ms 0 = no expiry of
  // its own). An expiry already past removes the key instead. Errors: resource_exhausted (disk
  // full, entry over max_bytes / 16), unavailable (read-only or failing disk), ...
  status set(std::string_view key, std::string_view bytes, unix_ms expires_at_ms) override;
  // All writes in one atomic batch: after a crash either all of them are visible or none.
  status set_many(std::span<const byte_write> writes) override;
  status del(std::string_view key) override;
  // All deletions in one atomic batch.
  status del_many(std::span<const std::string> keys) override;
  // Removes every entry and frees their space. Blocks concurrent calls on this layer meanwhile.
  status clear() override;
  // Visits every live entry (expired and damaged ones are skipped) in key order until `visit`
  // returns false. Reads in chunks of at most 1024 entries / 4 MiB and calls `visit` outside every
  // lock of the layer, so a slow visitor delays nobody; entries written or cleared during the scan
  // may or may not be seen. Bypasses the block cache. Errors: unavailable (disk), corruption.
  status scan(
      const std::function<bool(std::string_view key, std::string_view bytes)>& visit) override;
  // Adds `bytes` (approximate_bytes()) and the entries this layer found expired on its own (its ttl
  // cap or an expiry it stored) to `expirations`.
  void contribute_metrics(layer_metrics& out) const override;

  // Bytes counted against max_bytes: live table files plus unflushed write buffers. Cheap (reads
  // two counters). Lags the directory's size by the files RocksDB has yet to delete.
  std::uint64_t approximate_bytes() const;
  // Writes the write buffers to a table file and waits (at most 10 s) for the background eviction
  // that may follow, so approximate_bytes() reflects the bound. For tests and orderly shutdown;
  // never needed for durability. Errors as for set().
  status flush();
  // The directory the store lives in (options.directory as given).
  const std::string& directory() const noexcept;

 private:
  struct impl;
  friend struct detail::disk_layer_testing;

  explicit disk_layer(std::unique_ptr<impl> state);

  std::unique_ptr<impl> impl_;
};

}  // namespace layercache
