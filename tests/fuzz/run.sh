#!/usr/bin/env bash
# Usage: tests/fuzz/run.sh [SECONDS]   (default 60)
#
# Configures and builds the "fuzz" preset, writes a seed corpus of valid envelopes into a temporary
# directory and runs envelope_fuzz for SECONDS, then the bus message parser (bus_message_fuzz) for
# SECONDS / 3. Exits non-zero if the build fails or a fuzzer finds a crash, sanitizer report, leak,
# timeout or property violation; the failing input is kept in build/fuzz/artifacts/ (replay it with
# `build/fuzz/tests/fuzz/<fuzzer> <file>`).
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

# The bus message parser: a third of the time, seeded with well-formed messages of every op.
bus_seconds=$(( seconds / 3 > 0 ? seconds / 3 : 1 ))
bus_corpus="$(mktemp -d)"
trap 'rm -rf "$corpus" "$bus_corpus"' EXIT
printf 'lc1|1|1|k|0:0|2|0|3:abc4:de:f' > "$bus_corpus/keys"
printf 'lc1|9|3|t|5:6|1|2|1:t3:k:13:k:2' > "$bus_corpus/tags"
printf 'lc1|9|4|r|0:0|1|1|5:a/b/c1:7' > "$bus_corpus/rotate"
printf 'lc1|9|5|c|0:0|0|0|' > "$bus_corpus/clear"
"$root/build/fuzz/tests/fuzz/bus_message_fuzz" -max_total_time="$bus_seconds" -timeout=10 \
  -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" "$bus_corpus"
echo "bus_message_fuzz: no failure in ${bus_seconds}s"
