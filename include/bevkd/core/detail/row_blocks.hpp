// bevkd internal: host row blocks, short rows run side by side with one row per SIMD lane.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <type_traits>

#include "../config.hpp"
#include "../dtype.hpp"
#include "../reduction.hpp"
#include "../team.hpp"
#include "avx512.hpp"
#include "lanes.hpp"
#include "row_driver.hpp"

#if defined(__SSE2__) && !defined(__CUDA_ARCH__)
#include <emmintrin.h>
#define BEVKD_ROW_BLOCKS_SSE2 1
#endif

// Why blocks: a row of 64 classes is four SIMD vectors, and one row at a time spends most of
// its time in the dependent chain maximum -> horizontal reduction -> exponentials -> sums ->
// logs -> gradient, not in arithmetic. Sixteen rows transposed into "lane layout" (column c
// of row l at x[c * 16 + l]) make every reduction a plain vertical one, with no shuffles and
// sixteen independent chains: measured about 2x (C = 64) to 6x (C = 10) faster on one core.

namespace bevkd {
namespace detail {

/// @brief Rows one host block runs side by side (one per SIMD lane of the block kernels).
constexpr int block_rows = 16;

/// @brief Longest rows run in lane layout: from about 160 columns on the per-row kernels are as fast (measured with
/// fp32 at C = 96..256, portable and -march=native builds) and their pairwise sums more accurate.
constexpr index_t max_block_columns = 128;

/// @brief Index of column c of lane l in a block's lane-layout buffer.
BEVKD_HOST_FORCEINLINE index_t lane_index(index_t c, int l) { return c * block_rows + l; }

/// @brief Shortest unit-stride rows a block runs in row layout (in place, no transposes); shorter ones are
/// transposed into lane layout, whose lanes they fill better (measured, -march=native: K = 32 attention rows 4 %
/// faster in lane layout, C = 64 rows 12 % faster in row layout; 48 lies between), except rows of a
/// fixed_run_length (fp32 rows of 32 on AVX-512 hosts: with their count a constant, row layout is faster).
constexpr index_t min_row_layout_columns = 48;

/// @brief A compile-time list of run lengths.
template <index_t... Lengths>
struct run_length_list {
  /// @brief True when n is one of Lengths.
  static constexpr bool contains(index_t n) { return ((n == Lengths) || ...); }
};

/// @brief The unit-stride run lengths whose row-layout kernels are compiled with the column count a constant (where
/// has_fixed_run_lengths): 32 (BEVFormer's K = 4 levels x 8 points) and 64 (a BEV feature width).
///
/// Why: such a run is two or four AVX-512 vectors, so each pass's per-row work (loop set-up, trip
/// count, tail test) weighs as much as a fifth of its arithmetic; with the count known the passes
/// unroll. Measured (-march=native, 2-core Zen 5, 1 thread): the C = 64 KL 6-8 % faster; K = 32
/// attention rows 6-7 % faster in row layout than in lane layout (TSA), the SCA's runs 8 %.
using fixed_run_lengths = run_length_list<32, 64>;

/// @brief True when rows of T get the fixed_run_lengths kernels: fp32 on AVX-512 hosts, whose passes inline into the
/// block (the generic passes are out-of-line functions of n).
template <class T>
constexpr bool has_fixed_run_lengths() {
#if defined(BEVKD_HOST_AVX512)
  return std::is_same<T, float>::value;
#else
  return false;
#endif
}

/// @brief True when unit-stride runs of n elements of T run with their count a constant (see fixed_run_lengths).
template <class T>
constexpr bool fixed_run_length(index_t n) {
  return has_fixed_run_lengths<T>() && fixed_run_lengths::contains(n);
}

/// @brief True when a block of rows of n columns of T runs in row layout (row_block::row_layout()), false when in lane
/// layout.
template <class T>
constexpr bool block_row_layout(index_t n, bool unit_stride) {
  return unit_stride && (n >= min_row_layout_columns || fixed_run_length<T>(n));
}

/// @brief True when a row block holds rows of n columns of T in lane layout (what the block kernels of the sigmoid KL
/// and the feature MSE take; longer unit-stride rows vectorise in their per-row kernels).
template <class T>
constexpr bool lane_layout_fits(index_t n, bool unit_stride) {
  return n <= max_block_columns && !block_row_layout<T>(n, unit_stride);
}

/// @brief Longest rows run in row layout (C = 256 measured 7 % (fp32) to 27 % (bf16) faster than the per-row
/// kernel; the block's scratch, 2 x 16 rows of exponentials, stays within 128 KiB).
constexpr index_t max_row_layout_columns = 1024;

/// @brief True when rows of `columns` columns, unit-stride or not, run in host row blocks (row or lane layout).
constexpr bool block_columns_fit(index_t columns, bool unit_stride) {
  return unit_stride && columns >= min_row_layout_columns ? columns <= max_row_layout_columns
                                                          : columns <= max_block_columns;
}

#if defined(BEVKD_ROW_BLOCKS_SSE2)
/// @brief fold_partials' pairwise tree over sixteen float partials given as four-float quarters q[i] = p[4i..4i+3]
/// (op: sum_op or shift_max_op).
template <class Op>
BEVKD_HOST_FORCEINLINE float fold_quarters(Op, __m128 q0, __m128 q1, __m128 q2, __m128 q3) {
  const auto op = [](__m128 a, __m128 b) {
    if constexpr (std::is_same<Op, sum_op>::value)
      return _mm_add_ps(a, b);
    else
      return _mm_max_ps(a, b);  // shift_max_op: a > b ? a : b
  };
  __m128 x = op(op(q0, q2), op(q1, q3));  // (k, k + 8) with (k + 4, k + 12)
  x = op(x, _mm_movehl_ps(x, x));
  x = op(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
#endif

/// @brief Combines the row_partials partial results p of a row pairwise (p may be overwritten).
template <class Op, class Acc>
BEVKD_HOST_FORCEINLINE Acc fold_partials(Op op, Acc (&p)[row_partials]) {
#if defined(BEVKD_ROW_BLOCKS_SSE2)
  if constexpr (std::is_same<Acc, float>::value) {
    // The same pairwise tree in four-float vectors: the compiler leaves the scalar tree in memory.
    static_assert(row_partials == 16, "the vector fold takes four vectors");
    return fold_quarters(op, _mm_loadu_ps(p), _mm_loadu_ps(p + 4), _mm_loadu_ps(p + 8), _mm_loadu_ps(p + 12));
  }
#endif
  for (int half = row_partials / 2; half > 0; half /= 2)
    for (int v = 0; v < half; ++v) p[v] = op(p[v], p[v + half]);
  return p[0];
}

/// @brief Bytes of one row's span of a tensor, for prefetching (unit-stride rows only).
template <class T>
constexpr index_t row_bytes(index_t n) {
  return n * static_cast<index_t>(sizeof(T));
}

/// @brief How near the core a read prefetch brings its lines (__builtin_prefetch's locality argument).
enum class prefetch_level {
  l2 = 2,  ///< prefetcht1: into L2.
  l1 = 3   ///< prefetcht0: into L1 as well.
};

/// @brief Prefetches each cache line the n elements from `first` touch, once; ForWrite asks for the lines in a
/// writable state (lines about to be stored to; the level applies to reads only).
template <bool ForWrite, prefetch_level Level = prefetch_level::l1, class T>
BEVKD_HOST_FORCEINLINE void prefetch_span(const T* first, index_t n) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr std::uintptr_t line = 64;
  const std::uintptr_t begin = reinterpret_cast<std::uintptr_t>(first) & ~(line - 1);
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(first) + static_cast<std::uintptr_t>(row_bytes<T>(n));
  for (std::uintptr_t at = begin; at < end; at += line)
    __builtin_prefetch(reinterpret_cast<const void*>(at), ForWrite, static_cast<int>(Level));
#else
  (void)first;
  (void)n;
#endif
}

/// @brief True when this build's AVX-512 code holds sixteen elements of T as one float vector (avx512::load_floats,
/// avx512::store_floats): float on AVX-512 builds, half and bfloat16 too with AVX-512BW.
template <class T>
constexpr bool host_float_lanes() {
#if defined(BEVKD_HOST_AVX512_BW)
  return std::is_same<T, float>::value || std::is_same<T, half>::value || std::is_same<T, bfloat16>::value;
#elif defined(BEVKD_HOST_AVX512)
  return std::is_same<T, float>::value;
#else
  return false;
#endif
}

#if defined(BEVKD_HOST_AVX512)
namespace avx512 {

/// @brief Sixteen half or bfloat16 elements held as one 256-bit vector, widened to floats and rounded back (to nearest
/// even, as the scalar conversions of dtype.hpp) with AVX-512F instructions.
template <class T>
struct narrow_lanes;

/// @brief bfloat16: the upper half of a float.
template <>
struct narrow_lanes<bfloat16> {
  /// @brief The floats of sixteen bfloat16 (exact).
  static BEVKD_HOST_FORCEINLINE __m512 widen(__m256i v) {
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all_lanes, _mm512_maskz_cvtepu16_epi32(all_lanes, v), 16));
  }
  /// @brief Sixteen floats rounded to bfloat16 as float_to_bfloat16_bits rounds each (a NaN stays a quiet NaN).
  static BEVKD_HOST_FORCEINLINE __m256i narrow(__m512 v) {
    const __m512i bits = _mm512_castps_si512(v), one = _mm512_set1_epi32(1);
    const __m512i odd = _mm512_and_si512(_mm512_maskz_srli_epi32(all_lanes, bits, 16), one);
    const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), odd);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i quiet_nan = _mm512_or_si512(bits, _mm512_set1_epi32(0x400000));  // the quiet bit, before the shift
    const __m512i kept = _mm512_mask_mov_epi32(rounded, nan, quiet_nan);
    return _mm512_maskz_cvtepi32_epi16(all_lanes, _mm512_maskz_srli_epi32(all_lanes, kept, 16));
  }
};

/// @brief half: IEEE binary16, converted by vcvtph2ps and vcvtps2ph.
template <>
struct narrow_lanes<half> {
  /// @brief The floats of sixteen halves (exact).
  static BEVKD_HOST_FORCEINLINE __m512 widen(__m256i v) { return _mm512_maskz_cvtph_ps(all_lanes, v); }
  /// @brief Sixteen floats rounded to half, to nearest even (overflow to inf, a NaN stays NaN).
  static BEVKD_HOST_FORCEINLINE __m256i narrow(__m512 v) {
    return _mm512_maskz_cvtps_ph(all_lanes, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
};

#if defined(BEVKD_HOST_AVX512_BW)
/// @brief Loads the lanes m of sixteen 16-bit elements at p (the others read 0).
template <class T>
BEVKD_HOST_FORCEINLINE __m256i load_narrow(const T* p, __mmask16 m) {
  static_assert(sizeof(T) == 2, "16-bit elements");
  if (m == all_lanes) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm256_maskz_loadu_epi16(m, p);
}

/// @brief Stores the lanes m of sixteen 16-bit elements at p (nothing in the others).
template <class T>
BEVKD_HOST_FORCEINLINE void store_narrow(T* p, __m256i v, __mmask16 m) {
  if (m == all_lanes) return _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  _mm256_mask_storeu_epi16(p, m, v);
}
#endif

/// @brief The lanes m of sixteen elements of T at p as floats, the others 0 (T: one of host_float_lanes).
template <class T>
BEVKD_HOST_FORCEINLINE __m512 load_floats(const T* p, __mmask16 m) {
  static_assert(host_float_lanes<T>(), "16-bit lanes need AVX-512BW");
  if constexpr (std::is_same<T, float>::value) {
    return _mm512_maskz_loadu_ps(m, p);
  } else {
#if defined(BEVKD_HOST_AVX512_BW)
    return narrow_lanes<T>::widen(load_narrow(p, m));
#endif
  }
}

/// @brief Stores the lanes m of sixteen floats at p as T (rounded to nearest even; nothing in the other lanes), whole
/// aligned fp32 lines around the caches when Stream is set (store_lanes; 16-bit lanes are half a line, never streamed).
template <bool Stream, class T>
BEVKD_HOST_FORCEINLINE void store_floats(T* p, __m512 v, __mmask16 m) {
  static_assert(host_float_lanes<T>(), "16-bit lanes need AVX-512BW");
  if constexpr (std::is_same<T, float>::value) {
    store_lanes<Stream>(p, v, m);
  } else {
#if defined(BEVKD_HOST_AVX512_BW)
    store_narrow(p, narrow_lanes<T>::narrow(v), m);
#endif
  }
}

}  // namespace avx512
#endif

/// @brief Gradients of at least this many bytes per call are streamed (see streams_grad).
constexpr index_t min_streamed_grad_bytes = index_t{4} << 20;

/// @brief Whether Problem's rows are bound by their exponentials (a softmax per row): its member exponential_rows, else
/// false.
template <class Problem, class = void>
struct has_exponential_rows : std::false_type {};
/// @brief Problem declares exponential_rows.
template <class Problem>
struct has_exponential_rows<Problem, std::void_t<decltype(Problem::exponential_rows)>>
    : std::bool_constant<Problem::exponential_rows> {};

#if defined(BEVKD_HOST_AVX512)
/// @brief True on an Intel host: there the exponential rows' gradients are written with plain stores (see
/// grad_streamable).
inline bool intel_host() {
#if defined(__GNUC__)
  static const bool intel = __builtin_cpu_is("intel");
  return intel;
#else
  return false;
#endif
}
#endif

/// @brief True when a call's gradient is large enough, and of the kind, to be written with non-temporal stores: an
/// AVX-512 host, float, written (not accumulated), at least min_streamed_grad_bytes; on an Intel host, not for
/// exponential rows (has_exponential_rows).
///
/// Why: a stored line is first read for ownership, a third more memory traffic on top of the two
/// inputs, and its prefetch takes a miss buffer that the next block's inputs need; a gradient this
/// large leaves the core's caches before anyone reads it again anyway. Measured at B = 2, 200 x 200,
/// C = 64 fp32 (2-core Zen 4): KL forward+backward 2.2-2.6 -> 1.8-1.9 ms on two threads. On a 2-core
/// Intel Cascade Lake the softmax rows, whose exponentials leave memory idle part of the time, were
/// faster with plain stores (two threads, plain vs streamed interleaved in one process: KL C = 64 and
/// C = 256 8-11 %, TSA attention 4-11 %, masked SCA attention and sigmoid KL equal), while the feature
/// MSE was 1.5-1.9x faster streamed.
template <class Problem>
bool grad_streamable(const Problem& problem, bool accumulate) {
#if defined(BEVKD_HOST_AVX512)
  using T = typename Problem::value_type;
  const index_t bytes = problem.row_count() * problem.columns() * static_cast<index_t>(sizeof(T));
  const bool plain_here = has_exponential_rows<Problem>::value && intel_host();
  return std::is_same<T, float>::value && !accumulate && bytes >= min_streamed_grad_bytes && !plain_here;
#else
  (void)problem;
  (void)accumulate;
  return false;
#endif
}

/// @brief True when a call's fp32 row blocks may stream their gradient (grad_streamable): rows of whole 64-byte lines
/// (a multiple of 16 columns) besides. A block streams when its gradient rows also start on a line.
template <class Problem>
bool streams_grad(const Problem& problem, bool accumulate) {
  return grad_streamable(problem, accumulate) && problem.columns() % 16 == 0;
}

/// @brief Orders this thread's non-temporal stores before whatever it does next (they are weakly ordered): called by
/// each thread of a call that may stream once its last chunk is done, before the call's threads join.
///
/// Why once per thread, not per chunk: each fence waits for the thread's streamed lines to reach
/// memory; after every chunk of 256 rows that took 1.5 % of a C = 64 softmax KL call on one
/// thread (measured, fp32, 20000 rows, Zen 4: 0.667 -> 0.657 ms).
inline void fence_streamed_stores() {
#if defined(BEVKD_HOST_AVX512)
  _mm_sfence();
#endif
}

/// @brief Writes gradient +0 over the n elements from p: with non-temporal stores when `stream` is set and T is
/// float on an AVX-512 host (see streams_grad), else with plain stores.
template <class T>
void write_zeros(T* p, index_t n, bool stream) {
#if defined(BEVKD_HOST_AVX512)
  if constexpr (std::is_same<T, float>::value) {
    if (stream) {
      const __m512 zero = _mm512_setzero_ps();
      avx512::for_each_vector(n, [&](index_t c, __mmask16 m) { avx512::store_lanes<true>(p + c, zero, m); });
      return;
    }
  }
#endif
  (void)stream;
  for (index_t c = 0; c < n; ++c) p[c] = store_from_accum<T>(accum_t<T>(0));
}

/// @brief True when a problem can tell whether a range of its rows is evenly spaced (`even_spacing`), so that a
/// row_block need not store their references.
template <class Problem, class = void>
struct has_even_spacing : std::false_type {};
/// @brief Problems that declare `even_spacing`.
template <class Problem>
struct has_even_spacing<Problem, std::void_t<decltype(&Problem::even_spacing)>> : std::true_type {};

/// @brief Row l of rows that lie at equal distances: row0 stepped l times by step (student, teacher, gradient).
template <class T, bool Unit>
BEVKD_HOST_FORCEINLINE loss_row<T, Unit> stepped_row(const loss_row<T, Unit>& row0, const index_t (&step)[3], int l) {
  return loss_row<T, Unit>{{row0.student.ptr + l * step[0], row0.student.stride},
                           {row0.teacher.ptr + l * step[1], row0.teacher.stride},
                           {row0.grad.ptr + l * step[2], row0.grad.stride},
                           row0.n};
}

/// @brief Prefetches row l's gradient (unless streamed) and the next block's row l of student and teacher, whole, for
/// a row-layout kernel (once per row): the rows of a row_block or spaced_rows (unit-stride rows).
template <class Rows>
BEVKD_HOST_FORCEINLINE void prefetch_block_row(const Rows& rows, int l) {
  if (l < rows.count && !rows.stream_grad) prefetch_span<true>(rows.row(l).grad.ptr, rows.n);
  if (l >= rows.next_count) return;
  const auto ahead = rows.next_row(l);
  prefetch_span<false>(ahead.student.ptr, rows.n);
  prefetch_span<false>(ahead.teacher.ptr, rows.n);
}

/// @brief f(std::integral_constant<int, L>{}) for each L, in order (for_block_rows).
template <class F, int... L>
BEVKD_HOST_FORCEINLINE void for_rows_of(F& f, std::integer_sequence<int, L...>) {
  (f(std::integral_constant<int, L>{}), ...);
}

/// @brief Calls f(l) for the rows l < count of a block: a full block's as compile-time constants
/// (std::integral_constant), so that the calls unroll.
///
/// Why: the row-layout maxima pass, short per row, ran as a loop over the block's rows about 2 %
/// of a C = 64 softmax KL call slower than unrolled (measured, fp32, 20000 rows, one thread, Zen 4:
/// 0.702-0.706 -> 0.690 ms).
template <class F>
BEVKD_HOST_FORCEINLINE void for_block_rows(int count, F&& f) {
  if (count == block_rows)
    for_rows_of(f, std::make_integer_sequence<int, block_rows>{});
  else
    for (int l = 0; l < count; ++l) f(l);
}

/// @brief The rows of a row_block that lie at equal distances (row_block::evenly_spaced), held by value: what a
/// row-layout kernel reads of a block (see with_block_rows).
///
/// Why by value: the kernels' vector stores may alias anything, so a kernel reading the rows
/// through a reference to the block loaded row 0, the steps and the counts again for every row;
/// a local copy stays in registers (measured, fp32 C = 64 KL, 20000 rows, one thread, Zen 4:
/// about 3 % of the call).
template <class T, bool Unit>
struct spaced_rows {
  using value_type = T;               ///< Element type of the tensors.
  static constexpr int max_runs = 1;  ///< One run per row.
  loss_row<T, Unit> row0;             ///< Row 0.
  index_t step[3];                    ///< Elements from one row to the next in student, teacher and gradient.
  int count;                          ///< Rows in the block.
  int next_count;                     ///< Rows in the next block, which follow the block's own.
  index_t n;                          ///< Columns per row.
  bool stream_grad;                   ///< The gradient rows are streamed, not prefetched.

  /// @brief Row l of the block (l < count).
  BEVKD_HOST_FORCEINLINE loss_row<T, Unit> row(int l) const { return stepped_row(row0, step, l); }
  /// @brief Row l of the next block (l < next_count).
  BEVKD_HOST_FORCEINLINE loss_row<T, Unit> next_row(int l) const { return stepped_row(row0, step, count + l); }
  /// @brief Columns of each run (one run per row).
  index_t run_length() const { return n; }
  /// @brief Calls f(row) for the one contiguous run that row l is.
  template <class F>
  BEVKD_HOST_FORCEINLINE void for_each_run(int l, F&& f) const {
    f(row(l));
  }
  /// @brief prefetch_block_row of row l.
  BEVKD_HOST_FORCEINLINE void prefetch_row(int l) const { prefetch_block_row(*this, l); }
};

/// @brief The rows of one host block (and the next block's, to prefetch) and their moves to and from lane layout.
template <class T, bool Unit>
struct row_block {
  using value_type = T;                ///< Element type of the tensors.
  static constexpr int max_runs = 1;  ///< Most runs a row has (see multi_run_block).
  /// @brief Storage of `rows` and `next`, which trade places when a block follows the one before (no copy).
  loss_row<T, Unit> buffers[2][block_rows];
  /// @brief The block's rows; the first `count` are valid unless `evenly_spaced` (read them through row()).
  loss_row<T, Unit>* rows = buffers[0];
  /// @brief The next block's rows (prefetched); the first `next_count` are valid unless `evenly_spaced` (next_row()).
  loss_row<T, Unit>* next = buffers[1];
  /// @brief The block's and the next block's rows lie at equal distances in each tensor (a unit-stride problem's rows
  /// of one batch, or of a tensor contiguous across batches): row l is row 0 stepped l times by `step`, and `rows` and
  /// `next` are not filled.
  bool evenly_spaced = false;
  loss_row<T, Unit> row0{};  ///< Row 0 of the block, when evenly_spaced.
  index_t step[3] = {};      ///< Elements from one row to the next in student, teacher and gradient (evenly_spaced).
  index_t first = 0;                   ///< The problem's index of row 0.
  int count = 0;                       ///< Rows in the block (1..block_rows).
  int next_count = 0;                  ///< Rows in the next block (0 after the last row, `end`).
  index_t n = 0;                       ///< Columns per row.
  /// @brief Whole blocks whose rows are neighbours in memory, column c of row l at row 0's + l (NCHW: pillars are
  /// adjacent within a channel), in all three tensors: then the tensors already are in lane layout.
  bool lanes_adjacent = false;
  bool next_adjacent = false;  ///< The same for the next block (prefetched column by column when set).
  /// @brief block_rows / n in 16.16 fixed point, rounded up: prefetch(step) covers rows [step, step + 1) times this,
  /// so the block's rows spread evenly over the pass's n columns (bursts of whole rows stalled on the prefetch queue).
  index_t prefetch_rows_per_step = 0;
  bool stream_call = false;  ///< The call's gradient may be streamed (streams_grad; set by the driver).
  bool stream_grad = false;  ///< This block's gradient rows are streamed, not prefetched: stream_call, rows on lines.

  row_block() = default;
  row_block(const row_block&) = delete;  ///< `rows` and `next` point into the block's own storage.
  row_block& operator=(const row_block&) = delete;

  /// @brief Makes this the block of a problem's rows [first_row, first_row + rows_in), with the next block (up to
  /// `end`) to prefetch; when this was the block just before, its `next` rows are taken as they are.
  ///
  /// Why evenly spaced rows are not stored: writing the 32 row references took about 5 % of a C = 64
  /// softmax KL call (measured, fp32, 20000 rows, Zen 4: 0.73 -> 0.70 ms on one thread), the stores
  /// waiting behind the block before's streamed gradient.
  template <class Problem>
  void load(const Problem& problem, index_t first_row, int rows_in, index_t end) {
    const bool arrays_follow = !evenly_spaced && count > 0 && first + count == first_row && next_count == rows_in;
    const index_t after = first_row + rows_in;
    const int next_in = static_cast<int>(end - after < block_rows ? end - after : block_rows);
    evenly_spaced = find_even_spacing(problem, first_row, rows_in + next_in);
    if (!evenly_spaced) {
      if (arrays_follow) {
        loss_row<T, Unit>* const taken = next;
        next = rows;
        rows = taken;
      } else {
        problem.row_range(first_row, rows_in, rows);
      }
      problem.row_range(after, next_in, next);
    }
    first = first_row;
    count = rows_in;
    next_count = next_in;
    if (problem.columns() != n) {  // once per chunk, not a division per block: a chunk's blocks share n
      n = problem.columns();
      prefetch_rows_per_step = n > 0 ? ((index_t{block_rows} << 16) + n - 1) / n : 0;
    }
    find_adjacent_lanes();
    stream_grad = stream_call && grad_rows_on_lines();
  }

  /// @brief Row l of the block (l < count).
  BEVKD_HOST_FORCEINLINE loss_row<T, Unit> row(int l) const { return evenly_spaced ? stepped(l) : rows[l]; }
  /// @brief Row l of the next block (l < next_count).
  BEVKD_HOST_FORCEINLINE loss_row<T, Unit> next_row(int l) const {
    return evenly_spaced ? stepped(count + l) : next[l];
  }

  /// @brief The block's rows by value (evenly_spaced blocks only).
  spaced_rows<T, Unit> spaced() const {
    return spaced_rows<T, Unit>{row0, {step[0], step[1], step[2]}, count, next_count, n, stream_grad};
  }

  /// @brief True when every gradient row of the block starts a 64-byte line.
  bool grad_rows_on_lines() const {
    std::uintptr_t bits = 0;
    if (evenly_spaced)
      bits = reinterpret_cast<std::uintptr_t>(row0.grad.ptr) | static_cast<std::uintptr_t>(step[2] * sizeof(T));
    else
      for (int l = 0; l < count; ++l) bits |= reinterpret_cast<std::uintptr_t>(rows[l].grad.ptr);
    return (bits & 63) == 0;
  }

  /// @brief True when the block runs in row layout: each row read and written in place, its reductions in
  /// row_partials partial accumulators (unit-stride rows of at least min_row_layout_columns, or of a
  /// fixed_run_length).
  bool row_layout() const { return block_row_layout<T>(n, Unit); }

  /// @brief Columns of each run (one run per row).
  index_t run_length() const { return n; }

  /// @brief Calls f(row) for the one contiguous run that row l is (see multi_run_block).
  template <class F>
  BEVKD_HOST_FORCEINLINE void for_each_run(int l, F&& f) const {
    f(row(l));
  }

  /// @brief Sets lanes_adjacent and next_adjacent from the rows.
  void find_adjacent_lanes() {
    const auto adjacent = [](const loss_row<T, Unit>* r, int rows_in) {
      if (rows_in != block_rows || Unit) return false;  // evenly_spaced only on Unit problems: the arrays are set
      for (int l = 1; l < block_rows; ++l)
        if (r[l].student.ptr != r[0].student.ptr + l || r[l].teacher.ptr != r[0].teacher.ptr + l ||
            r[l].grad.ptr != r[0].grad.ptr + l || r[l].student.stride != r[0].student.stride ||
            r[l].teacher.stride != r[0].teacher.stride || r[l].grad.stride != r[0].grad.stride)
          return false;
      return true;
    };
    lanes_adjacent = adjacent(rows, count);
    next_adjacent = adjacent(next, next_count);
  }

  /// @brief Loads student and teacher into lane layout (padding lanes get 0, so their arithmetic stays finite).
  template <class Acc>
  void gather(Acc* BEVKD_RESTRICT s, Acc* BEVKD_RESTRICT t) const {
    if (lanes_adjacent) {
      const auto student = row(0).student, teacher = row(0).teacher;
      for (index_t c = 0; c < n; ++c)
        BEVKD_IVDEP  // s and t alias nothing, but GCC checks that at run time, which -O2 refuses
        for (int l = 0; l < block_rows; ++l) {
          s[lane_index(c, l)] = load_as_accum(student.ptr[c * student.stride + l]);
          t[lane_index(c, l)] = load_as_accum(teacher.ptr[c * teacher.stride + l]);
        }
      return;
    }
#if defined(BEVKD_HOST_AVX512)
    if constexpr (lanes_in_place) {
      gather_sixteen([](const loss_row<T, Unit>& r) { return r.student.ptr; }, s);
      gather_sixteen([](const loss_row<T, Unit>& r) { return r.teacher.ptr; }, t);
      return;
    }
#endif
    int l = 0;
#if defined(BEVKD_ROW_BLOCKS_SSE2)
    if constexpr (std::is_same<Acc, float>::value) {
      for (; l + 4 <= count; l += 4) {
        gather_four(l, [](const loss_row<T, Unit>& r) { return r.student; }, s);
        gather_four(l, [](const loss_row<T, Unit>& r) { return r.teacher; }, t);
      }
    }
#endif
    for (; l < block_rows; ++l)
      for (index_t c = 0; c < n; ++c) {
        s[lane_index(c, l)] = l < count ? load_as_accum(row(l).student[c]) : Acc(0);
        t[lane_index(c, l)] = l < count ? load_as_accum(row(l).teacher[c]) : Acc(0);
      }
  }

  /// @brief Writes (or adds) lane-layout gradients g into the rows; rows with skip set get exactly 0 (nothing when
  /// accumulating), whatever g holds there.
  template <class Acc>
  void scatter(Acc* BEVKD_RESTRICT g, const bool* skip, bool accumulate) const {
    bool any_skipped = false;
    for (int l = 0; l < count; ++l) {
      if (!skip[l]) continue;
      any_skipped = true;
      for (index_t c = 0; c < n; ++c) g[lane_index(c, l)] = Acc(0);
    }
    if (lanes_adjacent && !(accumulate && any_skipped)) {
      const auto grad = row(0).grad;
      for (index_t c = 0; c < n; ++c)
        for (int l = 0; l < block_rows; ++l) write_grad(grad.ptr[c * grad.stride + l], g[lane_index(c, l)], accumulate);
      return;
    }
#if defined(BEVKD_HOST_AVX512)
    if constexpr (lanes_in_place)
      if (!accumulate) {
        scatter_sixteen(g);
        return;
      }
#endif
    int l = 0;
#if defined(BEVKD_ROW_BLOCKS_SSE2)
    if constexpr (std::is_same<Acc, float>::value)
      for (; l + 4 <= count; l += 4) scatter_four(l, g, skip, accumulate);
#endif
    for (; l < count; ++l) {
      if (skip[l] && accumulate) continue;  // an excluded row's gradient is left exactly as it was
      const auto grad = row(l).grad;
      for (index_t c = 0; c < n; ++c) write_grad(grad[c], g[lane_index(c, l)], accumulate);
    }
  }

  /// @brief Prefetches, at column `step` of a block kernel's longest pass, a share of this block's gradient rows and
  /// the next block's student and teacher rows: whole rows (prefetch_row) spread evenly over the pass's n columns
  /// (prefetch_rows_per_step), or column `step` of adjacent rows; so that memory keeps streaming while the block
  /// computes.
  ///
  /// Force-inlined, as is prefetch_lanes: GCC deems a function that only prefetches free of
  /// effects and deletes the calls to it.
  BEVKD_HOST_FORCEINLINE void prefetch(index_t step) const {
    // Adjacent rows: column `step` of a block is one run of block_rows elements in each tensor.
    if (lanes_adjacent) prefetch_lanes(row(0).grad, step);
    if (next_adjacent) {
      prefetch_lanes(next_row(0).student, step);
      prefetch_lanes(next_row(0).teacher, step);
    }
    // Evenly spaced rows are a constant-stride stream, which the hardware prefetcher follows on its own: prefetching
    // them by hand made short lane-layout rows slower (measured: fp32 KL, C = 10, Zen 4, 12 % on one and two threads,
    // in cache and from memory).
    if (!Unit || evenly_spaced) return;
    const index_t first = (step * prefetch_rows_per_step) >> 16, last = ((step + 1) * prefetch_rows_per_step) >> 16;
    for (index_t l = first; l < last && l < block_rows; ++l) prefetch_row(static_cast<int>(l));
  }

  /// @brief Prefetches row l's gradient and the next block's row l of student and teacher, whole (unit-stride
  /// rows; a row-layout kernel calls it once per row).
  BEVKD_HOST_FORCEINLINE void prefetch_row(int l) const { prefetch_block_row(*this, l); }

 private:
  // Sets row0 and step when rows [first_row, first_row + rows_in) of the problem are evenly spaced (problems that can
  // tell: has_even_spacing); else false.
  template <class Problem>
  bool find_even_spacing(const Problem& problem, index_t first_row, int rows_in) {
    if constexpr (Unit && has_even_spacing<Problem>::value)
      return problem.even_spacing(first_row, rows_in, row0, step);
    else
      return false;
  }

  // Row l of an evenly spaced block (l may run into the next block's rows).
  BEVKD_HOST_FORCEINLINE loss_row<T, Unit> stepped(int l) const { return stepped_row(row0, step, l); }

  // Prefetches the first and last element of column `step` of adjacent rows (a run of block_rows elements).
  template <class Ref>
  BEVKD_HOST_FORCEINLINE void prefetch_lanes(const Ref& row0, index_t step) const {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(&row0.ptr[step * row0.stride]);
    __builtin_prefetch(&row0.ptr[step * row0.stride + block_rows - 1]);
#else
    (void)row0;
    (void)step;
#endif
  }

  // Rows that are float and unit-stride are read and written in place by the transposes below; others go through a
  // float row buffer, which a contiguous loop converts (and vectorises), so that every row moves by the same 4 x 4
  // transposes.
  static constexpr bool in_place = std::is_same<T, float>::value && Unit;
  // The same for the AVX-512 transposes, which also widen and round 16-bit rows in registers (load_floats,
  // store_floats) where the build has AVX-512BW.
  static constexpr bool lanes_in_place = host_float_lanes<T>() && Unit;

#if defined(BEVKD_ROW_BLOCKS_SSE2)

  // Moves rows [l, l + 4) of the tensor pick(row) selects into lanes [l, l + 4) of out.
  template <class Pick>
  void gather_four(int l, Pick pick, float* out) const {
    float buffer[4][max_block_columns];
    const float* from[4];
    BEVKD_UNROLL
    for (int i = 0; i < 4; ++i) {
      const auto ref = pick(row(l + i));
      if constexpr (in_place) {
        from[i] = ref.ptr;
      } else {
        float* to = buffer[i];  // in runs of row_partials: GCC's -O2 vectorises only loops of a known count
        for_row_partials(n, [&](index_t c, int) BEVKD_INLINE_LAMBDA { to[c] = load_as_accum(ref[c]); });
        from[i] = to;
      }
    }
    const index_t whole = n / 4 * 4;
    for (index_t c = 0; c < whole; c += 4) {
      __m128 v[4];
      BEVKD_UNROLL
      for (int i = 0; i < 4; ++i) v[i] = _mm_loadu_ps(from[i] + c);
      _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);
      BEVKD_UNROLL
      for (int i = 0; i < 4; ++i) _mm_storeu_ps(out + lane_index(c + i, l), v[i]);
    }
    for (index_t c = whole; c < n; ++c)
      BEVKD_UNROLL
      for (int i = 0; i < 4; ++i) out[lane_index(c, l + i)] = from[i][c];
  }

  // Moves lanes [l, l + 4) of g into rows [l, l + 4)' gradients (see scatter).
  void scatter_four(int l, const float* g, const bool* skip, bool accumulate) const {
    float buffer[4][max_block_columns];
    float* to[4];
    const bool direct = in_place && !accumulate;
    BEVKD_UNROLL
    for (int i = 0; i < 4; ++i) to[i] = direct ? reinterpret_cast<float*>(&row(l + i).grad[0]) : buffer[i];
    const index_t whole = n / 4 * 4;
    for (index_t c = 0; c < whole; c += 4) {
      __m128 v[4];
      BEVKD_UNROLL
      for (int i = 0; i < 4; ++i) v[i] = _mm_loadu_ps(g + lane_index(c + i, l));
      _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);
      BEVKD_UNROLL
      for (int i = 0; i < 4; ++i) _mm_storeu_ps(to[i] + c, v[i]);
    }
    for (index_t c = whole; c < n; ++c)
      BEVKD_UNROLL
      for (int i = 0; i < 4; ++i) to[i][c] = g[lane_index(c, l + i)];
    if (direct) return;
    BEVKD_UNROLL
    for (int i = 0; i < 4; ++i) {
      if (skip[l + i] && accumulate) continue;
      const auto grad = row(l + i).grad;
      const float* from = buffer[i];
      for_row_partials(n, [&](index_t c, int) BEVKD_INLINE_LAMBDA { write_grad(grad[c], from[c], accumulate); });
    }
  }
#endif

#if defined(BEVKD_HOST_AVX512)
  // Moves the tensor's rows (pick(row): a row's first element; float, or 16-bit widened) into lane layout sixteen
  // columns at a time (one 16 x 16 transpose; lanes from count on get 0).
  template <class Pick>
  void gather_sixteen(Pick pick, float* out) const {
    avx512::for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
      __m512 v[block_rows];
      for (int l = 0; l < block_rows; ++l)
        v[l] = l < count ? avx512::load_floats(pick(row(l)) + c, m) : _mm512_setzero_ps();
      avx512::transpose16(v);
      for (index_t j = 0; j < block_rows && c + j < n; ++j) _mm512_storeu_ps(out + lane_index(c + j, 0), v[j]);
    });
  }

  // Writes lane-layout gradients g into the rows sixteen columns at a time (see gather_sixteen), streamed when
  // stream_grad is set.
  void scatter_sixteen(const float* g) const {
    if (stream_grad)
      scatter_sixteen_as<true>(g);
    else
      scatter_sixteen_as<false>(g);
  }

  template <bool Stream>
  void scatter_sixteen_as(const float* g) const {
    avx512::for_each_vector(n, [&](index_t c, __mmask16 m) BEVKD_INLINE_LAMBDA {
      __m512 v[block_rows];
      for (int j = 0; j < block_rows; ++j)
        v[j] = c + j < n ? _mm512_loadu_ps(g + lane_index(c + j, 0)) : _mm512_setzero_ps();
      avx512::transpose16(v);
      for (int l = 0; l < count; ++l) avx512::store_floats<Stream>(row(l).grad.ptr + c, v[l], m);
    });
  }
#endif
};

/// @brief What a kernel holds of a block's rows (`const auto& rows = held_rows(block)`): a block by reference, a
/// spaced_rows by value, a local the compiler keeps in registers (see spaced_rows).
template <class Block>
BEVKD_HOST_FORCEINLINE const Block& held_rows(const Block& block) {
  return block;
}
/// @brief held_rows of a spaced_rows: a copy.
template <class T, bool Unit>
BEVKD_HOST_FORCEINLINE spaced_rows<T, Unit> held_rows(const spaced_rows<T, Unit>& rows) {
  return rows;
}

/// @brief Calls f(rows) with what a row-layout kernel reads of a row block: its spaced_rows when they lie at equal
/// distances, else the block itself (its table of rows).
template <class T, bool Unit, class F>
BEVKD_HOST_FORCEINLINE void with_block_rows(const row_block<T, Unit>& block, F&& f) {
  if constexpr (Unit)
    if (block.evenly_spaced) return f(block.spaced());
  f(block);
}

/// @brief Most runs a row of a multi_run_block may have (a masked joint attention row: one per valid source).
constexpr int max_block_runs = 8;

/// @brief The runs of a block's rows, each row up to max_block_runs contiguous runs (one softmax over all of a row's
/// runs), and the gradient runs of each row's masked part (written as 0): what a multi_run_block reads.
///
/// Only the counts start zeroed: the run arrays (8 KB) are read only up to them. (Zeroed, when a
/// multi_run_block held them and was made anew for every block, they took about 7 % of a masked SCA
/// call: memset, perf, Intel Cascade Lake; multi_run_host_block now keeps them for a whole chunk.)
template <class T>
struct block_runs {
  loss_row<T, true> runs[block_rows][max_block_runs];  ///< Row l's runs, the first run_count[l] valid.
  int run_count[block_rows] = {};                       ///< Runs of each row (0: nothing to read).
  T* masked[block_rows][max_block_runs];  ///< Gradient runs of row l's masked part, to be written as 0.
  int masked_count[block_rows] = {};      ///< Masked runs of each row.
};

/// @brief A row-layout block whose rows are each up to max_block_runs contiguous runs (block_runs), with the next
/// block's runs to prefetch.
template <class T>
struct multi_run_block {
  using value_type = T;                            ///< Element type of the tensors.
  static constexpr int max_runs = max_block_runs;  ///< Most runs a row has.
  const block_runs<T>* rows = nullptr;             ///< The block's runs.
  const block_runs<T>* next = nullptr;  ///< The next block's runs (prefetched; its rows from its count on have none).
  index_t masked_n = 0;                 ///< Elements of each run, valid or masked (K).
  int count = 0;                        ///< Rows in the block (1..block_rows).
  index_t n = 0;  ///< Most columns a row can have: each row's exponentials take 2 n of the scratch.
  bool stream_grad = false;  ///< Gradient runs (and masked runs) are streamed, not prefetched (see streams_grad).

  /// @brief Columns of each run: every source's K keys, valid or masked.
  index_t run_length() const { return masked_n; }

  /// @brief True when every gradient run (and masked run) starts a 64-byte line.
  bool grad_runs_on_lines() const {
    std::uintptr_t bits = 0;
    for (int l = 0; l < count; ++l) {
      for (int i = 0; i < rows->run_count[l]; ++i) bits |= reinterpret_cast<std::uintptr_t>(rows->runs[l][i].grad.ptr);
      for (int i = 0; i < rows->masked_count[l]; ++i) bits |= reinterpret_cast<std::uintptr_t>(rows->masked[l][i]);
    }
    return (bits & 63) == 0;
  }

  /// @brief Calls f(run) for each run of row l, in order.
  template <class F>
  BEVKD_HOST_FORCEINLINE void for_each_run(int l, F&& f) const {
    for (int i = 0; i < rows->run_count[l]; ++i) f(rows->runs[l][i]);
  }
  /// @brief Prefetches row l's gradient runs (masked ones too) and the next block's row l runs of student and
  /// teacher.
  BEVKD_HOST_FORCEINLINE void prefetch_row(int l) const {
    if (!stream_grad) {
      for (int i = 0; i < rows->run_count[l]; ++i) prefetch_span<true>(rows->runs[l][i].grad.ptr, rows->runs[l][i].n);
      for (int i = 0; i < rows->masked_count[l]; ++i) prefetch_span<true>(rows->masked[l][i], masked_n);
    }
    // Into L2 only: a block of masked rows touches more than L1 holds (inputs, exponentials, whole
    // gradient rows), and L1 prefetches evicted lines still in use (measured: SCA 12 % slower).
    for (int i = 0; i < next->run_count[l]; ++i) {
      prefetch_span<false, prefetch_level::l2>(next->runs[l][i].student.ptr, next->runs[l][i].n);
      prefetch_span<false, prefetch_level::l2>(next->runs[l][i].teacher.ptr, next->runs[l][i].n);
    }
  }
};

/// @brief A host row block (row_block) that also keeps block_runs for its own rows and the next block's, which trade
/// places when a block follows the one before: a problem whose rows are multi_run_blocks (host_block) then finds
/// each block's runs once, as the next block's, instead of twice.
template <class T>
struct multi_run_host_block : row_block<T, true> {
  block_runs<T> run_sets[2];    ///< This block's runs and the next block's.
  int ahead = 0;                ///< run_sets[ahead]: the runs found for the rows from ahead_first on.
  index_t ahead_first = -1;     ///< First row of run_sets[ahead] (-1: none found yet).

  /// @brief The block's multi_run_block with `columns` and K keys per run: its runs are the ones found as the block
  /// before's next when this block follows it, else found now by find(first, count, runs); the next block's runs are
  /// found now (all block_rows rows given: those from its count on get none).
  template <class Find>
  multi_run_block<T> runs(index_t columns, index_t keys, Find&& find) {
    const int own = ahead;
    if (ahead_first != this->first) find(this->first, this->count, run_sets[own]);
    ahead = 1 - own;
    ahead_first = this->first + this->count;
    find(ahead_first, this->next_count, run_sets[ahead]);
    multi_run_block<T> block;
    block.rows = &run_sets[own];
    block.next = &run_sets[ahead];
    block.count = this->count;
    block.n = columns;
    block.masked_n = keys;
    block.stream_grad = this->stream_call && block.grad_runs_on_lines();
    return block;
  }
};

/// @brief with_block_rows of a multi_run_block: the block itself.
template <class T, class F>
BEVKD_HOST_FORCEINLINE void with_block_rows(const multi_run_block<T>& block, F&& f) {
  f(block);
}

/// @brief A problem's lane_group_ahead (columns a lane-group pass prefetches ahead), or 64 for problems without one.
template <class Problem, class = void>
struct lane_group_ahead_trait : std::integral_constant<index_t, 64> {};
/// @brief Problems that declare `lane_group_ahead`.
template <class Problem>
struct lane_group_ahead_trait<Problem, std::void_t<decltype(Problem::lane_group_ahead)>>
    : std::integral_constant<index_t, Problem::lane_group_ahead> {};
/// @brief lane_group_ahead_trait's value.
template <class Problem>
constexpr index_t lane_group_ahead_of() {
  return lane_group_ahead_trait<Problem>::value;
}

/// @brief Up to sixteen rows of any length that lie side by side in all three tensors (column c of row l at row 0's
/// column c + l, as the channels of an NHWC tensor in the spatial KL): a host lane-group kernel reads them in place,
/// one vector of the rows per column, without scratch; groups run in a lane_group_set (see softmax_kl_lane_groups).
///
/// Why: such rows (B x C rows of P = 40000 pillars) are too long for a block's scratch, and
/// staging them meant transposing all three tensors twice (copy_tiles), more than half the call.
template <class T>
struct lane_group {
  using value_type = T;          ///< Element type of the tensors.
  loss_row<T, false> row0 = {};  ///< Row 0 of the group; row l is it shifted by l elements.
  index_t first = 0;             ///< The problem's index of row 0.
  int count = 0;                 ///< Rows in the group (1..block_rows).
  index_t n = 0;                 ///< Columns per row.

  /// @brief Columns ahead of the one being read whose student and teacher a pass prefetches (see read_ahead): the
  /// problem's lane_group_ahead where it has one (lane_group_ahead_of), else 64.
  index_t ahead = 64;

  /// @brief Prefetches column c + ahead of student and teacher: columns lie a whole row of the tensor apart (C
  /// elements in the spatial KL), which the hardware's prefetchers do not follow, so each pass waited on memory for
  /// every column (measured, C = 64, 2 x 40000 pillars, one thread: 10.6 ms without, 3.3 ms with 64 ahead; 16: 4.6,
  /// 32: 3.9, 128: 3.2, 256: 3.4; at C = 256, 64 ahead was the best). The column's first element only: one line
  /// holds the sixteen floats of an aligned column (a second prefetch, for its last element, cost 6 %).
  BEVKD_HOST_FORCEINLINE void read_ahead(index_t c) const {
    prefetch_at(row0.student, c + ahead);
    prefetch_at(row0.teacher, c + ahead);
  }

  /// @brief Groups of each i0 of a problem over [R0, R1] rows: its R1 rows in groups of block_rows, the last one
  /// shorter.
  template <class Problem>
  static index_t groups_per_outer(const Problem& problem) {
    return (problem.student.extent[1] + block_rows - 1) / block_rows;
  }

  /// @brief Makes this group k of the problem's, i0 * groups_per_outer + the group's place in its i0.
  template <class Problem>
  void load(const Problem& problem, index_t k) {
    const index_t per = groups_per_outer(problem), rows = problem.student.extent[1];
    const index_t i0 = k / per, i1 = k % per * block_rows;
    row0 = problem.row_at(i0, i1);
    first = i0 * rows + i1;
    count = static_cast<int>(rows - i1 < block_rows ? rows - i1 : block_rows);
    n = problem.columns();
    ahead = lane_group_ahead_of<Problem>();
  }

  /// @brief True when every column of the group's gradient is one whole 64-byte line (sixteen floats, each column on
  /// a line): what non-temporal stores need.
  bool grad_columns_on_lines() const {
    return count == block_rows && (reinterpret_cast<std::uintptr_t>(row0.grad.ptr) & 63) == 0 &&
           row0.grad.stride * static_cast<index_t>(sizeof(T)) % 64 == 0;
  }

 private:
  // Prefetches column c of a row, which may lie past the tensor's end: the address is formed as an integer (no
  // out-of-range pointer arithmetic), and a prefetch never faults.
  template <class Ref>
  static BEVKD_HOST_FORCEINLINE void prefetch_at(const Ref& row, index_t c) {
#if defined(__GNUC__) || defined(__clang__)
    const auto bytes = static_cast<std::uintptr_t>(c * row.stride * static_cast<index_t>(sizeof(T)));
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(row.ptr) + bytes));
#else
    (void)row;
    (void)c;
#endif
  }
};

/// @brief True when rows of T run in host lane groups: the types of host_float_lanes (16-bit ones where the build has
/// AVX-512BW and VL: masked 16-bit loads and stores); their passes read one vector per column (16-bit columns widened
/// to floats, see narrow_lanes).
///
/// Why not others: generic loops over each column's sixteen rows (copied out, then vectorised
/// over the lanes) ran slower than staging the rows for the row kernels (measured, C = 64 and
/// 256, one thread: SSE2 fp32 8.9 against 4.4-6.1 ns per element, AVX-512 bf16 5.7-5.8 against
/// 2.3-3.4): four exponentials per element weigh more there than the copies they save. double
/// rows have no AVX-512 passes.
template <class T>
constexpr bool has_lane_group_passes() {
  return host_float_lanes<T>();
}

/// @brief Columns of a lane group whose sums a kernel adds up on their own before adding them to the row's: rows of
/// 40000 columns then carry the rounding of about 64 + 625 additions, not 40000.
constexpr index_t lane_group_piece = 64;

/// @brief Most lane groups one lane_group_set runs together.
constexpr int max_set_groups = 8;

/// @brief Columns each pass of a lane_group_set runs over all of the set's groups before the next columns (a multiple
/// of lane_group_piece, so that a row's sums are added in the same pieces whatever the set).
constexpr index_t lane_set_segment = 256;
static_assert(lane_set_segment % lane_group_piece == 0, "segments are whole pieces");

/// @brief Up to max_set_groups lane groups of neighbouring rows (one i0), run together: each pass takes
/// lane_set_segment columns of every group before the next ones, so that the passes sweep the tensors' memory
/// in order (whole pillars of up to 128 channels) instead of one 64-byte line per pillar and group.
///
/// Why: one group at a time read 64 bytes of every C x 4-byte pillar per pass, each pass over
/// the whole tensor's pages; at C = 256 the call was bound by memory at three times its arithmetic.
template <class T>
struct lane_group_set {
  lane_group<T> groups[max_set_groups];  ///< The set's groups; the first `count` are valid.
  int count = 0;                         ///< Groups in the set.
  /// @brief The gradient is written with non-temporal stores: the call's is streamable (grad_streamable) and the first
  /// group's columns are whole lines (the groups share alignment and stride; a shorter last group's masked stores
  /// stay plain, see store_lanes).
  bool stream_grad = false;

  /// @brief Groups per set for rows of an i0 that make `groups` groups: at least two sets per i0 where there are two
  /// groups or more (so that one batch still spreads over two threads), at most max_set_groups.
  static index_t set_size(index_t groups) {
    const index_t half = groups / 2;
    return half < 1 ? 1 : half > max_set_groups ? max_set_groups : half;
  }

  /// @brief Sets of a problem: each i0's groups in sets of set_size, the last one smaller.
  template <class Problem>
  static index_t count_in(const Problem& problem) {
    return problem.student.extent[0] * sets_per_outer(problem);
  }

  /// @brief Makes this set number k of the problem's (count_in); `stream_call`: the call's gradient is streamable.
  template <class Problem>
  void load(const Problem& problem, index_t k, bool stream_call) {
    const index_t outer_groups = lane_group<T>::groups_per_outer(problem), size = set_size(outer_groups);
    const index_t per = sets_per_outer(problem), i0 = k / per, first = k % per * size;
    count = static_cast<int>(outer_groups - first < size ? outer_groups - first : size);
    for (int i = 0; i < count; ++i) groups[i].load(problem, i0 * outer_groups + first + i);
    stream_grad = stream_call && groups[0].grad_columns_on_lines();
  }

  /// @brief Calls f(first, last) for the segments [first, last) of lane_set_segment columns of the rows, in order.
  template <class F>
  BEVKD_HOST_FORCEINLINE void for_each_segment(F&& f) const {
    const index_t n = groups[0].n;
    for (index_t first = 0; first < n; first += lane_set_segment)
      f(first, n - first < lane_set_segment ? n : first + lane_set_segment);
  }

 private:
  template <class Problem>
  static index_t sets_per_outer(const Problem& problem) {
    const index_t groups = lane_group<T>::groups_per_outer(problem), size = set_size(groups);
    return (groups + size - 1) / size;
  }
};

/// @brief True when a problem has a host lane-group kernel (`lane_groups`; lane_groups_apply() says whether a call
/// uses it).
template <class Problem, class = void>
struct has_lane_groups : std::false_type {};
/// @brief Problems that declare `lane_groups`.
template <class Problem>
struct has_lane_groups<Problem, std::void_t<decltype(Problem::lane_groups)>>
    : std::integral_constant<bool, Problem::lane_groups> {};

/// @brief Calls f(accumulating, streaming), two std::bool_constant: the gradient mode of a kernel as compile-time
/// constants, chosen once per call (accumulate wins; stream only where a set or block streams).
template <class F>
BEVKD_HOST_FORCEINLINE void with_grad_mode(bool accumulate, bool stream, F&& f) {
  if (accumulate)
    f(std::true_type{}, std::false_type{});
  else if (stream)
    f(std::false_type{}, std::true_type{});
  else
    f(std::false_type{}, std::false_type{});
}

/// @brief Calls f(l) for the lanes l < count of a lane group: a loop of the constant block_rows for a full group (so that
/// it vectorises), of count otherwise.
template <class F>
BEVKD_HOST_FORCEINLINE void for_group_lanes(int count, F&& f) {
  if (count == block_rows) {
    for (int l = 0; l < block_rows; ++l) f(l);
  } else {
    for (int l = 0; l < count; ++l) f(l);
  }
}

/// @brief True when any of a lane group's count rows has skip set.
inline bool group_skips_rows(int count, const bool* skip) {
  bool any = false;
  for (int l = 0; l < count; ++l) any = any || skip[l];
  return any;
}

/// @brief Column c of a lane group's three tensors, element by element in portable code (the rows' elements lie next
/// to each other: row l's at lane l).
template <class T>
class group_column {
 public:
  /// @brief Column c of a group.
  group_column(const lane_group<T>& group, index_t c)
      : s_(group.row0.student.ptr + c * group.row0.student.stride),
        t_(group.row0.teacher.ptr + c * group.row0.teacher.stride),
        g_(group.row0.grad.ptr + c * group.row0.grad.stride) {}

  /// @brief Row l's student element.
  BEVKD_HOST_FORCEINLINE accum_t<T> student(int l) const { return load_as_accum(s_[l]); }
  /// @brief Row l's teacher element.
  BEVKD_HOST_FORCEINLINE accum_t<T> teacher(int l) const { return load_as_accum(t_[l]); }

  /// @brief Writes (Accumulate: adds) value_of(l) as row l's gradient element for the rows l < count: exactly 0 in rows
  /// with skip set (their values may be NaN), or, when accumulating, nothing there (their bits kept). `skips`:
  /// group_skips_rows: a group of no skipped rows writes in one loop that vectorises.
  template <bool Accumulate, class ValueOf>
  BEVKD_HOST_FORCEINLINE void write(int count, const bool* skip, bool skips, ValueOf&& value_of) const {
    if (!skips) {
      for_group_lanes(count, [&](int l) BEVKD_INLINE_LAMBDA { write_grad(g_[l], value_of(l), Accumulate); });
      return;
    }
    for (int l = 0; l < count; ++l) {
      if (!skip[l])
        write_grad(g_[l], value_of(l), Accumulate);
      else if (!Accumulate)
        g_[l] = store_from_accum<T>(accum_t<T>(0));
    }
  }

 private:
  const T* s_;
  const T* t_;
  T* g_;
};

/// @brief Adds the terms of columns [first, last) of a group to its rows' Count sums (sums[k][l]: row l's k-th), each
/// piece of lane_group_piece columns summed on its own first (first is a multiple of it): f(c, piece) adds column c's
/// terms to the piece's sums. The portable form of avx512::add_in_pieces.
template <int Count, class T, class Acc, class F>
BEVKD_HOST_FORCEINLINE void add_group_pieces(const lane_group<T>& group, index_t first, index_t last,
                                             Acc (&sums)[Count][block_rows], F&& f) {
  for (; first < last; first += lane_group_piece) {
    const index_t end = last - first < lane_group_piece ? last : first + lane_group_piece;
    Acc piece[Count][block_rows] = {};
    for (index_t c = first; c < end; ++c) {
      group.read_ahead(c);
      f(c, piece);
    }
    for (int k = 0; k < Count; ++k)
      for (int l = 0; l < block_rows; ++l) sums[k][l] += piece[k][l];
  }
}

#if defined(BEVKD_HOST_AVX512)
namespace avx512 {

/// @brief Column c of a lane group's student and teacher rows (float, half or bfloat16) as one float vector each (lanes
/// from count on read 0).
template <class T>
struct group_columns {
  const T* s;      ///< Row 0 of the student.
  const T* t;      ///< Row 0 of the teacher.
  index_t s_step;  ///< The student's column stride.
  index_t t_step;  ///< The teacher's column stride.
  __mmask16 rows;  ///< The group's rows: the lanes below count.

  /// @brief The columns of a group.
  explicit group_columns(const lane_group<T>& group)
      : s(group.row0.student.ptr),
        t(group.row0.teacher.ptr),
        s_step(group.row0.student.stride),
        t_step(group.row0.teacher.stride),
        rows(column_mask(0, group.count)) {}
  /// @brief Column c of the student.
  BEVKD_HOST_FORCEINLINE __m512 student(index_t c) const { return load(s + c * s_step); }
  /// @brief Column c of the teacher.
  BEVKD_HOST_FORCEINLINE __m512 teacher(index_t c) const { return load(t + c * t_step); }

 private:
  BEVKD_HOST_FORCEINLINE __m512 load(const T* p) const { return load_floats(p, rows); }
};

/// @brief Writes (Accumulate: adds) gradient columns of a lane group (float, half or bfloat16), one float vector each,
/// rounded to T: rows with skip set get exactly 0 (their values may be NaN) or, when accumulating, keep what they held;
/// the lanes from count on are not touched; whole aligned fp32 columns go around the caches when Stream is set
/// (store_lanes; 16-bit columns are half a line and never stream).
template <class T, bool Accumulate, bool Stream>
class group_grad_writer {
 public:
  /// @brief The writer of a group's gradient, with skip[l] for each of its rows.
  group_grad_writer(const lane_group<T>& group, const bool* skip)
      : g_(group.row0.grad.ptr), step_(group.row0.grad.stride), kept_(column_mask(0, group.count)) {
    for (int l = 0; l < group.count; ++l)
      if (skip[l]) kept_ = static_cast<__mmask16>(kept_ & ~(1u << l));
    written_ = Accumulate ? kept_ : column_mask(0, group.count);
  }

  /// @brief Writes `value` as column c.
  BEVKD_HOST_FORCEINLINE void operator()(index_t c, __m512 value) const {
    T* const at = g_ + c * step_;
    value = _mm512_maskz_mov_ps(kept_, value);
    if constexpr (Accumulate) value = _mm512_add_ps(load_floats(at, written_), value);
    store_floats<Stream>(at, value, written_);
  }

 private:
  T* g_;
  index_t step_;
  __mmask16 kept_;     // the rows whose gradient is computed
  __mmask16 written_;  // the lanes stored: every row when writing, only the kept ones when accumulating
};

/// @brief Adds the terms of columns [first, last) of a group to its rows' Count sums (lane l of sums[k]: row l's k-th),
/// each piece of lane_group_piece columns summed on its own first (first is a multiple of it): f(c, piece) adds column
/// c's terms to the piece's Count partial sums.
template <int Count, class T, class F>
BEVKD_HOST_FORCEINLINE void add_in_pieces(const lane_group<T>& group, index_t first, index_t last,
                                          float (&sums)[Count][block_rows], F&& f) {
  __m512 total[Count];
  for (int k = 0; k < Count; ++k) total[k] = _mm512_loadu_ps(sums[k]);
  for (; first < last; first += lane_group_piece) {
    const index_t end = last - first < lane_group_piece ? last : first + lane_group_piece;
    __m512 piece[Count];
    for (int k = 0; k < Count; ++k) piece[k] = _mm512_setzero_ps();
    for (index_t c = first; c < end; ++c) {
      group.read_ahead(c);
      f(c, piece);
    }
    for (int k = 0; k < Count; ++k) total[k] = _mm512_add_ps(total[k], piece[k]);
  }
  for (int k = 0; k < Count; ++k) _mm512_storeu_ps(sums[k], total[k]);
}

}  // namespace avx512
#endif

/// @brief The sum of a block's sixteen weighted row losses in double, added pairwise (k with k + 8, then k + 4, k + 2,
/// k + 1): four dependent adds instead of sixteen (a chain the next block's work cannot hide).
template <class Acc>
BEVKD_HOST_FORCEINLINE double block_sum(const Acc (&v)[block_rows]) {
  static_assert(block_rows == 16, "four halving steps");
  // Each step a separate array (GCC kept one halving loop's array in memory: a chain of stores and reloads).
  double eighths[8], quarters[4];
  for (int l = 0; l < 8; ++l) eighths[l] = static_cast<double>(v[l]) + static_cast<double>(v[l + 8]);
  for (int l = 0; l < 4; ++l) quarters[l] = eighths[l] + eighths[l + 4];
  return (quarters[0] + quarters[2]) + (quarters[1] + quarters[3]);
}

/// @brief The host row block type of a problem: its host_block where it declares one, else a row_block.
template <class Problem, class = void>
struct row_block_trait {
  using type = row_block<typename Problem::value_type, Problem::unit_stride>;  ///< The block type.
};
/// @brief Problems that declare host_block.
template <class Problem>
struct row_block_trait<Problem, std::void_t<typename Problem::host_block>> {
  using type = typename Problem::host_block;  ///< The block type.
};
/// @brief row_block_trait's type.
template <class Problem>
using row_block_of = typename row_block_trait<Problem>::type;

/// @brief True when a problem has a host block kernel (`block_loss_and_grad`; blocks_apply() says whether a call
/// uses it).
template <class Problem, class = void>
struct has_row_blocks : std::false_type {};
/// @brief Problems that declare `row_blocks`.
template <class Problem>
struct has_row_blocks<Problem, std::void_t<decltype(Problem::row_blocks)>>
    : std::integral_constant<bool, Problem::row_blocks> {};

/// @brief The per-row terms of a loaded block's rows around its kernel: weights, gradient coefficients, which rows are
/// skipped (weight 0), and the rows' outputs afterwards.
///
/// A row of weight 0 gets loss 0 and gradient exactly 0 (nothing when accumulating), as in
/// run_row; rows from the block's count on have weight 0.
template <class Acc>
struct block_terms {
  Acc w[block_rows];      ///< Row weights (1 without weights).
  Acc coeff[block_rows];  ///< The gradient's coefficient of each row (0 for skipped rows).
  bool skip[block_rows];  ///< Rows of weight 0.

  /// @brief The terms of the rows [block.first, block.first + block.count) of a problem.
  template <class Problem, class Block>
  BEVKD_HOST_FORCEINLINE void load(const Problem& problem, const Block& block, const row_scaling<Acc>& scaling) {
    Acc upstream[block_rows];
    problem.rows.load(block.first, block.count, w, upstream);
    for (int l = block.count; l < block_rows; ++l) w[l] = upstream[l] = Acc(0);
    derive(upstream, scaling);
  }

  /// @brief The terms of a full block of rows of weight 1 and upstream gradient 1 (see unit_rows).
  void load_unit(const row_scaling<Acc>& scaling) {
    Acc upstream[block_rows];
    unit_row_weights(block_rows, w, upstream);
    derive(upstream, scaling);
  }

  /// @brief weighted[l] = w_l loss[l] (0 for skipped rows), and the rows' outputs loss_weight w_l l_l (loss is
  /// overwritten with them).
  template <class Problem, class Block>
  BEVKD_HOST_FORCEINLINE void finish(const Problem& problem, const Block& block, const row_scaling<Acc>& scaling,
                                     Acc* loss, Acc* weighted) const {
    for (int l = 0; l < block_rows; ++l) {
      weighted[l] = math::select(w[l] == Acc(0), Acc(0), w[l] * loss[l]);
      loss[l] = scaling.loss_weight * weighted[l];  // the row's output
    }
    problem.rows.store(block.first, block.count, loss);
  }

 private:
  // skip and coeff from w and the rows' upstream gradients.
  BEVKD_HOST_FORCEINLINE void derive(const Acc (&upstream)[block_rows], const row_scaling<Acc>& scaling) {
    // Loops over all block_rows rows with selects, no branches: they vectorise (the per-block work
    // weighs against a block of 64-column rows; measured, written with branches, a tenth of the call).
    for (int l = 0; l < block_rows; ++l) {
      skip[l] = w[l] == Acc(0);
      coeff[l] = math::select(w[l] == Acc(0), Acc(0), scaling.grad_coeff * w[l] * upstream[l]);
    }
  }
};

/// @brief True when a problem's rows all have weight 1 and upstream gradient 1 and no per-row output: then one
/// block_terms (load_unit) serves every full block of a call, and a block's sum is that of its losses.
///
/// Why: loading and finishing each block's terms took about 1 % of a C = 64 softmax KL call
/// (measured, fp32, 20000 rows, one thread, Zen 4: 0.680 -> 0.672 ms).
template <class Rows>
bool unit_rows(const Rows& rows) {
  return !rows.has_weights() && !rows.upstream.data && !rows.row_loss.data;
}

/// @brief Runs the rows of a loaded block of a problem (row_block::load); returns the sum of its rows' w_r * l_r (added
/// pairwise, block_sum). `unit`: the terms of a full block of unit rows (load_unit; null unless unit_rows), used
/// as they are for full blocks: each row's w_r l_r is then l_r itself, 1 * l_r bit for bit.
template <class Problem, class Block, class Acc>
double run_block(const Problem& problem, Block& block, const row_scaling<Acc>& scaling, Acc* scratch,
                 const block_terms<Acc>* unit) {
  Acc loss[block_rows] = {};
  if (unit && block.count == block_rows) {
    problem.block_loss_and_grad(block, unit->coeff, unit->skip, scaling.accumulate, scratch, loss);
    return block_sum(loss);
  }
  block_terms<Acc> terms;
  terms.load(problem, block, scaling);
  problem.block_loss_and_grad(block, terms.coeff, terms.skip, scaling.accumulate, scratch, loss);
  Acc weighted[block_rows];
  terms.finish(problem, block, scaling, loss, weighted);
  return block_sum(weighted);  // rows from count on have weight 0: they add +0
}

/// @brief Runs a loaded lane_group_set of a problem; returns the sum of its rows' w_r * l_r (each group's sixteen
/// added pairwise, the groups in order).
template <class Problem, class T, class Acc>
double run_lane_group_set(const Problem& problem, const lane_group_set<T>& set, const row_scaling<Acc>& scaling) {
  block_terms<Acc> terms[max_set_groups] = {};  // those past count stay zero (and GCC sees them set)
  Acc loss[max_set_groups][block_rows] = {};
  for (int i = 0; i < set.count; ++i) terms[i].load(problem, set.groups[i], scaling);
  problem.lane_group_loss_and_grad(set, terms, scaling.accumulate, loss);
  double total = 0;
  for (int i = 0; i < set.count; ++i) {
    Acc weighted[block_rows];
    terms[i].finish(problem, set.groups[i], scaling, loss[i], weighted);
    total += block_sum(weighted);  // lanes from a group's count on have weight 0: they add +0
  }
  return total;
}

}  // namespace detail
}  // namespace bevkd
