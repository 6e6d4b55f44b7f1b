// bevkd tests: half and bfloat16 storage types round to nearest even and widen exactly.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/core/dtype.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>

#include "support/seed.hpp"

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
  BEVKD_TEST_RNG(rng);
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

#include <bevkd/core/detail/row_blocks.hpp>  // defines BEVKD_HOST_AVX512 on AVX-512 builds

#if defined(BEVKD_HOST_AVX512)
#include <vector>

namespace {

// Floats to probe the vector conversions with: every rounding case near 1 (the 16 bits below bfloat16's last, the 13
// below half's), ties, specials, subnormals, values around half's range, and random bit patterns.
std::vector<float> conversion_probes() {
  std::vector<float> probes;
  for (std::uint32_t low = 0; low < (1u << 16); ++low) probes.push_back(bevkd::detail::bits_float(0x3f800000u | low));
  for (std::uint32_t low = 0; low < (1u << 14); ++low) probes.push_back(bevkd::detail::bits_float(0xc0000000u | low));
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN(),
                  bevkd::detail::bits_float(0x7fa00001u), bevkd::detail::bits_float(0xffc12345u),
                  std::numeric_limits<float>::denorm_min(), 1e-40f, 6e-8f, 3e-8f, 6.1e-5f, 65504.0f, 65519.0f,
                  65520.0f, 1e5f, 3.4e38f, -3.4e38f})
    probes.push_back(v);
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) probes.push_back(bevkd::detail::bits_float(static_cast<std::uint32_t>(rng())));
  while (probes.size() % 16) probes.push_back(1.0f);
  return probes;
}

template <class T, class Scalar>
void check_narrow_lanes(Scalar to_bits) {
  using lanes = bevkd::detail::avx512::narrow_lanes<T>;
  const auto probes = conversion_probes();
  int mismatches = 0;
  for (std::size_t i = 0; i < probes.size(); i += 16) {
    std::uint16_t narrow[16];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(narrow), lanes::narrow(_mm512_loadu_ps(&probes[i])));
    float wide[16];
    _mm512_storeu_ps(wide, lanes::widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(narrow))));
    for (int l = 0; l < 16; ++l) {
      const float x = probes[i + static_cast<std::size_t>(l)];
      const std::uint16_t want = to_bits(x);
      // NaN as half: any NaN of the same sign (vcvtps2ph keeps another part of the payload than the scalar rounding).
      const bool any_nan = std::is_same<T, bevkd::half>::value && std::isnan(x);
      const bool same = any_nan ? std::isnan(wide[l]) && (narrow[l] & 0x8000u) == (want & 0x8000u) : narrow[l] == want;
      // Widening is exact: the float of the narrow bits, as the scalar conversion gives it.
      const float scalar_wide = static_cast<float>(T::from_bits(narrow[l]));
      const bool exact = std::isnan(x) || bevkd::detail::float_bits(wide[l]) == bevkd::detail::float_bits(scalar_wide);
      if (!(same && exact) && ++mismatches <= 5)
        FAIL_CHECK("float bits ", bevkd::detail::float_bits(x), " -> ", narrow[l], ", scalar ", want);
    }
  }
  CHECK(mismatches == 0);
}

}  // namespace

TEST_CASE("the AVX-512 lane conversions round as the scalar ones (host lane groups of half and bfloat16)") {
  check_narrow_lanes<bevkd::bfloat16>([](float x) { return bevkd::detail::float_to_bfloat16_bits(x); });
  check_narrow_lanes<bevkd::half>([](float x) { return bevkd::detail::float_to_half_bits(x); });
}
#endif
