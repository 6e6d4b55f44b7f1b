// bevkd tests: the weight-inheritance transforms on the host against naive references and hand-computed values.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include "inherit/inherit_testing.hpp"

using bevkd::index_t;
using namespace inherit_test;

namespace {

std::vector<float> iota_values(std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t k = 0; k < n; ++k) v[k] = static_cast<float>(k) * 0.5f - 3.0f;
  return v;
}

std::vector<float> resize(const std::vector<float>& in, bevkd::grid_layout layout, index_t h, index_t w, index_t c,
                          index_t h2, index_t w2, bevkd::resize_options opt) {
  std::vector<float> out(static_cast<std::size_t>(h2 * w2 * c), -99.f);
  bevkd::host_exec exec;
  bevkd::resize_grid(exec, in.data(), layout, h, w, c, h2, w2, opt, out.data());
  return out;
}

}  // namespace

TEST_CASE("convert_elements rounds to nearest even and round-trips exactly where representable") {
  bevkd::host_exec exec;
  const std::vector<double> in = {1.0, -2.5, 1.0 + 1.0 / 2048, 65504.0, 1e-8};
  std::vector<bevkd::half> h(in.size());
  bevkd::convert_elements(exec, in.data(), h.data(), 5);
  CHECK(static_cast<float>(h[0]) == 1.0f);
  CHECK(static_cast<float>(h[1]) == -2.5f);
  CHECK(static_cast<float>(h[2]) == 1.0f);  // the tie rounds to even
  CHECK(static_cast<float>(h[3]) == 65504.0f);
  std::vector<float> back(in.size());
  bevkd::convert_elements(exec, h.data(), back.data(), 5);
  CHECK(back[1] == -2.5f);
  std::vector<bevkd::bfloat16> b(1);
  bevkd::convert_elements(exec, in.data() + 1, b.data(), 1);
  CHECK(static_cast<float>(b[0]) == -2.5f);
}

TEST_CASE("slice, channel selection, head averaging and permutation match naive loops") {
  bevkd::host_exec exec;
  const index_t outer = 2, dim = 8, inner = 3;
  const std::vector<float> x = iota_values(static_cast<std::size_t>(outer * dim * inner));
  auto at = [&](index_t o, index_t j, index_t k) { return x[static_cast<std::size_t>((o * dim + j) * inner + k)]; };
  const bevkd::axis_split split{outer, dim, inner};

  SUBCASE("slice") {
    std::vector<float> y(static_cast<std::size_t>(outer * 3 * inner));
    bevkd::slice_dim(exec, x.data(), split, 2, 3, y.data());
    for (index_t o = 0; o < outer; ++o)
      for (index_t j = 0; j < 3; ++j)
        for (index_t k = 0; k < inner; ++k) CHECK(y[static_cast<std::size_t>((o * 3 + j) * inner + k)] == at(o, 2 + j, k));
    CHECK_THROWS_AS(bevkd::slice_dim(exec, x.data(), split, 6, 3, y.data()), bevkd::invalid_argument);
  }
  SUBCASE("select") {
    const std::vector<index_t> index = {1, 4, 7};
    std::vector<float> y(static_cast<std::size_t>(outer * 3 * inner));
    bevkd::select_channels(exec, x.data(), split, index.data(), 3, y.data());
    for (index_t o = 0; o < outer; ++o)
      for (index_t j = 0; j < 3; ++j)
        for (index_t k = 0; k < inner; ++k)
          CHECK(y[static_cast<std::size_t>((o * 3 + j) * inner + k)] == at(o, index[static_cast<std::size_t>(j)], k));
  }
  SUBCASE("average heads: 4 heads x 2 -> 2 heads x 2, groups of 2") {
    std::vector<float> y(static_cast<std::size_t>(outer * 4 * inner));
    bevkd::average_head_groups(exec, x.data(), split, 4, 2, y.data());
    for (index_t o = 0; o < outer; ++o)
      for (index_t h = 0; h < 2; ++h)
        for (index_t e = 0; e < 2; ++e)
          for (index_t k = 0; k < inner; ++k) {
            const float expected = (at(o, (2 * h) * 2 + e, k) + at(o, (2 * h + 1) * 2 + e, k)) / 2;
            CHECK(y[static_cast<std::size_t>((o * 4 + h * 2 + e) * inner + k)] == expected);
          }
    CHECK_THROWS_AS(bevkd::average_head_groups(exec, x.data(), split, 4, 3, y.data()), bevkd::invalid_argument);
  }
  SUBCASE("permute [2, 8, 3] -> [3, 2, 8]") {
    std::vector<float> y(x.size());
    bevkd::permute_dims(exec, x.data(), {outer, dim, inner}, {2, 0, 1}, y.data());
    for (index_t o = 0; o < outer; ++o)
      for (index_t j = 0; j < dim; ++j)
        for (index_t k = 0; k < inner; ++k) CHECK(y[static_cast<std::size_t>((k * outer + o) * dim + j)] == at(o, j, k));
    CHECK_THROWS_AS(bevkd::permuted_shape({2, 3}, {0, 0}), bevkd::invalid_argument);
  }
}

TEST_CASE("importance ranking: L1/L2 norms, top-k with ties to the lower index, ascending result") {
  bevkd::host_exec exec;
  // [2 rows, 4 channels] along dim 1: channel norms L1 = {2, 6, 2, 4}, L2 = {sqrt 2, sqrt 20, 2, sqrt 8}.
  const std::vector<float> x = {1, -2, 0, 2, -1, 4, 2, -2};
  const bevkd::axis_split split{2, 4, 1};
  std::vector<double> l1(4), l2(4);
  bevkd::channel_importance(exec, x.data(), split, bevkd::importance_norm::l1, l1.data());
  bevkd::channel_importance(exec, x.data(), split, bevkd::importance_norm::l2, l2.data());
  CHECK(l1 == std::vector<double>{2, 6, 2, 4});
  CHECK(l2[1] == doctest::Approx(std::sqrt(20.0)));
  CHECK(bevkd::top_k_channels(l1, 2) == std::vector<index_t>{1, 3});
  CHECK(bevkd::top_k_channels(l1, 3) == std::vector<index_t>{0, 1, 3});  // tie 0 vs 2: the lower index wins
  CHECK(bevkd::top_k_channels(l2, 3) == std::vector<index_t>{1, 2, 3});
  CHECK(bevkd::top_k_channels({1.0, std::nan(""), 0.5}, 2) == std::vector<index_t>{0, 2});
  CHECK_THROWS_AS(bevkd::top_k_channels(l1, 5), bevkd::invalid_argument);
}

TEST_CASE("grid resize: identity is a copy in every mode and layout") {
  const std::vector<float> x = iota_values(5 * 7 * 3);
  for (const auto mode : {bevkd::resize_mode::bilinear, bevkd::resize_mode::bicubic, bevkd::resize_mode::area,
                          bevkd::resize_mode::nearest})
    for (const bool align : {false, true})
      for (const auto layout : {bevkd::grid_layout::hw_c, bevkd::grid_layout::c_hw}) {
        INFO(static_cast<int>(mode) << " " << align << " " << static_cast<int>(layout));
        CHECK(resize(x, layout, 5, 7, 3, 5, 7, {mode, align}) == x);
      }
}

TEST_CASE("grid resize: area downsampling by 2 is the 2x2 mean") {
  const index_t h = 4, w = 6, c = 2;
  const std::vector<float> x = iota_values(static_cast<std::size_t>(h * w * c));
  const std::vector<float> y = resize(x, bevkd::grid_layout::hw_c, h, w, c, 2, 3, {bevkd::resize_mode::area, false});
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 0; j < 3; ++j)
      for (index_t k = 0; k < c; ++k) {
        auto v = [&](index_t y0, index_t x0) { return x[static_cast<std::size_t>((y0 * w + x0) * c + k)]; };
        const float mean = (v(2 * i, 2 * j) + v(2 * i, 2 * j + 1) + v(2 * i + 1, 2 * j) + v(2 * i + 1, 2 * j + 1)) / 4;
        CHECK(y[static_cast<std::size_t>((i * 3 + j) * c + k)] == doctest::Approx(mean));
      }
}

TEST_CASE("grid resize: hand-computed bilinear and bicubic (PyTorch a = -0.75) values") {
  const std::vector<float> ramp = {0, 1, 2, 3};
  // [1, 4] -> [1, 8], bicubic, align_corners = False. j = 0: src -0.25, i0 = -1, t = 0.75, taps clamp to
  // {0, 0, 0, 1}: the value is w3 = W2(1.75 - ... ) = -0.10546875. j = 1: src 0.25, t = 0.25, taps {0, 0, 1, 2}:
  // 0.26171875 + 2 (-0.03515625) = 0.19140625.
  const std::vector<float> cubic = resize(ramp, bevkd::grid_layout::c_hw, 1, 4, 1, 1, 8, {bevkd::resize_mode::bicubic, false});
  CHECK(cubic[0] == -0.10546875f);
  CHECK(cubic[1] == 0.19140625f);
  CHECK(cubic[7] == 3.10546875f);  // mirror image of j = 0
  // align_corners = True maps the ends exactly.
  const std::vector<float> cubic_ac = resize(ramp, bevkd::grid_layout::c_hw, 1, 4, 1, 1, 7, {bevkd::resize_mode::bicubic, true});
  CHECK(cubic_ac[0] == 0.0f);
  CHECK(cubic_ac[6] == 3.0f);
  CHECK(cubic_ac[2] == doctest::Approx(1.0f));  // a cubic through a linear ramp reproduces it inside
  // Bilinear [0, 4] -> 4 (1-D table): sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last cell).
  const std::vector<float> two = {0, 4};
  std::vector<float> lin(4);
  bevkd::host_exec exec;
  bevkd::resize_table(exec, two.data(), 2, 1, 4, {}, lin.data());
  CHECK(lin == std::vector<float>{0, 1, 3, 4});
}

TEST_CASE("resize_along resizes one dimension of each outer slice") {
  bevkd::host_exec exec;
  const std::vector<double> x = {0, 10, 2, 20, 4, 30, 1, 1, 1, 1, 1, 1};  // [2, 3, 2]
  std::vector<double> y(2 * 2 * 2);
  bevkd::resize_along(exec, x.data(), bevkd::axis_split{2, 3, 2}, 2, {bevkd::resize_mode::bilinear, true}, y.data());
  CHECK(y == std::vector<double>{0, 10, 4, 30, 1, 1, 1, 1});
}
