// test_byte_layer.hpp — test doubles for the byte-layer code paths of cache_stack.
//
// Defines:
//   * test_byte_layer: an in-memory byte_layer (a mutex-guarded map of key → envelope bytes) that
//     honours the expires_at hint against a clock, counts its calls and lets a test read and plant
//     raw bytes. It exists to exercise backfill, lifetimes, corruption handling and codecs in unit
//     tests without a server; it is NOT a stand-in for the Redis or disk layers, which have their
//     own integration tests (and run tests/unit/layer_contract.hpp from there).
//   * faulty_byte_layer: a decorator over any byte_layer that injects failures (the next N
//     operations, or all of them until healed), corrupts stored bytes, counts calls and runs a
//     test hook before each operation.
//
//   auto clock = std::make_shared<layercache::test::fake_clock>();
//   auto l2 = layercache::test::test_byte_layer::create({.clock = clock});
//   auto faulty = std::make_shared<layercache::test::faulty_byte_layer>(l2);
//   layercache::cache_stack cache({layercache::memory_layer::create({.clock = clock}), faulty},
//                                 {.clock = clock});
//   faulty->fail_next(1, layercache::test::fault::get);
//
// Failures are injected as a status WITHOUT a layer name (status(code, message)), as a third-party
// layer might return them: the stack, not the layer, is responsible for naming the failing layer.
//
// Thread-safety: both classes are safe for concurrent calls; counters are atomics.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "layercache/clock.hpp"
#include "layercache/layer.hpp"
#include "layercache/status.hpp"

namespace layercache::test {

// Calls received by a byte layer, per operation. Batch calls count once in their own counter.
struct byte_layer_calls {
  std::atomic<std::uint64_t> get{0}, get_many{0}, set{0}, set_many{0}, del{0}, del_many{0},
      clear{0};
};

struct test_byte_layer_options {
  // Name in layer_info, metrics and status. Default "bytes".
  std::string name = "bytes";
  // Time source for the expires_at hint; null means default_clock().
  std::shared_ptr<const ::layercache::clock> clock{};
  // When true (default) an entry whose expires_at hint has passed is gone, as in Redis. When false
  // the bytes stay, so only the stack's own envelope check keeps the entry from being served.
  bool honour_expiry = true;
  // layer_info::max_ttl: the layer's cap on entry lifetimes; zero means none.
  std::chrono::milliseconds max_ttl{0};
  // layer_info::compress / compress_min_bytes.
  compression compress = compression::none;
  std::size_t compress_min_bytes = 1024;
};

class test_byte_layer final : public byte_layer {
 public:
  explicit test_byte_layer(test_byte_layer_options options = {})
      : options_(std::move(options)), clock_(options_.clock ? options_.clock : default_clock()) {
    info_.name = options_.name;
    info_.kind = layer_kind::bytes;
    info_.max_ttl = options_.max_ttl;
    info_.remote = false;
    info_.compress = options_.compress;
    info_.compress_min_bytes = options_.compress_min_bytes;
  }
  static std::shared_ptr<test_byte_layer> create(test_byte_layer_options options = {}) {
    return std::make_shared<test_byte_layer>(std::move(options));
  }

  const layer_info& info() const noexcept override { return info_; }

  byte_read get(std::string_view key) override {
    ++calls_.get;
    return read(key);
  }
  std::vector<byte_read> get_many(std::span<const std::string> keys) override {
    ++calls_.get_many;
    std::vector<byte_read> out;
    out.reserve(keys.size());
    for (const auto& key : keys) out.push_back(read(key));
    return out;
  }
  status set(std::string_view key, std::string_view bytes, unix_ms expires_at_ms) override {
    ++calls_.set;
    write(key, bytes, expires_at_ms);
    return {};
  }
  status set_many(std::span<const byte_write> writes) override {
    ++calls_.set_many;
    for (const auto& w : writes) write(w.key, w.bytes, w.expires_at_ms);
    return {};
  }
  status del(std::string_view key) override {
    ++calls_.del;
    std::lock_guard lock(mu_);
    if (auto it = map_.find(key); it != map_.end()) map_.erase(it);
    return {};
  }
  status del_many(std::span<const std::string> keys) override {
    ++calls_.del_many;
    std::lock_guard lock(mu_);
    for (const auto& key : keys) {
      if (auto it = map_.find(key); it != map_.end()) map_.erase(it);
    }
    return {};
  }
  status clear() override {
    ++calls_.clear;
    std::lock_guard lock(mu_);
    map_.clear();
    return {};
  }
  status scan(
      const std::function<bool(std::string_view key, std::string_view bytes)>& visit) override {
    std::vector<std::pair<std::string, std::string>> copy;
    {
      std::lock_guard lock(mu_);
      for (const auto& [k, e] : map_) copy.emplace_back(k, e.bytes);
    }
    for (const auto& [k, b] : copy) {
      if (!visit(k, b)) break;
    }
    return {};
  }

  // ---- inspection (no counters, no expiry) ------------------------------------------------------
  // The bytes stored under `key`, whether or not their expiry hint has passed.
  std::optional<std::string> stored(std::string_view key) const {
    std::lock_guard lock(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return std::nullopt;
    return it->second.bytes;
  }
  // The expires_at hint stored with `key` (0 = never).
  std::optional<unix_ms> stored_expiry(std::string_view key) const {
    std::lock_guard lock(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return std::nullopt;
    return it->second.expires_at_ms;
  }
  // Plants raw bytes (e.g. garbage, or an envelope built by hand).
  void put(std::string_view key, std::string bytes, unix_ms expires_at_ms = 0) {
    write(key, bytes, expires_at_ms);
  }
  // Entries stored, expired ones included.
  std::size_t size() const {
    std::lock_guard lock(mu_);
    return map_.size();
  }
  const byte_layer_calls& calls() const noexcept { return calls_; }

 private:
  struct entry {
    std::string bytes;
    unix_ms expires_at_ms = 0;
  };

  byte_read read(std::string_view key) {
    std::lock_guard lock(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return {};
    if (options_.honour_expiry && it->second.expires_at_ms != 0 &&
        clock_->now_ms() >= it->second.expires_at_ms) {
      map_.erase(it);
      return {};
    }
    return {status(), it->second.bytes};
  }
  void write(std::string_view key, std::string_view bytes, unix_ms expires_at_ms) {
    std::lock_guard lock(mu_);
    map_.insert_or_assign(std::string(key), entry{std::string(bytes), expires_at_ms});
  }

  test_byte_layer_options options_;
  std::shared_ptr<const ::layercache::clock> clock_;
  layer_info info_;
  mutable std::mutex mu_;
  std::map<std::string, entry, std::less<>> map_;  // guarded by mu_
  byte_layer_calls calls_;
};

// Operation kinds a fault applies to (bit mask). Batch forms count as their single-key kind.
namespace fault {
inline constexpr unsigned get = 1u << 0;    // get, get_many
inline constexpr unsigned set = 1u << 1;    // set, set_many
inline constexpr unsigned del = 1u << 2;    // del, del_many
inline constexpr unsigned clear = 1u << 3;  // clear
inline constexpr unsigned writes = set | del | clear;
inline constexpr unsigned all = get | writes;
}  // namespace fault

class faulty_byte_layer final : public byte_layer {
 public:
  // Forwards to `inner` and reports inner's layer_info (same name).
  explicit faulty_byte_layer(std::shared_ptr<byte_layer> inner) : inner_(std::move(inner)) {}

  const layer_info& info() const noexcept override { return inner_->info(); }

  // The next `n` operations of the kinds in `ops` fail with `code` without reaching the inner
  // layer. A batch call is one operation and fails as a whole.
  void fail_next(std::size_t n, unsigned ops = fault::all, errc code = errc::unavailable) {
    std::lock_guard lock(mu_);
    fail_next_ = n;
    fail_next_ops_ = ops;
    code_ = code;
  }
  // Every operation of the kinds in `ops` fails with `code` until heal().
  void fail_always(unsigned ops = fault::all, errc code = errc::unavailable) {
    std::lock_guard lock(mu_);
    fail_always_ops_ = ops;
    code_ = code;
  }
  void heal() {
    std::lock_guard lock(mu_);
    fail_next_ = 0;
    fail_always_ops_ = 0;
  }
  // Flips one byte of the bytes stored under `key` in the inner layer (default: the last one, which
  // sits in the envelope's checksum) and writes them back with no expiry. Returns false when the
  // key is absent. Not counted as a call.
  bool corrupt_stored(std::string_view key, std::size_t offset_from_end = 1) {
    byte_read r = inner_->get(key);
    if (!r.error.ok() || !r.bytes || r.bytes->size() < offset_from_end || offset_from_end == 0) {
      return false;
    }
    std::string& b = *r.bytes;
    b[b.size() - offset_from_end] = static_cast<char>(b[b.size() - offset_from_end] ^ 0x5A);
    return inner_->set(key, b, 0).ok();
  }
  // Runs `hook(kind, op)` at the start of every operation, before any fault is injected and without
  // a lock held (e.g. to block a read until a test releases it). Set it before the layer is shared.
  void set_hook(std::function<void(unsigned kind, std::string_view op)> hook) {
    hook_ = std::move(hook);
  }
  // Operations that failed by injection so far.
  std::uint64_t injected() const noexcept { return injected_.load(); }
  const byte_layer_calls& calls() const noexcept { return calls_; }

  byte_read get(std::string_view key) override {
    ++calls_.get;
    if (auto s = should_fail(fault::get, "get")) return {std::move(*s), std::nullopt};
    return inner_->get(key);
  }
  std::vector<byte_read> get_many(std::span<const std::string> keys) override {
    ++calls_.get_many;
    if (auto s = should_fail(fault::get, "get_many")) {
      std::vector<byte_read> out;
      for (std::size_t i = 0; i < keys.size(); ++i) out.push_back({*s, std::nullopt});
      return out;
    }
    return inner_->get_many(keys);
  }
  status set(std::string_view key, std::string_view bytes, unix_ms expires_at_ms) override {
    ++calls_.set;
    if (auto s = should_fail(fault::set, "set")) return std::move(*s);
    return inner_->set(key, bytes, expires_at_ms);
  }
  status set_many(std::span<const byte_write> writes) override {
    ++calls_.set_many;
    if (auto s = should_fail(fault::set, "set_many")) return std::move(*s);
    return inner_->set_many(writes);
  }
  status del(std::string_view key) override {
    ++calls_.del;
    if (auto s = should_fail(fault::del, "del")) return std::move(*s);
    return inner_->del(key);
  }
  status del_many(std::span<const std::string> keys) override {
    ++calls_.del_many;
    if (auto s = should_fail(fault::del, "del_many")) return std::move(*s);
    return inner_->del_many(keys);
  }
  status clear() override {
    ++calls_.clear;
    if (auto s = should_fail(fault::clear, "clear")) return std::move(*s);
    return inner_->clear();
  }
  // A scan is a read: it fails with fault::get.
  status scan(
      const std::function<bool(std::string_view key, std::string_view bytes)>& visit) override {
    if (auto s = should_fail(fault::get, "scan")) return std::move(*s);
    return inner_->scan(visit);
  }

 private:
  std::optional<status> should_fail(unsigned kind, std::string_view op) {
    if (hook_) hook_(kind, op);
    std::lock_guard lock(mu_);
    bool fail = (fail_always_ops_ & kind) != 0;
    if (!fail && fail_next_ > 0 && (fail_next_ops_ & kind) != 0) {
      --fail_next_;
      fail = true;
    }
    if (!fail) return std::nullopt;
    ++injected_;
    return status(code_, "injected fault in " + std::string(op));
  }

  std::shared_ptr<byte_layer> inner_;
  std::function<void(unsigned, std::string_view)> hook_;
  std::mutex mu_;
  std::size_t fail_next_ = 0;      // guarded by mu_
  unsigned fail_next_ops_ = 0;     // guarded by mu_
  unsigned fail_always_ops_ = 0;   // guarded by mu_
  errc code_ = errc::unavailable;  // guarded by mu_
  std::atomic<std::uint64_t> injected_{0};
  byte_layer_calls calls_;
};

}  // namespace layercache::test
