// bevkd benchmarks: problem sizes, random inputs and the byte-floor counter shared by the host and CUDA benchmarks.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <benchmark/benchmark.h>

#include <bevkd/core/dtype.hpp>

#include <cstddef>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace bevkd_bench {

using bevkd::index_t;

/// @brief Batch of every benchmark (DESIGN.md's performance target: B = 2).
constexpr index_t batch = 2;
/// @brief Pillars of a 200x200 BEV grid.
constexpr index_t grid_side = 200;
/// @brief P = 200 * 200.
constexpr index_t pillars = grid_side * grid_side;
/// @brief Channel counts measured: classes (10), the target's 64, wide features (256).
constexpr index_t channel_counts[] = {10, 64, 256};

/// @brief Short dtype name used in benchmark names.
template <class T>
const char* dtype_label() {
  return bevkd::dtype_name(bevkd::dtype_of<T>::value);
}

/// @brief Student and teacher tensors [B, P, C] (NHWC, contiguous) with random logits-scaled values.
template <class T>
struct host_inputs {
  index_t channels = 0;     ///< C.
  std::vector<T> student;   ///< Student logits / features.
  std::vector<T> teacher;   ///< Teacher logits / features.

  /// @brief Elements of one tensor.
  index_t size() const { return batch * pillars * channels; }
  /// @brief Byte floor of a fused call: student and teacher read once, the gradient written once.
  double floor_bytes() const { return 3.0 * static_cast<double>(size()) * static_cast<double>(sizeof(T)); }
};

/// @brief Inputs for C channels, generated once per (T, C) and reused by every benchmark of that size.
///
/// Values are N(0, 3^2) (the spread of detection-head logits), teacher and student
/// independent, never exactly zero, rounded to T.
template <class T>
const host_inputs<T>& inputs_for(index_t channels) {
  static std::map<index_t, std::unique_ptr<host_inputs<T>>> cache;
  auto& slot = cache[channels];
  if (!slot) {
    slot = std::make_unique<host_inputs<T>>();
    slot->channels = channels;
    const std::size_t n = static_cast<std::size_t>(slot->size());
    slot->student.resize(n);
    slot->teacher.resize(n);
    std::mt19937 gen(static_cast<std::mt19937::result_type>(1234 + channels));
    std::normal_distribution<float> logit(0.0f, 3.0f);
    auto draw = [&] {
      const float x = logit(gen);
      return bevkd::store_from_accum<T>(x == 0.0f ? 0.5f : x);
    };
    for (std::size_t i = 0; i < n; ++i) slot->student[i] = draw();
    for (std::size_t i = 0; i < n; ++i) slot->teacher[i] = draw();
  }
  return *slot;
}

/// @brief Sets the decimal bytes-per-second counter of the byte floor (shown as e.g. "25.1G/s").
inline void set_floor_counter(benchmark::State& state, double floor_bytes) {
  state.counters["floor_bw"] =
      benchmark::Counter(floor_bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::OneK::kIs1000);
}

/// @brief "family/dtype" benchmark name; Google Benchmark appends "/C:../threads:..".
template <class T>
std::string bench_name(const char* family) {
  return std::string(family) + "/" + dtype_label<T>();
}

}  // namespace bevkd_bench
