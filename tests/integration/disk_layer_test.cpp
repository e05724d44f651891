// Integration tests of disk_layer on a real RocksDB store in a temporary directory.
//
// Cross-process behaviour (LOCK held by another process, persistence, SIGKILL mid-write, disk full,
// read-only disk) uses the helper executable layercache_disk_child (tests/disk_helper/), built
// beside this test binary. Disk-full and read-only tests need a private mount namespace (root or
// CAP_SYS_ADMIN); they skip elsewhere.

#include "layercache/disk_layer.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "disk/disk_layer_testing.hpp"
#include "disk_helper/verified_value.hpp"
#include "layercache/error.hpp"
#include "support/child_process.hpp"
#include "support/fake_clock.hpp"
#include "support/temp_dir.hpp"

namespace layercache {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace vv = layercache::test::disk;
using test::child_process;
using test::fake_clock;
using test::temp_dir;

constexpr unix_ms start_ms = 1'700'000'000'000;

disk_layer_options small_options(const fs::path& dir) {
  return {.directory = dir.string(), .max_bytes = 64ull << 20, .block_cache_bytes = 8ull << 20};
}

std::string child_program() { return test::self_exe_dir() + "/layercache_disk_child"; }

// Waits (bounded) until the child's output contains `needle`.
bool wait_for_output(const child_process& p, const std::string& needle,
                     std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (p.output().find(needle) != std::string::npos) return true;
    if (!p.running()) return p.output().find(needle) != std::string::npos;
    std::this_thread::sleep_for(2ms);
  }
  return false;
}

// "name=value" lines of a helper's output.
std::map<std::string, std::string> facts(const std::string& output) {
  std::map<std::string, std::string> out;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

// Sum of the sizes of the regular files in `dir` (RocksDB keeps no subdirectories). Files deleted
// by RocksDB's background threads during the scan are skipped.
std::uint64_t directory_bytes(const fs::path& dir) {
  std::uint64_t total = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code size_ec;
    const std::uintmax_t size = it->file_size(size_ec);
    if (!size_ec) total += size;
  }
  return total;
}

std::string random_bytes(std::mt19937_64& rng, std::size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

void expect_hit(disk_layer& layer, std::string_view key, std::string_view expected) {
  const byte_read r = layer.get(key);
  EXPECT_TRUE(r.error.ok()) << r.error.message();
  ASSERT_TRUE(r.bytes.has_value()) << "miss for key of " << key.size() << " bytes";
  EXPECT_EQ(*r.bytes, expected);
}

void expect_miss(disk_layer& layer, std::string_view key) {
  const byte_read r = layer.get(key);
  EXPECT_TRUE(r.error.ok()) << r.error.message();
  EXPECT_FALSE(r.bytes.has_value());
}

// ---- basic operations -----------------------------------------------------------------------

TEST(DiskLayerTest, SetThenGetReturnsTheBytes) {
  temp_dir dir("disk-layer");
  auto layer = disk_layer::create(small_options(dir.path() / "db"));
  EXPECT_EQ(layer->info().name, "disk");
  EXPECT_EQ(layer->info().kind, layer_kind::bytes);
  EXPECT_FALSE(layer->info().remote);

  expect_miss(*layer, "k");
  ASSERT_TRUE(layer->set("k", "v1", 0).ok());
  expect_hit(*layer, "k", "v1");
  ASSERT_TRUE(layer->set("k", "v2", 0).ok());
  expect_hit(*layer, "k", "v2");
  ASSERT_TRUE(layer->set("empty", "", 0).ok());
  expect_hit(*layer, "empty", "");
  ASSERT_TRUE(layer->del("k").ok());
  expect_miss(*layer, "k");
  EXPECT_TRUE(layer->del("never-written").ok());
}

TEST(DiskLayerTest, ReopenServesWhatWasWritten) {
  temp_dir dir("disk-layer");
  const fs::path db = dir.path() / "db";
  {
    auto layer = disk_layer::create(small_options(db));
    ASSERT_TRUE(layer->set("flushed", "in a table file", 0).ok());
    ASSERT_TRUE(layer->flush().ok());
    ASSERT_TRUE(layer->set("unflushed", "only in the WAL", 0).ok());
    ASSERT_TRUE(layer->set("deleted", "x", 0).ok());
    ASSERT_TRUE(layer->del("deleted").ok());
  }
  auto layer = disk_layer::create(small_options(db));
  expect_hit(*layer, "flushed", "in a table file");
  expect_hit(*layer, "unflushed", "only in the WAL");
  expect_miss(*layer, "deleted");
}

TEST(DiskLayerTest, GetManyReturnsOneResultPerKeyInOrder) {
  temp_dir dir("disk-layer");
  auto layer = disk_layer::create(small_options(dir.path() / "db"));
  ASSERT_TRUE(layer->set("a", "1", 0).ok());
  ASSERT_TRUE(layer->set("c", "3", 0).ok());
  ASSERT_TRUE(layer->flush().ok());
  ASSERT_TRUE(layer->set("b", "2", 0).ok());  // memtable and table file mixed

  const std::vector<std::string> keys = {"c", "missing", "a", "b", "a"};
  const std::vector<byte_read> got = layer->get_many(keys);
  ASSERT_EQ(got.size(), keys.size());
  const std::vector<std::optional<std::string>> want = {"3", std::nullopt, "1", "2", "1"};
  for (std::size_t i = 0; i < keys.size(); ++i) {
    EXPECT_TRUE(got[i].error.ok()) << got[i].error.message();
    EXPECT_EQ(got[i].bytes, want[i]) << "key " << keys[i];
  }
  EXPECT_TRUE(layer->get_many({}).empty());
}

TEST(DiskLayerTest, SetManyWritesEveryEntryAndDelManyRemovesThem) {
  temp_dir dir("disk-layer");
  fake_clock clock(start_ms);
  auto opts = small_options(dir.path() / "db");
  opts.clock = std::shared_ptr<const layercache::clock>(&clock, [](const layercache::clock*) {});
  auto layer = disk_layer::create(opts);

  std::vector<std::string> keys;
  std::vector<std::string> values;
  for (int i = 0; i < 100; ++i) {
    keys.push_back("batch/" + std::to_string(i));
    values.push_back("value-" + std::to_string(i));
  }
  std::vector<byte_write> writes;
  for (std::size_t i = 0; i < keys.size(); ++i) writes.push_back({keys[i], values[i], 0});
  writes.push_back({"short-lived", "x", start_ms + 10});
  writes.push_back({"batch/0", "last write in the batch wins", 0});
  ASSERT_TRUE(layer->set_many(writes).ok());

  expect_hit(*layer, "batch/0", "last write in the batch wins");
  for (std::size_t i = 1; i < keys.size(); ++i) expect_hit(*layer, keys[i], values[i]);
  clock.advance(10ms);
  expect_miss(*layer, "short-lived");

  const std::vector<std::string> doomed(keys.begin(), keys.begin() + 50);
  ASSERT_TRUE(layer->del_many(doomed).ok());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i < 50) {
      expect_miss(*layer, keys[i]);
    } else {
      expect_hit(*layer, keys[i], values[i]);
    }
  }
  EXPECT_TRUE(layer->set_many({}).ok());
  EXPECT_TRUE(layer->del_many({}).ok());
}

TEST(DiskLayerTest, BinaryKeysAreDistinctAndExact) {
  temp_dir dir("disk-layer");
  auto layer = disk_layer::create(small_options(dir.path() / "db"));
  const std::vector<std::string> keys = {
      std::string("a", 1),
      std::string("a\0", 2),
      std::string("a\0\0", 3),
      std::string("\0", 1),
      std::string("\xff\xff\xff", 3),
      "path/with/slashes/../..",
      std::string(1024, 'k'),
      std::string(std::size_t{64} * 1024, '\xfe'),
  };
  for (std::size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE(layer->set(keys[i], "v" + std::to_string(i), 0).ok());
  }
  ASSERT_TRUE(layer->flush().ok());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    expect_hit(*layer, keys[i], "v" + std::to_string(i));
  }
  const std::string value_with_nuls("\0\xff\0payload", 10);
  ASSERT_TRUE(layer->set("nul-value", value_with_nuls, 0).ok());
  expect_hit(*layer, "nul-value", value_with_nuls);
}

// ---- expiry ---------------------------------------------------------------------------------

struct fake_clock_fixture : ::testing::Test {
  temp_dir dir{"disk-layer"};
  std::shared_ptr<fake_clock> clock = std::make_shared<fake_clock>(start_ms);

  std::shared_ptr<disk_layer> open(std::chrono::milliseconds ttl = 0ms) {
    auto opts = small_options(dir.path() / "db");
    opts.clock = clock;
    opts.ttl = ttl;
    return disk_layer::create(opts);
  }
};

using DiskLayerExpiryTest = fake_clock_fixture;

TEST_F(DiskLayerExpiryTest, EntryIsServedUntilItsExpiryAndThenDeleted) {
  auto layer = open();
  ASSERT_TRUE(layer->set("k", "v", start_ms + 1000).ok());
  clock->advance(999ms);
  expect_hit(*layer, "k", "v");
  clock->advance(1ms);
  expect_miss(*layer, "k");
  // The miss deleted the entry: even with the clock turned back it is gone.
  clock->set(start_ms);
  expect_miss(*layer, "k");
}

TEST_F(DiskLayerExpiryTest, ExpiryIsCheckedByGetMany) {
  auto layer = open();
  ASSERT_TRUE(layer->set("short", "s", start_ms + 100).ok());
  ASSERT_TRUE(layer->set("long", "l", start_ms + 10'000).ok());
  ASSERT_TRUE(layer->set("forever", "f", 0).ok());
  clock->advance(5s);
  const std::vector<std::string> keys = {"short", "long", "forever"};
  const auto got = layer->get_many(keys);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_FALSE(got[0].bytes.has_value());
  EXPECT_EQ(got[1].bytes, std::optional<std::string>("l"));
  EXPECT_EQ(got[2].bytes, std::optional<std::string>("f"));
}

TEST_F(DiskLayerExpiryTest, ExpirySurvivesReopen) {
  {
    auto layer = open();
    ASSERT_TRUE(layer->set("k", "v", start_ms + 1000).ok());
  }
  auto layer = open();
  expect_hit(*layer, "k", "v");
  clock->advance(1s);
  expect_miss(*layer, "k");
}

TEST_F(DiskLayerExpiryTest, TtlCapsEveryEntryLifetime) {
  auto layer = open(10s);
  EXPECT_EQ(layer->info().max_ttl, 10s);
  ASSERT_TRUE(layer->set("no-expiry", "a", 0).ok());
  ASSERT_TRUE(layer->set("long-expiry", "b", start_ms + 3'600'000).ok());
  ASSERT_TRUE(layer->set("short-expiry", "c", start_ms + 5'000).ok());
  clock->advance(5s);
  expect_miss(*layer, "short-expiry");  // its own expiry is below the cap
  expect_hit(*layer, "no-expiry", "a");
  expect_hit(*layer, "long-expiry", "b");
  clock->advance(5s);
  expect_miss(*layer, "no-expiry");
  expect_miss(*layer, "long-expiry");
}

TEST_F(DiskLayerExpiryTest, WritingAnAlreadyExpiredValueRemovesTheKey) {
  auto layer = open();
  ASSERT_TRUE(layer->set("k", "old", 0).ok());
  ASSERT_TRUE(layer->set("k", "new but expired", start_ms - 1).ok());
  expect_miss(*layer, "k");
  ASSERT_TRUE(layer->set("k", "old", 0).ok());
  ASSERT_TRUE(layer->set("k", "expires now", start_ms).ok());
  expect_miss(*layer, "k");
}

// A reader that finds an expired entry deletes it; a set() of a fresh value that lands between the
// reader's lookup and its deletion must survive (the deletion re-checks under the key's stripe
// lock). The hook makes the interleaving deterministic.
TEST_F(DiskLayerExpiryTest, LazyDeletionNeverRemovesAConcurrentFreshWrite) {
  auto layer = open();
  std::string expired_raw(8, '\0');
  expired_raw[0] = 1;  // expiry 1 ms after the epoch: long past
  expired_raw += "stale";
  ASSERT_TRUE(detail::disk_layer_testing::put_raw(*layer, "contended", expired_raw).ok());

  std::promise<void> reader_found_it;
  std::promise<void> fresh_written;
  detail::disk_layer_testing::on_lazy_delete(*layer, [&] {
    reader_found_it.set_value();
    fresh_written.get_future().wait_for(10s);
  });
  auto reader = std::async(std::launch::async, [&] { return layer->get("contended"); });
  ASSERT_EQ(reader_found_it.get_future().wait_for(10s), std::future_status::ready);
  ASSERT_TRUE(layer->set("contended", "fresh", 0).ok());
  fresh_written.set_value();
  EXPECT_FALSE(reader.get().bytes.has_value());  // the reader saw the expired entry: a miss
  detail::disk_layer_testing::on_lazy_delete(*layer, {});
  expect_hit(*layer, "contended", "fresh");
}

// ---- scan and metrics -----------------------------------------------------------------------

TEST_F(DiskLayerExpiryTest, ScanVisitsEveryLiveEntryOnceAcrossChunks) {
  auto layer = open();
  std::map<std::string, std::string> want;
  for (int i = 0; i < 3000; ++i) {  // several chunks of 1024
    std::string key = "scan/" + std::to_string(i);
    if (i % 100 == 0) key += std::string("\0\xff", 2);
    const std::string value = "value-" + std::to_string(i);
    ASSERT_TRUE(layer->set(key, value, 0).ok());
    want[key] = value;
    if (i == 1500) {
      ASSERT_TRUE(layer->flush().ok());  // some in a table file, the rest in the memtable
    }
  }
  ASSERT_TRUE(layer->set("scan/expiring", "x", start_ms + 10).ok());
  ASSERT_TRUE(detail::disk_layer_testing::put_raw(*layer, "scan/damaged", "abc").ok());
  clock->advance(10ms);

  std::map<std::string, std::string> got;
  int visits = 0;
  const status s = layer->scan([&](std::string_view key, std::string_view bytes) {
    ++visits;
    got[std::string(key)] = std::string(bytes);
    return true;
  });
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(visits, 3000);
  EXPECT_EQ(got, want);

  int stopped_after = 0;
  ASSERT_TRUE(
      layer->scan([&](std::string_view, std::string_view) { return ++stopped_after < 5; }).ok());
  EXPECT_EQ(stopped_after, 5);
}

TEST_F(DiskLayerExpiryTest, MetricsReportBytesAndEntriesThisLayerExpired) {
  auto layer = open(1s);
  ASSERT_TRUE(layer->set("a", std::string(10'000, 'a'), 0).ok());
  ASSERT_TRUE(layer->set("b", "b", 0).ok());
  clock->advance(1s);
  expect_miss(*layer, "a");
  layer_metrics m;
  m.expirations = 2;  // what the stack counted itself is kept
  layer->contribute_metrics(m);
  EXPECT_EQ(m.expirations, 3u);
  EXPECT_GE(m.bytes, 10'000u);
  EXPECT_EQ(m.bytes, layer->approximate_bytes());
}

// ---- size bound -----------------------------------------------------------------------------

TEST(DiskLayerTest, SizeStaysBoundedWhenWritingThreeTimesMaxBytes) {
  temp_dir dir("disk-layer");
  constexpr std::uint64_t max_bytes = 4ull << 20;
  auto layer = disk_layer::create({.directory = (dir.path() / "db").string(),
                                   .max_bytes = max_bytes,
                                   .block_cache_bytes = 1ull << 20});
  std::mt19937_64 rng(42);
  constexpr int value_bytes = 4096;
  constexpr int count = static_cast<int>(3 * max_bytes / value_bytes);
  std::uint64_t peak = 0;
  for (int i = 0; i < count; ++i) {
    ASSERT_TRUE(layer->set("size/" + std::to_string(i), random_bytes(rng, value_bytes), 0).ok());
    if (i % 64 == 0) peak = std::max(peak, layer->approximate_bytes());
  }
  ASSERT_TRUE(layer->flush().ok());
  const std::uint64_t settled = layer->approximate_bytes();
  RecordProperty("peak_bytes", std::to_string(peak));
  RecordProperty("settled_bytes", std::to_string(settled));
  EXPECT_LE(settled, max_bytes);
  EXPECT_GE(settled, max_bytes / 2) << "the bound evicted far more than needed";
  // While writing, the size may pass the bound for a moment: eviction is a background job and lags
  // a few flushes behind when it waits for CPU (measured peaks for this 4 MiB bound: 3.8-4.1 MB
  // alone, up to 7.3 MB with three such writers on two cores). It does not grow with the amount
  // written (12 MiB here; an unenforced bound would end near that).
  EXPECT_LE(peak, 2 * max_bytes);

  // On disk: the same, plus metadata and the info log (obsolete files are deleted in the
  // background, so give it a moment).
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  std::uint64_t on_disk = directory_bytes(dir.path() / "db");
  while (on_disk > max_bytes + (512u << 10) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
    on_disk = directory_bytes(dir.path() / "db");
  }
  EXPECT_LE(on_disk, max_bytes + (512u << 10));

  // FIFO: the oldest entries were evicted, the newest survive.
  expect_miss(*layer, "size/0");
  const byte_read newest = layer->get("size/" + std::to_string(count - 1));
  EXPECT_TRUE(newest.bytes.has_value());
}

TEST(DiskLayerTest, EntryLargerThanASixteenthOfMaxBytesIsRefused) {
  temp_dir dir("disk-layer");
  auto layer =
      disk_layer::create({.directory = (dir.path() / "db").string(), .max_bytes = 1ull << 20});
  const status s = layer->set("big", std::string(1u << 16, 'x'), 0);
  EXPECT_EQ(s.code(), errc::resource_exhausted) << s.message();
  ASSERT_EQ(s.failures().size(), 1u);
  EXPECT_EQ(s.failures()[0].layer, "disk");
  const std::vector<byte_write> batch = {{"small", "x", 0}, {"big", std::string(1u << 16, 'x'), 0}};
  EXPECT_EQ(layer->set_many(batch).code(), errc::resource_exhausted);
  expect_miss(*layer, "small");  // the batch is all or nothing
  EXPECT_TRUE(layer->set("fits", std::string(60'000, 'x'), 0).ok());
}

// ---- clear ----------------------------------------------------------------------------------

TEST(DiskLayerTest, ClearRemovesEveryEntryAndFreesTheSpace) {
  temp_dir dir("disk-layer");
  const fs::path db = dir.path() / "db";
  std::mt19937_64 rng(7);
  {
    auto layer = disk_layer::create(small_options(db));
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE(layer->set("c/" + std::to_string(i), random_bytes(rng, 4096), 0).ok());
    }
    ASSERT_TRUE(layer->flush().ok());
    ASSERT_TRUE(layer->set("c/unflushed", "x", 0).ok());
    ASSERT_GT(layer->approximate_bytes(), 800'000u);

    ASSERT_TRUE(layer->clear().ok());
    EXPECT_LT(layer->approximate_bytes(), 64'000u);
    expect_miss(*layer, "c/0");
    expect_miss(*layer, "c/199");
    expect_miss(*layer, "c/unflushed");
    ASSERT_TRUE(layer->set("after-clear", "y", 0).ok());
    expect_hit(*layer, "after-clear", "y");
  }
  auto layer = disk_layer::create(small_options(db));
  expect_miss(*layer, "c/0");
  expect_miss(*layer, "c/unflushed");
  expect_hit(*layer, "after-clear", "y");
}

// ---- corruption -----------------------------------------------------------------------------

TEST(DiskLayerTest, StoredValueShorterThanItsPrefixIsCorruptionAndIsDeleted) {
  temp_dir dir("disk-layer");
  auto layer = disk_layer::create(small_options(dir.path() / "db"));
  ASSERT_TRUE(detail::disk_layer_testing::put_raw(*layer, "torn", "abc").ok());
  const byte_read r = layer->get("torn");
  EXPECT_FALSE(r.bytes.has_value());
  EXPECT_EQ(r.error.code(), errc::corruption) << r.error.message();
  ASSERT_EQ(r.error.failures().size(), 1u);
  EXPECT_EQ(r.error.failures()[0].layer, "disk");
  // Deleted: the next read is a clean miss.
  expect_miss(*layer, "torn");

  ASSERT_TRUE(detail::disk_layer_testing::put_raw(*layer, "torn2", "").ok());
  const std::vector<std::string> keys = {"torn2"};
  const auto many = layer->get_many(keys);
  EXPECT_EQ(many.at(0).error.code(), errc::corruption);
  expect_miss(*layer, "torn2");
}

TEST(DiskLayerTest, DamagedTableFileIsReportedAsCorruptionNotServed) {
  temp_dir dir("disk-layer");
  const fs::path db = dir.path() / "db";
  std::mt19937_64 rng(3);
  const std::string value = random_bytes(rng, 3000);  // incompressible: stored verbatim
  {
    auto layer =
        disk_layer::create({.directory = db.string(), .compression = disk_compression::none});
    ASSERT_TRUE(layer->set("victim", value, 0).ok());
    ASSERT_TRUE(layer->flush().ok());
  }
  // Flip bytes inside the first data block of the only table file.
  std::vector<fs::path> tables;
  for (const auto& e : fs::directory_iterator(db)) {
    if (e.path().extension() == ".sst") tables.push_back(e.path());
  }
  ASSERT_EQ(tables.size(), 1u);
  {
    std::fstream f(tables[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    const std::string garbage(16, '\x5a');
    f.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
    ASSERT_TRUE(f.good());
  }
  auto layer =
      disk_layer::create({.directory = db.string(), .compression = disk_compression::none});
  const byte_read r = layer->get("victim");
  EXPECT_FALSE(r.bytes.has_value());
  EXPECT_EQ(r.error.code(), errc::corruption) << r.error.message();
  // The key is now hidden behind a tombstone: a clean miss, and writable again.
  expect_miss(*layer, "victim");
  ASSERT_TRUE(layer->set("victim", "fresh", 0).ok());
  expect_hit(*layer, "victim", "fresh");
}

// ---- directory, permissions, options --------------------------------------------------------

TEST(DiskLayerTest, DirectoryAndParentsAreCreatedOwnerOnlyAndFilesAreOwnerOnly) {
  temp_dir dir("disk-layer");
  const fs::path db = dir.path() / "a" / "b" / "db";
  // A permissive umask must not leak into the store's permissions.
  const mode_t old_umask = ::umask(0);
  {
    auto layer = disk_layer::create(small_options(db));
    ASSERT_TRUE(layer->set("k", "v", 0).ok());
    ASSERT_TRUE(layer->flush().ok());
    ASSERT_TRUE(layer->set("k2", "v", 0).ok());
  }
  ::umask(old_umask);
  for (const fs::path& p : {dir.path() / "a", dir.path() / "a" / "b", db}) {
    struct stat st {};
    ASSERT_EQ(::stat(p.c_str(), &st), 0) << p;
    EXPECT_EQ(st.st_mode & 07777, 0700u) << p;
  }
  int files = 0;
  for (const auto& e : fs::directory_iterator(db)) {
    struct stat st {};
    ASSERT_EQ(::stat(e.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 077, 0u) << e.path() << " is accessible to group or others";
    ++files;
  }
  EXPECT_GE(files, 5);  // CURRENT, IDENTITY, LOCK, LOG, MANIFEST, OPTIONS, WAL, table
}

TEST(DiskLayerTest, ExistingDirectoryKeepsItsMode) {
  temp_dir dir("disk-layer");
  const fs::path db = dir.path() / "shared";
  fs::create_directory(db);
  fs::permissions(db, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
  auto layer = disk_layer::create(small_options(db));
  struct stat st {};
  ASSERT_EQ(::stat(db.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0750u);
}

TEST(DiskLayerTest, PathThatIsAFileIsRejectedNamingIt) {
  temp_dir dir("disk-layer");
  const fs::path file = dir.path() / "plain-file";
  std::ofstream(file) << "not a directory";
  try {
    (void)disk_layer::create(small_options(file / "db"));
    ADD_FAILURE() << "create() accepted a path below a regular file";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
    EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not a directory"), std::string::npos) << e.what();
  }
}

TEST(DiskLayerTest, InvalidOptionsAreRejectedWithThePreciseField) {
  const auto message_of = [](const disk_layer_options& o) -> std::string {
    try {
      o.validate();
    } catch (const invalid_argument_error& e) {
      return e.what();
    }
    return "valid";
  };
  EXPECT_NE(message_of({}).find("directory must not be empty"), std::string::npos);
  EXPECT_NE(message_of({.directory = "/x", .max_bytes = 1000}).find("max_bytes must be at least"),
            std::string::npos);
  EXPECT_NE(message_of({.directory = "/x", .ttl = -1ms}).find("ttl must not be negative"),
            std::string::npos);
  EXPECT_NE(message_of({.directory = "/x", .name = ""}).find("name must not be empty"),
            std::string::npos);
  EXPECT_NE(message_of({.directory = "/x", .compression = static_cast<disk_compression>(9)})
                .find("compression"),
            std::string::npos);
  EXPECT_EQ(message_of({.directory = "/x"}), "valid");
  EXPECT_THROW((void)disk_layer::create({}), invalid_argument_error);
}

TEST(DiskLayerTest, EveryCompressionAndSyncModeRoundTrips) {
  temp_dir dir("disk-layer");
  int n = 0;
  for (disk_compression c :
       {disk_compression::none, disk_compression::lz4, disk_compression::zstd}) {
    for (disk_sync s : {disk_sync::none, disk_sync::every_write}) {
      const fs::path db = dir.path() / ("db" + std::to_string(n++));
      const std::string value(5000, 'z');
      {
        auto layer = disk_layer::create(
            {.directory = db.string(), .compression = c, .sync = s, .name = "l3"});
        ASSERT_TRUE(layer->set("k", value, 0).ok());
        ASSERT_TRUE(layer->flush().ok());
        ASSERT_TRUE(layer->set("k2", value, 0).ok());
      }
      auto layer = disk_layer::create({.directory = db.string(), .compression = c, .sync = s});
      expect_hit(*layer, "k", value);
      expect_hit(*layer, "k2", value);
    }
  }
}

// ---- one directory, one process -------------------------------------------------------------

TEST(DiskLayerTest, SecondOpenInTheSameProcessFailsNamingTheDirectory) {
  temp_dir dir("disk-layer");
  const fs::path db = dir.path() / "db";
  auto first = disk_layer::create(small_options(db));
  try {
    (void)disk_layer::create(small_options(db));
    ADD_FAILURE() << "a second open of the same directory succeeded";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
    EXPECT_NE(std::string(e.what()).find("directory " + db.string() + " is already open"),
              std::string::npos)
        << e.what();
  }
  // The failed open left the first one intact.
  ASSERT_TRUE(first->set("k", "v", 0).ok());
  expect_hit(*first, "k", "v");
}

TEST(DiskLayerTest, DirectoryHeldByAnotherProcessFailsNamingTheDirectory) {
  temp_dir dir("disk-layer");
  const fs::path db = dir.path() / "db";
  {
    child_process holder(child_program(), {"hold", db.string()}, {.capture_stdout = true});
    ASSERT_TRUE(wait_for_output(holder, "ready", 30s)) << holder.output();
    try {
      (void)disk_layer::create(small_options(db));
      ADD_FAILURE() << "opened a directory another process holds";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::unavailable);
      EXPECT_EQ(std::string(e.what()), "disk_layer: directory " + db.string() +
                                           " is already in use by another process (LOCK held)");
    }
    holder.kill(SIGKILL);
    ASSERT_TRUE(holder.wait_for(10s).has_value());
  }
  // The lock dies with its process.
  auto layer = disk_layer::create(small_options(db));
  ASSERT_TRUE(layer->set("k", "v", 0).ok());
}

TEST(DiskLayerTest, ValuesWrittenByAnotherProcessAreReadAfterItExits) {
  temp_dir dir("disk-layer");
  const fs::path db = dir.path() / "db";
  constexpr std::uint64_t count = 2000;
  constexpr std::uint64_t seed = 99;
  child_process writer(child_program(),
                       {"write", db.string(), std::to_string(count), std::to_string(seed)},
                       {.capture_stdout = true, .stderr_to_stdout = true});
  const auto st = writer.wait_for(60s);
  ASSERT_TRUE(st.has_value()) << "writer did not finish";
  ASSERT_TRUE(st->success()) << st->to_string() << "\n" << writer.output();

  auto layer = disk_layer::create(small_options(db));
  for (std::uint64_t i = 0; i < count; ++i) {
    const byte_read r = layer->get(vv::key_for(i, count));
    ASSERT_TRUE(r.bytes.has_value()) << "value " << i << " lost";
    ASSERT_EQ(*r.bytes, vv::make_value(i, seed)) << "value " << i << " differs";
  }
  expect_hit(*layer, std::string("bin\0\xff/key", 9), "binary-value");
}

// ---- crash safety ---------------------------------------------------------------------------

// A writer is killed with SIGKILL at a random moment, five times over the same directory. After
// each kill the directory opens, every value that reads back is one that was written whole, and
// the last write the writer acknowledged before dying is there (the WAL is in the page cache).
TEST(DiskLayerTest, KilledWriterLeavesOnlyWholeValuesAndKeepsAcknowledgedWrites) {
  temp_dir dir("disk-layer");
  const fs::path db = dir.path() / "db";
  constexpr std::uint64_t key_space = 3000;
  std::mt19937_64 rng(std::random_device{}());
  std::uint64_t first = 0;
  for (int cycle = 0; cycle < 5; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    std::uint64_t last_ack = 0;
    {
      child_process writer(child_program(),
                           {"crash-writer", db.string(), std::to_string(rng()),
                            std::to_string(key_space), std::to_string(first)},
                           {.capture_stdout = true});
      ASSERT_TRUE(wait_for_output(writer, "\n", 30s)) << "writer never acknowledged a write";
      // The random moment of death (the point of the test, not a wait for a condition).
      std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 480));
      writer.kill(SIGKILL);
      const auto st = writer.wait_for(10s);
      ASSERT_TRUE(st.has_value());
      ASSERT_EQ(st->signal, SIGKILL) << st->to_string() << "\n" << writer.output();
      // The last complete line is the last acknowledged sequence number.
      const std::string out = writer.output();
      const auto end = out.rfind('\n');
      ASSERT_NE(end, std::string::npos);
      const auto begin = out.rfind('\n', end - 1);
      last_ack = std::stoull(out.substr(begin == std::string::npos ? 0 : begin + 1,
                                        end - (begin == std::string::npos ? 0 : begin + 1)));
      ASSERT_GE(last_ack, first);
    }
    auto layer = disk_layer::create({.directory = db.string(), .max_bytes = 8ull << 20});
    std::uint64_t present = 0;
    for (std::uint64_t k = 0; k < key_space; ++k) {
      const std::string key = vv::key_for(k, key_space);
      const byte_read r = layer->get(key);
      ASSERT_TRUE(r.error.ok()) << r.error.message();
      if (!r.bytes) continue;
      ++present;
      const auto seq = vv::verify_value(*r.bytes);
      ASSERT_TRUE(seq.has_value()) << "torn or foreign value under " << key;
      EXPECT_EQ(vv::key_for(*seq, key_space), key) << "value of another key under " << key;
      // At most one write past the last acknowledged one (killed between write and report).
      EXPECT_LE(*seq, last_ack + 1);
    }
    const byte_read acked = layer->get(vv::key_for(last_ack, key_space));
    ASSERT_TRUE(acked.bytes.has_value()) << "acknowledged write " << last_ack << " lost";
    const auto acked_seq = vv::verify_value(*acked.bytes);
    ASSERT_TRUE(acked_seq.has_value());
    EXPECT_GE(*acked_seq, last_ack);
    EXPECT_GT(present, 0u);
    first = last_ack + 2;
  }
}

// ---- disk trouble ---------------------------------------------------------------------------

TEST(DiskLayerTest, FullDiskFailsWritesKeepsServingReadsAndRecovers) {
  temp_dir dir("disk-layer");
  child_process p(child_program(), {"disk-full", dir.path().string()},
                  {.capture_stdout = true, .stderr_to_stdout = true});
  const auto st = p.wait_for(60s);
  ASSERT_TRUE(st.has_value()) << p.output();
  if (st->code == 77) GTEST_SKIP() << "needs a private mount namespace (CAP_SYS_ADMIN)";
  ASSERT_TRUE(st->success()) << st->to_string() << "\n" << p.output();
  auto f = facts(p.output());
  EXPECT_GT(std::stoull(f["acked"]), 100u);
  EXPECT_EQ(f["first_failure"], "resource_exhausted") << f["first_failure_message"];
  EXPECT_EQ(f["second_failure"], "resource_exhausted");
  EXPECT_EQ(f["read_first"], "hit");
  EXPECT_EQ(f["read_last"], "hit");
  EXPECT_EQ(f["write_after_freeing_space"], "ok");
}

TEST(DiskLayerTest, ReadOnlyDirectoryFailsWritesKeepsServingReadsAndRecovers) {
  temp_dir dir("disk-layer");
  child_process p(child_program(), {"read-only", dir.path().string()},
                  {.capture_stdout = true, .stderr_to_stdout = true});
  const auto st = p.wait_for(60s);
  ASSERT_TRUE(st.has_value()) << p.output();
  if (st->code == 77) GTEST_SKIP() << "needs a private mount namespace (CAP_SYS_ADMIN)";
  ASSERT_TRUE(st->success()) << st->to_string() << "\n" << p.output();
  auto f = facts(p.output());
  EXPECT_EQ(f["flush"], "unavailable");
  EXPECT_EQ(f["set_after"], "unavailable") << f["set_after_message"];
  EXPECT_NE(f["set_after_message"].find("Read-only file system"), std::string::npos);
  EXPECT_EQ(f["read_flushed"], "hit");
  EXPECT_EQ(f["read_unflushed"], "hit");
  EXPECT_EQ(f["write_after_writable"], "ok");
}

// ---- concurrency ----------------------------------------------------------------------------

// Bounded stress: writers, readers, batch readers and clear() at once; every value read is whole.
TEST(DiskLayerTest, ConcurrentCallsSeeOnlyWholeValues) {
  temp_dir dir("disk-layer");
  auto layer =
      disk_layer::create({.directory = (dir.path() / "db").string(), .max_bytes = 8ull << 20});
  constexpr std::uint64_t key_space = 200;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> bad{0};
  std::atomic<std::uint64_t> hits{0};
  std::vector<std::thread> threads;
  for (std::uint64_t w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      for (std::uint64_t i = w; !stop.load(); i += 2) {
        if (i % 50 == 0) {
          std::vector<byte_write> batch;
          std::vector<std::string> keys;
          std::vector<std::string> values;
          for (std::uint64_t j = i; j < i + 10; ++j) {
            keys.push_back(vv::key_for(j, key_space));
            values.push_back(vv::make_value(j, 5, 500));
          }
          for (std::size_t j = 0; j < keys.size(); ++j) batch.push_back({keys[j], values[j], 0});
          (void)layer->set_many(batch);
        } else {
          (void)layer->set(vv::key_for(i, key_space), vv::make_value(i, 5, 500), 0);
        }
      }
    });
  }
  const auto check = [&](const std::string& key, const byte_read& r) {
    if (!r.bytes) return;
    hits.fetch_add(1);
    const auto seq = vv::verify_value(*r.bytes);
    if (!seq || vv::key_for(*seq, key_space) != key) bad.fetch_add(1);
  };
  threads.emplace_back([&] {
    for (std::uint64_t i = 0; !stop.load(); ++i) {
      const std::string key = vv::key_for(i, key_space);
      check(key, layer->get(key));
    }
  });
  threads.emplace_back([&] {
    std::vector<std::string> keys;
    for (std::uint64_t k = 0; k < 20; ++k) keys.push_back(vv::key_for(k, key_space));
    while (!stop.load()) {
      const auto got = layer->get_many(keys);
      for (std::size_t k = 0; k < keys.size(); ++k) check(keys[k], got[k]);
    }
  });
  threads.emplace_back([&] {
    while (!stop.load()) {
      std::this_thread::sleep_for(50ms);
      if (!layer->clear().ok()) bad.fetch_add(1);
      (void)layer->del(vv::key_for(7, key_space));
    }
  });
  std::this_thread::sleep_for(1500ms);
  stop.store(true);
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(hits.load(), 0u);
}

}  // namespace
}  // namespace layercache
