// disk_child.cpp — a helper process for the disk layer's integration tests.
//
// The tests need a second process: one that holds a directory open, one that writes and exits,
// one that is killed mid-write, one that runs inside its own mount namespace (a tiny tmpfs for
// "disk full", a read-only bind mount for "read-only directory"). Each mode prints facts on stdout,
// one "name=value" per line, and the test asserts on them. Every mode ends by itself (bounded).
//
//   layercache_disk_child hold <dir>                      open, print "ready", wait to be killed
//   layercache_disk_child write <dir> <count> <seed>      write count verified values, exit 0
//   layercache_disk_child crash-writer <dir> <seed> <key_space> <first>
//                                                         write seq no. first, first+1, ... until
//                                                         killed; print each one once acked
//   layercache_disk_child disk-full <base>                fill a 4 MiB tmpfs, report what fails
//   layercache_disk_child read-only <base>                make the directory read-only, report
//   layercache_disk_child stack-write <dir> <count>       write "stack/<i>" = "value-<i>" through a
//                                                         memory + disk cache_stack, exit 0
//   layercache_disk_child open <dir>                      try to open, print "opened=yes" or
//                                                         "code=..." and "error=<message>"
//
// Exit codes: 0 done, 1 unexpected failure (message on stderr), 2 usage, 77 the mount-namespace
// modes cannot run here (no CAP_SYS_ADMIN): the test skips.
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "disk_helper/verified_value.hpp"
#include "layercache/cache_stack.hpp"
#include "layercache/disk_layer.hpp"
#include "layercache/error.hpp"
#include "layercache/memory_layer.hpp"
#include "support/child_io.hpp"

namespace {

using namespace std::chrono_literals;
namespace lc = layercache;
namespace vv = layercache::test::disk;

constexpr auto self_limit = 120s;  // no mode outlives this, even if the test forgets it

using layercache::test::say;

[[noreturn]] void fail(const std::string& why) {
  std::cerr << "disk_child: " << why << std::endl;
  std::_Exit(1);  // no destructors: the state is already wrong; stderr is flushed above
}

std::string code_name(const lc::status& s) { return std::string(lc::to_string(s.code())); }

int hold(const std::string& dir) {
  auto layer = lc::disk_layer::create({.directory = dir});
  say("ready");
  std::this_thread::sleep_for(self_limit);
  return 0;
}

int write_values(const std::string& dir, std::uint64_t count, std::uint64_t seed) {
  auto layer = lc::disk_layer::create({.directory = dir});
  for (std::uint64_t i = 0; i < count; ++i) {
    const lc::status s = layer->set(vv::key_for(i, count), vv::make_value(i, seed), 0);
    if (!s.ok()) fail("set failed: " + s.message());
  }
  const std::string binary_key("bin\0\xff/key", 9);
  if (!layer->set(binary_key, "binary-value", 0).ok()) fail("binary set failed");
  say("done=" + std::to_string(count));
  return 0;  // the layer closes normally: unflushed writes stay in the WAL for the next process
}

int crash_writer(const std::string& dir, std::uint64_t seed, std::uint64_t key_space,
                 std::uint64_t first) {
  // Small bound and buffers (8 MiB / 512 KiB) so that flushes and FIFO evictions run while the
  // writer is killed.
  auto layer = lc::disk_layer::create({.directory = dir, .max_bytes = 8ull << 20});
  const auto end = std::chrono::steady_clock::now() + self_limit;
  for (std::uint64_t i = first; std::chrono::steady_clock::now() < end; ++i) {
    const lc::status s = layer->set(vv::key_for(i, key_space), vv::make_value(i, seed), 0);
    if (!s.ok()) fail("set failed: " + s.message());
    say(std::to_string(i));
  }
  return 0;
}

// Writes `count` entries through a memory + disk stack with a 10 min lifetime, as an application
// would: even i read-through (the fetcher's value is stored), odd i with set. Flushes the queued
// disk writes (a graceful shutdown), reports what the stack counted, and exits normally.
int stack_write(const std::string& dir, std::uint64_t count) {
  auto disk = lc::disk_layer::create({.directory = dir});
  lc::cache_stack cache({lc::memory_layer::create({}), disk}, {.ttl = 10min});
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::string key = "stack/" + std::to_string(i);
    std::string value = "value-" + std::to_string(i);
    if (i % 2 == 0) {
      (void)cache.get<std::string>(key, [&] { return value; });
    } else if (const lc::status s = cache.set<std::string>(key, value); !s.ok()) {
      fail("set failed: " + s.message());
    }
  }
  if (!cache.flush(30s)) fail("queued disk writes did not land within 30 s");
  const lc::metrics_snapshot m = cache.metrics();
  say("fetches=" + std::to_string(m.fetches));
  say("disk_writes=" + std::to_string(m.layers.at(1).writes));
  say("disk_errors=" + std::to_string(m.layers.at(1).errors));
  say("done=" + std::to_string(count));
  return 0;
}

// Tries to open `dir` and reports the outcome (the test asserts on the error message).
int try_open(const std::string& dir) {
  try {
    auto layer = lc::disk_layer::create({.directory = dir});
    say("opened=yes");
  } catch (const lc::error& e) {
    say("code=" + std::string(lc::to_string(e.code())));
    say("error=" + std::string(e.what()));
  }
  return 0;
}

// Moves this process into a private mount namespace; false when not permitted.
bool enter_private_mount_namespace() {
  if (::unshare(CLONE_NEWNS) != 0) return false;
  return ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0;
}

int disk_full(const std::string& base) {
  if (!enter_private_mount_namespace()) return 77;
  const std::string mnt = base + "/mnt";
  std::filesystem::create_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=8m,mode=0700") != 0) return 77;
  // Ballast, freed later to see writes come back.
  {
    std::ofstream ballast(mnt + "/ballast", std::ios::binary);
    ballast << std::string(3u << 20, 'x');
    if (!ballast) fail("cannot write the ballast file");
  }
  // A 16 MiB bound on an 8 MiB disk: the disk fills before the bound evicts anything.
  auto layer = lc::disk_layer::create({.directory = mnt + "/db", .max_bytes = 16ull << 20});
  std::uint64_t ok = 0;
  lc::status first;
  for (; ok < 50000; ++ok) {
    first = layer->set("full/" + std::to_string(ok), vv::make_value(ok, 7, 2000), 0);
    if (!first.ok()) break;
  }
  say("acked=" + std::to_string(ok));
  say("first_failure=" + code_name(first));
  say("first_failure_message=" + first.message());
  say("second_failure=" + code_name(layer->set("another", "x", 0)));
  const lc::byte_read r0 = layer->get("full/0");
  say("read_first=" +
      std::string(r0.bytes && *r0.bytes == vv::make_value(0, 7, 2000) ? "hit" : "miss"));
  const std::uint64_t last = ok == 0 ? 0 : ok - 1;
  const lc::byte_read rl = layer->get("full/" + std::to_string(last));
  say("read_last=" +
      std::string(rl.bytes && *rl.bytes == vv::make_value(last, 7, 2000) ? "hit" : "miss"));
  // RocksDB re-checks free space every 5 s once the disk was full, so allow a few rounds.
  std::filesystem::remove(mnt + "/ballast");
  std::string after = "failed";
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (layer->set("after-free", "x", 0).ok()) {
      after = "ok";
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  say("write_after_freeing_space=" + after);
  return 0;
}

int read_only(const std::string& base) {
  if (!enter_private_mount_namespace()) return 77;
  const std::string dir = base + "/db";
  auto layer = lc::disk_layer::create({.directory = dir});
  for (int i = 0; i < 100; ++i) {
    if (!layer->set("ro/" + std::to_string(i), "value-" + std::to_string(i), 0).ok()) {
      fail("set before read-only failed");
    }
  }
  if (!layer->flush().ok()) fail("flush before read-only failed");
  if (!layer->set("ro/unflushed", "in-memtable", 0).ok()) fail("set before read-only failed");
  // A read-only bind mount of the directory onto itself: root cannot write through it either.
  // Descriptors RocksDB already holds (the WAL) stay writable; every new file fails with EROFS.
  if (::mount(dir.c_str(), dir.c_str(), nullptr, MS_BIND, nullptr) != 0) return 77;
  if (::mount(nullptr, dir.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) != 0) {
    return 77;
  }
  say("flush=" + code_name(layer->flush()));
  const lc::status s = layer->set("ro/new", "x", 0);
  say("set_after=" + code_name(s));
  say("set_after_message=" + s.message());
  const lc::byte_read r = layer->get("ro/7");
  say("read_flushed=" + std::string(r.bytes && *r.bytes == "value-7" ? "hit" : "miss"));
  const lc::byte_read u = layer->get("ro/unflushed");
  say("read_unflushed=" + std::string(u.bytes && *u.bytes == "in-memtable" ? "hit" : "miss"));
  // Writable again: the layer resumes by itself (at most one attempt per second).
  if (::umount(dir.c_str()) != 0) fail("cannot unmount the read-only bind mount");
  std::string after = "failed";
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (layer->set("ro/after", "x", 0).ok()) {
      after = "ok";
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  say("write_after_writable=" + after);
  return 0;
}

std::uint64_t number(const char* s) { return std::strtoull(s, nullptr, 10); }

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  try {
    if (args.size() == 2 && args[0] == "hold") return hold(argv[2]);
    if (args.size() == 4 && args[0] == "write") {
      return write_values(argv[2], number(argv[3]), number(argv[4]));
    }
    if (args.size() == 5 && args[0] == "crash-writer") {
      return crash_writer(argv[2], number(argv[3]), number(argv[4]), number(argv[5]));
    }
    if (args.size() == 2 && args[0] == "disk-full") return disk_full(argv[2]);
    if (args.size() == 2 && args[0] == "read-only") return read_only(argv[2]);
    if (args.size() == 3 && args[0] == "stack-write") return stack_write(argv[2], number(argv[3]));
    if (args.size() == 2 && args[0] == "open") return try_open(argv[2]);
  } catch (const std::exception& e) {
    fail(std::string("exception: ") + e.what());
  }
  std::cerr << "usage: see the header of tests/disk_helper/disk_child.cpp\n";
  return 2;
}
