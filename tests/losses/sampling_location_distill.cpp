// bevkd tests: sampling-location distillation against a double reference and finite differences.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/bevkd.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "support/bev_data.hpp"
#include "support/loss_harness.hpp"

using namespace bevkd_test;
using bevkd::attention_input;
using bevkd::location_distance;
using bevkd::reduction;

namespace {

template <class T>
struct location_case {
  using acc = bevkd::accum_t<T>;
  index_t N = 3, H = 2, S = 2, K = 5;
  bevkd::sampling_location_options opts;
  std::vector<T> student, teacher, attention;
  std::vector<std::uint8_t> mask;
  std::vector<acc> weights;

  void randomize(std::mt19937& rng) {
    student = random_values<T>(N * H * S * K * 2, rng, 0.3, 0.5);
    teacher = random_values<T>(N * H * S * K * 2, rng, 0.3, 0.5);
    attention = random_values<T>(N * H * S * K, rng, 1.5);
    if (opts.attention == attention_input::probabilities)
      for (auto& a : attention) a = T(static_cast<float>(1.0 / (1.0 + std::exp(-to_double(a)))) / static_cast<float>(K));
  }
  // Locations stored [N, S, H, K, 2] (sources outside heads) to exercise strides.
  template <class U>
  bevkd::strided_view<U, 5> locations(U* data) const {
    return bevkd::make_view<U, 5>(data, {N, H, S, K, 2}, {S * H * K * 2, K * 2, H * K * 2, 2, 1}, N * H * S * K * 2);
  }
  bevkd::loss_result run(bevkd::host_exec& exec, std::vector<T>& grad) const {
    bevkd::attention_io<acc> io;
    if (!mask.empty()) io.source_mask = bevkd::contiguous_view<const std::uint8_t, 2>(mask.data(), {N, S});
    if (!weights.empty()) io.query_weights = bevkd::contiguous_view<const acc, 1>(weights.data(), {N});
    return bevkd::sampling_location_distill(opts)(exec, locations<const T>(student.data()),
                                                  locations<const T>(teacher.data()),
                                                  bevkd::contiguous_view<const T, 4>(attention.data(), {N, H, S, K}),
                                                  locations<T>(grad.data()), io);
  }
  // Double reference: loss and gradient in the storage order.
  double reference(std::vector<double>& grad) const {
    const auto xs = locations<const T>(student.data()), xt = locations<const T>(teacher.data());
    const auto at = bevkd::contiguous_view<const T, 4>(attention.data(), {N, H, S, K});
    grad.assign(student.size(), 0.0);
    double total = 0, weight_sum = 0;
    std::vector<double> row_grad(student.size(), 0.0);
    for (index_t n = 0; n < N; ++n)
      for (index_t h = 0; h < H; ++h)
        for (index_t s = 0; s < S; ++s) {
          const bool valid = mask.empty() || mask[static_cast<std::size_t>(n * S + s)];
          const double w = valid ? (weights.empty() ? 1.0 : static_cast<double>(weights[n])) : 0.0;
          weight_sum += w;
          if (w == 0) continue;
          double z = 0;
          for (index_t k = 0; k < K; ++k) z += std::exp(to_double(at(n, h, s, k)) / opts.temperature);
          for (index_t k = 0; k < K; ++k) {
            const double p = opts.attention == attention_input::logits
                                 ? std::exp(to_double(at(n, h, s, k)) / opts.temperature) / z
                                 : to_double(at(n, h, s, k));
            for (index_t a = 0; a < 2; ++a) {
              const double d = to_double(xs(n, h, s, k, a)) - to_double(xt(n, h, s, k, a));
              const double b = opts.beta;
              const bool sq = opts.distance == location_distance::squared;
              const double value = sq ? d * d : std::fabs(d) < b ? 0.5 * d * d / b : std::fabs(d) - 0.5 * b;
              const double slope = sq ? 2 * d : std::fabs(d) < b ? d / b : (d < 0 ? -1.0 : 1.0);
              total += w * p * value;
              grad[static_cast<std::size_t>(xs.offset(n, h, s, k, a))] = opts.loss_weight * w * p * slope;
            }
          }
        }
    const double normaliser = opts.reduce == reduction::mean ? weight_sum : 1.0;
    for (auto& g : grad) g = normaliser == 0 ? 0 : g / normaliser;
    return normaliser == 0 ? 0 : opts.loss_weight * total / normaliser;
  }
};

}  // namespace

TEST_CASE_TEMPLATE("sampling_location_distill matches the double reference", T, float, double, bevkd::half,
                   bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  for (int lanes : {1, 7, 32})
    for (auto distance : {location_distance::squared, location_distance::smooth_l1})
      for (auto input : {attention_input::logits, attention_input::probabilities})
        for (bool masked : {false, true}) {
          bevkd::host_exec exec;
          exec.simulate_team(lanes);
          location_case<T> cs;
          cs.opts.distance = distance;
          cs.opts.beta = 0.2;  // both smooth-L1 regimes occur with differences ~ N(0, 0.4)
          cs.opts.attention = input;
          cs.opts.temperature = input == attention_input::logits ? 1.5 : 1.0;
          cs.opts.loss_weight = 0.7;
          cs.randomize(rng);
          if (masked) {
            cs.mask = {0, 1, 1, 0, 1, 1};
            cs.weights = {1.0f, 0.5f, 2.0f};
          }
          std::vector<T> grad(cs.student.size());
          std::vector<double> want_grad;
          const auto got = cs.run(exec, grad);
          const double want = cs.reference(want_grad);
          INFO("lanes ", lanes, " distance ", static_cast<int>(distance), " input ", static_cast<int>(input), " masked ", masked);
          CHECK(got.loss == doctest::Approx(want).epsilon(std::max(tolerance<T>(), 1e-5)));
          std::vector<double> g;
          for (const T& v : grad) g.push_back(to_double(v));
          CHECK(relative_error(g, want_grad) < std::max(tolerance<T>(), 1e-5));
        }
}

TEST_CASE("sampling_location_distill gradient equals central finite differences") {
  BEVKD_TEST_RNG(rng);
  for (auto distance : {location_distance::squared, location_distance::smooth_l1}) {
    location_case<double> cs;
    cs.opts.distance = distance;
    cs.opts.beta = 0.2;
    cs.opts.reduce = reduction::sum;
    cs.randomize(rng);
    bevkd::host_exec exec;
    std::vector<double> grad(cs.student.size()), scratch(cs.student.size());
    cs.run(exec, grad);
    for (std::size_t i = 0; i < cs.student.size(); ++i) {
      const double x0 = cs.student[i], h = 1e-7;
      cs.student[i] = x0 + h;
      const double up = cs.run(exec, scratch).loss;
      cs.student[i] = x0 - h;
      const double down = cs.run(exec, scratch).loss;
      cs.student[i] = x0;
      CHECK(grad[i] == doctest::Approx((up - down) / (2 * h)).epsilon(1e-5));
    }
  }
}

TEST_CASE("sampling_location_distill rejects bad input") {
  location_case<float> cs;
  BEVKD_TEST_RNG(rng);
  cs.randomize(rng);
  bevkd::host_exec exec;
  std::vector<float> grad(cs.student.size(), 2.0f);
  cs.opts.beta = 0.0;
  CHECK_THROWS_AS(cs.run(exec, grad), bevkd::invalid_argument);
  cs.opts.beta = 1.0;
  cs.opts.attention = attention_input::probabilities;
  cs.opts.temperature = 2.0;
  CHECK_THROWS_AS(cs.run(exec, grad), bevkd::invalid_argument);
  CHECK(grad == std::vector<float>(grad.size(), 2.0f));
}
