#!/usr/bin/env bash
# The whole test suite: installs missing packages, configures and builds the `dev` preset with
# warnings as errors, and runs every test (unit, integration against real redis-server processes
# and RocksDB directories the tests start themselves, packaging, examples).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake --preset dev
cmake --build --preset dev -j "$(nproc)"
ctest --preset dev
