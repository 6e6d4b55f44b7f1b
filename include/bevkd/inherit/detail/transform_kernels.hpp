// bevkd internal: the per-element host/device kernels of the weight-inheritance transforms.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cmath>

#include "../../core/config.hpp"
#include "../../core/dtype.hpp"
#include "../../core/view.hpp"

namespace bevkd {

/// @brief A contiguous tensor seen as [outer, dim, inner] around one of its dimensions.
struct axis_split {
  index_t outer = 1;  ///< Product of the extents before the dimension.
  index_t dim = 1;    ///< The dimension's extent.
  index_t inner = 1;  ///< Product of the extents after it.
};

/// @brief Largest rank a permutation accepts.
constexpr int max_permute_rank = 8;

namespace detail {

/// @brief out[i] = in[i] converted From -> To (through the wider accumulation type, rounding to nearest even).
template <class From, class To>
struct convert_kernel {
  const From* in;  ///< Source elements.
  To* out;         ///< Destination elements.
  /// @brief Converts element i.
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    out[i] = To(static_cast<accum_t<To>>(load_as_accum(in[i])));
  }
};

/// @brief out[o, j, k] = in[o, index[j], k] (index null: start + j): slices and channel selection.
template <class T>
struct gather_kernel {
  const T* in;           ///< Source [outer, dim, inner].
  T* out;                ///< Destination [outer, count, inner].
  axis_split shape;      ///< Source split.
  const index_t* index;  ///< `count` source indices, or null for a contiguous run.
  index_t start;         ///< First source index when `index` is null.
  index_t count;         ///< Selected extent.
  /// @brief Writes destination element i.
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    const index_t k = i % shape.inner;
    const index_t j = (i / shape.inner) % count;
    const index_t o = i / (shape.inner * count);
    const index_t src = index ? index[j] : start + j;
    out[i] = in[(o * shape.dim + src) * shape.inner + k];
  }
};

/// @brief norm[c] = sum over (o, k) of |x| (p = 1) or sqrt(sum x^2) (p = 2), in double and in a fixed order.
template <class T>
struct channel_norm_kernel {
  const T* in;       ///< Source [outer, dim, inner].
  axis_split shape;  ///< Source split (channels along dim).
  int p;             ///< 1 or 2.
  double* norm;      ///< `dim` outputs.
  /// @brief Computes the norm of channel c.
  BEVKD_HOST_DEVICE void operator()(index_t c) const {
    double sum = 0;
    for (index_t o = 0; o < shape.outer; ++o)
      for (index_t k = 0; k < shape.inner; ++k) {
        const double x = static_cast<double>(load_as_accum(in[(o * shape.dim + c) * shape.inner + k]));
        sum += p == 1 ? (x < 0 ? -x : x) : x * x;
      }
    norm[c] = p == 1 ? sum : sqrt(sum);
  }
};

/// @brief out[o, h d + e, k] = mean over g < groups of in[o, (h groups + g) d + e, k]: teacher heads averaged in groups.
template <class T>
struct head_average_kernel {
  const T* in;        ///< Source [outer, H_T d, inner].
  T* out;             ///< Destination [outer, H_S d, inner].
  axis_split shape;   ///< Source split.
  index_t head_dim;   ///< d.
  index_t groups;     ///< f = H_T / H_S.
  /// @brief Writes destination element i.
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    using acc = accum_t<T>;
    const index_t out_dim = shape.dim / groups;
    const index_t k = i % shape.inner;
    const index_t j = (i / shape.inner) % out_dim;
    const index_t o = i / (shape.inner * out_dim);
    const index_t first = (j / head_dim) * groups * head_dim + j % head_dim;
    acc sum = 0;
    for (index_t g = 0; g < groups; ++g) sum += load_as_accum(in[(o * shape.dim + first + g * head_dim) * shape.inner + k]);
    out[i] = store_from_accum<T>(sum / static_cast<acc>(groups));
  }
};

/// @brief out = in with dimensions permuted: out index (i_0, ..., i_r) reads in at sum i_d * stride[d].
template <class T>
struct permute_kernel {
  const T* in;                          ///< Source.
  T* out;                               ///< Destination (contiguous, permuted shape).
  int rank;                             ///< Number of dimensions.
  index_t extent[max_permute_rank];     ///< Destination extents.
  index_t stride[max_permute_rank];     ///< Source element stride of each destination dimension.
  /// @brief Writes destination element i.
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    index_t offset = 0, rest = i;
    for (int d = rank - 1; d >= 0; --d) {
      offset += (rest % extent[d]) * stride[d];
      rest /= extent[d];
    }
    out[i] = in[offset];
  }
};

/// @brief One axis of PyTorch's bicubic interpolation (a = -0.75, border-clamped taps).
template <class Acc>
struct cubic_axis {
  index_t in;          ///< Source extent.
  bool align_corners;  ///< PyTorch's align_corners.
  Acc scale;           ///< Source step, as PyTorch's area_pixel_compute_scale.

  /// @brief First tap (i0 - 1) and the four weights of destination j.
  BEVKD_HOST_DEVICE index_t taps(index_t j, Acc (&w)[4]) const {
    constexpr Acc a = Acc(-0.75);
    const Acc dst = static_cast<Acc>(j);
    const Acc real = align_corners ? scale * dst : scale * (dst + Acc(0.5)) - Acc(0.5);  // no clamp for cubic
    const Acc fl = floor(real);
    index_t i0 = static_cast<index_t>(fl);
    i0 = i0 < in - 1 ? i0 : in - 1;
    Acc t = real - static_cast<Acc>(i0);
    t = t < Acc(0) ? Acc(0) : (t > Acc(1) ? Acc(1) : t);
    const Acc x0 = t + Acc(1), x1 = t, x2 = Acc(1) - t, x3 = x2 + Acc(1);  // PyTorch's operands
    w[0] = ((a * x0 - Acc(5) * a) * x0 + Acc(8) * a) * x0 - Acc(4) * a;
    w[1] = ((a + Acc(2)) * x1 - (a + Acc(3))) * x1 * x1 + Acc(1);
    w[2] = ((a + Acc(2)) * x2 - (a + Acc(3))) * x2 * x2 + Acc(1);
    w[3] = ((a * x3 - Acc(5) * a) * x3 + Acc(8) * a) * x3 - Acc(4) * a;
    return i0 - 1;
  }
  /// @brief Source index of tap k from `first`, clamped to the border.
  BEVKD_HOST_DEVICE index_t clamp(index_t i) const { return i < 0 ? 0 : (i > in - 1 ? in - 1 : i); }
};

/// @brief Builds a cubic axis with PyTorch's scale: (n - 1) / (m - 1) with align_corners (0 when m = 1), else n / m.
template <class Acc>
cubic_axis<Acc> make_cubic_axis(index_t in, index_t out, bool align_corners) {
  Acc scale = 0;
  if (align_corners)
    scale = out > 1 ? static_cast<Acc>(in - 1) / static_cast<Acc>(out - 1) : Acc(0);
  else if (out > 0)
    scale = static_cast<Acc>(in) / static_cast<Acc>(out);
  return cubic_axis<Acc>{in, align_corners, scale};
}

/// @brief Bicubic forward over [B, H, W, C] grids: out[b, y, x, c] = sum_ky wy_ky sum_kx wx_kx in[b, iy, ix, c].
template <class T>
struct bicubic_kernel {
  using acc = accum_t<T>;                ///< Arithmetic type (PyTorch's opmath).
  strided_view<const T, 4> in;           ///< Source grid.
  strided_view<T, 4> out;                ///< Destination grid.
  cubic_axis<acc> rows;                  ///< H axis.
  cubic_axis<acc> cols;                  ///< W axis.
  /// @brief Writes destination element i (logical row-major order over [B, H2, W2, C]).
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    const index_t c = i % out.extent[3];
    const index_t x = (i / out.extent[3]) % out.extent[2];
    const index_t y = (i / (out.extent[3] * out.extent[2])) % out.extent[1];
    const index_t b = i / (out.extent[3] * out.extent[2] * out.extent[1]);
    acc wy[4], wx[4];
    const index_t y0 = rows.taps(y, wy), x0 = cols.taps(x, wx);
    acc sum = 0;
    for (int ky = 0; ky < 4; ++ky) {
      acc inner = 0;
      for (int kx = 0; kx < 4; ++kx)
        inner += load_as_accum(in(b, rows.clamp(y0 + ky), cols.clamp(x0 + kx), c)) * wx[kx];
      sum += inner * wy[ky];
    }
    out(b, y, x, c) = store_from_accum<T>(sum);
  }
};

}  // namespace detail
}  // namespace bevkd
