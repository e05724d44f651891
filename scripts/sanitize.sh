#!/usr/bin/env bash
# Builds and runs the test suite under a sanitizer: `scripts/sanitize.sh asan` (AddressSanitizer +
# UndefinedBehaviorSanitizer) or `scripts/sanitize.sh tsan` (ThreadSanitizer).
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:?usage: scripts/sanitize.sh asan|tsan}
case "$preset" in asan|tsan) ;; *) echo "unknown sanitizer preset: $preset" >&2; exit 2 ;; esac
scripts/install-deps.sh
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp}
cmake --preset "$preset"
cmake --build --preset "$preset" -j "$(nproc)"
ctest --preset "$preset"
