// bevkd sampling-location distillation ("where to look"): teacher-attention-weighted distance of deformable sampling points.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "../core/config.hpp"
#include "../core/detail/bev_rows.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/reduction.hpp"
#include "../core/view.hpp"
#include "attention_distill.hpp"
#include "detail/location_rows.hpp"

namespace bevkd {

/// @brief Options of sampling_location_distill.
struct sampling_location_options {
  location_distance distance = location_distance::squared;   ///< Distance between locations.
  double beta = 1.0;                                          ///< Smooth-L1 threshold (> 0).
  attention_input attention = attention_input::logits;        ///< What the teacher attention tensor holds.
  double temperature = 1.0;                                   ///< tau of the teacher attention softmax (logits only).
  reduction reduce = reduction::mean;                         ///< How per-row losses are combined.
  double loss_weight = 1.0;                                   ///< Multiplies the loss, per-row losses and the gradient.
  double grad_scale = 1.0;                                    ///< Upstream scale; multiplies the gradient only.
  bool accumulate = false;                                    ///< Add the gradient into `grad`.
};

/// @brief Fused sampling-location distillation: l_r = sum_k p_T,k dist(x_S,k - x_T,k), gradient w.r.t. the student's locations.
///
/// Rows r = (n, h, s) of [N, H, S, K, 2] sampling locations (normalised image coordinates);
/// p_T is the teacher's attention over the K keys (softmax over K of the logits / tau, or the
/// given probabilities). dist is the squared Euclidean distance (gradient 2 p d) or the sum of
/// smooth-L1 over x and y (gradient p d / beta below beta, p sign(d) above). Masks and query
/// weights act as in attention_distill's per_source mode. Kernel: detail/location_rows.hpp.
class sampling_location_distill {
 public:
  /// @brief The options every call uses.
  sampling_location_options options;

  /// @brief A sampling-location distillation functor with the given options (validated at each call).
  explicit sampling_location_distill(const sampling_location_options& opts = {}) : options(opts) {}

  /// @brief Computes the loss and writes the gradient w.r.t. the student's sampling locations.
  /// @tparam Exec host_exec or cuda_exec.
  /// @tparam T float, double, bevkd::half or bevkd::bfloat16.
  /// @param exec Backend.
  /// @param student Student locations [N, H, S, K, 2], any strides.
  /// @param teacher Teacher locations, same extents; no gradient.
  /// @param teacher_attention Teacher attention [N, H, S, K] weighting each key; no gradient.
  /// @param grad Gradient buffer with the student's extents; must not overlap the inputs.
  /// @param io Source mask [N, S], query weights [N], and for reduction::none per-row outputs/upstream [N, H, S].
  /// @return Exec::result_type: the loss, loss_weight * sum_r w_r l_r and sum_r w_r.
  /// @throw bevkd::invalid_argument naming the argument, before anything is written.
  template <class Exec, class T>
  typename Exec::result_type operator()(Exec& exec, detail::identity_t<strided_view<const T, 5>> student,
                                        detail::identity_t<strided_view<const T, 5>> teacher,
                                        detail::identity_t<attention_view<const T>> teacher_attention,
                                        strided_view<T, 5> grad, const attention_io<accum_t<T>>& io = {}) const {
    using acc = accum_t<T>;
    detail::require_finite(options.temperature, "temperature", true);
    detail::require_finite(options.beta, "beta", true);
    detail::require_finite(options.loss_weight, "loss_weight");
    detail::require_finite(options.grad_scale, "grad_scale");
    detail::require(options.attention == attention_input::logits || options.temperature == 1.0, "temperature",
                    "must be 1 when the attention holds probabilities, got ", options.temperature);
    detail::validate_view(student, "student");
    detail::validate_view(teacher, "teacher");
    detail::validate_view(teacher_attention, "teacher_attention");
    detail::validate_view(grad, "grad");
    for (int d = 0; d < 5; ++d) {
      detail::require_extent(teacher, d, student.extent[d], "teacher", "the student's");
      detail::require_extent(grad, d, student.extent[d], "grad", "the student's");
    }
    for (int d = 0; d < 4; ++d) detail::require_extent(teacher_attention, d, student.extent[d], "teacher_attention", "the student's");
    detail::require_extent(student, 4, 2, "student", "x and y");
    detail::require_no_self_overlap(grad, "grad");
    detail::require(!detail::ranges_overlap(grad, student) && !detail::ranges_overlap(grad, teacher) &&
                        !detail::ranges_overlap(grad, teacher_attention),
                    "grad", "aliases an input");
    const index_t n = student.extent[0], h = student.extent[1], s = student.extent[2];
    detail::validate_attention_io(io, n, h, s, false, options.reduce);
    detail::location_problem<T> problem;
    problem.student = student;
    problem.teacher = teacher;
    problem.attention = teacher_attention;
    problem.grad = grad;
    problem.rows = detail::attention_weighting<acc>{io.source_mask, io.query_weights, io.upstream, io.row_loss, h, s, false};
    problem.kind = options.distance;
    problem.beta = static_cast<acc>(options.beta);
    problem.attention_logits = options.attention == attention_input::logits;
    problem.inv_tau = static_cast<acc>(1.0 / options.temperature);
    const detail::loss_call call{options.reduce, options.loss_weight, options.grad_scale, options.accumulate, n};
    return exec.run_loss(problem, call);
  }
};

}  // namespace bevkd
