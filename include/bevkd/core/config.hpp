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

// Element math must inline into the row loops, or they cannot vectorise (GCC otherwise keeps
// the exponential as a call at -O3).
#if defined(__CUDACC__)
/// @brief A host/device function that must be inlined into its caller.
#define BEVKD_FORCEINLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define BEVKD_FORCEINLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define BEVKD_FORCEINLINE __forceinline
#else
#define BEVKD_FORCEINLINE inline
#endif

// Host-only code that must be inlined (BEVKD_FORCEINLINE would make it __device__ too under nvcc).
#if defined(__CUDACC__)
/// @brief A host-only function that must be inlined into its caller.
#define BEVKD_HOST_FORCEINLINE __host__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define BEVKD_HOST_FORCEINLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define BEVKD_HOST_FORCEINLINE __forceinline
#else
#define BEVKD_HOST_FORCEINLINE inline
#endif

// Host loops that call a functor per column: inline the functor and everything it calls, so
// the loop body is one piece the vectoriser can see (GCC and Clang; nothing elsewhere).
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define BEVKD_FLATTEN __attribute__((flatten))
#else
/// @brief Inlines every call inside the marked host function (the column loops of the host team).
#define BEVKD_FLATTEN
#endif

// Lambdas that host loops must inline: GCC keeps a large one as a call even when the function
// that calls it is force-inlined (measured: the AVX-512 exponential pass as a call per vector).
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define BEVKD_INLINE_LAMBDA __attribute__((always_inline))
#else
/// @brief Marks a host lambda to be inlined into its caller (between the parameter list and the body).
#define BEVKD_INLINE_LAMBDA
#endif

// Row passes compiled as functions of their own on the host: GCC vectorises a pass reliably
// in isolation, but not always once several passes are inlined into one row function.
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDA_ARCH__)
#define BEVKD_HOST_NOINLINE __attribute__((noinline))
#else
/// @brief Keeps a host row pass out of line (no effect in device code).
#define BEVKD_HOST_NOINLINE
#endif

#if defined(_MSC_VER)
#define BEVKD_RESTRICT __restrict
#else
/// @brief Portable `restrict` qualifier for pointers that never alias.
#define BEVKD_RESTRICT __restrict__
#endif

// Full unrolling of the small per-component loops, which GCC must see as straight code to
// vectorise the loop around them.
#if defined(__CUDA_ARCH__)
#define BEVKD_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define BEVKD_UNROLL  // nvcc's host pass: neither nvcc's front end nor the host compiler takes both spellings
#elif defined(__GNUC__) && !defined(__clang__)
#define BEVKD_UNROLL _Pragma("GCC unroll 16")
#elif defined(__clang__)
#define BEVKD_UNROLL _Pragma("unroll")
#else
#define BEVKD_UNROLL
#endif
// A short host loop over lanes that must stay a loop: GCC otherwise unrolls a 16-iteration
// loop of maxima completely before vectorising, and its straight-line vectoriser then leaves
// sixteen scalar max instructions where one SIMD one would do.
#if defined(__CUDACC__)
#define BEVKD_NO_UNROLL  // nvcc's host pass: see BEVKD_UNROLL
#elif defined(__GNUC__) && !defined(__clang__)
#define BEVKD_NO_UNROLL _Pragma("GCC unroll 1")
#elif defined(__clang__)
#define BEVKD_NO_UNROLL _Pragma("clang loop unroll(disable)")
#else
/// @brief Keeps the next host loop rolled so that the loop vectoriser, not full unrolling, gets it.
#define BEVKD_NO_UNROLL
#endif
// A host loop whose iterations touch distinct memory (each column's own gradient and scratch,
// never an input: the public calls reject overlapping outputs). GCC cannot prove it and
// vectorises such a loop only behind a run-time overlap check, which its -O2 cost model refuses:
// a consumer built with -O2 (CMake's RelWithDebInfo) then ran the per-row kernels as scalar
// code (sigmoid KL C = 64, 20000 rows: 78.7 ms at -O2, 5.4 at -O3; 5.4 at both with it).
// Clang vectorises behind the check at -O2 too, so it gets nothing here.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define BEVKD_IVDEP _Pragma("GCC ivdep")
#else
/// @brief Tells the host compiler that the next loop's iterations have no memory dependences between them.
#define BEVKD_IVDEP
#endif
#define BEVKD_STRINGIFY_IMPL(x) #x
/// @brief Turns a token sequence into a string literal (used to build pragmas).
#define BEVKD_STRINGIFY(x) BEVKD_STRINGIFY_IMPL(x)

namespace bevkd {

/// @brief Signed 64-bit index used for every extent, stride and offset.
using index_t = std::int64_t;

}  // namespace bevkd
