#!/usr/bin/env bash
# Packaging tests: (1) install the built project into a temporary prefix and build a consumer with
# find_package(layercache); (2) build a consumer that add_subdirectory()s the source tree.
# Usage: run_consumers.sh find_package|subdirectory SOURCE_DIR BUILD_DIR [CXX_FLAGS [LINKER_FLAGS]]
set -euo pipefail
mode=$1 src=$2 build=$3 cxx_flags=${4:-} linker_flags=${5:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case "$mode" in
  find_package)
    cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
    cmake -S "$src/tests/packaging/find_package_consumer" -B "$work/consumer" -G Ninja \
      -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_CXX_FLAGS="$cxx_flags" \
      -DCMAKE_EXE_LINKER_FLAGS="$linker_flags" > "$work/configure.log"
    ;;
  subdirectory)
    cmake -S "$src/tests/packaging/subdirectory_consumer" -B "$work/consumer" -G Ninja \
      -DLAYERCACHE_SOURCE_DIR="$src" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS="$cxx_flags" \
      -DCMAKE_EXE_LINKER_FLAGS="$linker_flags" > "$work/configure.log"
    ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
cmake --build "$work/consumer" -j 2 > "$work/build.log" || { cat "$work/build.log"; exit 1; }
"$work/consumer/consumer"
