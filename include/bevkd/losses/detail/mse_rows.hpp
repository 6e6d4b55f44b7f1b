// bevkd internal: team-collective per-row feature MSE, plain and per-pillar L2-normalised.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "../../core/config.hpp"
#include "../../core/detail/lanes.hpp"
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

}  // namespace detail
}  // namespace bevkd
