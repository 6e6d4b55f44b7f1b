// bevkd BEV grid resample (bilinear, nearest, area) with a deterministic gather-form backward, host and CUDA.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <type_traits>

#include "../core/config.hpp"
#include "../core/detail/bev_rows.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/host_backend.hpp"
#include "../core/view.hpp"
#include "detail/resample_kernels.hpp"

namespace bevkd {

/// @brief A logical [B, H, W, C] grid (a BEV map before flattening H*W into pillars) with arbitrary element strides.
template <class T>
using grid_view = strided_view<T, 4>;

/// @brief [B, H, W, C] view of a channels-last tensor stored as [B, H, W, C].
template <class T>
grid_view<T> grid_nhwc(T* data, index_t batch, index_t height, index_t width, index_t channels) {
  return make_view<T, 4>(data, {batch, height, width, channels},
                         {height * width * channels, width * channels, channels, 1},
                         batch * height * width * channels);
}

/// @brief [B, H, W, C] view of a channels-first tensor stored as [B, C, H, W] (BEVDet, CenterPoint heads).
template <class T>
grid_view<T> grid_nchw(T* data, index_t batch, index_t channels, index_t height, index_t width) {
  return make_view<T, 4>(data, {batch, height, width, channels}, {channels * height * width, width, 1, height * width},
                         batch * channels * height * width);
}

/// @brief [B, H, W, C] view of a sequence-first tensor stored as [H*W, B, C] (BEVFormer's bev_embed).
template <class T>
grid_view<T> grid_sequence_first(T* data, index_t height, index_t width, index_t batch, index_t channels) {
  return make_view<T, 4>(data, {batch, height, width, channels},
                         {channels, width * batch * channels, batch * channels, 1},
                         height * width * batch * channels);
}

/// @brief Interpolation rule of bev_resample (each equals the PyTorch `F.interpolate` mode of the same name).
enum class resample_mode {
  bilinear,  ///< `mode='bilinear'` with options.align_corners.
  nearest,   ///< `mode='nearest'` (PyTorch's legacy floor rule, not 'nearest-exact').
  area       ///< `mode='area'`, i.e. `adaptive_avg_pool2d` to the output size.
};

/// @brief Options of bev_resample.
struct resample_options {
  resample_mode mode = resample_mode::bilinear;  ///< Interpolation rule.
  bool align_corners = false;                    ///< Bilinear only: PyTorch's align_corners.
  bool accumulate = false;                       ///< Add into out (forward) or grad_in (backward), not overwrite.
};

/// @brief Resamples [B, H, W, C] to [B, H2, W2, C] (out = A in) and applies the exact adjoint (grad_in = A^T grad_out).
///
/// A = A_y (x) A_x is separable; along an axis of source size n and destination size m
/// (destination index j, source cell i), with PyTorch's formulas and arithmetic precision
/// (float for float/half/bfloat16, double for double):
/// - bilinear, align_corners = false: s = n / m, src = max(s (j + 0.5) - 0.5, 0);
///   align_corners = true: s = (n - 1) / (m - 1) (0 when m = 1), src = s j.
///   i0 = min(floor(src), n - 1), lambda = clamp(src - i0, 0, 1); taps i0 (1 - lambda) and
///   i0 + 1 (lambda). A tap of weight 0 is skipped and on the last cell the two coinciding
///   taps are one tap of weight 1, so an equal-size resize is an exact copy (PyTorch
///   computes (1 - lambda) x + lambda x there, which can differ in the last bit).
/// - nearest: i = min(floor(float(j) * (float(n) / float(m))), n - 1), in single precision for every
///   dtype exactly as PyTorch does (so e.g. 2 -> 82 maps j = 41 to 0, not to floor(41 * 2 / 82) = 1).
/// - area: the window [floor(j n / m), ceil((j + 1) n / m)) averaged (sum / window_h / window_w),
///   as `adaptive_avg_pool2d`: the exact block mean for integer downsampling, overlapping
///   windows of one or two cells when upsampling. Defined, and accepted, for every n, m >= 1.
///
/// Accepted sizes (all modes): H, W, H2, W2 <= 2^31 - 1; H2, W2 >= 1 when the input is
/// non-empty; H, W >= 1 when the output is non-empty; an empty batch or channel count is a no-op.
/// The backward is a gather: each grad_in element sums, in a fixed order, the grad_out
/// elements whose taps cover it, so results are deterministic (no atomics) on both backends
/// and independent of the host thread count. Kernels: detail/resample_kernels.hpp.
class bev_resample {
 public:
  /// @brief The options every call uses.
  resample_options options;

  /// @brief A resample functor with the given options (validated at each call).
  explicit bev_resample(const resample_options& opts = {}) : options(opts) {}

  /// @brief Writes (or, with options.accumulate, adds) out = A in.
  /// @tparam Exec host_exec or cuda_exec (asynchronous on its stream).
  /// @tparam T float, double, bevkd::half or bevkd::bfloat16.
  /// @param exec Backend.
  /// @param in Input grid, logical [B, H, W, C], any non-negative strides.
  /// @param out Output grid [B, H2, W2, C]; must not overlap `in` nor map two elements to one address.
  /// @throw bevkd::invalid_argument naming the argument, before anything is written.
  template <class Exec, class T>
  void forward(Exec& exec, detail::identity_t<grid_view<const T>> in, grid_view<T> out) const {
    const detail::tap_rule rule = rule_of(options.mode);
    detail::validate_resample(in, out, false, "in", "out");
    run<detail::resample_forward_kernel<T>>(exec, rule, in, out, in.extent, out.extent);
  }

  /// @brief Writes (or, with options.accumulate, adds) grad_in = A^T grad_out, the exact gradient of forward.
  /// @tparam Exec host_exec or cuda_exec (asynchronous on its stream).
  /// @tparam T float, double, bevkd::half or bevkd::bfloat16.
  /// @param exec Backend.
  /// @param grad_out Gradient w.r.t. the output, logical [B, H2, W2, C], any non-negative strides.
  /// @param grad_in Gradient w.r.t. the input [B, H, W, C]; must not overlap `grad_out` nor map two elements to one
  ///        address.
  /// @throw bevkd::invalid_argument naming the argument, before anything is written.
  template <class Exec, class T>
  void backward(Exec& exec, detail::identity_t<grid_view<const T>> grad_out, grid_view<T> grad_in) const {
    const detail::tap_rule rule = rule_of(options.mode);
    detail::validate_resample(grad_out, grad_in, true, "grad_out", "grad_in");
    run<detail::resample_backward_kernel<T>>(exec, rule, grad_out, grad_in, grad_in.extent, grad_out.extent);
  }

 private:
  static detail::tap_rule rule_of(resample_mode mode) {
    switch (mode) {
      case resample_mode::bilinear: return detail::tap_rule::linear;
      case resample_mode::nearest: return detail::tap_rule::nearest;
      case resample_mode::area: return detail::tap_rule::area;
    }
    throw invalid_argument("options.mode", detail::cat("is not a resample_mode value, got ", static_cast<int>(mode)));
  }

  // One element-kernel launch over every element of dst; in_ext/out_ext are the input and output grid extents.
  template <class Kernel, class Exec, class T>
  void run(Exec& exec, detail::tap_rule rule, const grid_view<const T>& src, const grid_view<T>& dst,
           const index_t (&in_ext)[4], const index_t (&out_ext)[4]) const {
    using acc = accum_t<T>;
    const bool align = options.align_corners;
    const detail::resample_problem<T> problem{src,
                                              dst,
                                              detail::make_resample_axis<acc>(in_ext[1], out_ext[1], rule, align),
                                              detail::make_resample_axis<acc>(in_ext[2], out_ext[2], rule, align),
                                              detail::make_grid_walk(dst),
                                              options.accumulate};
    const Kernel kernel{problem};
    if constexpr (std::is_same<Exec, host_exec>::value) {
      // The CPU walks pixels and computes each pixel's taps once for all its channels.
      const index_t pixels = dst.extent[0] * dst.extent[1] * dst.extent[2];
      exec.parallel_for(pixels, [&kernel](index_t q) { kernel.pixel(q); }, dst.extent[3]);
    } else {
      exec.parallel_for(dst.size(), kernel);  // one element per thread on the device
    }
  }
};

}  // namespace bevkd
