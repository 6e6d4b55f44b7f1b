// bevkd reductions over rows, per-row weighting options and the loss result types.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "config.hpp"

namespace bevkd {

/// @brief How per-row losses w_r l_r are combined into the returned loss.
enum class reduction {
  none,      ///< Per-row losses are written out; the returned loss is their sum.
  sum,       ///< sum_r w_r l_r.
  mean,      ///< sum_r w_r l_r / sum_r w_r (exactly 0, with a zero gradient, when sum_r w_r = 0).
  batchmean  ///< sum_r w_r l_r / B.
};

/// @brief Loss value of a call on the host backend (already multiplied by loss_weight).
struct loss_result {
  double loss = 0;        ///< The reduced loss, times loss_weight.
  double sum = 0;         ///< loss_weight * sum_r w_r l_r, whatever the reduction (for data-parallel means).
  double weight_sum = 0;  ///< sum_r w_r (the row count when no weights are given).
};

namespace detail {

/// @brief Per-call scalars every row needs: the reduction's normaliser folded into one gradient coefficient.
template <class Acc>
struct row_scaling {
  Acc loss_weight;  ///< Multiplies the returned loss and per-row losses.
  Acc grad_coeff;   ///< loss_weight * grad_scale / normaliser (normaliser: W for mean, B for batchmean, else 1).
  bool accumulate;  ///< Add into the gradient buffer instead of overwriting it.
};

/// @brief The normaliser a reduction divides the weighted sum by (0 means "loss and gradient are exactly 0").
BEVKD_HOST_DEVICE double reduction_normaliser(reduction red, double weight_sum, double batch) {
  switch (red) {
    case reduction::mean:
      return weight_sum;
    case reduction::batchmean:
      return batch;
    default:
      return 1.0;
  }
}

/// @brief Builds the row scaling of a call; a zero normaliser gives a zero coefficient.
template <class Acc>
BEVKD_HOST_DEVICE row_scaling<Acc> make_row_scaling(double loss_weight, double grad_scale, double normaliser,
                                                    bool accumulate) {
  const double coeff = normaliser == 0 ? 0.0 : loss_weight * grad_scale / normaliser;  // NaN propagates
  return row_scaling<Acc>{static_cast<Acc>(loss_weight), static_cast<Acc>(coeff), accumulate};
}

/// @brief Turns the weighted sum into the reduced loss (0 when the normaliser is 0).
BEVKD_HOST_DEVICE double finish_loss(double weighted_sum, double loss_weight, double normaliser) {
  return normaliser == 0 ? 0.0 : loss_weight * weighted_sum / normaliser;
}

}  // namespace detail
}  // namespace bevkd
