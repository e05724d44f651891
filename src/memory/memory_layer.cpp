// memory_layer.cpp — sharded L1.
//
// Concurrency: the table is split into shards by the high bits of the key hash; each shard has a
// spin lock (critical sections are tens of nanoseconds) guarding its hash chains, policy lists and
// counters. Counters live inside the shard (updated under its lock) rather than in shared atomics,
// so two threads hitting different shards touch no common cache line. No lock is held while a node
// is freed or while on_remove runs.
//
// Capacity: max_entries is one budget for the whole layer, not a rigid split. Each shard has a
// quota (max_entries / shards, the split the policies are sized for) and may hold up to twice it
// while the layer as a whole is under max_entries, so a shard that hashing gave more keys borrows
// the room another shard does not use (with 16 shards of 64, a loop over 1,011 keys fits 1,024
// entries instead of losing every shard that drew more than 64 of them). The budget is an atomic
// count of the entries that hold a slot; an insert takes a slot with a CAS on the insert path only
// (hits never touch it). When the budget is exhausted, the inserting shard frees a slot: from
// itself when it is over its quota, else from a shard that is over its quota (taken with try_lock
// while holding our own lock, so two inserting shards never wait on each other), else from itself.
// The new entry joins its shard's policy before it holds a slot, so an admission policy can still
// choose it as the victim (then no slot is taken). max_bytes stays divided across shards. After an
// insert a shard also evicts while over its byte bound or twice its quota. An entry heavier than
// its shard's whole byte bound is evicted at once, alone.
// Invariants: every node in a shard's chains is in its policy's lists and counted in count/bytes;
// every such node but the one an insert is placing holds one slot of the budget, so size() (the
// budget's count) never exceeds max_entries, even while shards are read one by one.
#include "layercache/memory_layer.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <mutex>
#include <vector>

#include "core/histogram.hpp"
#include "core/spin_mutex.hpp"
#include "layercache/detail/hash.hpp"
#include "layercache/error.hpp"
#include "memory/entry_node.hpp"
#include "memory/eviction_policy.hpp"
#include "memory/removal_deferral.hpp"
#include "memory/window_climber.hpp"

namespace layercache {

std::string_view to_string(removal_cause cause) noexcept {
  switch (cause) {
    case removal_cause::expired:
      return "expired";
    case removal_cause::evicted:
      return "evicted";
    case removal_cause::invalidated:
      return "invalidated";
    case removal_cause::replaced:
      return "replaced";
  }
  return "unknown";
}

void memory_layer_options::validate() const {
  if (max_entries == 0) throw invalid_argument_error("memory_layer: max_entries must be > 0");
  if (ttl.count() < 0) throw invalid_argument_error("memory_layer: ttl must be >= 0");
  if (shards != 0 && (!std::has_single_bit(shards) || shards > 1024)) {
    throw invalid_argument_error("memory_layer: shards must be 0 or a power of two <= 1024");
  }
  if (!(protected_ratio > 0.0 && protected_ratio < 1.0)) {
    throw invalid_argument_error("memory_layer: protected_ratio must be in (0, 1)");
  }
  if (name.empty()) throw invalid_argument_error("memory_layer: name must not be empty");
}

namespace {

using detail::entry_node;

struct removed {
  entry_node* node;
  removal_cause cause;
};

// Removals collected under a shard lock, processed after it is released. Inline capacity covers
// the common case (one replaced or expired entry, a few evictions) without allocating.
class removal_list {
 public:
  void add(entry_node* n, removal_cause c) {
    if (size_ < inline_.size()) {
      inline_[size_++] = {n, c};
    } else {
      overflow_.push_back({n, c});
    }
  }
  template <class F>
  void for_each(F&& f) const {
    for (std::size_t i = 0; i < size_; ++i) f(inline_[i]);
    for (const auto& r : overflow_) f(r);
  }
  bool empty() const noexcept { return size_ == 0; }

 private:
  std::array<removed, 8> inline_{};
  std::size_t size_ = 0;
  std::vector<removed> overflow_;
};

// The layer-wide entry budget (see the header comment), on its own cache line.
struct alignas(64) entry_budget {
  std::atomic<std::size_t> used{0};
  std::size_t max = 0;
};

struct alignas(64) shard {
  detail::spin_mutex mu;
  std::vector<entry_node*> buckets;  // power-of-two size, chains via hash_next
  std::unique_ptr<detail::eviction_policy> policy;
  entry_budget* budget = nullptr;
  std::size_t quota = 0;        // this shard's share of max_entries (what its policy is sized for)
  std::size_t max_entries = 0;  // hard bound: twice the quota
  std::size_t max_bytes = 0;    // 0 = unbounded
  std::size_t count = 0;
  std::size_t bytes = 0;
  entry_node* placing = nullptr;  // the node an insert is placing; it holds no budget slot yet
  std::atomic<std::size_t> count_seen{0};  // count, readable without the lock (donor choice)
  std::uint64_t hits = 0, misses = 0, evictions = 0, expirations = 0, writes = 0;

  entry_node** slot_of(std::string_view key, std::uint64_t hash) noexcept {
    entry_node** p = &buckets[hash & (buckets.size() - 1)];
    while (*p != nullptr) {
      entry_node* n = *p;
      if (n->hash == hash && detail::keys_equal(n->key(), key)) return p;
      p = &n->hash_next;
    }
    return p;
  }

  void grow() {
    std::vector<entry_node*> next(buckets.size() * 2, nullptr);
    for (entry_node* head : buckets) {
      while (head != nullptr) {
        entry_node* following = head->hash_next;
        entry_node*& b = next[head->hash & (next.size() - 1)];
        head->hash_next = b;
        b = head;
        head = following;
      }
    }
    buckets.swap(next);
  }

  // Unlinks the node at *slot from chain, policy and counters.
  entry_node* unlink(entry_node** slot) noexcept {
    entry_node* n = *slot;
    *slot = n->hash_next;
    n->hash_next = nullptr;
    policy->on_remove(n);
    --count;
    count_seen.store(count, std::memory_order_relaxed);
    bytes -= n->weight;
    if (n == placing) {
      placing = nullptr;
    } else {
      budget->used.fetch_sub(1, std::memory_order_relaxed);
    }
    return n;
  }

  void link(entry_node** slot, entry_node* n) noexcept {
    *slot = n;
    policy->on_insert(n);
    ++count;
    count_seen.store(count, std::memory_order_relaxed);
    bytes += n->weight;
    placing = n;
  }

  void evict_victim(removal_list& out) {
    entry_node* v = policy->victim();
    out.add(unlink(slot_of(v->key(), v->hash)), removal_cause::evicted);
    ++evictions;
  }

  void evict_over_bounds(removal_list& out) {
    while (count > max_entries || (max_bytes != 0 && bytes > max_bytes)) {
      if (count == 0) break;
      evict_victim(out);
    }
  }
};

// Gives the node `s` is placing a slot of the budget, freeing one first while the budget is
// exhausted. Called with s.mu held; may take other shards' locks with try_lock only.
void take_slot(shard& s, shard* all, std::size_t shard_count, removal_list& out) {
  entry_budget& budget = *s.budget;
  while (s.placing != nullptr) {
    std::size_t used = budget.used.load(std::memory_order_relaxed);
    if (used < budget.max) {
      if (budget.used.compare_exchange_weak(used, used + 1, std::memory_order_relaxed)) {
        s.placing = nullptr;
      }
      continue;
    }
    // Full. A shard over its quota pays itself; one within it takes from a shard over its own.
    if (s.count <= s.quota) {
      bool freed = false;
      const std::size_t self = static_cast<std::size_t>(&s - all);
      for (std::size_t i = 1; i < shard_count && !freed; ++i) {
        shard& d = all[(self + i) & (shard_count - 1)];
        if (d.count_seen.load(std::memory_order_relaxed) <= d.quota || !d.mu.try_lock()) continue;
        if (d.count > d.quota) {
          d.evict_victim(out);
          freed = true;
        }
        d.mu.unlock();
      }
      if (freed) continue;
    }
    s.evict_victim(out);  // may be the node being placed (an admission policy's rejection)
  }
}

// Sampling keeps the cost of timing off most hits (two clock reads would double an L1 hit).
constexpr std::uint32_t latency_sample_mask = 63;

}  // namespace

struct memory_layer::impl {
  memory_layer_options options;
  layer_info info;
  std::shared_ptr<const ::layercache::clock> clock;
  entry_budget budget;
  // W-TinyLFU's window climber, one for all shards (declared before them: they point to it).
  std::unique_ptr<detail::window_climber> climber;
  std::unique_ptr<shard[]> shards;
  std::size_t shard_count = 0;
  int shard_shift = 0;
  detail::latency_histogram latency;

  shard& shard_for(std::uint64_t hash) noexcept {
    return shards[shard_count == 1 ? 0 : (hash >> shard_shift)];
  }

  void finish(removal_list& list) {
    if (list.empty()) return;
    if (options.on_remove && detail::removal_deferral::active()) {
      // The caller holds a lock of the stack's: notify (and free) once it has let go.
      auto held = std::make_shared<removal_list>(std::move(list));
      detail::removal_deferral::defer([this, held] { notify(*held); });
      return;
    }
    notify(list);
  }

  void notify(const removal_list& list) {
    list.for_each([&](const removed& r) {
      if (options.on_remove) {
        try {
          options.on_remove(r.node->key(), r.cause);
        } catch (...) {
          // on_remove must not throw; dropping the exception keeps the cache consistent.
        }
      }
      entry_node::destroy(r.node);
    });
  }
};

std::shared_ptr<memory_layer> memory_layer::create(memory_layer_options options) {
  options.validate();
  return std::shared_ptr<memory_layer>(new memory_layer(std::move(options)));
}

memory_layer::memory_layer(memory_layer_options options) : impl_(std::make_unique<impl>()) {
  impl& m = *impl_;
  m.options = std::move(options);
  m.info = layer_info{m.options.name, layer_kind::objects, m.options.ttl, false};
  m.clock = m.options.clock ? m.options.clock : default_clock();
  std::size_t n = m.options.shards;
  if (n == 0) {
    // Enough shards to spread two busy cores, few enough that each holds >= 64 entries so the
    // per-shard bounds stay close to the global ones.
    n = std::bit_floor(std::clamp<std::size_t>(m.options.max_entries / 64, 1, 64));
  }
  // Every shard must be able to hold an entry without the shards together exceeding max_entries.
  n = std::min(n, std::bit_floor(m.options.max_entries));
  m.shard_count = n;
  m.shard_shift = 64 - std::countr_zero(n);
  m.shards = std::make_unique<shard[]>(n);
  // The bounds are split so the shards' bounds add up to exactly the global ones (the first
  // `remainder` shards take one more), never to more.
  const std::size_t per_entries = m.options.max_entries / n;
  const std::size_t extra_entries = m.options.max_entries % n;
  const std::size_t per_bytes = m.options.max_bytes / n;
  const std::size_t extra_bytes = m.options.max_bytes % n;
  m.budget.max = m.options.max_entries;
  if (m.options.policy == eviction::w_tinylfu) {
    m.climber = std::make_unique<detail::window_climber>(m.options.max_entries);
  }
  for (std::size_t i = 0; i < n; ++i) {
    shard& s = m.shards[i];
    s.budget = &m.budget;
    s.quota = per_entries + (i < extra_entries ? 1 : 0);
    s.max_entries = 2 * s.quota;
    s.max_bytes = m.options.max_bytes == 0
                      ? 0
                      : std::max<std::size_t>(1, per_bytes + (i < extra_bytes ? 1 : 0));
    s.buckets.assign(16, nullptr);
    s.policy =
        detail::make_policy(m.options.policy, s.quota, m.options.protected_ratio, m.climber.get());
  }
}

memory_layer::~memory_layer() {
  for (std::size_t i = 0; i < impl_->shard_count; ++i) {
    for (entry_node* head : impl_->shards[i].buckets) {
      while (head != nullptr) {
        entry_node* following = head->hash_next;
        entry_node::destroy(head);
        head = following;
      }
    }
  }
}

const layer_info& memory_layer::info() const noexcept { return impl_->info; }
unix_ms memory_layer::now_ms() const noexcept { return impl_->clock->now_ms(); }
std::chrono::milliseconds memory_layer::ttl_cap() const noexcept { return impl_->options.ttl; }

bool memory_layer::find(std::string_view key, std::uint64_t hash, hit& out, bool record) {
  static thread_local std::uint32_t sample_counter = 0;
  const bool sampled = record && (++sample_counter & latency_sample_mask) == 0;
  std::chrono::steady_clock::time_point start;
  if (sampled) start = std::chrono::steady_clock::now();

  impl& m = *impl_;
  const unix_ms now = m.clock->now_ms();
  shard& s = m.shard_for(hash);
  entry_node* expired = nullptr;
  bool found = false;
  {
    std::lock_guard lock(s.mu);
    entry_node** slot = s.slot_of(key, hash);
    entry_node* n = *slot;
    if (n == nullptr) {
      s.misses += record;
    } else if (n->expires_at_ms != 0 && now >= n->expires_at_ms) {
      expired = s.unlink(slot);
      ++s.expirations;
      s.misses += record;
    } else {
      s.policy->on_access(n);
      s.hits += record;
      out.value = n->value;
      out.ops = n->ops;
      out.expires_at_ms = n->expires_at_ms;
      out.negative = n->negative;
      found = true;
    }
  }
  if (expired != nullptr) {
    removal_list list;
    list.add(expired, removal_cause::expired);
    m.finish(list);
  }
  if (sampled) {
    m.latency.record(
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                       std::chrono::steady_clock::now() - start)
                                       .count()));
  }
  return found;
}

void memory_layer::insert(std::string_view key, std::uint64_t hash,
                          std::shared_ptr<const void> value, const detail::type_ops* ops,
                          bool negative, unix_ms expires_at_ms, std::size_t weight) {
  impl& m = *impl_;
  if (m.options.ttl.count() > 0) {
    const unix_ms cap = m.clock->now_ms() + m.options.ttl.count();
    if (expires_at_ms == 0 || expires_at_ms > cap) expires_at_ms = cap;
  }
  entry_node* n = entry_node::make(key);
  n->hash = hash;
  n->value = std::move(value);
  n->ops = ops;
  n->negative = negative;
  n->expires_at_ms = expires_at_ms;
  const std::size_t charged = weight + key.size() + sizeof(entry_node);
  n->weight = static_cast<std::uint32_t>(std::min<std::size_t>(charged, UINT32_MAX));

  shard& s = m.shard_for(hash);
  removal_list removals;
  {
    std::lock_guard lock(s.mu);
    entry_node** slot = s.slot_of(key, hash);
    if (*slot != nullptr) {
      removals.add(s.unlink(slot), removal_cause::replaced);
      slot = s.slot_of(key, hash);
    }
    s.link(slot, n);
    ++s.writes;
    if (s.max_bytes != 0 && n->weight > s.max_bytes) {
      // It cannot fit however much is evicted: drop it alone rather than flush the shard for it.
      s.evictions += 1;
      removals.add(s.unlink(slot), removal_cause::evicted);
    }
    s.evict_over_bounds(removals);
    take_slot(s, m.shards.get(), m.shard_count, removals);
    if (s.count > s.buckets.size()) s.grow();
  }
  m.finish(removals);
}

bool memory_layer::erase(std::string_view key, std::uint64_t hash, removal_cause cause) {
  impl& m = *impl_;
  shard& s = m.shard_for(hash);
  removal_list removals;
  {
    std::lock_guard lock(s.mu);
    entry_node** slot = s.slot_of(key, hash);
    if (*slot == nullptr) return false;
    removals.add(s.unlink(slot), cause);
  }
  m.finish(removals);
  return true;
}

void memory_layer::scan(
    const std::function<bool(std::string_view key, const hit& entry)>& visit) const {
  impl& m = *impl_;
  const unix_ms now = m.clock->now_ms();
  std::vector<std::pair<std::string, hit>> copy;
  for (std::size_t i = 0; i < m.shard_count; ++i) {
    copy.clear();
    {
      shard& s = m.shards[i];
      std::lock_guard lock(s.mu);
      copy.reserve(s.count);
      for (entry_node* n : s.buckets) {
        for (; n != nullptr; n = n->hash_next) {
          if (n->expires_at_ms != 0 && now >= n->expires_at_ms) continue;
          copy.emplace_back(std::string(n->key()),
                            hit{n->value, n->ops, n->expires_at_ms, n->negative});
        }
      }
    }
    for (const auto& [key, entry] : copy) {
      if (!visit(key, entry)) return;
    }
  }
}

bool memory_layer::contains(std::string_view key, std::uint64_t hash) const {
  impl& m = *impl_;
  const unix_ms now = m.clock->now_ms();
  shard& s = m.shard_for(hash);
  std::lock_guard lock(s.mu);
  const entry_node* n = *s.slot_of(key, hash);
  return n != nullptr && (n->expires_at_ms == 0 || now < n->expires_at_ms);
}

status memory_layer::del(std::string_view key) {
  erase(key, detail::hash_key(key), removal_cause::invalidated);
  return {};
}

status memory_layer::clear() {
  impl& m = *impl_;
  for (std::size_t i = 0; i < m.shard_count; ++i) {
    shard& s = m.shards[i];
    removal_list removals;
    {
      std::lock_guard lock(s.mu);
      for (entry_node*& head : s.buckets) {
        while (head != nullptr) {
          entry_node** slot = &head;
          removals.add(s.unlink(slot), removal_cause::invalidated);
        }
      }
    }
    m.finish(removals);
  }
  return {};
}

std::size_t memory_layer::erase_prefix(std::string_view prefix) {
  impl& m = *impl_;
  std::size_t erased = 0;
  for (std::size_t i = 0; i < m.shard_count; ++i) {
    shard& s = m.shards[i];
    removal_list removals;
    {
      std::lock_guard lock(s.mu);
      for (entry_node*& head : s.buckets) {
        entry_node** slot = &head;
        while (*slot != nullptr) {
          if ((*slot)->key().substr(0, prefix.size()) == prefix) {
            removals.add(s.unlink(slot), removal_cause::invalidated);
            ++erased;
          } else {
            slot = &(*slot)->hash_next;
          }
        }
      }
    }
    m.finish(removals);
  }
  return erased;
}

std::size_t memory_layer::cap_lifetimes(unix_ms until) {
  impl& m = *impl_;
  std::size_t capped = 0;
  for (std::size_t i = 0; i < m.shard_count; ++i) {
    shard& s = m.shards[i];
    std::lock_guard lock(s.mu);
    for (entry_node* head : s.buckets) {
      for (entry_node* n = head; n != nullptr; n = n->hash_next) {
        if (n->expires_at_ms == 0 || n->expires_at_ms > until) {
          n->expires_at_ms = until;
          ++capped;
        }
      }
    }
  }
  return capped;
}

std::size_t memory_layer::size() const {
  // The budget's count: one consistent number, where summing the shards one by one could count
  // an entry twice while another shard's insert moves a slot between them.
  return impl_->budget.used.load(std::memory_order_relaxed);
}

layer_metrics memory_layer::metrics() const {
  layer_metrics out;
  out.name = impl_->info.name;
  for (std::size_t i = 0; i < impl_->shard_count; ++i) {
    shard& s = impl_->shards[i];
    std::lock_guard lock(s.mu);
    out.hits += s.hits;
    out.misses += s.misses;
    out.writes += s.writes;
    out.evictions += s.evictions;
    out.expirations += s.expirations;
    out.entries += s.count;
    out.bytes += s.bytes;
  }
  out.read_latency = impl_->latency.summary();
  return out;
}

}  // namespace layercache
