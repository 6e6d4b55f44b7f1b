// bevkd internal: team-collective per-row feature MSE, plain and per-pillar L2-normalised.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <type_traits>

#include "../../core/config.hpp"
#include "../../core/detail/avx512.hpp"
#include "../../core/detail/lanes.hpp"
#include "../../core/detail/row_blocks.hpp"
#include "../../core/detail/row_driver.hpp"
#include "../../core/dtype.hpp"
#include "../../core/math.hpp"
#include "../../core/team.hpp"

namespace bevkd {
namespace detail {

/// @brief The plain MSE's gradient scale (s - t) of an element s (teacher t) and its (s - t)^2, with scale = coeff 2 / n:
/// one formula for the row kernel and the host lane groups.
template <class Acc>
BEVKD_FORCEINLINE graded<Acc, Acc> mse_element(Acc scale, Acc s, Acc t) {
  const Acc d = s - t;
  return graded<Acc, Acc>{scale * d, d * d};
}

/// @brief (1/n) sum_c (s_c - t_c)^2 over one row; writes coeff * (2/n) (s_c - t_c). One pass.
template <class Team, class T, bool Unit, class Acc = accum_t<T>>
BEVKD_HOST_DEVICE BEVKD_HOST_NOINLINE Acc mse_row(const Team& team, const loss_row<T, Unit>& row, Acc coeff, bool accumulate) {
  const Acc inv_n = Acc(1) / static_cast<Acc>(row.n);
  const Acc scale = coeff * Acc(2) * inv_n;
  const Acc total = team.reduce_grads(sum_op{}, Acc(0), row, accumulate,
                                      [scale](index_t, Acc s, Acc t) { return mse_element(scale, s, t); });
  return total * inv_n;
}

/// @brief The per-row constants of the normalised MSE (normalized_mse_row) from the row's dot products, and the
/// gradient and squared difference of each element: one formula for the row kernels and the host lane groups.
///
/// With s_hat = s / n_s and g = (2/n)(s_hat - t_hat): dl/ds = (g - s_hat (s_hat . g)) / n_s
/// when ||s|| > eps, and g / eps when the norm is clamped (the map is then linear).
template <class Acc>
struct normalized_mse_terms {
  Acc div_s;       ///< max(||s||, eps): what the student's elements are divided by.
  Acc div_t;       ///< max(||t||, eps).
  Acc inv_n;       ///< 1 / n.
  Acc projection;  ///< s_hat . g (0 when the student's norm is clamped).
  Acc scale;       ///< coeff / div_s.

  /// @brief The constants of a row of n elements with s . s, t . t and s . t, norm clamp eps and gradient coefficient.
  /// Force-inlined: with a host row block calling it too, GCC made it a call of its own, and the per-row kernel of
  /// C = 256 rows 10 % slower (measured).
  BEVKD_FORCEINLINE normalized_mse_terms(Acc ss, Acc tt, Acc st, index_t n, Acc eps, Acc coeff) {
    const Acc norm_s = math::sqrt(ss), norm_t = math::sqrt(tt);
    const bool clamped = !(norm_s > eps);
    div_s = clamped ? eps : norm_s;
    div_t = norm_t > eps ? norm_t : eps;
    inv_n = Acc(1) / static_cast<Acc>(n);
    // s_hat . g = (2/n)(s_hat . s_hat - s_hat . t_hat) with s_hat . s_hat = 1 exactly when the
    // norm is not clamped (the projection is zero when it is). Dividing rather than multiplying
    // by reciprocals keeps one-element rows exactly +-1, so their gradient is exactly 0.
    projection = clamped ? Acc(0) : Acc(2) * inv_n * (Acc(1) - st / (div_s * div_t));
    scale = coeff / div_s;
  }

  /// @brief The gradient coeff * dl/ds of an element s (teacher t; any column) and its (s_hat - t_hat)^2.
  BEVKD_HOST_DEVICE graded<Acc, Acc> operator()(index_t, Acc s, Acc t) const {
    return element(s, t, div_s, div_t, scale, projection, inv_n);
  }

  /// @brief operator() from a row's constants passed one by one (host row blocks keep each as an array over rows).
  static BEVKD_FORCEINLINE graded<Acc, Acc> element(Acc s, Acc t, Acc div_s, Acc div_t, Acc scale, Acc projection,
                                                    Acc inv_n) {
    const Acc s_hat = s / div_s;
    const Acc d = s_hat - t / div_t;
    return graded<Acc, Acc>{scale * (Acc(2) * inv_n * d - s_hat * projection), d * d};
  }
};

/// @brief The normalized_mse_terms of sixteen rows, each constant an array over the rows (what the host's block and
/// lane-group kernels read lane by lane; an array of the structs kept GCC from vectorising the lane loop: measured,
/// C = 10, 2.3 ms against 1.3 ms).
template <class Acc>
struct normalized_mse_rows {
  Acc div_s[block_rows];       ///< normalized_mse_terms::div_s of each row.
  Acc div_t[block_rows];       ///< normalized_mse_terms::div_t of each row.
  Acc projection[block_rows];  ///< normalized_mse_terms::projection of each row.
  Acc scale[block_rows];       ///< normalized_mse_terms::scale of each row.

  /// @brief Sets row l's constants.
  void set(int l, const normalized_mse_terms<Acc>& row) {
    div_s[l] = row.div_s;
    div_t[l] = row.div_t;
    projection[l] = row.projection;
    scale[l] = row.scale;
  }
};

#if defined(BEVKD_HOST_AVX512)
namespace avx512 {

/// @brief normalized_mse_terms::element on sixteen lanes (sixteen columns of one row, or one column of sixteen rows:
/// the constants are vectors either way).
struct normalized_mse_lanes {
  __m512 div_s;       ///< normalized_mse_terms::div_s.
  __m512 div_t;       ///< normalized_mse_terms::div_t.
  __m512 projection;  ///< normalized_mse_terms::projection.
  __m512 scale;       ///< normalized_mse_terms::scale.
  __m512 two_inv_n;   ///< 2 / n.

  /// @brief The gradient of student lanes s (teacher t); d receives s_hat - t_hat.
  BEVKD_HOST_FORCEINLINE __m512 grad(__m512 s, __m512 t, __m512& d) const {
    const __m512 s_hat = _mm512_div_ps(s, div_s);
    d = _mm512_sub_ps(s_hat, _mm512_div_ps(t, div_t));
    return _mm512_mul_ps(scale, _mm512_fmsub_ps(two_inv_n, d, _mm512_mul_ps(s_hat, projection)));
  }
};

}  // namespace avx512
#endif

/// @brief MSE of s / max(||s||, eps) and t / max(||t||, eps) over one row (a loss_row, or a row a team holds, see
/// hold_row), with the gradient through s's normalisation (normalized_mse_terms). Two passes: the norms and dot
/// product, then the gradient.
template <class Team, class Row, class Acc>
BEVKD_HOST_DEVICE BEVKD_HOST_NOINLINE Acc normalized_mse_row(const Team& team, const Row& row, Acc eps, Acc coeff,
                                                             bool accumulate) {
  using triple = acc_array<Acc, 3>;
  const triple dots = team.reduce_values(sum_op{}, triple{{Acc(0), Acc(0), Acc(0)}}, row,
                                         [&](index_t, Acc s, Acc t) { return triple{{s * s, t * t, s * t}}; });
  const normalized_mse_terms<Acc> terms(dots[0], dots[1], dots[2], row.n, eps, coeff);
  const Acc total = team.reduce_grads(sum_op{}, Acc(0), row, accumulate, terms);
  return total * terms.inv_n;
}

/// @brief normalized_mse_row for the rows of a host row block in lane layout (see lane_layout_fits): loss[l] of row l;
/// writes coeff[l] dl/ds, exactly 0 (or nothing, when accumulating) for rows with skip set. A dot-product pass, then
/// the gradient pass, each column's sixteen rows one vectorised loop.
///
/// Why: rows of 10 channels are too short for the per-row loops to vectorise (measured, B = 2, 200 x 200, fp32, one
/// thread: 4.5 ms, slower than the naive multi-pass reference's 2.6 ms; 1.4 ms so). The plain MSE does not transpose:
/// in lane layout it ran 1.0 -> 0.86 ms on one thread but 0.52 -> 0.62 on two and bf16 1.2 -> 2.5 ms (the transposes
/// cost what its one pass saves); it reads its short rows in place (mse_row_layout).
template <class Block, class Acc>
void normalized_mse_block(const Block& block, const Acc* coeff, const bool* skip, bool accumulate, Acc* scratch,
                          Acc eps, Acc* loss) {
  const index_t n = block.n;
  const Acc inv_n = Acc(1) / static_cast<Acc>(n);
  Acc* s = scratch;
  Acc* t = scratch + block_rows * n;
  block.gather(s, t);
  Acc ss[block_rows] = {}, tt[block_rows] = {}, st[block_rows] = {};
  for (index_t c = 0; c < n; ++c) {
    const Acc* BEVKD_RESTRICT s_c = s + lane_index(c, 0);
    const Acc* BEVKD_RESTRICT t_c = t + lane_index(c, 0);
    for (int l = 0; l < block_rows; ++l) {
      ss[l] += s_c[l] * s_c[l];
      tt[l] += t_c[l] * t_c[l];
      st[l] += s_c[l] * t_c[l];
    }
  }
  normalized_mse_rows<Acc> rows;
  for (int l = 0; l < block_rows; ++l) rows.set(l, normalized_mse_terms<Acc>(ss[l], tt[l], st[l], n, eps, coeff[l]));
  Acc total[block_rows] = {};
  for (index_t c = 0; c < n; ++c) {
    block.prefetch(c);
    Acc* BEVKD_RESTRICT s_c = s + lane_index(c, 0);
    const Acc* BEVKD_RESTRICT t_c = t + lane_index(c, 0);
    BEVKD_IVDEP  // GCC does not take the restrict of these local pointers
    for (int l = 0; l < block_rows; ++l) {
      const graded<Acc, Acc> out = normalized_mse_terms<Acc>::element(s_c[l], t_c[l], rows.div_s[l], rows.div_t[l],
                                                                      rows.scale[l], rows.projection[l], inv_n);
      s_c[l] = out.grad;  // the gradient in place of the student
      total[l] += out.value;
    }
  }
  for (int l = 0; l < block_rows; ++l) loss[l] = total[l] * inv_n;
  block.scatter(s, skip, accumulate);
}

/// @brief Longest rows normalized_mse_row_layout takes: its two passes read a block's rows twice, and from 16 x 2 x 128
/// floats (16 KiB) on they no longer stay in L1 between them (measured, fp32, 20000 rows, one thread, Zen 4, against
/// the per-row kernel, which holds each row: C = 48 1.49 -> 0.60 ms, 64 1.60 -> 0.74, 128 2.03 -> 1.31, 192
/// 2.46 -> 2.30, 256 2.91 -> 3.55).
constexpr index_t max_normalized_mse_row_layout_columns = 128;

/// @brief True when a host row block runs rows of n columns of T through normalized_mse_row_layout: unit-stride rows of
/// host_float_lanes up to max_normalized_mse_row_layout_columns (shorter ones too: read in place, they need none of
/// normalized_mse_block's transposes; measured, B = 2, 200 x 200, one thread, Zen 4: fp32 C = 10 2.00 -> 1.49 ms,
/// C = 16 2.83 -> 1.47, bf16 C = 32 5.09 -> 1.91).
template <class T>
constexpr bool normalized_mse_row_layout_fits(index_t n, bool unit_stride) {
  return host_float_lanes<T>() && unit_stride && n <= max_normalized_mse_row_layout_columns;
}

/// @brief Longest rows mse_short_rows takes: from 32 columns on, the per-row kernel's loop runs in whole vectors of
/// partials, where mse_short_rows's one sum per row waits on each add (measured, portable -O3 build, fp32, one
/// thread, Zen 4, 800000 elements: C = 16 0.80 -> 0.52 ms, C = 24 0.62 -> 0.48, C = 32 0.50 -> 0.49, C = 48
/// 0.41 -> 0.49, C = 64 0.40 -> 0.48).
constexpr index_t max_short_mse_row_columns = 2 * row_partials - 1;

/// @brief True when a host row block runs plain-MSE rows of n columns of T through mse_short_rows: unit-stride rows
/// with float accumulators, up to max_short_mse_row_columns, where mse_row_layout does not apply (builds without
/// AVX-512, and 16-bit rows without AVX-512BW).
template <class T>
constexpr bool short_mse_rows_fit(index_t n, bool unit_stride) {
  return !host_float_lanes<T>() && std::is_same<accum_t<T>, float>::value && unit_stride &&
         n <= max_short_mse_row_columns;
}

/// @brief One row of mse_short_rows: writes scale (s - t) into g (adds it when accumulating); returns the row's sum
/// of (s - t)^2, added in column order.
template <class In, class Out>
BEVKD_FORCEINLINE float short_mse_row(const In* s, const In* t, Out* g, index_t n, float scale, bool accumulate) {
  float sum = 0;
  for (index_t c = 0; c < n; ++c) {
    const graded<float, float> out = mse_element(scale, load_as_accum(s[c]), load_as_accum(t[c]));
    write_grad(g[c], out.grad, accumulate);
    sum += out.value;
  }
  return sum;
}

/// @brief True when the rows of a block lie back to back in all three tensors (row l + 1 starts where row l ends).
template <class T, bool Unit>
BEVKD_HOST_FORCEINLINE bool rows_back_to_back(const spaced_rows<T, Unit>& block) {
  return block.step[0] == block.n && block.step[1] == block.n && block.step[2] == block.n;
}
/// @brief A block whose rows are listed one by one: not known to lie back to back.
template <class T, bool Unit>
BEVKD_HOST_FORCEINLINE bool rows_back_to_back(const row_block<T, Unit>&) {
  return false;
}

/// @brief mse_short_rows for half and bfloat16 rows that lie back to back: the block's student and teacher widened to
/// float in one loop each, its gradient rounded back in one (the same values, element for element, as converted one
/// at a time). Not for an accumulating call with excluded rows, whose gradients must stay exactly as they were.
///
/// Why: converted element by element inside each row's short loop, bfloat16 rows of 10 ran slower than the naive
/// reference, which converts whole tensors (measured, portable -O3 build, B = 2, 200 x 200, one thread, Zen 4: 1.88
/// ms, the naive 1.44).
template <class Block>
void mse_short_rows_widened(const Block& block, const float* coeff, const bool* skip, bool accumulate, float inv_n,
                            float* loss) {
  constexpr index_t capacity = block_rows * max_short_mse_row_columns;
  float s[capacity], t[capacity], g[capacity];
  const index_t n = block.n, size = block.count * n;
  const auto first = block.row(0);
  // In runs of row_partials (for_row_partials), so that a -O2 build vectorises these loops too.
  for_row_partials(size, [&](index_t e, int) BEVKD_INLINE_LAMBDA { s[e] = load_as_accum(first.student.ptr[e]); });
  for_row_partials(size, [&](index_t e, int) BEVKD_INLINE_LAMBDA { t[e] = load_as_accum(first.teacher.ptr[e]); });
  for (int l = 0; l < block.count; ++l) {
    float* const g_l = g + l * n;
    if (skip[l]) {  // exactly 0: its terms may be NaN (and accumulating calls with excluded rows never come here)
      for (index_t c = 0; c < n; ++c) g_l[c] = 0.0f;
      loss[l] = 0.0f;
    } else {
      loss[l] = short_mse_row(s + l * n, t + l * n, g_l, n, coeff[l] * 2.0f * inv_n, false) * inv_n;
    }
  }
  for_row_partials(size, [&](index_t e, int) BEVKD_INLINE_LAMBDA { write_grad(first.grad.ptr[e], g[e], accumulate); });
}

/// @brief mse_row for the short rows of a host row block (short_mse_rows_fit), in portable code: loss[l] of row l;
/// writes coeff[l] (2/n)(s - t), exactly 0 (or nothing, when accumulating) for rows with skip set. Each row one
/// loop over its columns (short_mse_row); half and bfloat16 rows that lie back to back widened and rounded a block at
/// a time (mse_short_rows_widened).
///
/// Why: on rows of 10 channels the per-row kernel is mostly its set-up (a call, a division) and the fold of its
/// sixteen partials, which its ten columns do not fill, and ran slower than the naive multi-pass reference (measured,
/// portable -O3 build, fp32, B = 2, 200 x 200, one thread, Zen 4: 1.36 -> 0.65 ms here, the naive 1.00; C = 1 and 3
/// 2.9x and 2.2x).
template <class Block>
void mse_short_rows(const Block& block_rows_in, const float* coeff, const bool* skip, bool accumulate, float* loss) {
  const auto& block = held_rows(block_rows_in);
  using T = typename Block::value_type;
  const index_t n = block.n;
  const float inv_n = 1.0f / static_cast<float>(n);
  if constexpr (!std::is_same<T, float>::value) {
    if (rows_back_to_back(block) && !(accumulate && std::any_of(skip, skip + block.count, [](bool b) { return b; }))) {
      mse_short_rows_widened(block, coeff, skip, accumulate, inv_n, loss);
      return;
    }
  }
  for (int l = 0; l < block.count; ++l) {
    const auto row = block.row(l);
    if (skip[l]) {  // written as 0 outright (nothing when accumulating): its terms may be NaN
      if (!accumulate) write_zeros(row.grad.ptr, n, false);
      loss[l] = 0.0f;
    } else {
      loss[l] = short_mse_row(row.student.ptr, row.teacher.ptr, row.grad.ptr, n, coeff[l] * 2.0f * inv_n, accumulate) *
                inv_n;
    }
  }
}

/// @brief Longest rows the plain MSE runs in host row blocks (mse_row_layout); longer ones keep the per-row kernel.
constexpr index_t max_mse_row_layout_columns = max_row_layout_columns;

/// @brief True when a host row block runs rows of n columns of T through mse_row_layout: unit-stride rows of
/// host_float_lanes, up to max_mse_row_layout_columns.
template <class T>
constexpr bool mse_row_layout_fits(index_t n, bool unit_stride) {
  return host_float_lanes<T>() && unit_stride && n <= max_mse_row_layout_columns;
}

#if defined(BEVKD_HOST_AVX512)
namespace avx512 {

/// @brief The plain MSE's gradient on sixteen lanes of one row: scale (s - t), with scale = coeff 2 / n.
struct mse_lanes {
  __m512 scale;  ///< coeff 2 / n.

  /// @brief The gradient of student lanes s (teacher t); d receives s - t.
  BEVKD_HOST_FORCEINLINE __m512 grad(__m512 s, __m512 t, __m512& d) const {
    d = _mm512_sub_ps(s, t);
    return _mm512_mul_ps(d, scale);
  }
};

/// @brief The gradient pass of the feature MSE's row-layout kernels over a block's rows (unit-stride, of
/// host_float_lanes): writes (or adds) each row's gradient, lanes_of(l).grad(s, t, d) sixteen columns at a time, exactly
/// 0 (nothing when accumulating) in rows with skip set, streamed where the block's gradient is (stream_grad); loss[l]
/// receives row l's sum of d^2 (its partials folded with the other rows', fold16) times inv_n.
template <class Rows, class LanesOf>
BEVKD_HOST_FORCEINLINE void mse_grad_pass(const Rows& block, const bool* skip, bool accumulate, float inv_n,
                                          LanesOf&& lanes_of, float* loss) {
  const index_t n = block.n;
  __m512 sums[block_rows];
  for (__m512& partials : sums) partials = _mm512_setzero_ps();
  with_grad_mode(accumulate, block.stream_grad, [&](auto accumulating, auto streaming) BEVKD_INLINE_LAMBDA {
    constexpr bool add = decltype(accumulating)::value, stream = decltype(streaming)::value;
    for (int l = 0; l < block.count; ++l) {
      const auto row = block.row(l);
      if (skip[l]) {  // written as 0 outright (nothing when accumulating): its terms may be NaN
        if (!add) write_zeros(row.grad.ptr, n, stream);
        continue;
      }
      const auto lanes = lanes_of(l);
      for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
        __m512 d;
        __m512 g = lanes.grad(load_floats(row.student.ptr + c, m), load_floats(row.teacher.ptr + c, m), d);
        sums[l] = _mm512_mask3_fmadd_ps(d, d, sums[l], m);
        if constexpr (add) g = _mm512_add_ps(load_floats(row.grad.ptr + c, m), g);
        store_floats<stream>(row.grad.ptr + c, g, m);
      });
    }
  });
  float total[block_rows];
  _mm512_storeu_ps(total, fold16(sum_op{}, sums));
  for (int l = 0; l < block_rows; ++l) loss[l] = total[l] * inv_n;
}

}  // namespace avx512

/// @brief mse_row for the rows of a host row block (mse_row_layout_fits), read in place: loss[l] of row l; writes
/// coeff[l] (2/n)(s - t), exactly 0 (or nothing, when accumulating) for rows with skip set. Each row's sum of squares
/// in one vector of partials (column c in lane c mod 16), the sixteen rows' partials folded at once (fold16).
///
/// Why: on rows of 10 channels the per-row kernel is mostly its reduction's set-up and fold, and ran slower than the
/// naive multi-pass reference (measured, B = 2, 200 x 200, one thread, Zen 4: fp32 C = 10 1.50 -> 0.50 ms here, the
/// naive 1.05; C = 48 1.1x, C = 64 to 1024 the same time; bf16 C = 10 to 256 1.8-3.5x, the rows widened in registers).
/// No software prefetch: in one pass the hardware's streams keep up, and prefetching whole rows of the next block
/// cost 10-30 % (measured, C = 10 to 256).
template <class Block>
void mse_row_layout(const Block& block_rows_in, const float* coeff, const bool* skip, bool accumulate, float* loss) {
  const auto& block = held_rows(block_rows_in);
  const float inv_n = 1.0f / static_cast<float>(block.n);
  avx512::mse_grad_pass(block, skip, accumulate, inv_n, [&](int l) BEVKD_INLINE_LAMBDA {
    return avx512::mse_lanes{_mm512_set1_ps(coeff[l] * 2.0f * inv_n)};
  }, loss);
}

/// @brief normalized_mse_row for the rows of a host row block (normalized_mse_row_layout_fits), read in place: loss[l]
/// of row l; writes coeff[l] dl/ds, exactly 0 (or nothing, when accumulating) for rows with skip set. The per-row
/// kernel's two passes: each row's sums in one vector of partials (column c in lane c mod 16), the sixteen
/// rows' partials folded at once (fold16); then mse_grad_pass.
///
/// Why: the per-row kernel spends on each row of a BEV feature width (64) about as much in its reductions' set-up and
/// folds as in its arithmetic (measured, B = 2, 200 x 200, C = 64, fp32, one thread, Zen 4: 6.5 ms, the softmax KL
/// with its exponentials 3.6 ms).
template <class Block>
void normalized_mse_row_layout(const Block& block_rows_in, const float* coeff, const bool* skip, bool accumulate,
                               float eps, float* loss) {
  const auto& block = held_rows(block_rows_in);
  const index_t n = block.n;
  const float inv_n = 1.0f / static_cast<float>(n);
  __m512 dots[3][block_rows];  // s . s, t . t, s . t
  for (auto& dot : dots)
    for (__m512& partials : dot) partials = _mm512_setzero_ps();
  for (int l = 0; l < block.count; ++l) {
    block.prefetch_row(l);
    const auto row = block.row(l);
    avx512::for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
      const __m512 s = avx512::load_floats(row.student.ptr + c, m), t = avx512::load_floats(row.teacher.ptr + c, m);
      dots[0][l] = _mm512_fmadd_ps(s, s, dots[0][l]);
      dots[1][l] = _mm512_fmadd_ps(t, t, dots[1][l]);
      dots[2][l] = _mm512_fmadd_ps(s, t, dots[2][l]);
    });
  }
  float folded[3][block_rows];
  for (int i = 0; i < 3; ++i) _mm512_storeu_ps(folded[i], avx512::fold16(sum_op{}, dots[i]));
  normalized_mse_rows<float> rows;
  for (int l = 0; l < block_rows; ++l)
    rows.set(l, normalized_mse_terms<float>(folded[0][l], folded[1][l], folded[2][l], n, eps, coeff[l]));
  const __m512 two_inv_n = _mm512_set1_ps(2.0f * inv_n);
  avx512::mse_grad_pass(block, skip, accumulate, inv_n, [&](int l) BEVKD_INLINE_LAMBDA {
    return avx512::normalized_mse_lanes{_mm512_set1_ps(rows.div_s[l]), _mm512_set1_ps(rows.div_t[l]),
                                        _mm512_set1_ps(rows.projection[l]), _mm512_set1_ps(rows.scale[l]), two_inv_n};
  }, loss);
}
#endif

/// @brief The feature MSE's passes over columns [first, last) of a host lane group (row_blocks.hpp) in portable code, for
/// every dtype (the AVX-512 builds' own, below, take the rows of has_lane_group_passes): column c's rows lie next to
/// each other, so a full group's loops over them vectorise in any build; sums added in pieces (add_group_pieces).
///
/// Why: staging NCHW rows for the per-row kernel transposed all three tensors, and the plain MSE then
/// ran slower than the naive multi-pass reference (measured, portable -O3, B = 2, 200 x 200, C = 64, two
/// threads, Zen 4: 13.8 ms against 6.6 ms).
template <class T, class Acc, class = void>
struct mse_lane_group_passes {
  /// @brief The plain MSE's one pass: writes (Accumulate: adds) scale (s - t), adds (s - t)^2 to each row's sum.
  template <bool Accumulate, bool Stream>
  static void plain(const lane_group<T>& group, index_t first, index_t last, const Acc* scale, const bool* skip,
                    Acc (&sums)[1][block_rows]) {
    graded_pass<Accumulate>(group, first, last, skip, sums, [&](int l, Acc s, Acc t) BEVKD_INLINE_LAMBDA {
      return mse_element(scale[l], s, t);
    });
  }

  /// @brief The normalised MSE's first pass: adds s . s, t . t and s . t to each row's dots[0], [1], [2].
  static void dots(const lane_group<T>& group, index_t first, index_t last, Acc (&dots)[3][block_rows]) {
    add_group_pieces(group, first, last, dots, [&](index_t c, Acc (&piece)[3][block_rows]) BEVKD_INLINE_LAMBDA {
      const group_column<T> x(group, c);
      for_group_lanes(group.count, [&](int l) BEVKD_INLINE_LAMBDA {
        const Acc s = x.student(l), t = x.teacher(l);
        piece[0][l] += s * s;
        piece[1][l] += t * t;
        piece[2][l] += s * t;
      });
    });
  }

  /// @brief The normalised MSE's second pass: writes (Accumulate: adds) each element's gradient, as
  /// normalized_mse_terms computes it, and adds (s_hat - t_hat)^2 to each row's sum.
  template <bool Accumulate, bool Stream>
  static void normalized(const lane_group<T>& group, index_t first, index_t last,
                         const normalized_mse_rows<Acc>& terms, Acc inv_n, const bool* skip,
                         Acc (&sums)[1][block_rows]) {
    graded_pass<Accumulate>(group, first, last, skip, sums, [&](int l, Acc s, Acc t) BEVKD_INLINE_LAMBDA {
      return normalized_mse_terms<Acc>::element(s, t, terms.div_s[l], terms.div_t[l], terms.scale[l],
                                                terms.projection[l], inv_n);
    });
  }

 private:
  // The gradient passes' loop: element(l, s, t) gives row l's graded{gradient, term} of its student and teacher
  // elements s, t; the gradient is written (Accumulate: added; skipped rows as group_column::write) and the term
  // added to the row's sum.
  template <bool Accumulate, class Element>
  static BEVKD_HOST_FORCEINLINE void graded_pass(const lane_group<T>& group, index_t first, index_t last,
                                                 const bool* skip, Acc (&sums)[1][block_rows], Element&& element) {
    const bool skips = group_skips_rows(group.count, skip);
    add_group_pieces(group, first, last, sums, [&](index_t c, Acc (&piece)[1][block_rows]) BEVKD_INLINE_LAMBDA {
      const group_column<T> x(group, c);
      Acc g[block_rows];
      for_group_lanes(group.count, [&](int l) BEVKD_INLINE_LAMBDA {
        const graded<Acc, Acc> out = element(l, x.student(l), x.teacher(l));
        g[l] = out.grad;
        piece[0][l] += out.value;
      });
      x.template write<Accumulate>(group.count, skip, skips, [&](int l) BEVKD_INLINE_LAMBDA { return g[l]; });
    });
  }
};

#if defined(BEVKD_HOST_AVX512)
/// @brief Lane groups on AVX-512 hosts (float; half and bfloat16 with AVX-512BW): one fp32 vector per column; sums
/// added in pieces of lane_group_piece columns (first is a multiple of it); the gradient written by group_grad_writer
/// (exactly 0 in rows with skip set, nothing there when accumulating, whole columns streamed when Stream is set).
template <class T>
struct mse_lane_group_passes<T, float, std::enable_if_t<has_lane_group_passes<T>()>> {
  /// @brief The plain MSE's one pass: writes (Accumulate: adds) scale (s - t), adds (s - t)^2 to each row's sum.
  template <bool Accumulate, bool Stream>
  static void plain(const lane_group<T>& group, index_t first, index_t last, const float* scale, const bool* skip,
                    float (&sums)[1][block_rows]) {
    const avx512::group_columns<T> x(group);
    const avx512::group_grad_writer<T, Accumulate, Stream> write(group, skip);
    const __m512 k = _mm512_loadu_ps(scale);
    avx512::add_in_pieces(group, first, last, sums, [&](index_t c, __m512 (&piece)[1]) BEVKD_INLINE_LAMBDA {
      const __m512 d = _mm512_sub_ps(x.student(c), x.teacher(c));
      piece[0] = _mm512_fmadd_ps(d, d, piece[0]);
      write(c, _mm512_mul_ps(d, k));
    });
  }

  /// @brief The normalised MSE's first pass: adds s . s, t . t and s . t to each row's dots[0], [1], [2].
  static void dots(const lane_group<T>& group, index_t first, index_t last, float (&dots)[3][block_rows]) {
    const avx512::group_columns<T> x(group);
    avx512::add_in_pieces(group, first, last, dots, [&](index_t c, __m512 (&piece)[3]) BEVKD_INLINE_LAMBDA {
      const __m512 s = x.student(c), t = x.teacher(c);
      piece[0] = _mm512_fmadd_ps(s, s, piece[0]);
      piece[1] = _mm512_fmadd_ps(t, t, piece[1]);
      piece[2] = _mm512_fmadd_ps(s, t, piece[2]);
    });
  }

  /// @brief The normalised MSE's second pass: writes (Accumulate: adds) each element's gradient, as
  /// normalized_mse_terms computes it, and adds (s_hat - t_hat)^2 to each row's sum.
  template <bool Accumulate, bool Stream>
  static void normalized(const lane_group<T>& group, index_t first, index_t last,
                         const normalized_mse_rows<float>& terms, float inv_n, const bool* skip,
                         float (&sums)[1][block_rows]) {
    const avx512::group_columns<T> x(group);
    const avx512::group_grad_writer<T, Accumulate, Stream> write(group, skip);
    const avx512::normalized_mse_lanes lanes{_mm512_loadu_ps(terms.div_s), _mm512_loadu_ps(terms.div_t),
                                             _mm512_loadu_ps(terms.projection), _mm512_loadu_ps(terms.scale),
                                             _mm512_set1_ps(2.0f * inv_n)};
    avx512::add_in_pieces(group, first, last, sums, [&](index_t c, __m512 (&piece)[1]) BEVKD_INLINE_LAMBDA {
      __m512 d;
      const __m512 g = lanes.grad(x.student(c), x.teacher(c), d);
      piece[0] = _mm512_fmadd_ps(d, d, piece[0]);
      write(c, g);
    });
  }
};
#endif

/// @brief The feature MSE (mse_row, or normalized_mse_row when Normalized) for the rows of a host lane_group_set
/// (NCHW pillars, read in place): loss[i][l] of group i's row l (0 from its count on); writes terms[i].coeff[l] dl/ds,
/// exactly 0 (or nothing, when accumulating) for rows with skip set. The normalised MSE takes two passes: the dot products,
/// then the gradient.
template <bool Normalized, class T, class Acc>
void mse_lane_groups(const lane_group_set<T>& set, const block_terms<Acc>* terms, bool accumulate, Acc eps,
                     Acc (*loss)[block_rows]) {
  using passes = mse_lane_group_passes<T, Acc>;
  const index_t n = set.groups[0].n;
  const Acc inv_n = Acc(1) / static_cast<Acc>(n);
  Acc sums[max_set_groups][1][block_rows] = {};
  // The plain MSE's scale of (s - t), or the normalised rows' terms (from their dot products).
  Acc scale[max_set_groups][block_rows];
  normalized_mse_rows<Acc> rows[Normalized ? max_set_groups : 1];
  if constexpr (Normalized) {
    Acc dots[max_set_groups][3][block_rows] = {};
    set.for_each_segment([&](index_t first, index_t last) {
      for (int i = 0; i < set.count; ++i) passes::dots(set.groups[i], first, last, dots[i]);
    });
    for (int i = 0; i < set.count; ++i)
      for (int l = 0; l < block_rows; ++l) {
        const Acc(&dot)[3][block_rows] = dots[i];
        rows[i].set(l, normalized_mse_terms<Acc>(dot[0][l], dot[1][l], dot[2][l], n, eps, terms[i].coeff[l]));
      }
  } else {
    for (int i = 0; i < set.count; ++i)
      for (int l = 0; l < block_rows; ++l) scale[i][l] = terms[i].coeff[l] * Acc(2) * inv_n;
  }
  with_grad_mode(accumulate, set.stream_grad, [&](auto accumulating, auto streaming) {
    constexpr bool add = decltype(accumulating)::value, stream = decltype(streaming)::value;
    set.for_each_segment([&](index_t first, index_t last) {
      for (int i = 0; i < set.count; ++i) {
        if constexpr (Normalized)
          passes::template normalized<add, stream>(set.groups[i], first, last, rows[i], inv_n, terms[i].skip, sums[i]);
        else
          passes::template plain<add, stream>(set.groups[i], first, last, scale[i], terms[i].skip, sums[i]);
      }
    });
  });
  for (int i = 0; i < set.count; ++i)
    for (int l = 0; l < block_rows; ++l) loss[i][l] = l < set.groups[i].count ? sums[i][0][l] * inv_n : Acc(0);
}

}  // namespace detail
}  // namespace bevkd
