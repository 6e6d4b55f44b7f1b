// bevkd strided views: non-owning N-d views with arbitrary element strides, and BEV layout factories.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>

#include "config.hpp"
#include "error.hpp"

namespace bevkd {

/// @brief A non-owning view of a Rank-d tensor: a pointer, extents and element strides (never copied).
template <class T, int Rank>
struct strided_view {
  static_assert(Rank >= 1 && Rank <= 5, "views have 1 to 5 dimensions");
  T* data = nullptr;                 ///< Element (0, ..., 0); may be null only when the view is empty.
  index_t extent[Rank] = {};         ///< Logical sizes.
  index_t stride[Rank] = {};         ///< Element strides, >= 0.
  index_t capacity = -1;             ///< Elements the buffer holds from `data` (-1: unknown); calls reject views reaching past it.

  /// @brief Number of dimensions.
  static constexpr int rank = Rank;

  /// @brief Number of logical elements (product of extents).
  BEVKD_HOST_DEVICE index_t size() const {
    index_t n = 1;
    for (int d = 0; d < Rank; ++d) n *= extent[d];
    return n;
  }

  /// @brief Element offset of a multi-index.
  template <class... Index>
  BEVKD_HOST_DEVICE index_t offset(Index... index) const {
    static_assert(sizeof...(Index) == Rank, "one index per dimension");
    const index_t idx[Rank] = {static_cast<index_t>(index)...};
    index_t off = 0;
    for (int d = 0; d < Rank; ++d) off += idx[d] * stride[d];
    return off;
  }

  /// @brief Reference to the element at a multi-index.
  template <class... Index>
  BEVKD_HOST_DEVICE T& operator()(Index... index) const {
    return data[offset(index...)];
  }

  /// @brief The same view with dimensions a and b swapped (no data moves).
  strided_view transposed(int a, int b) const {
    strided_view out = *this;
    out.extent[a] = extent[b];
    out.extent[b] = extent[a];
    out.stride[a] = stride[b];
    out.stride[b] = stride[a];
    return out;
  }

  /// @brief The same view of const elements.
  template <class U = T, std::enable_if_t<!std::is_const<U>::value, int> = 0>
  operator strided_view<const U, Rank>() const {
    strided_view<const U, Rank> out;
    out.data = data;
    out.capacity = capacity;
    for (int d = 0; d < Rank; ++d) {
      out.extent[d] = extent[d];
      out.stride[d] = stride[d];
    }
    return out;
  }
};

/// @brief A logical [B, P, C] BEV tensor (P = H*W pillars) with arbitrary element strides.
template <class T>
using bev_view = strided_view<T, 3>;

/// @brief Per-row values (weights, per-row losses, upstream gradients) over a logical [B, P] grid.
template <class T>
using row_view = strided_view<T, 2>;

/// @brief Builds a view from a pointer, extents, strides and optionally the buffer's capacity in elements.
template <class T, int Rank>
strided_view<T, Rank> make_view(T* data, const std::array<index_t, Rank>& extent,
                                const std::array<index_t, Rank>& stride, index_t capacity = -1) {
  strided_view<T, Rank> v;
  v.data = data;
  v.capacity = capacity;
  for (int d = 0; d < Rank; ++d) {
    v.extent[d] = extent[d];
    v.stride[d] = stride[d];
  }
  return v;
}

/// @brief Row-major (C-contiguous) view of a Rank-d tensor.
template <class T, int Rank>
strided_view<T, Rank> contiguous_view(T* data, const std::array<index_t, Rank>& extent) {
  std::array<index_t, Rank> stride{};
  index_t step = 1;
  for (int d = Rank - 1; d >= 0; --d) {
    stride[d] = step;
    step *= extent[d];
  }
  return make_view<T, Rank>(data, extent, stride, step);
}

/// @brief [B, P, C] view of a channels-last BEV tensor stored as [B, H, W, C] (or [B, P, C]).
template <class T>
bev_view<T> bev_nhwc(T* data, index_t batch, index_t height, index_t width, index_t channels) {
  return make_view<T, 3>(data, {batch, height * width, channels}, {height * width * channels, channels, 1},
                         batch * height * width * channels);
}

/// @brief [B, P, C] view of a channels-first BEV tensor stored as [B, C, H, W] (BEVDet, CenterPoint heads).
template <class T>
bev_view<T> bev_nchw(T* data, index_t batch, index_t channels, index_t height, index_t width) {
  return make_view<T, 3>(data, {batch, height * width, channels}, {channels * height * width, 1, height * width},
                         batch * channels * height * width);
}

/// @brief [B, P, C] view of a sequence-first BEV tensor stored as [P, B, C] (BEVFormer's bev_embed).
template <class T>
bev_view<T> bev_sequence_first(T* data, index_t pillars, index_t batch, index_t channels) {
  return make_view<T, 3>(data, {batch, pillars, channels}, {channels, batch * channels, 1},
                         pillars * batch * channels);
}

/// @brief Contiguous [B, P] view of per-pillar values (weights, per-row losses).
template <class T>
row_view<T> rows_contiguous(T* data, index_t batch, index_t pillars) {
  return make_view<T, 2>(data, {batch, pillars}, {pillars, 1}, batch * pillars);
}

namespace detail {

/// @brief Offset one past the largest element a view touches (0 when it is empty).
template <class T, int Rank>
index_t span_elements(const strided_view<T, Rank>& v) {
  if (v.size() == 0) return 0;
  index_t last = 0;
  for (int d = 0; d < Rank; ++d) last += (v.extent[d] - 1) * v.stride[d];
  return last + 1;
}

/// @brief Checks extents and strides are non-negative and the view's span fits index_t; throws naming `name`.
template <class T, int Rank>
void validate_view(const strided_view<T, Rank>& v, std::string_view name) {
  constexpr index_t limit = index_t(1) << 62;
  index_t last = 0;
  bool empty = false;
  for (int d = 0; d < Rank; ++d) {
    require(v.extent[d] >= 0, argument_member{name, "extent", d}, "must be >= 0, got ", v.extent[d]);
    require(v.stride[d] >= 0, argument_member{name, "stride", d}, "must be >= 0, got ", v.stride[d]);
    require(v.stride[d] < limit && v.extent[d] < limit, argument_member{name, "stride", d},
            "out of range: extent ", v.extent[d], " x stride ", v.stride[d], " overflows a 64-bit offset");
    empty = empty || v.extent[d] == 0;
    if (v.extent[d] > 0 && v.stride[d] > 0) {
      require((limit - last) / v.stride[d] >= v.extent[d] - 1, argument_member{name, "stride", d},
              "out of range: the view's span overflows a 64-bit offset");
      last += (v.extent[d] - 1) * v.stride[d];
    }
  }
  require(empty || v.data != nullptr, argument_member{name, "data"}, "is null for a non-empty view");
  if (empty || v.capacity < 0 || last < v.capacity) return;
  int widest = 0;  // name the dimension that reaches furthest
  for (int d = 1; d < Rank; ++d)
    if ((v.extent[d] - 1) * v.stride[d] > (v.extent[widest] - 1) * v.stride[widest]) widest = d;
  throw invalid_argument(argument_member{name, "stride", widest}.str(),
                         cat("out of range: the view reaches element ", last, " but the buffer holds ", v.capacity,
                             " elements"));
}

/// @brief Checks that a view has the given extent in dimension d; throws naming `name`.extent[d] and what was expected
/// (with "(<meaning><meaning_of>)" when a meaning is given: the parts are joined only for the message).
template <class T, int Rank>
void require_extent(const strided_view<T, Rank>& v, int d, index_t expected, std::string_view name,
                    std::string_view meaning = {}, std::string_view meaning_of = {}) {
  if (v.extent[d] == expected) return;
  throw invalid_argument(argument_member{name, "extent", d}.str(),
                         meaning.empty() ? cat("expected ", expected, ", got ", v.extent[d])
                                         : cat("expected ", expected, " (", meaning, meaning_of, "), got ", v.extent[d]));
}

/// @brief Checks that a written view never maps two logical elements to one address (no racing writes).
template <class T, int Rank>
void require_no_self_overlap(const strided_view<T, Rank>& v, std::string_view name) {
  if (v.size() <= 1) return;
  // Sort the non-trivial dimensions by stride; each stride must clear the span of the smaller ones.
  int order[Rank];
  int count = 0;
  for (int d = 0; d < Rank; ++d)
    if (v.extent[d] > 1) order[count++] = d;
  for (int i = 1; i < count; ++i)
    for (int j = i; j > 0 && v.stride[order[j]] < v.stride[order[j - 1]]; --j) {
      const int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  index_t span = 1;
  for (int i = 0; i < count; ++i) {
    const int d = order[i];
    require(v.stride[d] >= span, argument_member{name, "stride", d},
            "makes two elements share one address (overlapping output), got stride ", v.stride[d]);
    span = v.stride[d] * (v.extent[d] - 1) + span;
  }
}

/// @brief True when the address ranges touched by two views intersect.
template <class A, int RankA, class B, int RankB>
bool ranges_overlap(const strided_view<A, RankA>& a, const strided_view<B, RankB>& b) {
  const index_t na = span_elements(a), nb = span_elements(b);
  if (na == 0 || nb == 0) return false;
  const char* a0 = reinterpret_cast<const char*>(a.data);
  const char* b0 = reinterpret_cast<const char*>(b.data);
  const char* a1 = a0 + na * static_cast<index_t>(sizeof(A));
  const char* b1 = b0 + nb * static_cast<index_t>(sizeof(B));
  return a0 < b1 && b0 < a1;
}

}  // namespace detail
}  // namespace bevkd
