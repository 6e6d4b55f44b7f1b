// bevkd weight inheritance: tensor transforms (convert, slice, select, rank, resize, head averaging, permute) on host and CUDA.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "../core/config.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "../ops/resample.hpp"
#include "detail/transform_kernels.hpp"

namespace bevkd {

// Every transform takes an executor (host_exec, or cuda_exec with device pointers), reads a
// contiguous row-major source and writes a contiguous destination that must not overlap it.
// Element math runs in accum_t<T>, so host and device agree; launches are asynchronous on CUDA.

/// @brief Splits a contiguous shape around dimension `dim` into [outer, dim, inner].
/// @throw bevkd::invalid_argument when `dim` is out of range.
inline axis_split split_at(const std::vector<index_t>& shape, int dim) {
  detail::require(dim >= 0 && dim < static_cast<int>(shape.size()), "dim", "must be in [0, ", shape.size(), "), got ",
                  dim);
  axis_split s;
  for (int d = 0; d < dim; ++d) s.outer *= shape[static_cast<std::size_t>(d)];
  s.dim = shape[static_cast<std::size_t>(dim)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < shape.size(); ++d) s.inner *= shape[d];
  return s;
}

/// @brief Converts `count` elements From -> To (f64/f32/f16/bf16; rounding to nearest even).
template <class Exec, class From, class To>
void convert_elements(Exec& exec, const From* in, To* out, index_t count) {
  exec.parallel_for(count, detail::convert_kernel<From, To>{in, out});
}

/// @brief Copies the slice [start, start + count) of dimension `dim` of a [outer, dim, inner] source.
/// @throw bevkd::invalid_argument when the slice leaves the source.
template <class Exec, class T>
void slice_dim(Exec& exec, const T* in, axis_split shape, index_t start, index_t count, T* out) {
  detail::require(start >= 0 && count >= 0 && start + count <= shape.dim, "slice",
                  "[", start, ", ", start + count, ") is outside the dimension of extent ", shape.dim);
  exec.parallel_for(shape.outer * count * shape.inner, detail::gather_kernel<T>{in, out, shape, nullptr, start, count});
}

/// @brief Copies the channels `index[0..count)` (executor-accessible memory) of dimension `dim`, in that order.
///
/// The indices are validated by the caller (select_channels_checked on the host does it).
template <class Exec, class T>
void select_channels(Exec& exec, const T* in, axis_split shape, const index_t* index, index_t count, T* out) {
  exec.parallel_for(shape.outer * count * shape.inner, detail::gather_kernel<T>{in, out, shape, index, 0, count});
}

/// @brief Throws unless every index is in [0, extent).
inline void require_indices(const std::vector<index_t>& index, index_t extent) {
  for (const index_t i : index)
    detail::require(i >= 0 && i < extent, "index", "channel ", i, " is outside [0, ", extent, ")");
}

/// @brief Importance norm used to rank channels.
enum class importance_norm { l1 = 1, l2 = 2 };

/// @brief Writes the L1 or L2 norm of every channel c of dimension `dim` (over all other dimensions) to norm[c] (double).
template <class Exec, class T>
void channel_importance(Exec& exec, const T* in, axis_split shape, importance_norm norm, double* out) {
  exec.parallel_for(shape.dim, detail::channel_norm_kernel<T>{in, shape, static_cast<int>(norm), out});
}

/// @brief The k most important channels, ties broken by the lower index, returned in ascending order.
///
/// NaN norms rank below every number.
/// @throw bevkd::invalid_argument when k is negative or exceeds the channel count.
inline std::vector<index_t> top_k_channels(const std::vector<double>& norms, index_t k) {
  detail::require(k >= 0 && k <= static_cast<index_t>(norms.size()), "k", "must be in [0, ", norms.size(), "], got ", k);
  auto key = [&](index_t i) {
    const double v = norms[static_cast<std::size_t>(i)];
    return std::isnan(v) ? -std::numeric_limits<double>::infinity() : v;
  };
  std::vector<index_t> order(norms.size());
  std::iota(order.begin(), order.end(), index_t(0));
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return key(a) > key(b); });
  order.resize(static_cast<std::size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

/// @brief Averages heads in groups of f = heads_in / heads_out along a dimension laid out as heads x head_dim.
/// @throw bevkd::invalid_argument unless heads_out divides heads_in and heads_in divides the dimension.
template <class Exec, class T>
void average_head_groups(Exec& exec, const T* in, axis_split shape, index_t heads_in, index_t heads_out, T* out) {
  detail::require(heads_in >= 1 && heads_out >= 1 && heads_in % heads_out == 0, "heads",
                  "teacher heads ", heads_in, " must be a multiple of student heads ", heads_out);
  detail::require(shape.dim % heads_in == 0, "heads", "dimension of extent ", shape.dim, " is not ", heads_in,
                  " heads x head_dim");
  const index_t head_dim = shape.dim / heads_in, groups = heads_in / heads_out;
  exec.parallel_for(shape.outer * heads_out * head_dim * shape.inner,
                    detail::head_average_kernel<T>{in, out, shape, head_dim, groups});
}

/// @brief The shape of `shape` permuted by `perm` (out dimension d is in dimension perm[d]).
/// @throw bevkd::invalid_argument unless perm is a permutation of [0, rank) with rank <= 8.
inline std::vector<index_t> permuted_shape(const std::vector<index_t>& shape, const std::vector<int>& perm) {
  detail::require(perm.size() == shape.size() && perm.size() <= static_cast<std::size_t>(max_permute_rank), "perm",
                  "must have one entry per dimension (rank ", shape.size(), ", at most 8), got ", perm.size());
  std::vector<bool> seen(shape.size(), false);
  std::vector<index_t> out;
  for (const int p : perm) {
    detail::require(p >= 0 && p < static_cast<int>(shape.size()) && !seen[static_cast<std::size_t>(p)], "perm",
                    "is not a permutation of [0, ", shape.size(), ")");
    seen[static_cast<std::size_t>(p)] = true;
    out.push_back(shape[static_cast<std::size_t>(p)]);
  }
  return out;
}

/// @brief Writes the contiguous permutation of a contiguous tensor: out dimension d is in dimension perm[d].
template <class Exec, class T>
void permute_dims(Exec& exec, const T* in, const std::vector<index_t>& shape, const std::vector<int>& perm, T* out) {
  const std::vector<index_t> out_shape = permuted_shape(shape, perm);
  detail::permute_kernel<T> kernel{in, out, static_cast<int>(shape.size()), {}, {}};
  std::vector<index_t> in_stride(shape.size(), 1);
  for (int d = static_cast<int>(shape.size()) - 2; d >= 0; --d)
    in_stride[static_cast<std::size_t>(d)] = in_stride[static_cast<std::size_t>(d) + 1] * shape[static_cast<std::size_t>(d) + 1];
  for (std::size_t d = 0; d < perm.size(); ++d) {
    kernel.extent[d] = out_shape[d];
    kernel.stride[d] = in_stride[static_cast<std::size_t>(perm[d])];
  }
  index_t count = 1;
  for (const index_t e : out_shape) count *= e;
  exec.parallel_for(count, kernel);
}

/// @brief Interpolation of a grid or table resize.
enum class resize_mode {
  bilinear,  ///< PyTorch `mode='bilinear'` (or 'linear' for a 1-D table): bev_resample.
  bicubic,   ///< PyTorch `mode='bicubic'`: a = -0.75 cubic convolution, border-clamped taps.
  area,      ///< PyTorch `mode='area'` (adaptive average pooling): bev_resample.
  nearest    ///< PyTorch `mode='nearest'`: bev_resample.
};

/// @brief Options of a grid or table resize.
struct resize_options {
  resize_mode mode = resize_mode::bilinear;  ///< Interpolation.
  bool align_corners = false;                ///< PyTorch's align_corners (bilinear and bicubic).
};

/// @brief Memory layout of a 2-D grid table.
enum class grid_layout {
  hw_c,  ///< [H*W, C], row-major over (h, w): an nn.Embedding of BEV queries.
  c_hw   ///< [C, H, W].
};

/// @brief Resizes a [B, H, W, C] grid view to [B, H2, W2, C]: the BEV resample op, or the bicubic kernel.
template <class Exec, class T>
void resize_views(Exec& exec, const grid_view<const T>& src, const grid_view<T>& dst, resize_options options) {
  if (options.mode != resize_mode::bicubic) {
    const resample_mode mode = options.mode == resize_mode::bilinear ? resample_mode::bilinear
                               : options.mode == resize_mode::area   ? resample_mode::area
                                                                     : resample_mode::nearest;
    bev_resample(resample_options{mode, options.align_corners, false}).forward(exec, src, dst);
    return;
  }
  detail::validate_resample(src, dst, false, "in", "out");
  using acc = accum_t<T>;
  exec.parallel_for(dst.size(),
                    detail::bicubic_kernel<T>{src, dst, detail::make_cubic_axis<acc>(src.extent[1], dst.extent[1], options.align_corners),
                                              detail::make_cubic_axis<acc>(src.extent[2], dst.extent[2], options.align_corners)});
}

/// @brief Resizes a contiguous grid table from H x W to H2 x W2 cells (C channels kept).
///
/// Bilinear, area and nearest run the BEV resample op (ops/resample.hpp) on a [1, H, W, C]
/// view of the table; bicubic follows PyTorch's upsample_bicubic2d: source index
/// s (j + 1/2) - 1/2 (s j with align_corners), unclamped; i0 = min(floor, n - 1); t clamped
/// to [0, 1]; taps i0 - 1 .. i0 + 2 clamped to the border with the a = -0.75 weights.
template <class Exec, class T>
void resize_grid(Exec& exec, const T* in, grid_layout layout, index_t h, index_t w, index_t c, index_t h2, index_t w2,
                 resize_options options, T* out) {
  const bool channels_last = layout == grid_layout::hw_c;
  resize_views(exec, channels_last ? grid_nhwc(in, 1, h, w, c) : grid_nchw(in, 1, c, h, w),
               channels_last ? grid_nhwc(out, 1, h2, w2, c) : grid_nchw(out, 1, c, h2, w2), options);
}

/// @brief Resizes dimension `dim` of a contiguous [outer, dim, inner] tensor to `m` (1-D interpolation along it).
///
/// Each of the `outer` slices is an [N, inner] table resized to [M, inner], e.g. the row or
/// column positional embeddings [N, C] -> [M, C] (outer = 1); same rules as resize_grid.
template <class Exec, class T>
void resize_along(Exec& exec, const T* in, axis_split shape, index_t m, resize_options options, T* out) {
  resize_views(exec, grid_nhwc(in, shape.outer, shape.dim, 1, shape.inner),
               grid_nhwc(out, shape.outer, m, 1, shape.inner), options);
}

/// @brief Resizes a contiguous [N, C] table (row or column positional embeddings) to [M, C] along N.
template <class Exec, class T>
void resize_table(Exec& exec, const T* in, index_t n, index_t c, index_t m, resize_options options, T* out) {
  resize_along(exec, in, axis_split{1, n, c}, m, options, out);
}

}  // namespace bevkd
