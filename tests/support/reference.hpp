// bevkd tests: naive double-precision references of the losses (loss and gradient per row).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace bevkd_test {

/// @brief Loss of one row and its gradient w.r.t. the student row.
struct row_ref_result {
  double loss = 0;
  std::vector<double> grad;
  double scale = 0;  ///< Magnitude of the terms the loss is computed from: float rounding is relative to it.
};

/// @brief Size of the log-domain terms a KL row sums: 1 + log n + the largest |logit / tau| of either input.
inline double kl_term_scale(const std::vector<double>& s, const std::vector<double>& t, double tau) {
  double largest = 0;
  for (std::size_t c = 0; c < s.size(); ++c) {
    if (std::isfinite(s[c])) largest = std::max(largest, std::fabs(s[c] / tau));
    if (std::isfinite(t[c])) largest = std::max(largest, std::fabs(t[c] / tau));
  }
  return tau * tau * (1 + std::log(static_cast<double>(s.size())) + largest);
}

/// @brief log_softmax of x / tau, written out plainly (max subtracted).
inline std::vector<double> log_softmax(const std::vector<double>& x, double tau) {
  double m = -std::numeric_limits<double>::infinity();
  for (double v : x) m = std::max(m, v / tau);
  double z = 0;
  for (double v : x) z += std::exp(v / tau - m);
  std::vector<double> out;
  for (double v : x) out.push_back(v / tau - m - std::log(z));
  return out;
}

/// @brief tau^2 KL(softmax(t/tau) || softmax(s/tau)) as F.kl_div(log_softmax(s), softmax(t), 'sum') * tau^2.
inline row_ref_result softmax_kl_reference(const std::vector<double>& s, const std::vector<double>& t, double tau) {
  const auto ls = log_softmax(s, tau), lt = log_softmax(t, tau);
  row_ref_result r;
  for (std::size_t c = 0; c < s.size(); ++c) {
    const double qt = std::exp(lt[c]);
    if (qt > 0) r.loss += qt * (lt[c] - ls[c]);
    r.grad.push_back(tau * (std::exp(ls[c]) - qt));
  }
  r.loss *= tau * tau;
  r.scale = kl_term_scale(s, t, tau);
  return r;
}

/// @brief tau^2 sum_c Bernoulli KL(sigmoid(t/tau) || sigmoid(s/tau)), from log-probabilities.
inline row_ref_result sigmoid_kl_reference(const std::vector<double>& s, const std::vector<double>& t, double tau) {
  const auto log_sig = [](double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); };
  row_ref_result r;
  for (std::size_t c = 0; c < s.size(); ++c) {
    const double a = t[c] / tau, b = s[c] / tau;
    const double pt = 1 / (1 + std::exp(-a)), ps = 1 / (1 + std::exp(-b));
    double term = 0;
    if (pt > 0) term += pt * (log_sig(a) - log_sig(b));
    if (pt < 1) term += (1 - pt) * (log_sig(-a) - log_sig(-b));
    r.loss += term;
    r.grad.push_back(tau * (ps - pt));
  }
  r.loss *= tau * tau;
  r.scale = static_cast<double>(s.size()) * kl_term_scale(s, t, tau);
  return r;
}

/// @brief (1/C) ||s - t||^2, optionally of L2-normalised vectors (norm clamped at eps), with the exact gradient.
inline row_ref_result mse_reference(const std::vector<double>& s, const std::vector<double>& t, bool normalize,
                                    double eps) {
  const auto norm = [](const std::vector<double>& x) {
    double n = 0;
    for (double v : x) n += v * v;
    return std::sqrt(n);
  };
  const double ns = normalize ? std::max(norm(s), eps) : 1.0, nt = normalize ? std::max(norm(t), eps) : 1.0;
  const double n = static_cast<double>(s.size());
  row_ref_result r;
  std::vector<double> g(s.size());
  double s_dot_g = 0;
  for (std::size_t c = 0; c < s.size(); ++c) {
    const double d = s[c] / ns - t[c] / nt;
    r.loss += d * d / n;
    r.scale += (s[c] * s[c] / (ns * ns) + t[c] * t[c] / (nt * nt)) / n;
    g[c] = 2 * d / n;
    s_dot_g += s[c] / ns * g[c];
  }
  const bool project = normalize && norm(s) > eps;
  for (std::size_t c = 0; c < s.size(); ++c) r.grad.push_back(project ? (g[c] - s[c] / ns * s_dot_g) / ns : g[c] / ns);
  return r;
}

}  // namespace bevkd_test
