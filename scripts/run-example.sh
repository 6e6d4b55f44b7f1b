#!/usr/bin/env bash
# Builds bevkd's examples (CPU only) and runs the main job: the distillation trainer, then the small losses demo.
# SPDX-License-Identifier: Apache-2.0
#
# Usage: scripts/run-example.sh [trainer flags, e.g. --quick]   (after scripts/setup.sh)
# Build tree: build-example/ (override with BEVKD_EXAMPLE_BUILD_DIR). The trainer needs bevkd::inherit, i.e.
# nlohmann/json (nlohmann-json3-dev, installed by scripts/setup.sh). Its safetensors files go to
# <build tree>/examples/distill_trainer_out/. Default configuration: about half a minute on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${BEVKD_EXAMPLE_BUILD_DIR:-build-example}"
cmake -S . -B "${build}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBEVKD_BUILD_TESTS=OFF \
  -DBEVKD_BUILD_BENCHMARKS=OFF -DBEVKD_ENABLE_CUDA=OFF -DBEVKD_BUILD_TOOLS=OFF -DBEVKD_BUILD_EXAMPLES=ON \
  > build-example.log
if ! grep -q "bevkd_distill_trainer" "${build}/build.ninja"; then
  echo "run-example.sh: nlohmann_json was not found, so the trainer (it needs bevkd::inherit) cannot be built;" >&2
  echo "                run scripts/setup.sh (nlohmann-json3-dev) first. Log: build-example.log" >&2
  exit 1
fi
cmake --build "${build}" --target bevkd_distill_trainer bevkd_demo >> build-example.log
"${build}/examples/bevkd_distill_trainer" "$@"
echo
"${build}/examples/bevkd_demo"
