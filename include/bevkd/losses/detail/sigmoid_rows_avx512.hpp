// bevkd internal: AVX-512 lanes of the host sigmoid KL (rows per row and in lane-layout blocks, computed in fp32).
// SPDX-License-Identifier: Apache-2.0
#pragma once

// Why by hand: the generic element math (sigmoid_kl_terms in kl_rows.hpp: math::exp, math::log and two divisions per
// logit, selects) vectorises, but took about 15 cycles per element on a Zen 4 (fp32, C = 64, 21 ms on one thread
// for B = 2, 200 x 200, six times the softmax KL). These lanes compute the same terms from the softmax rows' base-2
// exponential (exp2_of_shift) and a table log1p for arguments in [0, 1], the only ones a logistic needs: about 4
// cycles per element. The terms keep sigmoid_kl_terms' formulas and special values (+-inf, NaN, a teacher
// probability of exactly 0 or 1); their roundings differ by a few ulp.

#include "../../core/detail/avx512.hpp"

#if defined(BEVKD_HOST_AVX512)
#include "../../core/config.hpp"
#include "../../core/detail/row_blocks.hpp"
#include "../../core/math.hpp"
#include "kl_rows_avx512.hpp"

namespace bevkd {
namespace detail {
namespace avx512 {

/// @brief The tables of log1p_unit: 1 / (1 + j/32) and log(1 + j/32), j = 0..31, rounded to float.
struct table_log1p {
  /// @brief 1 / (1 + j/32), j = 0..15.
  static BEVKD_HOST_FORCEINLINE __m512 inverse_low() {
    return _mm512_setr_ps(0x1p+0f, 0x1.f07c2p-1f, 0x1.e1e1e2p-1f, 0x1.d41d42p-1f, 0x1.c71c72p-1f, 0x1.bacf92p-1f,
                          0x1.af286cp-1f, 0x1.a41a42p-1f, 0x1.99999ap-1f, 0x1.8f9c18p-1f, 0x1.861862p-1f, 0x1.7d05f4p-1f,
                          0x1.745d18p-1f, 0x1.6c16c2p-1f, 0x1.642c86p-1f, 0x1.5c9882p-1f);
  }
  /// @brief 1 / (1 + j/32), j = 16..31.
  static BEVKD_HOST_FORCEINLINE __m512 inverse_high() {
    return _mm512_setr_ps(0x1.555556p-1f, 0x1.4e5e0ap-1f, 0x1.47ae14p-1f, 0x1.414142p-1f, 0x1.3b13b2p-1f,
                          0x1.3521dp-1f, 0x1.2f684cp-1f, 0x1.29e412p-1f, 0x1.24924ap-1f, 0x1.1f7048p-1f, 0x1.1a7b96p-1f,
                          0x1.15b1e6p-1f, 0x1.111112p-1f, 0x1.0c9714p-1f, 0x1.08421p-1f, 0x1.041042p-1f);
  }
  /// @brief log(1 + j/32), j = 0..15.
  static BEVKD_HOST_FORCEINLINE __m512 log_low() {
    return _mm512_setr_ps(0x0p+0f, 0x1.f829bp-6f, 0x1.f0a30cp-5f, 0x1.6f0d28p-4f, 0x1.e27076p-4f, 0x1.29553p-3f,
                          0x1.5ff308p-3f, 0x1.9525aap-3f, 0x1.c8ff7cp-3f, 0x1.fb9186p-3f, 0x1.1675cap-2f, 0x1.2e8e2cp-2f,
                          0x1.4618bcp-2f, 0x1.5d1bdcp-2f, 0x1.739d8p-2f, 0x1.89a338p-2f);
  }
  /// @brief log(1 + j/32), j = 16..31.
  static BEVKD_HOST_FORCEINLINE __m512 log_high() {
    return _mm512_setr_ps(0x1.9f323ep-2f, 0x1.b44f78p-2f, 0x1.c8ff7cp-2f, 0x1.dd46ap-2f, 0x1.f128f6p-2f, 0x1.02552ap-1f,
                          0x1.0be72ep-1f, 0x1.154c3ep-1f, 0x1.1e85f6p-1f, 0x1.2795e2p-1f, 0x1.307d74p-1f, 0x1.393e0ep-1f,
                          0x1.41d8fep-1f, 0x1.4a4f86p-1f, 0x1.52a2d2p-1f, 0x1.5ad404p-1f);
  }
};

/// @brief log(1 + e) of sixteen e in [0, 1] (NaN for NaN), within 2 ulp (1.1 measured), exactly 0 at 0.
///
/// e = j/32 + d with j = floor(32 e), at most 31, so 0 <= d <= 1/32 (d exact): log(1 + j/32) from the table plus
/// log1p(r), r = d / (1 + j/32) <= 1/32, by its Taylor series to r^5 (the next term is below 2^-27 of r). Both
/// parts are >= 0, so nothing cancels. No 1 + e is formed, so nothing of a small e is rounded away.
BEVKD_HOST_FORCEINLINE __m512 log1p_unit(__m512 e) {
  const __m512 scaled = _mm512_mask_min_ps(e, all_lanes, _mm512_mul_ps(e, _mm512_set1_ps(32.0f)), _mm512_set1_ps(31.0f));
  const __m512i j = _mm512_maskz_cvttps_epi32(all_lanes, scaled);  // a NaN's index is any: its d is NaN
  const __m512 d = _mm512_fnmadd_ps(_mm512_maskz_cvtepi32_ps(all_lanes, j), _mm512_set1_ps(1.0f / 32.0f), e);
  // vpermt2ps takes the low five bits of each index: j.
  const __m512 r = _mm512_mul_ps(d, _mm512_permutex2var_ps(table_log1p::inverse_low(), j, table_log1p::inverse_high()));
  __m512 series = _mm512_fmadd_ps(r, _mm512_set1_ps(0.2f), _mm512_set1_ps(-0.25f));
  series = _mm512_fmadd_ps(series, r, _mm512_set1_ps(1.0f / 3.0f));
  series = _mm512_fmadd_ps(series, r, _mm512_set1_ps(-0.5f));
  series = _mm512_fmadd_ps(series, r, _mm512_set1_ps(1.0f));
  return _mm512_fmadd_ps(series, r, _mm512_permutex2var_ps(table_log1p::log_low(), j, table_log1p::log_high()));
}

/// @brief logistic (kl_rows.hpp) of sixteen logits: softplus(x), softplus(-x) and sigmoid(x), with its special values.
struct logistic_lanes {
  __m512 softplus;      ///< softplus(x) = -log(1 - sigmoid(x)).
  __m512 softplus_neg;  ///< softplus(-x) = -log(sigmoid(x)).
  __m512 prob;          ///< sigmoid(x); NaN for NaN.

  /// @brief The three of x, from e = e^-|x| (exp2: the exponential of factor log2(e)), one division and log1p_unit(e).
  BEVKD_HOST_FORCEINLINE logistic_lanes(__m512 x, const exp2_of_shift& exp2) {
    const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    const __m512 minus_abs = _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(x), sign));
    const __m512 e = exp2(minus_abs).value;  // 0 for +-inf, NaN for NaN
    const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    const __m512 inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
    const __m512 tail = log1p_unit(e);
    const __m512 minus_x = _mm512_castsi512_ps(_mm512_xor_epi32(_mm512_castps_si512(x), sign));
    // vmaxps returns its second operand where either is NaN: 0 + tail, NaN, as the generic x > 0 ? x : 0 gives.
    softplus = _mm512_add_ps(_mm512_mask_max_ps(x, all_lanes, x, zero), tail);
    softplus_neg = _mm512_add_ps(_mm512_mask_max_ps(x, all_lanes, minus_x, zero), tail);
    const __mmask16 nonnegative = _mm512_cmp_ps_mask(x, zero, _CMP_GE_OQ);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    prob = _mm512_mask_blend_ps(nan, _mm512_mask_blend_ps(nonnegative, _mm512_mul_ps(e, inv), inv), x);
  }
};

/// @brief graded for sixteen lanes (a struct of its own: vector types lose their attributes as template arguments).
struct graded_lanes {
  __m512 grad;   ///< Each lane's gradient scale.
  __m512 value;  ///< Each lane's loss term.
};

/// @brief sigmoid_kl_terms (kl_rows.hpp) on sixteen lanes: for 1 / tau, the gradient scale (s_S - s_T) and the
/// Bernoulli KL term of each lane's student and teacher logits.
class sigmoid_lanes {
 public:
  /// @brief The terms at temperature 1 / inv_tau.
  explicit sigmoid_lanes(float inv_tau) : exp2_(exp_constants::log2e), inv_tau_(_mm512_set1_ps(inv_tau)) {}

  /// @brief {scale (s_S - s_T), KL term} of student logits s and teacher logits t (scale: one per lane).
  BEVKD_HOST_FORCEINLINE graded_lanes operator()(__m512 s, __m512 t, __m512 scale) const {
    const logistic_lanes teacher(_mm512_mul_ps(t, inv_tau_), exp2_), student(_mm512_mul_ps(s, inv_tau_), exp2_);
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    // A side whose teacher probability is exactly 0 (or 1) adds 0, not 0 * inf; NaN is kept.
    const __mmask16 has_positive = _mm512_cmp_ps_mask(teacher.prob, zero, _CMP_NEQ_UQ);
    const __mmask16 has_negative = _mm512_cmp_ps_mask(teacher.prob, one, _CMP_NEQ_UQ);
    const __m512 positive =
        _mm512_maskz_mul_ps(has_positive, teacher.prob, _mm512_sub_ps(student.softplus_neg, teacher.softplus_neg));
    const __m512 negative = _mm512_maskz_mul_ps(has_negative, _mm512_sub_ps(one, teacher.prob),
                                                _mm512_sub_ps(student.softplus, teacher.softplus));
    return {_mm512_mul_ps(scale, _mm512_sub_ps(student.prob, teacher.prob)), _mm512_add_ps(positive, negative)};
  }

 private:
  exp2_of_shift exp2_;  // e^y as 2^(y log2 e)
  __m512 inv_tau_;      // 1 / tau
};

/// @brief The sixteen partial sums of v combined in fold_partials' pairwise order (lane k with k + 8, k + 4, k + 2,
/// k + 1), bit for bit.
BEVKD_HOST_FORCEINLINE float fold_sum(__m512 v) {
  const __m512 unused = _mm512_setzero_ps();
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(unused, all_lanes, v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(unused, all_lanes, v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(unused, all_lanes, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(unused, all_lanes, v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}

/// @brief The sum of a unit-stride row's sigmoid KL terms (before tau^2; T: one of host_float_lanes), its gradient scale
/// (s_S - s_T) written (Accumulate: added) at g: column c in partial c mod 16, folded pairwise, as the host team of one
/// sums.
template <bool Accumulate, class T>
float sigmoid_kl_row_sum(const T* s, const T* t, T* g, index_t n, float inv_tau, float scale) {
  const sigmoid_lanes terms(inv_tau);
  const __m512 scale_v = _mm512_set1_ps(scale);
  __m512 sum = _mm512_setzero_ps();
  for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
    const graded_lanes out = terms(load_floats(s + c, m), load_floats(t + c, m), scale_v);
    __m512 grad = out.grad;
    if constexpr (Accumulate) grad = _mm512_add_ps(load_floats(g + c, m), grad);
    store_floats<false>(g + c, grad, m);
    sum = _mm512_mask_add_ps(sum, m, sum, out.value);  // a tail's padding lanes keep their partials
  });
  return fold_sum(sum);
}

/// @brief The sigmoid KL terms of a lane-layout block of n columns (s, t: column c's sixteen rows at lane_index(c, 0),
/// fp32): each column's gradient scale written over s, each row's terms added to total[l] in column order.
template <class Block>
void sigmoid_kl_lane_columns(const Block& block, float* s, const float* t, const float* scale, float inv_tau,
                             float* total) {
  const sigmoid_lanes terms(inv_tau);
  const __m512 scale_v = _mm512_loadu_ps(scale);
  __m512 sum = _mm512_loadu_ps(total);
  for (index_t c = 0; c < block.n; ++c) {
    block.prefetch(c);
    float* const s_c = s + lane_index(c, 0);
    const graded_lanes out = terms(_mm512_loadu_ps(s_c), _mm512_loadu_ps(t + lane_index(c, 0)), scale_v);
    _mm512_storeu_ps(s_c, out.grad);
    sum = _mm512_add_ps(sum, out.value);
  }
  _mm512_storeu_ps(total, sum);
}

}  // namespace avx512
}  // namespace detail
}  // namespace bevkd

#endif
