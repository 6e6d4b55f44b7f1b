// bevkd internal: how a team's lanes share a row (strided chunks) and a row's strided element access.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <cstring>

#include "../config.hpp"
#include "../dtype.hpp"

namespace bevkd {
namespace detail {

/// @brief Calls f(c) for the columns lane `lane` of a team of `lanes` owns in a row of n: chunks of `chunk`
/// consecutive columns, chunk k owned by lane k mod lanes (chunk 1 is the classic lane-strided loop).
template <class F>
BEVKD_HOST_DEVICE void for_lane_columns(int lane, int lanes, int chunk, index_t n, F&& f) {
  if (chunk == 1) {
    for (index_t c = lane; c < n; c += lanes) f(c);
    return;
  }
  const index_t step = static_cast<index_t>(lanes) * chunk;
  for (index_t first = static_cast<index_t>(lane) * chunk; first < n; first += step) {
    const index_t last = first + chunk < n ? first + chunk : n;
    for (index_t c = first; c < last; ++c) f(c);
  }
}

/// @brief One row of a strided tensor: element c lives at ptr[c * stride] (stride 1 known at compile time when Unit).
template <class T, bool Unit>
struct row_ref {
  T* ptr;          ///< Element 0 of the row.
  index_t stride;  ///< Element stride between columns (ignored when Unit).

  /// @brief Element c of the row.
  BEVKD_FORCEINLINE T& operator[](index_t c) const { return Unit ? ptr[c] : ptr[c * stride]; }
};

/// @brief One row of student logits, teacher logits and the student's gradient, n columns.
template <class T, bool Unit>
struct loss_row {
  row_ref<const T, Unit> student;  ///< Student logits / features.
  row_ref<const T, Unit> teacher;  ///< Teacher logits / features.
  row_ref<T, Unit> grad;           ///< Gradient w.r.t. the student.
  index_t n;                       ///< Number of columns.
};

/// @brief Elements of T in one 16-byte vector load (the chunk width that enables vector loads on the device).
template <class T>
BEVKD_HOST_DEVICE constexpr int vector_width() {
  return static_cast<int>(16 / sizeof(T));
}

/// @brief True when every row (the last dimension) of a view of T starts on a 16-byte boundary: the data is aligned
/// and every outer stride is a whole number of vectors (the launch condition of the device's vector loads).
template <class T, int Rank>
bool rows_vector_aligned(const T* data, const index_t (&stride)[Rank]) {
  if (reinterpret_cast<std::uintptr_t>(data) % 16 != 0) return false;
  for (int d = 0; d + 1 < Rank; ++d)
    if (stride[d] % vector_width<T>() != 0) return false;
  return true;
}

/// @brief Copies `count` = vector_width<T>() elements starting at p (16-byte aligned) into out, as one load on the device.
template <class T>
BEVKD_HOST_DEVICE void load_vector(const T* p, T* out) {
#if defined(__CUDA_ARCH__)
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  std::memcpy(out, &raw, sizeof raw);
#else
  for (int v = 0; v < vector_width<T>(); ++v) out[v] = p[v];
#endif
}

/// @brief Calls f(c, s_c, t_c) over the columns a lane owns (see for_lane_columns), with student and teacher loaded.
///
/// When the row is unit-stride and the chunk is one 16-byte vector, full chunks are read with
/// one vector load per tensor on the device (the launch checks the alignment). The host reads
/// the same elements one by one, so both see the same partition and values.
template <class T, bool Unit, class F>
BEVKD_HOST_DEVICE void for_lane_values(int lane, int lanes, int chunk, const loss_row<T, Unit>& row, F&& f) {
  constexpr int width = vector_width<T>();
  if (!Unit || chunk != width) {
    for_lane_columns(lane, lanes, chunk, row.n, [&](index_t c) {
      f(c, load_as_accum(row.student[c]), load_as_accum(row.teacher[c]));
    });
    return;
  }
  const index_t step = static_cast<index_t>(lanes) * width;
  for (index_t first = static_cast<index_t>(lane) * width; first < row.n; first += step) {
    if (first + width <= row.n) {
      T s[width], t[width];
      load_vector(&row.student[first], s);
      load_vector(&row.teacher[first], t);
      for (int v = 0; v < width; ++v) f(first + v, load_as_accum(s[v]), load_as_accum(t[v]));
    } else {
      for (index_t c = first; c < row.n; ++c) f(c, load_as_accum(row.student[c]), load_as_accum(row.teacher[c]));
    }
  }
}

}  // namespace detail
}  // namespace bevkd
