// bevkd per-pillar response KL divergence (softmax, sigmoid and channel-wise spatial modes) with its fused gradient.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <type_traits>

#include "../core/config.hpp"
#include "../core/detail/bev_rows.hpp"
#include "../core/dtype.hpp"
#include "../core/reduction.hpp"
#include "../core/view.hpp"
#include "detail/kl_rows.hpp"

namespace bevkd {

/// @brief Which distribution the response KL compares.
enum class kl_mode {
  softmax,  ///< Class distribution per pillar: softmax over C for each row (b, p).
  sigmoid,  ///< Independent Bernoulli per class (CenterPoint-style heatmaps), summed over C.
  spatial   ///< Channel-wise distillation (CWD): softmax over the P pillars for each row (b, c).
};

/// @brief Options of response_kl.
struct response_kl_options {
  kl_mode mode = kl_mode::softmax;   ///< Distribution compared.
  double temperature = 1.0;          ///< tau > 0; the loss is scaled by tau^2.
  reduction reduce = reduction::mean;  ///< How per-row losses are combined.
  double loss_weight = 1.0;          ///< Multiplies the loss, per-row losses and the gradient.
  double grad_scale = 1.0;           ///< Upstream scale; multiplies the gradient only.
  bool accumulate = false;           ///< Add the gradient into `grad` instead of overwriting it.
};

namespace detail {

/// @brief The response KL over the rows of [R0, R1, N] views (spatial mode arrives here already transposed).
template <class T, bool Unit, bool Sigmoid>
struct response_kl_problem : row_problem<T, Unit> {
  using acc_type = accum_t<T>;  ///< Accumulation type.
  acc_type inv_tau;             ///< 1 / tau.
  acc_type tau;                 ///< Temperature.

  /// @brief Host scratch a row may use: the softmax pass keeps two exponentials per column.
  index_t scratch_bytes() const {
    return Sigmoid ? 0 : 2 * this->columns() * static_cast<index_t>(sizeof(acc_type));
  }

  /// @brief Rows with float accumulators can run in host row blocks (see blocks_apply()): softmax rows in row or lane
  /// layout, sigmoid rows in lane layout.
  static constexpr bool row_blocks = std::is_same<acc_type, float>::value;
  /// @brief Softmax rows are bound by their exponentials (see grad_streamable).
  static constexpr bool exponential_rows = !Sigmoid;
  /// @brief True when this call's rows run in host row blocks.
  bool blocks_apply() const { return row_blocks && blocks_fit(this->columns(), Unit); }
  /// @brief True when rows of `columns` columns run in host row blocks (see blocks_apply()).
  static constexpr bool blocks_fit(index_t columns, bool unit_stride) {
    return Sigmoid ? lane_layout_fits<T>(columns, unit_stride) : block_columns_fit(columns, unit_stride);
  }
  /// @brief Host scratch of one row block.
  index_t block_scratch_bytes() const { return softmax_kl_block_scratch_bytes<acc_type>(this->columns()); }
  /// @brief Loss of each row of a host row block; writes coeff[l] * dl/dS (see softmax_kl_block, sigmoid_kl_block).
  template <class Block>
  void block_loss_and_grad(const Block& block, const acc_type* coeff, const bool* skip, bool accumulate,
                           acc_type* scratch, acc_type* loss) const {
    if constexpr (Sigmoid)
      sigmoid_kl_block(block, coeff, skip, accumulate, scratch, inv_tau, tau, loss);
    else
      softmax_kl_block(block, coeff, skip, accumulate, scratch, inv_tau, tau, loss);
  }

  /// @brief Strided softmax rows of the types of has_lane_group_passes can run in host lane groups (see
  /// lane_groups_apply()).
  static constexpr bool lane_groups = row_blocks && !Sigmoid && !Unit && has_lane_group_passes<T>();
  /// @brief True when this call's rows run in host lane groups: strided rows too long for a row block, side by side in
  /// memory (the spatial mode's channels of an NHWC tensor).
  bool lane_groups_apply() const {
    return lane_groups && !block_columns_fit(this->columns(), Unit) &&
           rows_side_by_side(this->student, this->teacher, this->grad);
  }
  /// @brief True when side-by-side strided rows of `columns` columns run in place on the host, so run_on_rows does not
  /// stage them: in row blocks when a block takes them (blocks_apply), in lane groups when longer (lane_groups_apply).
  static constexpr bool reads_in_place(index_t columns) {
    return row_blocks && (blocks_fit(columns, false) || lane_groups);
  }

  /// @brief Loss of each row of a host lane_group_set; writes coeff * dl/dS (see softmax_kl_lane_groups).
  void lane_group_loss_and_grad(const lane_group_set<T>& set, const block_terms<acc_type>* terms, bool accumulate,
                                acc_type (*loss)[block_rows]) const {
    softmax_kl_lane_groups(set, terms, accumulate, inv_tau, tau, loss);
  }

  /// @brief True when a team holds each row for its passes (team.hold_row): the softmax's three passes.
  static constexpr bool holds_rows = !Sigmoid;

  /// @brief Team-collective loss of row r; writes coeff * dl_r/dS.
  template <class Team>
  BEVKD_HOST_DEVICE acc_type loss_and_grad(const Team& team, index_t r, acc_type coeff, bool accumulate) const {
    if constexpr (Sigmoid) {
      return sigmoid_kl_row(team, this->row(r), inv_tau, tau, coeff, accumulate);
    } else {
      return team.hold_row(this->row(r), [&](const auto& row) {
        return softmax_kl_row(team, row, inv_tau, tau, coeff, accumulate);
      });
    }
  }
};

}  // namespace detail

/// @brief Fused per-pillar KL distillation: l_r = tau^2 KL(p_T,r || p_S,r), gradient tau (p_S - p_T) w.r.t. student logits.
///
/// Rows r = (b, p) over a logical [B, P, C] tensor of logits (softmax: p = softmax over C of
/// logits / tau; sigmoid: per-class Bernoulli of sigmoid(logit / tau), summed over C), or
/// r = (b, c) with the softmax over P (spatial). Returns the reduced loss; writes (or adds)
/// loss_weight * grad_scale * d(reduced loss)/d(student) into `grad`. With tau = 1,
/// reduction sum and no weights, softmax mode equals
/// `F.kl_div(F.log_softmax(S, -1), F.softmax(T, -1), reduction='sum')`.
/// Kernels: detail/kl_rows.hpp (softmax_kl_row, sigmoid_kl_row; on the host, short softmax rows also softmax_kl_block).
class response_kl {
 public:
  /// @brief The options every call uses; public so a trainer can adjust them between steps.
  response_kl_options options;

  /// @brief A response KL functor with the given options (validated at each call).
  explicit response_kl(const response_kl_options& opts = {}) : options(opts) {}

  /// @brief Computes the loss and writes the student's gradient.
  /// @tparam Exec host_exec or cuda_exec.
  /// @tparam T float, double, bevkd::half or bevkd::bfloat16.
  /// @param exec Backend (and its reusable workspace).
  /// @param student Student logits, logical [B, P, C], any strides.
  /// @param teacher Teacher logits, same extents as `student`; never receives a gradient.
  /// @param grad Gradient buffer with the student's extents; must not overlap the inputs.
  /// @param io Optional per-row weights ([B, P]; [B, C] in spatial mode), and for reduction::none the
  ///           per-row loss output and upstream gradient, in accum_t<T>.
  /// @return Exec::result_type: the loss, loss_weight * sum_r w_r l_r and sum_r w_r.
  /// @throw bevkd::invalid_argument naming the argument, before anything is written.
  template <class Exec, class T>
  typename Exec::result_type operator()(Exec& exec, detail::identity_t<bev_view<const T>> student,
                                        detail::identity_t<bev_view<const T>> teacher, bev_view<T> grad,
                                        const row_io<accum_t<T>>& io = {}) const {
    static constexpr const char* pillar_dims[3] = {"B", "P", "C"};
    static constexpr const char* channel_dims[3] = {"B", "C", "P"};
    const bool spatial = options.mode == kl_mode::spatial;
    if (spatial) {
      student = student.transposed(1, 2);
      teacher = teacher.transposed(1, 2);
      grad = grad.transposed(1, 2);
    }
    detail::require_finite(options.temperature, "temperature", true);
    detail::require_finite(options.loss_weight, "loss_weight");
    detail::require_finite(options.grad_scale, "grad_scale");
    detail::validate_rows_call(student, teacher, grad, io, options.reduce, spatial ? channel_dims : pillar_dims);
    const detail::loss_call call{options.reduce, options.loss_weight, options.grad_scale, options.accumulate,
                                 student.extent[0]};
    using acc = accum_t<T>;
    const bool sigmoid = options.mode == kl_mode::sigmoid;
    const index_t columns = student.extent[2];
    const bool in_place = sigmoid ? detail::response_kl_problem<T, false, true>::reads_in_place(columns)
                                  : detail::response_kl_problem<T, false, false>::reads_in_place(columns);
    return detail::run_on_rows(exec, student, teacher, grad, options.accumulate, in_place, [&](auto unit, auto s,
                                                                                                auto t, auto g) {
      return detail::dispatch_bool(sigmoid, [&](auto sig) {
        detail::response_kl_problem<T, decltype(unit)::value, decltype(sig)::value> problem;
        problem.student = s;
        problem.teacher = t;
        problem.grad = g;
        problem.rows = detail::make_row_weighting(io, student.extent[1]);
        problem.tau = static_cast<acc>(options.temperature);
        problem.inv_tau = static_cast<acc>(1.0 / options.temperature);
        return exec.run_loss(problem, call);
      });
    });
  }
};

}  // namespace bevkd
