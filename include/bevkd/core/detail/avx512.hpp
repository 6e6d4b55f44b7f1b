// bevkd internal: the AVX-512 building blocks of the host row blocks (masks, a 16 x 16 transpose, sixteen folds).
// SPDX-License-Identifier: Apache-2.0
#pragma once

// Only host code compiled for AVX-512 (-mavx512f, -march=native on such a CPU) sees these; every
// caller keeps a portable path. GCC 12.2's AVX-512 headers fill the unused source of some
// intrinsics with a self-initialised vector, which -Wall reports as uninitialised in every caller
// (GCC bug 105593): only intrinsics that take all their operands (masked forms with a full mask)
// are used here and in the callers.
//
// The fixed loops over arrays of vectors carry BEVKD_UNROLL: GCC fully unrolls them at -O3 only,
// and a rolled loop indexes its array through the stack (measured, fp32 C = 64 softmax KL, 20000
// rows, one thread, GCC 12 -O2: 0.754 -> 0.672 ms with the pragmas; -O3 0.648 either way).

#if defined(__AVX512F__) && !defined(__CUDACC__)
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "../config.hpp"
#include "../team.hpp"

/// @brief Defined when the host row blocks use their AVX-512 code (fp32 rows).
#define BEVKD_HOST_AVX512 1

#if defined(__AVX512BW__) && defined(__AVX512VL__)
/// @brief Defined when the build also has AVX-512BW and VL (16-bit masked loads and stores): half and bfloat16 rows
/// then run in host lane groups too.
#define BEVKD_HOST_AVX512_BW 1
#endif

namespace bevkd {
namespace detail {
namespace avx512 {

/// @brief All sixteen lanes.
constexpr __mmask16 all_lanes = 0xffff;

/// @brief Lanes of the columns [first, first + 16) that lie in a row of n columns.
BEVKD_HOST_FORCEINLINE __mmask16 column_mask(index_t first, index_t n) {
  const index_t left = n - first;
  return left >= 16 ? all_lanes : static_cast<__mmask16>((1u << left) - 1u);
}

/// @brief Calls f(c, mask) for each vector of sixteen columns of a row of n: the full vectors with all_lanes (a
/// constant, so their masked loads and stores compile to plain ones: masked stores cost more), then the tail.
template <class F>
BEVKD_HOST_FORCEINLINE void for_each_vector(index_t n, F&& f) {
  index_t c = 0;
  for (; c + 16 <= n; c += 16) f(c, all_lanes);
  if (c < n) f(c, column_mask(c, n));
}

/// @brief Stores the lanes m of v at p; with a non-temporal store (around the caches, no read for ownership) when
/// Stream is set and the store covers one whole, aligned cache line.
///
/// Stream is a template argument: a run-time flag tested at every store made the lane layout's
/// scatter 5 % slower for rows of 10 columns, which never stream (measured).
template <bool Stream>
BEVKD_HOST_FORCEINLINE void store_lanes(float* p, __m512 v, __mmask16 m) {
  if (Stream && m == all_lanes && (reinterpret_cast<std::uintptr_t>(p) & 63) == 0)
    _mm512_stream_ps(p, v);
  else
    _mm512_mask_storeu_ps(p, m, v);
}

/// @brief Transposes a 16 x 16 block held as sixteen vectors: v[i] lane j becomes v[j] lane i.
BEVKD_HOST_FORCEINLINE void transpose16(__m512 (&v)[16]) {
  const __m512 unused = _mm512_setzero_ps();
  __m512 t[16];
  // Rows 2i and 2i + 1 interleaved within each 128-bit lane k: columns 4k, 4k + 1 (t[2i]) and 4k + 2, 4k + 3.
  BEVKD_UNROLL
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_mask_unpacklo_ps(unused, all_lanes, v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_mask_unpackhi_ps(unused, all_lanes, v[2 * i], v[2 * i + 1]);
  }
  // u[4g + j], 128-bit lane k: rows 4g .. 4g + 3 of column 4k + j.
  __m512 u[16];
  BEVKD_UNROLL
  for (int g = 0; g < 4; ++g)
    BEVKD_UNROLL
    for (int h = 0; h < 2; ++h) {
      const __m512 a = t[4 * g + h], b = t[4 * g + 2 + h];
      u[4 * g + 2 * h] = _mm512_mask_shuffle_ps(unused, all_lanes, a, b, _MM_SHUFFLE(1, 0, 1, 0));
      u[4 * g + 2 * h + 1] = _mm512_mask_shuffle_ps(unused, all_lanes, a, b, _MM_SHUFFLE(3, 2, 3, 2));
    }
  // Column 4k + j gathers 128-bit lane k of u[j], u[4 + j], u[8 + j] and u[12 + j].
  constexpr int even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1);
  BEVKD_UNROLL
  for (int j = 0; j < 4; ++j) {
    const __m512 x0 = _mm512_mask_shuffle_f32x4(unused, all_lanes, u[j], u[4 + j], even);  // lanes 0, 2
    const __m512 x1 = _mm512_mask_shuffle_f32x4(unused, all_lanes, u[j], u[4 + j], odd);   // lanes 1, 3
    const __m512 y0 = _mm512_mask_shuffle_f32x4(unused, all_lanes, u[8 + j], u[12 + j], even);
    const __m512 y1 = _mm512_mask_shuffle_f32x4(unused, all_lanes, u[8 + j], u[12 + j], odd);
    v[j] = _mm512_mask_shuffle_f32x4(unused, all_lanes, x0, y0, even);
    v[8 + j] = _mm512_mask_shuffle_f32x4(unused, all_lanes, x0, y0, odd);
    v[4 + j] = _mm512_mask_shuffle_f32x4(unused, all_lanes, x1, y1, even);
    v[12 + j] = _mm512_mask_shuffle_f32x4(unused, all_lanes, x1, y1, odd);
  }
}

/// @brief op (sum_op or shift_max_op: a > b ? a : b, as vmaxps) on sixteen lanes.
template <class Op>
BEVKD_HOST_FORCEINLINE __m512 apply(Op, __m512 a, __m512 b) {
  if constexpr (std::is_same<Op, sum_op>::value)
    return _mm512_add_ps(a, b);
  else
    return _mm512_mask_max_ps(a, all_lanes, a, b);
}

/// @brief Folds sixteen vectors of partials at once: lane i of the result is v[i]'s sixteen partials combined with
/// op in fold_partials' pairwise order (k with k + 8, then k + 4, k + 2, k + 1), bit for bit.
///
/// Why: one row's fold is three extracts and six dependent ops on four-float vectors; a C = 64
/// row has five to fold (two maxima, three sums), which took about a sixth of the call. Each
/// step here halves the partials of all sixteen rows with two shuffles and one op (15 ops and
/// 30 shuffles for sixteen rows).
template <class Op>
BEVKD_HOST_FORCEINLINE __m512 fold16(Op op, const __m512 (&v)[16]) {
  const __m512 unused = _mm512_setzero_ps();
  __m512 half[8], quarter[4], pair[2];
  BEVKD_UNROLL
  for (int i = 0; i < 8; ++i)  // [v[2i]'s k op k + 8 | v[2i + 1]'s]
    half[i] = apply(op, _mm512_mask_shuffle_f32x4(unused, all_lanes, v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                    _mm512_mask_shuffle_f32x4(unused, all_lanes, v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  BEVKD_UNROLL
  for (int i = 0; i < 4; ++i)  // 128-bit block q: v[4i + q]'s k op k + 4
    quarter[i] =
        apply(op, _mm512_mask_shuffle_f32x4(unused, all_lanes, half[2 * i], half[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
              _mm512_mask_shuffle_f32x4(unused, all_lanes, half[2 * i], half[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  BEVKD_UNROLL
  for (int i = 0; i < 2; ++i)  // block q: v[8i + q]'s k op k + 2 (two lanes), then v[8i + 4 + q]'s
    pair[i] = apply(op, _mm512_mask_shuffle_ps(unused, all_lanes, quarter[2 * i], quarter[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                    _mm512_mask_shuffle_ps(unused, all_lanes, quarter[2 * i], quarter[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  // Block q: v[q], v[4 + q], v[8 + q], v[12 + q] folded; into order, v[i] at lane i.
  const __m512 folded = apply(op, _mm512_mask_shuffle_ps(unused, all_lanes, pair[0], pair[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_mask_shuffle_ps(unused, all_lanes, pair[0], pair[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_mask_permutexvar_ps(unused, all_lanes,
                                    _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), folded);
}

}  // namespace avx512
}  // namespace detail
}  // namespace bevkd

#endif
