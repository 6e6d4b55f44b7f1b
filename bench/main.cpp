// bevkd benchmarks: Google Benchmark's main, compiled once and shared by every benchmark binary.
// SPDX-License-Identifier: Apache-2.0
#include <benchmark/benchmark.h>

BENCHMARK_MAIN();
