// cache_stack.hpp — the cache: an ordered list of layers behind one read-through API.
//
//   using namespace std::chrono_literals;
//   layercache::cache_stack cache({layercache::memory_layer::create({.max_entries = 100'000})},
//                                 {.ttl = 10min});
//   std::shared_ptr<const user> u = cache.get<user>("user:42", [&] { return db.load_user(42); });
//
// get() answers from the nearest layer holding a live entry and fills the layers above it
// (backfill, keeping the entry's remaining lifetime). When no layer has it, the fetcher runs once
// per key however many threads ask at the same moment (single-flight): the first caller fetches on
// its own thread, the others wait for its result — or its exception, rethrown to each of them. The
// fetched value is written to every layer.
//
// Values are immutable and shared: get returns std::shared_ptr<const T>; an L1 hit hands out
// another reference to the object already in memory. A null pointer means "not found": a fetcher
// may return std::optional<T>, and an empty optional is cached as a negative entry for
// negative_ttl.
//
// Invalidation during a fetch: a del, set or clear that reaches a key while its fetch is in flight
// marks the fetch stale. Callers already waiting on it get the fetched value (they asked before the
// invalidation completed), but the value is stored in no layer, so no later get sees it
// (docs/design.md, "Invalidation during fill").
//
// Errors: infrastructure trouble in a layer (Redis down, corrupt bytes) never throws from a read:
// the layer is skipped, counted in metrics() and reported to stack_options::on_event. Misuse
// throws: invalid_argument_error (empty or too long key, invalid options, a fetcher re-entering get
// for the key it is fetching), type_mismatch_error (a key read as another type than L1 holds; in
// a byte layer that is another build's value: a miss, codec.hpp "type_name"),
// wait_timeout_error (wait_deadline passed while waiting for another caller's fetch).
// Mutations return a status naming the layers that failed.
//
// Writes: L1 changes before a mutation returns. Byte layers (Redis, disk) are written by background
// threads, in order per key, unless write_policy::strict is chosen (then the call waits for every
// layer and its status reports their failures). This process reads its own writes immediately;
// other processes see them once they land. Fetched and backfilled values always go to byte layers
// in the background: a get returns as soon as L1 holds the value. The destructor waits up to
// stack_options::shutdown_flush_timeout for queued writes.
//
// Many instances: with a coordinating Redis layer (redis_layer_options::coordinate, the default),
// the fetcher runs once per key across processes too (a Redis lease), writes are versioned so a
// late one never replaces a newer value, and every mutation is announced so other instances drop
// their L1 copies (docs/design.md, "Coordination across instances"). Tags, prefixes and namespaces
// (cache_namespace.hpp) invalidate groups of keys everywhere.
//
// Thread-safety: every method may be called concurrently from any thread. Not copyable or movable;
// share it by reference or shared_ptr. Destroying it while calls are running is undefined.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "layercache/codec.hpp"
#include "layercache/detail/function_ref.hpp"
#include "layercache/detail/type_ops.hpp"
#include "layercache/error.hpp"
#include "layercache/layer.hpp"
#include "layercache/memory_layer.hpp"
#include "layercache/metrics.hpp"
#include "layercache/options.hpp"
#include "layercache/snapshot.hpp"
#include "layercache/status.hpp"

namespace layercache {

class cache_namespace;
namespace detail {
struct ns_node;
}  // namespace detail

namespace detail {

// What a fetcher produced, type-erased.
struct fetch_result {
  std::shared_ptr<const void> value;  // null when negative
  bool negative = false;
};

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};
template <class T>
struct is_shared_ptr : std::false_type {};
template <class T>
struct is_shared_ptr<std::shared_ptr<T>> : std::true_type {};

// Converts what a fetcher returned (T, std::optional<T>, or std::shared_ptr<[const] T>).
template <class T, class R>
fetch_result to_fetch_result(R&& r) {
  using plain = std::remove_cvref_t<R>;
  if constexpr (is_optional<plain>::value) {
    static_assert(std::is_convertible_v<typename plain::value_type, T>,
                  "layercache: the fetcher returns std::optional<U> where U does not convert to T");
    if (!r.has_value()) return {nullptr, true};
    return {std::make_shared<const T>(std::move(*r)), false};
  } else if constexpr (is_shared_ptr<plain>::value) {
    static_assert(std::is_convertible_v<plain, std::shared_ptr<const T>>,
                  "layercache: the fetcher returns a shared_ptr that does not convert to "
                  "std::shared_ptr<const T>");
    std::shared_ptr<const T> p = std::forward<R>(r);
    if (!p) return {nullptr, true};
    return {std::move(p), false};
  } else {
    static_assert(std::is_convertible_v<R, T>,
                  "layercache: the fetcher must return T, std::optional<T> or std::shared_ptr<T>");
    return {std::make_shared<const T>(std::forward<R>(r)), false};
  }
}

template <class T>
constexpr void require_codec() {
  static_assert(has_codec<T>,
                "layercache: no codec for this type. Give it nlohmann::json to_json/from_json "
                "functions, or specialise layercache::codec<T> with static encode(const T&, "
                "std::string&) and decode(std::string_view) (see layercache/codec.hpp).");
}

}  // namespace detail

class cache_stack {
 public:
  // Builds a stack over `layers`, nearest first. Throws invalid_argument_error when the list is
  // empty, holds a null, places a memory layer anywhere but first, or options are invalid.
  explicit cache_stack(std::vector<std::shared_ptr<layer>> layers, stack_options options = {});
  ~cache_stack();
  cache_stack(const cache_stack&) = delete;
  cache_stack& operator=(const cache_stack&) = delete;

  // Read-through: the cached value for `key`, or the fetcher's answer (stored in every layer).
  // `fetcher` is called with no arguments and returns T, std::optional<T> (empty = not found,
  // cached for negative_ttl) or std::shared_ptr<T>. Returns null for "not found".
  // Cost on an L1 hit: one hash, one shard lock, one reference-count increment; no allocation.
  //
  //   auto page = cache.get<std::string>("page:/home", [&] { return render_home(); },
  //                                      {.ttl = 30s});
  template <class T, class Fetcher>
  std::shared_ptr<const T> get(std::string_view key, Fetcher&& fetcher,
                               const get_options& options = {}) {
    detail::require_codec<T>();
    const detail::type_ops& ops = detail::ops_of<T>();
    std::uint64_t hash = 0;
    memory_layer::hit hit;
    if (l1_lookup(key, ops, options, hash, hit)) {
      return std::static_pointer_cast<const T>(std::move(hit.value));
    }
    auto fetch = [&fetcher]() -> detail::fetch_result {
      return detail::to_fetch_result<T>(std::forward<Fetcher>(fetcher)());
    };
    return std::static_pointer_cast<const T>(get_slow(key, hash, ops, fetch, options));
  }

  // The cached value, or null when no layer holds a live entry (or it holds "not found"). Never
  // fetches. A lower-layer hit fills the layers above it.
  template <class T>
  std::shared_ptr<const T> get_if_present(std::string_view key) {
    detail::require_codec<T>();
    return std::static_pointer_cast<const T>(get_if_present_erased(key, detail::ops_of<T>()));
  }

  // Stores `value` under `key` in every layer (replacing what is there) and marks an in-flight
  // fetch of `key` stale.
  template <class T>
  status set(std::string_view key, T value, const set_options& options = {}) {
    detail::require_codec<T>();
    return set_erased(key, detail::ops_of<T>(), std::make_shared<const T>(std::move(value)),
                      options);
  }

  // Removes `key` from every layer and marks an in-flight fetch of it stale. With
  // write_policy::strict (stack_options::writes, or per call) it waits for every layer.
  //
  //   status s = cache.del("user:42", {.policy = layercache::write_policy::strict});
  status del(std::string_view key, const del_options& options = {});

  // True when get() would answer without calling the fetcher (a live value or a cached "not
  // found" in some layer). Touches no eviction order or hit counters.
  bool has(std::string_view key);

  // Read-through for several keys. Keys already cached are answered from the layers; the keys
  // missing everywhere — minus those another caller is already fetching, which are awaited — go to
  // ONE call of `fetcher`, which receives them as std::span<const std::string> and returns a
  // std::vector<std::optional<T>> (or std::vector<T>) of the same size and order (empty optional =
  // not found). Returns one pointer per input key, in order (null = not found). Duplicate keys are
  // allowed. A wrong-sized result throws invalid_argument_error to every waiter.
  //
  //   auto users = cache.get_many<user>(ids, [&](std::span<const std::string> missing) {
  //     return db.load_users(missing);  // std::vector<std::optional<user>>
  //   });
  template <class T, class BatchFetcher>
  std::vector<std::shared_ptr<const T>> get_many(std::span<const std::string> keys,
                                                 BatchFetcher&& fetcher,
                                                 const get_options& options = {}) {
    detail::require_codec<T>();
    auto fetch = [&fetcher](std::span<const std::string> missing) {
      auto produced = std::forward<BatchFetcher>(fetcher)(missing);
      std::vector<detail::fetch_result> out;
      out.reserve(produced.size());
      for (auto& r : produced) out.push_back(detail::to_fetch_result<T>(std::move(r)));
      return out;
    };
    auto erased = get_many_erased(keys, detail::ops_of<T>(), fetch, options);
    std::vector<std::shared_ptr<const T>> out;
    out.reserve(erased.size());
    for (auto& v : erased) out.push_back(std::static_pointer_cast<const T>(std::move(v)));
    return out;
  }

  // Stores several values. Byte-layer writes are queued together and sent in batches (one
  // set_many per layer for up to 256 queued writes of a background writer thread).
  template <class T>
  status set_many(std::span<const std::pair<std::string, T>> entries,
                  const set_options& options = {}) {
    detail::require_codec<T>();
    std::vector<std::pair<std::string_view, std::shared_ptr<const void>>> erased;
    erased.reserve(entries.size());
    for (const auto& [key, value] : entries) {
      erased.emplace_back(key, std::make_shared<const T>(value));
    }
    return set_many_erased(erased, detail::ops_of<T>(), options);
  }

  // Removes several keys. Byte-layer deletes are queued together and sent in batches (one del_many
  // per layer for up to 256 queued writes of a background writer thread).
  status del_many(std::span<const std::string> keys);
  status del_many(std::span<const std::string_view> keys, const del_options& options = {});

  // Removes every entry from every layer (a prefixed Redis layer clears its prefix only) and marks
  // every in-flight fetch stale. Other instances drop their L1 (invalidation bus).
  status clear();

  // Removes every key carrying `tag` (set_options::tags, get_options::tags) from every layer of
  // this instance and, through Redis and the invalidation bus, of every instance. Marks their
  // in-flight fetches stale. Never touches Redis on a get. Cost: one Redis script plus one bus
  // message; keys known only to another instance's L1 or disk are removed by that instance.
  status invalidate_tag(std::string_view tag);
  // As invalidate_tag for several tags: keys with any of them, or only keys with all of them.
  status invalidate_tags(std::span<const std::string> tags, tag_match match = tag_match::any);
  // Removes every key that starts with `prefix`, everywhere (Redis: SCAN over the prefix; for
  // invalidating a whole group often, prefer a namespace: rotate() does not scan). An empty prefix
  // throws invalid_argument_error (it would clear every instance; say clear() if that is meant).
  status invalidate_prefix(std::string_view prefix);

  // A scoped view whose keys and tags live under `name` (cache_namespace.hpp). Looks the
  // namespace's generation up in Redis the first time a process uses it (one round trip).
  cache_namespace ns(std::string_view name);

  // Waits until every byte-layer write queued before the call (write_policy::best_effort) has
  // reached its layers, or `timeout` passes. Returns whether everything landed. For tests, and for
  // a graceful shutdown that must not lose writes.
  bool flush(std::chrono::milliseconds timeout = std::chrono::seconds(5));

  // Writes every live entry of the stack to `path` (snapshot.hpp), after flushing queued writes:
  // the entries of byte layers that can enumerate (disk, Redis; the nearest layer's copy of a key)
  // and L1's. Where L1 holds a different value than the byte layers, L1's wins (it is what this
  // process serves); where they agree, the byte layer's envelope is written, since it carries the
  // full remaining lifetime (L1's expiry is capped by the memory layer's ttl). Never throws for I/O
  // trouble: the result's status says what failed.
  snapshot_result export_snapshot(const std::filesystem::path& path,
                                  const snapshot_options& options = {});
  // Loads a snapshot into every byte layer (direct batched writes, after flushing queued ones). The
  // L1 fills on first read; values L1 already holds for imported keys stay until they expire or are
  // invalidated. A stack without a byte layer gets errc::invalid_argument: use import_snapshot<T>.
  snapshot_result import_snapshot(const std::filesystem::path& path,
                                  const snapshot_options& options = {});
  // As above, and also decodes the entries holding a T into L1 (entries of other types go to the
  // byte layers only and are counted in skipped_type).
  template <class T>
  snapshot_result import_snapshot(const std::filesystem::path& path,
                                  const snapshot_options& options = {}) {
    detail::require_codec<T>();
    return import_snapshot_erased(path, options, &detail::ops_of<T>());
  }

  // Counters and latency summaries, per layer and for the stack (metrics.hpp).
  metrics_snapshot metrics() const;

  const std::vector<std::shared_ptr<layer>>& layers() const noexcept;
  const stack_options& options() const noexcept;

 private:
  struct impl;

  using fetch_fn = detail::function_ref<detail::fetch_result()>;
  using batch_fetch_fn =
      detail::function_ref<std::vector<detail::fetch_result>(std::span<const std::string>)>;

  bool l1_lookup(std::string_view key, const detail::type_ops& ops, const get_options& options,
                 std::uint64_t& hash, memory_layer::hit& hit);
  std::shared_ptr<const void> get_slow(std::string_view key, std::uint64_t hash,
                                       const detail::type_ops& ops, fetch_fn fetch,
                                       const get_options& options);
  std::shared_ptr<const void> get_if_present_erased(std::string_view key,
                                                    const detail::type_ops& ops);
  status set_erased(std::string_view key, const detail::type_ops& ops,
                    std::shared_ptr<const void> value, const set_options& options);
  std::vector<std::shared_ptr<const void>> get_many_erased(std::span<const std::string> keys,
                                                           const detail::type_ops& ops,
                                                           batch_fetch_fn fetch,
                                                           const get_options& options);
  status set_many_erased(
      std::span<const std::pair<std::string_view, std::shared_ptr<const void>>> entries,
      const detail::type_ops& ops, const set_options& options);

  snapshot_result import_snapshot_erased(const std::filesystem::path& path,
                                         const snapshot_options& options,
                                         const detail::type_ops* ops);

  friend class cache_namespace;
  cache_namespace make_namespace(std::shared_ptr<const detail::ns_node> parent,
                                 std::string_view name);
  status rotate_namespace(const detail::ns_node& node);
  void refresh_namespace(const detail::ns_node& node);

  std::unique_ptr<impl> impl_;
  memory_layer* l1_ = nullptr;  // impl_->layers[0] when it is a memory layer
};

}  // namespace layercache

#include "layercache/cache_namespace.hpp"  // ns() returns one; needs the class above
