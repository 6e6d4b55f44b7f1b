// bevkd tests: random BEV tensors in every supported layout, and the views over them.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <bevkd/core/dtype.hpp>
#include <bevkd/core/view.hpp>

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace bevkd_test {

using bevkd::index_t;

/// @brief Memory layouts a logical [B, P, C] tensor is tested in.
enum class layout { nhwc, nchw, sequence_first, padded };

/// @brief Every layout, for loops.
inline const layout all_layouts[] = {layout::nhwc, layout::nchw, layout::sequence_first, layout::padded};

/// @brief Layout name for test messages.
inline std::string layout_name(layout l) {
  switch (l) {
    case layout::nhwc: return "nhwc";
    case layout::nchw: return "nchw";
    case layout::sequence_first: return "sequence_first";
    default: return "padded";
  }
}

/// @brief Elements a [B, P, C] tensor occupies in a layout (padded rows carry 3 unused elements).
inline index_t storage_size(layout l, index_t B, index_t P, index_t C) {
  return l == layout::padded ? B * P * (C + 3) : B * P * C;
}

/// @brief The [B, P, C] view of storage in a layout (P is treated as a 1 x P grid for NHWC/NCHW).
template <class T>
bevkd::bev_view<T> view_of(layout l, T* data, index_t B, index_t P, index_t C) {
  switch (l) {
    case layout::nhwc: return bevkd::bev_nhwc(data, B, 1, P, C);
    case layout::nchw: return bevkd::bev_nchw(data, B, C, 1, P);
    case layout::sequence_first: return bevkd::bev_sequence_first(data, P, B, C);
    default: return bevkd::make_view<T, 3>(data, {B, P, C}, {P * (C + 3), C + 3, 1});
  }
}

/// @brief Random values ~ N(mean, scale) rounded to T (never all zeros).
template <class T>
std::vector<T> random_values(index_t n, std::mt19937& rng, double scale = 2.0, double mean = 0.0) {
  std::normal_distribution<double> dist(mean, scale);
  std::vector<T> out(static_cast<std::size_t>(n));
  for (auto& v : out) v = T(static_cast<float>(dist(rng)));
  return out;
}

/// @brief Double-precision value of a stored element.
template <class T>
double to_double(T v) {
  return static_cast<double>(static_cast<float>(v));
}
/// @brief Double-precision value of a stored double.
inline double to_double(double v) { return v; }

/// @brief A double rounded once to T (no detour through float for double).
template <class T>
T from_double(double v) {
  return T(static_cast<float>(v));
}
/// @brief A double kept as it is.
template <>
inline double from_double<double>(double v) {
  return v;
}

/// @brief Storage for n values of T that starts `offset` elements past a 64-byte line (offset 0: as PyTorch's CPU
/// allocator places a tensor; large std::vectors sit 16 bytes past a page).
template <class T>
class line_buffer {
 public:
  /// @brief n values of `fill`.
  line_buffer(std::size_t n, std::size_t offset, T fill) : storage_(n + offset + 64 / sizeof(T), fill), n_(n) {
    const auto base = reinterpret_cast<std::uintptr_t>(storage_.data());
    first_ = storage_.data() + ((64 - base % 64) % 64) / sizeof(T) + offset;
  }
  /// @brief The first value.
  T* data() { return first_; }
  /// @brief The values as a vector.
  std::vector<T> values() const { return std::vector<T>(first_, first_ + n_); }

 private:
  std::vector<T> storage_;
  std::size_t n_;
  T* first_ = nullptr;
};

}  // namespace bevkd_test
