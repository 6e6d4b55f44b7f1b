// bevkd GPU tests: the loss test cases run on the CUDA backend and compared with the host backend and the reference.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/bevkd.cuh>

#include <cstring>
#include <random>
#include <vector>

#include "support/device_buffer.cuh"
#include "support/loss_harness.hpp"

using namespace bevkd_test;
using bevkd::kl_mode;
using bevkd::mse_normalize;
using bevkd::reduction;

namespace {

/// @brief Results of one call on the device, copied back.
template <class T>
struct device_run {
  bevkd::loss_result result;
  std::vector<T> grad;
  std::vector<bevkd::accum_t<T>> row_loss;
};

/// @brief Runs a case on the CUDA backend: same inputs, copied to the device, results copied back.
template <class T>
device_run<T> run_on_device(const loss_case<T>& cs, bevkd::cuda_exec& exec, const std::vector<T>& grad_init) {
  using acc = bevkd::accum_t<T>;
  loss_case<T> dev = cs;  // same options; its views are rebuilt over device memory below
  device_buffer<T> s(cs.student), t(cs.teacher), g(grad_init);
  device_buffer<acc> w(cs.weights), u(cs.upstream);
  std::vector<acc> rows_host(static_cast<std::size_t>(cs.row_count()), acc(-7));
  device_buffer<acc> rows(rows_host);
  const auto view = [&](auto* data) { return view_of(cs.lay, data, cs.B, cs.P, cs.C); };
  bevkd::row_io<acc> io;
  const index_t inner = cs.row_inner();
  if (!cs.weights.empty()) io.weights = bevkd::rows_contiguous<const acc>(w.data(), cs.B, inner);
  if (!cs.upstream.empty()) io.upstream = bevkd::rows_contiguous<const acc>(u.data(), cs.B, inner);
  if (cs.opts.reduce == reduction::none) io.row_loss = bevkd::rows_contiguous<acc>(rows.data(), cs.B, inner);
  const auto S = view(static_cast<const T*>(s.data())), Tv = view(static_cast<const T*>(t.data()));
  const auto G = view(g.data());
  bevkd::device_loss_result r;
  if (cs.kind.is_kl) {
    r = bevkd::response_kl({cs.kind.mode, cs.kind.tau, cs.opts.reduce, cs.opts.loss_weight, cs.opts.grad_scale,
                            cs.opts.accumulate})(exec, S, Tv, G, io);
  } else {
    r = bevkd::feature_mse({cs.kind.normalize, cs.kind.eps, cs.opts.reduce, cs.opts.loss_weight, cs.opts.grad_scale,
                            cs.opts.accumulate})(exec, S, Tv, G, io);
  }
  return device_run<T>{r.get(), g.to_host(), rows.to_host()};
}

/// @brief Runs a case on host and device and checks they agree (and that the device matches the rows' references).
template <class T>
void check_device_matches_host(const loss_case<T>& cs, bevkd::cuda_exec& exec,
                               const std::vector<row_ref_result>& references) {
  using acc = bevkd::accum_t<T>;
  const std::vector<T> init(static_cast<std::size_t>(storage_size(cs.lay, cs.B, cs.P, cs.C)), sentinel<T>());
  std::vector<T> host_grad = init;
  std::vector<acc> host_rows;
  bevkd::host_exec host;
  const auto host_result = cs.run(host, host_grad, host_rows);
  const auto dev = run_on_device(cs, exec, init);
  const double tol = std::max(tolerance<T>(), 1e-5);
  INFO("layout ", layout_name(cs.lay), " B ", cs.B, " P ", cs.P, " C ", cs.C, " reduction ",
       static_cast<int>(cs.opts.reduce), " weighted ", !cs.weights.empty());
  CHECK(relative_error(dev.result.loss, host_result.loss, 1e-6) < tol);
  CHECK(relative_error(dev.result.weight_sum, host_result.weight_sum, 1e-6) < 1e-9);
  std::vector<T> dev_grad = dev.grad;
  CHECK(relative_error(logical_grad(cs, dev_grad), logical_grad(cs, host_grad), grad_floor<T>()) < tol);
  CHECK(relative_error(logical_grad(cs, dev_grad), expected_result(cs, references).grad, grad_floor<T>()) <
        tolerance<T>());
  if (cs.opts.reduce == reduction::none) {
    CHECK(relative_error(std::vector<double>(dev.row_loss.begin(), dev.row_loss.end()),
                         std::vector<double>(host_rows.begin(), host_rows.end()), 1e-6) < tol);
  }
  CHECK(padding_unchanged(cs, dev_grad, init));  // on the device too
}

/// @brief Runs a case with accumulate set on host and device, into the same random gradient, and checks they agree.
template <class T>
void check_accumulate_matches_host(loss_case<T> cs, std::mt19937& rng, bevkd::cuda_exec& exec) {
  using acc = bevkd::accum_t<T>;
  cs.randomize(rng);
  cs.opts.accumulate = true;
  const std::vector<T> prior = random_values<T>(storage_size(cs.lay, cs.B, cs.P, cs.C), rng);
  std::vector<T> host_grad = prior;
  std::vector<acc> host_rows;
  bevkd::host_exec host;
  cs.run(host, host_grad, host_rows);
  const auto dev = run_on_device(cs, exec, prior);
  INFO("accumulate: layout ", layout_name(cs.lay), " C ", cs.C);
  std::vector<T> dev_grad = dev.grad;
  CHECK(relative_error(logical_grad(cs, dev_grad), logical_grad(cs, host_grad), grad_floor<T>()) <
        std::max(tolerance<T>(), 1e-5));
}

template <class T>
void check_all_on_device(loss_case<T> cs, std::mt19937& rng, bevkd::cuda_exec& exec) {
  for (layout lay : all_layouts) {
    cs.lay = lay;
    cs.randomize(rng);
    const auto references = reference_rows(cs);
    for (auto red : {reduction::none, reduction::sum, reduction::mean, reduction::batchmean})
      for (bool weighted : {false, true}) {
        cs.opts.reduce = red;
        cs.weights.clear();
        cs.upstream.clear();
        if (weighted) cs.random_weights(rng);
        if (weighted && red == reduction::none) cs.random_upstream(rng);
        check_device_matches_host(cs, exec, references);
      }
  }
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE_TEMPLATE("CUDA response_kl and feature_mse match the host backend", T, float, double, bevkd::half,
                     bevkd::bfloat16) {
    BEVKD_TEST_RNG(rng);
    bevkd::cuda_exec exec;
    // Sizes that pick every CUDA team: warp rows (C = 5, 33), thread rows (strided layouts),
    // block rows (C = 1100), more rows than one block, and fewer.
    for (index_t C : {5, 33, 1100})
      for (index_t P : {7, 300}) {
        if (C * P > 40000) continue;
        loss_case<T> cs;
        cs.B = 2;
        cs.P = P;
        cs.C = C;
        for (kl_mode mode : {kl_mode::softmax, kl_mode::sigmoid, kl_mode::spatial}) {
          cs.kind = loss_kind{};
          cs.kind.mode = mode;
          cs.kind.tau = 2.0;
          check_all_on_device(cs, rng, exec);
        }
        for (auto normalize : {mse_normalize::none, mse_normalize::per_pillar_l2}) {
          cs.kind = loss_kind{};
          cs.kind.is_kl = false;
          cs.kind.normalize = normalize;
          check_all_on_device(cs, rng, exec);
        }
      }
  }

  TEST_CASE_TEMPLATE("CUDA warp teams of 4, 8, 16 and 32 lanes match the host backend", T, float, bevkd::bfloat16) {
    BEVKD_TEST_RNG(rng);
    bevkd::cuda_exec exec;
    for (int width : {4, 8, 16, 32}) {
      INFO("team width ", width);
      exec.team_width(width);
      // Rows of fewer chunks than lanes, about two per lane, and many per lane; aligned (64) and not; 64 and 65 at and
      // just past what a team of 4 (bfloat16) or 8 (float) lanes holds in registers (held_row).
      for (index_t C : {5, 33, 64, 65, 300}) {
        loss_case<T> cs;
        cs.B = 2;
        cs.P = 50;
        cs.C = C;
        for (kl_mode mode : {kl_mode::softmax, kl_mode::sigmoid}) {
          cs.kind = loss_kind{};
          cs.kind.mode = mode;
          cs.kind.tau = 1.5;
          check_all_on_device(cs, rng, exec);
          check_accumulate_matches_host(cs, rng, exec);  // adds in the vector stores' chunks too
        }
        cs.kind = loss_kind{};
        cs.kind.is_kl = false;
        for (auto normalize : {mse_normalize::none, mse_normalize::per_pillar_l2}) {
          cs.kind.normalize = normalize;
          check_all_on_device(cs, rng, exec);
          check_accumulate_matches_host(cs, rng, exec);
        }
      }
    }
  }

  TEST_CASE("CUDA rows per team: every count runs every row once and matches the host backend") {
    BEVKD_TEST_RNG(rng);
    bevkd::cuda_exec exec;
    for (int rows : {1, 3, 64}) {  // 3: blocks that end inside a team's rows; 64: fewer blocks than one wave
      INFO("rows per team ", rows);
      exec.rows_per_team(rows);
      for (index_t C : {5, 64, 1100}) {  // warp teams and (C = 1100) a block per row
        loss_case<float> cs;
        cs.B = 2;
        cs.P = 301;
        cs.C = C;
        cs.kind.tau = 1.5;
        check_all_on_device(cs, rng, exec);
      }
    }
  }

  TEST_CASE("CUDA losses: deterministic, no allocation after warm-up, accumulate, all-zero weights, empty input") {
    BEVKD_TEST_RNG(rng);
    bevkd::cuda_exec exec;
    loss_case<float> cs;
    cs.B = 2;
    cs.P = 5000;
    cs.C = 64;
    cs.randomize(rng);
    cs.random_weights(rng);
    const std::vector<float> init(cs.student.size(), 0.0f);
    const auto first = run_on_device(cs, exec, init);
    size_t free_before = 0, total = 0;
    REQUIRE(cudaMemGetInfo(&free_before, &total) == cudaSuccess);
    for (int i = 0; i < 3; ++i) {
      const auto again = run_on_device(cs, exec, init);
      CHECK(std::memcmp(&again.result.loss, &first.result.loss, sizeof(double)) == 0);
      CHECK(std::memcmp(again.grad.data(), first.grad.data(), first.grad.size() * sizeof(float)) == 0);
    }
    cs.opts.accumulate = true;
    const auto prior = random_values<float>(static_cast<index_t>(init.size()), rng);
    const auto accumulated = run_on_device(cs, exec, prior);
    for (std::size_t i = 0; i < prior.size(); i += 97)
      CHECK(accumulated.grad[i] == doctest::Approx(prior[i] + first.grad[i]).epsilon(1e-6));
    cs.opts.accumulate = false;
    std::fill(cs.weights.begin(), cs.weights.end(), 0.0f);
    const auto zero = run_on_device(cs, exec, prior);
    CHECK(zero.result.loss == 0.0);
    CHECK(zero.result.weight_sum == 0.0);
    CHECK(zero.grad == std::vector<float>(prior.size(), 0.0f));
    cs.B = 0;
    cs.weights.clear();
    cs.student.clear();
    cs.teacher.clear();
    const auto empty = run_on_device(cs, exec, std::vector<float>{});
    CHECK(empty.result.loss == 0.0);
  }

  TEST_CASE("CUDA losses reject bad input on the host before launching") {
    bevkd::cuda_exec exec;
    float* null = nullptr;
    CHECK_THROWS_AS(bevkd::response_kl({kl_mode::softmax, 0.0})(exec, bevkd::bev_nhwc<const float>(null, 0, 1, 1, 4),
                                                                 bevkd::bev_nhwc<const float>(null, 0, 1, 1, 4),
                                                                 bevkd::bev_nhwc(null, 0, 1, 1, 4)),
                    bevkd::invalid_argument);
    CHECK_THROWS_AS(exec.team_width(3), bevkd::invalid_argument);
    CHECK_THROWS_AS(exec.team_width(64), bevkd::invalid_argument);
    CHECK_THROWS_AS(exec.rows_per_team(-1), bevkd::invalid_argument);
    CHECK_THROWS_AS(exec.rows_per_team(65), bevkd::invalid_argument);
  }
}
