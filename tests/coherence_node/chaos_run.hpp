// chaos_run.hpp — one multi-process consistency run under a fault schedule, shared by the CI test
// (tests/integration/redis_coherence_test.cpp) and the benchmark (`layercache-bench consistency`).
// Header-only (the test and the benchmark link tests/support, not each other).
//
// What it does: starts a private redis-server (AOF with appendfsync always, so a SIGKILL loses no
// acknowledged write: a restart is an outage, not data loss — without persistence a restart forgets
// every tombstone and no cache can keep "no resurrection"), one tcp_fault_proxy per node, and
// `nodes` layercache_coherence_node processes in `chaos --mix full` mode (L1 + Redis through its
// proxy + a disk layer in a private directory), raises their start barrier, and then, on the
// calling thread until shortly before the run ends, injects faults one after another:
//
//   redis_blackhole      node (c % nodes): its proxy discards everything for blackhole_for; at the
//                        end every connection through it is reset (bytes were lost, so the TCP
//                        sessions are unusable: a healed partition whose sessions died)
//   redis_write_timeout  node ((c + 1) % nodes): its proxy delays each direction by `delay`, beyond
//                        its write_deadline (and read_deadline), for delay_for
//   redis_restart        redis-server SIGKILLed, down for restart_down, started on the same port
//   bus_kill             CLIENT KILL TYPE pubsub (every node's bus subscription)
//   clock_skew           the last node's clock is off by +skew, then -skew in the next cycle, for
//                        skew_for (the node polls a file: Redis may be down meanwhile)
//
// with fault_gap between faults (c counts cycles). Then it waits for the nodes, merges their
// histories and runs the checker (op_log.hpp) with the bound and one fault_window per injection.
//
// Bounds (docs/design.md): `bound` (500 ms, the consistency test's bound, "Staleness bound") with
// no fault. For each fault window, writes and reads involving the node(s) concerned get until
// end + settle, where settle is what design.md documents for recovering from that fault:
//   bus_kill:            reconnect_max (1 s, the subscriber's backoff cap) + bus_down_l1_ttl +
//                        bound (L1 is dropped on resubscription; entries stored meanwhile live
//                        bus_down_l1_ttl)
//   redis_blackhole,
//   redis_restart:       reconnect_max + breaker_open_for (1 s) + write_deadline (one retry of a
//                        failed write) + bus_down_l1_ttl + bound
//   redis_write_timeout: 2 x delay (the delay line drains) + breaker_open_for + write_deadline +
//                        bus_down_l1_ttl + bound
//   clock_skew:          no staleness allowance; writes within `skew` of a write acknowledged in
//                        [start - skew, end + skew] count as concurrent (op_log.hpp, "Clock skew").
// Blackholes here are shorter than the silent-connection detection (3 x health interval = 3 s), so
// the documented "detection + bus_down_l1_ttl while it lasts" never exceeds end + settle.
//
// Thread-safety: run_chaos() is one blocking call; the redis-server it starts dies with the calling
// thread (PR_SET_PDEATHSIG), so call it from a thread that outlives the run.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "coherence_node/op_log.hpp"
#include "support/await.hpp"
#include "support/child_process.hpp"
#include "support/redis_server.hpp"
#include "support/tcp_fault_proxy.hpp"

namespace layercache::test::coherence {

struct chaos_options {
  std::string node_program;   // layercache_coherence_node
  std::filesystem::path dir;  // work directory: histories, disk layers, skew files
  int nodes = 3;
  int threads = 2;  // per node
  std::chrono::milliseconds duration{8000};
  bool coordinate = true;  // false: --coordinate 0, the checker's negative control
  bool faults = true;
  bool disk = true;
  std::uint64_t seed = 1;
  std::size_t max_value_bytes = 256 * 1024;
  // The nodes' settings and the documented bounds derived from them (see the header).
  std::chrono::milliseconds bound{500};
  std::chrono::milliseconds bus_down_l1_ttl{200};
  std::chrono::milliseconds read_deadline{100};
  std::chrono::milliseconds write_deadline{250};
  std::chrono::milliseconds breaker_open_for{1000};  // the redis_layer default
  std::chrono::milliseconds reconnect_max{1000};     // the client and subscriber default
  // The schedule.
  std::chrono::milliseconds warmup{500};
  std::chrono::milliseconds fault_gap{400};
  std::chrono::milliseconds blackhole_for{800};
  std::chrono::milliseconds delay{300};  // each way: a round trip of 600 ms > write_deadline
  std::chrono::milliseconds delay_for{800};
  std::chrono::milliseconds restart_down{400};
  std::chrono::milliseconds skew{2000};
  std::chrono::milliseconds skew_for{1500};
  // Progress lines (faults as they are injected); may be empty.
  std::function<void(const std::string&)> progress{};
};

struct chaos_result {
  std::string error;  // non-empty: the run itself failed (a node did not start or finish)
  std::size_t ops = 0;
  std::map<std::string, int> faults_injected;  // by to_string(fault_kind)
  std::vector<fault_window> windows;
  std::map<std::string, std::int64_t> settle_ms;  // the documented bound per fault kind
  check_report report;
  std::vector<std::string> node_summaries;  // per node: its "ops=" and "metrics" lines
  std::vector<std::string> node_outputs;    // per node: everything it printed
  std::vector<std::string> slowest_ops;     // the longest operations (a stall shows here)
};

namespace chaos_detail {

using std::chrono::milliseconds;

inline std::int64_t ns_of(milliseconds d) { return std::chrono::nanoseconds(d).count(); }

// The first line of `output` that starts with `prefix`, if any.
inline std::optional<std::string> line_of(const std::string& output, std::string_view prefix) {
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) return line;
  }
  return std::nullopt;
}

inline bool await_line(const child_process& p, std::string_view prefix, milliseconds timeout) {
  return eventually([&] { return line_of(p.output(), prefix).has_value() || !p.running(); },
                    timeout) &&
         line_of(p.output(), prefix).has_value();
}

// Writes `text` to `path` atomically (the node may read it at any moment).
inline void write_atomically(const std::filesystem::path& path, const std::string& text) {
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text << '\n';
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace chaos_detail

inline chaos_result run_chaos(const chaos_options& o) {
  using namespace std::chrono_literals;
  using chaos_detail::milliseconds;
  using chaos_detail::ns_of;
  chaos_result out;
  auto say = [&](const std::string& line) {
    if (o.progress) o.progress(line);
  };
  const milliseconds settle_base = o.bus_down_l1_ttl + o.bound;
  const milliseconds settle_outage =
      o.reconnect_max + o.breaker_open_for + o.write_deadline + settle_base;
  const std::map<fault_kind, milliseconds> settle{
      {fault_kind::bus_kill, o.reconnect_max + settle_base},
      {fault_kind::redis_blackhole, settle_outage},
      {fault_kind::redis_restart, settle_outage},
      {fault_kind::redis_write_timeout,
       2 * o.delay + o.breaker_open_for + o.write_deadline + settle_base},
      {fault_kind::clock_skew, 0ms}};
  for (const auto& [k, d] : settle) out.settle_ms[to_string(k)] = d.count();
  for (const auto k : all_fault_kinds) out.faults_injected[to_string(k)] = 0;

  std::filesystem::create_directories(o.dir);
  redis_server redis({.extra_args = {"--appendonly", "yes", "--appendfsync", "always"}});
  std::vector<std::unique_ptr<tcp_fault_proxy>> proxies;
  std::vector<std::unique_ptr<child_process>> ps;
  const std::string ctl = "coh-ctl:";
  auto skew_file = [&](int i) { return o.dir / ("skew-" + std::to_string(i)); };
  for (int i = 0; i < o.nodes; ++i) {
    proxies.push_back(std::make_unique<tcp_fault_proxy>(redis.host(), redis.port()));
    chaos_detail::write_atomically(skew_file(i), "0");
    std::vector<std::string> args{
        "chaos", "--mix", "full", "--redis-url", redis.url(), "--cache-redis-url",
        proxies.back()->url(), "--id", std::to_string(i), "--ctl", ctl, "--threads",
        std::to_string(o.threads), "--duration-ms", std::to_string(o.duration.count()), "--out",
        (o.dir / ("ops-" + std::to_string(i) + ".log")).string(), "--seed", std::to_string(o.seed),
        "--max-value-bytes", std::to_string(o.max_value_bytes), "--bus-down-l1-ttl-ms",
        std::to_string(o.bus_down_l1_ttl.count()), "--lease-poll-ms", "50", "--coordinate",
        o.coordinate ? "1" : "0", "--read-deadline-ms", std::to_string(o.read_deadline.count()),
        "--write-deadline-ms", std::to_string(o.write_deadline.count()), "--connect-timeout-ms",
        "200", "--breaker-failures", "5", "--skew-file", skew_file(i).string(),
        // Every node writes (read-your-writes needs writers); node 0 most, the last one least.
        "--read-percent", std::to_string(std::min(40 + 20 * i, 85))};
    if (o.disk) {
      args.push_back("--disk-dir");
      args.push_back((o.dir / ("disk-" + std::to_string(i))).string());
    }
    ps.push_back(std::make_unique<child_process>(
        o.node_program, std::move(args),
        child_process_options{.capture_stdout = true, .stderr_to_stdout = true}));
  }
  auto collect_outputs = [&] {
    out.node_outputs.clear();
    for (auto& p : ps) out.node_outputs.push_back(p->output());
  };
  for (auto& p : ps) {
    if (!chaos_detail::await_line(*p, "ready", 30s)) {
      out.error = "a node did not start";
      collect_outputs();
      return out;
    }
  }
  (void)redis.cli({"SET", ctl + "go", "1"});
  const auto t_go = std::chrono::steady_clock::now();
  const auto t_end = t_go + o.duration;

  // ---- the fault schedule ----
  auto record = [&](fault_kind k, std::string node, std::int64_t s, std::int64_t e,
                    std::int64_t skew_ns = 0) {
    out.windows.push_back({k, node, s, e, ns_of(settle.at(k)), skew_ns});
    ++out.faults_injected[to_string(k)];
    std::ostringstream line;
    line
        << "fault " << to_string(k) << " node=" << (node.empty() ? "*" : node) << " at_ms="
        << std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t_go).count()
        << " for_ms=" << (e - s) / 1'000'000;
    say(line.str());
  };
  // Room left for a fault of length d plus the gap after it and a margin for the final flush.
  auto fits = [&](milliseconds d) {
    return std::chrono::steady_clock::now() + d + o.fault_gap + 1s < t_end;
  };
  std::this_thread::sleep_for(o.warmup);
  for (int cycle = 0; o.faults; ++cycle) {
    bool injected = false;
    const int bh = cycle % o.nodes, slow = (cycle + 1) % o.nodes, skewed = o.nodes - 1;
    if (fits(o.blackhole_for)) {
      auto& proxy = *proxies[static_cast<std::size_t>(bh)];
      const auto s = mono_ns();
      proxy.blackhole(true);
      std::this_thread::sleep_for(o.blackhole_for);
      proxy.reset_all();
      proxy.blackhole(false);
      proxy.reset_all();  // connections opened in between had their handshake discarded
      record(fault_kind::redis_blackhole, std::to_string(bh), s, mono_ns());
      std::this_thread::sleep_for(o.fault_gap);
      injected = true;
    }
    if (fits(o.delay_for)) {
      auto& proxy = *proxies[static_cast<std::size_t>(slow)];
      const auto s = mono_ns();
      proxy.set_latency(o.delay, o.delay);
      std::this_thread::sleep_for(o.delay_for);
      proxy.set_latency(0ms, 0ms);
      // Data read before the reset still leaves with its delay.
      record(fault_kind::redis_write_timeout, std::to_string(slow), s, mono_ns() + ns_of(o.delay));
      std::this_thread::sleep_for(o.fault_gap);
      injected = true;
    }
    if (fits(o.restart_down + 2s)) {
      const auto s = mono_ns();
      redis.kill();
      std::this_thread::sleep_for(o.restart_down);
      redis.start();
      record(fault_kind::redis_restart, "", s, mono_ns());
      std::this_thread::sleep_for(o.fault_gap);
      injected = true;
    }
    if (fits(0ms)) {
      const auto s = mono_ns();
      // Counted only when it killed a subscription (none may be connected right after a restart).
      std::string killed = "0";
      try {
        killed = redis.cli({"CLIENT", "KILL", "TYPE", "pubsub"});
      } catch (const std::exception& e) {
        say(std::string("bus_kill failed: ") + e.what());
      }
      if (killed != "0" && killed.rfind("(error)", 0) != 0) {
        record(fault_kind::bus_kill, "", s, mono_ns());
      }
      std::this_thread::sleep_for(o.fault_gap);
      injected = true;
    }
    if (fits(o.skew_for)) {
      const std::int64_t sign = cycle % 2 == 0 ? 1 : -1;
      const auto s = mono_ns();
      chaos_detail::write_atomically(skew_file(skewed), std::to_string(sign * o.skew.count()));
      std::this_thread::sleep_for(o.skew_for);
      chaos_detail::write_atomically(skew_file(skewed), "0");
      // The node applies a change within its 2 ms poll.
      record(fault_kind::clock_skew, std::to_string(skewed), s, mono_ns() + ns_of(10ms),
             ns_of(o.skew));
      std::this_thread::sleep_for(o.fault_gap);
      injected = true;
    }
    if (!injected) break;
  }

  // ---- collect and check ----
  std::vector<op> ops;
  for (int i = 0; i < o.nodes; ++i) {
    auto& p = *ps[static_cast<std::size_t>(i)];
    const bool done = chaos_detail::await_line(p, "done", o.duration + 90s);
    const auto st = p.wait_for(30s);
    if (!done || !st || !st->success()) {
      out.error = "node " + std::to_string(i) + " ended badly (" +
                  (st ? st->to_string() : std::string("still running")) + ")";
      collect_outputs();
      return out;
    }
    say("node " + std::to_string(i) + " finished at_ms=" +
        std::to_string(
            std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t_go)
                .count()));
    out.node_summaries.push_back(
        "node " + std::to_string(i) + ": " +
        chaos_detail::line_of(p.output(), "ops=").value_or("(no ops line)") + " " +
        chaos_detail::line_of(p.output(), "metrics ").value_or("(no metrics)"));
    std::ifstream in(o.dir / ("ops-" + std::to_string(i) + ".log"));
    for (std::string line; std::getline(in, line);) {
      if (auto parsed = parse(line)) {
        ops.push_back(std::move(*parsed));
      } else {
        out.error = "unparsable history line: " + line;
      }
    }
  }
  collect_outputs();
  out.ops = ops.size();
  {
    std::vector<const op*> by_length;
    for (const auto& x : ops) by_length.push_back(&x);
    const std::size_t n = std::min<std::size_t>(5, by_length.size());
    std::partial_sort(
        by_length.begin(), by_length.begin() + static_cast<std::ptrdiff_t>(n), by_length.end(),
        [](const op* a, const op* b) { return a->end_ns - a->start_ns > b->end_ns - b->start_ns; });
    const std::int64_t go_ns = mono_ns() - std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               std::chrono::steady_clock::now() - t_go)
                                               .count();
    for (std::size_t i = 0; i < n; ++i) {
      const op& x = *by_length[i];
      out.slowest_ops.push_back(format(x) + " (" +
                                std::to_string((x.end_ns - x.start_ns) / 1'000'000) + " ms, from " +
                                std::to_string((x.start_ns - go_ns) / 1'000'000) + " ms)");
    }
  }
  out.report = check_history(ops, check_config{.bound_ns = ns_of(o.bound), .faults = out.windows});
  return out;
}

// One line per figure, for humans (tests print it, the benchmark too).
inline std::string describe(const chaos_result& r, const chaos_options& o) {
  std::ostringstream s;
  s << "ops=" << r.ops << " reads=" << r.report.reads << " value_reads=" << r.report.value_reads
    << " superseded_reads=" << r.report.superseded_reads << " writes=" << r.report.writes
    << " violations=" << r.report.violations << " ryw_violations=" << r.report.ryw_violations
    << " resurrections=" << r.report.resurrections
    << " worst_staleness_ms=" << static_cast<double>(r.report.max_staleness_ns) / 1e6
    << " bound_ms=" << o.bound.count() << "\nfaults_injected:";
  for (const auto& [k, n] : r.faults_injected) s << " " << k << "=" << n;
  s << "\nbound after each fault (settle, ms):";
  for (const auto& [k, n] : r.settle_ms) s << " " << k << "=" << n;
  s << " (clock_skew: writes within " << o.skew.count()
    << " ms of a write in a skew window count as concurrent)";
  if (!r.report.by_context.empty()) {
    s << "\nby sort/read kind/faults in effect:";
    for (const auto& [k, n] : r.report.by_context) s << " " << k << "=" << n;
  }
  for (const auto& line : r.node_summaries) s << "\n" << line;
  for (const auto& line : r.slowest_ops) s << "\n  slow: " << line;
  for (const auto& e : r.report.examples) s << "\n  " << e;
  return s.str();
}

}  // namespace layercache::test::coherence
