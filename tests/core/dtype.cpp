// bevkd tests: half and bfloat16 storage types round to nearest even and widen exactly.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/core/dtype.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

namespace {

// Reference rounding: pick the nearer of the two neighbouring representable values (ties to even bits).
template <class S>
S round_reference(float x) {
  S best = S::from_bits(0);
  double best_err = HUGE_VAL;
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const S cand = S::from_bits(static_cast<std::uint16_t>(b));
    const float v = static_cast<float>(cand);
    if (!std::isfinite(v)) continue;
    const double err = std::fabs(static_cast<double>(v) - static_cast<double>(x));
    if (err < best_err || (err == best_err && (b & 1u) == 0 && std::signbit(v) == std::signbit(x))) {
      best = cand;
      best_err = err;
    }
  }
  return best;
}

}  // namespace

TEST_CASE("every half and bfloat16 bit pattern widens to float and rounds back to itself") {
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float h = static_cast<float>(bevkd::half::from_bits(bits));
    const float bf = static_cast<float>(bevkd::bfloat16::from_bits(bits));
    if (std::isnan(h)) {
      CHECK(std::isnan(static_cast<float>(bevkd::half(h))));
    } else {
      CHECK(bevkd::half(h).bits == bits);
    }
    if (std::isnan(bf)) {
      CHECK(std::isnan(static_cast<float>(bevkd::bfloat16(bf))));
    } else {
      CHECK(bevkd::bfloat16(bf).bits == bits);
    }
  }
}

TEST_CASE("float to half and bfloat16 rounds to nearest even, overflows to inf, keeps NaN") {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> exponent(-26.0f, 15.99f);  // finite halves (the reference skips inf)
  for (int i = 0; i < 300; ++i) {
    const float x = (i % 2 ? -1.0f : 1.0f) * std::exp2(exponent(rng));
    INFO("x = ", x);
    CHECK(bevkd::half(x).bits == round_reference<bevkd::half>(x).bits);
    if (std::fabs(x) < 3e38f) CHECK(bevkd::bfloat16(x).bits == round_reference<bevkd::bfloat16>(x).bits);
  }
  CHECK(bevkd::half(65520.0f).bits == 0x7c00u);  // halfway to 2^16 rounds up to inf
  CHECK(bevkd::half(65519.0f).bits == 0x7bffu);
  CHECK(bevkd::half(1.0f + std::exp2(-11.0f)).bits == 0x3c00u);  // tie to even
  CHECK(bevkd::half(std::numeric_limits<float>::infinity()).bits == 0x7c00u);
  CHECK(std::isnan(static_cast<float>(bevkd::half(std::nanf("")))));
  CHECK(std::isnan(static_cast<float>(bevkd::bfloat16(std::nanf("")))));
  CHECK(bevkd::bfloat16(1.0f + std::exp2(-8.0f)).bits == 0x3f80u);  // tie to even
  CHECK(static_cast<float>(bevkd::half::from_bits(0x0001u)) == std::exp2(-24.0f));
}
