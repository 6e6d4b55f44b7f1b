// bevkd internal: the per-row driver shared by every loss (weights, upstream gradients, per-row outputs).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "../config.hpp"
#include "../dtype.hpp"
#include "../math.hpp"
#include "../reduction.hpp"
#include "../view.hpp"
#include "lanes.hpp"

namespace bevkd {
namespace detail {

/// @brief What a loss call asks of a backend beyond the problem itself.
struct loss_call {
  reduction red = reduction::mean;  ///< Reduction over rows.
  double loss_weight = 1;           ///< Multiplies loss and gradient.
  double grad_scale = 1;            ///< Upstream scale, multiplies the gradient only.
  bool accumulate = false;          ///< Add into the gradient buffer.
  index_t batch = 1;                ///< B, the batchmean divisor.
};

/// @brief Weight 1 and upstream gradient 1 for `count` rows: a host row block's weights when a call has neither (no
/// decode of the rows' indices, no per-row tests).
template <class Acc>
void unit_row_weights(int count, Acc* w, Acc* u) {
  for (int l = 0; l < count; ++l) w[l] = u[l] = Acc(1);
}

/// @brief Per-row weights, per-row loss outputs and per-row upstream gradients over a 2-D row grid [R0, R1].
///
/// Row r is (r / R1, r % R1). A view with a null pointer is absent: weight 1, upstream 1,
/// nothing written.
template <class Acc>
struct row_weighting {
  strided_view<const Acc, 2> weights;   ///< w[r0, r1] >= 0, or absent.
  strided_view<const Acc, 2> upstream;  ///< u[r0, r1] (reduction none only), or absent.
  strided_view<Acc, 2> row_loss;        ///< Output loss_weight * w_r * l_r (reduction none only), or absent.
  index_t inner = 1;                    ///< R1.

  /// @brief True when rows carry weights (the weight sum then needs a pass over them).
  BEVKD_HOST_DEVICE bool has_weights() const { return weights.data != nullptr; }
  /// @brief Weight of row r (1 without weights).
  BEVKD_HOST_DEVICE Acc weight(index_t r) const { return weights.data ? weights(r / inner, r % inner) : Acc(1); }
  /// @brief Upstream gradient of row r (1 without one).
  BEVKD_HOST_DEVICE Acc upstream_grad(index_t r) const {
    return upstream.data ? upstream(r / inner, r % inner) : Acc(1);
  }
  /// @brief Writes row r's output loss when per-row outputs were requested.
  BEVKD_HOST_DEVICE void store(index_t r, Acc value) const {
    if (row_loss.data) row_loss(r / inner, r % inner) = value;
  }
  /// @brief weight() and upstream_grad() of rows [first, first + count) into w and u (a host row block's; one
  /// division for all of them, where weight() and upstream_grad() take one each per row).
  void load(index_t first, int count, Acc* w, Acc* u) const {
    if (!weights.data && !upstream.data) return unit_row_weights(count, w, u);
    for_rows(first, count, [&](int l, index_t r0, index_t r1) {
      w[l] = weights.data ? weights(r0, r1) : Acc(1);
      u[l] = upstream.data ? upstream(r0, r1) : Acc(1);
    });
  }
  /// @brief store() of rows [first, first + count) from values.
  void store(index_t first, int count, const Acc* values) const {
    if (row_loss.data) for_rows(first, count, [&](int l, index_t r0, index_t r1) { row_loss(r0, r1) = values[l]; });
  }

 private:
  // Calls f(l, r0, r1) for rows first + l = r0 * inner + r1, l < count.
  template <class F>
  void for_rows(index_t first, int count, F&& f) const {
    index_t r0 = first / inner, r1 = first % inner;
    for (int l = 0; l < count; ++l) {
      f(l, r0, r1);
      if (++r1 == inner) {
        r1 = 0;
        ++r0;
      }
    }
  }
};

/// @brief Runs one row of a loss problem with the whole team and returns w_r * l_r (every lane gets it).
///
/// A row of weight 0 is excluded outright: loss 0 and gradient exactly 0 (not 0 * NaN), so
/// masked-out pillars can hold anything.
template <class Problem, class Team, class Acc>
BEVKD_HOST_DEVICE Acc run_row(const Problem& problem, const Team& team, index_t r,
                              const row_scaling<Acc>& scaling) {
  const Acc w = problem.rows.weight(r);
  if (w == Acc(0)) {
    if (!scaling.accumulate) problem.zero_grad(team, r);
    if (team.leader()) problem.rows.store(r, Acc(0));
    return Acc(0);
  }
  const Acc coeff = scaling.grad_coeff * w * problem.rows.upstream_grad(r);
  const Acc loss = problem.loss_and_grad(team, r, coeff, scaling.accumulate);
  const Acc weighted = w * loss;
  if (team.leader()) problem.rows.store(r, scaling.loss_weight * weighted);
  return weighted;
}

}  // namespace detail
}  // namespace bevkd
