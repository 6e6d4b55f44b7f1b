// bevkd tests: one row-loss call set up in any layout and dtype, and its double-precision expected result.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <bevkd/bevkd.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "bev_data.hpp"
#include "reference.hpp"
#include "seed.hpp"

namespace bevkd_test {

/// @brief The loss functors a test file's cases can run. A file that runs one loss defines BEVKD_TEST_LOSSES as
/// bevkd_test::loss_set::kl or ::mse before including this header, and the other functor is not compiled: each
/// loss's host paths in four dtypes are the longest compiles of the build, which scripts/test.sh repeats in two
/// configurations.
enum class loss_set { kl, mse, both };

#ifndef BEVKD_TEST_LOSSES
#define BEVKD_TEST_LOSSES ::bevkd_test::loss_set::both
#endif
/// @brief The loss functors this file's harness compiles.
inline constexpr loss_set compiled_losses = BEVKD_TEST_LOSSES;

/// @brief Which loss a case exercises (the reference and the functor both follow from it).
struct loss_kind {
  bool is_kl = true;
  bevkd::kl_mode mode = bevkd::kl_mode::softmax;                ///< KL only.
  bevkd::mse_normalize normalize = bevkd::mse_normalize::none;  ///< MSE only.
  double tau = 1.0;                                             ///< KL only.
  double eps = 1e-12;                                           ///< MSE only.

  /// @brief Rows are channels (spatial KL): the row grid is [B, C] and a row runs over P.
  bool spatial() const { return is_kl && mode == bevkd::kl_mode::spatial; }

  /// @brief Reference loss and gradient of one row.
  row_ref_result reference(const std::vector<double>& s, const std::vector<double>& t) const {
    if (!is_kl) return mse_reference(s, t, normalize == bevkd::mse_normalize::per_pillar_l2, eps);
    if (mode == bevkd::kl_mode::sigmoid) return sigmoid_kl_reference(s, t, tau);
    return softmax_kl_reference(s, t, tau);
  }
};

/// @brief Options shared by both losses' calls.
struct call_options {
  bevkd::reduction reduce = bevkd::reduction::mean;
  double loss_weight = 1.0;
  double grad_scale = 1.0;
  bool accumulate = false;
};

/// @brief Inputs of one call: student and teacher in a layout, optional per-row weights and upstream gradients.
template <class T>
struct loss_case {
  using acc = bevkd::accum_t<T>;
  index_t B = 2, P = 7, C = 5;
  layout lay = layout::nhwc;
  loss_kind kind;
  call_options opts;
  std::vector<T> student, teacher;
  std::vector<acc> weights, upstream;  // contiguous over the row grid; empty = absent

  /// @brief Rows R0 x R1 of the row grid.
  index_t row_inner() const { return kind.spatial() ? C : P; }
  index_t row_count() const { return B * row_inner(); }

  /// @brief Fills student and teacher with random logits (teacher correlated with the student).
  void randomize(std::mt19937& rng, double scale = 2.0) {
    const index_t n = storage_size(lay, B, P, C);
    student = random_values<T>(n, rng, scale);
    teacher = random_values<T>(n, rng, scale);
  }
  /// @brief Random weights in [0, 2) with about a quarter exactly zero.
  void random_weights(std::mt19937& rng) {
    std::uniform_real_distribution<double> u(0.0, 2.0);
    weights.resize(static_cast<std::size_t>(row_count()));
    for (auto& w : weights) w = static_cast<acc>(u(rng) < 0.5 ? 0.0 : u(rng));
  }
  /// @brief Random upstream gradients (reduction none).
  void random_upstream(std::mt19937& rng) {
    std::uniform_real_distribution<double> u(-1.5, 1.5);
    upstream.resize(static_cast<std::size_t>(row_count()));
    for (auto& v : upstream) v = static_cast<acc>(u(rng));
  }

  bevkd::bev_view<const T> student_view() const { return view_of<const T>(lay, student.data(), B, P, C); }
  bevkd::bev_view<const T> teacher_view() const { return view_of<const T>(lay, teacher.data(), B, P, C); }
  bevkd::bev_view<T> grad_view(std::vector<T>& grad) const { return view_of<T>(lay, grad.data(), B, P, C); }

  /// @brief Row inputs for the call (row_loss points into `row_loss` when reduction is none).
  bevkd::row_io<acc> io(std::vector<acc>& row_loss) const {
    bevkd::row_io<acc> io;
    const index_t inner = row_inner();
    if (!weights.empty()) io.weights = bevkd::rows_contiguous<const acc>(weights.data(), B, inner);
    if (!upstream.empty()) io.upstream = bevkd::rows_contiguous<const acc>(upstream.data(), B, inner);
    if (opts.reduce == bevkd::reduction::none) {
      row_loss.assign(static_cast<std::size_t>(row_count()), acc(-7));
      io.row_loss = bevkd::rows_contiguous<acc>(row_loss.data(), B, inner);
    }
    return io;
  }

  /// @brief Runs the loss functor of this case on an executor (only the losses of this file's loss_set compile).
  template <class Exec>
  typename Exec::result_type run(Exec& exec, std::vector<T>& grad, std::vector<acc>& row_loss) const {
    const auto rows = io(row_loss);
    if (kind.is_kl) {
      if constexpr (compiled_losses != loss_set::mse) {
        const bevkd::response_kl kl(
            {kind.mode, kind.tau, opts.reduce, opts.loss_weight, opts.grad_scale, opts.accumulate});
        return kl(exec, student_view(), teacher_view(), grad_view(grad), rows);
      }
    } else if constexpr (compiled_losses != loss_set::kl) {
      const bevkd::feature_mse mse(
          {kind.normalize, kind.eps, opts.reduce, opts.loss_weight, opts.grad_scale, opts.accumulate});
      return mse(exec, student_view(), teacher_view(), grad_view(grad), rows);
    }
    throw std::logic_error(kind.is_kl ? "this test file's harness compiles feature_mse only (BEVKD_TEST_LOSSES)"
                                      : "this test file's harness compiles response_kl only (BEVKD_TEST_LOSSES)");
  }
};

/// @brief The expected result of a call: loss, sum, weight sum, per-row losses and the gradient in logical order.
struct expected {
  double loss = 0, sum = 0, weight_sum = 0;
  double loss_scale = 0;         // the loss's normalised sum of |term scales|: rounding is relative to it
  std::vector<double> row_loss;  // loss_weight * w_r * l_r
  std::vector<double> grad;      // logical [B, P, C]; for accumulate, the added part only
};

/// @brief The double-precision reference loss and gradient of each row of a case, from its stored (rounded) inputs:
/// they depend on the inputs, layout and loss only, so a test that varies weights and reduction computes them once.
template <class T>
std::vector<row_ref_result> reference_rows(const loss_case<T>& cs) {
  const auto s = cs.student_view(), t = cs.teacher_view();
  const index_t inner = cs.row_inner(), n = cs.kind.spatial() ? cs.P : cs.C;
  std::vector<row_ref_result> rows;
  std::vector<double> sr(static_cast<std::size_t>(n)), tr(static_cast<std::size_t>(n));
  for (index_t r = 0; r < cs.row_count(); ++r) {
    const index_t b = r / inner, i = r % inner;
    for (index_t c = 0; c < n; ++c) {
      const index_t p = cs.kind.spatial() ? c : i, ch = cs.kind.spatial() ? i : c;
      sr[static_cast<std::size_t>(c)] = to_double(s(b, p, ch));
      tr[static_cast<std::size_t>(c)] = to_double(t(b, p, ch));
    }
    rows.push_back(cs.kind.reference(sr, tr));
  }
  return rows;
}

/// @brief A case's expected result in double precision, from its rows' references (reference_rows(cs)).
template <class T>
expected expected_result(const loss_case<T>& cs, const std::vector<row_ref_result>& rows) {
  const index_t inner = cs.row_inner(), n = cs.kind.spatial() ? cs.P : cs.C;
  expected e;
  e.grad.assign(static_cast<std::size_t>(cs.B * cs.P * cs.C), 0.0);
  std::vector<double> w(static_cast<std::size_t>(cs.row_count()), 1.0);
  for (index_t r = 0; r < cs.row_count(); ++r) {
    if (!cs.weights.empty()) w[r] = static_cast<double>(cs.weights[r]);
    e.weight_sum += w[r];
    if (w[r] != 0) e.sum += w[r] * rows[r].loss;
    if (w[r] != 0) e.loss_scale += w[r] * (std::fabs(rows[r].loss) + rows[r].scale);
  }
  const auto red = cs.opts.reduce;
  const double normaliser = red == bevkd::reduction::mean        ? e.weight_sum
                            : red == bevkd::reduction::batchmean ? static_cast<double>(cs.B)
                                                                 : 1.0;
  const double lw = cs.opts.loss_weight;
  e.loss = normaliser == 0 ? 0.0 : lw * e.sum / normaliser;
  e.loss_scale = normaliser == 0 ? 0.0 : std::fabs(lw) * e.loss_scale / normaliser;
  e.sum *= lw;
  for (index_t r = 0; r < cs.row_count(); ++r) {
    const double u = cs.upstream.empty() ? 1.0 : static_cast<double>(cs.upstream[r]);
    e.row_loss.push_back(w[r] == 0 ? 0.0 : lw * w[r] * rows[r].loss);
    if (w[r] == 0 || normaliser == 0) continue;
    const double coeff = lw * cs.opts.grad_scale * w[r] * u / normaliser;
    for (index_t c = 0; c < n; ++c) {
      const index_t b = r / inner, i = r % inner;
      const index_t p = cs.kind.spatial() ? c : i, ch = cs.kind.spatial() ? i : c;
      e.grad[static_cast<std::size_t>((b * cs.P + p) * cs.C + ch)] = coeff * rows[r].grad[c];
    }
  }
  return e;
}

/// @brief Computes a case's expected result in double precision from the stored (rounded) inputs.
template <class T>
expected expected_result(const loss_case<T>& cs) {
  return expected_result(cs, reference_rows(cs));
}

/// @brief Relative tolerance of a dtype's stored results.
template <class T>
double tolerance() {
  if (std::is_same<T, double>::value) return 1e-10;
  if (std::is_same<T, float>::value) return 2e-5;
  if (std::is_same<T, bevkd::half>::value) return 2e-3;
  return 1.6e-2;
}

/// @brief Scale floor of a stored gradient's comparison: where a half gradient falls below half's normal range
/// (2^-14), its rounding error is bounded by the subnormal spacing 2^-24, not by the relative tolerance.
/// relative_error(a, b, grad_floor<T>(tol)) < tol then means max |a - b| < max(tol * max |b|, 2^-23): two results
/// rounded independently (device and host, or blocks and rows, whose float sums differ in order) can land one
/// spacing apart, as seen on the GPU and in host blocks (a difference of exactly 2^-24 over all-subnormal gradients).
template <class T>
double grad_floor(double tol = tolerance<T>()) {
  return std::is_same<T, bevkd::half>::value ? std::ldexp(1.0, -23) / tol : 1e-30;
}

/// @brief Reads a gradient buffer back in logical [B, P, C] order.
template <class T>
std::vector<double> logical_grad(const loss_case<T>& cs, std::vector<T>& grad) {
  const auto g = cs.grad_view(grad);
  std::vector<double> out;
  for (index_t b = 0; b < cs.B; ++b)
    for (index_t p = 0; p < cs.P; ++p)
      for (index_t c = 0; c < cs.C; ++c) out.push_back(to_double(g(b, p, c)));
  return out;
}

/// @brief max_i |a_i - b_i| / max(max_i |b_i|, floor): the error measure every comparison uses.
inline double relative_error(const std::vector<double>& a, const std::vector<double>& b, double floor = 1e-30) {
  double diff = 0, scale = floor;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double d = std::fabs(a[i] - b[i]);
    diff = std::isnan(d) ? HUGE_VAL : std::max(diff, d);
    scale = std::max(scale, std::fabs(b[i]));
  }
  return a.size() == b.size() ? diff / scale : HUGE_VAL;
}

/// @brief |a - b| / max(|b|, floor).
inline double relative_error(double a, double b, double floor = 1e-30) {
  return std::fabs(a - b) / std::max(std::fabs(b), floor);
}

}  // namespace bevkd_test

namespace bevkd_test {

/// @brief Sentinel a gradient buffer is filled with, to see what a call wrote.
template <class T>
T sentinel() {
  return T(static_cast<float>(-123.25));
}

/// @brief True when the padding of a padded-layout gradient buffer holds the bits it held before the call (always true
/// for the other layouts, which have none).
template <class T>
bool padding_unchanged(const loss_case<T>& cs, const std::vector<T>& after, const std::vector<T>& before) {
  bool same = true;
  for (std::size_t i = 0; cs.lay == layout::padded && i < before.size(); ++i)
    if (static_cast<index_t>(i) % (cs.C + 3) >= cs.C) same = same && std::memcmp(&after[i], &before[i], sizeof(T)) == 0;
  return same;
}

/// @brief Runs a case on the host executor and checks loss, weight sum, per-row losses, gradient and untouched padding
/// against the expected result from its rows' references.
template <class T>
void check_host_case(const loss_case<T>& cs, bevkd::host_exec& exec, const std::vector<row_ref_result>& references) {
  using acc = bevkd::accum_t<T>;
  const std::vector<T> init(static_cast<std::size_t>(storage_size(cs.lay, cs.B, cs.P, cs.C)), sentinel<T>());
  std::vector<T> grad = init;
  std::vector<acc> row_loss;
  const bevkd::loss_result got = cs.run(exec, grad, row_loss);
  const expected want = expected_result(cs, references);
  const double tol = tolerance<T>();
  INFO("layout ", layout_name(cs.lay), " B ", cs.B, " P ", cs.P, " C ", cs.C, " reduction ",
       static_cast<int>(cs.opts.reduce), " weighted ", !cs.weights.empty());
  // The loss is accumulated in float (double for double) from terms of size loss_scale.
  const double loss_tol = std::max(tol, 1e-5) * want.loss_scale + 1e-12;
  CHECK(std::fabs(got.loss - want.loss) <= loss_tol);
  CHECK(std::fabs(got.sum - want.sum) <= loss_tol * (want.loss == 0 ? 1.0 : std::fabs(want.sum / want.loss)));
  CHECK(relative_error(got.weight_sum, want.weight_sum, 1e-6) < 1e-6);
  CHECK(relative_error(logical_grad(cs, grad), want.grad, grad_floor<T>()) < tol);
  if (cs.opts.reduce == bevkd::reduction::none) {
    std::vector<double> rows(row_loss.begin(), row_loss.end());
    CHECK(relative_error(rows, want.row_loss, 1e-6) < std::max(tol, 1e-5));
  }
  CHECK(padding_unchanged(cs, grad, init));
}

/// @brief Runs a case on the host executor and checks it against the double reference.
template <class T>
void check_host_case(const loss_case<T>& cs, bevkd::host_exec& exec) {
  check_host_case(cs, exec, reference_rows(cs));
}

/// @brief Checks a case over every layout, reduction and weighting on the host.
template <class T>
void check_all_options(loss_case<T> cs, std::mt19937& rng, bevkd::host_exec& exec) {
  for (layout lay : all_layouts) {
    cs.lay = lay;
    cs.randomize(rng);
    const auto references = reference_rows(cs);
    for (auto red : {bevkd::reduction::none, bevkd::reduction::sum, bevkd::reduction::mean,
                     bevkd::reduction::batchmean}) {
      cs.opts.reduce = red;
      for (bool weighted : {false, true}) {
        cs.weights.clear();
        cs.upstream.clear();
        if (weighted) cs.random_weights(rng);
        if (weighted && red == bevkd::reduction::none) cs.random_upstream(rng);
        check_host_case(cs, exec, references);
      }
    }
  }
}

/// @brief Relative tolerance of a gradient stored as T after one rounding of a float sum (half, bfloat16: a few of
/// their ulps; float, double: a few float ulps).
template <class T>
constexpr double stored_tolerance() {
  return std::is_same<T, bevkd::bfloat16>::value ? 2e-2 : std::is_same<T, bevkd::half>::value ? 4e-3 : 1e-5;
}

/// @brief A signalling NaN with a payload, which a conversion to float and back would change (quieted).
template <class T>
T signalling_nan() {
  if constexpr (std::is_same<T, bevkd::half>::value) {
    return bevkd::half::from_bits(0x7d01);
  } else if constexpr (std::is_same<T, bevkd::bfloat16>::value) {
    return bevkd::bfloat16::from_bits(0x7fa1);
  } else {
    using bits_type = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    const bits_type bits = sizeof(T) == 4 ? bits_type{0x7fa00001u} : static_cast<bits_type>(0x7ff4000000000001ull);
    T value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
}

/// @brief Runs a case (random inputs and weights, row 1 at weight 0) writing its gradient, then accumulating it onto
/// random prior values with a signalling NaN and -0 in row 1: the buffer then holds prior + gradient (to tol,
/// relative), and the rows of weight 0 keep their prior bits exactly.
template <class T>
void check_accumulate_keeps_excluded_rows(loss_case<T> cs, std::mt19937& rng, bevkd::host_exec& exec, double tol) {
  cs.randomize(rng);
  cs.random_weights(rng);
  cs.weights[1] = 0;
  std::vector<T> plain(cs.student.size()), acc = random_values<T>(static_cast<index_t>(cs.student.size()), rng);
  std::vector<bevkd::accum_t<T>> rows;
  cs.opts.accumulate = false;
  cs.run(exec, plain, rows);
  const auto g = cs.grad_view(acc);
  const auto for_each_element = [&](auto&& f) {
    for (index_t b = 0; b < cs.B; ++b)
      for (index_t p = 0; p < cs.P; ++p)
        for (index_t c = 0; c < cs.C; ++c)
          f(static_cast<std::size_t>(g.offset(b, p, c)), b * cs.row_inner() + (cs.kind.spatial() ? c : p));
  };
  bool odd = false;
  for_each_element([&](std::size_t i, index_t row) {
    if (row == 1) acc[i] = (odd = !odd) ? signalling_nan<T>() : T(-0.0f);
  });
  const std::vector<T> prior = acc;
  cs.opts.accumulate = true;
  cs.run(exec, acc, rows);
  for_each_element([&](std::size_t i, index_t row) {
    if (cs.weights[static_cast<std::size_t>(row)] == 0) {
      CHECK(std::memcmp(&acc[i], &prior[i], sizeof(T)) == 0);
    } else {
      const double want = static_cast<double>(static_cast<float>(prior[i])) + static_cast<float>(plain[i]);
      CHECK(static_cast<float>(acc[i]) == doctest::Approx(want).epsilon(tol));
    }
  });
}

/// @brief Runs a case (random inputs, weights with zeros, upstream gradients for reduction::none, onto random prior
/// gradients) on host row blocks and on the per-row kernel: loss and per-row losses agree within 2e-6 relative, the
/// gradients within grad_tol relative (their sums run in different orders; half: or one subnormal spacing apart, see
/// grad_floor; 0: bit for bit), and each row of weight 0
/// is bitwise what the per-row kernel leaves: +0 written, or the prior value kept when accumulating.
template <class T>
void check_blocks_match_rows(loss_case<T> cs, std::mt19937& rng, double grad_tol) {
  using acc = bevkd::accum_t<T>;
  bevkd::host_exec blocks, per_row;
  per_row.run_row_blocks(false);
  cs.randomize(rng, 4.0);
  cs.random_weights(rng);
  if (cs.opts.reduce == bevkd::reduction::none) cs.random_upstream(rng);
  const auto prior = random_values<T>(storage_size(cs.lay, cs.B, cs.P, cs.C), rng);
  std::vector<T> in_blocks = prior, by_row = prior;
  std::vector<acc> block_losses, row_losses;
  const double block_loss = cs.run(blocks, in_blocks, block_losses).loss;
  const double row_loss = cs.run(per_row, by_row, row_losses).loss;
  CHECK(relative_error(block_loss, row_loss) < 2e-6);
  CHECK(relative_error(std::vector<double>(block_losses.begin(), block_losses.end()),
                       std::vector<double>(row_losses.begin(), row_losses.end())) < 2e-6);
  const auto as_doubles = [](const std::vector<T>& v) {
    std::vector<double> out;
    for (T x : v) out.push_back(to_double(x));
    return out;
  };
  if (grad_tol == 0)
    CHECK(std::memcmp(in_blocks.data(), by_row.data(), in_blocks.size() * sizeof(T)) == 0);
  else
    CHECK(relative_error(as_doubles(in_blocks), as_doubles(by_row), grad_floor<T>(grad_tol)) < grad_tol);
  const auto view = view_of<T>(cs.lay, in_blocks.data(), cs.B, cs.P, cs.C);
  for (index_t r = 0; r < cs.row_count(); ++r) {
    if (cs.weights[static_cast<std::size_t>(r)] != acc(0)) continue;
    for (index_t c = 0; c < cs.C; ++c) {
      const auto at = static_cast<std::size_t>(view.offset(r / cs.P, r % cs.P, c));
      CHECK(std::memcmp(&in_blocks[at], cs.opts.accumulate ? &prior[at] : &by_row[at], sizeof(T)) == 0);
    }
  }
}

/// @brief Runs float cases of each kind (every layout, writing and accumulating, random weights) on a host_exec that
/// stages strided rows and on one that runs its row kernels on them in place: the two agree within 1e-6 relative, and
/// both leave the padded layout's padding as it was.
inline void check_staging_matches_in_place(const std::vector<loss_kind>& kinds, std::mt19937& rng) {
  bevkd::host_exec staging, in_place;
  in_place.stage_strided_rows(false);
  CHECK(staging.stages_strided_rows());
  CHECK(!in_place.stages_strided_rows());
  for (const loss_kind& kind : kinds)
    for (layout lay : all_layouts)
      for (bool accumulate : {false, true}) {
        loss_case<float> cs;
        cs.B = 2;
        cs.P = 37;
        cs.C = 11;
        cs.kind = kind;
        cs.lay = lay;
        cs.opts.accumulate = accumulate;
        cs.randomize(rng);
        cs.random_weights(rng);
        const auto prior = random_values<float>(storage_size(lay, cs.B, cs.P, cs.C), rng);
        std::vector<float> staged = prior, direct = prior, rows;
        const double staged_loss = cs.run(staging, staged, rows).loss;
        const double direct_loss = cs.run(in_place, direct, rows).loss;
        INFO("kl ", kind.is_kl, " mode ", static_cast<int>(kind.mode), " normalize ", static_cast<int>(kind.normalize),
             " layout ", layout_name(lay), " accumulate ", accumulate);
        CHECK(relative_error(staged_loss, direct_loss) < 1e-6);
        CHECK(relative_error(std::vector<double>(staged.begin(), staged.end()),
                             std::vector<double>(direct.begin(), direct.end())) < 1e-6);
        CHECK(padding_unchanged(cs, staged, prior));
        CHECK(padding_unchanged(cs, direct, prior));
      }
}

/// @brief Central finite differences of the reduced loss w.r.t. each student element (double inputs).
inline std::vector<double> finite_difference_grad(loss_case<double> cs, double h = 1e-6) {
  bevkd::host_exec exec(1);
  std::vector<double> grad(cs.student.size());
  std::vector<double> rows;
  std::vector<double> out;
  const auto s = cs.student_view();
  for (index_t b = 0; b < cs.B; ++b)
    for (index_t p = 0; p < cs.P; ++p)
      for (index_t c = 0; c < cs.C; ++c) {
        double& x = cs.student[static_cast<std::size_t>(s.offset(b, p, c))];
        const double x0 = x;
        x = x0 + h;
        const double up = cs.run(exec, grad, rows).loss;
        x = x0 - h;
        const double down = cs.run(exec, grad, rows).loss;
        x = x0;
        out.push_back((up - down) / (2 * h));
      }
  return out;
}

/// @brief Runs a double case and checks its gradient against central finite differences of its loss.
inline void check_gradient_by_finite_differences(const loss_case<double>& cs, double tol = 1e-6) {
  std::vector<double> grad(cs.student.size()), rows;
  bevkd::host_exec exec;
  cs.run(exec, grad, rows);
  CHECK(relative_error(logical_grad(cs, grad), finite_difference_grad(cs)) < tol);
}

}  // namespace bevkd_test
