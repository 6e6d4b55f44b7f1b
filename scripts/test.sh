#!/usr/bin/env bash
# Builds bevkd and runs every test: the full build (CUDA compiled where nvcc exists; FMA contraction and AVX-512 where
# the CPU has them), then the portable CPU tests under ASan+UBSan, then the safetensors fuzzer.
# SPDX-License-Identifier: Apache-2.0
#
# Usage: scripts/test.sh    (from anywhere; build trees go to build/ and build-sanitize/ in the repo)
# Environment: BEVKD_JOBS (parallel jobs, default: the number of cores),
#              BEVKD_CUDA_ARCHITECTURES (default 90; never `native`, which fails without a GPU),
#              BEVKD_CMAKE_ARGS (extra arguments for both configures, e.g. -DCMAKE_CXX_COMPILER=clang++).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs=${BEVKD_JOBS:-$(nproc)}
cuda_arch=${BEVKD_CUDA_ARCHITECTURES:-90}
read -r -a extra_args <<< "${BEVKD_CMAKE_ARGS:-}"

# The CUDA toolkit often installs nvcc without putting it on PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

generator=Ninja
command -v ninja >/dev/null 2>&1 || generator="Unix Makefiles"

phases=()
phase() {  # phase <name> <command...>: runs a step, records its time, stops the script if it fails
  local name=$1 start=$SECONDS
  shift
  echo
  echo "=== ${name}"
  "$@"
  phases+=("$(printf '%-28s %5ds' "${name}" $((SECONDS - start)))")
}

configure() {  # configure <build dir> <cmake args...>
  local dir=$1
  shift
  # A tree left by another generator cannot be re-configured in place; start it afresh.
  if [ -f "${dir}/CMakeCache.txt" ] && ! grep -qx "CMAKE_GENERATOR:INTERNAL=${generator}" "${dir}/CMakeCache.txt"; then
    rm -rf "${dir}"
  fi
  cmake -S . -B "${dir}" -G "${generator}" "$@" "${extra_args[@]}"
}

# 1. The library, its tests, examples and tools, as users build them; GPU tests are compiled where nvcc exists and
# skip (exit 77) without a device.
# On x86-64 CPUs with AVX2 and FMA the host code is built with -mavx2 -mfma, as consumers' -march=native builds do:
# GCC then fuses a * b + c across statements (FMA contraction), and a softmax's shift must still give its maximum an
# exponent of exactly 0. On CPUs with AVX-512 the build adds -mavx512f, which switches the fp32 row blocks to their
# AVX-512 passes (losses/detail/*_avx512.hpp), and with AVX-512BW and VL too, half and bfloat16 rows run in the host
# lane groups (16-bit masked loads and stores). The portable paths (no FMA, no AVX-512) are built and run in step 2.
# test_resample compares its host and per-element loops within a few roundings in contracting builds instead of bit
# for bit (the compiler may contract them differently).
host_flags=""
if [ "$(uname -m)" = x86_64 ] && grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  host_flags="-mavx2 -mfma"
  if grep -qw avx512f /proc/cpuinfo; then host_flags="${host_flags} -mavx512f"; fi
  if grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
    host_flags="${host_flags} -mavx512bw -mavx512vl"
  fi
  echo "test.sh: host code of the Release build compiled with ${host_flags}"
else
  echo "test.sh: no AVX2 + FMA: the Release build is portable (no contraction)"
fi
cuda_args=(-DBEVKD_ENABLE_CUDA=ON)
if command -v nvcc >/dev/null 2>&1; then
  cuda_args+=(-DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DCMAKE_CUDA_ARCHITECTURES="${cuda_arch}")
else
  echo "test.sh: no nvcc found: CUDA sources are not compiled"
fi
# Optimised at -O2 (RelWithDebInfo's level, without -g) rather than Release's -O3, and without the benchmarks (they
# are no tests; scripts/gpu-check.sh and bench/RESULTS.md's commands build them at -O3): half the compile time, which
# keeps this script and CI under half an hour on two cores.
phase "configure (Release)" configure build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS="${host_flags}" \
  -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" -DCMAKE_CUDA_FLAGS_RELEASE="-O2 -DNDEBUG" -DBEVKD_BUILD_BENCHMARKS=OFF \
  "${cuda_args[@]}"
phase "build (Release)" cmake --build build -j "${jobs}"
phase "ctest (Release)" ctest --test-dir build --output-on-failure -j "${jobs}"

# 2. The CPU tests again, portable (no -m flags), under AddressSanitizer and UndefinedBehaviorSanitizer, in Debug
# (assertions on; -O0 compiles the template-heavy tests about 3x faster than -O1 under the sanitizers, and they
# still run in minutes); _GLIBCXX_ASSERTIONS bounds-checks the standard containers. OpenMP is off here so the serial
# host backend (what a consumer without -fopenmp gets) is built and tested too; the Release build covers the OpenMP
# one. CMAKE_CXX_FLAGS reach the link line too, which the sanitizer runtimes need. The packaging tests are left out
# (they exercise CMake, which no compiler flag changes), and so is the header check (step 1 compiles every header
# alone; the sanitizers find nothing in code that only compiles).
sanitize_flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -D_GLIBCXX_ASSERTIONS"
phase "configure (sanitize)" configure build-sanitize -DCMAKE_BUILD_TYPE=Debug -DBEVKD_ENABLE_CUDA=OFF \
  -DBEVKD_BUILD_BENCHMARKS=OFF -DBEVKD_BUILD_EXAMPLES=OFF -DBEVKD_USE_OPENMP=OFF -DBEVKD_HEADER_CHECK=OFF \
  -DCMAKE_CXX_FLAGS="${sanitize_flags}"
phase "build (sanitize)" cmake --build build-sanitize -j "${jobs}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
phase "ctest (sanitize, cpu)" ctest --test-dir build-sanitize --output-on-failure -j "${jobs}" -L cpu -LE packaging

# 3. The safetensors reader fed by libFuzzer under ASan+UBSan for a bounded time: an untrusted
# checkpoint must give an error, never a crash (scripts/setup.sh installs clang and its runtime).
if command -v clang++ >/dev/null 2>&1; then
  phase "fuzz safetensors" bash scripts/fuzz.sh "${BEVKD_FUZZ_SECONDS:-60}"
else
  echo "test.sh: no clang++: the safetensors fuzzer is not run"
fi

echo
echo "=== test.sh: all phases passed"
printf '%s\n' "${phases[@]}"
