#!/usr/bin/env bash
# Builds the safetensors libFuzzer harness with clang++ (ASan + UBSan) and fuzzes the reader for a bounded time.
# SPDX-License-Identifier: Apache-2.0
#
# Usage: scripts/fuzz.sh [SECONDS]   (default 60; needs clang++ and libFuzzer: scripts/setup.sh installs them)
# The corpus is seeded with a valid file and the malformed files the tests generate; crashes are
# written to the build directory and make the script fail.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BEVKD_FUZZ_BUILD:-${root}/build-fuzz}"
corpus="${build}/corpus"

cmake -S "${root}" -B "${build}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DBEVKD_BUILD_FUZZERS=ON -DBEVKD_BUILD_BENCHMARKS=OFF -DBEVKD_BUILD_EXAMPLES=OFF -DBEVKD_ENABLE_CUDA=OFF \
  -DBEVKD_BUILD_TOOLS=OFF -DBEVKD_USE_OPENMP=OFF >/dev/null
cmake --build "${build}" --target fuzz_safetensors test_inherit

mkdir -p "${corpus}"
# The test binary writes its malformed corpus and a valid file when asked to.
BEVKD_FUZZ_CORPUS="${corpus}" "${build}/tests/test_inherit" --test-case="*written for the fuzzer*" >/dev/null

cd "${build}"
# libFuzzer reports every corpus change; keep that in a log and show the summary (or, on a crash, the end).
log="${build}/fuzz.log"
if "${build}/tests/fuzz_safetensors" -max_total_time="${seconds}" -max_len=4096 -print_final_stats=1 "${corpus}" \
    >"${log}" 2>&1; then
  grep -E "^(Done|stat::)" "${log}"
else
  tail -n 60 "${log}"
  echo "fuzz.sh: the fuzzer failed; full log: ${log}" >&2
  exit 1
fi
