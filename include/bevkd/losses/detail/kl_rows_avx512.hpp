// bevkd internal: AVX-512 passes of the host softmax KL blocks over fp32 rows (row and lane layout).
// SPDX-License-Identifier: Apache-2.0
#pragma once

// Why by hand: GCC vectorises the generic passes (kl_rows.hpp) well inside a row, but keeps
// their 16 partial accumulators in memory between its unrolled and remainder loops, runs each
// row's tail as scalar code and rebroadcasts every constant per row; a row of 64 columns is
// only four vectors, so that overhead weighs (measured, C = 64, -march=native: the exponential
// pass took 53 % of the call; these passes, inlined into the block, cut the call by about 11 %).
// These versions compute the same formulas in the same order (column c in partial c mod 16,
// the same pairwise fold, done for sixteen rows at once by fold16), with plain loads and stores
// for full vectors and masked ones for the tail. Their exponentials take fewer multiply-adds
// than math's polynomial (table_exp: a table of 2^(j/32) and a cubic, within the same contract)
// and scale by 2^n with one vscalefps where GCC's vectorisation of the scalar code builds 2^n
// with integer steps and a multiply (lane layout: TSA 5 % faster).

#include "../../core/detail/avx512.hpp"

#if defined(BEVKD_HOST_AVX512)
#include <initializer_list>
#include <type_traits>

#include "../../core/config.hpp"
#include "../../core/detail/row_blocks.hpp"
#include "../../core/math.hpp"
#include "../../core/reduction.hpp"
#include "../../core/team.hpp"

namespace bevkd {
namespace detail {
namespace avx512 {

/// @brief math::exp_nonpositive's contract on sixteen floats (within 2 ulp, exactly 1 at 0, 0 below -87.33 and for
/// -inf, NaN kept), by a table of 2^(j/32) and a cubic instead of math's degree-6 polynomial.
///
/// Why another algorithm: the exponentials are most of the KL's arithmetic and run at the
/// multiply-add ports' limit (two per column); x = (32 n + j) ln2 / 32 + r, |r| <= ln2 / 64,
/// takes 9 of those operations per exponential instead of 11 (one vpermt2ps reads the 32-entry
/// table from two registers; measured: KL C = 64 rows in cache about 5 % faster). Exhaustively
/// over [-87.33, 0]: at most 1.01 ulp from the correctly rounded e^x (math's polynomial in
/// vector form: 1.05), so results differ from the generic passes' by about an ulp per exponential.
struct table_exp {
  /// @brief 2^(j/32) rounded to float, j = 0..15.
  static BEVKD_HOST_FORCEINLINE __m512 low() {
    return _mm512_setr_ps(0x1.000000p+0f, 0x1.059b0ep+0f, 0x1.0b5586p+0f, 0x1.11301ep+0f,
                          0x1.172b84p+0f, 0x1.1d4874p+0f, 0x1.2387a6p+0f, 0x1.29e9e0p+0f,
                          0x1.306fe0p+0f, 0x1.371a74p+0f, 0x1.3dea64p+0f, 0x1.44e086p+0f,
                          0x1.4bfdaep+0f, 0x1.5342b6p+0f, 0x1.5ab07ep+0f, 0x1.6247ecp+0f);
  }
  /// @brief 2^(j/32) rounded to float, j = 16..31.
  static BEVKD_HOST_FORCEINLINE __m512 high() {
    return _mm512_setr_ps(0x1.6a09e6p+0f, 0x1.71f75ep+0f, 0x1.7a1148p+0f, 0x1.82589ap+0f,
                          0x1.8ace54p+0f, 0x1.93737cp+0f, 0x1.9c4918p+0f, 0x1.a5503cp+0f,
                          0x1.ae89fap+0f, 0x1.b7f770p+0f, 0x1.c199bep+0f, 0x1.cb720ep+0f,
                          0x1.d5818ep+0f, 0x1.dfc974p+0f, 0x1.ea4afap+0f, 0x1.f50766p+0f);
  }
  /// @brief 1.5 * 2^18: adding it to a float of magnitude below 2^17 rounds that to a multiple of 1/32, whose 32nds
  /// then sit in the low mantissa bits (j in the low five).
  static constexpr float round_magic = 393216.0f;
};

/// @brief e^x for sixteen floats x <= 0 (NaN kept): see table_exp.
BEVKD_HOST_FORCEINLINE __m512 exp_nonpositive(__m512 x) {
  using k = exp_constants;
  const __m512 magic = _mm512_set1_ps(table_exp::round_magic);
  const __m512 shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(k::log2e), magic);
  const __m512 n = _mm512_sub_ps(shifted, magic);  // n + j / 32
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(k::ln2_hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(k::ln2_lo), r);
  // vpermt2ps takes the low five bits of each index: j.
  const __m512 t = _mm512_permutex2var_ps(table_exp::low(), _mm512_castps_si512(shifted), table_exp::high());
  // 2^(j/32) e^r = t + t r (1 + r / 2 + r^2 / 6): the Taylor cubic's error, r^4 / 24 <= 6e-10, is a hundredth of an ulp.
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(1.0f / 6.0f), r, _mm512_set1_ps(0.5f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f));
  const __m512 p = _mm512_fmadd_ps(_mm512_mul_ps(t, r), q, t);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(k::nonpositive_floor), _CMP_NLT_UQ);  // NaN is kept
  // p * 2^floor(n + j / 32) = p * 2^n in one instruction (vscalefps floors its exponent); exact, as the result is
  // normal for every kept x.
  return _mm512_maskz_scalef_ps(keep, p, n);
}

/// @brief softmax_exponent of sixteen logits: (x - max) / tau (UnitTau: tau is 1, no multiply).
template <bool UnitTau>
BEVKD_HOST_FORCEINLINE __m512 softmax_exponent(__m512 x, __m512 max, __m512 inv_tau) {
  const __m512 shifted = _mm512_sub_ps(x, max);
  return UnitTau ? shifted : _mm512_mul_ps(shifted, inv_tau);
}

/// @brief softmax_terms of sixteen columns (row layout) or rows (lane layout) from their exponents a (teacher) and
/// b (student): the terms that softmax_kl_lanes and the row-layout passes add up.
struct column_terms {
  __m512 e_t;    ///< e^a.
  __m512 e_s;    ///< e^b.
  __m512 cross;  ///< e_t (a - b), 0 where e_t is 0.

  /// @brief The terms of a, b.
  BEVKD_HOST_FORCEINLINE column_terms(__m512 a, __m512 b) : e_t(exp_nonpositive(a)), e_s(exp_nonpositive(b)) {
    const __m512 zero = _mm512_setzero_ps();
    cross = _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(e_t, zero, _CMP_NEQ_UQ), e_t, _mm512_sub_ps(a, b));
  }
};

/// @brief The exponential pass of softmax_kl_lanes over a block of n columns in lane layout (s, t: column c's
/// sixteen rows at 16 c), exponentials written over s and t, each lane's sums added in column order.
template <bool UnitTau, class Block>
void lane_exponentials(const Block& block, float* s, float* t, index_t n, float inv_tau, const float* max_t,
                       const float* max_s, float* z_t, float* z_s, float* cross) {
  const __m512 tau_v = _mm512_set1_ps(inv_tau);
  const __m512 max_t_v = _mm512_loadu_ps(max_t), max_s_v = _mm512_loadu_ps(max_s);
  __m512 sum_t = _mm512_loadu_ps(z_t), sum_s = _mm512_loadu_ps(z_s), sum_cross = _mm512_loadu_ps(cross);
  for (index_t c = 0; c < n; ++c) {
    block.prefetch(c);
    float* const s_c = s + 16 * c;
    float* const t_c = t + 16 * c;
    const column_terms x(softmax_exponent<UnitTau>(_mm512_loadu_ps(t_c), max_t_v, tau_v),
                         softmax_exponent<UnitTau>(_mm512_loadu_ps(s_c), max_s_v, tau_v));
    _mm512_storeu_ps(t_c, x.e_t);
    _mm512_storeu_ps(s_c, x.e_s);
    sum_t = _mm512_add_ps(sum_t, x.e_t);
    sum_s = _mm512_add_ps(sum_s, x.e_s);
    sum_cross = _mm512_add_ps(sum_cross, x.cross);
  }
  _mm512_storeu_ps(z_t, sum_t);
  _mm512_storeu_ps(z_s, sum_s);
  _mm512_storeu_ps(cross, sum_cross);
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
  for (int i = 0; i < 8; ++i)  // [v[2i]'s k op k + 8 | v[2i + 1]'s]
    half[i] = apply(op, _mm512_mask_shuffle_f32x4(unused, all_lanes, v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                    _mm512_mask_shuffle_f32x4(unused, all_lanes, v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int i = 0; i < 4; ++i)  // 128-bit block q: v[4i + q]'s k op k + 4
    quarter[i] =
        apply(op, _mm512_mask_shuffle_f32x4(unused, all_lanes, half[2 * i], half[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
              _mm512_mask_shuffle_f32x4(unused, all_lanes, half[2 * i], half[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int i = 0; i < 2; ++i)  // block q: v[8i + q]'s k op k + 2 (two lanes), then v[8i + 4 + q]'s
    pair[i] = apply(op, _mm512_mask_shuffle_ps(unused, all_lanes, quarter[2 * i], quarter[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                    _mm512_mask_shuffle_ps(unused, all_lanes, quarter[2 * i], quarter[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  // Block q: v[q], v[4 + q], v[8 + q], v[12 + q] folded; into order, v[i] at lane i.
  const __m512 folded = apply(op, _mm512_mask_shuffle_ps(unused, all_lanes, pair[0], pair[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_mask_shuffle_ps(unused, all_lanes, pair[0], pair[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_mask_permutexvar_ps(unused, all_lanes,
                                    _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), folded);
}

/// @brief row_layout_passes for fp32 rows (the same members; force-inlined, as they need no alias analysis).
struct row_passes {
  using partials = __m512;  ///< A run's sixteen partial results of one reduction.

  /// @brief The row's partial maxima of t and s.
  static BEVKD_HOST_FORCEINLINE void maxima(const float* s, const float* t, index_t n, __m512& part_t,
                                            __m512& part_s) {
    const __m512 lowest = _mm512_set1_ps(-math::infinity<float>());
    __m512 max_t = lowest, max_s = lowest;
    for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
      // max(x, part): x > part ? x : part, as shift_max_op (a NaN column leaves the partial as it was).
      max_t = _mm512_mask_max_ps(max_t, all_lanes, _mm512_mask_loadu_ps(lowest, m, t + c), max_t);
      max_s = _mm512_mask_max_ps(max_s, all_lanes, _mm512_mask_loadu_ps(lowest, m, s + c), max_s);
    });
    part_t = max_t;
    part_s = max_s;
  }

  /// @brief The row's partial sums {z_T, z_S, cross}; the exponentials go to e_t and e_s (UnitTau: inv_tau is 1).
  template <bool UnitTau>
  static BEVKD_HOST_FORCEINLINE void exponentials(const float* s, const float* t, index_t n, float inv_tau,
                                                  float max_t, float max_s, float* e_t, float* e_s, __m512& sum_t,
                                                  __m512& sum_s, __m512& sum_cross) {
    const __m512 tau_v = _mm512_set1_ps(inv_tau), max_t_v = _mm512_set1_ps(max_t), max_s_v = _mm512_set1_ps(max_s);
    const __m512 zero = _mm512_setzero_ps();
    __m512 z_t = zero, z_s = zero, cross = zero;
    for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
      const column_terms x(softmax_exponent<UnitTau>(_mm512_maskz_loadu_ps(m, t + c), max_t_v, tau_v),
                           softmax_exponent<UnitTau>(_mm512_maskz_loadu_ps(m, s + c), max_s_v, tau_v));
      _mm512_mask_storeu_ps(e_t + c, m, x.e_t);
      _mm512_mask_storeu_ps(e_s + c, m, x.e_s);
      // Masked adds: the tail's padding columns have exponentials of their own.
      z_t = _mm512_mask_add_ps(z_t, m, z_t, x.e_t);
      z_s = _mm512_mask_add_ps(z_s, m, z_s, x.e_s);
      cross = _mm512_mask_add_ps(cross, m, cross, x.cross);
    });
    sum_t = z_t;
    sum_s = z_s;
    sum_cross = cross;
  }

  /// @brief The results of p[0 .. count), p[i]'s partials combined with op, in `out` (sixteen at a time by fold16).
  template <class Op>
  static BEVKD_HOST_FORCEINLINE const float* fold(Op op, const __m512* p, int count, float* out) {
    for (int first = 0; first < count; first += 16) {
      const int here = count - first < 16 ? count - first : 16;
      __m512 v[16];
      for (int i = 0; i < 16; ++i) v[i] = i < here ? p[first + i] : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(out + first, column_mask(0, here), fold16(op, v));
    }
    return out;
  }

  /// @brief g = scale (e_s / z_S - e_t / z_T), or g += that when Accumulate.
  template <bool Accumulate>
  static BEVKD_HOST_FORCEINLINE void grad(float* g, index_t n, const float* e_t, const float* e_s, float scale,
                                          float inv_zt, float inv_zs) {
    const __m512 scale_v = _mm512_set1_ps(scale), inv_zt_v = _mm512_set1_ps(inv_zt), inv_zs_v = _mm512_set1_ps(inv_zs);
    for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
      const __m512 q_t = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, e_t + c), inv_zt_v);
      __m512 value = _mm512_mul_ps(scale_v, _mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, e_s + c), inv_zs_v, q_t));
      if constexpr (Accumulate) value = _mm512_add_ps(_mm512_maskz_loadu_ps(m, g + c), value);
      _mm512_mask_storeu_ps(g + c, m, value);
    });
  }
};

}  // namespace avx512
}  // namespace detail
}  // namespace bevkd

#endif
