// snapshot_test.cpp — cache_stack::export_snapshot / import_snapshot on real files: round trips
// through a memory-only stack (typed import into L1) and a memory + disk stack (untyped import into
// RocksDB, remaining lifetimes kept), what an export contains (L1 and disk, each key once, L1's
// value winning), expired entries, damaged and truncated files, the size bound, owner-only
// permissions, atomic replacement of an existing snapshot, and typed imports skipping other types.
//
// Expiry runs on a fake clock shared by the stacks and their layers. The file format (magic,
// entries, count, CRC32C) is documented in docs/format.md, "Snapshot file"; the tests read it only
// to list the keys a snapshot holds. Cases with a disk layer are compiled where it is built.
#include "layercache/snapshot.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layercache/cache_stack.hpp"
#include "layercache/memory_layer.hpp"
#include "support/fake_clock.hpp"
#include "support/temp_dir.hpp"

#if LAYERCACHE_TEST_WITH_DISK
#include "layercache/disk_layer.hpp"
#endif

namespace layercache {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using test::fake_clock;
using test::temp_dir;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << p;
}

std::uint64_t read_le(const std::string& data, std::size_t at, std::size_t bytes) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < bytes; ++i) {
    v |= static_cast<std::uint64_t>(static_cast<unsigned char>(data[at + i])) << (8 * i);
  }
  return v;
}

// The keys a snapshot file holds, in file order (docs/format.md: 16-byte header, entries of
// u32 key length | key | u32 envelope length | envelope, 12-byte trailer).
std::vector<std::string> snapshot_keys(const fs::path& p) {
  const std::string data = read_file(p);
  std::vector<std::string> keys;
  if (data.size() < 28) {
    ADD_FAILURE() << p << " is too short to be a snapshot";
    return keys;
  }
  const std::size_t end = data.size() - 12;
  std::size_t pos = 16;
  while (pos < end) {  // each round advances by at least 8 bytes
    if (end - pos < 4) break;
    const std::size_t klen = read_le(data, pos, 4);
    if (end - pos - 4 < klen + 4) break;
    keys.push_back(data.substr(pos + 4, klen));
    pos += 4 + klen;
    pos += 4 + read_le(data, pos, 4);
  }
  EXPECT_EQ(pos, end) << "entries of " << p << " do not end where the trailer starts";
  EXPECT_EQ(read_le(data, end, 8), keys.size()) << "entry count";
  return keys;
}

// Names of the files in `dir`.
std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// A fetcher that must not run.
auto no_fetch() {
  return []() -> std::string {
    ADD_FAILURE() << "the fetcher ran for a key the snapshot should have provided";
    return "unexpected";
  };
}

class SnapshotTest : public ::testing::Test {
 protected:
  std::shared_ptr<memory_layer> memory() { return memory_layer::create({.clock = clock_}); }
  std::unique_ptr<cache_stack> memory_stack() {
    return std::make_unique<cache_stack>(std::vector<std::shared_ptr<layer>>{memory()},
                                         stack_options{.clock = clock_});
  }

  // A memory-only stack holding a, b, c (strings, 60 s) and a cached "not found" (nf, 30 s).
  std::unique_ptr<cache_stack> filled_memory_stack() {
    auto cache = memory_stack();
    for (const char* k : {"a", "b", "c"}) {
      EXPECT_TRUE(cache->set<std::string>(k, std::string("value-") + k, {.ttl = 60s}).ok());
    }
    EXPECT_EQ(cache->get<std::string>("nf", [] { return std::optional<std::string>{}; }), nullptr);
    return cache;
  }

  std::shared_ptr<fake_clock> clock_ = std::make_shared<fake_clock>();
  temp_dir dir_{"snapshot"};
  const fs::path snaps_ = [this] {
    fs::create_directories(dir_.path() / "snaps");
    return dir_.path() / "snaps";
  }();
  const fs::path path_ = snaps_ / "warm.lcsnap";
};

// ---- memory only ------------------------------------------------------------------------------

TEST_F(SnapshotTest, MemoryOnlyRoundTripFillsL1WithTypedImport) {
  {
    auto source = filled_memory_stack();
    const snapshot_result out = source->export_snapshot(path_);
    ASSERT_TRUE(out.error.ok()) << out.error.message();
    EXPECT_EQ(out.stats.entries, 4u);
    EXPECT_EQ(out.stats.bytes, fs::file_size(path_));
  }
  auto l1 = memory();
  cache_stack target({l1}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot<std::string>(path_);
  ASSERT_TRUE(in.error.ok()) << in.error.message();
  EXPECT_EQ(in.stats.entries, 4u);
  EXPECT_EQ(in.stats.skipped_expired, 0u);
  EXPECT_EQ(in.stats.skipped_type, 0u);
  EXPECT_EQ(in.stats.bytes, fs::file_size(path_));
  EXPECT_EQ(l1->size(), 4u);

  for (const char* k : {"a", "b", "c"}) {
    auto v = target.get<std::string>(k, no_fetch());
    ASSERT_NE(v, nullptr) << k;
    EXPECT_EQ(*v, std::string("value-") + k);
  }
  EXPECT_EQ(target.get<std::string>("nf", no_fetch()), nullptr) << "the cached not-found is lost";
  const auto m = target.metrics();
  EXPECT_EQ(m.fetches, 0u);
  EXPECT_EQ(m.layers[0].hits, 4u);
  EXPECT_EQ(m.negative_hits, 1u);
}

TEST_F(SnapshotTest, UntypedImportIntoAMemoryOnlyStackIsInvalidArgument) {
  ASSERT_TRUE(filled_memory_stack()->export_snapshot(path_).error.ok());
  auto l1 = memory();
  cache_stack target({l1}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot(path_);
  EXPECT_EQ(in.error.code(), errc::invalid_argument) << in.error.message();
  EXPECT_EQ(in.stats.entries, 0u);
  EXPECT_EQ(l1->size(), 0u);
  EXPECT_FALSE(target.has("a"));
}

TEST_F(SnapshotTest, ImportSkipsAndCountsEntriesThatExpiredSinceTheExport) {
  {
    auto source = memory_stack();
    ASSERT_TRUE(source->set<std::string>("short", "s", {.ttl = 10s}).ok());
    ASSERT_TRUE(source->set<std::string>("long", "l", {.ttl = 60s}).ok());
    ASSERT_TRUE(source->export_snapshot(path_).error.ok());
  }
  clock_->advance(10s);  // "short" expires exactly now
  auto l1 = memory();
  cache_stack target({l1}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot<std::string>(path_);
  ASSERT_TRUE(in.error.ok()) << in.error.message();
  EXPECT_EQ(in.stats.entries, 1u);
  EXPECT_EQ(in.stats.skipped_expired, 1u);
  EXPECT_EQ(l1->size(), 1u);
  EXPECT_FALSE(target.has("short"));
  EXPECT_EQ(*target.get<std::string>("long", no_fetch()), "l");
}

TEST_F(SnapshotTest, TypedImportSkipsAndCountsEntriesOfAnotherType) {
  {
    auto source = memory_stack();
    ASSERT_TRUE(source->set<std::string>("s1", "x").ok());
    ASSERT_TRUE(source->set<std::string>("s2", "y").ok());
    ASSERT_TRUE(source->set<int>("i1", 1).ok());
    ASSERT_TRUE(source->set<int>("i2", 2).ok());
    ASSERT_TRUE(source->set<int>("i3", 3).ok());
    ASSERT_TRUE(source->export_snapshot(path_).error.ok());
  }
  auto l1 = memory();
  cache_stack target({l1}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot<std::string>(path_);
  ASSERT_TRUE(in.error.ok()) << in.error.message();
  EXPECT_EQ(in.stats.entries, 2u);
  EXPECT_EQ(in.stats.skipped_type, 3u);
  EXPECT_EQ(l1->size(), 2u);
  EXPECT_FALSE(target.has("i1"));
  EXPECT_EQ(*target.get<std::string>("s1", no_fetch()), "x");
}

// ---- damaged files ----------------------------------------------------------------------------

TEST_F(SnapshotTest, FlippedByteAnywhereMakesImportReturnCorruptionAndStoreNothing) {
  ASSERT_TRUE(filled_memory_stack()->export_snapshot(path_).error.ok());
  const std::string good = read_file(path_);
  ASSERT_GT(good.size(), 40u);
  const fs::path damaged_path = snaps_ / "damaged.lcsnap";
  // Magic, version, created, first key length, a key, an envelope, the count, the checksum.
  for (const std::size_t at :
       {std::size_t{0}, std::size_t{6}, std::size_t{10}, std::size_t{16}, std::size_t{20},
        good.size() / 2, good.size() - 13, good.size() - 10, good.size() - 1}) {
    SCOPED_TRACE("byte " + std::to_string(at) + " of " + std::to_string(good.size()));
    std::string damaged = good;
    damaged[at] = static_cast<char>(damaged[at] ^ 0x01);
    write_file(damaged_path, damaged);
    auto l1 = memory();
    cache_stack target({l1}, {.clock = clock_});
    const snapshot_result in = target.import_snapshot<std::string>(damaged_path);
    EXPECT_EQ(in.error.code(), errc::corruption) << in.error.message();
    EXPECT_EQ(in.stats.entries, 0u);
    EXPECT_EQ(l1->size(), 0u) << "a damaged snapshot was partly applied";
  }
}

TEST_F(SnapshotTest, TruncatedFileIsCorruption) {
  ASSERT_TRUE(filled_memory_stack()->export_snapshot(path_).error.ok());
  const std::string good = read_file(path_);
  const fs::path cut_path = snaps_ / "cut.lcsnap";
  for (const std::size_t len : {std::size_t{0}, std::size_t{10}, std::size_t{27}, good.size() / 2,
                                good.size() - 12, good.size() - 1}) {
    SCOPED_TRACE("first " + std::to_string(len) + " of " + std::to_string(good.size()) + " bytes");
    write_file(cut_path, good.substr(0, len));
    auto l1 = memory();
    cache_stack target({l1}, {.clock = clock_});
    const snapshot_result in = target.import_snapshot<std::string>(cut_path);
    EXPECT_EQ(in.error.code(), errc::corruption) << in.error.message();
    EXPECT_EQ(in.stats.entries, 0u);
    EXPECT_EQ(l1->size(), 0u);
  }
}

// ---- the file ---------------------------------------------------------------------------------

TEST_F(SnapshotTest, ExportOverMaxBytesIsResourceExhaustedAndLeavesNoFile) {
  auto cache = memory_stack();
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(cache->set<std::string>("k" + std::to_string(i), std::string(1024, 'x')).ok());
  }
  snapshot_result out = cache->export_snapshot(path_, {.max_bytes = 4096});
  EXPECT_EQ(out.error.code(), errc::resource_exhausted) << out.error.message();
  EXPECT_EQ(out.stats.entries, 0u);
  EXPECT_FALSE(fs::exists(path_));
  EXPECT_TRUE(files_in(snaps_).empty()) << "a temporary file was left behind";

  // Over an existing snapshot: the old one stays as it was.
  ASSERT_TRUE(cache->export_snapshot(path_).error.ok());
  const std::string before = read_file(path_);
  out = cache->export_snapshot(path_, {.max_bytes = 4096});
  EXPECT_EQ(out.error.code(), errc::resource_exhausted);
  EXPECT_TRUE(read_file(path_) == before) << "a refused export changed the existing snapshot";
  EXPECT_EQ(files_in(snaps_), std::vector<std::string>{"warm.lcsnap"});

  // The bound applies to reading too: nothing is read or applied.
  auto l1 = memory();
  cache_stack target({l1}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot<std::string>(path_, {.max_bytes = 4096});
  EXPECT_EQ(in.error.code(), errc::resource_exhausted);
  EXPECT_EQ(l1->size(), 0u);
}

TEST_F(SnapshotTest, SnapshotFileIsOwnerOnlyWhateverTheUmask) {
  auto cache = filled_memory_stack();
  const mode_t old_umask = ::umask(0);
  const snapshot_result out = cache->export_snapshot(path_);
  ::umask(old_umask);
  ASSERT_TRUE(out.error.ok()) << out.error.message();
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(SnapshotTest, ExportOverAnExistingSnapshotReplacesItWhole) {
  auto cache = filled_memory_stack();
  ASSERT_TRUE(cache->export_snapshot(path_).error.ok());
  const std::string old_bytes = read_file(path_);
  // A reader that opened the old snapshot before the new export keeps reading the old one whole:
  // the new file is renamed over it, never rewritten in place.
  std::ifstream reader(path_, std::ios::binary);
  ASSERT_TRUE(reader.good());

  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(cache->set<std::string>("more" + std::to_string(i), "m").ok());
  }
  const snapshot_result out = cache->export_snapshot(path_);
  ASSERT_TRUE(out.error.ok()) << out.error.message();
  EXPECT_EQ(out.stats.entries, 24u);

  const std::string old_seen(std::istreambuf_iterator<char>(reader), {});
  EXPECT_TRUE(old_seen == old_bytes) << "the old snapshot was modified in place";
  EXPECT_EQ(files_in(snaps_), std::vector<std::string>{"warm.lcsnap"})
      << "a temporary file was left behind";
  EXPECT_EQ(fs::file_size(path_), out.stats.bytes);
  EXPECT_EQ(snapshot_keys(path_).size(), 24u);

  auto l1 = memory();
  cache_stack target({l1}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot<std::string>(path_);
  ASSERT_TRUE(in.error.ok()) << in.error.message();
  EXPECT_EQ(in.stats.entries, 24u);
}

// ---- with a disk layer ------------------------------------------------------------------------

#if LAYERCACHE_TEST_WITH_DISK

class DiskSnapshotTest : public SnapshotTest {
 protected:
  std::shared_ptr<disk_layer> disk(const std::string& name,
                                   std::shared_ptr<const clock> c = nullptr) {
    return disk_layer::create({.directory = (dir_.path() / name).string(),
                               .max_bytes = 64ull << 20,
                               .block_cache_bytes = 8ull << 20,
                               .clock = c ? std::move(c) : clock_});
  }

  static std::vector<std::string> keys_on(disk_layer& d) {
    std::vector<std::string> keys;
    EXPECT_TRUE(d.scan([&](std::string_view key, std::string_view) {
                   keys.emplace_back(key);
                   return true;
                 }).ok());
    std::sort(keys.begin(), keys.end());
    return keys;
  }
};

TEST_F(DiskSnapshotTest, UntypedImportFillsTheDiskAndKeepsTheRemainingLifetime) {
  {
    cache_stack source({memory(), disk("source")}, {.clock = clock_});
    ASSERT_TRUE(source.set<std::string>("k", "v", {.ttl = 60s}).ok());
    ASSERT_TRUE(source.set<int>("n", 7, {.ttl = 60s}).ok());
    const snapshot_result out = source.export_snapshot(path_);
    ASSERT_TRUE(out.error.ok()) << out.error.message();
    EXPECT_EQ(out.stats.entries, 2u) << "each key once, though both L1 and disk hold it";
  }
  clock_->advance(5s);  // imported 5 s after the export

  auto l1 = memory();
  auto target_disk = disk("target");
  cache_stack target({l1, target_disk}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot(path_);
  ASSERT_TRUE(in.error.ok()) << in.error.message();
  EXPECT_EQ(in.stats.entries, 2u);
  EXPECT_EQ(l1->size(), 0u) << "an untyped import wrote L1";
  EXPECT_EQ(keys_on(*target_disk), (std::vector<std::string>{"k", "n"}));

  EXPECT_EQ(*target.get<std::string>("k", no_fetch()), "v");
  EXPECT_EQ(*target.get<int>("n", [] { return -1; }), 7);
  auto m = target.metrics();
  EXPECT_EQ(m.layers[1].hits, 2u);
  EXPECT_EQ(m.fetches, 0u);

  // It expires when it would have in the exporting process: 60 s after the set, not after import.
  clock_->advance(55s - 1ms);
  EXPECT_TRUE(target.has("k"));
  clock_->advance(1ms);
  EXPECT_FALSE(target.has("k"));
  EXPECT_EQ(target.get_if_present<std::string>("k"), nullptr);
}

TEST_F(DiskSnapshotTest, ExportHoldsL1AndDiskEntriesOnceEachAndL1Wins) {
  auto d = disk("db");
  {
    // Left on disk by an earlier run: this stack's L1 never sees "disk-only".
    cache_stack earlier({d}, {.clock = clock_, .writes = write_policy::strict});
    ASSERT_TRUE(earlier.set<std::string>("disk-only", "d").ok());
    ASSERT_TRUE(earlier.set<std::string>("shared", "old").ok());
  }
  const std::optional<std::string> old_envelope = d->get("shared").bytes;
  ASSERT_TRUE(old_envelope.has_value());

  cache_stack cache({memory(), d}, {.clock = clock_});
  ASSERT_TRUE(cache.set<std::string>("shared", "new").ok());
  ASSERT_TRUE(cache.set<std::string>("both", "b").ok());
  ASSERT_TRUE(cache.flush());
  // The disk falls behind L1 for "shared" (as after a lost write): L1 must win in the snapshot.
  ASSERT_TRUE(d->set("shared", *old_envelope, clock_->now_ms() + 60'000).ok());

  const snapshot_result out = cache.export_snapshot(path_);
  ASSERT_TRUE(out.error.ok()) << out.error.message();
  EXPECT_EQ(out.stats.entries, 3u);
  std::vector<std::string> keys = snapshot_keys(path_);
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"both", "disk-only", "shared"}));

  cache_stack target({memory()}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot<std::string>(path_);
  ASSERT_TRUE(in.error.ok()) << in.error.message();
  EXPECT_EQ(*target.get<std::string>("shared", no_fetch()), "new");
  EXPECT_EQ(*target.get<std::string>("disk-only", no_fetch()), "d");
  EXPECT_EQ(*target.get<std::string>("both", no_fetch()), "b");
}

TEST_F(DiskSnapshotTest, ExportKeepsTheFullLifetimeWhenL1AndDiskAgree) {
  // L1 caps lifetimes at 30 s; the disk keeps the entry's own 10 min. The snapshot must carry the
  // 10 min, or a restart would lose entries the disk would have served.
  cache_stack cache({memory_layer::create({.ttl = 30s, .clock = clock_}), disk("db")},
                    {.clock = clock_});
  ASSERT_TRUE(cache.set<std::string>("k", "v", {.ttl = 10min}).ok());
  ASSERT_TRUE(cache.flush());
  const snapshot_result out = cache.export_snapshot(path_);
  ASSERT_TRUE(out.error.ok()) << out.error.message();
  ASSERT_EQ(out.stats.entries, 1u);

  clock_->advance(5min);
  cache_stack target({disk("target")}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot(path_);
  ASSERT_TRUE(in.error.ok()) << in.error.message();
  EXPECT_TRUE(target.has("k"));
  clock_->advance(5min - 1ms);
  EXPECT_TRUE(target.has("k"));
  clock_->advance(1ms);
  EXPECT_FALSE(target.has("k"));
}

TEST_F(DiskSnapshotTest, ExportSkipsAndCountsEntriesTheDiskStillHoldsPastTheirExpiry) {
  // The disk keeps time with its own clock, which lags the stack's: it still holds entries the
  // stack considers expired.
  auto disk_clock = std::make_shared<fake_clock>(clock_->now_ms());
  cache_stack cache({disk("db", disk_clock)}, {.clock = clock_, .writes = write_policy::strict});
  ASSERT_TRUE(cache.set<std::string>("short", "s", {.ttl = 10s}).ok());
  ASSERT_TRUE(cache.set<std::string>("long", "l", {.ttl = 60s}).ok());
  clock_->advance(30s);

  const snapshot_result out = cache.export_snapshot(path_);
  ASSERT_TRUE(out.error.ok()) << out.error.message();
  EXPECT_EQ(out.stats.entries, 1u);
  EXPECT_EQ(out.stats.skipped_expired, 1u);
  EXPECT_EQ(snapshot_keys(path_), std::vector<std::string>{"long"});
}

TEST_F(DiskSnapshotTest, DamagedSnapshotStoresNothingOnDisk) {
  ASSERT_TRUE(filled_memory_stack()->export_snapshot(path_).error.ok());
  std::string damaged = read_file(path_);
  damaged[damaged.size() / 2] = static_cast<char>(damaged[damaged.size() / 2] ^ 0x40);
  write_file(path_, damaged);

  auto l1 = memory();
  auto d = disk("db");
  cache_stack target({l1, d}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot(path_);
  EXPECT_EQ(in.error.code(), errc::corruption) << in.error.message();
  EXPECT_EQ(in.stats.entries, 0u);
  EXPECT_TRUE(keys_on(*d).empty());
  EXPECT_EQ(l1->size(), 0u);
}

TEST_F(DiskSnapshotTest, TypedImportStoresOtherTypesOnDiskOnlyAndCountsThem) {
  {
    auto source = memory_stack();
    ASSERT_TRUE(source->set<std::string>("s", "x").ok());
    ASSERT_TRUE(source->set<int>("i1", 1).ok());
    ASSERT_TRUE(source->set<int>("i2", 2).ok());
    ASSERT_TRUE(source->export_snapshot(path_).error.ok());
  }
  auto l1 = memory();
  auto d = disk("db");
  cache_stack target({l1, d}, {.clock = clock_});
  const snapshot_result in = target.import_snapshot<std::string>(path_);
  ASSERT_TRUE(in.error.ok()) << in.error.message();
  EXPECT_EQ(in.stats.entries, 3u) << "every entry reached the disk";
  EXPECT_EQ(in.stats.skipped_type, 2u);
  EXPECT_EQ(l1->size(), 1u) << "only the strings belong in L1";
  EXPECT_EQ(keys_on(*d), (std::vector<std::string>{"i1", "i2", "s"}));
  EXPECT_EQ(*target.get<int>("i2", [] { return -1; }), 2);
  EXPECT_EQ(target.metrics().layers[1].hits, 1u);
}

#endif  // LAYERCACHE_TEST_WITH_DISK

}  // namespace
}  // namespace layercache
