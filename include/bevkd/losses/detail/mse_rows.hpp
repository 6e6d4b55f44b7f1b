// bevkd internal: team-collective per-row feature MSE, plain and per-pillar L2-normalised.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "../../core/config.hpp"
#include "../../core/detail/avx512.hpp"
#include "../../core/detail/lanes.hpp"
#include "../../core/detail/row_blocks.hpp"
#include "../../core/detail/row_driver.hpp"
#include "../../core/dtype.hpp"
#include "../../core/math.hpp"
#include "../../core/team.hpp"

namespace bevkd {
namespace detail {

/// @brief (1/n) sum_c (s_c - t_c)^2 over one row; writes coeff * (2/n) (s_c - t_c). One pass.
template <class Team, class T, bool Unit, class Acc = accum_t<T>>
BEVKD_HOST_DEVICE BEVKD_HOST_NOINLINE Acc mse_row(const Team& team, const loss_row<T, Unit>& row, Acc coeff, bool accumulate) {
  const Acc inv_n = Acc(1) / static_cast<Acc>(row.n);
  const Acc scale = coeff * Acc(2) * inv_n;
  const Acc total = team.reduce_grads(sum_op{}, Acc(0), row, accumulate, [scale](index_t, Acc s, Acc t) {
    const Acc d = s - t;
    return graded<Acc, Acc>{scale * d, d * d};
  });
  return total * inv_n;
}

/// @brief MSE of s / max(||s||, eps) and t / max(||t||, eps) over one row (a loss_row, or a row a team holds, see
/// hold_row), with the gradient through s's normalisation. Two passes: the norms and dot product, then the gradient.
///
/// With s_hat = s / n_s and g = (2/n)(s_hat - t_hat): dl/ds = (g - s_hat (s_hat . g)) / n_s
/// when ||s|| > eps, and g / eps when the norm is clamped (the map is then linear).
template <class Team, class Row, class Acc>
BEVKD_HOST_DEVICE BEVKD_HOST_NOINLINE Acc normalized_mse_row(const Team& team, const Row& row, Acc eps, Acc coeff,
                                                             bool accumulate) {
  using triple = acc_array<Acc, 3>;
  const triple dots = team.reduce_values(sum_op{}, triple{{Acc(0), Acc(0), Acc(0)}}, row,
                                         [&](index_t, Acc s, Acc t) { return triple{{s * s, t * t, s * t}}; });
  const Acc norm_s = math::sqrt(dots[0]), norm_t = math::sqrt(dots[1]);
  const bool clamped = !(norm_s > eps);
  const Acc div_s = clamped ? eps : norm_s, div_t = norm_t > eps ? norm_t : eps;
  const Acc inv_n = Acc(1) / static_cast<Acc>(row.n);
  // s_hat . g = (2/n)(s_hat . s_hat - s_hat . t_hat) with s_hat . s_hat = 1 exactly when the
  // norm is not clamped (the projection is zero when it is). Dividing rather than multiplying
  // by reciprocals keeps one-element rows exactly +-1, so their gradient is exactly 0.
  const Acc projection = clamped ? Acc(0) : Acc(2) * inv_n * (Acc(1) - dots[2] / (div_s * div_t));
  const Acc scale = coeff / div_s;
  const Acc total = team.reduce_grads(sum_op{}, Acc(0), row, accumulate,
                                      [div_s, div_t, scale, inv_n, projection](index_t, Acc s, Acc t) {
    const Acc s_hat = s / div_s;
    const Acc d = s_hat - t / div_t;
    return graded<Acc, Acc>{scale * (Acc(2) * inv_n * d - s_hat * projection), d * d};
  });
  return total * inv_n;
}

/// @brief The plain feature MSE's one pass over columns [first, last) of a host lane group (row_blocks.hpp): only fp32
/// rows on AVX-512 hosts have it (see has_lane_group_passes; others are staged).
template <class T, class Acc>
struct mse_lane_group_pass;

#if defined(BEVKD_HOST_AVX512)
/// @brief fp32 lane groups on AVX-512 hosts: one vector per column.
template <>
struct mse_lane_group_pass<float, float> {
  /// @brief Writes (Accumulate: adds) scale (s - t) into the rows' gradients, exactly 0 in rows with skip set (nothing
  /// when accumulating), and adds (s - t)^2 to each row's sum in pieces of lane_group_piece columns (first is a
  /// multiple of it); whole columns streamed when Stream is set.
  template <bool Accumulate, bool Stream>
  static void run(const lane_group<float>& group, index_t first, index_t last, const float* scale, const bool* skip,
                  float* sums) {
    const avx512::group_columns x(group);
    const avx512::group_grad_writer<Accumulate, Stream> write(group, skip);
    const __m512 k = _mm512_loadu_ps(scale);
    __m512 total = _mm512_loadu_ps(sums);
    for (; first < last; first += lane_group_piece) {
      const index_t end = last - first < lane_group_piece ? last : first + lane_group_piece;
      __m512 piece = _mm512_setzero_ps();
      for (index_t c = first; c < end; ++c) {
        group.read_ahead(c);
        const __m512 d = _mm512_sub_ps(x.student(c), x.teacher(c));
        piece = _mm512_fmadd_ps(d, d, piece);
        write(c, _mm512_mul_ps(d, k));
      }
      total = _mm512_add_ps(total, piece);
    }
    _mm512_storeu_ps(sums, total);
  }
};
#endif

/// @brief mse_row for the rows of a host lane_group_set (NCHW pillars, read in place): loss[i][l] of group i's row l
/// (0 from its count on); writes terms[i].coeff[l] (2/n) (s - t), exactly 0 (or nothing, when accumulating) for rows
/// with skip set.
template <class T, class Acc>
void mse_lane_groups(const lane_group_set<T>& set, const block_terms<Acc>* terms, bool accumulate,
                     Acc (*loss)[block_rows]) {
  using pass = mse_lane_group_pass<T, Acc>;
  const Acc inv_n = Acc(1) / static_cast<Acc>(set.groups[0].n);
  Acc scale[max_set_groups][block_rows], sums[max_set_groups][block_rows] = {};
  for (int i = 0; i < set.count; ++i)
    for (int l = 0; l < block_rows; ++l) scale[i][l] = terms[i].coeff[l] * Acc(2) * inv_n;
  with_grad_mode(accumulate, set.stream_grad, [&](auto accumulating, auto streaming) {
    constexpr bool add = decltype(accumulating)::value, stream = decltype(streaming)::value;
    set.for_each_segment([&](index_t first, index_t last) {
      for (int i = 0; i < set.count; ++i)
        pass::template run<add, stream>(set.groups[i], first, last, scale[i], terms[i].skip, sums[i]);
    });
  });
  for (int i = 0; i < set.count; ++i)
    for (int l = 0; l < block_rows; ++l) loss[i][l] = l < set.groups[i].count ? sums[i][l] * inv_n : Acc(0);
}

}  // namespace detail
}  // namespace bevkd
