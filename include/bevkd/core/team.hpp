// bevkd team abstraction on the host: a team of N lanes run one after the other, reducing in CUB's tree order.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <type_traits>

#include "config.hpp"
#include "detail/lanes.hpp"
#include "math.hpp"

namespace bevkd {

/// @brief A fixed-size array of accumulators reduced together in one team reduction.
template <class Acc, int N>
struct acc_array {
  Acc v[N];  ///< Components.

  /// @brief Component access.
  BEVKD_FORCEINLINE Acc& operator[](int i) { return v[i]; }
  /// @brief Component access.
  BEVKD_FORCEINLINE const Acc& operator[](int i) const { return v[i]; }
};

/// @brief True for acc_array types (reduced component by component).
template <class V>
struct is_acc_array : std::false_type {};
/// @brief acc_array specialisation.
template <class Acc, int N>
struct is_acc_array<acc_array<Acc, N>> : std::true_type {};

/// @brief Gives a scalar reduction operator its component-wise form over acc_array (CRTP base).
template <class Op>
struct componentwise_op {
  /// @brief Op applied component by component.
  template <class Acc, int N>
  BEVKD_FORCEINLINE acc_array<Acc, N> operator()(const acc_array<Acc, N>& a, const acc_array<Acc, N>& b) const {
    acc_array<Acc, N> out;
    for (int i = 0; i < N; ++i) out[i] = static_cast<const Op&>(*this)(a[i], b[i]);
    return out;
  }
};

/// @brief Sum (the reduction operator of team sums).
struct sum_op : componentwise_op<sum_op> {
  using componentwise_op<sum_op>::operator();
  /// @brief a + b.
  template <class Acc>
  BEVKD_FORCEINLINE Acc operator()(const Acc& a, const Acc& b) const {
    return a + b;
  }
};

/// @brief Maximum that propagates NaN (a NaN lane makes the result NaN, as PyTorch's max does).
struct max_op : componentwise_op<max_op> {
  using componentwise_op<max_op>::operator();
  /// @brief max(a, b), NaN if either is NaN.
  template <class Acc>
  BEVKD_FORCEINLINE Acc operator()(const Acc& a, const Acc& b) const {
    return math::select(math::is_nan(a) | (a > b), a, b);
  }
};

/// @brief Maximum for a softmax's shift, where NaN needs no propagation: a NaN input reaches the exponential sums itself.
///
/// `a > b ? a : b` is one SIMD max instruction; with a NaN operand the result is either side
/// (deterministically, for a fixed reduction order), and is the true maximum when there is none.
struct shift_max_op : componentwise_op<shift_max_op> {
  using componentwise_op<shift_max_op>::operator();
  /// @brief a > b ? a : b.
  template <class Acc>
  BEVKD_FORCEINLINE Acc operator()(const Acc& a, const Acc& b) const {
    return a > b ? a : b;
  }
};

/// @brief Lanes of a hardware warp; the host team reduces in groups of this many, like a CUDA block does.
constexpr int warp_lanes = 32;

/// @brief A host team of `size()` lanes executed one after the other (Kokkos-style serial team).
///
/// Team-collective kernels call `reduce_columns`, `reduce_values`, `for_columns` and
/// `for_values`; `reduce(op, f)` combines one partial per lane. With one lane this is the
/// production CPU path; with 7, 32 or 256 lanes the tests execute the exact partitioning,
/// tails and reduction tree that the CUDA warp and block teams execute.
class host_team {
 public:
  /// @brief Largest simulated team (a CUDA block's limit).
  static constexpr int max_lanes = 1024;

  /// @brief A team of `lanes` lanes (1 <= lanes <= max_lanes) owning chunks of `chunk` columns, with optional scratch.
  explicit host_team(int lanes = 1, int chunk = 1, void* scratch = nullptr, index_t scratch_bytes = 0)
      : lanes_(lanes), chunk_(chunk), scratch_(scratch), scratch_bytes_(scratch_bytes) {}

  /// @brief Number of lanes.
  BEVKD_HOST_DEVICE int size() const { return lanes_; }

  /// @brief Consecutive columns a lane owns before the next lane's share starts (see for_lane_columns).
  BEVKD_HOST_DEVICE int chunk() const { return chunk_; }

  /// @brief True for the production team, one lane of single columns (what the CPU backend runs; other sizes simulate
  /// the CUDA teams' partitioning in tests).
  BEVKD_HOST_DEVICE bool single() const { return lanes_ == 1 && chunk_ == 1; }

  /// @brief True for the lane that performs the row's single writes (the host runs them once).
  BEVKD_HOST_DEVICE bool leader() const { return true; }

  /// @brief Per-row scratch of n accumulators, or null when the team has none (kernels then recompute).
  template <class Acc>
  BEVKD_HOST_DEVICE Acc* scratch(index_t n) const {
    return n * static_cast<index_t>(sizeof(Acc)) <= scratch_bytes_ ? static_cast<Acc*>(scratch_) : nullptr;
  }

  /// @brief Reduces f(c) over the n columns of a row: each lane folds its own columns (see for_lane_columns), then
  /// the lanes meet in reduce()'s tree. A team of one folds into 16 independent partial accumulators instead, combined
  /// pairwise: a fixed order (so results stay deterministic) that the compiler can turn into SIMD code.
  template <class Op, class V, class F>
  BEVKD_HOST_DEVICE V reduce_columns(Op op, V init, index_t n, F&& f) const {
    if (single()) return fold_simd(op, init, n, f);
    return reduce(op, [&](int lane) {
      V partial = init;
      detail::for_lane_columns(lane, lanes_, chunk_, n, [&](index_t c) { partial = op(partial, f(c)); });
      return partial;
    });
  }

  /// @brief reduce_columns over a loss row (or a row held as the device holds it) with the student and teacher
  /// values loaded: f(c, s_c, t_c).
  template <class Op, class V, class Row, class F>
  BEVKD_HOST_DEVICE V reduce_values(Op op, V init, const Row& row, F&& f) const {
    if constexpr (detail::is_loss_row<Row>::value) {
      if (single())
        return reduce_columns(op, init, row.n, [&](index_t c) {
          return f(c, load_as_accum(row.student[c]), load_as_accum(row.teacher[c]));
        });
    }
    return reduce(op, [&](int lane) {
      V partial = init;
      detail::for_lane_values(lane, lanes_, chunk_, row, [&](index_t c, auto s, auto t) { partial = op(partial, f(c, s, t)); });
      return partial;
    });
  }

  /// @brief Runs f(c) once for every column of a row (each lane its own columns).
  template <class F>
  BEVKD_HOST_DEVICE BEVKD_FLATTEN void for_columns(index_t n, F&& f) const {
    if (single()) {
      detail::for_row_partials(n, [&f](index_t c, int) BEVKD_INLINE_LAMBDA { f(c); });
      return;
    }
    for (int lane = 0; lane < lanes_; ++lane) detail::for_lane_columns(lane, lanes_, chunk_, n, f);
  }

  /// @brief for_columns over a loss row (or a held row) with the student and teacher values loaded: f(c, s_c, t_c).
  template <class Row, class F>
  BEVKD_HOST_DEVICE void for_values(const Row& row, F&& f) const {
    if constexpr (detail::is_loss_row<Row>::value) {
      if (single())
        return for_columns(row.n, [&](index_t c) { f(c, load_as_accum(row.student[c]), load_as_accum(row.teacher[c])); });
    }
    for (int lane = 0; lane < lanes_; ++lane) detail::for_lane_values(lane, lanes_, chunk_, row, f);
  }

  /// @brief Writes (accumulate: adds) f(c, s_c, t_c), column c's gradient, over every column (each lane its own, in
  /// the chunks and order of the device's vector stores).
  template <class Row, class F>
  BEVKD_HOST_DEVICE void write_grads(const Row& row, bool accumulate, F&& f) const {
    if constexpr (detail::is_loss_row<Row>::value) {
      if (single()) {
        // Values, f too: a gradient store could alias what a reference capture reaches (f's own captured scalars
        // included), and GCC would then reload them after every store instead of vectorising the loop.
        return for_columns(row.n, [student = row.student, teacher = row.teacher, grad = row.grad, accumulate,
                                   f](index_t c) {
          detail::write_grad(grad[c], f(c, load_as_accum(student[c]), load_as_accum(teacher[c])), accumulate);
        });
      }
    }
    for (int lane = 0; lane < lanes_; ++lane) detail::for_lane_grads(lane, lanes_, chunk_, row, accumulate, f);
  }

  /// @brief write_grads and a reduction in one pass: f(c, s_c, t_c) returns detail::graded{gradient, term}.
  template <class Op, class V, class Row, class F>
  BEVKD_HOST_DEVICE V reduce_grads(Op op, V init, const Row& row, bool accumulate, F&& f) const {
    if constexpr (detail::is_loss_row<Row>::value) {
      if (single()) {
        // One closure holding everything by value (see write_grads): a closure that refers to another one left GCC
        // reloading the captured scalars after every gradient store (normalised MSE 15 % slower, measured).
        return reduce_columns(op, init, row.n, [student = row.student, teacher = row.teacher, grad = row.grad, accumulate,
                                                f](index_t c) {
          const auto out = f(c, load_as_accum(student[c]), load_as_accum(teacher[c]));
          detail::write_grad(grad[c], out.grad, accumulate);
          return out.value;
        });
      }
    }
    return reduce(op, [&](int lane) {
      V partial = init;
      detail::for_lane_grads(lane, lanes_, chunk_, row, accumulate, detail::folding_terms(op, partial, f));
      return partial;
    });
  }

  /// @brief f(row) on the host's production team (one lane); a simulated team of up to 32 lanes holds the row where a
  /// device warp team would (see column_ops::hold_row), each lane loading its held_row in each pass.
  template <class T, bool Unit, class F>
  BEVKD_HOST_DEVICE auto hold_row(const detail::loss_row<T, Unit>& row, F&& f) const -> decltype(f(row)) {
    if constexpr (Unit && detail::held_row_chunks > 0) {
      if (lanes_ <= warp_lanes && detail::row_fits_held<T, detail::held_row_chunks>(lanes_, chunk_, row.n))
        return f(detail::lane_held_row<T, detail::held_row_chunks>{row, row.grad, row.n});
    }
    return f(row);
  }

  /// @brief Reduces f(lane) over the lanes with `op`, in the tree order of the CUDA teams; every lane gets the result.
  ///
  /// Order: within each group of 32 lanes a pairwise tree (offsets 1, 2, 4, ...: what
  /// CUB's shuffle-based WarpReduce computes), then the group results left to right
  /// (what CUB's BlockReduce with warp reductions computes).
  template <class Op, class F>
  BEVKD_HOST_DEVICE auto reduce(Op op, F&& f) const -> decltype(f(0)) {
    using value_type = decltype(f(0));
    value_type total = f(0);
    if (lanes_ == 1) return total;
    for (int first = 0; first < lanes_; first += warp_lanes) {
      const int count = lanes_ - first < warp_lanes ? lanes_ - first : warp_lanes;
      value_type partial[warp_lanes] = {};
      partial[0] = first == 0 ? total : f(first);
      for (int lane = 1; lane < count; ++lane) partial[lane] = f(first + lane);
      for (int offset = 1; offset < count; offset *= 2)
        for (int lane = 0; lane + offset < count; lane += 2 * offset)
          partial[lane] = op(partial[lane], partial[lane + offset]);
      total = first == 0 ? partial[0] : op(total, partial[0]);
    }
    return total;
  }

 private:
  // 16 partial accumulators, column c into partial c % 16, then a pairwise tree. Arrays of
  // accumulators are kept component-major so that each component's 16 partials form one vector.
  // The row's tail is folded in blocks of 8, 4, then singly, so that short rows (10 classes,
  // 32 keys + tails) stay mostly vectorised too; the partial a column lands in is the same.
  static constexpr int simd_partials = 16;

  template <class Op, class V, class F>
  BEVKD_HOST_DEVICE BEVKD_FLATTEN static V fold_simd(Op op, V init, index_t n, F& f) {
    if constexpr (is_acc_array<V>::value) {
      return fold_simd_components(op, init, n, f);
    } else {
      acc_array<V, 1> wrapped;
      wrapped[0] = init;
      auto as_array = [&f](index_t c) {
        acc_array<V, 1> v;
        v[0] = f(c);
        return v;
      };
      return fold_simd_components(op, wrapped, n, as_array)[0];
    }
  }

  // Folds columns [c, c + Width) into partials [first, first + Width).
  template <int Width, class Op, class Acc, int N, class F>
  BEVKD_FORCEINLINE static void fold_block(Op op, Acc (&partial)[N][simd_partials], int first, index_t c, F& f) {
    BEVKD_IVDEP  // f(c) writes only column c's gradient or scratch
    for (int l = 0; l < Width; ++l) {
      const acc_array<Acc, N> v = f(c + l);
      BEVKD_UNROLL
      for (int i = 0; i < N; ++i) partial[i][first + l] = op(partial[i][first + l], v[i]);
    }
  }

  template <class Op, class Acc, int N, class F>
  BEVKD_HOST_DEVICE BEVKD_FLATTEN static acc_array<Acc, N> fold_simd_components(Op op, const acc_array<Acc, N>& init,
                                                                               index_t n, F& f) {
    Acc partial[N][simd_partials];
    for (int i = 0; i < N; ++i)
      for (int l = 0; l < simd_partials; ++l) partial[i][l] = init[i];
    index_t c = 0;
    for (; c + simd_partials <= n; c += simd_partials) fold_block<simd_partials>(op, partial, 0, c, f);
    int first = 0;
    if (n - c >= 8) {
      fold_block<8>(op, partial, first, c, f);
      c += 8;
      first += 8;
    }
    if (n - c >= 4) {
      fold_block<4>(op, partial, first, c, f);
      c += 4;
      first += 4;
    }
    for (; c < n; ++c, ++first) fold_block<1>(op, partial, first, c, f);
    // Pairwise tree; partials no column reached still hold `init`, an identity of op, so a short
    // row combines only the ones it used (the same pairs, minus those with an untouched side).
    const int used = n < simd_partials ? static_cast<int>(n) : simd_partials;
    acc_array<Acc, N> out;
    for (int i = 0; i < N; ++i) {
      for (int width = simd_partials / 2; width > 0; width /= 2) {
        if (used == simd_partials) {  // the full tree: straight loops that vectorise
          for (int l = 0; l < width; ++l) partial[i][l] = op(partial[i][l], partial[i][l + width]);
        } else {
          for (int l = 0; l < width && l + width < used; ++l) partial[i][l] = op(partial[i][l], partial[i][l + width]);
        }
      }
      out[i] = partial[i][0];
    }
    return out;
  }

  int lanes_;
  int chunk_;
  void* scratch_;
  index_t scratch_bytes_;
};

}  // namespace bevkd
