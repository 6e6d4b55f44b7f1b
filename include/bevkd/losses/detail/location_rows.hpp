// bevkd internal: team-collective rows of the sampling-location distillation (teacher-attention-weighted distances).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "../../core/config.hpp"
#include "../../core/detail/lanes.hpp"
#include "../../core/detail/row_driver.hpp"
#include "../../core/dtype.hpp"
#include "../../core/math.hpp"
#include "../../core/team.hpp"
#include "../../core/view.hpp"
#include "attention_rows.hpp"

namespace bevkd {

/// @brief Distance between a student and a teacher sampling location.
enum class location_distance {
  squared,   ///< ||x_S - x_T||^2.
  smooth_l1  ///< Sum over x and y of smooth-L1(x_S - x_T; beta) (0.5 d^2 / beta below beta, |d| - 0.5 beta above).
};

namespace detail {

/// @brief Distance of one coordinate difference and its derivative.
template <class Acc>
BEVKD_FORCEINLINE void coordinate_distance(location_distance kind, Acc d, Acc beta, Acc& value, Acc& slope) {
  const Acc a = d < Acc(0) ? -d : d;
  if (kind == location_distance::squared) {
    value = d * d;
    slope = Acc(2) * d;
  } else if (a < beta) {
    value = Acc(0.5) * d * d / beta;
    slope = d / beta;
  } else {
    value = a - Acc(0.5) * beta;
    slope = d < Acc(0) ? Acc(-1) : Acc(1);
  }
}

/// @brief Sampling-location distillation over rows (n, h, s) of [N, H, S, K, 2] locations, weighted by the teacher's attention.
template <class T>
struct location_problem {
  using value_type = T;                      ///< Element type.
  using acc_type = accum_t<T>;               ///< Accumulation type.
  static constexpr bool unit_stride = true;  ///< Warps read a row's keys together.
  strided_view<const T, 5> student;          ///< Student locations [N, H, S, K, 2].
  strided_view<const T, 5> teacher;          ///< Teacher locations, same extents.
  strided_view<const T, 4> attention;        ///< Teacher attention [N, H, S, K] (logits or probabilities).
  strided_view<T, 5> grad;                   ///< Gradient w.r.t. the student's locations.
  attention_weighting<acc_type> rows;        ///< Weights, mask and per-row outputs (per_source rows).
  location_distance kind = location_distance::squared;  ///< Distance.
  acc_type beta = 1;                         ///< Smooth-L1 threshold.
  bool attention_logits = true;              ///< The teacher attention holds logits (softmax over K with tau).
  acc_type inv_tau = 1;                      ///< 1 / tau for the teacher attention softmax.

  /// @brief Number of rows N H S.
  BEVKD_HOST_DEVICE index_t row_count() const { return student.extent[0] * student.extent[1] * student.extent[2]; }
  /// @brief Keys per row.
  BEVKD_HOST_DEVICE index_t columns() const { return student.extent[3]; }
  /// @brief Locations are read key by key.
  bool vector_aligned() const { return false; }
  /// @brief No host scratch.
  index_t scratch_bytes() const { return 0; }

  /// @brief Writes zeros over row r's gradient.
  template <class Team>
  BEVKD_HOST_DEVICE void zero_grad(const Team& team, index_t r) const {
    index_t n, h, s;
    rows.decode(r, n, h, s);
    team.for_columns(columns(), [&](index_t k) {
      grad(n, h, s, k, 0) = store_from_accum<T>(acc_type(0));
      grad(n, h, s, k, 1) = store_from_accum<T>(acc_type(0));
    });
  }

  /// @brief Team-collective sum_k p_T,k dist(x_S,k, x_T,k) of row r; writes coeff * its gradient w.r.t. x_S.
  template <class Team>
  BEVKD_HOST_DEVICE acc_type loss_and_grad(const Team& team, index_t r, acc_type coeff, bool accumulate) const {
    using acc = acc_type;
    index_t n, h, s;
    rows.decode(r, n, h, s);
    const index_t keys = columns();
    const auto weight = [&](index_t k) { return load_as_accum(attention(n, h, s, k)); };  // a logit or probability
    acc max_logit = acc(0), inv_z = acc(1);
    const auto shifted_exp = [&](index_t k) { return math::exp_nonpositive(softmax_exponent(weight(k), max_logit, inv_tau)); };
    if (attention_logits) {
      max_logit = team.reduce_columns(max_op{}, -math::infinity<acc>(), keys, weight);
      inv_z = acc(1) / team.reduce_columns(sum_op{}, acc(0), keys, shifted_exp);
    }
    return team.reduce_columns(sum_op{}, acc(0), keys, [&](index_t k) {
      const acc p = attention_logits ? shifted_exp(k) * inv_z : weight(k);
      acc total = acc(0);
      for (int axis = 0; axis < 2; ++axis) {
        acc value, slope;
        const acc d = load_as_accum(student(n, h, s, k, axis)) - load_as_accum(teacher(n, h, s, k, axis));
        coordinate_distance(kind, d, beta, value, slope);
        total += math::select(p == acc(0), acc(0), p * value);  // an unattended key contributes 0 (not 0 * inf)
        write_grad(grad(n, h, s, k, axis), math::select(p == acc(0), acc(0), coeff * p * slope), accumulate);
      }
      return total;
    });
  }
};

}  // namespace detail
}  // namespace bevkd
