// bevkd internal: the per-axis interpolation taps and the host/device element kernels of the BEV resample op.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>

#include "../../core/config.hpp"
#include "../../core/dtype.hpp"
#include "../../core/error.hpp"
#include "../../core/math.hpp"
#include "../../core/view.hpp"

namespace bevkd {
namespace detail {

/// @brief The per-axis tap rule of a resample mode (bilinear, nearest and area map to these).
enum class tap_rule {
  linear,   ///< Two-tap linear interpolation (bilinear along each axis).
  nearest,  ///< One tap, PyTorch's legacy floor rule.
  area      ///< The adaptive-average-pooling window.
};

/// @brief a * b rounded once; on the device it is never fused into a following add (so taps match the host's).
BEVKD_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

/// @brief a * b rounded once (double); never fused on the device.
BEVKD_HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

/// @brief The source cells one destination index reads along one axis: `count` consecutive cells from `first`.
///
/// Cell k has weight `first_weight` (k = 0) or `next_weight` (k > 0), and the weighted sum
/// is divided by `divisor` (the window size in area mode, 1 otherwise), as PyTorch divides
/// its pooled sums. Zero-weight taps are never emitted.
template <class Acc>
struct axis_taps {
  index_t first;     ///< First source cell.
  index_t count;     ///< Number of consecutive source cells (>= 1).
  Acc first_weight;  ///< Weight of cell `first`.
  Acc next_weight;   ///< Weight of every later cell.
  Acc divisor;       ///< Divides the weighted sum.

  /// @brief Weight of tap k.
  BEVKD_HOST_DEVICE Acc weight(index_t k) const { return k == 0 ? first_weight : next_weight; }
  /// @brief Last source cell read.
  BEVKD_HOST_DEVICE index_t last() const { return first + count - 1; }
  /// @brief Entry (j, i) of the axis matrix, for source cell i in [first, last()]: weight / divisor.
  BEVKD_HOST_DEVICE Acc coefficient(index_t i) const { return weight(i - first) / divisor; }
};

/// @brief One axis of a resample: maps destination index j in [0, out) to taps over [0, in).
///
/// The tap rule is the single source of truth for forward and backward: the backward
/// gather enumerates the destinations covering a source cell by calling the same taps().
/// Both `first` and `last()` are non-decreasing in j for every mode (floating-point
/// rounding is monotone), which is what makes the gather search exact.
template <class Acc>
struct resample_axis {
  index_t in;           ///< Source extent (>= 1 whenever taps are asked for).
  index_t out;          ///< Destination extent.
  tap_rule rule;        ///< Tap rule.
  bool align_corners;   ///< Bilinear only.
  Acc scale;            ///< Bilinear source step, computed in Acc as PyTorch's accscalar_t.
  float nearest_scale;  ///< Nearest source step: PyTorch computes it in float for every dtype.

  /// @brief The taps of destination index j.
  BEVKD_HOST_DEVICE axis_taps<Acc> taps(index_t j) const {
    if (rule == tap_rule::nearest) return nearest_taps(j);
    if (rule == tap_rule::area) return area_taps(j);
    return linear_taps(j);
  }

  /// @brief Smallest destination index whose taps reach source cell i (or `out` when none does).
  BEVKD_HOST_DEVICE index_t first_covering(index_t i) const {
    // The proportional guess is only a starting point; the two walks make the answer exact
    // and take O(out / in + 1) steps, the size of the gather itself.
    index_t j = i * out / in;
    while (j > 0 && taps(j - 1).last() >= i) --j;
    while (j < out && taps(j).last() < i) ++j;
    return j;
  }

 private:
  BEVKD_HOST_DEVICE axis_taps<Acc> linear_taps(index_t j) const {
    const Acc dst = static_cast<Acc>(j);
    Acc src = align_corners ? mul_rn(scale, dst) : mul_rn(scale, dst + Acc(0.5)) - Acc(0.5);
    src = src < Acc(0) ? Acc(0) : src;  // PyTorch clamps the half-pixel source index at 0
    const index_t i0 = math::min(static_cast<index_t>(src), in - 1);
    const Acc lambda = math::min(math::max(src - static_cast<Acc>(i0), Acc(0)), Acc(1));
    // On the last cell both PyTorch taps coincide (weights 1 - lambda and lambda): one tap of weight 1.
    if (i0 < in - 1 && lambda > Acc(0)) return {i0, 2, Acc(1) - lambda, lambda, Acc(1)};
    return {i0, 1, Acc(1), Acc(1), Acc(1)};
  }

  BEVKD_HOST_DEVICE axis_taps<Acc> nearest_taps(index_t j) const {
    const index_t src = static_cast<index_t>(mul_rn(static_cast<float>(j), nearest_scale));
    return {math::min(src, in - 1), 1, Acc(1), Acc(1), Acc(1)};
  }

  BEVKD_HOST_DEVICE axis_taps<Acc> area_taps(index_t j) const {
    const index_t start = j * in / out;                  // floor(j * in / out)
    const index_t end = ((j + 1) * in + out - 1) / out;  // ceil((j + 1) * in / out)
    return {start, end - start, Acc(1), Acc(1), static_cast<Acc>(end - start)};
  }
};

/// @brief Builds one axis on the host, computing the scales exactly as PyTorch does.
template <class Acc>
resample_axis<Acc> make_resample_axis(index_t in, index_t out, tap_rule rule, bool align_corners) {
  resample_axis<Acc> axis{in, out, rule, align_corners, Acc(0), 0.0f};
  if (in == 0 || out == 0) return axis;  // an empty grid never asks for taps
  if (align_corners)
    axis.scale = out > 1 ? static_cast<Acc>(in - 1) / static_cast<Acc>(out - 1) : Acc(0);
  else
    axis.scale = static_cast<Acc>(in) / static_cast<Acc>(out);
  axis.nearest_scale = static_cast<float>(in) / static_cast<float>(out);
  return axis;
}

/// @brief Enumerates a [B, H, W, C] grid with the smallest-stride dimension fastest (coalesced on the device).
struct grid_walk {
  index_t extent[4];  ///< Extents in walk order, outermost first.
  int dim[4];         ///< Logical dimension (0 = B, 1 = H, 2 = W, 3 = C) at each walk position.

  /// @brief The logical index (b, h, w, c) of linear walk position i.
  BEVKD_HOST_DEVICE void unravel(index_t i, index_t (&idx)[4]) const {
    for (int k = 3; k >= 0; --k) {
      idx[dim[k]] = i % extent[k];
      i /= extent[k];
    }
  }
};

/// @brief The walk over a destination view: dimensions ordered by decreasing stride.
template <class T>
grid_walk make_grid_walk(const strided_view<T, 4>& v) {
  grid_walk walk{};
  for (int d = 0; d < 4; ++d) walk.dim[d] = d;
  for (int i = 1; i < 4; ++i)  // insertion sort, stable: ties keep the logical order
    for (int k = i; k > 0 && v.stride[walk.dim[k]] > v.stride[walk.dim[k - 1]]; --k) {
      const int t = walk.dim[k];
      walk.dim[k] = walk.dim[k - 1];
      walk.dim[k - 1] = t;
    }
  for (int k = 0; k < 4; ++k) walk.extent[k] = v.extent[walk.dim[k]];
  return walk;
}

/// @brief What both element kernels carry: the two views, the two axes and the walk over the written view.
template <class T>
struct resample_problem {
  using acc_type = accum_t<T>;   ///< Accumulation type.
  strided_view<const T, 4> src;  ///< Read view: the input (forward) or grad_out (backward).
  strided_view<T, 4> dst;        ///< Written view: the output (forward) or grad_in (backward).
  resample_axis<acc_type> rows;  ///< H axis: input H -> output H2.
  resample_axis<acc_type> cols;  ///< W axis: input W -> output W2.
  grid_walk walk;                ///< Walk over `dst`.
  bool accumulate;               ///< Add into `dst` instead of overwriting it.

  /// @brief Writes (or adds) value at dst(idx).
  BEVKD_HOST_DEVICE void store(const index_t (&idx)[4], acc_type value) const {
    T& slot = dst(idx[0], idx[1], idx[2], idx[3]);
    slot = store_from_accum<T>(accumulate ? load_as_accum(slot) + value : value);
  }

  /// @brief Host: (b, y, x, 0) of pixel q of the written view.
  void pixel_index(index_t q, index_t (&idx)[4]) const {
    idx[0] = q / (dst.extent[1] * dst.extent[2]);
    idx[1] = q / dst.extent[2] % dst.extent[1];
    idx[2] = q % dst.extent[2];
    idx[3] = 0;
  }

  /// @brief Host: stores every channel of pixel idx, a block of up to resample_channel_block channels at a time:
  /// block(base, n, sums) fills the n zeroed sums from the read view, channel c at base[c * src.stride[3]].
  template <class Block>
  void store_channel_blocks(index_t (&idx)[4], const Block& block) const;
};

/// @brief Channels per block of the host's pixel loops (their accumulators live on the stack).
constexpr index_t resample_channel_block = 64;

template <class T>
template <class Block>
void resample_problem<T>::store_channel_blocks(index_t (&idx)[4], const Block& block) const {
  const index_t channels = dst.extent[3];
  for (index_t c0 = 0; c0 < channels; c0 += resample_channel_block) {
    const index_t n = channels - c0 < resample_channel_block ? channels - c0 : resample_channel_block;
    acc_type sums[resample_channel_block] = {};
    block(src.data + idx[0] * src.stride[0] + c0 * src.stride[3], n, sums);
    for (index_t c = 0; c < n; ++c) {
      idx[3] = c0 + c;
      store(idx, sums[c]);
    }
  }
}

/// @brief Forward element kernel: out[b, y, x, c] = sum over taps of wy * wx * in[b, iy, ix, c] (divided in area mode).
template <class T>
struct resample_forward_kernel {
  using acc = accum_t<T>;  ///< Accumulation type.
  resample_problem<T> p;   ///< Views, axes and walk.

  /// @brief Host path: every channel of output pixel q = (b, y, x), taps computed once per pixel; each element gets
  /// exactly operator()'s arithmetic, in the same order, so the two paths agree bit for bit (unless the compiler
  /// contracts multiply-adds into FMA differently in the two loops, as -march=native builds may).
  void pixel(index_t q) const {
    index_t idx[4];
    p.pixel_index(q, idx);
    const axis_taps<acc> ty = p.rows.taps(idx[1]), tx = p.cols.taps(idx[2]);
    const index_t step = p.src.stride[3];
    p.store_channel_blocks(idx, [&](const T* base, index_t n, acc* sums) {
      for (index_t ky = 0; ky < ty.count; ++ky) {
        acc inner[resample_channel_block] = {};
        for (index_t kx = 0; kx < tx.count; ++kx) {
          const T* cell = base + (ty.first + ky) * p.src.stride[1] + (tx.first + kx) * p.src.stride[2];
          const acc w = tx.weight(kx);
          for (index_t c = 0; c < n; ++c) inner[c] += w * load_as_accum(cell[c * step]);
        }
        const acc w = ty.weight(ky);
        for (index_t c = 0; c < n; ++c) sums[c] += w * inner[c];
      }
      for (index_t c = 0; c < n; ++c) sums[c] = sums[c] / ty.divisor / tx.divisor;
    });
  }

  /// @brief Computes destination element i of the walk.
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    index_t idx[4];
    p.walk.unravel(i, idx);
    const axis_taps<acc> ty = p.rows.taps(idx[1]), tx = p.cols.taps(idx[2]);
    const T* base = p.src.data + idx[0] * p.src.stride[0] + idx[3] * p.src.stride[3];
    acc sum = 0;
    for (index_t ky = 0; ky < ty.count; ++ky) {
      const T* row = base + (ty.first + ky) * p.src.stride[1];
      acc inner = 0;
      for (index_t kx = 0; kx < tx.count; ++kx)
        inner += tx.weight(kx) * load_as_accum(row[(tx.first + kx) * p.src.stride[2]]);
      sum += ty.weight(ky) * inner;  // PyTorch's order: h0 * (w0 x00 + w1 x01) + h1 * (...)
    }
    p.store(idx, sum / ty.divisor / tx.divisor);
  }
};

/// @brief Backward element kernel (gather): grad_in[b, y, x, c] = sum over the outputs whose taps cover (y, x).
template <class T>
struct resample_backward_kernel {
  using acc = accum_t<T>;  ///< Accumulation type.
  resample_problem<T> p;   ///< Views (src = grad_out, dst = grad_in), axes and walk.

  /// @brief Host path: every channel of input pixel q = (b, y, x), the covering outputs found once per channel
  /// block; each element gets exactly operator()'s arithmetic, in the same order.
  void pixel(index_t q) const {
    index_t idx[4];
    p.pixel_index(q, idx);
    const index_t y = idx[1], x = idx[2];
    const index_t jy0 = p.rows.first_covering(y), jx0 = p.cols.first_covering(x);
    const index_t step = p.src.stride[3];
    p.store_channel_blocks(idx, [&](const T* base, index_t n, acc* sums) {
      for (index_t jy = jy0; jy < p.rows.out; ++jy) {
        const axis_taps<acc> ty = p.rows.taps(jy);
        if (ty.first > y) break;
        acc inner[resample_channel_block] = {};
        for (index_t jx = jx0; jx < p.cols.out; ++jx) {
          const axis_taps<acc> tx = p.cols.taps(jx);
          if (tx.first > x) break;
          const T* cell = base + jy * p.src.stride[1] + jx * p.src.stride[2];
          const acc w = tx.coefficient(x);
          for (index_t c = 0; c < n; ++c) inner[c] += w * load_as_accum(cell[c * step]);
        }
        const acc w = ty.coefficient(y);
        for (index_t c = 0; c < n; ++c) sums[c] += w * inner[c];
      }
    });
  }

  /// @brief Computes grad_in element i of the walk; each element owns its sum, so no atomics are needed.
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    index_t idx[4];
    p.walk.unravel(i, idx);
    const index_t y = idx[1], x = idx[2];
    const index_t jx0 = p.cols.first_covering(x);
    const T* base = p.src.data + idx[0] * p.src.stride[0] + idx[3] * p.src.stride[3];
    acc sum = 0;
    // Destinations covering a cell form a contiguous run: it ends at the first one starting past it.
    for (index_t jy = p.rows.first_covering(y); jy < p.rows.out; ++jy) {
      const axis_taps<acc> ty = p.rows.taps(jy);
      if (ty.first > y) break;
      const T* row = base + jy * p.src.stride[1];
      acc inner = 0;
      for (index_t jx = jx0; jx < p.cols.out; ++jx) {
        const axis_taps<acc> tx = p.cols.taps(jx);
        if (tx.first > x) break;
        inner += tx.coefficient(x) * load_as_accum(row[jx * p.src.stride[2]]);
      }
      sum += ty.coefficient(y) * inner;
    }
    p.store(idx, sum);
  }
};

/// @brief Largest accepted H, W, H2 or W2: keeps j * in and (j + 1) * in exact in 64-bit integers.
constexpr index_t resample_max_extent = (index_t(1) << 31) - 1;

/// @brief Validates one resample call on the host; throws bevkd::invalid_argument naming the argument.
///
/// `src` is read and `dst` written. Forward: src is the input grid [B, H, W, C] and dst the
/// output grid [B, H2, W2, C]; backward (`dst_is_input`): src is grad_out [B, H2, W2, C] and
/// dst grad_in [B, H, W, C].
template <class T>
void validate_resample(const strided_view<const T, 4>& src, const strided_view<T, 4>& dst, bool dst_is_input,
                       const std::string& src_name, const std::string& dst_name) {
  validate_view(src, src_name);
  validate_view(dst, dst_name);
  const strided_view<const T, 4> written = dst;
  const strided_view<const T, 4>& in_grid = dst_is_input ? written : src;
  const strided_view<const T, 4>& out_grid = dst_is_input ? src : written;
  const std::string& in_name = dst_is_input ? dst_name : src_name;
  const std::string& out_name = dst_is_input ? src_name : dst_name;
  require_extent(out_grid, 0, in_grid.extent[0], out_name + " (B)");
  require_extent(out_grid, 3, in_grid.extent[3], out_name + " (C)");
  // Emptiness from the extents, not size(): a broadcast (stride-0) view's size may not fit 64 bits.
  auto empty = [](const strided_view<const T, 4>& v) {
    return v.extent[0] == 0 || v.extent[1] == 0 || v.extent[2] == 0 || v.extent[3] == 0;
  };
  const char* const spatial[2] = {"H", "W"};
  for (int d = 1; d <= 2; ++d) {
    const std::string in_dim = in_name + ".extent[" + std::to_string(d) + "] (" + spatial[d - 1] + ")";
    const std::string out_dim = out_name + ".extent[" + std::to_string(d) + "] (" + spatial[d - 1] + "2)";
    require(in_grid.extent[d] <= resample_max_extent, in_dim, "must be <= 2^31 - 1, got ", in_grid.extent[d]);
    require(out_grid.extent[d] <= resample_max_extent, out_dim, "must be <= 2^31 - 1, got ", out_grid.extent[d]);
    require(empty(in_grid) || out_grid.extent[d] >= 1, out_dim, "must be >= 1 for a non-empty input grid, got ",
            out_grid.extent[d]);
    require(empty(out_grid) || in_grid.extent[d] >= 1, in_dim,
            "must be >= 1 for a non-empty output grid (there is nothing to sample), got ", in_grid.extent[d]);
  }
  require_no_self_overlap(dst, dst_name);
  require(!ranges_overlap(dst, src), dst_name,
          "aliases " + src_name + ": the written buffer must not overlap the one read");
}

}  // namespace detail
}  // namespace bevkd
