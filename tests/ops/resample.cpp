// bevkd tests: the BEV resample op on the host (PyTorch values, reference, adjoint, gradient, layouts, dtypes, errors).
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/bevkd.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "ops/resample_testing.hpp"

using bevkd::index_t;
using bevkd::resample_mode;
using bevkd::resample_options;
using namespace resample_test;

namespace {

/// @brief Forward of a single-channel [1, h, w, 1] grid given row-major, in double.
std::vector<double> resample_2d(const std::vector<double>& x, index_t h, index_t w, index_t h2, index_t w2,
                                resample_options opt) {
  std::vector<double> y(static_cast<std::size_t>(h2 * w2), -99.0);
  bevkd::host_exec exec;
  bevkd::bev_resample(opt).forward(exec, bevkd::grid_nhwc<const double>(x.data(), 1, h, w, 1),
                                   bevkd::grid_nhwc(y.data(), 1, h2, w2, 1));
  return y;
}

void check_values(const std::vector<double>& actual, const std::vector<double>& expected) {
  REQUIRE(actual.size() == expected.size());
  for (std::size_t k = 0; k < actual.size(); ++k) {
    INFO("index " << k);
    CHECK(actual[k] == doctest::Approx(expected[k]).epsilon(1e-15));
  }
}

template <class T>
bool bits_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// @brief Unit roundoff of T's storage (2^-p for p significand bits after the leading one).
template <class T>
double unit_roundoff() {
  if constexpr (std::is_same<T, bevkd::half>::value)
    return std::ldexp(1.0, -11);
  else if constexpr (std::is_same<T, bevkd::bfloat16>::value)
    return std::ldexp(1.0, -8);
  else
    return std::numeric_limits<T>::epsilon() / 2;
}

/// @brief Bit for bit, or, in a build that lets the compiler contract a * b + c into one FMA (__FMA__: GCC
/// contracts by default), within a few roundings of T relative to the largest magnitude in the tensor (the sums
/// mix signs, so a rounding's size follows the terms, not the result): the host's pixel loops and the per-element
/// loop may be contracted differently (seen with -march=native on Zen 4: bilinear, every dtype).
template <class T>
bool equal_but_for_contraction(const std::vector<T>& a, const std::vector<T>& b) {
#if defined(__FMA__)
  if (a.size() != b.size()) return false;
  double scale = 0;
  for (std::size_t k = 0; k < a.size(); ++k)
    scale = std::max({scale, std::abs(to_double(a[k])), std::abs(to_double(b[k]))});
  for (std::size_t k = 0; k < a.size(); ++k) {
    const double x = to_double(a[k]), y = to_double(b[k]);
    if (!(x == y || std::abs(x - y) <= 8 * unit_roundoff<T>() * scale)) return false;
  }
  return true;
#else
  return bits_equal(a, b);
#endif
}

/// @brief <a, b> over logical vectors.
double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
  return s;
}

}  // namespace

TEST_CASE("resample reproduces hand-computed PyTorch F.interpolate values") {
  const resample_options bilinear{resample_mode::bilinear, false, false};
  const resample_options aligned{resample_mode::bilinear, true, false};
  const resample_options nearest{resample_mode::nearest, false, false};
  const resample_options area{resample_mode::area, false, false};
  const std::vector<double> x22 = {1, 2, 3, 4};  // torch.arange(1, 5.).view(1, 1, 2, 2)

  SUBCASE("2x2 -> 4x4 bilinear, align_corners=False") {
    // s = 2/4 = 0.5, src = 0.5 (j + 0.5) - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last cell):
    // per axis [x0, 0.75 x0 + 0.25 x1, 0.25 x0 + 0.75 x1, x1]; row [1, 2] -> [1, 1.25, 1.75, 2],
    // row [3, 4] -> [3, 3.25, 3.75, 4], then the same mix down the columns (PyTorch's Upsample docs).
    check_values(resample_2d(x22, 2, 2, 4, 4, bilinear), {1.0, 1.25, 1.75, 2.0,  //
                                                          1.5, 1.75, 2.25, 2.5,  //
                                                          2.5, 2.75, 3.25, 3.5,  //
                                                          3.0, 3.25, 3.75, 4.0});
  }
  SUBCASE("2x2 -> 4x4 bilinear, align_corners=True") {
    // s = (2 - 1) / (4 - 1) = 1/3, src = j / 3: weights on x1 of 0, 1/3, 2/3, 1.
    check_values(resample_2d(x22, 2, 2, 4, 4, aligned), {1.0, 4.0 / 3, 5.0 / 3, 2.0,       //
                                                         5.0 / 3, 2.0, 7.0 / 3, 8.0 / 3,   //
                                                         7.0 / 3, 8.0 / 3, 3.0, 10.0 / 3,  //
                                                         3.0, 10.0 / 3, 11.0 / 3, 4.0});
  }
  SUBCASE("2x2 -> 4x4 nearest and area") {
    // nearest: floor(j * 0.5) = 0, 0, 1, 1; area windows [floor(j/2), ceil((j+1)/2)) = {0}, {0}, {1}, {1}.
    const std::vector<double> expected = {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4};
    check_values(resample_2d(x22, 2, 2, 4, 4, nearest), expected);
    check_values(resample_2d(x22, 2, 2, 4, 4, area), expected);
  }
  SUBCASE("4x4 -> 2x2 downsampling") {
    const std::vector<double> x44 = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};  // torch.arange(16.)
    // bilinear: s = 2, src = 2 (j + 0.5) - 0.5 = 0.5, 2.5: the 2x2 block means, like area.
    check_values(resample_2d(x44, 4, 4, 2, 2, bilinear), {2.5, 4.5, 10.5, 12.5});
    check_values(resample_2d(x44, 4, 4, 2, 2, area), {2.5, 4.5, 10.5, 12.5});
    // align_corners: s = 3, src = 0, 3 (the corners); nearest: floor(2 j) = 0, 2.
    check_values(resample_2d(x44, 4, 4, 2, 2, aligned), {0, 3, 12, 15});
    check_values(resample_2d(x44, 4, 4, 2, 2, nearest), {0, 2, 8, 10});
  }
  SUBCASE("odd sizes along one axis: 1x3 -> 1x2 and 1x7 -> 1x3") {
    const std::vector<double> x3 = {1, 2, 4};
    // s = 1.5, src = 0.25 -> 0.75*1 + 0.25*2 = 1.25; src = 1.75 -> 0.25*2 + 0.75*4 = 3.5.
    check_values(resample_2d(x3, 1, 3, 1, 2, bilinear), {1.25, 3.5});
    // s = (3 - 1) / (2 - 1) = 2: src = 0, 2.
    check_values(resample_2d(x3, 1, 3, 1, 2, aligned), {1, 4});
    // floor(0 * 1.5) = 0, floor(1.5) = 1.
    check_values(resample_2d(x3, 1, 3, 1, 2, nearest), {1, 2});
    // windows [0, ceil(1.5)) = {0, 1} and [floor(1.5), 3) = {1, 2}: they overlap.
    check_values(resample_2d(x3, 1, 3, 1, 2, area), {1.5, 3});
    const std::vector<double> x7 = {1, 2, 3, 4, 5, 6, 7};
    // windows [0, 3), [2, 5), [4, 7): means 2, 4, 6.
    check_values(resample_2d(x7, 1, 7, 1, 3, area), {2, 4, 6});
  }
  SUBCASE("nearest computes its scale in float, like PyTorch") {
    // 2 -> 82: float(2) / 82 = 0.024390243 rounds below 1/41, so float(41) * scale = 0.99999994
    // and floorf gives 0, where the exact rule floor(41 * 2 / 82) would give 1.
    const std::vector<double> x2 = {1, 2};
    const auto y = resample_2d(x2, 1, 2, 1, 82, nearest);
    CHECK(y[40] == 1);
    CHECK(y[41] == 1);
    CHECK(y[42] == 2);
  }
}

TEST_CASE_TEMPLATE("resample forward and backward match the double reference in every layout", T, double, float,
                   bevkd::half, bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  for (const auto& rc : all_cases())
    for (layout lay : all_layouts) {
      INFO(rc.name() << " " << layout_name(lay));
      const bevkd::bev_resample op(rc.opt);
      const auto in = random_grid<T>(lay, rc.in, rng);
      const auto out_before = random_grid<T>(lay, rc.out(), rng);
      auto out = out_before;
      op.forward(exec, in.cview(), out.view());
      check_close<T>(out.logical(), apply_separable<T>(rc, in.logical(), false), "forward");
      check_gaps_untouched(out, out_before);

      const auto grad_out = random_grid<T>(lay, rc.out(), rng);
      const auto grad_in_before = random_grid<T>(lay, rc.in, rng);
      auto grad_in = grad_in_before;
      op.backward(exec, grad_out.cview(), grad_in.view());
      check_close<T>(grad_in.logical(), apply_separable<T>(rc, grad_out.logical(), true), "backward");
      check_gaps_untouched(grad_in, grad_in_before);
    }
}

TEST_CASE("resample matches the reference at BEV sizes: 50x50 <-> 200x200") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  for (const auto& opt : all_modes())
    for (const bool up : {true, false}) {
      const index_t a = up ? 50 : 200, b = up ? 200 : 50;
      const resample_case rc{opt, {1, a, a, 2}, b, b};
      INFO(rc.name());
      const auto in = random_grid<float>(layout::nchw, rc.in, rng);
      auto out = random_grid<float>(layout::nchw, rc.out(), rng);
      bevkd::bev_resample(opt).forward(exec, in.cview(), out.view());
      check_close<float>(out.logical(), apply_separable<float>(rc, in.logical(), false), "forward");
      const auto grad_out = random_grid<float>(layout::nhwc, rc.out(), rng);
      auto grad_in = random_grid<float>(layout::nhwc, rc.in, rng);
      bevkd::bev_resample(opt).backward(exec, grad_out.cview(), grad_in.view());
      check_close<float>(grad_in.logical(), apply_separable<float>(rc, grad_out.logical(), true), "backward");
    }
}

TEST_CASE_TEMPLATE("an equal-size resample is an exact copy in every mode", T, double, float, bevkd::half,
                   bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  for (const auto& opt : all_modes()) {
    INFO(resample_case{opt, {}, 0, 0}.name());
    const shape s{2, 9, 7, 3};
    const auto in = random_grid<T>(layout::nhwc, s, rng);
    auto out = random_grid<T>(layout::nhwc, s, rng);
    bevkd::bev_resample(opt).forward(exec, in.cview(), out.view());
    CHECK(bits_equal(out.storage, in.storage));
    auto grad_in = random_grid<T>(layout::nhwc, s, rng);
    bevkd::bev_resample(opt).backward(exec, in.cview(), grad_in.view());
    CHECK(bits_equal(grad_in.storage, in.storage));
  }
}

TEST_CASE_TEMPLATE("2x area downsampling is the exact 2x2 block mean", T, double, float, bevkd::half, bevkd::bfloat16) {
  // Integer inputs make every partial sum exact, so the mean is exact before the one final rounding to T.
  BEVKD_TEST_RNG(rng);
  std::uniform_int_distribution<int> dist(-256, 256);
  const index_t B = 2, H = 10, W = 8, C = 3;
  std::vector<T> in(static_cast<std::size_t>(B * H * W * C)), out(static_cast<std::size_t>(B * H * W * C / 4));
  for (auto& v : in) v = T(static_cast<float>(dist(rng)));
  bevkd::host_exec exec;
  bevkd::bev_resample({resample_mode::area, false, false})
      .forward(exec, bevkd::grid_nchw<const T>(in.data(), B, C, H, W),
               bevkd::grid_nchw(out.data(), B, C, H / 2, W / 2));
  const auto x = bevkd::grid_nchw<const T>(in.data(), B, C, H, W);
  const auto y = bevkd::grid_nchw<const T>(out.data(), B, C, H / 2, W / 2);
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H / 2; ++h)
      for (index_t w = 0; w < W / 2; ++w)
        for (index_t c = 0; c < C; ++c) {
          const double mean = (to_double(x(b, 2 * h, 2 * w, c)) + to_double(x(b, 2 * h, 2 * w + 1, c)) +
                               to_double(x(b, 2 * h + 1, 2 * w, c)) + to_double(x(b, 2 * h + 1, 2 * w + 1, c))) /
                              4;
          const T expected = T(static_cast<float>(mean));
          CHECK(std::memcmp(&y(b, h, w, c), &expected, sizeof(T)) == 0);
        }
}

TEST_CASE("backward is the adjoint of forward: <A x, y> = <x, A^T y>") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  for (const auto& rc : all_cases())
    for (layout lay : {layout::nchw, layout::sequence_first}) {
      INFO(rc.name() << " " << layout_name(lay));
      const bevkd::bev_resample op(rc.opt);
      const auto x = random_grid<double>(lay, rc.in, rng);
      const auto y = random_grid<double>(lay, rc.out(), rng);
      auto ax = random_grid<double>(lay, rc.out(), rng);
      auto aty = random_grid<double>(lay, rc.in, rng);
      op.forward(exec, x.cview(), ax.view());
      op.backward(exec, y.cview(), aty.view());
      const double lhs = dot(ax.logical(), y.logical()), rhs = dot(x.logical(), aty.logical());
      CHECK(lhs == doctest::Approx(rhs).epsilon(1e-13));
    }
}

TEST_CASE("backward equals the finite-difference gradient of <forward(x), y>") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  for (const auto& rc : all_cases()) {
    INFO(rc.name());
    const bevkd::bev_resample op(rc.opt);
    auto x = random_grid<double>(layout::nhwc, rc.in, rng);
    const auto y = random_grid<double>(layout::nhwc, rc.out(), rng);
    auto grad = random_grid<double>(layout::nhwc, rc.in, rng);
    op.backward(exec, y.cview(), grad.view());
    auto f = [&] {
      auto out = random_grid<double>(layout::nhwc, rc.out(), rng);
      op.forward(exec, x.cview(), out.view());
      return dot(out.logical(), y.logical());
    };
    const double h = 1e-3;
    for (std::size_t k = 0; k < x.storage.size(); k += 7) {
      const double saved = x.storage[k];
      x.storage[k] = saved + h;
      const double up = f();
      x.storage[k] = saved - h;
      const double down = f();
      x.storage[k] = saved;
      INFO("element " << k);
      CHECK((up - down) / (2 * h) == doctest::Approx(grad.storage[k]).epsilon(1e-8).scale(1.0));
    }
  }
}

TEST_CASE_TEMPLATE("accumulate adds into the written buffer", T, double, float, bevkd::half, bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  for (const auto& rc : all_cases()) {
    INFO(rc.name());
    resample_options opt = rc.opt;
    const auto grad_out = random_grid<T>(layout::padded, rc.out(), rng);
    const auto prior = random_grid<T>(layout::padded, rc.in, rng);
    auto fresh = prior, summed = prior;
    bevkd::bev_resample(opt).backward(exec, grad_out.cview(), fresh.view());
    opt.accumulate = true;
    bevkd::bev_resample(opt).backward(exec, grad_out.cview(), summed.view());
    std::vector<double> expected = prior.logical();
    const auto f = fresh.logical();
    for (std::size_t k = 0; k < expected.size(); ++k) expected[k] += f[k];
    check_close<T>(summed.logical(), expected, "accumulated backward");
    check_gaps_untouched(summed, prior);

    // Forward accumulates the same way.
    const auto in = random_grid<T>(layout::nchw, rc.in, rng);
    const auto out_prior = random_grid<T>(layout::nchw, rc.out(), rng);
    auto out = out_prior;
    bevkd::bev_resample(opt).forward(exec, in.cview(), out.view());
    auto expected_out = apply_separable<T>(rc, in.logical(), false);
    const auto p = out_prior.logical();
    for (std::size_t k = 0; k < expected_out.size(); ++k) expected_out[k] += p[k];
    check_close<T>(out.logical(), expected_out, "accumulated forward");
  }
}

TEST_CASE("results are bit-identical for every host thread count") {
  BEVKD_TEST_RNG(rng);
  const resample_case rc{{resample_mode::bilinear, false, false}, {2, 37, 29, 5}, 80, 61};
  const auto in = random_grid<float>(layout::sequence_first, rc.in, rng);
  const auto g = random_grid<float>(layout::sequence_first, rc.out(), rng);
  for (const auto& opt : all_modes()) {
    std::vector<std::vector<float>> outs, grads;
    for (int threads : {1, 2, 3}) {
      bevkd::host_exec exec(threads);
      auto out = random_grid<float>(layout::sequence_first, rc.out(), rng);
      auto grad = random_grid<float>(layout::sequence_first, rc.in, rng);
      bevkd::bev_resample(opt).forward(exec, in.cview(), out.view());
      bevkd::bev_resample(opt).backward(exec, g.cview(), grad.view());
      outs.push_back(out.storage);
      grads.push_back(grad.storage);
    }
    CHECK(bits_equal(outs[0], outs[1]));
    CHECK(bits_equal(outs[0], outs[2]));
    CHECK(bits_equal(grads[0], grads[1]));
    CHECK(bits_equal(grads[0], grads[2]));
  }
}

namespace {

/// @brief Runs a kernel one element per call, in order, on the host: the device's partition of the work.
struct element_exec {
  template <class F>
  void parallel_for(index_t count, const F& f) const {
    for (index_t i = 0; i < count; ++i) f(i);
  }
};

}  // namespace

TEST_CASE_TEMPLATE("the host's per-pixel loops equal the device's per-element kernels bit for bit (but for FMA)", T,
                   double, float, bevkd::half, bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  element_exec elements;
  for (auto rc : all_cases())
    for (layout lay : all_layouts)
      for (bool accumulate : {false, true}) {
        rc.in.C = 70;  // more than one 64-channel block
        rc.opt.accumulate = accumulate;
        INFO(rc.name() << " " << layout_name(lay) << " accumulate " << accumulate);
        const bevkd::bev_resample op(rc.opt);
        const auto in = random_grid<T>(lay, rc.in, rng);
        const auto out_before = random_grid<T>(lay, rc.out(), rng);
        auto by_pixel = out_before, by_element = out_before;
        op.forward(exec, in.cview(), by_pixel.view());
        op.forward(elements, in.cview(), by_element.view());
        CHECK(equal_but_for_contraction(by_pixel.storage, by_element.storage));

        const auto grad_in_before = random_grid<T>(lay, rc.in, rng);
        auto grad_by_pixel = grad_in_before, grad_by_element = grad_in_before;
        op.backward(exec, out_before.cview(), grad_by_pixel.view());
        op.backward(elements, out_before.cview(), grad_by_element.view());
        CHECK(equal_but_for_contraction(grad_by_pixel.storage, grad_by_element.storage));
      }
}

TEST_CASE("bad calls are rejected naming the argument, and nothing is written") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  auto in = random_grid<float>(layout::nhwc, {2, 6, 5, 3}, rng);
  auto out = random_grid<float>(layout::nhwc, {2, 4, 4, 3}, rng);
  const auto in_before = in.storage, out_before = out.storage;
  const bevkd::bev_resample op;

  // Runs a forward that must throw, and checks the argument named and that no buffer changed.
  auto rejects = [&](const bevkd::bev_resample& f, bevkd::grid_view<const float> src, bevkd::grid_view<float> dst,
                     const std::string& argument, bool backward = false) {
    INFO("expected argument " << argument);
    try {
      if (backward)
        f.backward(exec, src, dst);
      else
        f.forward(exec, src, dst);
      FAIL("no exception");
    } catch (const bevkd::invalid_argument& e) {
      CHECK(e.argument() == argument);
    }
    CHECK(bits_equal(in.storage, in_before));
    CHECK(bits_equal(out.storage, out_before));
  };

  auto src = in.cview();
  auto dst = out.view();
  SUBCASE("batch mismatch") {
    dst.extent[0] = 1;
    rejects(op, src, dst, "out (B).extent[0]");
  }
  SUBCASE("channel mismatch") {
    dst.extent[3] = 2;
    rejects(op, src, dst, "out (C).extent[3]");
  }
  SUBCASE("empty output for a non-empty input") {
    dst.extent[1] = 0;
    rejects(op, src, dst, "out.extent[1] (H2)");
  }
  SUBCASE("empty input width for a non-empty output (area has no window to average)") {
    src.extent[2] = 0;
    rejects(bevkd::bev_resample({resample_mode::area, false, false}), src, dst, "in.extent[2] (W)");
  }
  SUBCASE("spatial extent beyond 2^31 - 1") {
    src.extent[1] = index_t(1) << 31;
    src.stride[1] = 0;  // a broadcast input, so the view itself is valid
    rejects(op, src, dst, "in.extent[1] (H)");
  }
  SUBCASE("output aliasing the input") {
    auto alias = bevkd::make_view<float, 4>(in.storage.data(), {2, 4, 4, 3}, {48, 12, 3, 1});
    rejects(op, src, alias, "out");
  }
  SUBCASE("output mapping two elements to one address") {
    dst.stride[2] = 0;
    rejects(op, src, dst, "out.stride[2]");
  }
  SUBCASE("negative stride") {
    src.stride[1] = -15;
    rejects(op, src, dst, "in.stride[1]");
  }
  SUBCASE("null data") {
    src.data = nullptr;
    rejects(op, src, dst, "in.data");
  }
  SUBCASE("invalid mode") {
    rejects(bevkd::bev_resample({static_cast<resample_mode>(7), false, false}), src, dst, "options.mode");
  }
  SUBCASE("backward: grad_out batch mismatch") {
    auto g = out.cview();
    g.extent[0] = 3;
    rejects(op, g, in.view(), "grad_out (B).extent[0]", true);
  }
  SUBCASE("backward: grad_in aliasing grad_out") {
    auto g = bevkd::make_view<const float, 4>(in.storage.data(), {2, 4, 4, 3}, {48, 12, 3, 1});
    rejects(op, g, in.view(), "grad_in", true);
  }
}

TEST_CASE("an empty batch or channel count is a no-op") {
  bevkd::host_exec exec;
  const bevkd::bev_resample op;
  SUBCASE("B = 0 with null buffers") {
    op.forward(exec, bevkd::grid_nhwc<const float>(nullptr, 0, 6, 5, 3), bevkd::grid_nhwc<float>(nullptr, 0, 4, 4, 3));
    op.backward(exec, bevkd::grid_nhwc<const float>(nullptr, 0, 4, 4, 3), bevkd::grid_nhwc<float>(nullptr, 0, 6, 5, 3));
  }
  SUBCASE("C = 0, even with an empty input grid") {
    op.forward(exec, bevkd::grid_nhwc<const double>(nullptr, 2, 0, 0, 0),
               bevkd::grid_nhwc<double>(nullptr, 2, 4, 4, 0));
  }
  SUBCASE("B = 0 with an empty output grid") {
    op.forward(exec, bevkd::grid_nhwc<const double>(nullptr, 0, 6, 6, 2),
               bevkd::grid_nhwc<double>(nullptr, 0, 0, 0, 2));
  }
}
