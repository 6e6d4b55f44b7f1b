// bevkd internal: how a team's lanes share a row (strided chunks) and a row's strided element access.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "../config.hpp"

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
  BEVKD_HOST_DEVICE T& operator[](index_t c) const { return Unit ? ptr[c] : ptr[c * stride]; }
};

/// @brief One row of student logits, teacher logits and the student's gradient, n columns.
template <class T, bool Unit>
struct loss_row {
  row_ref<const T, Unit> student;  ///< Student logits / features.
  row_ref<const T, Unit> teacher;  ///< Teacher logits / features.
  row_ref<T, Unit> grad;           ///< Gradient w.r.t. the student.
  index_t n;                       ///< Number of columns.
};

}  // namespace detail
}  // namespace bevkd
