// bevkd spatial-temporal attention-map distillation: KL / reverse KL / JS / MSE between attention distributions, fused gradient.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "../core/config.hpp"
#include "../core/detail/bev_rows.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/reduction.hpp"
#include "../core/view.hpp"
#include "detail/attention_rows.hpp"

namespace bevkd {

/// @brief A logical [N, H, S, K] attention tensor (N = batch x queries, H heads, S sources, K = levels x points).
template <class T>
using attention_view = strided_view<T, 4>;

/// @brief Options of attention_distill.
struct attention_distill_options {
  attention_normalize normalize = attention_normalize::per_source;  ///< Which keys one distribution spans.
  divergence div = divergence::kl;                                   ///< Divergence D(teacher, student).
  attention_input student_input = attention_input::logits;           ///< What the student tensor holds.
  attention_input teacher_input = attention_input::logits;           ///< What the teacher tensor holds.
  double temperature = 1.0;                                          ///< tau > 0 (1 when an input is probabilities).
  index_t points = 0;  ///< Sampling points per level: keys are levels x points, and teacher levels are summed in groups
                       ///< of L_T / L_S. 0: no level structure (teacher and student K must match).
  reduction reduce = reduction::mean;  ///< How per-row losses are combined.
  double loss_weight = 1.0;            ///< Multiplies the loss, per-row losses and the gradient.
  double grad_scale = 1.0;             ///< Upstream scale; multiplies the gradient only.
  bool accumulate = false;             ///< Add the gradient into `grad` instead of overwriting it.
};

/// @brief Optional per-query and per-source inputs and per-row outputs of an attention_distill call (null = absent).
template <class Acc>
struct attention_io {
  strided_view<const std::uint8_t, 2> source_mask{};  ///< [N, S], nonzero where query n's pillar sees source s.
  strided_view<const Acc, 1> query_weights{};         ///< [N], w >= 0 (foreground masks, teacher confidence).
  strided_view<const Acc, 3> upstream{};              ///< reduction::none: [N, H, S] per_source, [N, H, 1] joint.
  strided_view<Acc, 3> row_loss{};                    ///< reduction::none: receives loss_weight w_r l_r, same shape.
};

namespace detail {

/// @brief Validates the per-query/per-source inputs of an attention call; throws naming the argument.
template <class Acc>
void validate_attention_io(const attention_io<Acc>& io, index_t n, index_t h, index_t s, bool joint, reduction red) {
  const auto check = [](const auto& v, const char* name, std::initializer_list<index_t> extents) {
    if (!v.data && v.size() == 0) return;
    validate_view(v, name);
    require(v.data != nullptr, argument_member{name, "data"}, "is null");
    int d = 0;
    for (index_t e : extents) require_extent(v, d++, e, name);
  };
  check(io.source_mask, "source_mask", {n, s});
  check(io.query_weights, "query_weights", {n});
  check(io.upstream, "upstream", {n, h, joint ? 1 : s});
  check(io.row_loss, "row_loss", {n, h, joint ? 1 : s});
  require(red == reduction::none || !io.upstream.data, "upstream", "is only valid with reduction::none");
  require(red == reduction::none || !io.row_loss.data, "row_loss", "is only valid with reduction::none");
  if (io.row_loss.data) require_no_self_overlap(io.row_loss, "row_loss");
}

/// @brief Teacher levels per student level, from the key counts and the points per level; throws when they do not divide.
inline index_t level_group_of(index_t keys_student, index_t keys_teacher, index_t points) {
  if (points == 0) {
    require(keys_teacher == keys_student, "teacher.extent[3]", "expected ", keys_student,
            " (K of the student; set options.points to pool teacher levels), got ", keys_teacher);
    return 1;
  }
  require(points > 0, "points", "must be >= 0, got ", points);
  require(keys_student % points == 0, "student.extent[3]", "must be a multiple of points = ", points, ", got ",
          keys_student);
  require(keys_teacher % points == 0, "teacher.extent[3]", "must be a multiple of points = ", points, ", got ",
          keys_teacher);
  const index_t levels_s = keys_student / points, levels_t = keys_teacher / points;
  require(levels_s > 0 && levels_t % levels_s == 0, "teacher.extent[3]", "teacher levels (", levels_t,
          ") must be a multiple of student levels (", levels_s, ")");
  return levels_t / levels_s;
}

}  // namespace detail

/// @brief Fused attention-map distillation: l_r = tau^2 D(p_T,r, q_S,r) over attention distributions, gradient w.r.t. the student.
///
/// Rows r are (n, h, s) with the distribution over the K keys (per_source, BEVFormer's own
/// softmax), or (n, h) with the distribution over the S x K keys of the valid sources
/// (joint). The teacher is read through its structure mismatch: H_T = f H_S heads are
/// averaged in groups of f (a mixture of distributions), and with options.points set,
/// L_T = g L_S levels are summed in groups of g (marginalised). The gradient is exact
/// through the softmax: dl/dz_c = tau q_c (g_c - sum_k q_k g_k) for g = dD/dq (for KL, tau
/// (q_c - p_c)); with probability inputs it is dD/dq itself. Masked keys get exactly 0.
/// Kernels: detail/attention_rows.hpp (attention_problem::loss_and_grad).
class attention_distill {
 public:
  /// @brief The options every call uses.
  attention_distill_options options;

  /// @brief An attention distillation functor with the given options (validated at each call).
  explicit attention_distill(const attention_distill_options& opts = {}) : options(opts) {}

  /// @brief Computes the loss and writes the student's gradient.
  /// @tparam Exec host_exec or cuda_exec.
  /// @tparam T float, double, bevkd::half or bevkd::bfloat16.
  /// @param exec Backend.
  /// @param student Student attention, [N, H_S, S, K_S], any strides.
  /// @param teacher Teacher attention, [N, f H_S, S, g K_S] (f <= 8 heads and g levels pooled); no gradient.
  /// @param grad Gradient buffer with the student's extents; must not overlap the inputs.
  /// @param io Source mask [N, S], query weights [N], and for reduction::none per-row outputs and upstream gradient.
  /// @return Exec::result_type: the loss, loss_weight * sum_r w_r l_r and sum_r w_r (over unmasked rows).
  /// @throw bevkd::invalid_argument naming the argument, before anything is written.
  template <class Exec, class T>
  typename Exec::result_type operator()(Exec& exec, detail::identity_t<attention_view<const T>> student,
                                        detail::identity_t<attention_view<const T>> teacher, attention_view<T> grad,
                                        const attention_io<accum_t<T>>& io = {}) const {
    using acc = accum_t<T>;
    const bool joint = options.normalize == attention_normalize::joint;
    detail::require_finite(options.temperature, "temperature", true);
    detail::require_finite(options.loss_weight, "loss_weight");
    detail::require_finite(options.grad_scale, "grad_scale");
    const bool probabilities = options.student_input == attention_input::probabilities ||
                               options.teacher_input == attention_input::probabilities;
    detail::require(!probabilities || options.temperature == 1.0, "temperature",
                    "must be 1 when an input holds probabilities, got ", options.temperature);
    detail::validate_view(student, "student");
    detail::validate_view(teacher, "teacher");
    detail::validate_view(grad, "grad");
    const index_t n = student.extent[0], h = student.extent[1], s = student.extent[2], k = student.extent[3];
    detail::require_extent(teacher, 0, n, "teacher", "N of the student");
    detail::require_extent(teacher, 2, s, "teacher", "S of the student");
    for (int d = 0; d < 4; ++d) detail::require_extent(grad, d, student.extent[d], "grad", "the student's");
    detail::require(k >= 1, "student.extent[3]", "(K) must be >= 1, got ", k);
    detail::require(h >= 1 && teacher.extent[1] % h == 0 && teacher.extent[1] / h <= detail::max_head_group,
                    "teacher.extent[1]", "must be f x ", h, " (the student's heads) with 1 <= f <= ",
                    detail::max_head_group, ", got ", teacher.extent[1]);
    const index_t level_group = detail::level_group_of(k, teacher.extent[3], options.points);
    detail::require_no_self_overlap(grad, "grad");
    detail::require(!detail::ranges_overlap(grad, student), "grad", "aliases student");
    detail::require(!detail::ranges_overlap(grad, teacher), "grad", "aliases teacher");
    detail::validate_attention_io(io, n, h, s, joint, options.reduce);
    const int group = static_cast<int>(teacher.extent[1] / h);
    const bool student_logits = options.student_input == attention_input::logits;
    const bool teacher_logits = options.teacher_input == attention_input::logits;
    const bool runs = detail::attention_softmax_runs(options.div, student_logits, teacher_logits, group, level_group,
                                                     student, teacher, grad);
    const detail::loss_call call{options.reduce, options.loss_weight, options.grad_scale, options.accumulate, n};
    return detail::dispatch_bool(runs, [&](auto runs_tag) {
      detail::attention_problem<T, decltype(runs_tag)::value> problem;
      problem.student = student;
      problem.teacher = teacher;
      problem.grad = grad;
      problem.rows = detail::attention_weighting<acc>{io.source_mask, io.query_weights, io.upstream, io.row_loss,
                                                      h, s, joint};
      problem.group = group;
      problem.level_group = level_group;
      problem.points = options.points;
      problem.student_logits = student_logits;
      problem.teacher_logits = teacher_logits;
      problem.div = options.div;
      problem.tau = static_cast<acc>(options.temperature);
      problem.inv_tau = static_cast<acc>(1.0 / options.temperature);
      problem.one_run = problem.one_run_rows();
      return exec.run_loss(problem, call);
    });
  }
};

}  // namespace bevkd
