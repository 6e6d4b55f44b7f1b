// bevkd tests: attention-distillation cases (any layout, pooling, mask) and their double-precision reference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <bevkd/bevkd.hpp>
#include <bevkd/losses/attention_distill.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "bev_data.hpp"
#include "seed.hpp"

namespace bevkd_test {

/// @brief One attention_distill call: shapes, options, inputs and optional mask, weights and upstream gradient.
template <class T>
struct attention_case {
  using acc = bevkd::accum_t<T>;
  index_t N = 3, H = 2, S = 3, K = 4;  // student
  int group = 1;                       // teacher heads per student head
  index_t level_group = 1;             // teacher levels per student level (needs opts.points)
  bool heads_outer = true;             // storage [N, H, S, K]; false: [N, S, H, K] (heads inside sources)
  bevkd::attention_distill_options opts;
  std::vector<T> student, teacher;
  std::vector<std::uint8_t> mask;  // [N, S]
  std::vector<acc> weights;        // [N]
  std::vector<acc> upstream;       // [N, H, S or 1]

  bool joint() const { return opts.normalize == bevkd::attention_normalize::joint; }
  index_t Ht() const { return H * group; }
  index_t Kt() const { return K * level_group; }
  index_t row_sources() const { return joint() ? 1 : S; }

  template <class U>
  bevkd::attention_view<U> view(U* data, index_t heads, index_t keys) const {
    if (heads_outer) return bevkd::contiguous_view<U, 4>(data, {N, heads, S, keys});
    return bevkd::make_view<U, 4>(data, {N, heads, S, keys}, {S * heads * keys, keys, heads * keys, 1},
                                  N * S * heads * keys);
  }
  bevkd::attention_view<const T> student_view() const { return view<const T>(student.data(), H, K); }
  bevkd::attention_view<const T> teacher_view() const { return view<const T>(teacher.data(), Ht(), Kt()); }
  bevkd::attention_view<T> grad_view(std::vector<T>& g) const { return view<T>(g.data(), H, K); }

  /// @brief Random logits, or probabilities normalised the way the options say.
  void randomize(std::mt19937& rng) {
    student = make_input(rng, H, K, opts.student_input);
    teacher = make_input(rng, Ht(), Kt(), opts.teacher_input);
  }
  void random_mask(std::mt19937& rng) {
    std::bernoulli_distribution keep(0.6);
    mask.resize(static_cast<std::size_t>(N * S));
    for (auto& m : mask) m = keep(rng) ? 1 : 0;
    mask[0] = 0;  // query 0 loses every source: a fully masked query
    for (index_t s = 1; s < S; ++s) mask[s] = 0;
  }
  void random_weights(std::mt19937& rng) {
    std::uniform_real_distribution<double> u(0.0, 2.0);
    weights.resize(static_cast<std::size_t>(N));
    for (auto& w : weights) w = static_cast<acc>(u(rng));
  }
  void random_upstream(std::mt19937& rng) {
    std::uniform_real_distribution<double> u(-1.5, 1.5);
    upstream.resize(static_cast<std::size_t>(N * H * row_sources()));
    for (auto& v : upstream) v = static_cast<acc>(u(rng));
  }

  bevkd::attention_io<acc> io(std::vector<acc>& row_loss) const {
    bevkd::attention_io<acc> io;
    if (!mask.empty()) io.source_mask = bevkd::contiguous_view<const std::uint8_t, 2>(mask.data(), {N, S});
    if (!weights.empty()) io.query_weights = bevkd::contiguous_view<const acc, 1>(weights.data(), {N});
    if (!upstream.empty()) io.upstream = bevkd::contiguous_view<const acc, 3>(upstream.data(), {N, H, row_sources()});
    if (opts.reduce == bevkd::reduction::none) {
      row_loss.assign(static_cast<std::size_t>(N * H * row_sources()), acc(-7));
      io.row_loss = bevkd::contiguous_view<acc, 3>(row_loss.data(), {N, H, row_sources()});
    }
    return io;
  }

  template <class Exec>
  typename Exec::result_type run(Exec& exec, std::vector<T>& grad, std::vector<acc>& row_loss) const {
    return run(exec, grad.data(), row_loss);
  }
  /// @brief The call with the gradient at `grad` (N H S K values in this case's layout).
  template <class Exec>
  typename Exec::result_type run(Exec& exec, T* grad, std::vector<acc>& row_loss) const {
    return bevkd::attention_distill(opts)(exec, student_view(), teacher_view(), view<T>(grad, H, K), io(row_loss));
  }

 private:
  std::vector<T> make_input(std::mt19937& rng, index_t heads, index_t keys, bevkd::attention_input kind) const {
    std::vector<T> out = random_values<T>(N * heads * S * keys, rng, 1.5);
    if (kind == bevkd::attention_input::logits) return out;
    const auto v = view<T>(out.data(), heads, keys);
    for (index_t n = 0; n < N; ++n)
      for (index_t h = 0; h < heads; ++h)
        for (index_t s0 = 0; s0 < (joint() ? 1 : S); ++s0) {
          const index_t s1 = joint() ? S : s0 + 1;
          double z = 0;
          for (index_t s = s0; s < s1; ++s)
            for (index_t k = 0; k < keys; ++k) z += std::exp(to_double(v(n, h, s, k)));
          for (index_t s = s0; s < s1; ++s)
            for (index_t k = 0; k < keys; ++k) v(n, h, s, k) = from_double<T>(std::exp(to_double(v(n, h, s, k))) / z);
        }
    return out;
  }
};

/// @brief Expected loss, weight sum and gradient (logical [N, H, S, K] order) of an attention case, in double.
struct attention_expected {
  double loss = 0, weight_sum = 0, scale = 0;
  std::vector<double> grad, row_loss;
};

/// @brief The double-precision reference: pooled teacher distribution, student distribution, divergence, gradient.
template <class T>
attention_expected attention_reference(const attention_case<T>& cs) {
  const auto st = cs.student_view();
  const auto te = cs.teacher_view();
  const bool s_logits = cs.opts.student_input == bevkd::attention_input::logits;
  const bool t_logits = cs.opts.teacher_input == bevkd::attention_input::logits;
  const double tau = cs.opts.temperature;
  const index_t P = cs.opts.points;
  attention_expected e;
  e.grad.assign(static_cast<std::size_t>(cs.N * cs.H * cs.S * cs.K), 0.0);
  double weighted = 0;
  for (index_t n = 0; n < cs.N; ++n)
    for (index_t h = 0; h < cs.H; ++h)
      for (index_t s_row = 0; s_row < cs.row_sources(); ++s_row) {
        // The row's keys: (s, k) over its valid sources.
        std::vector<std::pair<index_t, index_t>> cols;
        for (index_t s = cs.joint() ? 0 : s_row; s < (cs.joint() ? cs.S : s_row + 1); ++s) {
          const bool valid = cs.mask.empty() || cs.mask[static_cast<std::size_t>(n * cs.S + s)] != 0;
          for (index_t k = 0; valid && k < cs.K; ++k) cols.push_back({s, k});
        }
        const std::size_t r = static_cast<std::size_t>((n * cs.H + h) * cs.row_sources() + s_row);
        double w = cs.weights.empty() ? 1.0 : static_cast<double>(cs.weights[n]);
        if (cols.empty()) w = 0;
        e.weight_sum += w;
        e.row_loss.push_back(0);
        if (w == 0) continue;
        const std::size_t m = cols.size();
        // Teacher: per head of the group a distribution over (s, k_T); pooled to the student keys.
        std::vector<double> p(m, 0.0), q(m), zs(m);
        for (int j = 0; j < cs.group; ++j) {
          std::vector<double> mass(m, 0.0);
          double z = 0;
          for (std::size_t c = 0; c < m; ++c)
            for (index_t l = 0; l < cs.level_group; ++l) {
              const index_t k = cols[c].second;
              const index_t kt = P > 0 ? ((k / P) * cs.level_group + l) * P + k % P : k;
              const double v = to_double(te(n, h * cs.group + j, cols[c].first, kt));
              mass[c] += t_logits ? std::exp(v / tau) : v;
            }
          for (double v : mass) z += v;
          for (std::size_t c = 0; c < m; ++c) p[c] += (t_logits ? mass[c] / z : mass[c]) / cs.group;
        }
        double zq = 0;
        for (std::size_t c = 0; c < m; ++c) {
          zs[c] = to_double(st(n, h, cols[c].first, cols[c].second));
          zq += std::exp(zs[c] / tau);
        }
        for (std::size_t c = 0; c < m; ++c) q[c] = s_logits ? std::exp(zs[c] / tau) / zq : zs[c];
        // Divergence and dD/dq.
        double d = 0;
        std::vector<double> g(m);
        for (std::size_t c = 0; c < m; ++c) {
          switch (cs.opts.div) {
            case bevkd::divergence::kl:
              d += p[c] > 0 ? p[c] * std::log(p[c] / q[c]) : 0;
              g[c] = -p[c] / q[c];
              break;
            case bevkd::divergence::reverse_kl:
              d += q[c] > 0 ? q[c] * std::log(q[c] / p[c]) : 0;
              g[c] = std::log(q[c] / p[c]) + 1;
              break;
            case bevkd::divergence::js: {
              const double mid = (p[c] + q[c]) / 2;
              d += 0.5 * (p[c] * std::log(p[c] / mid) + q[c] * std::log(q[c] / mid));
              g[c] = 0.5 * std::log(q[c] / mid);
              break;
            }
            default:
              d += (q[c] - p[c]) * (q[c] - p[c]) / m;
              g[c] = 2 * (q[c] - p[c]) / m;
          }
          e.scale += w * tau * tau * (std::fabs(std::log(p[c] + 1e-300)) + std::fabs(std::log(q[c] + 1e-300)) + 1) / m;
        }
        const double loss = tau * tau * d;
        weighted += w * loss;
        e.row_loss.back() = cs.opts.loss_weight * w * loss;
        double qg = 0;
        for (std::size_t c = 0; c < m; ++c) qg += q[c] * g[c];
        const double u = cs.upstream.empty() ? 1.0 : static_cast<double>(cs.upstream[r]);
        for (std::size_t c = 0; c < m; ++c) {
          const double dz = s_logits ? tau * q[c] * (g[c] - qg) : g[c];
          e.grad[static_cast<std::size_t>(((n * cs.H + h) * cs.S + cols[c].first) * cs.K + cols[c].second)] =
              cs.opts.loss_weight * cs.opts.grad_scale * w * u * dz;
        }
      }
  const auto red = cs.opts.reduce;
  const double normaliser = red == bevkd::reduction::mean        ? e.weight_sum
                            : red == bevkd::reduction::batchmean ? static_cast<double>(cs.N)
                                                                 : 1.0;
  e.loss = normaliser == 0 ? 0 : cs.opts.loss_weight * weighted / normaliser;
  e.scale = normaliser == 0 ? 0 : e.scale / normaliser;
  for (auto& g : e.grad) g = normaliser == 0 ? 0 : g / normaliser;
  return e;
}

/// @brief The gradient buffer read back in logical [N, H, S, K] order.
template <class T>
std::vector<double> attention_logical_grad(const attention_case<T>& cs, std::vector<T>& grad) {
  const auto g = cs.grad_view(grad);
  std::vector<double> out;
  for (index_t n = 0; n < cs.N; ++n)
    for (index_t h = 0; h < cs.H; ++h)
      for (index_t s = 0; s < cs.S; ++s)
        for (index_t k = 0; k < cs.K; ++k) out.push_back(to_double(g(n, h, s, k)));
  return out;
}

}  // namespace bevkd_test
