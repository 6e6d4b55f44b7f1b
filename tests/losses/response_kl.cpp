// bevkd tests: response KL (softmax, sigmoid, spatial) against the double reference, on host teams of every size.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/bevkd.hpp>

#include <algorithm>
#include <cmath>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#define BEVKD_TEST_LOSSES ::bevkd_test::loss_set::kl  // this file runs response_kl only
#include "support/loss_harness.hpp"

using namespace bevkd_test;
using bevkd::kl_mode;
using bevkd::reduction;

namespace {

const kl_mode all_modes[] = {kl_mode::softmax, kl_mode::sigmoid, kl_mode::spatial};

template <class T>
loss_case<T> kl_case(kl_mode mode, double tau, index_t B = 2, index_t P = 7, index_t C = 5) {
  loss_case<T> cs;
  cs.B = B;
  cs.P = P;
  cs.C = C;
  cs.kind.mode = mode;
  cs.kind.tau = tau;
  return cs;
}

}  // namespace

TEST_CASE_TEMPLATE("response_kl matches the double reference in every mode, layout, reduction and weighting", T,
                   float, double, bevkd::half, bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  for (kl_mode mode : all_modes)
    for (double tau : {1.0, 2.5})
      for (index_t C : {index_t{5}, index_t{67}}) {  // softmax rows of 5 run in lane layout, of 67 in row layout
        INFO("mode ", static_cast<int>(mode), " tau ", tau, " C ", C);
        check_all_options(kl_case<T>(mode, tau, 2, 7, C), rng, exec);
      }
  // fp32 rows longer than a row block takes whose neighbours lie next to them run in the host's lane groups of
  // sixteen on AVX-512 builds, read in place (other dtypes and builds stage them: those paths too). Spatial rows are
  // channels (b, c) of P pillars, side by side in NHWC, sequence-first and padded: C = 1, 10 and 37 leave a batch's
  // last group short, 16 fills one; P = 129 is just past a row block, 700 spans eleven of the groups' summation
  // pieces (NCHW rows are contiguous).
  // Groups run in sets (half a batch's groups, at most eight): C = 70 makes sets of 2, 2 and 1 groups, the last group
  // 6 rows; 700 pillars span three of a set's segments.
  for (index_t C : {index_t{1}, index_t{10}, index_t{16}, index_t{37}, index_t{70}})
    for (index_t P : {index_t{129}, index_t{700}}) {
      INFO("spatial, long rows: C ", C, " P ", P);
      check_all_options(kl_case<T>(kl_mode::spatial, 1.6, 2, P, C), rng, exec);
    }
  // The softmax mode's NCHW rows of more than 128 classes (37 pillars: groups of 16, 16 and 5 per batch; 150: ten
  // groups, two sets of five).
  for (index_t P : {index_t{37}, index_t{150}})
    check_all_options(kl_case<T>(kl_mode::softmax, 0.9, 2, P, 150), rng, exec);
}

TEST_CASE_TEMPLATE("response_kl accumulates onto the gradient buffer; rows of weight 0 keep their bits (NaN too)", T,
                   float, double, bevkd::half, bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  const double tol = stored_tolerance<T>();
  // Spatial rows of 300 pillars on NHWC (host lane groups for float, half and bfloat16 on AVX-512 builds: 21 channels
  // make a group of 16 and one of 5), softmax rows of 150 classes on NCHW (lane groups too), of 67 on NHWC (row
  // blocks).
  check_accumulate_keeps_excluded_rows(kl_case<T>(kl_mode::spatial, 0.8, 2, 300, 21), rng, exec, tol);
  auto nchw = kl_case<T>(kl_mode::softmax, 1.3, 2, 37, 150);
  nchw.lay = layout::nchw;
  check_accumulate_keeps_excluded_rows(nchw, rng, exec, tol);
  check_accumulate_keeps_excluded_rows(kl_case<T>(kl_mode::softmax, 1.0, 2, 7, 67), rng, exec, tol);
}

TEST_CASE("response_kl spatial lane groups: accumulate, weight-0 channels, edge values per channel") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  SUBCASE("accumulate: the buffer ends as what it held plus the gradient; weight-0 channels as they were") {
    auto cs = kl_case<float>(kl_mode::spatial, 0.8, 2, 300, 21);
    cs.randomize(rng);
    cs.random_weights(rng);
    std::vector<float> plain(cs.student.size()), acc(cs.student.size()), rows;
    cs.run(exec, plain, rows);
    const auto prior = random_values<float>(static_cast<index_t>(acc.size()), rng);
    acc = prior;
    cs.opts.accumulate = true;
    cs.run(exec, acc, rows);
    for (std::size_t i = 0; i < acc.size(); ++i) {
      const bool excluded = cs.weights[(i / 21 / 300) * 21 + i % 21] == 0.0f;  // NHWC: (b, p, c) at (b P + p) C + c
      if (excluded)
        CHECK(acc[i] == prior[i]);
      else
        CHECK(acc[i] == doctest::Approx(prior[i] + plain[i]).epsilon(1e-6));
    }
  }
  SUBCASE("-inf, NaN, +-1e4 and late maxima in separate channels: each channel's loss and gradient as the reference") {
    // 700 pillars span three segments of a set's passes, whose sums are carried over when a row's maxima grow in a
    // later segment (channels 4 and 5: the maximum in the last one, by 40 and by 300: the earlier terms then vanish).
    // Non-finite values send the whole set back to maxima first: run once with them (channels 0, 1, 6 and 7) and once
    // with those channels random, so the carried sums are checked on their own too.
    const float inf = std::numeric_limits<float>::infinity();
    for (index_t P : {index_t{200}, index_t{700}})
      for (bool non_finite : {true, false}) {
        INFO("P ", P, " non-finite channels ", non_finite);
        const index_t C = 8;
        std::vector<float> s = random_values<float>(P * C, rng), t = random_values<float>(P * C, rng);
        if (non_finite) {
          for (index_t p = 0; p < P; p += 3) t[p * C + 0] = -inf;  // masked pillars of the teacher
          s[77 * C + 1] = std::nanf("");
          s[10 * C + 6] = -inf;  // where the teacher has mass: an infinite loss
          // A teacher all -inf through the first segment (256 pillars), finite after it.
          for (index_t p = 0; p < std::min<index_t>(256, P - 1); ++p) t[p * C + 7] = -inf;
        }
        for (index_t p = 0; p < P; p += 7) s[p * C + 2] = p % 2 ? 1e4f : -1e4f;
        for (index_t p = 0; p < P; p += 5) t[p * C + 3] = p % 2 ? -1e4f : 1e4f;
        t[(P - 5) * C + 4] = 40.0f;
        s[(P - 3) * C + 4] = 30.0f;
        t[(P - 2) * C + 5] = 300.0f;
        s[(P - 1) * C + 5] = 200.0f;
        std::vector<float> g(P * C), row_loss(C);
        bevkd::row_io<float> io;
        io.row_loss = bevkd::rows_contiguous(row_loss.data(), 1, C);
        bevkd::response_kl({kl_mode::spatial, 1.0, reduction::none})(
            exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, P, C),
            bevkd::bev_nhwc<const float>(t.data(), 1, 1, P, C), bevkd::bev_nhwc(g.data(), 1, 1, P, C), io);
        for (index_t c = 0; c < C; ++c) {
          INFO("channel ", c);
          std::vector<double> sc, tc;
          for (index_t p = 0; p < P; ++p) {
            sc.push_back(s[p * C + c]);
            tc.push_back(t[p * C + c]);
          }
          if (non_finite && c == 1) {
            CHECK(std::isnan(row_loss[c]));
            continue;
          }
          const auto want = softmax_kl_reference(sc, tc, 1.0);
          if (std::isinf(want.loss))
            CHECK(row_loss[c] == static_cast<float>(want.loss));
          else
            CHECK(row_loss[c] == doctest::Approx(want.loss).epsilon(1e-5));
          double worst = 0;
          for (index_t p = 0; p < P; ++p) worst = std::max(worst, std::fabs(g[p * C + c] - want.grad[p]));
          CHECK(worst < 1e-6);
        }
      }
  }
  SUBCASE("weight 0 on a NaN channel: loss 0 there, its gradient exactly 0 (not 0 * NaN), the others unchanged") {
    const index_t P = 200, C = 4;
    std::vector<float> s = random_values<float>(P * C, rng), t = random_values<float>(P * C, rng);
    s[77 * C + 1] = std::nanf("");
    std::vector<float> g(P * C), row_loss(C);
    bevkd::row_io<float> io;
    io.row_loss = bevkd::rows_contiguous(row_loss.data(), 1, C);
    bevkd::response_kl({kl_mode::spatial, 1.0, reduction::none})(
        exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, P, C), bevkd::bev_nhwc<const float>(t.data(), 1, 1, P, C),
        bevkd::bev_nhwc(g.data(), 1, 1, P, C), io);
    // Weight 0 on the NaN channel: loss 0 there, its gradient exactly 0 (not 0 * NaN), the others unchanged.
    const std::vector<float> w = {1.0f, 0.0f, 1.0f, 1.0f};
    io.weights = bevkd::rows_contiguous(w.data(), 1, C);
    const std::vector<float> before = row_loss;
    std::fill(g.begin(), g.end(), 5.0f);
    bevkd::response_kl({kl_mode::spatial, 1.0, reduction::none})(
        exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, P, C), bevkd::bev_nhwc<const float>(t.data(), 1, 1, P, C),
        bevkd::bev_nhwc(g.data(), 1, 1, P, C), io);
    CHECK(row_loss[1] == 0.0f);
    CHECK(row_loss[0] == before[0]);
    bool zero_grad = true;
    for (index_t p = 0; p < P; ++p) zero_grad = zero_grad && g[p * C + 1] == 0.0f;
    CHECK(zero_grad);
  }
}

TEST_CASE("response_kl runs the CUDA teams' partitioning: team sizes 1, 4, 7, 8, 16, 32, 256 (the CUDA warp groups, a block), chunks, scratch on and off") {
  BEVKD_TEST_RNG(rng);
  for (int lanes : {1, 4, 7, 8, 16, 32, 256})
    for (int chunk : {1, 4})
      for (bool scratch : {true, false}) {
        bevkd::host_exec exec;
        exec.simulate_team(lanes, chunk, scratch);
        // Rows shorter than the team, not a multiple of it, and longer than it; 64 and 65: at and just past what a
        // team of 8 lanes holds in chunks of 4 (held_row, 2 chunks a lane).
        for (index_t C : {1, 3, 33, 64, 65, 300})
          for (kl_mode mode : all_modes) {
            INFO("lanes ", lanes, " chunk ", chunk, " scratch ", scratch, " C ", C, " mode ", static_cast<int>(mode));
            auto cs = kl_case<float>(mode, 1.5, 2, 3, C);
            cs.randomize(rng);
            cs.random_weights(rng);
            check_host_case(cs, exec);
          }
      }
}

TEST_CASE("response_kl gradient equals central finite differences") {
  BEVKD_TEST_RNG(rng);
  for (kl_mode mode : all_modes)
    for (auto red : {reduction::sum, reduction::mean, reduction::batchmean})
      for (layout lay : {layout::nhwc, layout::nchw}) {
        INFO("mode ", static_cast<int>(mode), " reduction ", static_cast<int>(red), " layout ", layout_name(lay));
        auto cs = kl_case<double>(mode, 1.7, 2, 4, 3);
        cs.lay = lay;
        cs.opts.reduce = red;
        cs.opts.loss_weight = 0.75;
        cs.randomize(rng);
        cs.random_weights(rng);
        check_gradient_by_finite_differences(cs);
      }
}

TEST_CASE("response_kl softmax mode equals F.kl_div(F.log_softmax(S), F.softmax(T), reduction='sum') at tau 1") {
  // PyTorch: kl_div(input, target) = sum target * (log(target) - input), input = log_softmax(S).
  const std::vector<float> s = {0.5f, -1.25f, 2.0f, 0.0f, 3.0f, -0.5f};
  const std::vector<float> t = {1.0f, 0.25f, -2.0f, 0.75f, 0.5f, 1.5f};
  double want = 0;
  for (int row = 0; row < 2; ++row) {
    const std::vector<double> sr(s.begin() + 3 * row, s.begin() + 3 * row + 3);
    const std::vector<double> tr(t.begin() + 3 * row, t.begin() + 3 * row + 3);
    const auto ls = log_softmax(sr, 1.0), lt = log_softmax(tr, 1.0);
    for (int c = 0; c < 3; ++c) want += std::exp(lt[c]) * (lt[c] - ls[c]);
  }
  std::vector<float> g(6);
  bevkd::host_exec exec;
  const bevkd::response_kl kl({kl_mode::softmax, 1.0, reduction::sum});
  const auto got = kl(exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, 2, 3),
                      bevkd::bev_nhwc<const float>(t.data(), 1, 1, 2, 3), bevkd::bev_nhwc(g.data(), 1, 1, 2, 3));
  CHECK(got.loss == doctest::Approx(want).epsilon(1e-6));
}

TEST_CASE("response_kl edge cases") {
  bevkd::host_exec exec;
  SUBCASE("one class: the softmax KL is exactly 0 with a zero gradient") {
    const std::vector<float> s = {3.0f, -2.0f}, t = {-1.0f, 4.0f};
    std::vector<float> g(2, 9.0f);
    const auto r = bevkd::response_kl()(exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, 2, 1),
                                        bevkd::bev_nhwc<const float>(t.data(), 1, 1, 2, 1), bevkd::bev_nhwc(g.data(), 1, 1, 2, 1));
    CHECK(r.loss == 0.0);
    CHECK(g[0] == 0.0f);
    CHECK(g[1] == 0.0f);
  }
  SUBCASE("zero rows: loss 0, weight sum 0") {
    for (auto dims : {std::vector<index_t>{0, 5}, std::vector<index_t>{3, 0}}) {
      std::vector<float> g;
      const auto r = bevkd::response_kl()(exec, bevkd::bev_nhwc<const float>(nullptr, dims[0], 1, dims[1], 4),
                                          bevkd::bev_nhwc<const float>(nullptr, dims[0], 1, dims[1], 4),
                                          bevkd::bev_nhwc<float>(nullptr, dims[0], 1, dims[1], 4));
      CHECK(r.loss == 0.0);
      CHECK(r.weight_sum == 0.0);
    }
  }
  SUBCASE("all weights zero: loss and gradient exactly 0, even over NaN inputs; accumulate leaves the buffer as it was") {
    const std::vector<float> s = {1.0f, std::nanf(""), 2.0f, 3.0f}, t = {0.5f, 1.0f, -1.0f, 7.0f};
    const std::vector<float> w = {0.0f, 0.0f};
    bevkd::row_io<float> io;
    io.weights = bevkd::rows_contiguous(w.data(), 1, 2);
    for (kl_mode mode : all_modes) {
      if (mode == kl_mode::spatial) continue;  // weights are per channel there
      std::vector<float> g(4, 5.0f);
      bevkd::response_kl kl({mode, 2.0, reduction::mean});
      auto r = kl(exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, 2, 2), bevkd::bev_nhwc<const float>(t.data(), 1, 1, 2, 2),
                  bevkd::bev_nhwc(g.data(), 1, 1, 2, 2), io);
      CHECK(r.loss == 0.0);
      CHECK(r.weight_sum == 0.0);
      CHECK(g == std::vector<float>(4, 0.0f));
      std::fill(g.begin(), g.end(), 5.0f);
      kl.options.accumulate = true;
      r = kl(exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, 2, 2), bevkd::bev_nhwc<const float>(t.data(), 1, 1, 2, 2),
             bevkd::bev_nhwc(g.data(), 1, 1, 2, 2), io);
      CHECK(r.loss == 0.0);
      CHECK(g == std::vector<float>(4, 5.0f));
    }
  }
  SUBCASE("-inf teacher logits (masked classes) contribute 0; a -inf student logit under teacher mass gives +inf") {
    const float inf = std::numeric_limits<float>::infinity();
    const std::vector<float> s = {0.5f, 1.0f, -0.5f}, t = {-inf, 2.0f, 1.0f};
    std::vector<float> g(3);
    const auto view = [](const std::vector<float>& v) { return bevkd::bev_nhwc<const float>(v.data(), 1, 1, 1, 3); };
    const auto r = bevkd::response_kl({kl_mode::softmax, 1.0, reduction::sum})(exec, view(s), view(t), bevkd::bev_nhwc(g.data(), 1, 1, 1, 3));
    const auto want = softmax_kl_reference({0.5, 1.0, -0.5}, {-HUGE_VAL, 2.0, 1.0}, 1.0);
    CHECK(r.loss == doctest::Approx(want.loss).epsilon(1e-6));
    for (int c = 0; c < 3; ++c) CHECK(g[c] == doctest::Approx(want.grad[c]).epsilon(1e-6));
    const std::vector<float> s2 = {-inf, 1.0f, 0.0f};
    const auto r2 = bevkd::response_kl({kl_mode::softmax, 1.0, reduction::sum})(exec, view(s2), view(t), bevkd::bev_nhwc(g.data(), 1, 1, 1, 3));
    CHECK(r2.loss == 0.0);  // the teacher puts no mass where the student is -inf
    const std::vector<float> t3 = {1.0f, 2.0f, 1.0f};
    const auto r3 = bevkd::response_kl({kl_mode::softmax, 1.0, reduction::sum})(exec, view(s2), view(t3), bevkd::bev_nhwc(g.data(), 1, 1, 1, 3));
    CHECK(r3.loss == inf);
    CHECK(std::isfinite(g[0]));
    const auto r4 = bevkd::response_kl({kl_mode::sigmoid, 1.0, reduction::sum})(exec, view(s), view(t), bevkd::bev_nhwc(g.data(), 1, 1, 1, 3));
    CHECK(std::isfinite(r4.loss));
    CHECK(r4.loss == doctest::Approx(sigmoid_kl_reference({0.5, 1.0, -0.5}, {-HUGE_VAL, 2.0, 1.0}, 1.0).loss).epsilon(1e-6));
  }
  SUBCASE("logits of +-1e4 stay finite and match the reference") {
    const std::vector<float> s = {1e4f, -1e4f, 3.0f, -1e4f}, t = {-1e4f, 1e4f, 1e4f, 2.0f};
    std::vector<double> sd(s.begin(), s.end()), td(t.begin(), t.end());
    for (kl_mode mode : {kl_mode::softmax, kl_mode::sigmoid}) {
      std::vector<float> g(4);
      const auto r = bevkd::response_kl({mode, 1.0, reduction::sum})(
          exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, 1, 4), bevkd::bev_nhwc<const float>(t.data(), 1, 1, 1, 4),
          bevkd::bev_nhwc(g.data(), 1, 1, 1, 4));
      const auto want = mode == kl_mode::softmax ? softmax_kl_reference(sd, td, 1.0) : sigmoid_kl_reference(sd, td, 1.0);
      CHECK(std::isfinite(r.loss));
      CHECK(r.loss == doctest::Approx(want.loss).epsilon(1e-5));
      for (int c = 0; c < 4; ++c) {
        CHECK(std::isfinite(g[c]));
        CHECK(g[c] == doctest::Approx(want.grad[c]).epsilon(1e-5));
      }
    }
  }
  SUBCASE("NaN in either input propagates to the loss (no crash, no hang)") {
    for (kl_mode mode : all_modes)
      for (int which : {0, 1}) {
        std::vector<float> s = {0.5f, 1.0f, -0.5f, 2.0f}, t = {1.0f, 2.0f, 1.0f, 0.0f};
        (which == 0 ? s : t)[1] = std::nanf("");
        std::vector<float> g(4);
        const auto r = bevkd::response_kl({mode, 1.0, reduction::mean})(
            exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, 2, 2), bevkd::bev_nhwc<const float>(t.data(), 1, 1, 2, 2),
            bevkd::bev_nhwc(g.data(), 1, 1, 2, 2));
        CHECK(std::isnan(r.loss));
      }
  }
}

TEST_CASE("response_kl scales: loss_weight, grad_scale, accumulate") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  auto cs = kl_case<float>(kl_mode::softmax, 2.0, 3, 5, 6);
  cs.randomize(rng);
  cs.random_weights(rng);
  cs.opts.loss_weight = 0.3;
  cs.opts.grad_scale = 4.0;
  check_host_case(cs, exec);
  // accumulate: the buffer ends as (what it held) + (the gradient).
  std::vector<float> plain(cs.student.size()), acc(cs.student.size());
  std::vector<float> rows;
  cs.run(exec, plain, rows);
  const auto prior = random_values<float>(static_cast<index_t>(acc.size()), rng);
  acc = prior;
  cs.opts.accumulate = true;
  cs.run(exec, acc, rows);
  for (std::size_t i = 0; i < acc.size(); ++i) CHECK(acc[i] == doctest::Approx(prior[i] + plain[i]).epsilon(1e-6));
}

TEST_CASE("response_kl is deterministic: repeated runs and 1 vs 2 threads are bitwise equal") {
  BEVKD_TEST_RNG(rng);
  // The second shape gives the spatial mode 140 rows of 9000 pillars: host lane-group sets of 2, 2 and 1 groups
  // per batch, six chunks, enough for both threads to work.
  const std::pair<index_t, index_t> shapes[] = {{1500, 19}, {9000, 70}};  // pillars, channels
  for (kl_mode mode : all_modes)
    for (auto [pillars, channels] : shapes) {
      auto cs = kl_case<float>(mode, 1.3, 2, pillars, channels);
      cs.randomize(rng);
      cs.random_weights(rng);
      std::vector<float> g1(cs.student.size()), g2(cs.student.size()), g3(cs.student.size()), rows;
      bevkd::host_exec one(1), two(2);
      const auto r1 = cs.run(one, g1, rows);
      const auto r2 = cs.run(two, g2, rows);
      const auto r3 = cs.run(two, g3, rows);
      INFO("mode ", static_cast<int>(mode), " P ", pillars, " C ", channels);
      CHECK(std::memcmp(&r1.loss, &r2.loss, sizeof(double)) == 0);
      CHECK(std::memcmp(&r2.loss, &r3.loss, sizeof(double)) == 0);
      CHECK(g1 == g2);
      CHECK(g2 == g3);
    }
}

TEST_CASE("host_exec stages strided KL rows: the same results as the in-place row kernels, padding untouched") {
  BEVKD_TEST_RNG(rng);
  std::vector<loss_kind> kinds;
  for (kl_mode mode : all_modes) kinds.push_back(kl_case<float>(mode, 1.4).kind);
  check_staging_matches_in_place(kinds, rng);
}

TEST_CASE_TEMPLATE("host row blocks give the per-row kernel's results, with excluded rows exactly 0 or untouched", T,
                   float, bevkd::half, bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec blocks, per_row;
  per_row.run_row_blocks(false);
  CHECK(blocks.runs_row_blocks());
  CHECK(!per_row.runs_row_blocks());
  CHECK(!bevkd::host_exec().simulate_team(32).runs_row_blocks());
  CHECK(!bevkd::host_exec().simulate_team(1, 1, false).runs_row_blocks());
  // 74 rows: four full blocks and a tail of 10. Lane layout up to max_block_columns (strided rows) or below
  // min_row_layout_columns (unit-stride rows), row layout from there to max_row_layout_columns; per row beyond.
  // On AVX-512 builds unit-stride rows of 32 run in row layout too, they and rows of 64 with a constant count.
  using bevkd::detail::max_block_columns;
  using bevkd::detail::max_row_layout_columns;
  using bevkd::detail::min_row_layout_columns;
  // The sigmoid KL runs its lane-layout rows in blocks (elementwise, up to max_block_columns), the rest per row.
  const std::vector<index_t> softmax_channels = {1, 10, 32, 37, min_row_layout_columns - 1, min_row_layout_columns, 64,
                                                 max_block_columns, max_block_columns + 1, 333, max_row_layout_columns,
                                                 max_row_layout_columns + 1};
  const std::vector<index_t> sigmoid_channels = {1, 10, 32, 37, min_row_layout_columns - 1, min_row_layout_columns,
                                                 max_block_columns, max_block_columns + 1};
  for (kl_mode mode : {kl_mode::softmax, kl_mode::sigmoid})
    for (index_t channels : mode == kl_mode::softmax ? softmax_channels : sigmoid_channels)
      for (layout lay : all_layouts)
        for (bool accumulate : {false, true})
          for (reduction red : {reduction::mean, reduction::none}) {
            auto cs = kl_case<T>(mode, 1.7, 2, 37, channels);
            cs.lay = lay;
            cs.opts.accumulate = accumulate;
            cs.opts.reduce = red;
            cs.opts.loss_weight = 0.8;
            INFO("mode ", static_cast<int>(mode), " C ", channels, " layout ", layout_name(lay), " accumulate ",
                 accumulate, " reduction ", static_cast<int>(red));
            // half and bf16 stores round at 2^-11, 2^-8
            check_blocks_match_rows(cs, rng, std::is_same<T, float>::value ? 2e-6 : 1e-2);
          }
}

TEST_CASE("a gradient of several MiB streams past the caches where its rows start on a line: the same bits as stored") {
  // Over min_streamed_grad_bytes, fp32 rows of whole lines written from a line go out with non-temporal stores on
  // AVX-512 hosts; the same call one float off a line stores them as usual. Lane layout (C = 16, 32) and row layout
  // (C = 48, 64); rows of weight 0 are streamed zeros.
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec blocks, per_row;
  per_row.run_row_blocks(false);
  for (index_t C : {index_t{16}, index_t{32}, index_t{48}, index_t{64}}) {
    const index_t P = bevkd::detail::min_streamed_grad_bytes / (C * index_t{sizeof(float)}) + 37;
    const auto n = static_cast<std::size_t>(P * C);
    const auto s = random_values<float>(P * C, rng, 4.0), t = random_values<float>(P * C, rng, 4.0);
    std::vector<float> w = random_values<float>(P, rng);
    for (std::size_t r = 0; r < w.size(); ++r) w[r] = r % 7 == 0 ? 0.0f : std::fabs(w[r]);
    bevkd::row_io<float> io;
    io.weights = bevkd::rows_contiguous(w.data(), 1, P);
    const bevkd::response_kl kl({kl_mode::softmax, 1.7, reduction::mean});
    const auto call = [&](bevkd::host_exec& exec, float* g) {
      return kl(exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, P, C),
                bevkd::bev_nhwc<const float>(t.data(), 1, 1, P, C), bevkd::bev_nhwc(g, 1, 1, P, C), io)
          .loss;
    };
    line_buffer<float> on_line(n, 0, std::nanf("")), off_line(n, 1, std::nanf("")), by_row(n, 0, std::nanf(""));
    const double streamed = call(blocks, on_line.data()), stored = call(blocks, off_line.data());
    const double row_loss = call(per_row, by_row.data());
    INFO("C ", C);
    CHECK(streamed == stored);
    CHECK(std::memcmp(on_line.data(), off_line.data(), n * sizeof(float)) == 0);
    CHECK(relative_error(streamed, row_loss) < 2e-6);
    const auto got = on_line.values(), want = by_row.values();
    CHECK(relative_error(std::vector<double>(got.begin(), got.end()), std::vector<double>(want.begin(), want.end())) <
          2e-6);
    for (std::size_t r = 0; r < w.size(); r += 7)
      for (index_t c = 0; c < C; ++c) CHECK(std::signbit(got[r * static_cast<std::size_t>(C) + c]) == false);
  }
}

#if defined(BEVKD_HOST_AVX512)
TEST_CASE("the AVX-512 row passes fold sixteen runs at a time bit for bit as fold_partials folds each (NaN as NaN)") {
  BEVKD_TEST_RNG(rng);
  std::normal_distribution<float> normal(0.0f, 100.0f);
  std::uniform_int_distribution<int> pick(0, 19);
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), -0.0f, 0.0f};
  using passes = bevkd::detail::avx512::row_passes<float>;
  const auto check = [&](auto op, int count) {
    __m512 partials[128];
    float values[16 * 128], folded[128];
    for (int j = 0; j < 16 * count; ++j) {
      float& x = values[j];
      const int k = pick(rng);
      x = k < 5 ? specials[k] : normal(rng);  // a quarter special: NaN and inf in any lane and partial order
    }
    for (int i = 0; i < count; ++i) partials[i] = _mm512_loadu_ps(&values[16 * i]);
    const float* out = passes::fold(op, partials, count, folded);
    for (int i = 0; i < count; ++i) {
      float p[bevkd::detail::row_partials];
      std::memcpy(p, &values[16 * i], sizeof p);
      const float expected = bevkd::detail::fold_partials(op, p);
      INFO("run ", i, " of ", count);
      // A NaN's sign is the compiler's choice (it may swap an add's operands; inf - inf gives -NaN on x86).
      if (std::isnan(expected))
        CHECK(std::isnan(out[i]));
      else
        CHECK(std::memcmp(&out[i], &expected, sizeof(float)) == 0);
    }
  };
  for (int count : {1, 5, 16, 17, 40, 128}) {
    check(bevkd::sum_op{}, count);
    check(bevkd::shift_max_op{}, count);
  }
}

namespace {

// The least grad_streamable reads of a problem: its element type, size and whether its rows are softmaxes.
template <bool Exponential>
struct sized_rows {
  using value_type = float;
  static constexpr bool exponential_rows = Exponential;
  bevkd::index_t rows, columns_;
  bevkd::index_t row_count() const { return rows; }
  bevkd::index_t columns() const { return columns_; }
};

// True when CPUID names the vendor GenuineIntel (read here independently of intel_host's __builtin_cpu_is).
bool cpuid_says_intel() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __cpuid(0, eax, ebx, ecx, edx);
  char vendor[12];
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  return std::memcmp(vendor, "GenuineIntel", 12) == 0;
}

}  // namespace

TEST_CASE("large fp32 gradients are streamed, except softmax rows' on Intel hosts; accumulated or small ones never") {
  using namespace bevkd::detail;
  static_assert(has_exponential_rows<response_kl_problem<float, true, false>>::value, "softmax KL");
  static_assert(!has_exponential_rows<response_kl_problem<float, true, true>>::value, "sigmoid KL");
  static_assert(has_exponential_rows<attention_problem<float>>::value, "attention");
  static_assert(!has_exponential_rows<feature_mse_problem<float, true, false>>::value, "feature MSE");
  const bool intel = cpuid_says_intel();
  CHECK(intel_host() == intel);
  const bevkd::index_t rows = 80000, columns = 64;  // B = 2, 200 x 200, C = 64: 20 MB
  CHECK(grad_streamable(sized_rows<true>{rows, columns}, false) == !intel);
  CHECK(grad_streamable(sized_rows<false>{rows, columns}, false));
  CHECK_FALSE(grad_streamable(sized_rows<false>{rows, columns}, true));
  CHECK(grad_streamable(sized_rows<false>{1024, 1024}, false));  // min_streamed_grad_bytes: 4 MiB
  CHECK_FALSE(grad_streamable(sized_rows<false>{1024, 1023}, false));
}
#endif

namespace {

// A float case run in host row blocks and through the per-row kernel: gradients and per-row losses of each.
struct blocks_and_rows {
  std::vector<float> grad, by_row, losses, row_losses;
};

blocks_and_rows run_blocks_and_rows(const loss_case<float>& cs) {
  blocks_and_rows out{std::vector<float>(cs.student.size()), std::vector<float>(cs.student.size()), {}, {}};
  bevkd::host_exec blocks, per_row;
  per_row.run_row_blocks(false);
  cs.run(blocks, out.grad, out.losses);
  cs.run(per_row, out.by_row, out.row_losses);
  return out;
}

}  // namespace

TEST_CASE("host row blocks keep a NaN, -inf or huge logit in its own row") {
  BEVKD_TEST_RNG(rng);
  auto cs = kl_case<float>(kl_mode::softmax, 1.0, 1, 40, 64);
  cs.randomize(rng);
  const index_t nan_row = 3, inf_row = 17, huge_row = 33;
  cs.student[static_cast<std::size_t>(nan_row * 64 + 5)] = std::nanf("");
  for (index_t c = 0; c < 64; c += 2) cs.teacher[static_cast<std::size_t>(inf_row * 64 + c)] = -HUGE_VALF;
  for (index_t c = 0; c < 64; ++c) cs.student[static_cast<std::size_t>(huge_row * 64 + c)] = c % 3 ? 1e4f : -1e4f;
  cs.opts.reduce = reduction::none;
  const auto [grad, by_row, losses, row_losses] = run_blocks_and_rows(cs);
  for (index_t r = 0; r < 40; ++r) {
    INFO("row ", r);
    CHECK(std::isnan(losses[static_cast<std::size_t>(r)]) == (r == nan_row));
    if (r != nan_row)
      CHECK(losses[static_cast<std::size_t>(r)] == doctest::Approx(row_losses[static_cast<std::size_t>(r)]).epsilon(1e-5));
    for (index_t c = 0; c < 64; ++c) {
      const float g = grad[static_cast<std::size_t>(r * 64 + c)];
      CHECK(std::isnan(g) == (r == nan_row));
      // q_S - q_T cancels: compare against the gradient's scale (1 / rows), not each element's size. Each side's
      // fp32 sums over 64 columns carry up to 64 * 2^-24 = 3.8e-6 relative error, in both runs: allow 3e-5.
      if (r != nan_row) CHECK(std::fabs(g - by_row[static_cast<std::size_t>(r * 64 + c)]) < 3e-5f / 40);
    }
  }
}

TEST_CASE("host sigmoid rows keep a NaN in its own element; blocks, per-row lanes and the generic math agree on +-inf and "
          "huge logits") {
  BEVKD_TEST_RNG(rng);
  // C = 10: lane-layout blocks (two full, one of 8 rows); 53 and 64: per row (fp32 on AVX-512 builds: the AVX-512
  // lanes, 53 with a tail of 5). A simulated team of 7 runs the generic element math (sigmoid_kl_terms) on every row.
  for (index_t C : {index_t{10}, index_t{53}, index_t{64}}) {
    const index_t rows = 40;
    auto cs = kl_case<float>(kl_mode::sigmoid, 1.0, 1, rows, C);
    cs.randomize(rng);
    const index_t nan_row = 3, inf_row = 17, huge_row = 33, sure_row = 34;
    const auto at = [&](index_t r, index_t c) { return static_cast<std::size_t>(r * C + c); };
    cs.student[at(nan_row, 5)] = std::nanf("");
    for (index_t c = 0; c < C; c += 2) cs.teacher[at(inf_row, c)] = -HUGE_VALF;
    for (index_t c = 1; c < C; c += 2) cs.student[at(inf_row, c)] = HUGE_VALF;
    for (index_t c = 0; c < C; ++c) cs.student[at(huge_row, c)] = c % 3 ? 1e4f : -1e4f;
    for (index_t c = 0; c < C; ++c) cs.teacher[at(sure_row, c)] = c % 2 ? 1e4f : -1e4f;  // probabilities 1 and 0
    cs.opts.reduce = reduction::none;
    const auto [grad, by_row, losses, row_losses] = run_blocks_and_rows(cs);
    bevkd::host_exec generic_exec;
    generic_exec.simulate_team(7);
    std::vector<float> generic(cs.student.size()), generic_losses;
    cs.run(generic_exec, generic, generic_losses);
    for (index_t r = 0; r < rows; ++r) {
      INFO("C ", C, " row ", r);
      const auto i = static_cast<std::size_t>(r);
      if (std::isinf(row_losses[i]))  // blocks against the per-row kernel, as before the AVX-512 lanes
        CHECK(losses[i] == row_losses[i]);
      else if (r != nan_row)
        CHECK(losses[i] == doctest::Approx(row_losses[i]).epsilon(1e-5));
      for (const float loss : {losses[i], row_losses[i]}) {
        CHECK(std::isnan(loss) == (r == nan_row));
        if (std::isinf(generic_losses[i]))  // +inf student logits where the teacher has mass below 1 (row 17)
          CHECK(loss == generic_losses[i]);
        else if (r != nan_row)
          CHECK(loss == doctest::Approx(generic_losses[i]).epsilon(1e-5));
      }
      for (index_t c = 0; c < C; ++c) {
        INFO("column ", c);
        if (!std::isnan(grad[at(r, c)])) CHECK(grad[at(r, c)] == doctest::Approx(by_row[at(r, c)]).epsilon(1e-5));
        for (const float g : {grad[at(r, c)], by_row[at(r, c)]}) {
          CHECK(std::isnan(g) == (r == nan_row && c == 5));  // elementwise: only its own gradient
          // s_S - s_T of sigmoids within a few ulp of 1 each: an absolute bound.
          if (!std::isnan(g)) CHECK(std::fabs(g - generic[at(r, c)]) <= 1e-6f);
        }
      }
    }
  }
}

TEST_CASE("host row blocks write exactly 0 over an excluded row holding NaN, in lane and in row layout") {
  BEVKD_TEST_RNG(rng);
  for (index_t channels : {index_t{10}, index_t{64}, index_t{200}})  // lane layout, then row layout
    for (layout lay : all_layouts) {
      auto cs = kl_case<float>(kl_mode::softmax, 1.0, 1, 37, channels);
      cs.lay = lay;
      cs.randomize(rng);
      cs.weights.assign(37, 1.0f);
      const index_t excluded = 21;
      cs.weights[static_cast<std::size_t>(excluded)] = 0.0f;
      const auto student = view_of<float>(lay, cs.student.data(), 1, 37, channels);
      const auto teacher = view_of<float>(lay, cs.teacher.data(), 1, 37, channels);
      for (index_t c = 0; c < channels; c += 3) {
        student(0, excluded, c) = std::nanf("");
        teacher(0, excluded, c) = -HUGE_VALF;
      }
      std::vector<float> grad(cs.student.size(), 5.0f), rows;
      bevkd::host_exec exec;
      const auto r = cs.run(exec, grad, rows);
      INFO("C ", channels, " layout ", layout_name(lay));
      CHECK(std::isfinite(r.loss));
      const auto g = view_of<float>(lay, grad.data(), 1, 37, channels);
      for (index_t c = 0; c < channels; ++c) {
        CHECK(g(0, excluded, c) == 0.0f);
        CHECK(!std::signbit(g(0, excluded, c)));
        CHECK(std::isfinite(g(0, excluded + 1, c)));
      }
    }
}

TEST_CASE("a staged call that fails in the run (a negative weight) leaves the gradient untouched") {
  BEVKD_TEST_RNG(rng);
  auto cs = kl_case<float>(kl_mode::softmax, 1.0, 2, 9, 4);
  cs.lay = layout::nchw;  // strided rows: staged
  cs.randomize(rng);
  cs.random_weights(rng);
  cs.weights[5] = -1.0f;
  std::vector<float> grad(cs.student.size(), 3.0f), rows;
  bevkd::host_exec exec;
  CHECK_THROWS_AS(cs.run(exec, grad, rows), bevkd::invalid_argument);
  CHECK(grad == std::vector<float>(cs.student.size(), 3.0f));
}

TEST_CASE("response_kl rejects bad input before writing anything, naming the argument") {
  bevkd::host_exec exec;
  std::vector<float> s(24, 0.5f), t(24, 0.25f), g(24, 7.0f), w(6, 1.0f);
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<float>(i % 5) * 0.3f;
  const auto S = bevkd::bev_nhwc<const float>(s.data(), 2, 1, 3, 4);
  const auto T = bevkd::bev_nhwc<const float>(t.data(), 2, 1, 3, 4);
  const auto G = bevkd::bev_nhwc(g.data(), 2, 1, 3, 4);
  const auto expect_rejected = [&](auto&& call, const char* argument) {
    std::fill(g.begin(), g.end(), 7.0f);
    bool thrown = false;
    try {
      call();
    } catch (const bevkd::invalid_argument& e) {
      thrown = true;
      INFO("expected argument ", argument, ", message: ", std::string(e.what()));
      CHECK(e.argument().find(argument) == 0);
      CHECK(std::string(e.what()).find(argument) != std::string::npos);
    }
    CHECK_MESSAGE(thrown, "expected a bevkd::invalid_argument for ", argument);
    CHECK(g == std::vector<float>(24, 7.0f));
  };
  const bevkd::response_kl kl;
  expect_rejected([&] { kl(exec, bevkd::bev_nhwc<const float>(s.data(), 2, 1, 3, 3), T, G); }, "teacher");
  expect_rejected([&] { kl(exec, S, bevkd::bev_nhwc<const float>(t.data(), 2, 1, 2, 4), G); }, "teacher");
  expect_rejected([&] { kl(exec, S, T, bevkd::bev_nhwc(g.data(), 1, 1, 3, 4)); }, "grad");
  for (double tau : {0.0, -1.0, std::nan("")}) {
    const bevkd::response_kl bad({kl_mode::softmax, tau});
    expect_rejected([&] { bad(exec, S, T, G); }, "temperature");
  }
  expect_rejected([&] { bevkd::response_kl({kl_mode::softmax, 1.0, reduction::mean, HUGE_VAL})(exec, S, T, G); },
                  "loss_weight");
  auto negative = S;
  negative.stride[1] = -4;
  expect_rejected([&] { kl(exec, negative, T, G); }, "student.stride[1]");
  auto huge = S;
  huge.stride[0] = index_t(1) << 61;
  expect_rejected([&] { kl(exec, huge, T, G); }, "student.stride[0]");
  expect_rejected([&] { kl(exec, bevkd::bev_nhwc<const float>(nullptr, 2, 1, 3, 4), T, G); }, "student.data");
  expect_rejected([&] { kl(exec, S, T, bevkd::bev_nhwc<float>(nullptr, 2, 1, 3, 4)); }, "grad.data");
  expect_rejected([&] { kl(exec, bevkd::bev_nhwc<const float>(g.data(), 2, 1, 3, 4), T, G); }, "grad");
  expect_rejected([&] { kl(exec, S, bevkd::bev_nhwc<const float>(g.data() + 5, 2, 1, 3, 4), G); }, "grad");
  auto overlapping = G;
  overlapping.stride[1] = 0;
  expect_rejected([&] { kl(exec, S, T, overlapping); }, "grad.stride[1]");
  expect_rejected([&] { kl(exec, S, T, bevkd::bev_nhwc(g.data(), 2, 1, 3, 0)); }, "grad.extent[2]");
  expect_rejected([&] { kl(exec, bevkd::bev_nhwc<const float>(s.data(), 2, 1, 3, 0), bevkd::bev_nhwc<const float>(t.data(), 2, 1, 3, 0), bevkd::bev_nhwc(g.data(), 2, 1, 3, 0)); }, "student.extent[2]");
  bevkd::row_io<float> io;
  io.weights = bevkd::rows_contiguous<const float>(w.data(), 3, 2);
  expect_rejected([&] { kl(exec, S, T, G, io); }, "weights");
  io.weights = bevkd::rows_contiguous<const float>(w.data(), 2, 3);
  w[4] = -1.0f;
  expect_rejected([&] { kl(exec, S, T, G, io); }, "weights");
  w[4] = 1.0f;
  bevkd::row_io<float> up;
  up.upstream = bevkd::rows_contiguous<const float>(w.data(), 2, 3);
  expect_rejected([&] { kl(exec, S, T, G, up); }, "upstream");
  const bevkd::response_kl spatial({kl_mode::spatial});
  expect_rejected([&] { spatial(exec, S, T, G, io); }, "weights");  // spatial rows are [B, C] = [2, 4]
}
