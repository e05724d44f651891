#!/usr/bin/env bash
# Installs the Debian 12 packages layercache needs, skipping those already present.
# Runs apt-get only when something is missing (needs root or sudo then).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libhiredis-dev librocksdb-dev libboost1.81-dev libssl-dev
  nlohmann-json3-dev libzstd-dev liblz4-dev libcli11-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  redis-server redis-tools
  clang libclang-rt-14-dev clang-format
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
