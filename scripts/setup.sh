#!/usr/bin/env bash
# Installs what building and testing bevkd needs on a fresh Debian 12 machine (quick no-op when all is there).
# SPDX-License-Identifier: Apache-2.0
#
# Usage: scripts/setup.sh   (as root, or a user with sudo)
# The CUDA toolkit is not installed here: where /usr/local/cuda exists, scripts/test.sh compiles the
# CUDA sources too. OpenMP needs nothing extra: g++ ships libgomp, and the sanitizer runtimes come
# with it as well.
set -euo pipefail

packages=(
  cmake ninja-build g++   # the build
  doctest-dev             # tests
  libbenchmark-dev        # bench/ (built by default in a top-level build)
  nlohmann-json3-dev      # bevkd::inherit (safetensors headers, rules JSON), the bevkd-inherit tool
  clang libclang-rt-14-dev  # scripts/fuzz.sh: libFuzzer for the safetensors reader
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "${package}" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("${package}")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup.sh: all packages already installed: ${packages[*]}"
  exit 0
fi

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "setup.sh: installing ${missing[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
