#!/usr/bin/env bash
# The showcase: installs missing packages, builds the `release` preset and runs the scenario
# benchmarks, printing their tables. Servers they need are started and stopped by the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake --preset release
cmake --build --preset release -j "$(nproc)" --target layercache-bench
bench=build/release/bench/layercache-bench
for scenario in hot-path stampede l2-hit slow-redis multi-process invalidation-lag disk; do
  echo
  echo "== layercache-bench $scenario"
  "$bench" "$scenario"
done
