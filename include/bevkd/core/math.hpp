// bevkd element math: branch-free exp/log/log1p/softplus that vectorise, with exact inf/NaN handling.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cmath>
#include <cstdint>

#include "config.hpp"
#include "dtype.hpp"

// Why our own functions: libm's expf/logf do not vectorise without -ffast-math, and
// -ffast-math breaks the inf/NaN semantics the losses promise. These are written with
// selects instead of branches so that GCC/Clang turn the row loops into SIMD code. The
// device uses CUDA's expf/logf instead (as accurate, built on the special-function unit,
// and measured faster there), so host and device agree to a few ulp, not bitwise.

namespace bevkd {
namespace math {

/// @brief Positive infinity of T (bit patterns: numeric_limits is not callable from device code).
template <class T>
BEVKD_FORCEINLINE T infinity();
/// @brief Positive float infinity.
template <>
BEVKD_FORCEINLINE float infinity<float>() {
  return detail::bits_float(0x7f800000u);
}
/// @brief Positive double infinity.
template <>
BEVKD_FORCEINLINE double infinity<double>() {
  return static_cast<double>(detail::bits_float(0x7f800000u));
}

/// @brief A quiet NaN of T.
template <class T>
BEVKD_FORCEINLINE T quiet_nan() {
  return static_cast<T>(detail::bits_float(0x7fc00000u));
}

/// @brief Larger of two values; returns `b` when `a` is NaN (callers rely on this order).
template <class T>
BEVKD_FORCEINLINE T max(T a, T b) {
  return a > b ? a : b;
}

/// @brief Smaller of two values; returns `b` when `a` is NaN.
template <class T>
BEVKD_FORCEINLINE T min(T a, T b) {
  return a < b ? a : b;
}

/// @brief True when x is NaN (works without relying on std::isnan in device code).
template <class T>
BEVKD_FORCEINLINE bool is_nan(T x) {
  return x != x;
}

/// @brief c ? a : b without a branch, so that loops stay vectorisable on the host.
///
/// GCC (with its default -ftrapping-math) sinks arithmetic into the arm of a ternary that
/// uses it and then refuses to if-convert the loop; integer masks keep both arms computed.
BEVKD_FORCEINLINE float select(bool c, float a, float b) {
#if defined(__CUDA_ARCH__)
  return c ? a : b;
#else
  const std::uint32_t mask = 0u - static_cast<std::uint32_t>(c);
  return detail::bits_float((detail::float_bits(a) & mask) | (detail::float_bits(b) & ~mask));
#endif
}

/// @brief c ? a : b for double (double is the reference path; a plain select suffices).
BEVKD_FORCEINLINE double select(bool c, double a, double b) { return c ? a : b; }

}  // namespace math

namespace detail {

/// @brief e^x = p * 2^n split for the host's float exponentials: n = round(x / ln 2) and p = e^(x - n ln 2).
struct exp_split {
  float p;        ///< e^r for |r| <= ln2 / 2, in [0.707, 1.415].
  float shifted;  ///< x / ln2 + 1.5 * 2^23: n sits in the low mantissa bits (read without a float-to-int conversion).
  /// @brief n as an integer (two's complement in the low bits).
  BEVKD_FORCEINLINE std::uint32_t n() const { return float_bits(shifted) - float_bits(round_magic); }
  /// @brief 1.5 * 2^23: adding it to a float below 2^22 in magnitude rounds it to an integer.
  static constexpr float round_magic = 12582912.0f;
};

/// @brief The constants of the host's float exponentials (split_exp; the AVX-512 passes of kl_rows_avx512.hpp).
struct exp_constants {
  static constexpr float log2e = 1.44269504088896341f;        ///< 1 / ln 2.
  static constexpr float ln2_hi = 0.693145751953125f;         ///< ln 2 in few mantissa bits: n * ln2_hi is exact.
  static constexpr float ln2_lo = 1.42860682030941723e-6f;    ///< ln 2 - ln2_hi.
  // A degree-6 minimax fit of e^r on [-ln2/2, ln2/2] (relative error 1.7e-8, a seventh of an ulp;
  // one multiply-add fewer than the Taylor series of the same accuracy); c1 = c0 = 1.
  static constexpr float c6 = 1.3843653723597527e-3f;  ///< Coefficient of r^6.
  static constexpr float c5 = 8.3741554990410805e-3f;  ///< Coefficient of r^5.
  static constexpr float c4 = 4.1668001562356949e-2f;  ///< Coefficient of r^4.
  static constexpr float c3 = 1.6666431725025177e-1f;  ///< Coefficient of r^3.
  static constexpr float c2 = 4.9999994039535522e-1f;  ///< Coefficient of r^2.
  /// @brief Largest float below which exp_nonpositive returns 0 (e^x subnormal): -126 ln 2, rounded up.
  static constexpr float nonpositive_floor = -87.3365f;
};

/// @brief Range reduction and polynomial of the host's float exp, for |x| <= 104 or NaN.
BEVKD_FORCEINLINE exp_split split_exp(float x) {
  using k = exp_constants;
  const float shifted = x * k::log2e + exp_split::round_magic;
  const float n = shifted - exp_split::round_magic;
  const float r = (x - n * k::ln2_hi) - n * k::ln2_lo;
  float p = k::c6;
  p = p * r + k::c5;
  p = p * r + k::c4;
  p = p * r + k::c3;
  p = p * r + k::c2;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return exp_split{p, shifted};
}

/// @brief 2^n as a float for -126 <= n <= 127 (n as split_exp's integer bits).
BEVKD_FORCEINLINE float pow2(std::uint32_t n) { return bits_float((n + 127u) << 23); }

}  // namespace detail

namespace math {

/// @brief e^x for float, within 2 ulp over the whole range, exact for -inf (0), +inf (inf) and NaN.
///
/// No floating-point select follows the polynomial (GCC would thread it into a branch that,
/// under its default -ftrapping-math, it cannot flatten, and the loop would not vectorise):
/// |x| is clamped to 104 on the bits, where overflow (x > 88.72: inf) and underflow
/// (x < -103.97: 0) then happen in the final products by themselves, and NaN flows through
/// every step.
BEVKD_FORCEINLINE float exp(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);  // CUDA's own: within 2 ulp too, and a few instructions around one MUFU.EX2
#else
  constexpr std::uint32_t clamp_bits = 0x42d00000u;  // 104.0f
  const std::uint32_t bits = detail::float_bits(x);
  // Signed compares of the (sign-cleared) magnitude: SSE2 has no unsigned 32-bit compare.
  const std::int32_t magnitude = static_cast<std::int32_t>(bits & 0x7fffffffu);
  const bool clamp = magnitude > std::int32_t{clamp_bits} && magnitude <= std::int32_t{0x7f800000};  // NaN passes
  const detail::exp_split e = detail::split_exp(detail::bits_float(clamp ? ((bits & 0x80000000u) | clamp_bits) : bits));
  // 2^n in two factors keeps each one a normal float down to the subnormal results (|n| <= 150).
  const std::uint32_t ni = e.n();
  // Any split works while both halves stay in [-126, 127]; the shift's floor is cheaper than a division.
  const std::uint32_t n1 = static_cast<std::uint32_t>(static_cast<std::int32_t>(ni) >> 1);
  return (e.p * detail::pow2(n1)) * detail::pow2(ni - n1);
#endif
}

/// @brief e^x for float x <= 0 (or NaN), the shifted arguments of a softmax: within 2 ulp down to x = -87.33, exactly
/// 0 below (where e^x is subnormal) and for -inf, NaN for NaN; a third cheaper than exp().
///
/// A softmax shifted by its maximum sums to at least 1, so exponentials under 2^-126 change
/// neither its sums nor (beyond float's normal range) its probabilities: dropping them saves the
/// clamp and the two-factor scaling.
BEVKD_FORCEINLINE float exp_nonpositive(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  const detail::exp_split e = detail::split_exp(x);
  const float y = e.p * detail::pow2(e.n());
  // Below -87.33 (also -inf, and arguments the reduction cannot represent) the result is 0; a
  // mask on the bits, not a float select, keeps the loop vectorisable (see exp).
  const std::uint32_t keep = 0u - static_cast<std::uint32_t>(!(x < detail::exp_constants::nonpositive_floor));
  return detail::bits_float(detail::float_bits(y) & keep);
#endif
}

/// @brief e^x for double (the libm function: double inputs are the reference path, not the fast one).
BEVKD_FORCEINLINE double exp(double x) { return ::exp(x); }

/// @brief e^x for double x <= 0 (libm; keeps subnormal results).
BEVKD_FORCEINLINE double exp_nonpositive(double x) { return ::exp(x); }

/// @brief Natural logarithm for float, within 2 ulp; log(0) = -inf, log(x<0) = NaN, log(inf) = inf.
BEVKD_FORCEINLINE float log(float x) {
#if defined(__CUDA_ARCH__)
  return ::logf(x);  // CUDA's own: within 1 ulp, the same special values
#else
  constexpr float ln2_hi = 0.693145751953125f;
  constexpr float ln2_lo = 1.42860682030941723e-6f;
  // Subnormal inputs are scaled into the normal range first.
  const bool tiny = x < 1.17549435e-38f;
  const float scaled = select(tiny, x * 8388608.0f, x);  // 2^23
  const std::uint32_t bits = detail::float_bits(scaled);
  std::int32_t e = static_cast<std::int32_t>(bits >> 23) - 127;
  float m = detail::bits_float((bits & 0x007fffffu) | 0x3f800000u);  // m in [1, 2)
  const bool high = m > 1.41421356f;
  m = select(high, m * 0.5f, m);
  e = high ? e + 1 : e;
  e = tiny ? e - 23 : e;
  // log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716.
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  float series = 1.0f / 11.0f;
  series = series * z + 1.0f / 9.0f;
  series = series * z + 1.0f / 7.0f;
  series = series * z + 1.0f / 5.0f;
  series = series * z + 1.0f / 3.0f;
  const float log_m = f - s * (f - 2.0f * z * series);  // = 2s + 2s z series, written to keep f exact
  const float ef = static_cast<float>(e);
  float result = (ef * ln2_lo + log_m) + ef * ln2_hi;
  result = select(x == infinity<float>(), x, result);
  result = select(x == 0.0f, -infinity<float>(), result);
  result = select(x < 0.0f, quiet_nan<float>(), result);
  return select(is_nan(x), x, result);
#endif
}

/// @brief Natural logarithm for double (libm).
BEVKD_FORCEINLINE double log(double x) { return ::log(x); }

/// @brief Square root of a float (correctly rounded on host and device).
BEVKD_FORCEINLINE float sqrt(float x) {
#if defined(__CUDA_ARCH__)
  return ::sqrtf(x);
#else
  return std::sqrt(x);
#endif
}

/// @brief Square root of a double.
BEVKD_FORCEINLINE double sqrt(double x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

/// @brief log(1 + x) for x >= 0 given inv_u = 1 / (1 + x), accurate for small x (a correction term restores what
/// 1 + x rounds away; a caller that needs the reciprocal anyway, like the sigmoid, shares its division).
template <class T>
BEVKD_FORCEINLINE T log1p_nonneg(T x, T inv_u) {
  const T u = T(1) + x;
  const T correction = (u - T(1)) - x;  // rounding error of 1 + x: at most half an ulp of u, so the
  const T result = log(u) - correction * inv_u;  // reciprocal's rounding stays far below the result's ulp
  return select(u == T(1), x, result);
}

/// @brief log(1 + x) for x >= 0, accurate for small x.
template <class T>
BEVKD_FORCEINLINE T log1p_nonneg(T x) {
  return log1p_nonneg(x, T(1) / (T(1) + x));
}


}  // namespace math
}  // namespace bevkd
