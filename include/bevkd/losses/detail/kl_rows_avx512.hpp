// bevkd internal: AVX-512 passes of the host softmax KL blocks over fp32 rows (row and lane layout).
// SPDX-License-Identifier: Apache-2.0
#pragma once

// Why by hand: GCC vectorises the generic passes (kl_rows.hpp) well inside a row, but keeps
// their 16 partial accumulators in memory between its unrolled and remainder loops, runs each
// row's tail as scalar code and rebroadcasts every constant per row; a row of 64 columns is
// only four vectors, so that overhead weighs (measured, C = 64, -march=native: the exponential
// pass took 53 % of the call; these passes, inlined into the block, cut the call by about 11 %).
// These versions sum in the same order (column c in partial c mod 16, the same pairwise fold,
// done for sixteen rows at once by fold16), with plain loads and stores for full vectors and
// masked ones for the tail. Their exponentials are base 2 (table_exp2: a table of 2^(j/32), a
// quadratic, one vscalefps for 2^n; 1 / tau folded into one constant), so results differ from the
// generic passes' by a few ulp per exponential, the size of the exponent's own rounding.

#include "../../core/detail/avx512.hpp"

#if defined(BEVKD_HOST_AVX512)
#include <cstdint>
#include <cstring>
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

/// @brief The table and constants of exp2_of_shift: 2^(d k) = 2^n 2^(j/32) 2^f, d k = n + j / 32 + f, |f| <= 1/64.
///
/// Why base 2 and a table: the exponentials are most of the KL's arithmetic and run at the
/// floating-point ports' limit. The softmax's shift d = x - max, times log2(e) / tau folded into
/// one constant k, goes straight to 2^(d k): one multiply-add rounds d k to n + j / 32, one
/// subtract recovers n + j / 32 and one multiply-add f = d k - (n + j / 32) (no Cody-Waite
/// steps, and d k is never rounded on its own), one vpermt2ps reads 2^(j/32) from two registers,
/// a quadratic gives 2^f, and one vscalefps scales by 2^n: 9 vector operations per exponential,
/// where the same table in base e took 11 besides its multiply by 1 / tau (measured: KL C = 64
/// rows in cache 7-8 % faster with the cubic this had first; the quadratic then took 1-3 % off
/// C = 64 and 5 % off C = 256; forming d k inside the rounding instead of first, 4 % off C = 64 rows in L2).
struct table_exp2 {
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
  /// @brief The quadratic 2^f ~ 1 + f (c1 + f c2), minimax in relative error on |f| <= 1/64 (5.3e-8, under half an
  /// ulp): with the table's and the final multiply-add's roundings, 2^(d k) is within 2 ulp of the exact power
  /// (exhaustive over the floats d down to -126 / k for k = 1, log2(e) / tau at tau = 0.5, 0.75, 1, 2; mean 0.06
  /// ulp). A cubic (Taylor, 0.072 ulp mean, 1.005 worst, before d k was fused) took one more multiply-add per
  /// exponential, two per element of a softmax KL.
  static constexpr float c1 = 0x1.62e584p-1f;  ///< ln 2, nudged by the fit.
  static constexpr float c2 = 0x1.ebfbdep-3f;  ///< (ln 2)^2 / 2, nudged by the fit.
  /// @brief Smallest power whose 2^y is normal; exp2_of_shift returns 0 below it.
  static constexpr float floor = -126.0f;
};

/// @brief 2^(d k) for sixteen floats d <= 0 and the lanes where that is not 0.
struct exp2_lanes {
  __m512 value;       ///< 2^(d k) within 2 ulp, exactly 1 at 0, 0 below lowest() and for -inf, NaN for NaN.
  __mmask16 nonzero;  ///< Lanes of d >= lowest() or NaN: those whose value is not 0.
};

/// @brief 2^(d k) of sixteen shifts d <= 0 for one factor k > 0 (see table_exp2).
class exp2_of_shift {
 public:
  /// @brief The exponential of factor k (finite, > 0).
  explicit exp2_of_shift(float k) : factor_(_mm512_set1_ps(k)), lowest_(_mm512_set1_ps(lowest(k))) {}

  /// @brief The smallest float d whose d k is at least table_exp2::floor: 2^(d k) is normal from it to 0.
  static float lowest(float k) {
    float d = table_exp2::floor / k;
    // d k of two floats is exact in double; step d toward 0 (one less in the magnitude's bits, d being negative)
    // until it is in range.
    while (static_cast<double>(d) * k < table_exp2::floor) {
      std::uint32_t bits;
      std::memcpy(&bits, &d, sizeof bits);
      --bits;
      std::memcpy(&d, &bits, sizeof d);
    }
    return d;
  }

  /// @brief exp2_lanes of d.
  BEVKD_HOST_FORCEINLINE exp2_lanes operator()(__m512 d) const {
    using c = table_exp2;
    const __m512 magic = _mm512_set1_ps(c::round_magic);
    const __m512 shifted = _mm512_fmadd_ps(d, factor_, magic);  // d k rounded to a multiple of 1/32, plus magic
    const __m512 n = _mm512_sub_ps(shifted, magic);               // n + j / 32
    const __m512 f = _mm512_fmsub_ps(d, factor_, n);              // d k - n - j / 32, one rounding
    // vpermt2ps takes the low five bits of each index: j.
    const __m512 t = _mm512_permutex2var_ps(c::low(), _mm512_castps_si512(shifted), c::high());
    const __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(c::c2), f, _mm512_set1_ps(c::c1));
    const __m512 p = _mm512_fmadd_ps(_mm512_mul_ps(t, f), q, t);  // 2^(j/32) 2^f
    const __mmask16 kept = _mm512_cmp_ps_mask(d, lowest_, _CMP_NLT_UQ);  // NaN is kept
    // p * 2^floor(n + j / 32) = p * 2^n in one instruction (vscalefps floors its exponent); exact, as the result is
    // normal for every kept d.
    return {_mm512_maskz_scalef_ps(kept, p, n), kept};
  }

 private:
  __m512 factor_;  // k
  __m512 lowest_;  // lowest(k)
};

/// @brief What softmax_exponent is on sixteen logits here: the shift x - max; the 1 / tau (and log2 e) are folded
/// into the exponentials' constant and the cross sum's final scale.
BEVKD_HOST_FORCEINLINE __m512 softmax_shift(__m512 x, __m512 max) { return _mm512_sub_ps(x, max); }

/// @brief log2(e) / tau: the factor that takes a softmax shift to the base-2 exponent of its exponential.
BEVKD_HOST_FORCEINLINE float exp2_factor(float inv_tau) { return exp_constants::log2e * inv_tau; }

/// @brief softmax_terms of sixteen columns (row layout) or rows (lane layout) from their shifts d_t (teacher) and
/// d_s (student), a = d_t / tau and b = d_s / tau: e^a, e^b and, for the cross sum, e^a (d_t - d_s) = tau e^a (a - b).
struct column_terms {
  exp2_lanes e_t;  ///< e^a, and where it is not 0.
  __m512 e_s;      ///< e^b.
  __m512 diff;     ///< d_t - d_s.

  /// @brief The terms of d_t, d_s with the exponential of exp2_factor.
  BEVKD_HOST_FORCEINLINE column_terms(__m512 d_t, __m512 d_s, const exp2_of_shift& exp2)
      : e_t(exp2(d_t)),
        e_s(exp2(d_s).value),
        diff(_mm512_sub_ps(d_t, d_s)) {}

  /// @brief cross + e^a (d_t - d_s) in the lanes of `lanes` where e^a is not 0 (a zero teacher probability adds 0,
  /// not 0 * inf); cross elsewhere.
  BEVKD_HOST_FORCEINLINE __m512 add_cross(__m512 cross, __mmask16 lanes) const {
    return _mm512_mask3_fmadd_ps(e_t.value, diff, cross, e_t.nonzero & lanes);
  }
};

/// @brief A cross sum of column_terms::add_cross in the units of softmax_terms::cross (times 1 / tau).
template <bool UnitTau>
BEVKD_HOST_FORCEINLINE __m512 cross_in_exponent_units(__m512 cross, float inv_tau) {
  return UnitTau ? cross : _mm512_mul_ps(cross, _mm512_set1_ps(inv_tau));
}

/// @brief The exponential pass of softmax_kl_lanes over a block of n columns in lane layout (s, t: column c's
/// sixteen rows at 16 c), exponentials written over s and t; writes each lane's sums, added in column order.
template <bool UnitTau, class Block>
void lane_exponentials(const Block& block, float* s, float* t, index_t n, float inv_tau, const float* max_t,
                       const float* max_s, float* z_t, float* z_s, float* cross) {
  const exp2_of_shift exp2(exp2_factor(UnitTau ? 1.0f : inv_tau));
  const __m512 max_t_v = _mm512_loadu_ps(max_t), max_s_v = _mm512_loadu_ps(max_s);
  __m512 sum_t = _mm512_setzero_ps(), sum_s = sum_t, sum_cross = sum_t;
  for (index_t c = 0; c < n; ++c) {
    block.prefetch(c);
    float* const s_c = s + 16 * c;
    float* const t_c = t + 16 * c;
    const column_terms x(softmax_shift(_mm512_loadu_ps(t_c), max_t_v), softmax_shift(_mm512_loadu_ps(s_c), max_s_v),
                         exp2);
    _mm512_storeu_ps(t_c, x.e_t.value);
    _mm512_storeu_ps(s_c, x.e_s);
    sum_t = _mm512_add_ps(sum_t, x.e_t.value);
    sum_s = _mm512_add_ps(sum_s, x.e_s);
    sum_cross = x.add_cross(sum_cross, all_lanes);
  }
  _mm512_storeu_ps(z_t, sum_t);
  _mm512_storeu_ps(z_s, sum_s);
  _mm512_storeu_ps(cross, cross_in_exponent_units<UnitTau>(sum_cross, inv_tau));
}

/// @brief row_layout_passes for rows of T, one of host_float_lanes: fp32, and half and bfloat16 (read widened to fp32,
/// gradients rounded back, in registers) where the build has AVX-512BW (the same members; force-inlined, as they need
/// no alias analysis).
template <class T>
struct row_passes {
  using partials = __m512;  ///< A run's sixteen partial results of one reduction.
  /// @brief True: fold writes the runs' results into its `out`.
  static constexpr bool fold_writes_results = true;

  /// @brief The row's partial maxima of t and s.
  static BEVKD_HOST_FORCEINLINE void maxima(const T* s, const T* t, index_t n, __m512& part_t, __m512& part_s) {
    const __m512 lowest = _mm512_set1_ps(-math::infinity<float>());
    // A tail's padding lanes read -inf (full vectors: a constant mask, no blend).
    const auto column = [&](const T* p, __mmask16 m) BEVKD_INLINE_LAMBDA {
      return m == all_lanes ? load_floats(p, m) : _mm512_mask_mov_ps(lowest, m, load_floats(p, m));
    };
    __m512 max_t = lowest, max_s = lowest;
    for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
      // max(x, part): x > part ? x : part, as shift_max_op (a NaN column leaves the partial as it was).
      max_t = _mm512_mask_max_ps(max_t, all_lanes, column(t + c, m), max_t);
      max_s = _mm512_mask_max_ps(max_s, all_lanes, column(s + c, m), max_s);
    });
    part_t = max_t;
    part_s = max_s;
  }

  /// @brief What exponentials needs of 1 / tau, made once per block (UnitTau: inv_tau is 1): the exponential's
  /// constants take a division, which per row cost the K = 32 rows 16 % at tau != 1.
  template <bool UnitTau>
  struct exponent {
    float inv_tau;       ///< 1 / tau.
    exp2_of_shift exp2;  ///< e^(d / tau) as 2^(d exp2_factor(1 / tau)).
    /// @brief The constants of 1 / tau.
    explicit exponent(float inv_tau_in) : inv_tau(inv_tau_in), exp2(exp2_factor(UnitTau ? 1.0f : inv_tau_in)) {}
  };

  /// @brief The row's partial sums {z_T, z_S, cross}; the exponentials go to e_t and e_s.
  template <bool UnitTau>
  static BEVKD_HOST_FORCEINLINE void exponentials(const T* s, const T* t, index_t n,
                                                  const exponent<UnitTau>& x_of, float max_t, float max_s, float* e_t,
                                                  float* e_s, __m512& sum_t, __m512& sum_s, __m512& sum_cross) {
    const exp2_of_shift& exp2 = x_of.exp2;
    const __m512 max_t_v = _mm512_set1_ps(max_t), max_s_v = _mm512_set1_ps(max_s);
    const __m512 zero = _mm512_setzero_ps();
    __m512 z_t = zero, z_s = zero, cross = zero;
    for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
      const column_terms x(softmax_shift(load_floats(t + c, m), max_t_v), softmax_shift(load_floats(s + c, m), max_s_v),
                           exp2);
      _mm512_mask_storeu_ps(e_t + c, m, x.e_t.value);
      _mm512_mask_storeu_ps(e_s + c, m, x.e_s);
      // Masked adds: the tail's padding columns have exponentials of their own.
      z_t = _mm512_mask_add_ps(z_t, m, z_t, x.e_t.value);
      z_s = _mm512_mask_add_ps(z_s, m, z_s, x.e_s);
      cross = x.add_cross(cross, m);
    });
    sum_t = z_t;
    sum_s = z_s;
    sum_cross = cross_in_exponent_units<UnitTau>(cross, x_of.inv_tau);
  }

  /// @brief The results of p[0 .. count), p[i]'s partials combined with op, in `out` (sixteen at a time by fold16).
  template <class Op>
  static BEVKD_HOST_FORCEINLINE const float* fold(Op op, const __m512* p, int count, float* out) {
    for (int first = 0; first < count; first += 16) {
      const int here = count - first < 16 ? count - first : 16;
      __m512 v[16];
      BEVKD_UNROLL
      for (int i = 0; i < 16; ++i) v[i] = i < here ? p[first + i] : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(out + first, column_mask(0, here), fold16(op, v));
    }
    return out;
  }

  /// @brief g = scale (e_s / z_S - e_t / z_T), or g += that when Accumulate (as e_s (scale / z_S) - e_t (scale / z_T):
  /// one multiply fewer per column); whole aligned lines with non-temporal stores when Stream is set.
  template <bool Accumulate, bool Stream>
  static BEVKD_HOST_FORCEINLINE void grad(T* g, index_t n, const float* e_t, const float* e_s, float scale,
                                          float inv_zt, float inv_zs) {
    const __m512 coeff_t = _mm512_set1_ps(scale * inv_zt), coeff_s = _mm512_set1_ps(scale * inv_zs);
    for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
      const __m512 q_t = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, e_t + c), coeff_t);
      __m512 value = _mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, e_s + c), coeff_s, q_t);
      if constexpr (Accumulate) value = _mm512_add_ps(load_floats(g + c, m), value);
      store_floats<Stream>(g + c, value, m);
    });
  }
};

/// @brief The passes of the softmax KL over columns [first, last) of a lane group of float, half or bfloat16 rows (see
/// lane_group_passes in kl_rows.hpp), in fp32: lane l of each vector row l, column c of the group one vector; the lanes
/// from count on read 0 and write nothing.
template <class T>
struct lane_group_passes {
  /// @brief 1 / tau and the exponential's constants, made once per set.
  using exponent = row_passes<float>::exponent<false>;

  /// @brief Each row's maxima of t and s, taken further over the columns (as shift_max_op: a NaN column leaves a
  /// maximum as it was).
  static void maxima(const lane_group<T>& group, index_t first, index_t last, float* max_t, float* max_s) {
    const group_columns<T> x(group);
    __m512 m_t = _mm512_loadu_ps(max_t), m_s = _mm512_loadu_ps(max_s);
    for (index_t c = first; c < last; ++c) {
      group.read_ahead(c);
      m_t = _mm512_mask_max_ps(m_t, all_lanes, x.teacher(c), m_t);
      m_s = _mm512_mask_max_ps(m_s, all_lanes, x.student(c), m_s);
    }
    _mm512_storeu_ps(max_t, m_t);
    _mm512_storeu_ps(max_s, m_s);
  }

  /// @brief Each row's {z_T, z_S, cross} (softmax_terms' units), added to z in pieces of lane_group_piece columns
  /// (first is a multiple of it).
  static void sums(const lane_group<T>& group, index_t first, index_t last, const exponent& x_of,
                   const float* max_t, const float* max_s, float (&z)[3][block_rows]) {
    const group_columns<T> x(group);
    const __m512 m_t = _mm512_loadu_ps(max_t), m_s = _mm512_loadu_ps(max_s);
    add_in_pieces(group, first, last, z, [&](index_t c, __m512 (&piece)[3]) BEVKD_INLINE_LAMBDA {
      const column_terms e(softmax_shift(x.teacher(c), m_t), softmax_shift(x.student(c), m_s), x_of.exp2);
      piece[0] = _mm512_add_ps(piece[0], e.e_t.value);
      piece[1] = _mm512_add_ps(piece[1], e.e_s);
      piece[2] = e.add_cross(piece[2], all_lanes);
    });
  }

  /// @brief maxima() then sums() of one segment [first, last) of the columns, while its columns are in the cache: the
  /// maxima so far (in max_t, max_s) are taken over the segment, and the sums of the earlier segments (first > 0) are
  /// carried over to the new maxima first (rescale). One read of the tensors from memory instead of two.
  static void segment_sums(const lane_group<T>& group, index_t first, index_t last, const exponent& x_of,
                           float* max_t, float* max_s, float (&z)[3][block_rows]) {
    const __m512 old_t = _mm512_loadu_ps(max_t), old_s = _mm512_loadu_ps(max_s);
    maxima(group, first, last, max_t, max_s);
    if (first > 0)
      rescale(_mm512_sub_ps(old_t, _mm512_loadu_ps(max_t)), _mm512_sub_ps(old_s, _mm512_loadu_ps(max_s)), x_of, z);
    sums(group, first, last, x_of, max_t, max_s, z);
  }

  /// @brief Takes sums {z_T, z_S, cross} made with shifts by some maxima to shifts by maxima larger by -d_t, -d_s
  /// (d <= 0): e^a scales by e^(d_t / tau), e^b by e^(d_s / tau), and each shift difference d_t - d_s of cross grows
  /// by d_t - d_s. Exact where the maxima did not change (d = 0: factors of exactly 1).
  static BEVKD_HOST_FORCEINLINE void rescale(__m512 d_t, __m512 d_s, const exponent& x_of, float (&z)[3][block_rows]) {
    const __m512 f_t = x_of.exp2(d_t).value, f_s = x_of.exp2(d_s).value, z_t = _mm512_loadu_ps(z[0]);
    _mm512_storeu_ps(z[2], _mm512_mul_ps(f_t, _mm512_fmadd_ps(z_t, _mm512_sub_ps(d_t, d_s), _mm512_loadu_ps(z[2]))));
    _mm512_storeu_ps(z[0], _mm512_mul_ps(f_t, z_t));
    _mm512_storeu_ps(z[1], _mm512_mul_ps(f_s, _mm512_loadu_ps(z[1])));
  }

  /// @brief A row's cross sum of sums() in softmax_terms' units: here it is kept in units of the shifts, as
  /// column_terms adds it, until all columns are in.
  static BEVKD_HOST_FORCEINLINE float cross_units(float cross, const exponent& x_of) { return cross * x_of.inv_tau; }

  /// @brief Writes (Accumulate: adds) e_s scale_s - e_t scale_t into the rows' gradients from recomputed exponentials,
  /// exactly 0 in rows with skip set (nothing when accumulating); whole columns streamed when Stream is set.
  template <bool Accumulate, bool Stream>
  static void grad(const lane_group<T>& group, index_t first, index_t last, const exponent& x_of,
                   const float* max_t, const float* max_s, const float* scale_t, const float* scale_s,
                   const bool* skip) {
    const group_columns<T> x(group);
    const group_grad_writer<T, Accumulate, Stream> write(group, skip);
    const __m512 m_t = _mm512_loadu_ps(max_t), m_s = _mm512_loadu_ps(max_s);
    const __m512 k_t = _mm512_loadu_ps(scale_t), k_s = _mm512_loadu_ps(scale_s);
    for (index_t c = first; c < last; ++c) {
      group.read_ahead(c);
      const __m512 q_t = _mm512_mul_ps(x_of.exp2(softmax_shift(x.teacher(c), m_t)).value, k_t);
      write(c, _mm512_fmsub_ps(x_of.exp2(softmax_shift(x.student(c), m_s)).value, k_s, q_t));
    }
  }
};

}  // namespace avx512
}  // namespace detail
}  // namespace bevkd

#endif
