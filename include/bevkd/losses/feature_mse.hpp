// bevkd BEV feature MSE (plain or per-pillar L2-normalised) with its fused gradient.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "../core/config.hpp"
#include "../core/detail/bev_rows.hpp"
#include "../core/dtype.hpp"
#include "../core/reduction.hpp"
#include "../core/view.hpp"
#include "detail/mse_rows.hpp"

namespace bevkd {

/// @brief Feature normalisation applied before the MSE.
enum class mse_normalize {
  none,          ///< Compare features as they are.
  per_pillar_l2  ///< Divide each pillar's feature vector by max(||.||_2, eps) first (gradient flows through S's).
};

/// @brief Options of feature_mse.
struct feature_mse_options {
  mse_normalize normalize = mse_normalize::none;  ///< Normalisation before the MSE.
  double eps = 1e-12;                             ///< Norm clamp of per_pillar_l2 (as F.normalize).
  reduction reduce = reduction::mean;             ///< How per-pillar losses are combined.
  double loss_weight = 1.0;                       ///< Multiplies the loss, per-row losses and the gradient.
  double grad_scale = 1.0;                        ///< Upstream scale; multiplies the gradient only.
  bool accumulate = false;                        ///< Add the gradient into `grad` instead of overwriting it.
};

namespace detail {

/// @brief The feature MSE over the pillar rows of [B, P, C] views.
template <class T, bool Unit, bool Normalized>
struct feature_mse_problem : row_problem<T, Unit> {
  using acc_type = accum_t<T>;  ///< Accumulation type.
  acc_type eps;                 ///< Norm clamp.

  /// @brief Host scratch a row may use (none: every pass is one exponential-free sweep).
  index_t scratch_bytes() const { return 0; }

  /// @brief Rows with float accumulators can run in host row blocks (see blocks_apply()).
  static constexpr bool row_blocks = std::is_same<acc_type, float>::value;
  /// @brief True when this call's rows run in host row blocks. Normalised: on AVX-512 hosts unit-stride rows up to
  /// max_normalized_mse_row_layout_columns, read in place (normalized_mse_row_layout), and elsewhere rows a block
  /// holds in lane layout (too short for the per-row loops to vectorise; normalized_mse_block). Plain: on AVX-512
  /// hosts unit-stride rows up to max_mse_row_layout_columns (mse_row_layout), elsewhere unit-stride rows up to
  /// max_short_mse_row_columns (mse_short_rows).
  bool blocks_apply() const {
    const index_t n = this->columns();
    if constexpr (Normalized)
      return row_blocks && (lane_layout_fits<T>(n, Unit) || normalized_mse_row_layout_fits<T>(n, Unit));
    else
      return row_blocks && (mse_row_layout_fits<T>(n, Unit) || short_mse_rows_fit<T>(n, Unit));
  }
  /// @brief Host scratch of one row block: student and teacher in lane layout (none in row layout).
  index_t block_scratch_bytes() const {
    if (!Normalized || !lane_layout_fits<T>(this->columns(), Unit)) return 0;
    return 2 * block_rows * this->columns() * static_cast<index_t>(sizeof(acc_type));
  }
  /// @brief Loss of each row of a host row block; writes coeff[l] * dl/dS (see mse_row_layout, mse_short_rows,
  /// normalized_mse_block and normalized_mse_row_layout).
  template <class Block>
  void block_loss_and_grad(const Block& block, const acc_type* coeff, const bool* skip, bool accumulate,
                           acc_type* scratch, acc_type* loss) const {
    if constexpr (Normalized) {
#if defined(BEVKD_HOST_AVX512)
      if constexpr (host_float_lanes<T>() && Unit) {
        if (normalized_mse_row_layout_fits<T>(block.n, Unit)) {
          with_block_rows(block, [&](const auto& rows) {
            normalized_mse_row_layout(rows, coeff, skip, accumulate, eps, loss);
          });
          return;
        }
      }
#endif
      normalized_mse_block(block, coeff, skip, accumulate, scratch, eps, loss);
    } else {
      (void)scratch;  // row layout: none
      if constexpr (Unit) {
#if defined(BEVKD_HOST_AVX512)
        if constexpr (host_float_lanes<T>())
          with_block_rows(block, [&](const auto& rows) { mse_row_layout(rows, coeff, skip, accumulate, loss); });
        else
#endif
          with_block_rows(block, [&](const auto& rows) { mse_short_rows(rows, coeff, skip, accumulate, loss); });
      }
    }
  }

  /// @brief Rows with strided columns can run in host lane groups (see lane_groups_apply()): every dtype, on AVX-512
  /// builds by its passes for the types of has_lane_group_passes, else by portable ones (mse_lane_group_passes).
  static constexpr bool lane_groups = !Unit;
  /// @brief Columns (channels) a lane-group pass prefetches ahead: each column is one line per group, a channel plane
  /// from the next, and its little arithmetic covers the memory's latency over a few columns, not 64 (measured, NCHW,
  /// 2 x 40000 pillars, two threads, Zen 4, 64 -> 16 ahead: portable fp32 C = 64 5.29 -> 3.8 ms, C = 256 17.3 -> 15.0;
  /// -march=native fp32 C = 64 2.58 -> 2.45-2.62, C = 256 12.7 -> 11.4-11.9, bf16 C = 64 1.81 -> 1.38-1.48).
  static constexpr index_t lane_group_ahead = 16;
  /// @brief True when this call's rows run in host lane groups: side by side in memory (NCHW pillars).
  bool lane_groups_apply() const { return lane_groups && rows_side_by_side(this->student, this->teacher, this->grad); }
  /// @brief Loss of each row of a host lane_group_set; writes coeff * dl/dS (see mse_lane_groups).
  void lane_group_loss_and_grad(const lane_group_set<T>& set, const block_terms<acc_type>* terms, bool accumulate,
                                acc_type (*loss)[block_rows]) const {
    mse_lane_groups<Normalized>(set, terms, accumulate, eps, loss);
  }

  /// @brief True when a team holds each row for its passes (team.hold_row): the normalised MSE's two passes.
  static constexpr bool holds_rows = Normalized;

  /// @brief Team-collective loss of row r; writes coeff * dl_r/dS.
  template <class Team>
  BEVKD_HOST_DEVICE acc_type loss_and_grad(const Team& team, index_t r, acc_type coeff, bool accumulate) const {
    if constexpr (!Normalized) {
      return mse_row(team, this->row(r), coeff, accumulate);
    } else {
      return team.hold_row(this->row(r), [&](const auto& row) {
        return normalized_mse_row(team, row, eps, coeff, accumulate);
      });
    }
  }
};

}  // namespace detail

/// @brief Fused BEV feature distillation: l_r = (1/C) sum_c (S_r,c - T_r,c)^2, gradient (2/C)(S_r,c - T_r,c).
///
/// Rows are pillars (b, p) of a logical [B, P, C] feature map. With per_pillar_l2 both
/// feature vectors are divided by max(||.||_2, eps) first and the gradient flows through
/// the student's normalisation. Unweighted reduction mean equals `F.mse_loss(S, T)`.
/// Kernels: detail/mse_rows.hpp (mse_row, normalized_mse_row; on the host also mse_row_layout, mse_short_rows,
/// normalized_mse_row_layout, normalized_mse_block and mse_lane_groups).
class feature_mse {
 public:
  /// @brief The options every call uses.
  feature_mse_options options;

  /// @brief A feature MSE functor with the given options (validated at each call).
  explicit feature_mse(const feature_mse_options& opts = {}) : options(opts) {}

  /// @brief Computes the loss and writes the student's gradient (same arguments and guarantees as response_kl).
  /// @tparam Exec host_exec or cuda_exec.
  /// @tparam T float, double, bevkd::half or bevkd::bfloat16.
  /// @param exec Backend.
  /// @param student Student features, logical [B, P, C], any strides.
  /// @param teacher Teacher features, same extents.
  /// @param grad Gradient buffer with the student's extents; must not overlap the inputs.
  /// @param io Optional per-pillar weights [B, P], per-row outputs and upstream gradient (reduction::none).
  /// @return Exec::result_type: the loss, loss_weight * sum_r w_r l_r and sum_r w_r.
  /// @throw bevkd::invalid_argument naming the argument, before anything is written.
  template <class Exec, class T>
  typename Exec::result_type operator()(Exec& exec, detail::identity_t<bev_view<const T>> student,
                                        detail::identity_t<bev_view<const T>> teacher, bev_view<T> grad,
                                        const row_io<accum_t<T>>& io = {}) const {
    static constexpr const char* pillar_dims[3] = {"B", "P", "C"};
    detail::require_finite(options.eps, "eps", true);
    detail::require_finite(options.loss_weight, "loss_weight");
    detail::require_finite(options.grad_scale, "grad_scale");
    detail::validate_rows_call(student, teacher, grad, io, options.reduce, pillar_dims);
    const detail::loss_call call{options.reduce, options.loss_weight, options.grad_scale, options.accumulate,
                                 student.extent[0]};
    const bool normalized = options.normalize == mse_normalize::per_pillar_l2;
    // Side-by-side rows (NCHW) run in place on the host in lane groups (every dtype); others are staged.
    const bool in_place = detail::feature_mse_problem<T, false, false>::lane_groups;
    return detail::run_on_rows(exec, student, teacher, grad, options.accumulate, in_place, [&](auto unit, auto s,
                                                                                              auto t, auto g) {
      return detail::dispatch_bool(normalized, [&](auto norm) {
        detail::feature_mse_problem<T, decltype(unit)::value, decltype(norm)::value> problem;
        problem.student = s;
        problem.teacher = t;
        problem.grad = g;
        problem.rows = detail::make_row_weighting(io, student.extent[1]);
        problem.eps = static_cast<accum_t<T>>(options.eps);
        return exec.run_loss(problem, call);
      });
    });
  }
};

}  // namespace bevkd
