// bevkd internal: how a team's lanes share a row (strided chunks), a row's strided element access, and rows held in
// registers.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../config.hpp"
#include "../dtype.hpp"
#include "../math.hpp"

namespace bevkd {
namespace detail {

/// @brief Partial accumulators per row of the host's row-layout passes (one SIMD vector of floats with AVX-512):
/// column c of a row goes to partial c mod row_partials.
constexpr int row_partials = 16;

/// @brief Calls f(c, v) for the columns c of a row of n, v = c mod row_partials, in runs of row_partials and then the
/// tail; f(c, v) may write column c's outputs and partial v, nothing another column reads.
///
/// Why runs: GCC's -O2 vectorises only loops of a known count, and a loop over all n columns
/// ran as scalar code there (bf16 softmax KL C = 64, 49 ms at -O2 against 6 at -O3). The run
/// stays a loop (a full unroll leaves it to the weaker straight-line vectoriser), and f must be
/// inlined into it (BEVKD_INLINE_LAMBDA: a large lambda otherwise stays a call).
// nvcc: a host-only caller's lambda (its operator() constexpr, host) may be passed here; the host team's single lane
// is the only caller that runs, so the cross-space check is off for this function.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class F>
BEVKD_FORCEINLINE void for_row_partials(index_t n, F&& f) {
  index_t first = 0;
  for (; first + row_partials <= n; first += row_partials) {
    BEVKD_IVDEP
    BEVKD_NO_UNROLL
    for (int v = 0; v < row_partials; ++v) f(first + v, v);
  }
  for (int v = 0; first + v < n; ++v) f(first + v, v);
}

/// @brief Calls f(c) for the columns lane `lane` of a team of `lanes` owns in a row of n: chunks of `chunk`
/// consecutive columns, chunk k owned by lane k mod lanes (chunk 1 is the classic lane-strided loop).
template <class F>
BEVKD_HOST_DEVICE void for_lane_columns(int lane, int lanes, int chunk, index_t n, F&& f) {
  if (chunk == 1) {
    for (index_t c = lane; c < n; c += lanes) f(c);
    return;
  }
  const index_t step = static_cast<index_t>(lanes) * chunk;
  for (index_t first = static_cast<index_t>(lane) * chunk; first < n; first += step) {
    const index_t last = first + chunk < n ? first + chunk : n;
    for (index_t c = first; c < last; ++c) f(c);
  }
}

/// @brief One row of a strided tensor: element c lives at ptr[c * stride] (stride 1 known at compile time when Unit).
template <class T, bool Unit>
struct row_ref {
  T* ptr;          ///< Element 0 of the row.
  index_t stride;  ///< Element stride between columns (ignored when Unit).

  /// @brief Element c of the row.
  BEVKD_FORCEINLINE T& operator[](index_t c) const { return Unit ? ptr[c] : ptr[c * stride]; }
};

/// @brief One row of student logits, teacher logits and the student's gradient, n columns.
template <class T, bool Unit>
struct loss_row {
  row_ref<const T, Unit> student;  ///< Student logits / features.
  row_ref<const T, Unit> teacher;  ///< Teacher logits / features.
  row_ref<T, Unit> grad;           ///< Gradient w.r.t. the student.
  index_t n;                       ///< Number of columns.
};

/// @brief True for loss_row types (rows read from memory; see held_row for rows read from registers).
template <class Row>
struct is_loss_row : std::false_type {};
/// @brief loss_row specialisation.
template <class T, bool Unit>
struct is_loss_row<loss_row<T, Unit>> : std::true_type {};

/// @brief Elements of T in one 16-byte vector load (the chunk width that enables vector loads on the device).
template <class T>
BEVKD_HOST_DEVICE constexpr int vector_width() {
  return static_cast<int>(16 / sizeof(T));
}

/// @brief True when every row (the last dimension) of a view of T starts on a 16-byte boundary: the data is aligned
/// and every outer stride is a whole number of vectors (the launch condition of the device's vector loads).
template <class T, int Rank>
bool rows_vector_aligned(const T* data, const index_t (&stride)[Rank]) {
  if (reinterpret_cast<std::uintptr_t>(data) % 16 != 0) return false;
  for (int d = 0; d + 1 < Rank; ++d)
    if (stride[d] % vector_width<T>() != 0) return false;
  return true;
}

/// @brief Copies `count` = vector_width<T>() elements starting at p (16-byte aligned) into out, as one load on the device.
template <class T>
BEVKD_HOST_DEVICE void load_vector(const T* p, T* out) {
#if defined(__CUDA_ARCH__)
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  std::memcpy(out, &raw, sizeof raw);
#else
  for (int v = 0; v < vector_width<T>(); ++v) out[v] = p[v];
#endif
}

/// @brief Writes (or adds) one gradient element: accumulate adds into what is there.
template <class T, class Acc>
BEVKD_FORCEINLINE void write_grad(T& slot, Acc value, bool accumulate) {
#if defined(__CUDA_ARCH__)
  slot = accumulate ? store_from_accum<T>(load_as_accum(slot) + value) : store_from_accum<T>(value);
#else
  // The host reads the slot either way (its cache line is fetched for the write anyway) so that
  // the loop has no branch and vectorises.
  const Acc prior = load_as_accum(slot);
  slot = store_from_accum<T>(math::select(accumulate, prior + value, value));
#endif
}

/// @brief Copies vector_width<T>() elements from `in` to p (16-byte aligned), as one store on the device.
template <class T>
BEVKD_HOST_DEVICE void store_vector(T* p, const T* in) {
#if defined(__CUDA_ARCH__)
  uint4 raw;
  std::memcpy(&raw, in, sizeof raw);
  *reinterpret_cast<uint4*>(p) = raw;
#else
  for (int v = 0; v < vector_width<T>(); ++v) p[v] = in[v];
#endif
}

/// @brief write_grad of value(v) into g[v] for the vector_width<T>() elements of one chunk at g (16-byte aligned):
/// one vector store on the device (and one vector load first when accumulating); value(v) is called in order of v.
template <class T, class G>
BEVKD_HOST_DEVICE void write_grad_chunk(T* g, bool accumulate, G&& value) {
  constexpr int width = vector_width<T>();
#if defined(__CUDA_ARCH__)
  T out[width];
  if (accumulate) {
    T prior[width];
    const uint4 raw = *reinterpret_cast<const uint4*>(g);
    std::memcpy(prior, &raw, sizeof raw);
    BEVKD_UNROLL
    for (int v = 0; v < width; ++v) out[v] = store_from_accum<T>(load_as_accum(prior[v]) + value(v));
  } else {
    BEVKD_UNROLL
    for (int v = 0; v < width; ++v) out[v] = store_from_accum<T>(value(v));
  }
  store_vector(g, out);
#else
  for (int v = 0; v < width; ++v) write_grad(g[v], value(v), accumulate);
#endif
}

/// @brief The chunk walk of a unit-stride row read in 16-byte vectors: full(first) for each full chunk [first, first
/// + vector_width<T>()) lane `lane` owns, tail(c) for each column of its last, partial chunk.
template <class T, class Full, class Tail>
BEVKD_HOST_DEVICE void for_lane_vectors(int lane, int lanes, index_t n, Full&& full, Tail&& tail) {
  constexpr int width = vector_width<T>();
  const index_t step = static_cast<index_t>(lanes) * width;
  for (index_t first = static_cast<index_t>(lane) * width; first < n; first += step) {
    if (first + width <= n) {
      full(first);
    } else {
      for (index_t c = first; c < n; ++c) tail(c);
    }
  }
}

/// @brief Calls f(c, s_c, t_c) over the columns a lane owns (see for_lane_columns), with student and teacher loaded.
///
/// When the row is unit-stride and the chunk is one 16-byte vector, full chunks are read with
/// one vector load per tensor on the device (the launch checks the alignment). The host reads
/// the same elements one by one, so both see the same partition and values.
template <class T, bool Unit, class F>
BEVKD_HOST_DEVICE void for_lane_values(int lane, int lanes, int chunk, const loss_row<T, Unit>& row, F&& f) {
  const auto column = [&](index_t c) { f(c, load_as_accum(row.student[c]), load_as_accum(row.teacher[c])); };
  if (!Unit || chunk != vector_width<T>()) return for_lane_columns(lane, lanes, chunk, row.n, column);
  for_lane_vectors<T>(lane, lanes, row.n, [&](index_t first) {
    T s[vector_width<T>()], t[vector_width<T>()];
    load_vector(&row.student[first], s);
    load_vector(&row.teacher[first], t);
    for (int v = 0; v < vector_width<T>(); ++v) f(first + v, load_as_accum(s[v]), load_as_accum(t[v]));
  }, column);
}

/// @brief Writes (accumulate: adds) f(c, s_c, t_c), column c's gradient, over the columns a lane owns, in the order
/// of for_lane_values; full 16-byte chunks of a unit-stride row are read and written with one vector each on the
/// device (the launch checks the alignment of all three tensors).
template <class T, bool Unit, class F>
BEVKD_HOST_DEVICE void for_lane_grads(int lane, int lanes, int chunk, const loss_row<T, Unit>& row, bool accumulate,
                                      F&& f) {
  const auto column = [&](index_t c) {
    write_grad(row.grad[c], f(c, load_as_accum(row.student[c]), load_as_accum(row.teacher[c])), accumulate);
  };
  if (!Unit || chunk != vector_width<T>()) return for_lane_columns(lane, lanes, chunk, row.n, column);
  for_lane_vectors<T>(lane, lanes, row.n, [&](index_t first) {
    T s[vector_width<T>()], t[vector_width<T>()];
    load_vector(&row.student[first], s);
    load_vector(&row.teacher[first], t);
    write_grad_chunk(&row.grad[first], accumulate,
                     [&](int v) { return f(first + v, load_as_accum(s[v]), load_as_accum(t[v])); });
  }, column);
}

#ifndef BEVKD_HELD_ROW_CHUNKS
/// @brief 16-byte chunks of student and of teacher a device lane holds in registers when its team holds a row
/// (held_row; default 2: 8 fp32 or 16 bfloat16 columns a lane in 2 x 8 registers). 0 turns held rows off.
///
/// On an H100 (bench/RESULTS.md), holding 2 chunks took the fp32 softmax KL at C = 64 from 46.8
/// to 38.8 us and the fp32 normalised MSE from 44.0 to 36.1 us (against the vector stores alone);
/// 4 made the fp32 softmax rows spill at the kernels' 80-register bound (51.3 us at C = 64) and
/// was faster only at C = 256.
#define BEVKD_HELD_ROW_CHUNKS 2
#endif

/// @brief Chunks a lane holds (BEVKD_HELD_ROW_CHUNKS).
constexpr int held_row_chunks = BEVKD_HELD_ROW_CHUNKS;
static_assert(held_row_chunks >= 0 && held_row_chunks <= 8, "BEVKD_HELD_ROW_CHUNKS: 0 to 8 chunks a lane");

/// @brief True when a team of `lanes` lanes reading chunks of `chunk` columns can hold a unit-stride row of n columns
/// of T in held_row<T, Chunks>: the chunks are 16-byte vectors and each lane's share fits.
template <class T, int Chunks>
BEVKD_HOST_DEVICE bool row_fits_held(int lanes, int chunk, index_t n) {
  return Chunks > 0 && chunk == vector_width<T>() && n <= static_cast<index_t>(lanes) * chunk * Chunks;
}

/// @brief One lane's share of a unit-stride loss row, read once into registers so that a kernel's later passes over
/// the row read no memory (see row_fits_held). Exposes the row's n and grad like a loss_row.
///
/// Chunk k is the lane's k-th chunk of for_lane_values (columns from (lane + k lanes) width);
/// every loop over chunks and their elements has compile-time bounds, so the arrays stay in
/// registers, and the columns past n are never read.
template <class T, int Chunks>
struct held_row {
  static constexpr int width = vector_width<T>();  ///< Elements of one chunk.
  row_ref<T, true> grad;                           ///< Gradient of the row.
  index_t n;                                       ///< Columns of the row.
  index_t first;                                   ///< Column of the lane's first chunk.
  index_t step;                                    ///< Columns from one of the lane's chunks to the next.
  T s[Chunks][width];                              ///< Student values of the lane's chunks.
  T t[Chunks][width];                              ///< Teacher values of the lane's chunks.

  /// @brief Loads lane `lane`'s chunks of `row` (16-byte aligned; chunk = width; the row fits, see row_fits_held).
  BEVKD_HOST_DEVICE held_row(int lane, int lanes, const loss_row<T, true>& row)
      : grad(row.grad), n(row.n), first(static_cast<index_t>(lane) * width), step(static_cast<index_t>(lanes) * width) {
    BEVKD_UNROLL
    for (int k = 0; k < Chunks; ++k) {
      const index_t c0 = first + k * step;
      if (c0 + width <= n) {
        load_vector(&row.student[c0], s[k]);
        load_vector(&row.teacher[c0], t[k]);
      } else {
        BEVKD_UNROLL
        for (int v = 0; v < width; ++v) {
          s[k][v] = c0 + v < n ? row.student[c0 + v] : T();
          t[k][v] = c0 + v < n ? row.teacher[c0 + v] : T();
        }
      }
    }
  }

  /// @brief f(c, s_c, t_c) over the held columns, in the order of for_lane_values.
  template <class F>
  BEVKD_HOST_DEVICE void for_each(F&& f) const {
    BEVKD_UNROLL
    for (int k = 0; k < Chunks; ++k) {
      BEVKD_UNROLL
      for (int v = 0; v < width; ++v)
        if (first + k * step + v < n) f(first + k * step + v, load_as_accum(s[k][v]), load_as_accum(t[k][v]));
    }
  }

// Clang reports (-Wpass-failed) that it did not unroll the loops below for half, whose scalar conversions make the
// body large; the pragma is a hint for GCC's vectoriser and the loops are correct rolled, so the note is silenced here
// rather than landing in every consumer's build.
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wpass-failed"
#endif
  /// @brief for_lane_grads over the held columns: f(c, s_c, t_c) is written (accumulate: added) to the gradient.
  template <class F>
  BEVKD_HOST_DEVICE void for_each_grad(bool accumulate, F&& f) const {
    BEVKD_UNROLL
    for (int k = 0; k < Chunks; ++k) {
      const index_t c0 = first + k * step;
      const auto value = [&](int v) { return f(c0 + v, load_as_accum(s[k][v]), load_as_accum(t[k][v])); };
      if (c0 + width <= n) {
        write_grad_chunk(&grad[c0], accumulate, value);
      } else {
        BEVKD_UNROLL
        for (int v = 0; v < width; ++v)
          if (c0 + v < n) write_grad(grad[c0 + v], value(v), accumulate);
      }
    }
  }
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
};

/// @brief for_lane_values over a held row: its lane's columns are the ones it holds.
template <class T, int Chunks, class F>
BEVKD_HOST_DEVICE void for_lane_values(int, int, int, const held_row<T, Chunks>& row, F&& f) {
  row.for_each(f);
}

/// @brief for_lane_grads over a held row.
template <class T, int Chunks, class F>
BEVKD_HOST_DEVICE void for_lane_grads(int, int, int, const held_row<T, Chunks>& row, bool accumulate, F&& f) {
  row.for_each_grad(accumulate, f);
}

/// @brief A row the host team runs as a device team holds it: each lane's pass loads that lane's held_row first
/// (the host's lanes run one after the other, so none holds its share between passes; tests run the same loads,
/// partition and order as the device).
template <class T, int Chunks>
struct lane_held_row {
  loss_row<T, true> row;  ///< The row in memory.
  row_ref<T, true> grad;  ///< Gradient of the row.
  index_t n;              ///< Columns of the row.
};

/// @brief for_lane_values over lane `lane`'s held_row of the row.
template <class T, int Chunks, class F>
BEVKD_HOST_DEVICE void for_lane_values(int lane, int lanes, int chunk, const lane_held_row<T, Chunks>& x, F&& f) {
  for_lane_values(lane, lanes, chunk, held_row<T, Chunks>(lane, lanes, x.row), f);
}

/// @brief for_lane_grads over lane `lane`'s held_row of the row.
template <class T, int Chunks, class F>
BEVKD_HOST_DEVICE void for_lane_grads(int lane, int lanes, int chunk, const lane_held_row<T, Chunks>& x,
                                      bool accumulate, F&& f) {
  for_lane_grads(lane, lanes, chunk, held_row<T, Chunks>(lane, lanes, x.row), accumulate, f);
}

/// @brief What a column of a reducing gradient pass gives: its gradient and its term of the reduction.
template <class Acc, class V>
struct graded {
  Acc grad;  ///< Gradient of the column.
  V value;   ///< The column's term of the reduction.
};

/// @brief The per-column function of a lane's reduce_grads pass: calls f (which returns graded), folds its term into
/// `partial` with op and returns its gradient for for_lane_grads to write.
template <class Op, class V, class F>
BEVKD_HOST_DEVICE auto folding_terms(Op op, V& partial, F& f) {
  return [op, &partial, &f](index_t c, auto s, auto t) {
    const auto out = f(c, s, t);
    partial = op(partial, out.value);
    return out.grad;
  };
}

}  // namespace detail
}  // namespace bevkd
