#!/usr/bin/env bash
# Builds and runs every bevkd GPU test and benchmark, under compute-sanitizer memcheck and racecheck too, in one go.
# SPDX-License-Identifier: Apache-2.0
#
# Usage:
#   scripts/gpu-check.sh --pack-deps   on a machine with the Debian packages (a developer's): copies doctest,
#                                      Google Benchmark and nlohmann/json into .deps/ (git-ignored), since the GPU
#                                      machine has no package registry; send .deps/ along with the tree.
#   scripts/gpu-check.sh [tests] [memcheck] [bench] [racecheck] [sanitize]
#                                      on the machine with the GPU: builds into build-gpu/ (incrementally), then
#                                      runs the parts named (default: tests memcheck bench racecheck, in that
#                                      order; sanitize = memcheck and racecheck), writes gpu-check.log,
#                                      summary.txt, bench_*.json and torch_eager.json (bench/torch_eager.py,
#                                      where PyTorch with CUDA is installed) to ${OUT:-build-gpu/logs}, and exits non-zero
#                                      if any step failed. Naming parts splits a run that would not fit one
#                                      command's time limit into calls that reuse the build. The sanitizers run
#                                      each test case as a step of its own. Racecheck runs last: it is the
#                                      slowest part (about 3 minutes on an H100 in 2026-11), so with little
#                                      device time give it a call of its own (`scripts/gpu-check.sh racecheck`).
# Builds with CMake where it is installed, else with plain nvcc (GPU tests and CUDA benchmarks only).
# Environment: BEVKD_CUDA_ARCHITECTURES (default 90), BEVKD_JOBS (default: all cores), BEVKD_GPU_BUILD (cmake|nvcc),
#   BEVKD_STEP_TIMEOUT (seconds per step, default 300), BEVKD_BENCH_ARGS (extra benchmark arguments,
#   e.g. --benchmark_min_time=0.1), BEVKD_SANITIZER_TEST_ARGS (doctest arguments under compute-sanitizer,
#   e.g. --test-case-exclude=*large*).
set -uo pipefail  # no -e: a failed step is recorded and the rest still run, so one GPU session yields every result

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${root}"
deps=${root}/.deps

pack_deps() {
  set -e
  local multiarch=lib/x86_64-linux-gnu
  for f in /usr/include/doctest/doctest.h /usr/include/benchmark/benchmark.h /usr/${multiarch}/libbenchmark.so \
           /usr/${multiarch}/cmake/benchmark/benchmarkConfig.cmake /usr/include/nlohmann/json.hpp \
           /usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake; do
    [ -e "${f}" ] || { echo "gpu-check: ${f} missing: run scripts/setup.sh first"; exit 1; }
  done
  rm -rf "${deps}"
  mkdir -p "${deps}/include" "${deps}/lib/cmake/doctest" "${deps}/${multiarch}/cmake" "${deps}/share/cmake"
  cp -r /usr/include/doctest /usr/include/benchmark /usr/include/nlohmann "${deps}/include/"
  # nlohmann/json's config is relocatable as it is (bevkd::inherit and its CUDA tests need it).
  cp -r /usr/share/cmake/nlohmann_json "${deps}/share/cmake/"
  # Debian's doctest config hard-codes /usr; a relocatable one is two lines.
  cat > "${deps}/lib/cmake/doctest/doctestConfig.cmake" <<'EOF'
# doctest from bevkd's .deps/ (scripts/gpu-check.sh --pack-deps): the header-only target, relocatable.
add_library(doctest::doctest INTERFACE IMPORTED)
set_target_properties(doctest::doctest PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/../../../include")
EOF
  # Benchmark's config is relocatable as it is; copy the library under every name it is looked up by (no links).
  cp -r "/usr/${multiarch}/cmake/benchmark" "${deps}/${multiarch}/cmake/"
  for f in /usr/${multiarch}/libbenchmark.so* /usr/${multiarch}/libbenchmark_main.a; do
    cp -L "${f}" "${deps}/${multiarch}/"
  done
  du -sh "${deps}"
  echo "gpu-check: packed doctest, Google Benchmark and nlohmann/json into ${deps}"
}
if [ "${1:-}" = "--pack-deps" ]; then
  pack_deps
  exit 0
fi
parts=" ${*:-tests memcheck bench racecheck} "
parts=${parts/ sanitize / memcheck racecheck }
for part in ${parts}; do
  case "${part}" in
    tests | memcheck | racecheck | bench) ;;
    *) echo "gpu-check: unknown part '${part}' (expected tests, memcheck, racecheck, sanitize, bench or --pack-deps)"; exit 2 ;;
  esac
done
wants() { [[ "${parts}" == *" $1 "* ]]; }

# --- settings ----------------------------------------------------------------
arch=${BEVKD_CUDA_ARCHITECTURES:-90}
jobs=${BEVKD_JOBS:-$(nproc)}
step_timeout=${BEVKD_STEP_TIMEOUT:-300}
read -r -a bench_args <<< "${BEVKD_BENCH_ARGS:-}"
read -r -a sanitizer_test_args <<< "${BEVKD_SANITIZER_TEST_ARGS:-}"
build=${root}/build-gpu
logs=${OUT:-${build}/logs}
mkdir -p "${logs}"
log=${logs}/gpu-check.log
: > "${log}"
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:${PATH}

# --- steps: each is logged, timed and summarised; a failure does not stop the others --------
names=() statuses=() times=() failures=0
step() {  # step <name> <command or function...>
  local name=$1 start=$SECONDS rc
  shift
  printf '\n=== %s: %s\n' "${name}" "$*" | tee -a "${log}"
  if [ "$(type -t "$1")" = function ]; then
    "$@" 2>&1 | tee -a "${log}"
  else
    timeout -k 10 "${step_timeout}" "$@" 2>&1 | tee -a "${log}"
  fi
  rc=${PIPESTATUS[0]}
  names+=("${name}") times+=($((SECONDS - start)))
  if [ "${rc}" -eq 0 ]; then
    statuses+=(ok)
  else
    statuses+=("FAIL (${rc})")
    failures=$((failures + 1))
  fi
  return "${rc}"
}
skip() {  # skip <name> <why>
  names+=("$1") statuses+=("skipped: $2") times+=(0)
  printf '\n=== %s: skipped: %s\n' "$1" "$2" | tee -a "${log}"
}

# Exit 77 means "no device": on this machine that is a failure, not a skip.
run_gpu_test() {
  "$@"
  local rc=$?
  [ "${rc}" -ne 77 ] || echo "gpu-check: exit 77: the test found no CUDA device"
  return "${rc}"
}

# ctest counts a skip (77) as a pass; here it means the device was not seen.
run_gpu_ctest() {
  local out rc
  out=$(ctest --test-dir "${build}" -L gpu --output-on-failure --timeout "${step_timeout}" 2>&1)
  rc=$?
  echo "${out}"
  if grep -q '\*\*\*Skipped' <<< "${out}"; then
    echo "gpu-check: a GPU test skipped (exit 77): the device was not seen"
    rc=1
  fi
  return "${rc}"
}

# --- device --------------------------------------------------------------------
step "device" nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
step "nvcc" nvcc --version

# --- build ---------------------------------------------------------------------
gpu_tests=() benches=()
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${arch}" -DBEVKD_ENABLE_CUDA=ON
            -DBEVKD_BUILD_EXAMPLES=OFF)
[ -d "${deps}" ] && cmake_args+=(-DCMAKE_PREFIX_PATH="${deps}")
command -v nvcc >/dev/null 2>&1 && cmake_args+=(-DCMAKE_CUDA_COMPILER="$(command -v nvcc)")
command -v ninja >/dev/null 2>&1 && cmake_args+=(-G Ninja)

mode=${BEVKD_GPU_BUILD:-cmake}  # BEVKD_GPU_BUILD=nvcc forces the fallback below (to test it)
command -v cmake >/dev/null 2>&1 || mode=nvcc
if [ "${mode}" = cmake ]; then
  # The build keeps going past a failing target (-k), so that one broken CPU test does not stop
  # the GPU tests from being built and run; the failure still counts in the summary.
  keep_going=-k
  command -v ninja >/dev/null 2>&1 && keep_going="-k 0"
  if step "configure" cmake -S . -B "${build}" "${cmake_args[@]}"; then
    # shellcheck disable=SC2086  # keep_going is one or two words
    step "build" cmake --build "${build}" -j "${jobs}" -- ${keep_going}
    mapfile -t test_names < <(ctest --test-dir "${build}" -N -L gpu | sed -n 's/^ *Test *#[0-9]*: *//p')
    for name in "${test_names[@]}"; do
      bin=$(find "${build}" -type f -name "${name}" -perm -u+x | head -n 1)
      [ -n "${bin}" ] && gpu_tests+=("${bin}")
    done
    mapfile -t benches < <(find "${build}/bench" -maxdepth 1 -type f -name 'bench_*' -perm -u+x 2>/dev/null | sort)
  fi
else
  # No CMake: the CUDA test and benchmark sources by name (tests/*/*_cuda.cu, bench/*_cuda.cu), with
  # the flags CMake would use.
  mkdir -p "${build}/bin"
  nvcc_flags=(-std=c++17 -O3 -DNDEBUG "-gencode=arch=compute_${arch},code=[compute_${arch},sm_${arch}]"
              -Iinclude -Itests -I"${deps}/include" -Xcompiler=-Wall,-Wextra -Werror=all-warnings)
  benchlib=${deps}/lib/x86_64-linux-gnu
  [ -e "${benchlib}/libbenchmark.so" ] || benchlib=""
  if step "build gpu_main" nvcc "${nvcc_flags[@]}" -c tests/gpu_main.cu -o "${build}/gpu_main.o"; then
    for src in tests/*/*_cuda.cu; do
      [ -e "${src}" ] || continue
      bin=${build}/bin/test_$(basename "${src}" .cu)
      step "build $(basename "${bin}")" nvcc "${nvcc_flags[@]}" "${src}" "${build}/gpu_main.o" -o "${bin}" &&
        gpu_tests+=("${bin}")
    done
  fi
  for src in bench/*_cuda.cu; do
    [ -e "${src}" ] || continue
    bin=${build}/bin/bench_$(basename "${src}" .cu)
    if [ -z "${benchlib}" ]; then
      skip "build $(basename "${bin}")" "no Google Benchmark in ${deps} (run --pack-deps)"
      continue
    fi
    step "build $(basename "${bin}")" nvcc "${nvcc_flags[@]}" -Ibench "${src}" bench/main.cpp -L"${benchlib}" \
      -lbenchmark -Xlinker -rpath="${benchlib}" -lpthread -o "${bin}" && benches+=("${bin}")
  done
fi

# --- tests ---------------------------------------------------------------------
if wants tests; then
  if [ ${#gpu_tests[@]} -eq 0 ]; then
    skip "GPU tests" "none built"
  elif [ "${mode}" = cmake ]; then
    step "ctest -L gpu" run_gpu_ctest
  else
    for bin in "${gpu_tests[@]}"; do step "run $(basename "${bin}")" run_gpu_test "${bin}"; done
  fi
fi

# The doctest test cases of a test binary, one name a line (doctest's -ltc listing between its rules of '=').
list_test_cases() {
  "$1" -ltc 2>/dev/null | sed -n '/^====/,/^====/{/^====/d;p}'
}

# run_sanitizer <tool> [options...]: the tool over every GPU test binary, one step per test case, so that
# a slow case (racecheck of test_losses_cuda's warp-team sweep took 29 s on an H100, the whole binary more
# than 70 s) costs one step's limit and every other case still reports.
run_sanitizer() {
  local tool=$1
  shift
  local sanitizer bin cases test_case i
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
              /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)
  [ ${#gpu_tests[@]} -gt 0 ] || skip "${tool}" "no GPU tests built"
  for bin in "${gpu_tests[@]}"; do
    if [ -z "${sanitizer}" ]; then
      skip "${tool} $(basename "${bin}")" "compute-sanitizer not found"
      continue
    fi
    mapfile -t cases < <(list_test_cases "${bin}")
    [ ${#cases[@]} -gt 0 ] || cases=("*")
    i=0
    for test_case in "${cases[@]}"; do
      i=$((i + 1))
      # doctest splits filters at commas; a '*' matches the comma instead.
      step "${tool} $(basename "${bin}") case ${i}/${#cases[@]}" run_gpu_test timeout -k 10 "${step_timeout}" \
        "${sanitizer}" --tool "${tool}" "$@" --error-exitcode 1 "${bin}" "--test-case=${test_case//,/*}" \
        "${sanitizer_test_args[@]}"
    done
  done
}

if wants memcheck; then run_sanitizer memcheck --leak-check full; fi

# --- benchmarks ----------------------------------------------------------------
if wants bench; then
  [ ${#benches[@]} -gt 0 ] || skip "benchmarks" "none built"
  for bin in "${benches[@]}"; do
    name=$(basename "${bin}")
    step "${name}" "${bin}" --benchmark_format=console --benchmark_out="${logs}/${name}.json" \
      --benchmark_out_format=json "${bench_args[@]}"
  done
fi

# PyTorch eager on the same cases, for the "x PyTorch" ratios (where python3 has a CUDA-enabled torch).
if wants bench; then
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    step "torch_eager" python3 "${root}/bench/torch_eager.py" --out "${logs}/torch_eager.json"
  else
    skip "torch_eager" "no python3 torch with CUDA"
  fi
fi

# Racecheck last (see the usage note): a call that loses the machine there has the rest already.
if wants racecheck; then run_sanitizer racecheck; fi

# --- summary -------------------------------------------------------------------
{
  echo
  printf '%-42s %-38s %8s\n' step status seconds
  for i in "${!names[@]}"; do printf '%-42s %-38s %8s\n' "${names[$i]}" "${statuses[$i]}" "${times[$i]}"; done
  echo "gpu-check (${mode} build;${parts% }): ${failures} step(s) failed; logs in ${logs}"
} | tee "${logs}/summary.txt" | tee -a "${log}"
[ "${failures}" -eq 0 ]
