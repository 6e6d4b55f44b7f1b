// bevkd element types: 16-bit storage types, the dtype tag and the accumulation type.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "config.hpp"

namespace bevkd {
namespace detail {

/// @brief Reinterprets a float's bits as an unsigned integer (host and device).
BEVKD_FORCEINLINE std::uint32_t float_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

/// @brief Reinterprets an unsigned integer's bits as a float (host and device).
BEVKD_FORCEINLINE float bits_float(std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

/// @brief Rounds a float to IEEE binary16 bits, to nearest even; NaN stays NaN, overflow gives inf.
BEVKD_FORCEINLINE std::uint16_t float_to_half_bits(float value) {
  const std::uint32_t bits = float_bits(value);
  const std::uint32_t sign = (bits >> 16) & 0x8000u;
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  constexpr std::uint32_t float_inf = 0x7f800000u;
  constexpr std::uint32_t half_overflow = (127u + 16u) << 23;  // 2^16: rounds to inf
  constexpr std::uint32_t half_min_normal = 113u << 23;       // 2^-14
  if (magnitude >= half_overflow) {
    return static_cast<std::uint16_t>(sign | (magnitude > float_inf ? 0x7e00u : 0x7c00u));
  }
  if (magnitude < half_min_normal) {
    // Adding 0.5 aligns the subnormal half mantissa with the float's low bits; the
    // float addition itself rounds to nearest even.
    const float aligned = bits_float(magnitude) + 0.5f;
    return static_cast<std::uint16_t>(sign | (float_bits(aligned) - 0x3f000000u));
  }
  const std::uint32_t odd = (magnitude >> 13) & 1u;
  const std::uint32_t rebased = magnitude + ((15u - 127u) << 23) + 0xfffu + odd;
  return static_cast<std::uint16_t>(sign | (rebased >> 13));
}

/// @brief Widens IEEE binary16 bits to float exactly.
BEVKD_FORCEINLINE float half_bits_to_float(std::uint16_t half_bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(half_bits & 0x8000u) << 16;
  const std::uint32_t magnitude = half_bits & 0x7fffu;
  if (magnitude >= 0x7c00u) return bits_float(sign | 0x7f800000u | ((magnitude & 0x3ffu) << 13));
  if (magnitude >= 0x0400u) return bits_float(sign | ((magnitude << 13) + ((127u - 15u) << 23)));
  const float subnormal = static_cast<float>(magnitude) * 5.9604644775390625e-8f;  // 2^-24
  return sign ? -subnormal : subnormal;
}

/// @brief Rounds a float to bfloat16 bits, to nearest even; NaN stays a quiet NaN.
BEVKD_FORCEINLINE std::uint16_t float_to_bfloat16_bits(float value) {
  // An integer select rather than an early return, so loops storing bfloat16 vectorise.
  const std::uint32_t bits = float_bits(value);
  const std::uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const std::uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return static_cast<std::uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

/// @brief Widens bfloat16 bits to float exactly.
BEVKD_FORCEINLINE float bfloat16_bits_to_float(std::uint16_t bf16_bits) {
  return bits_float(static_cast<std::uint32_t>(bf16_bits) << 16);
}

}  // namespace detail

/// @brief IEEE binary16 storage type, layout-compatible with CUDA's `__half`; no arithmetic of its own.
struct half {
  std::uint16_t bits;  ///< Raw binary16 bits.

  half() = default;
  /// @brief Rounds a float to the nearest half (ties to even).
  BEVKD_FORCEINLINE explicit half(float value) : bits(detail::float_to_half_bits(value)) {}
  /// @brief Widens to float exactly.
  BEVKD_FORCEINLINE explicit operator float() const { return detail::half_bits_to_float(bits); }
  /// @brief Builds a half from raw bits.
  BEVKD_HOST_DEVICE static half from_bits(std::uint16_t raw) {
    half h;
    h.bits = raw;
    return h;
  }
};

/// @brief bfloat16 storage type, layout-compatible with CUDA's `__nv_bfloat16`; no arithmetic of its own.
struct bfloat16 {
  std::uint16_t bits;  ///< Raw bfloat16 bits.

  bfloat16() = default;
  /// @brief Rounds a float to the nearest bfloat16 (ties to even).
  BEVKD_FORCEINLINE explicit bfloat16(float value) : bits(detail::float_to_bfloat16_bits(value)) {}
  /// @brief Widens to float exactly.
  BEVKD_FORCEINLINE explicit operator float() const { return detail::bfloat16_bits_to_float(bits); }
  /// @brief Builds a bfloat16 from raw bits.
  BEVKD_HOST_DEVICE static bfloat16 from_bits(std::uint16_t raw) {
    bfloat16 b;
    b.bits = raw;
    return b;
  }
};

static_assert(sizeof(half) == 2 && alignof(half) == 2, "half must match __half's layout");
static_assert(sizeof(bfloat16) == 2 && alignof(bfloat16) == 2, "bfloat16 must match __nv_bfloat16's layout");
static_assert(std::is_trivially_copyable<half>::value && std::is_trivially_copyable<bfloat16>::value,
              "16-bit storage types must be trivially copyable");

/// @brief Runtime tag of an element type.
enum class dtype : std::uint8_t { f64, f32, f16, bf16 };

/// @brief The dtype tag of a supported element type T.
template <class T>
struct dtype_of;
/// @brief dtype tag of double.
template <>
struct dtype_of<double> : std::integral_constant<dtype, dtype::f64> {};
/// @brief dtype tag of float.
template <>
struct dtype_of<float> : std::integral_constant<dtype, dtype::f32> {};
/// @brief dtype tag of bevkd::half.
template <>
struct dtype_of<half> : std::integral_constant<dtype, dtype::f16> {};
/// @brief dtype tag of bevkd::bfloat16.
template <>
struct dtype_of<bfloat16> : std::integral_constant<dtype, dtype::bf16> {};

/// @brief Size in bytes of one element of the given dtype.
constexpr std::size_t dtype_size(dtype type) { return type == dtype::f64 ? 8 : type == dtype::f32 ? 4 : 2; }

/// @brief Short name of a dtype ("f64", "f32", "f16", "bf16").
constexpr const char* dtype_name(dtype type) {
  return type == dtype::f64 ? "f64" : type == dtype::f32 ? "f32" : type == dtype::f16 ? "f16" : "bf16";
}

/// @brief Accumulation type of T: double for double, float for every other element type.
template <class T>
using accum_t = std::conditional_t<std::is_same<T, double>::value, double, float>;

/// @brief Converts a stored element to its accumulation type.
template <class T>
BEVKD_FORCEINLINE accum_t<T> load_as_accum(const T& value) {
  return static_cast<accum_t<T>>(value);
}

/// @brief Converts an accumulation-type value to the stored element type (rounding to nearest even).
template <class T, class Acc>
BEVKD_FORCEINLINE T store_from_accum(Acc value) {
  return T(static_cast<accum_t<T>>(value));
}

}  // namespace bevkd
