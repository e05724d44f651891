// disk_stack_test.cpp — the disk layer inside cache stacks: an L3 hit backfills the layers above it
// (L1, and Redis when it sits in between) with the entry's remaining lifetime; fetched values land
// on disk; what one process wrote through its stack another process serves without fetching; a
// directory in use is refused to a second process with a message naming it; damaged bytes on disk
// read through the stack are a miss, an event and a fetch, never an error thrown at the caller.
//
// Real RocksDB stores in temporary directories, a real redis-server for the three-tier cases, and
// the helper executable layercache_disk_child (tests/disk_helper/) as the other process. Expiry
// runs on a fake clock shared by the stack and its layers, except across processes (each process
// has its own clock, so there both use the real one).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "disk/disk_layer_testing.hpp"
#include "layercache/cache_stack.hpp"
#include "layercache/detail/envelope.hpp"
#include "layercache/disk_layer.hpp"
#include "layercache/memory_layer.hpp"
#include "support/child_process.hpp"
#include "support/fake_clock.hpp"
#include "support/temp_dir.hpp"

#if LAYERCACHE_TEST_WITH_REDIS
#include "layercache/redis_layer.hpp"
#include "support/redis_server.hpp"
#endif

namespace layercache {
namespace {

using namespace std::chrono_literals;
using test::child_process;
using test::fake_clock;
using test::temp_dir;

std::string child_program() { return test::self_exe_dir() + "/layercache_disk_child"; }

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

// A fetcher that must not run.
auto no_fetch() {
  return []() -> std::string {
    ADD_FAILURE() << "the fetcher ran for a key a layer should have served";
    return "unexpected";
  };
}

// Events as the stack reported them (the callback may run on the background writer threads).
class event_log {
 public:
  struct entry {
    event_type type;
    std::string layer;
    std::string key;
    errc code;
    std::string message;
  };
  event_callback callback() {
    return [this](const event& e) {
      std::lock_guard lock(mu_);
      events_.push_back(
          {e.type, std::string(e.layer), std::string(e.key), e.detail.code(), e.detail.message()});
    };
  }
  std::vector<entry> of(event_type type) const {
    std::lock_guard lock(mu_);
    std::vector<entry> out;
    for (const auto& e : events_) {
      if (e.type == type) out.push_back(e);
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<entry> events_;
};

class DiskStackTest : public ::testing::Test {
 protected:
  std::string db() const { return (dir_.path() / "db").string(); }

  std::shared_ptr<disk_layer> open_disk() {
    return disk_layer::create({.directory = db(),
                               .max_bytes = 64ull << 20,
                               .block_cache_bytes = 8ull << 20,
                               .clock = clock_});
  }
  std::shared_ptr<memory_layer> memory(std::chrono::milliseconds ttl = 0ms) {
    return memory_layer::create({.ttl = ttl, .clock = clock_});
  }

  // Stores key = value with lifetime `ttl` on disk only (through a disk-only stack, so the bytes
  // are exactly what a stack writes), as a previous run of the application would have left it.
  void seed_disk(const std::shared_ptr<disk_layer>& disk, const std::string& key,
                 const std::string& value, std::chrono::milliseconds ttl) {
    cache_stack writer({disk}, {.clock = clock_, .writes = write_policy::strict});
    ASSERT_TRUE(writer.set<std::string>(key, value, {.ttl = ttl}).ok());
  }

  std::shared_ptr<fake_clock> clock_ = std::make_shared<fake_clock>();
  temp_dir dir_{"disk-stack"};
};

// ---- backfill from L3 -------------------------------------------------------------------------

TEST_F(DiskStackTest, DiskHitBackfillsL1WithTheRemainingLifetime) {
  auto disk = open_disk();
  seed_disk(disk, "k", "v", 60s);
  clock_->advance(40s);  // 20 s of the entry's lifetime left

  cache_stack cache({memory(5min), disk}, {.clock = clock_});
  ASSERT_EQ(*cache.get<std::string>("k", no_fetch()), "v");
  auto m = cache.metrics();
  EXPECT_EQ(m.layers[0].misses, 1u);
  EXPECT_EQ(m.layers[1].hits, 1u);
  EXPECT_EQ(m.fetches, 0u);

  clock_->advance(20s - 1ms);
  ASSERT_NE(cache.get_if_present<std::string>("k"), nullptr);
  m = cache.metrics();
  EXPECT_EQ(m.layers[0].hits, 1u) << "the backfilled entry was not served from L1";
  EXPECT_EQ(m.layers[1].hits, 1u);

  clock_->advance(1ms);  // the original expiry: gone from L1 and from disk
  EXPECT_EQ(cache.get_if_present<std::string>("k"), nullptr);
  m = cache.metrics();
  EXPECT_EQ(m.layers[0].hits, 1u) << "L1 kept the entry past its remaining lifetime";
  EXPECT_EQ(m.layers[0].misses, 2u);
  EXPECT_EQ(m.layers[1].hits, 1u);
  EXPECT_EQ(m.layers[1].misses, 1u);
  EXPECT_EQ(m.fetches, 0u);
}

TEST_F(DiskStackTest, DiskHitBackfillIntoL1IsCappedByTheMemoryLayerTtl) {
  auto disk = open_disk();
  seed_disk(disk, "k", "v", 10min);

  cache_stack cache({memory(30s), disk}, {.clock = clock_});
  ASSERT_EQ(*cache.get<std::string>("k", no_fetch()), "v");
  EXPECT_EQ(cache.metrics().layers[1].hits, 1u);

  clock_->advance(30s - 1ms);
  ASSERT_EQ(*cache.get<std::string>("k", no_fetch()), "v");
  auto m = cache.metrics();
  EXPECT_EQ(m.layers[0].hits, 1u);
  EXPECT_EQ(m.layers[1].hits, 1u);

  clock_->advance(1ms);  // L1's 30 s cap is over; the disk entry lives on
  ASSERT_EQ(*cache.get<std::string>("k", no_fetch()), "v");
  m = cache.metrics();
  EXPECT_EQ(m.layers[0].hits, 1u) << "L1 kept a backfilled entry past its own ttl";
  EXPECT_EQ(m.layers[0].misses, 2u);
  EXPECT_EQ(m.layers[1].hits, 2u) << "the second read did not go back to disk";
  EXPECT_EQ(m.fetches, 0u);
}

TEST_F(DiskStackTest, FetchedValueLandsOnDiskWithItsExpiry) {
  auto disk = open_disk();
  const unix_ms fetched_at = clock_->now_ms();
  {
    cache_stack cache({memory(), disk}, {.clock = clock_});
    ASSERT_EQ(*cache.get<std::string>("k", [] { return std::string("fetched"); }, {.ttl = 60s}),
              "fetched");
    ASSERT_TRUE(cache.flush());
    const auto m = cache.metrics();
    EXPECT_EQ(m.fetches, 1u);
    EXPECT_EQ(m.layers[1].misses, 1u);
    EXPECT_EQ(m.layers[1].writes, 1u);
    EXPECT_EQ(m.layers[1].errors, 0u);
    EXPECT_EQ(m.pending_writes, 0u);

    // On disk, while the stack still runs: an envelope with the fetch's lifetime.
    const byte_read r = disk->get("k");
    ASSERT_TRUE(r.error.ok()) << r.error.message();
    ASSERT_TRUE(r.bytes.has_value()) << "the fetched value is not on disk after flush()";
    detail::decoded_envelope env;
    ASSERT_TRUE(detail::decode_envelope(*r.bytes, env).ok());
    EXPECT_EQ(env.header.fresh_until_ms, fetched_at + 60'000);
    EXPECT_NE(env.payload.find("fetched"), std::string::npos);
  }
  // A new stack (empty L1) answers from disk without fetching.
  cache_stack reader({memory(), disk}, {.clock = clock_});
  EXPECT_EQ(*reader.get<std::string>("k", no_fetch()), "fetched");
  const auto m = reader.metrics();
  EXPECT_EQ(m.layers[1].hits, 1u);
  EXPECT_EQ(m.fetches, 0u);
}

#if LAYERCACHE_TEST_WITH_REDIS

TEST_F(DiskStackTest, DiskHitBackfillsRedisAndL1InAThreeTierStack) {
  test::redis_server server;
  auto redis = redis_layer::create({.url = server.url(),
                                    .prefix = "stack:",
                                    .read_deadline = 2s,
                                    .write_deadline = 5s,
                                    .connect_timeout = 2s,
                                    .clock = clock_});
  auto disk = open_disk();
  seed_disk(disk, "k", "v", 60s);
  clock_->advance(10s);  // 50 s left

  {
    cache_stack cache({memory(), redis, disk}, {.clock = clock_});
    ASSERT_EQ(*cache.get<std::string>("k", no_fetch()), "v");
    ASSERT_TRUE(cache.flush());
    auto m = cache.metrics();
    EXPECT_EQ(m.layers[1].misses, 1u);
    EXPECT_EQ(m.layers[1].writes, 1u) << "the disk hit was not written back to Redis";
    EXPECT_EQ(m.layers[2].hits, 1u);
    EXPECT_EQ(m.layers[2].writes, 0u) << "the layer that answered was written again";
    EXPECT_EQ(m.fetches, 0u);

    // Redis holds the very envelope the disk had, expiring with the entry's remaining lifetime.
    const byte_read on_disk = disk->get("k");
    ASSERT_TRUE(on_disk.bytes.has_value());
    EXPECT_TRUE(server.cli({"GET", "stack:k"}) == *on_disk.bytes)
        << "Redis does not hold the disk's envelope";
    const long long pttl = std::stoll(server.cli({"PTTL", "stack:k"}));
    EXPECT_GT(pttl, 40'000) << "PX is not the remaining lifetime";
    EXPECT_LE(pttl, 50'000) << "PX is longer than the remaining lifetime";

    // And L1: the next read touches neither byte layer.
    ASSERT_NE(cache.get_if_present<std::string>("k"), nullptr);
    m = cache.metrics();
    EXPECT_EQ(m.layers[0].hits, 1u);
    EXPECT_EQ(m.layers[1].hits + m.layers[1].misses, 1u);
    EXPECT_EQ(m.layers[2].hits + m.layers[2].misses, 1u);
  }
  // With the disk copy gone, another process's cold L1 is served by the backfilled Redis entry.
  ASSERT_TRUE(disk->del("k").ok());
  cache_stack cold({memory(), redis, disk}, {.clock = clock_});
  EXPECT_EQ(*cold.get<std::string>("k", no_fetch()), "v");
  const auto m = cold.metrics();
  EXPECT_EQ(m.layers[1].hits, 1u);
  EXPECT_EQ(m.layers[2].hits + m.layers[2].misses, 0u);
  EXPECT_EQ(m.fetches, 0u);
}

#endif  // LAYERCACHE_TEST_WITH_REDIS

// ---- across processes -------------------------------------------------------------------------

TEST_F(DiskStackTest, ValuesWrittenThroughAStackInAnotherProcessAreServedWithoutFetching) {
  constexpr std::uint64_t count = 200;
  child_process writer(child_program(), {"stack-write", db(), std::to_string(count)},
                       {.capture_stdout = true, .stderr_to_stdout = true});
  const auto st = writer.wait_for(60s);
  ASSERT_TRUE(st.has_value()) << "the writer did not finish";
  ASSERT_TRUE(st->success()) << st->to_string() << "\n" << writer.output();
  const auto f = facts(writer.output());
  EXPECT_EQ(f.at("done"), std::to_string(count));
  EXPECT_EQ(f.at("fetches"), std::to_string(count / 2)) << "the writer read through for even keys";
  EXPECT_EQ(f.at("disk_writes"), std::to_string(count));
  EXPECT_EQ(f.at("disk_errors"), "0");

  // Each process has its own clock: the writer used the real one, so this stack does too.
  auto disk = disk_layer::create({.directory = db()});
  cache_stack cache({memory_layer::create({}), disk});
  std::atomic<int> fetched{0};
  for (std::uint64_t i = 0; i < count; ++i) {
    auto v = cache.get<std::string>("stack/" + std::to_string(i), [&] {
      ++fetched;
      return std::string("refetched");
    });
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(*v, "value-" + std::to_string(i));
  }
  EXPECT_EQ(fetched.load(), 0);
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 0u);
  EXPECT_EQ(m.layers[0].misses, count);
  EXPECT_EQ(m.layers[1].hits, count);
  EXPECT_EQ(m.layers[1].misses, 0u);
  EXPECT_EQ(m.layers[1].errors, 0u);
}

TEST_F(DiskStackTest, SecondProcessOpeningTheDirectoryInUseGetsAnErrorNamingIt) {
  {
    auto disk = open_disk();
    cache_stack cache({memory(), disk}, {.clock = clock_});
    ASSERT_TRUE(cache.set<std::string>("k", "v").ok());
    ASSERT_TRUE(cache.flush());

    child_process opener(child_program(), {"open", db()},
                         {.capture_stdout = true, .stderr_to_stdout = true});
    const auto st = opener.wait_for(30s);
    ASSERT_TRUE(st.has_value() && st->success()) << opener.output();
    auto f = facts(opener.output());
    EXPECT_EQ(f.count("opened"), 0u) << "a second process opened a directory in use";
    EXPECT_EQ(f["code"], "unavailable");
    EXPECT_EQ(f["error"], "disk_layer: directory " + db() +
                              " is already in use by another process (LOCK held)");

    // The refused open left this process's stack working, disk writes included.
    ASSERT_TRUE(cache.set<std::string>("k2", "v2").ok());
    ASSERT_TRUE(cache.flush());
    const auto m = cache.metrics();
    EXPECT_EQ(m.layers[1].writes, 2u);
    EXPECT_EQ(m.layers[1].errors, 0u);
    EXPECT_TRUE(disk->get("k2").bytes.has_value());
  }
  // Closed here: the next process may open it.
  child_process opener(child_program(), {"open", db()}, {.capture_stdout = true});
  ASSERT_TRUE(opener.wait_for(30s).has_value());
  EXPECT_EQ(facts(opener.output())["opened"], "yes") << opener.output();
}

// ---- damaged bytes ----------------------------------------------------------------------------

TEST_F(DiskStackTest, DamagedEnvelopeOnDiskIsAMissACorruptionEventAndAFetch) {
  auto disk = open_disk();
  seed_disk(disk, "k", "good", 60s);
  byte_read stored = disk->get("k");
  ASSERT_TRUE(stored.bytes.has_value());
  std::string damaged = *stored.bytes;
  damaged[damaged.size() / 2] = static_cast<char>(damaged[damaged.size() / 2] ^ 0x10);
  ASSERT_TRUE(disk->set("k", damaged, clock_->now_ms() + 60'000).ok());

  event_log events;
  cache_stack cache({memory(), disk}, {.clock = clock_, .on_event = events.callback()});
  std::atomic<int> calls{0};
  std::shared_ptr<const std::string> v;
  ASSERT_NO_THROW(v = cache.get<std::string>("k", [&] {
    ++calls;
    return std::string("fresh");
  }));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, "fresh");
  EXPECT_EQ(calls.load(), 1);
  const auto corruption = events.of(event_type::corruption);
  ASSERT_EQ(corruption.size(), 1u);
  EXPECT_EQ(corruption[0].layer, "disk");
  EXPECT_EQ(corruption[0].key, "k");
  EXPECT_EQ(corruption[0].code, errc::corruption);
  ASSERT_TRUE(cache.flush());
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.layers[1].hits, 0u);
  EXPECT_EQ(m.layers[1].misses, 1u);
  EXPECT_EQ(m.layers[1].errors, 1u);

  // The fetched value replaced the damaged bytes on disk.
  cache_stack reader({memory(), disk}, {.clock = clock_});
  EXPECT_EQ(*reader.get<std::string>("k", no_fetch()), "fresh");
}

TEST_F(DiskStackTest, DamagedDiskRecordIsAMissACorruptionEventAndAFetch) {
  auto disk = open_disk();
  // A record shorter than the disk layer's own expiry prefix: damaged below the envelope.
  ASSERT_TRUE(detail::disk_layer_testing::put_raw(*disk, "k", "abc").ok());

  event_log events;
  cache_stack cache({memory(), disk}, {.clock = clock_, .on_event = events.callback()});
  std::atomic<int> calls{0};
  std::shared_ptr<const std::string> v;
  ASSERT_NO_THROW(v = cache.get<std::string>("k", [&] {
    ++calls;
    return std::string("fresh");
  }));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, "fresh");
  EXPECT_EQ(calls.load(), 1);
  // The disk layer found the damage itself (its read failed with errc::corruption): the stack
  // reports that as a failed layer read (docs/design.md, "Errors") carrying the code.
  auto reported = events.of(event_type::layer_error);
  for (auto& e : events.of(event_type::corruption)) reported.push_back(e);
  ASSERT_EQ(reported.size(), 1u);
  EXPECT_EQ(reported[0].layer, "disk");
  EXPECT_EQ(reported[0].key, "k");
  EXPECT_EQ(reported[0].code, errc::corruption) << reported[0].message;
  ASSERT_TRUE(cache.flush());
  const auto m = cache.metrics();
  EXPECT_EQ(m.fetches, 1u);
  EXPECT_EQ(m.layers[1].misses, 1u);
  EXPECT_EQ(m.layers[1].errors, 1u);

  cache_stack reader({memory(), disk}, {.clock = clock_});
  EXPECT_EQ(*reader.get<std::string>("k", no_fetch()), "fresh");
}

}  // namespace
}  // namespace layercache
