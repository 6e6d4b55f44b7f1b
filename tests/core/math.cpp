// bevkd tests: the library's vectorisable exp/log/log1p against libm in double, with exact special values.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/core/math.hpp>
#include <bevkd/losses/detail/kl_rows.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>

#include "support/seed.hpp"

namespace {

// Distance in units in the last place between a float and the correctly rounded double reference.
std::int64_t ulp_distance(float got, double want) {
  const float w = static_cast<float>(want);
  if (got == w) return 0;
  std::int32_t a, b;
  std::memcpy(&a, &got, 4);
  std::memcpy(&b, &w, 4);
  return std::llabs(static_cast<std::int64_t>(a) - b);
}

// The contract of a nonpositive exponential (e^x: exp_nonpositive, or 2^x), checked on one implementation of it:
// within 2 ulp of `exact` from `lowest` (whose result is normal) to 0, exactly 1 at 0, exactly 0 for each of
// `zero_args` (below the range, -inf), NaN kept.
template <class Exp, class Exact>
void check_nonpositive_exponential(Exp exp_np, Exact exact, float lowest, std::initializer_list<float> zero_args) {
  BEVKD_TEST_RNG(rng);
  std::uniform_real_distribution<float> arg(lowest, 0.0f);
  std::int64_t worst = 0;
  for (int i = 0; i < 200000; ++i) {
    const float x = arg(rng);
    worst = std::max(worst, ulp_distance(exp_np(x), exact(static_cast<double>(x))));
  }
  CHECK(worst <= 2);
  CHECK(exp_np(0.0f) == 1.0f);
  CHECK(exp_np(-0.0f) == 1.0f);
  CHECK(std::fpclassify(exp_np(lowest)) == FP_NORMAL);
  for (float x : zero_args) CHECK(exp_np(x) == 0.0f);
  CHECK(exp_np(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(std::isnan(exp_np(std::nanf(""))));
}

// check_nonpositive_exponential for e^x.
template <class Exp>
void check_exp_nonpositive(Exp exp_np) {
  check_nonpositive_exponential(
      exp_np, [](double x) { return std::exp(x); }, -87.33f, {-87.34f, -100.0f, -104.0f, -1e4f, -3.4e38f});
}

}  // namespace

TEST_CASE("exp and log are within 2 ulp of the correctly rounded result") {
  BEVKD_TEST_RNG(rng);
  std::uniform_real_distribution<float> exp_arg(-104.0f, 89.0f);
  std::uniform_real_distribution<float> log_exponent(-149.0f, 127.0f);
  std::int64_t worst_exp = 0, worst_log = 0;
  for (int i = 0; i < 200000; ++i) {
    const float x = exp_arg(rng);
    worst_exp = std::max(worst_exp, ulp_distance(bevkd::math::exp(x), std::exp(static_cast<double>(x))));
    const float y = std::exp2(log_exponent(rng));
    worst_log = std::max(worst_log, ulp_distance(bevkd::math::log(y), std::log(static_cast<double>(y))));
  }
  CHECK(worst_exp <= 2);
  CHECK(worst_log <= 2);
}

TEST_CASE("exp_nonpositive is within 2 ulp down to -87.33, and exactly 0 below, for -inf and at the subnormals") {
  check_exp_nonpositive([](float x) { return bevkd::math::exp_nonpositive(x); });
  CHECK(bevkd::math::exp_nonpositive(-1.0) == std::exp(-1.0));  // double: libm
}

#if defined(BEVKD_HOST_AVX512)
TEST_CASE("the AVX-512 exp2_of_shift of the fp32 row blocks keeps the same contract for 2^(d k) in every lane") {
  // k = 1, and log2(e) / tau at tau = 1 and 0.3, as the blocks form it.
  for (const float k : {1.0f, bevkd::detail::avx512::exp2_factor(1.0f), bevkd::detail::avx512::exp2_factor(1 / 0.3f)}) {
    CAPTURE(k);
    const bevkd::detail::avx512::exp2_of_shift exp2(k);
    const auto exp2_lanes = [&](float d) {
      const auto result = exp2(_mm512_set1_ps(d));
      float lanes[16];
      _mm512_storeu_ps(lanes, result.value);
      for (int l = 1; l < 16; ++l) CHECK(std::memcmp(&lanes[l], &lanes[0], sizeof(float)) == 0);
      CHECK(result.nonzero == (lanes[0] != 0.0f ? 0xffff : 0));  // NaN counts as not 0
      return lanes[0];
    };
    const float lowest = bevkd::detail::avx512::exp2_of_shift::lowest(k);
    const float below = std::nextafter(lowest, -std::numeric_limits<float>::infinity());
    CHECK(static_cast<double>(lowest) * k >= -126.0);
    CHECK(static_cast<double>(below) * k < -126.0);
    check_nonpositive_exponential(
        exp2_lanes, [&](double d) { return std::exp2(d * k); }, lowest,
        {below, -140.0f / k, -149.0f / k, -1e4f, -3.4e38f});
  }
}

TEST_CASE("the AVX-512 log1p_unit of the fp32 sigmoid lanes is within 2 ulp on [0, 1], 0 at 0, NaN kept") {
  const auto log1p_lanes = [](float e) {
    float lanes[16];
    _mm512_storeu_ps(lanes, bevkd::detail::avx512::log1p_unit(_mm512_set1_ps(e)));
    for (int l = 1; l < 16; ++l) CHECK(std::memcmp(&lanes[l], &lanes[0], sizeof(float)) == 0);
    return lanes[0];
  };
  BEVKD_TEST_RNG(rng);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f), exponent(-150.0f, 0.0f);
  std::int64_t worst = 0;
  for (int i = 0; i < 200000; ++i) {
    // Uniform on [0, 1], then spread over the binades down to the subnormals (e = e^-|x| for large |x|).
    const float e = i % 2 ? unit(rng) : std::min(1.0f, std::exp2(exponent(rng)));
    worst = std::max(worst, ulp_distance(log1p_lanes(e), std::log1p(static_cast<double>(e))));
  }
  CHECK(worst <= 2);
  for (int j = 0; j <= 32; ++j) {  // the table's points, and 1 (clamped to the last entry)
    const float e = static_cast<float>(j) / 32.0f;
    CHECK(ulp_distance(log1p_lanes(e), std::log1p(static_cast<double>(e))) <= 1);
  }
  CHECK(log1p_lanes(0.0f) == 0.0f);
  CHECK(std::isnan(log1p_lanes(std::nanf(""))));
}
#endif

TEST_CASE("exp, log and log1p handle inf, NaN, zero and the range ends exactly") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(bevkd::math::exp(-inf) == 0.0f);
  CHECK(bevkd::math::exp(inf) == inf);
  CHECK(std::isnan(bevkd::math::exp(std::nanf(""))));
  CHECK(bevkd::math::exp(0.0f) == 1.0f);
  CHECK(bevkd::math::exp(89.0f) == inf);
  CHECK(bevkd::math::exp(-104.0f) == 0.0f);
  CHECK(bevkd::math::exp(-103.0f) > 0.0f);  // subnormal results are kept
  CHECK(bevkd::math::log(0.0f) == -inf);
  CHECK(bevkd::math::log(inf) == inf);
  CHECK(std::isnan(bevkd::math::log(-1.0f)));
  CHECK(std::isnan(bevkd::math::log(std::nanf(""))));
  CHECK(bevkd::math::log(1.0f) == 0.0f);
  CHECK(bevkd::math::log(1e-45f) == doctest::Approx(std::log(static_cast<double>(1e-45f))).epsilon(1e-6));  // subnormal
  for (float x : {1e-30f, 1e-8f, 1e-3f, 0.5f, 1.0f})
    CHECK(bevkd::math::log1p_nonneg(x) == doctest::Approx(std::log1p(static_cast<double>(x))).epsilon(3e-7));
  // With the reciprocal given (as the sigmoid shares it), over [0, 1] where the sigmoid's e^-|x| lies, and its tails.
  float worst = 0;
  for (float x = 0; x <= 1.0f; x += 1.0f / 4099) {
    for (float y : {x, x * 1e-6f, x * 1e-20f}) {
      const double want = std::log1p(static_cast<double>(y));
      const float got = bevkd::math::log1p_nonneg(y, 1.0f / (1.0f + y));
      if (want > 0) worst = std::max(worst, static_cast<float>(std::fabs(got - want) / want));
      else CHECK(got == 0.0f);
    }
  }
  CHECK(worst < 3e-7f);
  // The sigmoid the Bernoulli KL uses (shares its exponential with the softplus terms).
  CHECK(bevkd::detail::logistic<float>(-inf).prob == 0.0f);
  CHECK(bevkd::detail::logistic<float>(inf).prob == 1.0f);
  CHECK(bevkd::detail::logistic<float>(-100.0f).prob > 0.0f);
}
