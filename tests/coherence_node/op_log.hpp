// op_log.hpp — the history a coherence node records during a consistency run, and the checker that
// the test runs over the merged histories of every node
// (tests/integration/redis_coherence_test.cpp). Shared by the helper executable (the recorder) and
// the test (the checker).
//
// One operation per line: "<kind> <subject> <value> <start_ns> <end_ns>"
//   G key value|-   a get (read-through); "-" = not found (never, with a fetcher that always
//   answers) P key value|-   a get_if_present S key value     a set (or one element of a set_many),
//   acknowledged at end_ns D key -         a del (or one element of a del_many) F key value     a
//   fetcher call that produced `value`: a write whose interval is the fetch T tags any|all  an
//   invalidate_tags call (tags joined by ','): a removal of every key it covers
// Timestamps are CLOCK_MONOTONIC in nanoseconds: on Linux one clock for every process of the host,
// so intervals recorded by different processes compare.
//
// Keys are "k0".."k<key_count-1>"; key i always carries the tags tags_of(i) (sets and fetches
// alike), so the checker knows which keys a tag invalidation covers.
//
// The checker (bounded staleness). A read R that returned value X, written by W_X (a set or a
// fetch), is stale when some write W of the same key — a set, a del, a fetch, or a tag
// invalidation covering the key — started after W_X was acknowledged (W.start > W_X.end, so W is
// certainly newer than X) and was acknowledged more than `bound` before R started
// (W.end + bound < R.start). A miss is never a violation (a cache may always forget). Also
// violations: a value no write produced, a value of another key, a value whose write started only
// after the read ended. max_staleness is the largest R.start - W.end over every read that returned
// a superseded value, whether within the bound or not: the measured staleness.
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

inline constexpr int key_count = 8;

inline std::string key_name(int i) { return "k" + std::to_string(i); }

// Tags of key i: "t0"/"t1" by parity, "u0".."u2" by i % 3.
inline std::vector<std::string> tags_of(int i) {
  return {"t" + std::to_string(i % 2), "u" + std::to_string(i % 3)};
}
inline const std::vector<std::string>& all_tags() {
  static const std::vector<std::string> tags{"t0", "t1", "u0", "u1", "u2"};
  return tags;
}

// Whether invalidating `tags` (any of them, or all of them) removes key i.
inline bool covered(int i, const std::vector<std::string>& tags, bool all) {
  const auto mine = tags_of(i);
  auto has = [&](const std::string& t) {
    return std::find(mine.begin(), mine.end(), t) != mine.end();
  };
  if (all) return std::all_of(tags.begin(), tags.end(), has);
  return std::any_of(tags.begin(), tags.end(), has);
}

struct op {
  char kind = 'G';      // G P S D F T (see the header)
  std::string subject;  // the key, or for T the tags joined by ','
  std::string value;    // the value, "-" for none; for T "any" or "all"
  std::int64_t start_ns = 0;
  std::int64_t end_ns = 0;
};

inline std::string format(const op& o) {
  std::string out;
  out.reserve(64);
  out.push_back(o.kind);
  out.append(" ").append(o.subject).append(" ").append(o.value);
  out.append(" ").append(std::to_string(o.start_ns)).append(" ").append(std::to_string(o.end_ns));
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
  if (std::string_view("GPSDFT").find(o.kind) == std::string_view::npos) return std::nullopt;
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

struct check_report {
  std::size_t reads = 0;             // G and P operations
  std::size_t value_reads = 0;       // reads that returned a value
  std::size_t superseded_reads = 0;  // reads that returned a value a newer write had replaced
  std::size_t writes = 0;            // S, D, F operations plus T per covered key
  std::size_t violations = 0;
  std::int64_t max_staleness_ns = 0;  // see the header
  std::vector<std::string> examples;  // the first violations, described
};

// Checks the merged history of every node against `bound_ns` (see the header).
inline check_report check_history(const std::vector<op>& ops, std::int64_t bound_ns) {
  check_report report;
  std::int64_t t0 = std::numeric_limits<std::int64_t>::max();
  for (const auto& o : ops) t0 = std::min(t0, o.start_ns);
  auto ms = [t0](std::int64_t ns) {
    std::ostringstream s;
    s.setf(std::ios::fixed);
    s.precision(3);
    s << static_cast<double>(ns - t0) / 1e6;
    return s.str();
  };
  auto describe = [&](const op& o) {
    return std::string(1, o.kind) + " " + o.subject + " " + o.value + " [" + ms(o.start_ns) + ", " +
           ms(o.end_ns) + "] ms";
  };
  auto violation = [&](std::string what) {
    ++report.violations;
    if (report.examples.size() < 10) report.examples.push_back(std::move(what));
  };

  // Writes per key, and the write that produced each value.
  std::map<std::string, std::vector<const op*>> writes;
  std::vector<op> expanded;  // T operations, one per covered key
  expanded.reserve(ops.size());
  std::unordered_map<std::string, const op*> producer;
  for (const auto& o : ops) {
    if (o.kind == 'T') {
      const auto tags = split(o.subject, ',');
      for (int i = 0; i < key_count; ++i) {
        if (!covered(i, tags, o.value == "all")) continue;
        expanded.push_back({'T', key_name(i), o.subject + "/" + o.value, o.start_ns, o.end_ns});
      }
    }
  }
  for (const auto& o : ops) {
    if (o.kind == 'S' || o.kind == 'D' || o.kind == 'F') {
      writes[o.subject].push_back(&o);
      if (o.kind != 'D' && !producer.emplace(o.value, &o).second) {
        violation("value written twice: " + describe(o));
      }
    }
  }
  for (const auto& o : expanded) writes[o.subject].push_back(&o);

  // Per key: writes by start, and the suffix minimum of their ends (the earliest acknowledgement
  // among the writes starting at or after each position).
  struct key_index {
    std::vector<const op*> by_start;
    std::vector<const op*> min_end_from;
  };
  std::map<std::string, key_index> index;
  for (auto& [key, ws] : writes) {
    report.writes += ws.size();
    auto& ix = index[key];
    ix.by_start = ws;
    std::sort(ix.by_start.begin(), ix.by_start.end(),
              [](const op* a, const op* b) { return a->start_ns < b->start_ns; });
    ix.min_end_from.assign(ix.by_start.size(), nullptr);
    const op* best = nullptr;
    for (std::size_t i = ix.by_start.size(); i-- > 0;) {
      if (!best || ix.by_start[i]->end_ns < best->end_ns) best = ix.by_start[i];
      ix.min_end_from[i] = best;
    }
  }

  for (const auto& r : ops) {
    if (r.kind != 'G' && r.kind != 'P') continue;
    ++report.reads;
    if (r.value == "-") continue;
    ++report.value_reads;
    const auto p = producer.find(r.value);
    if (p == producer.end()) {
      violation("read returned a value no write produced: " + describe(r));
      continue;
    }
    const op& w = *p->second;
    if (w.subject != r.subject) {
      violation("read returned another key's value: " + describe(r) + " <- " + describe(w));
      continue;
    }
    if (w.start_ns > r.end_ns) {
      violation("read returned a value written only after it: " + describe(r) + " <- " +
                describe(w));
      continue;
    }
    const auto& ix = index[r.subject];
    const auto first_newer =
        std::upper_bound(ix.by_start.begin(), ix.by_start.end(), w.end_ns,
                         [](std::int64_t t, const op* o) { return t < o->start_ns; });
    if (first_newer == ix.by_start.end()) continue;
    const op& newer = *ix.min_end_from[static_cast<std::size_t>(first_newer - ix.by_start.begin())];
    const std::int64_t staleness = r.start_ns - newer.end_ns;
    if (staleness <= 0) continue;
    ++report.superseded_reads;
    report.max_staleness_ns = std::max(report.max_staleness_ns, staleness);
    if (staleness > bound_ns) {
      violation("stale read: " + describe(r) + " returned the value of " + describe(w) +
                ", superseded by " + describe(newer) + " acknowledged " +
                std::to_string(staleness / 1'000'000) + " ms before the read started");
    }
  }
  return report;
}

}  // namespace layercache::test::coherence
