// disk_layer.cpp — the RocksDB byte layer (see include/layercache/disk_layer.hpp).
//
// Storage: one RocksDB column family ("entries") holds key → [expiry: 8 bytes little-endian unix
// ms, 0 = never][envelope bytes]. Expiry is checked on every read with the layer's clock (an
// expired entry is a miss and is deleted); RocksDB's own notion of time is not used.
//
// Size bound: FIFO compaction. RocksDB writes the memtable out as immutable table files in write
// order and, whenever their total passes CompactionOptionsFIFO::max_table_files_size, deletes the
// oldest file whole. We chose it over level compaction because
//   * it is real eviction: level compaction has no size bound at all (SstFileManager's space limit
//     only makes writes fail), so a cache on it would need its own eviction scan;
//   * it is a sound cache policy (FIFO by write time; L1/L2 in front absorb the hot set) and it
//     never resurrects data: a deletion or overwrite is always newer than what it hides, so it
//     lives in a newer file than the data, and files go oldest first;
//   * write amplification is 1 (no rewriting), which is kind to SSDs, and expired entries leave
//     with their file like everything else.
// The cost: overwritten, deleted and expired entries keep using space until their file ages out
// (the bound still holds; the cache just holds fewer live entries), and a read probes the bloom
// filter of every file (max_bytes / write_buffer_size files, about 16). RocksDB's FIFO ttl is not
// used (see the cf.ttl comment in create()).
// The bound covers the table files, the two write buffers (whose content is also in the WAL) and
// one just-flushed file awaiting eviction. With W = write_buffer_size = max_bytes / 16 clamped to
// [64 KiB, 64 MiB], FIFO's max_table_files_size is max_bytes - 3 W.
//
// Concurrency: RocksDB is thread-safe; this file adds
//   * cf_mu (writer-preferring rwlock): shared by every call for as long as it uses the DB and
//     column family handles, exclusive to replace them (clear() drops and recreates the column
//     family; recovery reopens the store). Held shared across RocksDB reads because the handles
//     must outlive the call; only clear() and recovery (both rare) wait for it. Writer preference
//     keeps them from starving under a steady stream of reads.
//   * stripes (64 mutexes by key hash): taken by writes and by the lazy deletion of an expired or
//     damaged entry, which re-reads the key under its stripe and deletes only if the entry is
//     still dead: it can never delete a fresh value written concurrently by set().
//   * failure_mu: the write-suspension record (see disk_layer::impl); never held across RocksDB.
//   Lock order: cf_mu, then stripes in increasing index, then failure_mu.
//
// Invariants: every stored value is at least 8 bytes (shorter ones are corruption, dropped on
// read); an entry with expiry e is never returned at or after time e (by the layer's clock).
#include "layercache/disk_layer.hpp"

#include <pthread.h>
#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/iterator.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <filesystem>
#include <functional>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <system_error>
#include <thread>
#include <utility>

#include "disk/disk_layer_testing.hpp"
#include "disk/errors.hpp"
#include "layercache/error.hpp"

namespace layercache {
namespace {

constexpr std::size_t expiry_prefix_bytes = 8;
constexpr std::uint64_t min_max_bytes = 1ull << 20;
constexpr std::uint64_t min_write_buffer_bytes = 64ull << 10;
constexpr std::uint64_t max_write_buffer_bytes = 64ull << 20;
constexpr int write_buffer_count = 2;
constexpr std::size_t stripe_count = 64;
constexpr const char* entries_cf_name = "entries";
constexpr std::chrono::seconds flush_settle_limit{10};
constexpr std::chrono::milliseconds first_recovery_delay{1000};
constexpr std::chrono::milliseconds max_recovery_delay{30000};

// ---- value format ---------------------------------------------------------------------------

void put_le64(char* out, std::uint64_t v) {
  for (std::size_t i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xFFu);
}

std::uint64_t get_le64(const char* in) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    v |= static_cast<std::uint64_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  }
  return v;
}

enum class verdict : unsigned char { live, expired, corrupt };

verdict classify(std::string_view raw, unix_ms now) {
  if (raw.size() < expiry_prefix_bytes) return verdict::corrupt;
  const std::uint64_t expiry = get_le64(raw.data());
  if (expiry == 0) return verdict::live;
  // Expiry values above INT64_MAX cannot be written by set(); treat them as far future anyway.
  if (expiry > static_cast<std::uint64_t>(std::numeric_limits<unix_ms>::max())) {
    return verdict::live;
  }
  return static_cast<unix_ms>(expiry) <= now ? verdict::expired : verdict::live;
}

unix_ms saturating_add(unix_ms a, std::int64_t b) {
  constexpr unix_ms max = std::numeric_limits<unix_ms>::max();
  return b > 0 && a > max - b ? max : a + b;
}

// ---- owner-only files -----------------------------------------------------------------------

// RocksDB creates its files with open(..., 0644) filtered by the process umask. Changing the umask
// is process-wide, so instead every file RocksDB creates through this wrapper is chmod'ed to 0600
// right after creation (before any data is written to it). Reads are forwarded untouched: the
// wrapper returns the underlying file objects, so it costs nothing on the read path.
class owner_only_file_system final : public rocksdb::FileSystemWrapper {
 public:
  explicit owner_only_file_system(const std::shared_ptr<rocksdb::FileSystem>& target)
      : FileSystemWrapper(target) {}

  const char* Name() const override { return "LayercacheOwnerOnlyFileSystem"; }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override {
    return restrict(f, target()->NewWritableFile(f, o, r, dbg));
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override {
    return restrict(f, target()->ReopenWritableFile(f, o, r, dbg));
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                                      const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* dbg) override {
    return restrict(f, target()->ReuseWritableFile(f, old, o, r, dbg));
  }
  rocksdb::IOStatus NewRandomRWFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* r,
                                    rocksdb::IODebugContext* dbg) override {
    return restrict(f, target()->NewRandomRWFile(f, o, r, dbg));
  }
  rocksdb::IOStatus LockFile(const std::string& f, const rocksdb::IOOptions& o,
                             rocksdb::FileLock** l, rocksdb::IODebugContext* dbg) override {
    return restrict(f, target()->LockFile(f, o, l, dbg));
  }
  rocksdb::IOStatus NewLogger(const std::string& f, const rocksdb::IOOptions& o,
                              std::shared_ptr<rocksdb::Logger>* r,
                              rocksdb::IODebugContext* dbg) override {
    return restrict(f, target()->NewLogger(f, o, r, dbg));
  }

 private:
  static rocksdb::IOStatus restrict(const std::string& f, rocksdb::IOStatus s) {
    // Best effort: the directory (0700 when we created it) is the real boundary, and failing a
    // write because chmod failed would turn a hardening step into an outage.
    if (s.ok()) (void)::chmod(f.c_str(), S_IRUSR | S_IWUSR);
    return s;
  }
};

// ---- directory ------------------------------------------------------------------------------

[[noreturn]] void throw_directory_error(const std::string& what, const std::string& path, int err) {
  // error_code::message, not strerror: the latter is not thread-safe.
  throw error(errc::unavailable, "disk_layer: " + what + " " + path + ": " +
                                     std::error_code(err, std::generic_category()).message());
}

// Creates `dir` and its missing parents, each with mode 0700 set by chmod (mkdir's mode is
// filtered by the umask). Directories that already exist are left as they are.
void make_owner_only_directories(const std::string& dir) {
  namespace fs = std::filesystem;
  std::string trimmed = dir;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  std::vector<fs::path> missing;
  for (fs::path p(trimmed); !p.empty(); p = p.parent_path()) {
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) {
        throw error(errc::unavailable, "disk_layer: cannot use directory " + dir + ": " +
                                           p.string() + " exists and is not a directory");
      }
      break;
    }
    // ENOTDIR: some ancestor is not a directory; keep walking up to name it precisely.
    if (errno != ENOENT && errno != ENOTDIR) {
      throw_directory_error("cannot access directory", p.string(), errno);
    }
    missing.push_back(p);
    if (p == p.parent_path()) break;
  }
  std::reverse(missing.begin(), missing.end());  // outermost first
  for (const fs::path& p : missing) {
    if (::mkdir(p.c_str(), S_IRWXU) != 0) {
      if (errno == EEXIST) continue;  // created concurrently by someone else: not ours to chmod
      throw_directory_error("cannot create directory", p.string(), errno);
    }
    if (::chmod(p.c_str(), S_IRWXU) != 0) {
      throw_directory_error("cannot set mode 0700 on directory", p.string(), errno);
    }
  }
}

// ---- locks ----------------------------------------------------------------------------------

// A writer-preferring reader/writer lock (std::shared_mutex prefers readers on glibc, which would
// let a steady stream of reads starve clear()). Meets SharedMutex for std::shared_lock.
class rw_lock {
 public:
  rw_lock() {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&lock_, &attr);
    pthread_rwlockattr_destroy(&attr);
  }
  ~rw_lock() { pthread_rwlock_destroy(&lock_); }
  rw_lock(const rw_lock&) = delete;
  rw_lock& operator=(const rw_lock&) = delete;

  void lock() { pthread_rwlock_wrlock(&lock_); }
  void unlock() { pthread_rwlock_unlock(&lock_); }
  void lock_shared() { pthread_rwlock_rdlock(&lock_); }
  void unlock_shared() { pthread_rwlock_unlock(&lock_); }

 private:
  pthread_rwlock_t lock_;
};

rocksdb::CompressionType to_rocksdb(disk_compression c) {
  switch (c) {
    case disk_compression::none:
      return rocksdb::kNoCompression;
    case disk_compression::lz4:
      return rocksdb::kLZ4Compression;
    case disk_compression::zstd:
      return rocksdb::kZSTD;
  }
  return rocksdb::kLZ4Compression;
}

std::int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// RocksDB 7.8 can resume in place after a failed WAL append (NoSpace), but the resumed instance
// keeps writing to the WAL writer that failed: Debian's build (assertions on) aborts the process
// there, a release build fails every later write. So in-place recovery is switched off (this
// listener, and max_bgerror_resume_count = 0) and the layer recovers by reopening the store.
class no_auto_recovery final : public rocksdb::EventListener {
 public:
  const char* Name() const override { return "LayercacheNoAutoRecovery"; }
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason /*reason*/, rocksdb::Status /*bg_error*/,
                            bool* auto_recovery) override {
    *auto_recovery = false;
  }
};

// Positions `it` at the first key (or, when `resume`, after `last_key`) and copies the live
// entries into `chunk` until either limit is reached; returns whether it examined any entry
// (`last_key` is then the last one). An iterator over the memtable points
// into RocksDB's arena, published by RocksDB's own atomics; Debian's librocksdb is not built
// with TSan, so TSan cannot see that ordering and reports these copies as races with the writer.
// tests/tsan.supp names this function, which therefore must touch nothing but the iterator and
// its output (no callback, no shared state of ours), so the suppression hides nothing else.
[[gnu::noinline]] bool copy_live_entries_from_iterator(
    rocksdb::Iterator& it, bool resume, unix_ms now, std::size_t max_entries, std::size_t max_bytes,
    std::string& last_key, std::vector<std::pair<std::string, std::string>>& chunk) {
  if (resume) {
    it.Seek(last_key);
    if (it.Valid() && it.key() == rocksdb::Slice(last_key)) it.Next();
  } else {
    it.SeekToFirst();
  }
  bool examined = false;
  std::size_t bytes = 0;
  for (; it.Valid() && chunk.size() < max_entries && bytes < max_bytes; it.Next()) {
    last_key.assign(it.key().data(), it.key().size());
    examined = true;
    const std::string_view raw = it.value().ToStringView();
    if (classify(raw, now) != verdict::live) continue;
    chunk.emplace_back(last_key, raw.substr(expiry_prefix_bytes));
    bytes += last_key.size() + raw.size();
  }
  return examined;
}

}  // namespace

// ---- options --------------------------------------------------------------------------------

void disk_layer_options::validate() const {
  if (directory.empty()) {
    throw invalid_argument_error("disk_layer_options::directory must not be empty");
  }
  if (directory.find('\0') != std::string::npos) {
    throw invalid_argument_error("disk_layer_options::directory must not contain a NUL byte");
  }
  if (max_bytes < min_max_bytes) {
    throw invalid_argument_error(
        "disk_layer_options::max_bytes must be at least 1 MiB (1048576), "
        "got " +
        std::to_string(max_bytes));
  }
  if (ttl.count() < 0) {
    throw invalid_argument_error("disk_layer_options::ttl must not be negative, got " +
                                 std::to_string(ttl.count()) + " ms");
  }
  if (compression != disk_compression::none && compression != disk_compression::lz4 &&
      compression != disk_compression::zstd) {
    throw invalid_argument_error("disk_layer_options::compression has an unknown value " +
                                 std::to_string(static_cast<int>(compression)));
  }
  if (sync != disk_sync::none && sync != disk_sync::every_write) {
    throw invalid_argument_error("disk_layer_options::sync has an unknown value " +
                                 std::to_string(static_cast<int>(sync)));
  }
  if (name.empty()) throw invalid_argument_error("disk_layer_options::name must not be empty");
}

// ---- state ----------------------------------------------------------------------------------

// Write failures. A write that fails with a disk error (full, read-only, EIO) leaves RocksDB in a
// "background error" state where it refuses every later write. The layer then suspends writes
// (they fail at once with the original code: bounded, no disk I/O), keeps serving reads from the
// same instance, and once the retry delay has passed the next write call reopens the store
// (exclusive lock; WAL replay; point-in-time recovery drops the torn tail of the failed write).
// If the read-write reopen fails, the store is opened read-only so that reads keep working, and
// the delay doubles (1 s … 30 s).
struct disk_layer::impl {
  disk_layer_options options;
  layer_info info;
  std::shared_ptr<const clock> clk;
  std::uint64_t max_entry_bytes = 0;

  // Declared before db: destroyed after it (RocksDB uses them until Close()).
  std::unique_ptr<rocksdb::Env> env;
  rocksdb::DBOptions db_options;
  rocksdb::ColumnFamilyOptions cf_options;
  rocksdb::WriteOptions write_options;
  rocksdb::WriteOptions cleanup_write_options;  // lazy deletions: never synced, losing one is ok
  rocksdb::ReadOptions read_options;

  // cf_mu guards db, default_cf and entries: shared for every use, exclusive to replace them
  // (clear, recovery, close). entries is null when the store could not be (re)opened, or after a
  // clear() whose CreateColumnFamily failed: calls then report unavailable.
  mutable rw_lock cf_mu;
  std::unique_ptr<rocksdb::DB> db;
  rocksdb::ColumnFamilyHandle* default_cf = nullptr;
  rocksdb::ColumnFamilyHandle* entries = nullptr;
  mutable std::array<std::mutex, stripe_count> stripes;

  // Write suspension (see above). `suspended` is read without a lock on every write; the rest is
  // guarded by failure_mu, which is never held while calling RocksDB.
  mutable std::atomic<bool> suspended{false};
  mutable std::mutex failure_mu;
  mutable errc failure_code = errc::ok;
  mutable std::string failure_message;
  mutable std::int64_t next_recovery_ms = 0;
  mutable std::int64_t recovery_delay_ms = first_recovery_delay.count();

  // Entries found expired by this layer (its own expiry prefix), for contribute_metrics().
  mutable std::atomic<std::uint64_t> expired_dropped{0};

  // Test seam (disk_layer_testing): runs when a read has found a dead entry, before it is deleted.
  std::function<void()> before_lazy_delete;

  ~impl() { close(); }

  // Requires cf_mu exclusive (or no other user).
  void close() noexcept {
    if (!db) return;
    if (entries != nullptr) (void)db->DestroyColumnFamilyHandle(entries);
    if (default_cf != nullptr) (void)db->DestroyColumnFamilyHandle(default_cf);
    entries = nullptr;
    default_cf = nullptr;
    (void)db->Close();  // waits for background jobs; unflushed data stays in the WAL
    db.reset();
  }

  // Requires cf_mu exclusive (or no other user) and a closed store.
  rocksdb::Status open(bool read_only) {
    const std::vector<rocksdb::ColumnFamilyDescriptor> families = {
        {rocksdb::kDefaultColumnFamilyName, cf_options}, {entries_cf_name, cf_options}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    rocksdb::Status s =
        read_only
            ? rocksdb::DB::OpenForReadOnly(db_options, options.directory, families, &handles, &raw)
            : rocksdb::DB::Open(db_options, options.directory, families, &handles, &raw);
    if (!s.ok()) return s;
    db.reset(raw);
    default_cf = handles.at(0);
    entries = handles.at(1);
    return s;
  }

  std::size_t stripe_of(std::string_view key) const {
    return std::hash<std::string_view>{}(key) % stripe_count;
  }

  status missing_store_status(std::string_view op) const {
    return status::layer_error(info.name, errc::unavailable,
                               std::string(op) + ": the store of " + options.directory +
                                   " is not open (a reopen after a disk error failed; the next"
                                   " write retries once the delay has passed)");
  }

  // ---- write suspension ----

  // Whether a failed write means RocksDB now refuses all writes. Caller mistakes and transient
  // conditions do not.
  static bool stops_writes(const rocksdb::Status& s) {
    return !(s.ok() || s.IsInvalidArgument() || s.IsNotSupported() || s.IsIncomplete() ||
             s.IsBusy() || s.IsTryAgain() || s.IsTimedOut());
  }

  // Suspends writes after `s` when it stops RocksDB's writes, or always with `force` (a state only
  // a reopen repairs, like a column family dropped by clear() and not recreated).
  void note_write_failure(const rocksdb::Status& s, bool force = false) const {
    if (!force && !stops_writes(s)) return;
    std::lock_guard<std::mutex> guard(failure_mu);
    if (suspended.load(std::memory_order_relaxed)) return;
    failure_code = disk_detail::to_errc(s);
    failure_message = s.ToString();
    next_recovery_ms = steady_ms() + recovery_delay_ms;
    suspended.store(true, std::memory_order_release);
  }

  status suspended_status(std::string_view op) const {
    std::lock_guard<std::mutex> guard(failure_mu);
    const std::int64_t wait_ms = std::max<std::int64_t>(0, next_recovery_ms - steady_ms());
    return status::layer_error(info.name, failure_code,
                               std::string(op) + ": writes suspended after a disk error (" +
                                   failure_message + "); next reopen attempt in " +
                                   std::to_string(wait_ms) + " ms");
  }

  // Called by write entry points before they take cf_mu: reopens the store when writes are
  // suspended and the retry delay has passed. One thread does it; the others go on and fail fast.
  void maybe_recover() {
    if (!suspended.load(std::memory_order_acquire)) return;
    {
      std::lock_guard<std::mutex> guard(failure_mu);
      const std::int64_t now = steady_ms();
      if (now < next_recovery_ms) return;
      next_recovery_ms = now + recovery_delay_ms;  // claims this attempt
    }
    std::unique_lock<rw_lock> lock(cf_mu);
    close();
    const rocksdb::Status s = open(false);
    {
      std::lock_guard<std::mutex> guard(failure_mu);
      if (s.ok()) {
        suspended.store(false, std::memory_order_release);
        recovery_delay_ms = first_recovery_delay.count();
        failure_message.clear();
        return;
      }
      failure_code = disk_detail::to_errc(s);
      if (failure_code == errc::internal) failure_code = errc::unavailable;
      failure_message = "reopen failed: " + s.ToString();
      recovery_delay_ms = std::min(recovery_delay_ms * 2, max_recovery_delay.count());
      next_recovery_ms = steady_ms() + recovery_delay_ms;
    }
    // Serve reads meanwhile; if even this fails, calls report the store as not open.
    if (!open(true).ok()) close();
  }

  // ---- entries ----

  unix_ms effective_expiry(unix_ms expires_at, unix_ms now) const {
    const unix_ms cap = options.ttl.count() > 0 ? saturating_add(now, options.ttl.count()) : 0;
    if (expires_at == 0) return cap;
    if (cap == 0) return expires_at;
    return std::min(expires_at, cap);
  }

  status check_entry_size(std::string_view op, std::string_view key, std::size_t bytes) const {
    const std::uint64_t total = key.size() + bytes + expiry_prefix_bytes;
    if (total <= max_entry_bytes) return {};
    return status::layer_error(info.name, errc::resource_exhausted,
                               std::string(op) + ": entry of " + std::to_string(total) +
                                   " bytes exceeds the per-entry limit of " +
                                   std::to_string(max_entry_bytes) + " bytes (max_bytes / 16)");
  }

  // Appends the write of one entry (or its deletion when already expired) to `batch`.
  rocksdb::Status add_write(rocksdb::WriteBatch& batch, std::string_view key,
                            std::string_view bytes, unix_ms expires_at, unix_ms now) const {
    const unix_ms expiry = effective_expiry(expires_at, now);
    const rocksdb::Slice k(key.data(), key.size());
    if (expiry != 0 && expiry <= now) return batch.Delete(entries, k);
    char prefix[expiry_prefix_bytes];
    put_le64(prefix, static_cast<std::uint64_t>(expiry));
    // SliceParts: RocksDB copies prefix and bytes straight into the batch, no temporary string.
    const rocksdb::Slice value_parts[2] = {rocksdb::Slice(prefix, sizeof prefix),
                                           rocksdb::Slice(bytes.data(), bytes.size())};
    return batch.Put(entries, rocksdb::SliceParts(&k, 1), rocksdb::SliceParts(value_parts, 2));
  }

  // Writes `batch`. Requires cf_mu shared and an open store.
  status write(std::string_view op, rocksdb::WriteBatch& batch) const {
    if (suspended.load(std::memory_order_acquire)) return suspended_status(op);
    const rocksdb::Status s = db->Write(write_options, &batch);
    if (!s.ok()) note_write_failure(s);
    return disk_detail::to_status(info.name, op, s);
  }

  // Deletes `key` if it is still expired or damaged, re-reading it under its stripe so that a
  // value written concurrently by set() survives. Errors are ignored (the next read decides
  // again), except that a disk error suspends writes like any failed write. Requires cf_mu shared.
  void drop_if_dead(std::string_view key, unix_ms now) const {
    if (suspended.load(std::memory_order_acquire)) return;
    if (before_lazy_delete) before_lazy_delete();
    std::lock_guard<std::mutex> guard(stripes[stripe_of(key)]);
    const rocksdb::Slice k(key.data(), key.size());
    rocksdb::PinnableSlice raw;
    const rocksdb::Status s = db->Get(read_options, entries, k, &raw);
    if (s.IsNotFound()) return;
    if (s.ok() && classify(raw.ToStringView(), now) == verdict::live) return;
    const rocksdb::Status d = db->Delete(cleanup_write_options, entries, k);
    if (!d.ok()) note_write_failure(d);
  }

  // Turns one stored value (or lookup failure) into a byte_read. Requires cf_mu shared.
  byte_read finish_read(std::string_view key, const rocksdb::Status& s,
                        const rocksdb::PinnableSlice& raw, unix_ms now) const {
    byte_read out;
    if (s.IsNotFound()) return out;
    if (!s.ok()) {
      out.error = disk_detail::to_status(info.name, "get", s);
      // A damaged block: hide the key behind a tombstone so later reads are clean misses; FIFO
      // eventually deletes the damaged file itself.
      if (s.IsCorruption()) drop_if_dead(key, now);
      return out;
    }
    const std::string_view value = raw.ToStringView();
    switch (classify(value, now)) {
      case verdict::live:
        out.bytes.emplace(value.substr(expiry_prefix_bytes));
        return out;
      case verdict::expired:
        expired_dropped.fetch_add(1, std::memory_order_relaxed);
        drop_if_dead(key, now);
        return out;
      case verdict::corrupt:
        out.error = status::layer_error(
            info.name, errc::corruption,
            "get: stored value of " + std::to_string(value.size()) +
                " bytes is shorter than its 8-byte expiry prefix; the entry was deleted");
        drop_if_dead(key, now);
        return out;
    }
    return out;
  }
};

disk_layer::disk_layer(std::unique_ptr<impl> state) : impl_(std::move(state)) {}

disk_layer::~disk_layer() = default;

// ---- create ---------------------------------------------------------------------------------

std::shared_ptr<disk_layer> disk_layer::create(disk_layer_options options) {
  options.validate();
  auto st = std::make_unique<impl>();
  st->clk = options.clock ? options.clock : default_clock();
  st->info = layer_info{options.name, layer_kind::bytes, options.ttl, false};

  make_owner_only_directories(options.directory);

  const std::uint64_t write_buffer =
      std::clamp(options.max_bytes / 16, min_write_buffer_bytes, max_write_buffer_bytes);
  st->max_entry_bytes = options.max_bytes / 16;

  st->env = rocksdb::NewCompositeEnv(
      std::make_shared<owner_only_file_system>(rocksdb::FileSystem::Default()));

  rocksdb::DBOptions& db = st->db_options;
  db.env = st->env.get();
  db.create_if_missing = true;
  db.create_missing_column_families = true;
  db.max_open_files = -1;  // required by FIFO compaction
  db.max_background_jobs = 2;
  // Obsolete files are deleted by background threads, never by the thread calling get/set.
  db.avoid_unnecessary_blocking_io = true;
  // Point-in-time recovery replays the WAL up to the first torn record and stops: after a crash
  // the store holds a prefix of the acknowledged writes, each value whole.
  db.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  // See no_auto_recovery: recovery from disk errors is a reopen, driven by this layer.
  db.max_bgerror_resume_count = 0;
  db.listeners.push_back(std::make_shared<no_auto_recovery>());
  // Keep the non-data files small: they are outside the size bound.
  db.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db.max_log_file_size = 1u << 20;
  db.keep_log_file_num = 2;
  db.max_manifest_file_size = 4u << 20;
  db.stats_dump_period_sec = 0;
  db.stats_persist_period_sec = 0;

  rocksdb::BlockBasedTableOptions table;
  if (options.block_cache_bytes > 0) {
    table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  } else {
    table.no_block_cache = true;
  }
  // A point lookup probes every FIFO file; the bloom filter makes that a few memory reads per file
  // (filters stay resident because max_open_files = -1 keeps every table open).
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.optimize_filters_for_memory = true;
  table.data_block_index_type = rocksdb::BlockBasedTableOptions::kDataBlockBinaryAndHash;

  rocksdb::ColumnFamilyOptions& cf = st->cf_options;
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  cf.compaction_style = rocksdb::kCompactionStyleFIFO;
  // One table file more than the write buffers: a freshly flushed file exists for a moment before
  // FIFO deletes the oldest one, and the total must stay under max_bytes then too.
  cf.compaction_options_fifo.max_table_files_size =
      options.max_bytes - (write_buffer_count + 1) * write_buffer;
  cf.compaction_options_fifo.allow_compaction = false;
  cf.write_buffer_size = write_buffer;
  cf.max_write_buffer_number = write_buffer_count;
  // RocksDB preallocates table files in steps of target_file_size_base (default 64 MiB); at our
  // scale a flush output is one write buffer, so preallocate that much and no more.
  cf.target_file_size_base = write_buffer;
  cf.compression = to_rocksdb(options.compression);
  // No age-based deletion by RocksDB. FIFO's `ttl` would delete a table file once its *oldest*
  // entry is older than the cap (measured on RocksDB 7.8: an entry flushed a moment after an old
  // one was deleted with it at once), evicting fresh entries early. Expiry is ours (checked on
  // read); space is bounded by size alone. Both must be 0: at their defaults RocksDB would apply a
  // 30-day ttl.
  cf.ttl = 0;
  cf.periodic_compaction_seconds = 0;
  // Misses are common in a cache: a memtable bloom filter answers them without a skiplist search.
  cf.memtable_whole_key_filtering = true;
  cf.memtable_prefix_bloom_size_ratio = 0.02;

  st->write_options.sync = options.sync == disk_sync::every_write;
  st->cleanup_write_options.sync = false;

  st->options = std::move(options);
  if (const rocksdb::Status s = st->open(false); !s.ok()) {
    disk_detail::throw_open_error(st->options.directory, s);
  }
  return std::shared_ptr<disk_layer>(new disk_layer(std::move(st)));
}

// ---- byte_layer -----------------------------------------------------------------------------

const layer_info& disk_layer::info() const noexcept { return impl_->info; }

const std::string& disk_layer::directory() const noexcept { return impl_->options.directory; }

byte_read disk_layer::get(std::string_view key) {
  impl& st = *impl_;
  std::shared_lock<rw_lock> lock(st.cf_mu);
  if (st.entries == nullptr) return {st.missing_store_status("get"), std::nullopt};
  rocksdb::PinnableSlice raw;
  const rocksdb::Status s =
      st.db->Get(st.read_options, st.entries, rocksdb::Slice(key.data(), key.size()), &raw);
  return st.finish_read(key, s, raw, st.clk->now_ms());
}

std::vector<byte_read> disk_layer::get_many(std::span<const std::string> keys) {
  impl& st = *impl_;
  std::vector<byte_read> out;
  if (keys.empty()) return out;
  std::shared_lock<rw_lock> lock(st.cf_mu);
  if (st.entries == nullptr) {
    out.resize(keys.size());
    for (auto& r : out) r.error = st.missing_store_status("get_many");
    return out;
  }
  std::vector<rocksdb::Slice> slices;
  slices.reserve(keys.size());
  for (const auto& k : keys) slices.emplace_back(k.data(), k.size());
  std::vector<rocksdb::PinnableSlice> values(keys.size());
  std::vector<rocksdb::Status> statuses(keys.size());
  st.db->MultiGet(st.read_options, st.entries, keys.size(), slices.data(), values.data(),
                  statuses.data());
  const unix_ms now = st.clk->now_ms();
  out.reserve(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    out.push_back(st.finish_read(keys[i], statuses[i], values[i], now));
  }
  return out;
}

status disk_layer::set(std::string_view key, std::string_view bytes, unix_ms expires_at_ms) {
  impl& st = *impl_;
  if (status size = st.check_entry_size("set", key, bytes.size()); !size.ok()) return size;
  st.maybe_recover();
  std::shared_lock<rw_lock> lock(st.cf_mu);
  if (st.entries == nullptr) return st.missing_store_status("set");
  rocksdb::WriteBatch batch;
  if (auto s = st.add_write(batch, key, bytes, expires_at_ms, st.clk->now_ms()); !s.ok()) {
    return disk_detail::to_status(st.info.name, "set", s);
  }
  std::lock_guard<std::mutex> guard(st.stripes[st.stripe_of(key)]);
  return st.write("set", batch);
}

status disk_layer::set_many(std::span<const byte_write> writes) {
  impl& st = *impl_;
  if (writes.empty()) return {};
  for (const auto& w : writes) {
    if (status size = st.check_entry_size("set_many", w.key, w.bytes.size()); !size.ok()) {
      return size;
    }
  }
  st.maybe_recover();
  std::shared_lock<rw_lock> lock(st.cf_mu);
  if (st.entries == nullptr) return st.missing_store_status("set_many");
  rocksdb::WriteBatch batch;
  const unix_ms now = st.clk->now_ms();
  std::vector<std::size_t> stripe_ids;
  stripe_ids.reserve(std::min(writes.size(), stripe_count));
  for (const auto& w : writes) {
    if (auto s = st.add_write(batch, w.key, w.bytes, w.expires_at_ms, now); !s.ok()) {
      return disk_detail::to_status(st.info.name, "set_many", s);
    }
    stripe_ids.push_back(st.stripe_of(w.key));
  }
  std::sort(stripe_ids.begin(), stripe_ids.end());
  stripe_ids.erase(std::unique(stripe_ids.begin(), stripe_ids.end()), stripe_ids.end());
  std::vector<std::unique_lock<std::mutex>> guards;
  guards.reserve(stripe_ids.size());
  for (std::size_t id : stripe_ids) guards.emplace_back(st.stripes[id]);
  return st.write("set_many", batch);
}

status disk_layer::del(std::string_view key) {
  impl& st = *impl_;
  st.maybe_recover();
  std::shared_lock<rw_lock> lock(st.cf_mu);
  if (st.entries == nullptr) return st.missing_store_status("del");
  rocksdb::WriteBatch batch;
  if (auto s = batch.Delete(st.entries, rocksdb::Slice(key.data(), key.size())); !s.ok()) {
    return disk_detail::to_status(st.info.name, "del", s);
  }
  return st.write("del", batch);
}

status disk_layer::del_many(std::span<const std::string> keys) {
  impl& st = *impl_;
  if (keys.empty()) return {};
  st.maybe_recover();
  std::shared_lock<rw_lock> lock(st.cf_mu);
  if (st.entries == nullptr) return st.missing_store_status("del_many");
  rocksdb::WriteBatch batch;
  for (const auto& k : keys) {
    if (auto s = batch.Delete(st.entries, rocksdb::Slice(k.data(), k.size())); !s.ok()) {
      return disk_detail::to_status(st.info.name, "del_many", s);
    }
  }
  return st.write("del_many", batch);
}

status disk_layer::clear() {
  impl& st = *impl_;
  st.maybe_recover();
  std::unique_lock<rw_lock> lock(st.cf_mu);
  if (st.suspended.load(std::memory_order_acquire)) return st.suspended_status("clear");
  if (!st.db) return st.missing_store_status("clear");
  // Dropping the column family deletes its files at once (space is freed, unlike range deletes,
  // which FIFO would keep until the files age out). Crash-safe: a drop without the re-creation is
  // completed by the next open (create_missing_column_families).
  if (st.entries != nullptr) {
    if (auto s = st.db->DropColumnFamily(st.entries); !s.ok()) {
      st.note_write_failure(s);
      return disk_detail::to_status(st.info.name, "clear", s);
    }
    (void)st.db->DestroyColumnFamilyHandle(st.entries);
    st.entries = nullptr;
  }
  rocksdb::ColumnFamilyHandle* fresh = nullptr;
  if (auto s = st.db->CreateColumnFamily(st.cf_options, entries_cf_name, &fresh); !s.ok()) {
    st.note_write_failure(s, /*force=*/true);  // the reopen recreates the column family
    return disk_detail::to_status(st.info.name, "clear", s);
  }
  st.entries = fresh;
  return {};
}

status disk_layer::scan(
    const std::function<bool(std::string_view key, std::string_view bytes)>& visit) {
  constexpr std::size_t chunk_entries = 1024;
  constexpr std::size_t chunk_bytes = 4u << 20;
  impl& st = *impl_;
  rocksdb::ReadOptions ro = st.read_options;
  ro.fill_cache = false;  // a full scan must not evict the hot blocks
  std::string last_key;   // the last key examined: the next chunk starts after it
  bool started = false;
  std::vector<std::pair<std::string, std::string>> chunk;
  for (;;) {
    chunk.clear();
    bool exhausted = false;
    {
      std::shared_lock<rw_lock> lock(st.cf_mu);
      if (st.entries == nullptr) return st.missing_store_status("scan");
      const std::unique_ptr<rocksdb::Iterator> it(st.db->NewIterator(ro, st.entries));
      started |= copy_live_entries_from_iterator(*it, started, st.clk->now_ms(), chunk_entries,
                                                 chunk_bytes, last_key, chunk);
      if (!it->Valid()) {
        if (!it->status().ok()) return disk_detail::to_status(st.info.name, "scan", it->status());
        exhausted = true;
      }
    }  // iterator and lock released: the visitor runs with no lock of this layer held
    for (const auto& [key, bytes] : chunk) {
      if (!visit(key, bytes)) return {};
    }
    if (exhausted) return {};
  }
}

void disk_layer::contribute_metrics(layer_metrics& out) const {
  out.expirations += impl_->expired_dropped.load(std::memory_order_relaxed);
  out.bytes = approximate_bytes();
}

// ---- maintenance ----------------------------------------------------------------------------

std::uint64_t disk_layer::approximate_bytes() const {
  impl& st = *impl_;
  std::shared_lock<rw_lock> lock(st.cf_mu);
  if (st.entries == nullptr) return 0;
  std::uint64_t sst = 0;
  std::uint64_t mem = 0;
  (void)st.db->GetIntProperty(st.entries, rocksdb::DB::Properties::kLiveSstFilesSize, &sst);
  (void)st.db->GetIntProperty(st.entries, rocksdb::DB::Properties::kCurSizeAllMemTables, &mem);
  return sst + mem;
}

status disk_layer::flush() {
  impl& st = *impl_;
  st.maybe_recover();
  std::shared_lock<rw_lock> lock(st.cf_mu);
  if (st.entries == nullptr) return st.missing_store_status("flush");
  if (st.suspended.load(std::memory_order_acquire)) return st.suspended_status("flush");
  rocksdb::FlushOptions fo;
  fo.wait = true;
  if (const rocksdb::Status s = st.db->Flush(fo, st.entries); !s.ok()) {
    st.note_write_failure(s);
    return disk_detail::to_status(st.info.name, "flush", s);
  }
  // FIFO eviction runs as a background compaction scheduled by the flush; wait for it (bounded)
  // so that the caller observes the bound. RocksDB 7.8 has no WaitForCompact.
  const auto deadline = std::chrono::steady_clock::now() + flush_settle_limit;
  while (std::chrono::steady_clock::now() < deadline) {
    std::uint64_t pending = 0;
    std::uint64_t running = 0;
    (void)st.db->GetIntProperty(st.entries, rocksdb::DB::Properties::kCompactionPending, &pending);
    (void)st.db->GetIntProperty(rocksdb::DB::Properties::kNumRunningCompactions, &running);
    if (pending == 0 && running == 0) return {};
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return status::layer_error(st.info.name, errc::timeout,
                             "flush: background eviction still running after 10 s");
}

// ---- test seam ------------------------------------------------------------------------------

status detail::disk_layer_testing::put_raw(disk_layer& layer, std::string_view key,
                                           std::string_view raw) {
  disk_layer::impl& st = *layer.impl_;
  std::shared_lock<rw_lock> lock(st.cf_mu);
  if (st.entries == nullptr) return st.missing_store_status("put_raw");
  return disk_detail::to_status(
      st.info.name, "put_raw",
      st.db->Put(st.write_options, st.entries, rocksdb::Slice(key.data(), key.size()),
                 rocksdb::Slice(raw.data(), raw.size())));
}

void detail::disk_layer_testing::on_lazy_delete(disk_layer& layer, std::function<void()> hook) {
  std::unique_lock<rw_lock> lock(layer.impl_->cf_mu);
  layer.impl_->before_lazy_delete = std::move(hook);
}

}  // namespace layercache
