#!/usr/bin/env bash
# Usage: tests/fuzz/run.sh [SECONDS]   (default 60)
#
# Configures and builds the "fuzz" preset, writes a seed corpus of valid envelopes into a temporary
# directory and runs envelope_fuzz for SECONDS. Exits non-zero if the build fails or the fuzzer
# finds a crash, sanitizer report, leak, timeout or property violation; the failing input is kept
# in build/fuzz/artifacts/ (replay it with `build/fuzz/tests/fuzz/envelope_fuzz <file>`).
set -euo pipefail

seconds="${1:-60}"
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

cmake --preset fuzz
cmake --build --preset fuzz

fuzzer="$root/build/fuzz/tests/fuzz/envelope_fuzz"
artifacts="$root/build/fuzz/artifacts"
mkdir -p "$artifacts"
corpus="$(mktemp -d)"
trap 'rm -rf "$corpus"' EXIT

"$fuzzer" --write-seeds="$corpus"
"$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" "$corpus"
echo "envelope_fuzz: no failure in ${seconds}s"
