// coherence_checker_test.cpp — the consistency checker (tests/coherence_node/op_log.hpp) on
// hand-made histories: it must count each kind of failure it claims to find (stale reads,
// resurrections, read-your-writes violations), honour the fault windows and the clock-skew rule it
// documents, and nothing else. A checker that cannot fail proves nothing; these are its negative
// controls without any process or Redis.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "coherence_node/op_log.hpp"
#include "coherence_node/payload.hpp"

namespace layercache::test::coherence {
namespace {

constexpr std::int64_t bound = 50;

// An operation of thread `thread` of node `node` (ok unless told).
op by(char kind, std::string key, std::string value, std::int64_t start, std::int64_t end,
      std::string node, int thread = 0, bool ok = true) {
  return {kind, std::move(key), std::move(value), start, end, std::move(node), thread, ok};
}

check_report check(const std::vector<op>& ops, std::vector<fault_window> faults = {}) {
  return check_history(ops, check_config{.bound_ns = bound, .faults = std::move(faults)});
}

TEST(CoherenceCheckerTest, CountsAStaleReadAResurrectionAndAReadYourWritesViolationEachOnce) {
  const std::vector<op> ops{
      // k0: "a" replaced by "b" at 30; node B reads "a" at 200: stale, not a resurrection.
      by('S', "k0", "a", 0, 10, "A"), by('S', "k0", "b", 20, 30, "A"),
      by('G', "k0", "a", 200, 201, "B"),
      // k1: "c" deleted at 30; node B reads "c" at 200: a resurrection (and a violation).
      by('S', "k1", "c", 0, 10, "A"), by('D', "k1", "-", 20, 30, "A"),
      by('P', "k1", "c", 200, 201, "B"),
      // k2: thread A.1 sets "e" over "d", then reads "d" at once: within the bound, but its own.
      by('S', "k2", "d", 0, 10, "A", 0), by('S', "k2", "e", 20, 30, "A", 1),
      by('G', "k2", "d", 31, 32, "A", 1)};
  const check_report r = check(ops);
  EXPECT_EQ(r.violations, 2u);
  EXPECT_EQ(r.resurrections, 1u);
  EXPECT_EQ(r.ryw_violations, 1u);
  EXPECT_EQ(r.superseded_reads, 3u);
  EXPECT_EQ(r.max_staleness_ns, 170);
  EXPECT_EQ(r.examples.size(), 4u);  // 2 violations, 1 resurrection, 1 read-your-writes
  EXPECT_EQ(r.by_context.at("violation/G/none"), 1u);
  EXPECT_EQ(r.by_context.at("violation/P/none"), 1u);
  EXPECT_EQ(r.by_context.at("resurrection/P/none"), 1u);
  EXPECT_EQ(r.by_context.at("ryw/G/none"), 1u);
}

TEST(CoherenceCheckerTest, AttributesAFailureToTheFaultsInEffectBetweenTheWriteAndTheRead) {
  const fault_window bus{
      .kind = fault_kind::bus_kill, .node = "", .start_ns = 15, .end_ns = 15, .settle_ns = 5};
  const fault_window skew{.kind = fault_kind::clock_skew,
                          .node = "C",
                          .start_ns = 1000,
                          .end_ns = 2000,
                          .skew_ns = 300};
  // Own set at 25..30, stale own read at 31: the bus kill (15 + settle 5) ended before the set;
  // own set at 1100 inside the skew window (1000..2000 + 300), its stale own read at 1150.
  const check_report r =
      check({by('S', "k0", "a", 0, 10, "B"), by('S', "k0", "b", 25, 30, "A"),
             by('G', "k0", "a", 31, 32, "A"), by('S', "k1", "c", 0, 10, "B"),
             by('S', "k1", "d", 1100, 1101, "A"), by('M', "k1", "c", 1150, 1151, "A")},
            {bus, skew});
  EXPECT_EQ(r.by_context.at("ryw/G/none"), 1u);
  EXPECT_EQ(r.by_context.at("ryw/M/clock_skew"), 1u);
}

TEST(CoherenceCheckerTest, AReadWithinTheBoundOrOfAConcurrentWriteIsNoViolation) {
  const op a = by('S', "k0", "a", 0, 10, "A");
  EXPECT_EQ(check({a, by('S', "k0", "b", 20, 30, "A"), by('G', "k0", "a", 80, 81, "B")}).violations,
            0u);
  EXPECT_EQ(check({a, by('S', "k0", "b", 20, 30, "A"), by('G', "k0", "a", 81, 82, "B")}).violations,
            1u);
  // "b" started before "a" was acknowledged: concurrent, either may win.
  EXPECT_EQ(
      check({a, by('S', "k0", "b", 5, 30, "B"), by('G', "k0", "a", 900, 901, "C")}).violations, 0u);
  // A miss is never a violation, nor has() == false.
  EXPECT_EQ(check({a, by('D', "k0", "-", 20, 30, "A"), by('P', "k0", "-", 900, 901, "B"),
                   by('H', "k0", "0", 900, 901, "B")})
                .violations,
            0u);
}

TEST(CoherenceCheckerTest, EveryKindOfRemovalResurrectsWhenItsValueIsReadBeyondTheBound) {
  const op a = by('S', "k0", "a", 0, 10, "A");  // k0: tags t0, u0
  auto resurrections = [&](op removal) {
    return check({a, std::move(removal), by('G', "k0", "a", 200, 201, "B")}).resurrections;
  };
  EXPECT_EQ(resurrections(by('D', "k0", "-", 20, 30, "A")), 1u);
  EXPECT_EQ(resurrections(by('T', "t0", "any", 20, 30, "A")), 1u);
  EXPECT_EQ(resurrections(by('T', "t0,u0", "all", 20, 30, "A")), 1u);
  EXPECT_EQ(resurrections(by('X', "k0", "-", 20, 30, "A")), 1u);
  EXPECT_EQ(resurrections(by('X', "k", "-", 20, 30, "A")), 1u);
  // Not covering k0: another tag, all of two tags k0 lacks one of, another key's prefix.
  EXPECT_EQ(resurrections(by('T', "t1", "any", 20, 30, "A")), 0u);
  EXPECT_EQ(resurrections(by('T', "t0,u1", "all", 20, 30, "A")), 0u);
  EXPECT_EQ(resurrections(by('X', "k1", "-", 20, 30, "A")), 0u);
  // A namespace rotation removes the namespace keys, and only them.
  const op in_ns = by('S', "k9", "n", 0, 10, "A");
  EXPECT_EQ(check({in_ns, by('N', ns_name, "-", 20, 30, "A"), by('M', "k9", "n", 200, 201, "B")})
                .resurrections,
            1u);
  EXPECT_EQ(
      check({a, by('N', ns_name, "-", 20, 30, "A"), by('M', "k0", "a", 200, 201, "B")}).violations,
      0u);
  // Prefix "k1" does not reach k10: it lives in the namespace ("@ns:space#..:k10").
  EXPECT_EQ(check({by('S', "k10", "x", 0, 10, "A"), by('X', "k1", "-", 20, 30, "A"),
                   by('G', "k10", "x", 200, 201, "B")})
                .violations,
            0u);
}

TEST(CoherenceCheckerTest, HasIsAResurrectionOnlyWhenNoWriteCouldBeTheValuePresent) {
  const op a = by('S', "k0", "a", 0, 10, "A");
  const op del = by('D', "k0", "-", 20, 30, "A");
  EXPECT_EQ(check({a, del, by('H', "k0", "1", 200, 201, "B")}).resurrections, 1u);
  // A set after the delete can be what is present.
  EXPECT_EQ(check({a, del, by('S', "k0", "b", 40, 45, "C"), by('H', "k0", "1", 200, 201, "B")})
                .violations,
            0u);
  // Within the bound: fine.
  EXPECT_EQ(check({a, del, by('H', "k0", "1", 60, 61, "B")}).violations, 0u);
  // Its own delete: true right after it is a read-your-writes violation.
  EXPECT_EQ(check({a, del, by('H', "k0", "1", 31, 32, "A")}).ryw_violations, 1u);
  EXPECT_EQ(check({a, del, by('H', "k0", "1", 31, 32, "A", 1)}).ryw_violations, 0u)
      << "another thread's delete is not its own";
}

TEST(CoherenceCheckerTest, ReadYourWritesHoldsPerThreadAndForRemovalsToo) {
  const op other = by('S', "k0", "x", 0, 10, "B");
  // Thread A.0 invalidates k0's tag, then still reads the old value: a violation at once.
  EXPECT_EQ(check({other, by('T', "u0", "any", 20, 30, "A"), by('P', "k0", "x", 31, 32, "A")})
                .ryw_violations,
            1u);
  // Reading its own write, or a newer one of someone else, is fine.
  const op own = by('S', "k0", "mine", 20, 30, "A");
  EXPECT_EQ(check({other, own, by('G', "k0", "mine", 31, 32, "A")}).ryw_violations, 0u);
  EXPECT_EQ(
      check({other, own, by('S', "k0", "newer", 35, 36, "B"), by('G', "k0", "newer", 40, 41, "A")})
          .ryw_violations,
      0u);
  // A concurrent write (started before its own write was acknowledged) may win.
  EXPECT_EQ(
      check({by('S', "k0", "y", 25, 40, "B"), own, by('G', "k0", "y", 45, 46, "A")}).ryw_violations,
      0u);
  // A failed own write promised nothing.
  EXPECT_EQ(
      check({other, by('D', "k0", "-", 20, 30, "A", 0, false), by('G', "k0", "x", 31, 32, "A")})
          .ryw_violations,
      0u);
}

TEST(CoherenceCheckerTest, AFailedWriteMayBeReadButSupersedesNothing) {
  const op a = by('S', "k0", "a", 0, 10, "A");
  const op failed = by('S', "k0", "b", 20, 30, "A", 0, false);
  EXPECT_EQ(check({a, failed, by('G', "k0", "a", 900, 901, "B")}).violations, 0u);
  EXPECT_EQ(check({a, failed, by('G', "k0", "b", 900, 901, "B")}).violations, 0u);
  EXPECT_EQ(check({a, by('G', "k0", "!corrupt", 900, 901, "B")}).violations, 1u);
}

TEST(CoherenceCheckerTest, AFaultWindowExtendsTheBoundOnlyForTheNodesItConcerns) {
  const op a = by('S', "k0", "a", 0, 10, "A");
  const op b = by('S', "k0", "b", 100, 110, "A");
  const fault_window blackhole_b{.kind = fault_kind::redis_blackhole,
                                 .node = "B",
                                 .start_ns = 90,
                                 .end_ns = 300,
                                 .settle_ns = 200};
  // B reads "a" at 400: within end + settle = 500 of its own fault.
  EXPECT_EQ(check({a, b, by('G', "k0", "a", 400, 401, "B")}, {blackhole_b}).violations, 0u);
  EXPECT_EQ(check({a, b, by('G', "k0", "a", 501, 502, "B")}, {blackhole_b}).violations, 1u);
  // C is not concerned: the plain bound (b acknowledged at 110 + 50).
  EXPECT_EQ(check({a, b, by('G', "k0", "a", 400, 401, "C")}, {blackhole_b}).violations, 1u);
  // A write acknowledged long before the fault is not excused by it.
  const fault_window later{.kind = fault_kind::redis_restart,
                           .node = "",
                           .start_ns = 1000,
                           .end_ns = 1100,
                           .settle_ns = 500};
  EXPECT_EQ(check({a, b, by('G', "k0", "a", 1050, 1051, "C")}, {later}).violations, 1u);
  // A restart concerns every node.
  const fault_window restart{.kind = fault_kind::redis_restart,
                             .node = "",
                             .start_ns = 90,
                             .end_ns = 300,
                             .settle_ns = 200};
  EXPECT_EQ(check({a, b, by('G', "k0", "a", 400, 401, "C")}, {restart}).violations, 0u);
  // A fill made during a fault of its node supersedes nothing (it may never reach Redis); the
  // same fill outside any fault does.
  const op fill = by('F', "k0", "f", 100, 110, "B");
  EXPECT_EQ(check({a, fill, by('G', "k0", "a", 900, 901, "C")}, {blackhole_b}).violations, 0u);
  EXPECT_EQ(check({a, fill, by('G', "k0", "a", 900, 901, "C")}).violations, 1u);
  // Read-your-writes gets no allowance from a fault.
  EXPECT_EQ(check({a, b, by('G', "k0", "a", 111, 112, "A")}, {restart}).ryw_violations, 1u);
}

TEST(CoherenceCheckerTest, WritesWithinTheSkewOfASkewWindowCountAsConcurrentAndNoOthers) {
  const fault_window skew{.kind = fault_kind::clock_skew,
                          .node = "C",
                          .start_ns = 1000,
                          .end_ns = 2000,
                          .skew_ns = 300};
  // "a" acknowledged inside the window; "b" started 200 after it: within the skew, concurrent.
  const op a = by('S', "k0", "a", 1500, 1510, "C");
  EXPECT_EQ(
      check({a, by('S', "k0", "b", 1710, 1720, "A"), by('G', "k0", "a", 5000, 5001, "B")}, {skew})
          .violations,
      0u);
  // 400 after it: beyond the skew, certainly newer.
  EXPECT_EQ(
      check({a, by('S', "k0", "b", 1910, 1920, "A"), by('G', "k0", "a", 5000, 5001, "B")}, {skew})
          .violations,
      1u);
  // The same pair far from any skew window: ordered exactly.
  const op early = by('S', "k0", "a", 100, 110, "C");
  EXPECT_EQ(
      check({early, by('S', "k0", "b", 310, 320, "A"), by('G', "k0", "a", 900, 901, "B")}, {skew})
          .violations,
      1u);
  // The skew does not widen the staleness bound: "b" certainly newer, read 51 after it.
  EXPECT_EQ(
      check({a, by('S', "k0", "b", 1910, 1920, "A"), by('G', "k0", "a", 1971, 1972, "B")}, {skew})
          .violations,
      1u);
}

TEST(CoherenceCheckerTest, HistoryLinesRoundTripWithAndWithoutTheThreadFields) {
  const op o = by('M', "k3", "0.1.7", 12, 34, "2", 1, false);
  const auto parsed = parse(format(o));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->kind, 'M');
  EXPECT_EQ(parsed->subject, "k3");
  EXPECT_EQ(parsed->value, "0.1.7");
  EXPECT_EQ(parsed->start_ns, 12);
  EXPECT_EQ(parsed->end_ns, 34);
  EXPECT_EQ(parsed->node, "2");
  EXPECT_EQ(parsed->thread, 1);
  EXPECT_FALSE(parsed->ok);
  const auto old = parse("G k0 a 1 2");
  ASSERT_TRUE(old);
  EXPECT_TRUE(old->node.empty());
  EXPECT_TRUE(old->ok);
  EXPECT_FALSE(parse("Q k0 a 1 2"));
  EXPECT_FALSE(parse("G k0 a 1 2 node"));
}

TEST(CoherencePayloadTest, AValueNamesItsWriteAndATamperedOneIsCaught) {
  for (std::size_t size : {0u, 10u, 64u, 1000u, 262144u}) {
    const std::string v = make_payload("1.0.42", size);
    EXPECT_GE(v.size(), size);
    EXPECT_EQ(payload_id(v), "1.0.42");
  }
  std::string v = make_payload("1.0.42", 5000);
  EXPECT_EQ(payload_id(v.substr(0, 4000)), "!corrupt");
  v[4000] = v[4000] == 'a' ? 'b' : 'a';
  EXPECT_EQ(payload_id(v), "!corrupt");
  EXPECT_EQ(payload_id("no-bars"), "!corrupt");
}

}  // namespace
}  // namespace layercache::test::coherence
