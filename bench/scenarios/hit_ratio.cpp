// hit-ratio: replays real access traces through the memory layer and compares its hit ratio with
// Caffeine 2.6.2 (W-TinyLFU) and exact LRU at the same capacities (issue #11's table).
//
// Each trace (formats in the traces' README) is replayed through memory_layer with default options
// except max_entries and the policy: a lookup per request; a miss inserts the key (the value is one
// shared object, so the replay measures the policy, not the allocator). Every row is also replayed
// with one shard, so the cost of splitting max_entries across shards is visible per trace.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/timing.hpp"
#include "layercache/detail/hash.hpp"
#include "layercache/memory_layer.hpp"
#include "scenarios/scenario.hpp"

namespace layercache::bench {
namespace {

struct hit_ratio_args {
  std::string traces;            // directory; empty = $LAYERCACHE_TRACES or ../shared/traces
  std::size_t max_requests = 0;  // per trace; 0 = all
  bool one_shard = true;         // also replay each row with shards = 1
};

enum class trace_format { lirs_text_gz, cache2k_xz };

// One reference row of issue #11: Caffeine 2.6.2 and exact LRU hit ratios (%), measured there.
struct reference {
  std::size_t size;
  double caffeine;
  double exact_lru;
};

struct trace_spec {
  const char* name;
  const char* file;
  trace_format format;
  std::vector<reference> rows;
};

const std::vector<trace_spec>& specs() {
  static const std::vector<trace_spec> all = {
      {"gli",
       "gli.trace.gz",
       trace_format::lirs_text_gz,
       {{250, 14.92, 0.91}, {500, 28.46, 0.95}, {1000, 40.56, 11.21}, {2000, 57.96, 57.41}}},
      {"multi2",
       "multi2.trace.gz",
       trace_format::lirs_text_gz,
       {{500, 49.96, 35.98}, {1000, 57.94, 47.80}, {2000, 69.61, 49.00}}},
      {"sprite",
       "sprite.trace.gz",
       trace_format::lirs_text_gz,
       {{100, 31.44, 21.58}, {200, 49.34, 39.88}, {500, 74.58, 78.30}}},
      {"loop",
       "loop.trace.gz",
       trace_format::lirs_text_gz,
       {{256, 24.67, 0.0}, {512, 49.86, 0.0}, {1024, 99.80, 99.80}}},
      {"web07",
       "web07.trace.xz",
       trace_format::cache2k_xz,
       {{1000, 52.24, 50.41}, {5000, 62.77, 62.67}, {10000, 68.70, 69.00}}},
      {"web12",
       "web12.trace.xz",
       trace_format::cache2k_xz,
       {{1000, 67.38, 64.73}, {5000, 80.59, 80.70}, {10000, 84.84, 84.82}}},
  };
  return all;
}

// A trace as indexes into its distinct keys, with each key's string and hash computed once.
struct trace {
  std::vector<std::string> keys;
  std::vector<std::uint64_t> hashes;
  std::vector<std::uint32_t> requests;
};

// Runs `command` and returns its standard output. Decompressing through gzip/xz keeps the bench
// free of zlib/liblzma.
std::string read_command(const std::string& command) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot run: " + command);
  std::string out;
  char buf[1 << 16];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  if (::pclose(pipe) != 0) throw std::runtime_error("failed: " + command);
  return out;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

trace load(const std::string& dir, const trace_spec& spec, std::size_t max_requests) {
  const std::string path = dir + "/" + spec.file;
  const bool text = spec.format == trace_format::lirs_text_gz;
  const std::string raw = read_command((text ? "gzip -dc " : "xz -dc ") + shell_quote(path));
  std::vector<std::int64_t> ids;
  if (text) {
    // One integer per line; blank lines, "*" breakpoints and \r line endings are skipped.
    std::int64_t value = 0;
    bool in_number = false;
    for (char c : raw) {
      if (c >= '0' && c <= '9') {
        value = value * 10 + (c - '0');
        in_number = true;
      } else if (c == '\n') {
        if (in_number) ids.push_back(value);
        value = 0;
        in_number = false;
      }
    }
    if (in_number) ids.push_back(value);
  } else {
    if (raw.size() % 4 != 0) throw std::runtime_error(path + ": size is not a multiple of 4");
    for (std::size_t i = 0; i < raw.size(); i += 4) {
      const auto b = [&](std::size_t k) {
        return static_cast<std::uint32_t>(static_cast<unsigned char>(raw[i + k]));
      };
      ids.push_back(static_cast<std::int32_t>(b(0) << 24 | b(1) << 16 | b(2) << 8 | b(3)));
    }
  }
  if (max_requests != 0 && ids.size() > max_requests) ids.resize(max_requests);
  trace t;
  std::unordered_map<std::int64_t, std::uint32_t> index;
  t.requests.reserve(ids.size());
  for (std::int64_t id : ids) {
    auto [it, fresh] = index.try_emplace(id, static_cast<std::uint32_t>(t.keys.size()));
    if (fresh) {
      t.keys.push_back(std::to_string(id));
      t.hashes.push_back(detail::hash_key(t.keys.back()));
    }
    t.requests.push_back(it->second);
  }
  return t;
}

// Hit ratio in % of one replay.
double replay(const trace& t, std::size_t size, eviction policy, std::size_t shards) {
  auto l1 = memory_layer::create({.max_entries = size, .shards = shards, .policy = policy});
  static const std::shared_ptr<const void> value = std::make_shared<const int>(0);
  memory_layer::hit out;
  std::size_t hits = 0;
  for (std::uint32_t r : t.requests) {
    if (l1->find(t.keys[r], t.hashes[r], out)) {
      ++hits;
    } else {
      l1->insert(t.keys[r], t.hashes[r], value, nullptr, false, 0, 0);
    }
  }
  return 100.0 * static_cast<double>(hits) / static_cast<double>(t.requests.size());
}

// The shard count memory_layer picks by default (mirrors its constructor, for the report only).
std::size_t default_shards(std::size_t max_entries) {
  std::size_t n = std::bit_floor(std::clamp<std::size_t>(max_entries / 64, 1, 64));
  return std::min(n, std::bit_floor(max_entries));
}

const char* name_of(eviction e) {
  switch (e) {
    case eviction::lru:
      return "lru";
    case eviction::segmented_lru:
      return "segmented_lru";
    case eviction::w_tinylfu:
      return "w_tinylfu";
  }
  return "?";
}

void run(const common_args& args, const hit_ratio_args& a) {
  std::string dir = a.traces;
  if (dir.empty()) {
    const char* env = std::getenv("LAYERCACHE_TRACES");
    dir = env != nullptr ? env : "../shared/traces";
  }
  const std::vector<eviction> policies = {eviction::lru, eviction::segmented_lru,
                                          eviction::w_tinylfu};
  std::vector<std::vector<std::string>> table;
  nlohmann::json rows = nlohmann::json::array();
  std::map<std::string, double> log_sum;
  std::map<std::string, int> meeting;
  std::size_t row_count = 0;
  for (const trace_spec& spec : specs()) {
    const trace t = load(dir, spec, a.max_requests);
    for (const reference& ref : spec.rows) {
      ++row_count;
      const double target = std::max(ref.caffeine, ref.exact_lru) - 1.0;
      for (eviction p : policies) {
        const double ours = replay(t, ref.size, p, 0);
        const double one = a.one_shard ? replay(t, ref.size, p, 1) : std::nan("");
        const double vs = ours / ref.caffeine;
        const bool meets = ours >= target;
        log_sum[name_of(p)] += std::log(vs);
        meeting[name_of(p)] += meets ? 1 : 0;
        table.push_back({spec.name, std::to_string(ref.size), name_of(p),
                         std::to_string(default_shards(ref.size)), fmt_num(ours, 2),
                         a.one_shard ? fmt_num(one, 2) : "-", fmt_num(ref.caffeine, 2),
                         fmt_num(ref.exact_lru, 2), fmt_num(vs, 3), fmt_num(target, 2),
                         meets ? "yes" : "NO"});
        nlohmann::json row = {{"trace", spec.name},
                              {"requests", t.requests.size()},
                              {"size", ref.size},
                              {"policy", name_of(p)},
                              {"shards", default_shards(ref.size)},
                              {"hit_ratio", ours},
                              {"caffeine_2_6_2", ref.caffeine},
                              {"exact_lru", ref.exact_lru},
                              {"vs_caffeine", vs},
                              {"target", target},
                              {"meets_target", meets}};
        if (a.one_shard) row["hit_ratio_one_shard"] = one;
        rows.push_back(row);
      }
    }
  }
  std::printf("Hit ratio %% replaying traces from %s (default options but max_entries)\n\n",
              dir.c_str());
  print_table({"trace", "size", "policy", "shards", "hit %", "1 shard %", "Caffeine %", "LRU %",
               "vs Caffeine", "target %", "meets"},
              table);
  nlohmann::json geomean = nlohmann::json::object();
  nlohmann::json met = nlohmann::json::object();
  std::printf("\n");
  for (eviction p : policies) {
    const double g = std::exp(log_sum[name_of(p)] / static_cast<double>(row_count));
    geomean[name_of(p)] = g;
    met[name_of(p)] = meeting[name_of(p)];
    std::printf(
        "%-14s geometric mean vs Caffeine %.3f (target >= 1.0); rows meeting target %d/%zu\n",
        name_of(p), g, meeting[name_of(p)], row_count);
  }
  emit_json(args, {{"rows", rows},
                   {"geomean_vs_caffeine", geomean},
                   {"rows_meeting_target", met},
                   {"row_count", row_count}});
}

}  // namespace

void register_hit_ratio(CLI::App& app, common_args& args) {
  static hit_ratio_args storage;  // CLI11 binds options to it for the program's lifetime
  hit_ratio_args* a = &storage;
  auto* sub = app.add_subcommand(
      "hit-ratio", "replay access traces through the memory layer; compare with Caffeine and LRU");
  sub->add_option("--traces", a->traces,
                  "trace directory (default: $LAYERCACHE_TRACES, else ../shared/traces)");
  sub->add_option("--max-requests", a->max_requests,
                  "replay at most N requests per trace; 0 = all");
  sub->add_flag("!--no-one-shard", a->one_shard, "skip the one-shard replay of every row");
  sub->callback([&args, a] { run(args, *a); });
}

}  // namespace layercache::bench
