#!/usr/bin/env bash
# Builds bevkd's examples (CPU only) and runs the main job: the distillation demo.
# SPDX-License-Identifier: Apache-2.0
#
# Usage: scripts/run-example.sh   (after scripts/setup.sh). Build tree: build-example/.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-example -G Ninja -DCMAKE_BUILD_TYPE=Release -DBEVKD_BUILD_TESTS=OFF \
  -DBEVKD_BUILD_BENCHMARKS=OFF -DBEVKD_ENABLE_CUDA=OFF -DBEVKD_BUILD_EXAMPLES=ON > build-example.log
cmake --build build-example --target bevkd_demo >> build-example.log
./build-example/examples/bevkd_demo
