// bevkd core configuration: version, host/device macros and the index type.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>

/// @brief Library major version.
#define BEVKD_VERSION_MAJOR 0
/// @brief Library minor version.
#define BEVKD_VERSION_MINOR 1

#if defined(__CUDACC__)
/// @brief Marks a function callable from host and device code (plain `inline` under a host compiler).
#define BEVKD_HOST_DEVICE __host__ __device__ inline
/// @brief Marks a device-only function.
#define BEVKD_DEVICE __device__ inline
#else
#define BEVKD_HOST_DEVICE inline
#define BEVKD_DEVICE inline
#endif

#if defined(_MSC_VER)
#define BEVKD_RESTRICT __restrict
#else
/// @brief Portable `restrict` qualifier for pointers that never alias.
#define BEVKD_RESTRICT __restrict__
#endif

// Vectorisation hint for the host loops that carry the exponentials: OpenMP's `simd`
// when the consumer compiles with OpenMP, GCC's `ivdep` otherwise.
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define BEVKD_SIMD _Pragma("omp simd")
#define BEVKD_SIMD_REDUCTION(op, var) _Pragma(BEVKD_STRINGIFY(omp simd reduction(op : var)))
#elif defined(__GNUC__) && !defined(__clang__) && !defined(__CUDA_ARCH__) && !defined(__CUDACC__)
#define BEVKD_SIMD _Pragma("GCC ivdep")
#define BEVKD_SIMD_REDUCTION(op, var)
#else
#define BEVKD_SIMD
#define BEVKD_SIMD_REDUCTION(op, var)
#endif
#define BEVKD_STRINGIFY_IMPL(x) #x
/// @brief Turns a token sequence into a string literal (used to build pragmas).
#define BEVKD_STRINGIFY(x) BEVKD_STRINGIFY_IMPL(x)

namespace bevkd {

/// @brief Signed 64-bit index used for every extent, stride and offset.
using index_t = std::int64_t;

}  // namespace bevkd
