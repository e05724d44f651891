// op_log.hpp — the history a coherence node records during a consistency run, and the checker that
// the tests and the benchmark run over the merged histories of every node
// (tests/integration/redis_coherence_test.cpp, chaos_run.hpp, bench/scenarios/consistency.cpp).
// Shared by the helper executable (the recorder) and the drivers (the checker). Header-only.
//
// One operation per line: "<kind> <subject> <value> <start_ns> <end_ns> [<node> <thread> <ok>]"
//   G key value|-   a get (read-through); "-" = not found (never, with a fetcher that always
//   answers) P key value|-   a get_if_present M key value|-   one element of a get_many
//   (read-through) H key 1|0       a has() S key value     a set (or one element of a set_many),
//   acknowledged at end_ns D key -         a del (or one element of a del_many) F key value     a
//   fetcher call that produced `value`: a write whose interval is the fetch T tags any|all  an
//   invalidate_tags call (tags joined by ','): a removal of every key it covers X prefix -      an
//   invalidate_prefix call: a removal of every plain key starting with prefix N name -        a
//   rotation of namespace `name`: a removal of every key of the namespace
// node/thread name the recording thread (read-your-writes is checked per thread); ok = 0 marks a
// mutation whose call returned an error: it may or may not have taken effect, so its value may be
// read, but it supersedes nothing. Lines without the three trailing fields are from node "", thread
// -1, ok 1 (the older format). Timestamps are CLOCK_MONOTONIC in nanoseconds: on Linux one clock
// for every process of the host, so intervals recorded by different processes compare.
//
// Keys: "k0".."k7" are plain keys; key i always carries the tags tags_of(i) (sets and fetches
// alike), so the checker knows which keys a tag invalidation covers. "k8".."k11" (full mix only)
// live in the namespace "space" (cache.ns("space")), carry no tags, and are removed by its
// rotation.
//
// The checker (linearizability relaxed by a bound). Every write carries a unique value (writer id +
// counter), so a read names the write W_X that produced what it returned. A write W is *certainly
// newer* than W_X when it started after W_X was acknowledged: W.start > W_X.end + skew(W_X) (see
// "Clock skew"). A read R of value X is
//   - a violation when some certainly newer write W (a set, a fetch, a del, or a tag, prefix or
//     namespace invalidation covering the key; acknowledged, i.e. ok) has deadline(W, R) < R.start:
//     deadline is W.end + bound, extended by the fault windows (below). Writes concurrent with W_X
//     (within the bound or overlapping) make several values acceptable; only certainly newer ones
//     count. Also violations: a value no write produced (or a corrupt one), a value of another key,
//     a value whose write started only after the read ended.
//   - a resurrection when it is a violation and one of the writes that make it one is a removal (a
//     del or an invalidation): resurrections are a subset of violations.
//   - a read-your-writes violation when the same thread earlier made an acknowledged mutation W of
//     the key that is certainly newer than W_X (no bound: a thread must see its own write or
//     something newer at once). A has() that answers true counts likewise when every write that
//     could be the value present is certainly older than the thread's own removal.
// A miss (get_if_present "-", has() false) is never a violation: a cache may always forget.
// max_staleness is the largest R.start - W.end over every read that returned a superseded value
// (W the earliest-acknowledged certainly newer write), whether within the bound or not.
//
// Fault windows (fault_window, reported by the driver that injected them). A window [start, end]
// concerns one node (its Redis blackholed, or delayed beyond write_deadline) or every node (Redis
// killed and restarted; the bus connections killed, a window of zero length). When a write W
// acknowledged in [start - bound, end + settle] and a read R involve a node the window concerns
// (W's node, R's node, or every node), W's deadline is at least end + settle: the documented bound
// for that fault, i.e. the time by which the system has converged after the fault is over (the
// driver states settle per kind; chaos_run.hpp derives it from docs/design.md). Other pairs keep
// the plain bound, so a fault on one node does not excuse stale reads between two others.
//
// A fetch (F) made while a window concerning its node was open (until end + settle) supersedes
// nothing: a fill is a cached read, not an acknowledged write, and one that could not reach Redis
// may be dropped. Outside fault windows fills land in Redis and are announced like writes, so
// there they supersede as before.
//
// Clock skew. A clock_skew window [start, end] with skew_ns S says one node's clock was off by S
// during it. Versions order writes by real time only within the skew across hosts (design.md,
// "Versioned values"), and hybrid-logical-clock versions issued while a clock ran ahead stay ahead
// (and spread to every node that reads them) for up to S after it is set back. So for a write W_X
// acknowledged in [start - S, end + S], a newer write must have started more than S after W_X
// ended to count as certainly newer (skew(W_X) = S); every other write keeps skew 0. This widens
// the ordering relation only for writes inside a skew window, never the staleness bound.
//
// Thread-safety: pure functions and plain values.
#pragma once

#include <time.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace layercache::test::coherence {

// CLOCK_MONOTONIC in ns (the clock every process of the host shares).
inline std::int64_t mono_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

inline constexpr int key_count = 8;     // plain keys k0..k7
inline constexpr int ns_key_count = 4;  // k8..k11, in the namespace "space" (full mix)
inline constexpr int cold_key = key_count + ns_key_count;  // "c0" (full mix), see the header
inline constexpr int all_key_count = cold_key + 1;
inline constexpr const char* ns_name = "space";

inline std::string key_name(int i) { return i == cold_key ? "c0" : "k" + std::to_string(i); }
inline bool in_namespace(int i) { return i >= key_count && i < cold_key; }
// The index of key "k<i>" (or "c0"), or -1.
inline int key_index(std::string_view key) {
  if (key == "c0") return cold_key;
  if (key.size() < 2 || key[0] != 'k') return -1;
  int i = 0;
  for (char c : key.substr(1)) {
    if (c < '0' || c > '9') return -1;
    i = i * 10 + (c - '0');
  }
  return i < cold_key ? i : -1;
}

// Tags of key i: "t0"/"t1" by parity, "u0".."u2" by i % 3; namespace keys carry none; the cold key
// carries "c0", which no invalidation names (all_tags()).
inline std::vector<std::string> tags_of(int i) {
  if (in_namespace(i)) return {};
  if (i == cold_key) return {"c0"};
  return {"t" + std::to_string(i % 2), "u" + std::to_string(i % 3)};
}
inline const std::vector<std::string>& all_tags() {
  static const std::vector<std::string> tags{"t0", "t1", "u0", "u1", "u2"};
  return tags;
}

// Whether invalidating `tags` (any of them, or all of them) removes key i.
inline bool covered(int i, const std::vector<std::string>& tags, bool all) {
  const auto mine = tags_of(i);
  if (mine.empty()) return false;
  auto has = [&](const std::string& t) {
    return std::find(mine.begin(), mine.end(), t) != mine.end();
  };
  if (all) return std::all_of(tags.begin(), tags.end(), has);
  return std::any_of(tags.begin(), tags.end(), has);
}
// Whether invalidate_prefix(prefix) on the stack removes key i (namespace keys have another stack
// key, "@ns:...").
inline bool covered_by_prefix(int i, std::string_view prefix) {
  return !in_namespace(i) && key_name(i).rfind(prefix, 0) == 0;
}

struct op {
  char kind = 'G';      // G P M H S D F T X N (see the header)
  std::string subject;  // the key; for T the tags joined by ','; for X the prefix; for N the name
  std::string value;    // the value, "-" for none; for T "any" or "all"; for H "1" or "0"
  std::int64_t start_ns = 0;
  std::int64_t end_ns = 0;
  std::string node{};  // the recording node ("" = unknown: no read-your-writes check)
  int thread = -1;     // the recording thread of that node
  bool ok = true;      // false: a mutation that returned an error (may or may not have happened)
};

inline bool is_read(char kind) { return kind == 'G' || kind == 'P' || kind == 'M' || kind == 'H'; }
inline bool is_removal(char kind) {
  return kind == 'D' || kind == 'T' || kind == 'X' || kind == 'N';
}

inline std::string format(const op& o) {
  std::string out;
  out.reserve(64);
  out.push_back(o.kind);
  out.append(" ").append(o.subject).append(" ").append(o.value);
  out.append(" ").append(std::to_string(o.start_ns)).append(" ").append(std::to_string(o.end_ns));
  if (!o.node.empty()) {
    out.append(" ").append(o.node).append(" ").append(std::to_string(o.thread));
    out.append(o.ok ? " 1" : " 0");
  }
  return out;
}

inline std::optional<op> parse(const std::string& line) {
  std::istringstream in(line);
  std::string kind;
  op o;
  if (!(in >> kind >> o.subject >> o.value >> o.start_ns >> o.end_ns) || kind.size() != 1) {
    return std::nullopt;
  }
  o.kind = kind[0];
  if (std::string_view("GPMHSDFTXN").find(o.kind) == std::string_view::npos) return std::nullopt;
  std::string node;
  if (in >> node) {
    int ok = 1;
    if (!(in >> o.thread >> ok)) return std::nullopt;
    o.node = node;
    o.ok = ok != 0;
  }
  return o;
}

inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  out.push_back(cur);
  return out;
}

// ---- faults -------------------------------------------------------------------------------------

enum class fault_kind : unsigned char {
  redis_blackhole,      // one node's Redis traffic discarded (proxy), connections reset at the end
  redis_write_timeout,  // one node's Redis traffic delayed beyond its write_deadline (proxy)
  redis_restart,        // redis-server SIGKILLed and restarted on the same port (every node)
  bus_kill,             // CLIENT KILL TYPE pubsub (every node; a window of zero length)
  clock_skew,           // one node's clock (stack, Redis and disk layers) off by skew_ns
};
inline constexpr fault_kind all_fault_kinds[] = {
    fault_kind::redis_blackhole, fault_kind::redis_write_timeout, fault_kind::redis_restart,
    fault_kind::bus_kill, fault_kind::clock_skew};

inline const char* to_string(fault_kind k) {
  switch (k) {
    case fault_kind::redis_blackhole:
      return "redis_blackhole";
    case fault_kind::redis_write_timeout:
      return "redis_write_timeout";
    case fault_kind::redis_restart:
      return "redis_restart";
    case fault_kind::bus_kill:
      return "bus_kill";
    case fault_kind::clock_skew:
      return "clock_skew";
  }
  return "?";
}

struct fault_window {
  fault_kind kind = fault_kind::bus_kill;
  std::string node{};  // the node concerned; "" = every node
  std::int64_t start_ns = 0;
  std::int64_t end_ns = 0;
  std::int64_t settle_ns = 0;  // staleness faults: converged this long after end_ns
  std::int64_t skew_ns = 0;    // clock_skew: how far the clock was off (absolute value)
};

struct check_config {
  std::int64_t bound_ns = 0;  // the bound without faults
  std::vector<fault_window> faults{};
};

struct check_report {
  std::size_t reads = 0;              // G, P, M and H operations
  std::size_t value_reads = 0;        // reads that returned a value (H: true)
  std::size_t superseded_reads = 0;   // reads that returned a value a newer write had replaced
  std::size_t writes = 0;             // S, D, F operations plus T, X, N per covered key
  std::size_t violations = 0;         // reads older than the bound (resurrections included)
  std::size_t resurrections = 0;      // violations where a removal is among the newer writes
  std::size_t ryw_violations = 0;     // a thread not seeing its own mutation
  std::int64_t max_staleness_ns = 0;  // see the header
  std::vector<std::string> examples;  // the first violations of each sort, described
  // Every counted failure by "<sort>/<read kind>/<faults>": sort violation, resurrection or ryw;
  // faults the kinds of the fault windows (start to end, settle not included) running while the
  // write the read missed should have propagated — [start, end + bound] of the superseding write
  // (ryw: from the thread's own mutation to the read) — joined by '+', or "none".
  std::map<std::string, std::size_t> by_context;
};

namespace detail {

class checker {
 public:
  checker(const std::vector<op>& ops, const check_config& config) : ops_(ops), config_(config) {
    for (const auto& o : ops) t0_ = std::min(t0_, o.start_ns);
    for (const auto& f : config.faults) {
      if (f.kind == fault_kind::clock_skew) {
        skews_.push_back(&f);
      } else {
        staleness_faults_.push_back(&f);
      }
    }
  }

  check_report run() {
    index_writes();
    for (const auto& r : ops_) {
      if (!is_read(r.kind)) continue;
      ++report_.reads;
      if (r.value == "-" || (r.kind == 'H' && r.value == "0")) continue;
      ++report_.value_reads;
      if (r.kind == 'H') {
        check_has(r);
      } else {
        check_read(r);
      }
    }
    check_read_your_writes();
    return std::move(report_);
  }

 private:
  struct key_writes {
    std::vector<const op*> by_start;   // acknowledged writes (they supersede), by start
    std::vector<const op*> producers;  // every set and fetch (they may be read), by start
  };
  struct stale_result {
    bool superseded = false;
    bool violation = false;
    bool by_removal = false;
    std::int64_t min_end = std::numeric_limits<std::int64_t>::max();
    const op* newer = nullptr;  // a write that makes it a violation (a removal if there is one)
  };

  std::string ms(std::int64_t ns) const {
    std::ostringstream s;
    s.setf(std::ios::fixed);
    s.precision(3);
    s << static_cast<double>(ns - t0_) / 1e6;
    return s.str();
  }
  std::string describe(const op& o) const {
    std::string out = std::string(1, o.kind) + " " + o.subject + " " + o.value + " [" +
                      ms(o.start_ns) + ", " + ms(o.end_ns) + "] ms";
    if (!o.node.empty()) out += " by " + o.node + "." + std::to_string(o.thread);
    if (!o.ok) out += " (failed)";
    return out;
  }
  void example(std::size_t& per_sort, std::string what) {
    if (per_sort++ < 5) report_.examples.push_back(std::move(what));
  }
  void violation(std::string what) {
    ++report_.violations;
    example(violation_examples_, "violation: " + std::move(what));
  }
  // The fault kinds in effect at some point of [from, to] (see check_report::by_context).
  std::string faults_during(std::int64_t from, std::int64_t to) const {
    std::vector<std::string> kinds;
    for (const auto& f : config_.faults) {
      if (f.start_ns > to || f.end_ns < from) continue;
      const std::string k = to_string(f.kind);
      if (std::find(kinds.begin(), kinds.end(), k) == kinds.end()) kinds.push_back(k);
    }
    if (kinds.empty()) return "none";
    std::sort(kinds.begin(), kinds.end());
    std::string out = kinds[0];
    for (std::size_t i = 1; i < kinds.size(); ++i) out += "+" + kinds[i];
    return out;
  }
  void attribute(const char* sort, const op& r, std::int64_t from, std::int64_t to) {
    ++report_.by_context[std::string(sort) + "/" + r.kind + "/" + faults_during(from, to)];
  }

  void index_writes() {
    expanded_.reserve(ops_.size());
    for (const auto& o : ops_) {
      if (o.kind != 'T' && o.kind != 'X' && o.kind != 'N') continue;
      const auto tags = split(o.subject, ',');
      for (int i = 0; i < all_key_count; ++i) {
        const bool hit = o.kind == 'T'   ? covered(i, tags, o.value == "all")
                         : o.kind == 'X' ? covered_by_prefix(i, o.subject)
                                         : in_namespace(i) && o.subject == ns_name;
        if (!hit) continue;
        op e = o;
        e.subject = key_name(i);
        e.value = o.subject + "/" + o.value;
        expanded_.push_back(std::move(e));
      }
    }
    auto add = [&](const op& o) {
      auto& kw = writes_[o.subject];
      ++report_.writes;
      if (o.ok && !(o.kind == 'F' && fill_may_be_lost(o))) kw.by_start.push_back(&o);
      if (o.kind == 'S' || o.kind == 'F') kw.producers.push_back(&o);
    };
    for (const auto& o : ops_) {
      if (o.kind == 'S' || o.kind == 'D' || o.kind == 'F') {
        add(o);
        if (o.kind != 'D' && !producer_.emplace(o.value, &o).second) {
          violation("value written twice: " + describe(o));
        }
      }
    }
    for (const auto& o : expanded_) add(o);
    auto by_start = [](const op* a, const op* b) { return a->start_ns < b->start_ns; };
    for (auto& [key, kw] : writes_) {
      std::sort(kw.by_start.begin(), kw.by_start.end(), by_start);
      std::sort(kw.producers.begin(), kw.producers.end(), by_start);
    }
  }

  // A fill made while a fault cut its node off from Redis may never get there: it is a cached
  // read, not a write anyone acknowledged, and losing it is allowed (a cache may forget). Such a
  // fill may be read but supersedes nothing.
  bool fill_may_be_lost(const op& f) const {
    for (const fault_window* w : staleness_faults_) {
      if (!w->node.empty() && w->node != f.node) continue;
      if (f.end_ns >= w->start_ns && f.start_ns <= w->end_ns + w->settle_ns) return true;
    }
    return false;
  }

  // How much later than w's acknowledgement a write must start to be certainly newer.
  std::int64_t skew_of(const op& w) const {
    std::int64_t s = 0;
    for (const fault_window* f : skews_) {
      if (w.end_ns >= f->start_ns - f->skew_ns && w.end_ns <= f->end_ns + f->skew_ns) {
        s = std::max(s, f->skew_ns);
      }
    }
    return s;
  }

  // When reader r must no longer see what w replaced (see the header).
  std::int64_t deadline(const op& w, const op& r) const {
    std::int64_t d = w.end_ns + config_.bound_ns;
    for (const fault_window* f : staleness_faults_) {
      if (!f->node.empty() && f->node != w.node && f->node != r.node) continue;
      if (w.end_ns < f->start_ns - config_.bound_ns || w.end_ns > f->end_ns + f->settle_ns)
        continue;
      d = std::max(d, f->end_ns + f->settle_ns);
    }
    return d;
  }

  // Whether reading the value of `x` in `r` is older than the bound allows.
  stale_result staleness(const op& x, const op& r) const {
    stale_result out;
    const auto it = writes_.find(r.subject);
    if (it == writes_.end()) return out;
    const auto& ws = it->second.by_start;
    const std::int64_t after = x.end_ns + skew_of(x);
    auto i = std::upper_bound(ws.begin(), ws.end(), after,
                              [](std::int64_t t, const op* o) { return t < o->start_ns; });
    for (; i != ws.end(); ++i) {
      const op& w = **i;
      if (w.start_ns >= r.start_ns) break;  // acknowledged after r started, at the earliest
      if (w.end_ns >= r.start_ns) continue;
      out.superseded = true;
      out.min_end = std::min(out.min_end, w.end_ns);
      if (deadline(w, r) >= r.start_ns) continue;
      if (!out.violation || (!out.by_removal && is_removal(w.kind))) out.newer = &w;
      out.violation = true;
      if (is_removal(w.kind)) {
        out.by_removal = true;
        break;
      }
    }
    return out;
  }

  void count_stale(const op& r, const op& x, const stale_result& st) {
    if (!st.superseded) return;
    ++report_.superseded_reads;
    report_.max_staleness_ns = std::max(report_.max_staleness_ns, r.start_ns - st.min_end);
    if (!st.violation) return;
    const std::string what = describe(r) + " returned the value of " + describe(x) +
                             ", superseded by " + describe(*st.newer) + " acknowledged " +
                             std::to_string((r.start_ns - st.newer->end_ns) / 1'000'000) +
                             " ms before the read started";
    attribute("violation", r, st.newer->start_ns, st.newer->end_ns + config_.bound_ns);
    if (st.by_removal) {
      attribute("resurrection", r, st.newer->start_ns, st.newer->end_ns + config_.bound_ns);
      ++report_.resurrections;
      example(resurrection_examples_, "resurrection: " + what);
    }
    violation("stale read: " + what);
  }

  void check_read(const op& r) {
    const auto p = producer_.find(r.value);
    if (p == producer_.end()) {
      violation("read returned a value no write produced: " + describe(r));
      return;
    }
    const op& w = *p->second;
    if (w.subject != r.subject) {
      violation("read returned another key's value: " + describe(r) + " <- " + describe(w));
      return;
    }
    if (w.start_ns > r.end_ns) {
      violation("read returned a value written only after it: " + describe(r) + " <- " +
                describe(w));
      return;
    }
    count_stale(r, w, staleness(w, r));
  }

  // has() == true: some value must be acceptable. The latest writes are tried first.
  void check_has(const op& r) {
    const auto it = writes_.find(r.subject);
    if (it == writes_.end() || it->second.producers.empty()) {
      violation("has() is true for a key nobody wrote: " + describe(r));
      return;
    }
    const auto& ps = it->second.producers;
    const op* latest = nullptr;
    stale_result latest_st;
    for (auto i = ps.rbegin(); i != ps.rend(); ++i) {
      const op& x = **i;
      if (x.start_ns > r.end_ns) continue;
      const stale_result st = staleness(x, r);
      if (!st.violation) return;
      if (!latest) {
        latest = &x;
        latest_st = st;
      }
    }
    if (!latest) {
      violation("has() is true for a key nobody wrote yet: " + describe(r));
      return;
    }
    count_stale(r, *latest, latest_st);
  }

  // Per thread, in its own order: every read against the thread's last acknowledged mutation.
  void check_read_your_writes() {
    std::map<std::pair<std::string, int>, std::vector<const op*>> threads;
    for (const auto& o : ops_) {
      if (!o.node.empty() && (is_read(o.kind) || o.kind == 'S' || o.kind == 'D')) {
        threads[{o.node, o.thread}].push_back(&o);
      }
    }
    for (const auto& o : expanded_) {
      if (!o.node.empty()) threads[{o.node, o.thread}].push_back(&o);
    }
    for (auto& [who, list] : threads) {
      std::stable_sort(list.begin(), list.end(),
                       [](const op* a, const op* b) { return a->start_ns < b->start_ns; });
      std::map<std::string, const op*> mine;  // key -> the thread's last acknowledged mutation
      for (const op* o : list) {
        if (!is_read(o->kind)) {
          if (o->ok) mine[o->subject] = o;
          continue;
        }
        const auto m = mine.find(o->subject);
        if (m == mine.end() || m->second->end_ns >= o->start_ns) continue;
        const op& own = *m->second;
        if (o->value == "-" || o->value == "0") continue;  // a miss: see the header
        if (o->kind == 'H') {
          check_has_after_own(*o, own);
          continue;
        }
        const auto p = producer_.find(o->value);
        if (p == producer_.end() || p->second == &own) continue;  // counted above, or its own
        const op& x = *p->second;
        if (own.start_ns > x.end_ns + skew_of(x)) ryw_violation(*o, x, own);
      }
    }
  }

  void check_has_after_own(const op& r, const op& own) {
    if (!is_removal(own.kind)) return;  // its own set is present: fine
    const auto it = writes_.find(r.subject);
    if (it != writes_.end()) {
      for (const op* x : it->second.producers) {
        if (x->start_ns <= r.end_ns && own.start_ns <= x->end_ns + skew_of(*x)) return;
      }
    }
    ++report_.ryw_violations;
    attribute("ryw", r, own.start_ns, r.end_ns);
    example(ryw_examples_, "read-your-writes: " + describe(r) + " after its own " + describe(own));
  }

  void ryw_violation(const op& r, const op& x, const op& own) {
    ++report_.ryw_violations;
    attribute("ryw", r, own.start_ns, r.end_ns);
    example(ryw_examples_, "read-your-writes: " + describe(r) + " returned the value of " +
                               describe(x) + ", older than its own " + describe(own));
  }

  const std::vector<op>& ops_;
  const check_config& config_;
  std::int64_t t0_ = std::numeric_limits<std::int64_t>::max();
  std::vector<const fault_window*> skews_, staleness_faults_;
  std::vector<op> expanded_;  // T, X and N operations, one per covered key
  std::map<std::string, key_writes> writes_;
  std::unordered_map<std::string, const op*> producer_;
  check_report report_;
  std::size_t violation_examples_ = 0, resurrection_examples_ = 0, ryw_examples_ = 0;
};

}  // namespace detail

// Checks the merged history of every node (see the header).
inline check_report check_history(const std::vector<op>& ops, const check_config& config) {
  return detail::checker(ops, config).run();
}
inline check_report check_history(const std::vector<op>& ops, std::int64_t bound_ns) {
  return check_history(ops, check_config{.bound_ns = bound_ns});
}

}  // namespace layercache::test::coherence
