// bevkd tests: resample grids in several layouts, the dense double-precision reference and the shared case list.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <doctest/doctest.h>
#include <bevkd/bevkd.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "support/seed.hpp"

namespace resample_test {

using bevkd::index_t;

/// @brief Memory layouts a logical [B, H, W, C] grid is tested in.
enum class layout { nhwc, nchw, sequence_first, padded };

/// @brief Every layout, for loops.
inline const layout all_layouts[] = {layout::nhwc, layout::nchw, layout::sequence_first, layout::padded};

/// @brief Layout name for test messages.
inline const char* layout_name(layout l) {
  switch (l) {
    case layout::nhwc: return "nhwc";
    case layout::nchw: return "nchw";
    case layout::sequence_first: return "sequence_first";
    default: return "padded";
  }
}

/// @brief Logical extents of a grid.
struct shape {
  index_t B, H, W, C;
  /// @brief Number of logical elements.
  index_t size() const { return B * H * W * C; }
};

/// @brief Strides of a layout; `padded` leaves gaps between channels rows, pixels rows and batches.
inline std::array<index_t, 4> strides_of(layout l, shape s) {
  switch (l) {
    case layout::nhwc: return {s.H * s.W * s.C, s.W * s.C, s.C, 1};
    case layout::nchw: return {s.C * s.H * s.W, s.W, 1, s.H * s.W};
    case layout::sequence_first: return {s.C, s.W * s.B * s.C, s.B * s.C, 1};
    default: {
      const index_t w = s.C + 2, h = s.W * w + 5, b = s.H * h + 7;
      return {b, h, w, 1};
    }
  }
}

/// @brief Elements the storage of a grid occupies.
inline index_t storage_size(layout l, shape s) {
  if (s.size() == 0) return 0;
  const auto st = strides_of(l, s);
  return (s.B - 1) * st[0] + (s.H - 1) * st[1] + (s.W - 1) * st[2] + (s.C - 1) * st[3] + 1;
}

/// @brief Double-precision value of a stored element.
template <class T>
double to_double(T v) {
  return static_cast<double>(static_cast<float>(v));
}
/// @brief Double-precision value of a stored double.
inline double to_double(double v) { return v; }

/// @brief A grid's storage (gaps included) in one layout.
template <class T>
struct grid {
  layout lay;
  shape ext;
  std::vector<T> storage;

  /// @brief The writable view.
  bevkd::grid_view<T> view() {
    return bevkd::make_view<T, 4>(storage.data(), {ext.B, ext.H, ext.W, ext.C}, strides_of(lay, ext));
  }
  /// @brief The read-only view.
  bevkd::grid_view<const T> cview() const {
    return bevkd::make_view<const T, 4>(storage.data(), {ext.B, ext.H, ext.W, ext.C}, strides_of(lay, ext));
  }
  /// @brief Logical values in [B, H, W, C] row-major order, as doubles.
  std::vector<double> logical() const {
    const auto v = cview();
    std::vector<double> out;
    for (index_t b = 0; b < ext.B; ++b)
      for (index_t h = 0; h < ext.H; ++h)
        for (index_t w = 0; w < ext.W; ++w)
          for (index_t c = 0; c < ext.C; ++c) out.push_back(to_double(v(b, h, w, c)));
    return out;
  }
};

/// @brief A grid whose whole storage (gaps too) holds uniform values in [-2, 2) rounded to T: never zeros.
template <class T>
grid<T> random_grid(layout l, shape s, std::mt19937& rng) {
  std::uniform_real_distribution<double> dist(-2.0, 2.0);
  grid<T> g{l, s, std::vector<T>(static_cast<std::size_t>(storage_size(l, s)))};
  for (auto& v : g.storage) v = T(static_cast<float>(dist(rng)));
  return g;
}

/// @brief One axis matrix A (m x n, row-major) written from PyTorch's formulas.
///
/// The source positions are computed in Acc, PyTorch's accscalar_t (float for float, half and
/// bfloat16; double for double), because that rounding is part of the semantics: at 200 cells
/// float positions move the bilinear weights by ~1e-5. Nearest uses float for every dtype, as
/// PyTorch does. The matrix entries themselves are kept in double.
template <class Acc>
std::vector<double> axis_matrix(index_t n, index_t m, const bevkd::resample_options& opt) {
  std::vector<double> a(static_cast<std::size_t>(m * n), 0.0);
  auto at = [&](index_t j, index_t i) -> double& { return a[static_cast<std::size_t>(j * n + i)]; };
  for (index_t j = 0; j < m; ++j) {
    if (opt.mode == bevkd::resample_mode::nearest) {
      // upsample_nearest2d: scale = (float)n / m and floorf(j * scale), both in float.
      const float scale = static_cast<float>(n) / static_cast<float>(m);
      at(j, std::min<index_t>(static_cast<index_t>(std::floor(static_cast<float>(j) * scale)), n - 1)) = 1;
    } else if (opt.mode == bevkd::resample_mode::area) {
      const index_t start = (j * n) / m, end = ((j + 1) * n + m - 1) / m;
      for (index_t i = start; i < end; ++i) at(j, i) = 1.0 / static_cast<double>(end - start);
    } else {
      Acc src = 0;
      if (opt.align_corners) {
        const Acc scale = m > 1 ? static_cast<Acc>(n - 1) / static_cast<Acc>(m - 1) : Acc(0);
        src = scale * static_cast<Acc>(j);
      } else {
        const Acc scale = static_cast<Acc>(n) / static_cast<Acc>(m);
        src = std::max(scale * (static_cast<Acc>(j) + Acc(0.5)) - Acc(0.5), Acc(0));
      }
      const index_t i0 = std::min<index_t>(static_cast<index_t>(std::floor(src)), n - 1);
      const index_t i1 = i0 < n - 1 ? i0 + 1 : i0;
      const double lambda = std::min(std::max(static_cast<double>(src) - static_cast<double>(i0), 0.0), 1.0);
      at(j, i0) += 1 - lambda;
      at(j, i1) += lambda;
    }
  }
  return a;
}

/// @brief One resample problem: options, input extents and output spatial size.
struct resample_case {
  bevkd::resample_options opt;
  shape in;
  index_t H2, W2;

  /// @brief Output extents.
  shape out() const { return {in.B, H2, W2, in.C}; }
  /// @brief Description for failure messages.
  std::string name() const {
    const char* modes[] = {"bilinear", "nearest", "area"};
    return std::string(modes[static_cast<int>(opt.mode)]) + (opt.align_corners ? "/align" : "") + " " +
           std::to_string(in.H) + "x" + std::to_string(in.W) + "->" + std::to_string(H2) + "x" + std::to_string(W2);
  }
};

/// @brief y = (A_y (x) A_x) x on logical [B, h, w, C] vectors for element type T; transpose = true applies the
/// transpose.
template <class T>
std::vector<double> apply_separable(const resample_case& rc, const std::vector<double>& x, bool transpose) {
  const shape in = rc.in, out = rc.out();
  using acc = bevkd::accum_t<T>;
  const auto ay = axis_matrix<acc>(in.H, out.H, rc.opt), ax = axis_matrix<acc>(in.W, out.W, rc.opt);
  const shape from = transpose ? out : in, to = transpose ? in : out;
  // Entry of the map from `from` index f to `to` index t along an axis.
  auto coef = [&](const std::vector<double>& a, index_t n, index_t t, index_t f) {
    return transpose ? a[static_cast<std::size_t>(f * n + t)] : a[static_cast<std::size_t>(t * n + f)];
  };
  std::vector<double> y(static_cast<std::size_t>(to.size()), 0.0);
  for (index_t b = 0; b < to.B; ++b)
    for (index_t h = 0; h < to.H; ++h)
      for (index_t w = 0; w < to.W; ++w)
        for (index_t fh = 0; fh < from.H; ++fh) {
          const double cy = coef(ay, in.H, h, fh);
          if (cy == 0) continue;
          for (index_t fw = 0; fw < from.W; ++fw) {
            const double cx = coef(ax, in.W, w, fw);
            if (cx == 0) continue;
            for (index_t c = 0; c < to.C; ++c)
              y[static_cast<std::size_t>(((b * to.H + h) * to.W + w) * to.C + c)] +=
                  cy * cx * x[static_cast<std::size_t>(((b * from.H + fh) * from.W + fw) * from.C + c)];
          }
        }
  return y;
}

/// @brief Absolute and relative tolerance of a computed T against the double reference (inputs of magnitude <= 2).
template <class T>
struct tolerance {
  static constexpr double abs = 2e-5, rel = 2e-5;
};
/// @brief Double: a few ulp of the sums.
template <>
struct tolerance<double> {
  static constexpr double abs = 1e-12, rel = 1e-12;
};
/// @brief Half: one rounding of the result (2^-11 relative) plus float accumulation.
template <>
struct tolerance<bevkd::half> {
  static constexpr double abs = 2e-3, rel = 1.5e-3;
};
/// @brief bfloat16: one rounding of the result (2^-8 relative) plus float accumulation.
template <>
struct tolerance<bevkd::bfloat16> {
  static constexpr double abs = 1.6e-2, rel = 8e-3;
};

/// @brief Checks every logical value of `actual` against `expected` within T's tolerance (reports the first miss).
template <class T>
void check_close(const std::vector<double>& actual, const std::vector<double>& expected, const std::string& what) {
  REQUIRE(actual.size() == expected.size());
  std::size_t misses = 0, first = 0;
  for (std::size_t k = 0; k < actual.size(); ++k) {
    const bool ok = std::abs(actual[k] - expected[k]) <= tolerance<T>::abs + tolerance<T>::rel * std::abs(expected[k]);
    if (!ok && misses++ == 0) first = k;
  }
  INFO(what << ": " << misses << " of " << actual.size() << " values off; first at " << first << ": "
            << (misses ? actual[first] : 0.0) << " vs " << (misses ? expected[first] : 0.0));
  CHECK(misses == 0);
}

/// @brief Checks that storage outside a view's logical elements (gaps of the padded layout) is bit-identical to before.
template <class T>
void check_gaps_untouched(const grid<T>& after, const grid<T>& before) {
  std::vector<char> logical(after.storage.size(), 0);
  const auto v = after.cview();
  for (index_t b = 0; b < after.ext.B; ++b)
    for (index_t h = 0; h < after.ext.H; ++h)
      for (index_t w = 0; w < after.ext.W; ++w)
        for (index_t c = 0; c < after.ext.C; ++c) logical[static_cast<std::size_t>(v.offset(b, h, w, c))] = 1;
  std::size_t touched = 0;
  for (std::size_t k = 0; k < logical.size(); ++k)
    if (!logical[k] && std::memcmp(&after.storage[k], &before.storage[k], sizeof(T)) != 0) ++touched;
  CHECK_MESSAGE(touched == 0, "a write landed outside the view");
}

/// @brief Every mode/align combination.
inline std::vector<bevkd::resample_options> all_modes() {
  using bevkd::resample_mode;
  return {{resample_mode::bilinear, false, false},
          {resample_mode::bilinear, true, false},
          {resample_mode::nearest, false, false},
          {resample_mode::area, false, false}};
}

/// @brief Size pairs (H, W) -> (H2, W2): up, down, odd, identity, to and from a single cell.
inline std::vector<std::array<index_t, 4>> size_pairs() {
  return {{7, 5, 3, 4}, {4, 6, 8, 12}, {8, 12, 4, 6},  {5, 6, 5, 6},  {6, 4, 13, 9},
          {9, 7, 1, 1}, {1, 1, 3, 2},  {12, 10, 3, 5}, {3, 11, 10, 2}};
}

/// @brief The full case list: every mode x every size pair, with B = 2, C = 3.
inline std::vector<resample_case> all_cases() {
  std::vector<resample_case> cases;
  for (const auto& opt : all_modes())
    for (const auto& s : size_pairs()) cases.push_back({opt, {2, s[0], s[1], 3}, s[2], s[3]});
  return cases;
}

}  // namespace resample_test
