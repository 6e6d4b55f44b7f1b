// bevkd tests: feature MSE (plain and per-pillar L2) against the double reference, finite differences, edge cases.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/bevkd.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define BEVKD_TEST_LOSSES ::bevkd_test::loss_set::mse  // this file runs feature_mse only
#include "support/loss_harness.hpp"

using namespace bevkd_test;
using bevkd::mse_normalize;
using bevkd::reduction;

namespace {

template <class T>
loss_case<T> mse_case(mse_normalize normalize, index_t B = 2, index_t P = 7, index_t C = 5) {
  loss_case<T> cs;
  cs.B = B;
  cs.P = P;
  cs.C = C;
  cs.kind.is_kl = false;
  cs.kind.normalize = normalize;
  return cs;
}

}  // namespace

TEST_CASE_TEMPLATE("feature_mse matches the double reference in every layout, reduction and weighting", T, float,
                   double, bevkd::half, bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  for (auto normalize : {mse_normalize::none, mse_normalize::per_pillar_l2}) {
    INFO("normalize ", static_cast<int>(normalize));
    check_all_options(mse_case<T>(normalize), rng, exec);
  }
  // NCHW pillars lie side by side: the host reads them in place in lane groups (AVX-512 passes for fp32, and half and
  // bfloat16 with AVX-512BW; portable passes otherwise). 37 pillars: groups of 16, 16 and 5 per batch, one per set; 150: ten groups, two sets of five; 300 channels
  // span two of a set's segments.
  for (auto normalize : {mse_normalize::none, mse_normalize::per_pillar_l2})
    for (auto [P, C] : {std::pair<index_t, index_t>{37, 70}, std::pair<index_t, index_t>{150, 300}}) {
      INFO("long NCHW rows: P ", P, " C ", C, " normalize ", static_cast<int>(normalize));
      check_all_options(mse_case<T>(normalize, 2, P, C), rng, exec);
    }
  // Normalised unit-stride rows up to 128 channels: AVX-512 builds run them in blocks read in place (129: the per-row
  // kernel again). 37 pillars: blocks of 16 that cross the batch boundary, a short last block.
  for (index_t C : {index_t{48}, index_t{64}, index_t{67}, index_t{128}, index_t{129}}) {
    INFO("normalised rows of ", C, " channels");
    check_all_options(mse_case<T>(mse_normalize::per_pillar_l2, 2, 37, C), rng, exec);
  }
}

TEST_CASE("half gradients below half's normal range are exact to its subnormal spacing") {
  // Mean over 14 rows of 1100 L2-normalised channels: gradients near 1e-7, stored as half subnormals (found on
  // the GPU, where the CUDA tests run these sizes). They round to the spacing 2^-24, not to 2e-3 relative.
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  auto cs = mse_case<bevkd::half>(mse_normalize::per_pillar_l2, 2, 7, 1100);
  cs.randomize(rng);
  cs.opts.reduce = reduction::mean;
  std::vector<bevkd::half> grad(static_cast<std::size_t>(storage_size(cs.lay, cs.B, cs.P, cs.C)));
  std::vector<float> rows;
  cs.run(exec, grad, rows);
  const auto got = logical_grad(cs, grad);
  const auto want = expected_result(cs).grad;
  double largest = 0, error = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    largest = std::max(largest, std::fabs(want[i]));
    error = std::max(error, std::fabs(got[i] - want[i]));
  }
  CHECK(largest < std::ldexp(1.0, -14));      // the case does reach the subnormal range
  CHECK(error <= std::ldexp(1.0, -25));       // round to nearest: half a subnormal spacing
  CHECK(relative_error(got, want, grad_floor<bevkd::half>()) < tolerance<bevkd::half>());
  check_all_options(cs, rng, exec);
}

TEST_CASE("feature_mse on host teams of 1, 4, 7, 8, 16, 32 and 256 lanes") {
  BEVKD_TEST_RNG(rng);
  for (int lanes : {1, 4, 7, 8, 16, 32, 256})
    for (int chunk : {1, 4}) {
      bevkd::host_exec exec;
      exec.simulate_team(lanes, chunk);
      for (index_t C : {1, 3, 33, 64, 65, 300})
        for (auto normalize : {mse_normalize::none, mse_normalize::per_pillar_l2}) {
          INFO("lanes ", lanes, " chunk ", chunk, " C ", C);
          auto cs = mse_case<float>(normalize, 2, 3, C);
          cs.randomize(rng);
          cs.random_weights(rng);
          check_host_case(cs, exec);
        }
    }
}

TEST_CASE("host_exec stages strided MSE rows: the same results as the in-place row kernels, padding untouched") {
  BEVKD_TEST_RNG(rng);
  std::vector<loss_kind> kinds;
  for (auto normalize : {mse_normalize::none, mse_normalize::per_pillar_l2})
    kinds.push_back(mse_case<float>(normalize).kind);
  check_staging_matches_in_place(kinds, rng);
}

TEST_CASE("feature_mse gradient equals central finite differences, including through the L2 normalisation") {
  BEVKD_TEST_RNG(rng);
  for (auto normalize : {mse_normalize::none, mse_normalize::per_pillar_l2})
    for (auto red : {reduction::sum, reduction::mean, reduction::batchmean}) {
      auto cs = mse_case<double>(normalize, 2, 3, 6);
      cs.lay = layout::sequence_first;
      cs.opts.reduce = red;
      cs.opts.loss_weight = 1.5;
      cs.randomize(rng);
      cs.random_weights(rng);
      check_gradient_by_finite_differences(cs);
    }
}

TEST_CASE("feature_mse unweighted mean equals F.mse_loss(S, T)") {
  BEVKD_TEST_RNG(rng);
  auto cs = mse_case<float>(mse_normalize::none, 3, 11, 9);
  cs.randomize(rng);
  double want = 0;
  for (std::size_t i = 0; i < cs.student.size(); ++i) {
    const double d = static_cast<double>(cs.student[i]) - static_cast<double>(cs.teacher[i]);
    want += d * d;
  }
  want /= static_cast<double>(cs.student.size());  // F.mse_loss: mean over every element
  std::vector<float> grad(cs.student.size()), rows;
  bevkd::host_exec exec;
  CHECK(cs.run(exec, grad, rows).loss == doctest::Approx(want).epsilon(1e-6));
}

TEST_CASE("feature_mse edge cases") {
  bevkd::host_exec exec;
  SUBCASE("a zero student vector under per_pillar_l2 uses the eps clamp (finite gradient g / eps)") {
    std::vector<double> s = {0.0, 0.0, 0.0}, t = {1.0, 2.0, 2.0}, g(3);
    const bevkd::feature_mse mse({mse_normalize::per_pillar_l2, 1e-3, reduction::sum});
    const auto r = mse(exec, bevkd::bev_nhwc<const double>(s.data(), 1, 1, 1, 3),
                       bevkd::bev_nhwc<const double>(t.data(), 1, 1, 1, 3), bevkd::bev_nhwc(g.data(), 1, 1, 1, 3));
    const auto want = mse_reference(s, t, true, 1e-3);
    CHECK(r.loss == doctest::Approx(want.loss));
    for (int c = 0; c < 3; ++c) CHECK(g[c] == doctest::Approx(want.grad[c]));
  }
  SUBCASE("all weights zero: loss and gradient exactly 0") {
    std::vector<float> s = {1.0f, std::nanf(""), 2.0f, 3.0f}, t = {0.5f, 1.0f, -1.0f, 7.0f}, g(4, 3.0f);
    const std::vector<float> w = {0.0f, 0.0f};
    bevkd::row_io<float> io;
    io.weights = bevkd::rows_contiguous(w.data(), 1, 2);
    const auto r = bevkd::feature_mse()(exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, 2, 2),
                                        bevkd::bev_nhwc<const float>(t.data(), 1, 1, 2, 2),
                                        bevkd::bev_nhwc(g.data(), 1, 1, 2, 2), io);
    CHECK(r.loss == 0.0);
    CHECK(g == std::vector<float>(4, 0.0f));
  }
  SUBCASE("NaN propagates; huge values stay finite in the normalised mode") {
    std::vector<float> s = {1.0f, std::nanf("")}, t = {0.5f, 1.0f}, g(2);
    CHECK(std::isnan(bevkd::feature_mse()(exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, 1, 2),
                                          bevkd::bev_nhwc<const float>(t.data(), 1, 1, 1, 2),
                                          bevkd::bev_nhwc(g.data(), 1, 1, 1, 2))
                         .loss));
    s = {1e18f, -3e18f};
    t = {2e18f, 1e18f};
    const auto r = bevkd::feature_mse({mse_normalize::per_pillar_l2})(
        exec, bevkd::bev_nhwc<const float>(s.data(), 1, 1, 1, 2), bevkd::bev_nhwc<const float>(t.data(), 1, 1, 1, 2),
        bevkd::bev_nhwc(g.data(), 1, 1, 1, 2));
    CHECK(std::isfinite(r.loss));
    CHECK(r.loss == doctest::Approx(mse_reference({1e18, -3e18}, {2e18, 1e18}, true, 1e-12).loss).epsilon(1e-5));
  }
  SUBCASE("bad options and shapes are rejected before anything is written") {
    std::vector<float> s(6, 1.0f), t(6, 2.0f), g(6, 4.0f);
    const auto S = bevkd::bev_nhwc<const float>(s.data(), 1, 1, 2, 3);
    CHECK_THROWS_AS(bevkd::feature_mse({mse_normalize::per_pillar_l2, 0.0})(exec, S, S, bevkd::bev_nhwc(g.data(), 1, 1, 2, 3)),
                    bevkd::invalid_argument);
    CHECK_THROWS_AS(bevkd::feature_mse()(exec, S, bevkd::bev_nhwc<const float>(t.data(), 1, 1, 3, 2),
                                         bevkd::bev_nhwc(g.data(), 1, 1, 2, 3)),
                    bevkd::invalid_argument);
    CHECK_THROWS_AS(bevkd::feature_mse()(exec, S, S, bevkd::bev_nhwc(s.data(), 1, 1, 2, 3)), bevkd::invalid_argument);
    CHECK(g == std::vector<float>(6, 4.0f));
  }
}

TEST_CASE_TEMPLATE("feature_mse on host row blocks gives the per-row kernel's results, excluded rows exactly 0 or kept",
                   T, float, bevkd::half, bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  // 74 rows: four full blocks and a tail of 10. On AVX-512 builds (half and bfloat16: with AVX-512BW) unit-stride
  // rows run in blocks read in place: plain up to max_mse_row_layout_columns, normalised up to
  // max_normalized_mse_row_layout_columns; per row beyond. Other builds: unit-stride plain rows up to
  // max_short_mse_row_columns in blocks read in place (float accumulators). Strided rows and other builds: normalised
  // rows in lane layout up to max_block_columns (float accumulators), the rest per row.
  using bevkd::detail::max_block_columns;
  using bevkd::detail::max_mse_row_layout_columns;
  using bevkd::detail::max_normalized_mse_row_layout_columns;
  using bevkd::detail::max_short_mse_row_columns;
  const std::vector<index_t> plain_channels = {1,  10, 16, 17, max_short_mse_row_columns, max_short_mse_row_columns + 1,
                                               64, 333, max_mse_row_layout_columns, max_mse_row_layout_columns + 1};
  const std::vector<index_t> normalized_channels = {1,  10, 16, 17, max_block_columns, max_block_columns + 1,
                                                    64, max_normalized_mse_row_layout_columns,
                                                    max_normalized_mse_row_layout_columns + 1};
  for (auto normalize : {mse_normalize::none, mse_normalize::per_pillar_l2})
    for (index_t channels : normalize == mse_normalize::none ? plain_channels : normalized_channels)
      for (layout lay : all_layouts)
        for (bool accumulate : {false, true})
          for (reduction red : {reduction::mean, reduction::none}) {
            auto cs = mse_case<T>(normalize, 2, 37, channels);
            cs.lay = lay;
            cs.opts.accumulate = accumulate;
            cs.opts.reduce = red;
            cs.opts.loss_weight = 0.8;
            INFO("normalize ", static_cast<int>(normalize), " C ", channels, " layout ", layout_name(lay),
                 " accumulate ", accumulate, " reduction ", static_cast<int>(red));
            // The plain MSE writes one expression per element either way: the same bits (added onto a prior gradient,
            // the per-row kernel's add may be contracted into a multiply-add).
            const bool same_bits = normalize == mse_normalize::none && !accumulate;
            check_blocks_match_rows(cs, rng, same_bits ? 0.0 : std::is_same<T, float>::value ? 2e-6 : 1e-2);
          }
}

TEST_CASE("feature_mse is deterministic across runs and thread counts") {
  BEVKD_TEST_RNG(rng);
  // NHWC rows, and NCHW rows (host lane groups: 94 sets of eight groups).
  // Rows of 10, 17 and 64 channels (host row blocks: in lane layout for the normalised rows of 17 outside AVX-512
  // builds, read in place on them; the plain rows of 10 read in place in every build).
  for (auto [normalize, lay, C] :
       {std::tuple{mse_normalize::none, layout::nhwc, 10}, std::tuple{mse_normalize::per_pillar_l2, layout::nhwc, 17},
        std::tuple{mse_normalize::per_pillar_l2, layout::nhwc, 64},
        std::tuple{mse_normalize::none, layout::nchw, 17}, std::tuple{mse_normalize::per_pillar_l2, layout::nchw, 17}}) {
    auto cs = mse_case<float>(normalize, 2, 1500, C);
    cs.lay = lay;
    cs.randomize(rng);
    std::vector<float> g1(cs.student.size()), g2(cs.student.size()), rows;
    bevkd::host_exec one(1), two(2);
    const auto r1 = cs.run(one, g1, rows);
    const auto r2 = cs.run(two, g2, rows);
    INFO("layout ", layout_name(lay), " normalize ", static_cast<int>(normalize));
    CHECK(std::memcmp(&r1.loss, &r2.loss, sizeof(double)) == 0);
    CHECK(g1 == g2);
  }
}

TEST_CASE_TEMPLATE("feature_mse accumulates onto the gradient buffer; pillars of weight 0 keep their bits (NaN too)", T,
                   float, double, bevkd::half, bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  const double tol = stored_tolerance<T>();
  // NCHW pillars (host lane groups, every dtype: 40 pillars make groups of 16, 16 and 8) and NHWC ones, both modes.
  for (auto normalize : {mse_normalize::none, mse_normalize::per_pillar_l2})
    for (layout lay : {layout::nchw, layout::nhwc}) {
      INFO("normalize ", static_cast<int>(normalize), " layout ", layout_name(lay));
      auto cs = mse_case<T>(normalize, 2, 40, 9);
      cs.lay = lay;
      check_accumulate_keeps_excluded_rows(cs, rng, exec, tol);
    }
  // Normalised NHWC rows of 64 channels (blocks read in place on AVX-512 builds).
  check_accumulate_keeps_excluded_rows(mse_case<T>(mse_normalize::per_pillar_l2, 2, 40, 64), rng, exec, tol);
}

TEST_CASE("feature_mse on NCHW pillars read in place: accumulate, weight-0 pillars, a zero and a huge pillar, NaN") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  const index_t P = 40, C = 9;  // three groups: 16, 16 and 8 pillars
  const auto at = [&](index_t c, index_t p) { return static_cast<std::size_t>(c * P + p); };  // NCHW: c P + p
  auto s = random_values<float>(P * C, rng), t = random_values<float>(P * C, rng);
  s[at(5, 3)] = std::nanf("");
  for (index_t c = 0; c < C; ++c) {
    s[at(c, 7)] = 0.0f;                                      // normalised: the eps clamp (gradient g / eps)
    s[at(c, 20)] = (c % 2 ? -3e17f : 1e17f) * static_cast<float>(1 + c);  // squares near float's range
    t[at(c, 20)] = 2e17f;
  }
  std::vector<float> w(P, 1.0f);
  for (index_t p = 0; p < P; p += 3) w[p] = 0.0f;  // pillar 3 among them: its NaN is excluded
  bevkd::row_io<float> io;
  io.weights = bevkd::rows_contiguous(w.data(), 1, P);
  const auto view = [&](const std::vector<float>& v) { return bevkd::bev_nchw<const float>(v.data(), 1, C, 1, P); };
  for (auto normalize : {mse_normalize::none, mse_normalize::per_pillar_l2}) {
    INFO("normalize ", static_cast<int>(normalize));
    const bool normalized = normalize == mse_normalize::per_pillar_l2;
    std::vector<float> plain(P * C), acc = random_values<float>(P * C, rng);
    const std::vector<float> prior = acc;
    bevkd::feature_mse mse({normalize, 1e-3, reduction::sum});
    const auto r = mse(exec, view(s), view(t), bevkd::bev_nchw(plain.data(), 1, C, 1, P), io);
    CHECK(std::isfinite(r.loss));
    mse.options.accumulate = true;
    mse(exec, view(s), view(t), bevkd::bev_nchw(acc.data(), 1, C, 1, P), io);
    double want = 0;
    for (index_t p = 0; p < P; ++p) {
      std::vector<double> s_row, t_row;
      for (index_t c = 0; c < C; ++c) {
        s_row.push_back(s[at(c, p)]);
        t_row.push_back(t[at(c, p)]);
      }
      const auto ref = mse_reference(s_row, t_row, normalized, mse.options.eps);
      if (w[p] != 0.0f) want += ref.loss;
      for (index_t c = 0; c < C; ++c) {
        INFO("pillar ", p, " channel ", c);
        const std::size_t i = at(c, p);
        if (w[p] == 0.0f) {
          CHECK(plain[i] == 0.0f);
          CHECK(acc[i] == prior[i]);
        } else {
          CHECK(plain[i] == doctest::Approx(ref.grad[c]).epsilon(1e-5));
          CHECK(acc[i] == doctest::Approx(prior[i] + plain[i]).epsilon(1e-6));
        }
      }
    }
    CHECK(r.loss == doctest::Approx(want).epsilon(1e-5));
    w[3] = 1.0f;  // the NaN pillar counts again
    CHECK(std::isnan(mse(exec, view(s), view(t), bevkd::bev_nchw(acc.data(), 1, C, 1, P), io).loss));
    w[3] = 0.0f;
  }
}

TEST_CASE("normalised feature_mse on rows of 64 channels: weight-0 pillars, a zero and a huge pillar, NaN, streamed") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  const index_t C = 64;
  // 40 pillars: row blocks of 16, 16 and 8 (in row layout for fp32 on AVX-512 builds); 16400: 4.2 MB of gradient,
  // which those blocks write with non-temporal stores.
  for (index_t P : {index_t{40}, index_t{16400}}) {
    INFO("pillars ", P);
    auto s = random_values<float>(P * C, rng), t = random_values<float>(P * C, rng);
    const auto at = [&](index_t p, index_t c) { return static_cast<std::size_t>(p * C + c); };  // NHWC: p C + c
    s[at(3, 5)] = std::nanf("");
    for (index_t c = 0; c < C; ++c) {
      s[at(7, c)] = 0.0f;                                                   // the eps clamp (gradient g / eps)
      s[at(20, c)] = (c % 2 ? -3e17f : 1e17f) * static_cast<float>(1 + c % 9);  // squares near float's range
      t[at(20, c)] = 2e17f;
    }
    std::vector<float> w(static_cast<std::size_t>(P), 1.0f);
    for (index_t p = 0; p < P; p += 3) w[static_cast<std::size_t>(p)] = 0.0f;  // pillar 3 among them: its NaN is excluded
    bevkd::row_io<float> io;
    io.weights = bevkd::rows_contiguous(w.data(), 1, P);
    const auto view = [&](const std::vector<float>& v) { return bevkd::bev_nhwc<const float>(v.data(), 1, 1, P, C); };
    std::vector<float> plain(static_cast<std::size_t>(P * C), 5.0f), acc = random_values<float>(P * C, rng);
    const std::vector<float> prior = acc;
    bevkd::feature_mse mse({mse_normalize::per_pillar_l2, 1e-3, reduction::sum});
    const auto r = mse(exec, view(s), view(t), bevkd::bev_nhwc(plain.data(), 1, 1, P, C), io);
    CHECK(std::isfinite(r.loss));
    mse.options.accumulate = true;
    mse(exec, view(s), view(t), bevkd::bev_nhwc(acc.data(), 1, 1, P, C), io);
    double want = 0;
    int mismatches = 0;
    for (index_t p = 0; p < P; ++p) {
      const std::vector<double> s_row(s.begin() + static_cast<std::ptrdiff_t>(at(p, 0)), s.begin() + static_cast<std::ptrdiff_t>(at(p + 1, 0)));
      const std::vector<double> t_row(t.begin() + static_cast<std::ptrdiff_t>(at(p, 0)), t.begin() + static_cast<std::ptrdiff_t>(at(p + 1, 0)));
      const bool excluded = w[static_cast<std::size_t>(p)] == 0.0f;
      const auto ref = mse_reference(s_row, t_row, true, mse.options.eps);
      if (!excluded) want += ref.loss;
      double row_scale = 0;  // gradients are differences of the row's terms: errors scale with its largest
      for (double g : ref.grad) row_scale = std::max(row_scale, std::fabs(g));
      for (index_t c = 0; c < C; ++c) {
        const std::size_t i = at(p, c);
        const double expected = ref.grad[static_cast<std::size_t>(c)];
        const bool ok = excluded ? plain[i] == 0.0f && std::memcmp(&acc[i], &prior[i], sizeof(float)) == 0
                                 : std::fabs(plain[i] - expected) <= 1e-5 * (std::fabs(expected) + row_scale) &&
                                       acc[i] == doctest::Approx(prior[i] + plain[i]).epsilon(1e-6);
        if (!ok && ++mismatches <= 5) FAIL_CHECK("pillar ", p, " channel ", c, ": ", plain[i], " / ", acc[i]);
      }
    }
    CHECK(mismatches == 0);
    CHECK(r.loss == doctest::Approx(want).epsilon(1e-5));
    w[3] = 1.0f;  // the NaN pillar counts again
    CHECK(std::isnan(mse(exec, view(s), view(t), bevkd::bev_nhwc(acc.data(), 1, 1, P, C), io).loss));
  }
}
