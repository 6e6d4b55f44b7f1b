// bevkd internal: a loss problem over the rows of [R0, R1, N] strided tensors, and its host-side validation.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <type_traits>

#include "../config.hpp"
#include "../dtype.hpp"
#include "../error.hpp"
#include "../host_backend.hpp"
#include "../reduction.hpp"
#include "../view.hpp"
#include "avx512.hpp"
#include "lanes.hpp"
#include "row_driver.hpp"

namespace bevkd {

/// @brief Optional per-row inputs and outputs of a loss call, over the row grid [R0, R1] (a null view is absent).
///
/// For BEV losses the rows are pillars, [B, P]; in the spatial (channel-wise) KL mode
/// they are channels, [B, C]. Values are in the accumulation type: float for
/// float/half/bfloat16 tensors, double for double tensors.
template <class Acc>
struct row_io {
  row_view<const Acc> weights{};   ///< Per-row weights w >= 0 (foreground masks, teacher confidence).
  row_view<const Acc> upstream{};  ///< reduction::none only: per-row upstream gradient u_r.
  row_view<Acc> row_loss{};        ///< reduction::none only: receives loss_weight * w_r * l_r.
};

namespace detail {

/// @brief Makes a parameter a non-deduced context (so views of T convert to views of const T).
template <class T>
struct identity {
  using type = T;  ///< T itself.
};
/// @brief Non-deduced alias of T.
template <class T>
using identity_t = typename identity<T>::type;

/// @brief Rows (i0, i1) of student, teacher and gradient tensors [R0, R1, N]; Unit when every column stride is 1.
template <class T, bool Unit>
struct row_problem {
  using value_type = T;                      ///< Element type.
  using acc_type = accum_t<T>;               ///< Accumulation type.
  static constexpr bool unit_stride = Unit;  ///< Every column stride is 1.
  strided_view<const T, 3> student;  ///< Student input.
  strided_view<const T, 3> teacher;  ///< Teacher input.
  strided_view<T, 3> grad;           ///< Gradient w.r.t. the student.
  row_weighting<acc_type> rows;      ///< Per-row weights and outputs.

  /// @brief Number of rows R0 * R1.
  BEVKD_HOST_DEVICE index_t row_count() const { return student.extent[0] * student.extent[1]; }
  /// @brief Columns per row.
  BEVKD_HOST_DEVICE index_t columns() const { return student.extent[2]; }

  /// @brief The three row references of row r.
  BEVKD_HOST_DEVICE loss_row<T, Unit> row(index_t r) const { return row_at(r / student.extent[1], r % student.extent[1]); }

  /// @brief The row references of rows [first, first + count) into out (one division for all of them; within an
  /// i0, each row the one before stepped by stride[1], not row_at's multiplies).
  void row_range(index_t first, int count, loss_row<T, Unit>* out) const {
    index_t i0 = first / student.extent[1], i1 = first % student.extent[1];
    // The three pointers as scalars, each row built from them field by field: copying a whole row
    // kept in memory (or out[l - 1]) stalls on store forwarding, and GCC sometimes kept a row-typed
    // local on the stack (measured: the C = 10 softmax KL 70 % slower in one build).
    const T* s = nullptr;
    const T* t = nullptr;
    T* g = nullptr;
    for (int l = 0; l < count; ++l) {
      if (l > 0 && i1 > 0) {
        s += student.stride[1];
        t += teacher.stride[1];
        g += grad.stride[1];
      } else {
        s = student.data + student.offset(i0, i1, 0);
        t = teacher.data + teacher.offset(i0, i1, 0);
        g = grad.data + grad.offset(i0, i1, 0);
      }
      out[l].student = {s, student.stride[2]};
      out[l].teacher = {t, teacher.stride[2]};
      out[l].grad = {g, grad.stride[2]};
      out[l].n = student.extent[2];
      if (++i1 == student.extent[1]) {
        i1 = 0;
        ++i0;
      }
    }
  }

  /// @brief When rows [first, first + count) lie at equal distances in each of the three tensors (all in one i0, or
  /// every tensor contiguous across i0: stride[0] = extent[1] stride[1]): row `first` into row0, the distances into
  /// step (student, teacher, gradient) and true; else false.
  bool even_spacing(index_t first, int count, loss_row<T, Unit>& row0, index_t (&step)[3]) const {
    const index_t i0 = first / student.extent[1], i1 = first % student.extent[1];
    const bool one_i0 = count <= 1 || i1 + count <= student.extent[1];
    const auto across = [&](const auto& view) { return view.stride[0] == view.extent[1] * view.stride[1]; };
    if (!one_i0 && !(across(student) && across(teacher) && across(grad))) return false;
    row0 = row_at(i0, i1);
    step[0] = student.stride[1];
    step[1] = teacher.stride[1];
    step[2] = grad.stride[1];
    return true;
  }

  /// @brief The three row references of row (i0, i1).
  BEVKD_HOST_DEVICE loss_row<T, Unit> row_at(index_t i0, index_t i1) const {
    return loss_row<T, Unit>{{student.data + student.offset(i0, i1, 0), student.stride[2]},
                             {teacher.data + teacher.offset(i0, i1, 0), teacher.stride[2]},
                             {grad.data + grad.offset(i0, i1, 0), grad.stride[2]},
                             student.extent[2]};
  }

  /// @brief True when every row of student, teacher and gradient starts on a 16-byte boundary (enables the device's
  /// vector loads and stores).
  bool vector_aligned() const {
    return Unit && rows_vector_aligned(student.data, student.stride) &&
           rows_vector_aligned(teacher.data, teacher.stride) && rows_vector_aligned(grad.data, grad.stride);
  }

  /// @brief Writes zeros over row r's gradient.
  template <class Team>
  BEVKD_HOST_DEVICE void zero_grad(const Team& team, index_t r) const {
    const loss_row<T, Unit> x = row(r);
    team.for_columns(x.n, [&](index_t c) { x.grad[c] = store_from_accum<T>(acc_type(0)); });
  }
};

/// @brief Calls f(std::integral_constant<bool, b>{}) so a runtime flag picks a compile-time variant.
template <class F>
decltype(auto) dispatch_bool(bool b, F&& f) {
  if (b) return f(std::true_type{});
  return f(std::false_type{});
}

/// @brief True when every column (dimension 2) stride is 1, so the unit-stride kernels apply.
template <class T>
bool unit_columns(const strided_view<const T, 3>& s, const strided_view<const T, 3>& t, const strided_view<T, 3>& g) {
  return s.stride[2] == 1 && t.stride[2] == 1 && g.stride[2] == 1;
}

/// @brief True when neighbouring rows (dimension 1) are adjacent in memory in all three tensors (stride 1: NCHW pillars
/// in softmax mode, NHWC channels in spatial mode), so that host row blocks and lane groups read them in place.
template <class T>
bool rows_side_by_side(const strided_view<const T, 3>& s, const strided_view<const T, 3>& t,
                       const strided_view<T, 3>& g) {
  return s.stride[1] == 1 && t.stride[1] == 1 && g.stride[1] == 1;
}

/// @brief Copies the 16 x 16 blocks of one tile of copy_tiles that is a transpose (src contiguous along the outer
/// dimension, dst along the inner): sixteen vector loads, an in-register transpose and sixteen vector stores per block
/// instead of 256 single elements. `at` holds the tile's first indices; returns the outer index from which the
/// element loop copies the rest (all of the tile without AVX-512, for other types, or when the tile is no transpose).
template <class T>
index_t copy_transposed_blocks(const strided_view<const T, 3>& src, const strided_view<T, 3>& dst, const index_t (&at)[3],
                               int inner, int outer, index_t count, index_t outer_end) {
#if defined(BEVKD_HOST_AVX512)
  if constexpr (std::is_same<T, float>::value) {
    if (src.stride[outer] != 1 || dst.stride[inner] != 1) return at[outer];
    const float* from = &src(at[0], at[1], at[2]);  // (o, i) at from + o + i src_step
    float* to = &dst(at[0], at[1], at[2]);          // (o, i) at to + o dst_step + i
    const index_t src_step = src.stride[inner], dst_step = dst.stride[outer], rows = outer_end - at[outer];
    index_t o = 0;
    for (; o + 16 <= rows; o += 16) {
      index_t i = 0;
      for (; i + 16 <= count; i += 16) {
        __m512 v[16];
        for (int r = 0; r < 16; ++r) v[r] = _mm512_loadu_ps(from + (i + r) * src_step + o);
        avx512::transpose16(v);
        for (int j = 0; j < 16; ++j) _mm512_storeu_ps(to + (o + j) * dst_step + i, v[j]);
      }
      for (; i < count; ++i)
        for (int j = 0; j < 16; ++j) to[(o + j) * dst_step + i] = from[i * src_step + o + j];
    }
    return at[outer] + o;
  }
#endif
  (void)src, (void)dst, (void)inner, (void)count, (void)outer_end;
  return at[outer];
}

/// @brief Copies a [R0, R1, N] view into one of the same extents in 64 x 256 tiles of (R1, N), so that both sides'
/// cache lines are reused whatever their strides (host_exec's parallel_for runs the tiles); fp32 tiles that transpose
/// (NHWC to NCHW and back) go through AVX-512 16 x 16 blocks where the build targets it.
template <class T>
void copy_tiles(host_exec& exec, const strided_view<const T, 3>& src, const strided_view<T, 3>& dst) {
  // Tiles of 64 x 256 (dimensions 1 and 2): a transposing copy then reads or writes whole runs of
  // 256 pillars (the spatial KL at C = 64 9.6 -> 8.4-8.7 ms on one thread against 64 x 64 tiles).
  constexpr index_t tile[3] = {1, 64, 256};
  const index_t tiles_1 = (src.extent[1] + tile[1] - 1) / tile[1], tiles_2 = (src.extent[2] + tile[2] - 1) / tile[2];
  // The inner loop writes along the destination's shorter stride: sequential stores (measured on
  // [2, 40000, 256] NHWC -> NCHW: half the time of sequential loads with scattered stores).
  const int inner = dst.stride[1] < dst.stride[2] ? 1 : 2, outer = 3 - inner;
  exec.parallel_for(src.extent[0] * tiles_1 * tiles_2, [&](index_t k) {
    index_t first[3] = {k / (tiles_1 * tiles_2), (k / tiles_2) % tiles_1 * tile[1], k % tiles_2 * tile[2]};
    const index_t outer_end = std::min(first[outer] + tile[outer], src.extent[outer]);
    const index_t count = std::min(first[inner] + tile[inner], src.extent[inner]) - first[inner];
    const index_t src_step = src.stride[inner], dst_step = dst.stride[inner];
    first[outer] = copy_transposed_blocks(src, dst, first, inner, outer, count, outer_end);
    for (index_t& o = first[outer]; o < outer_end; ++o) {
      const T* from = &src(first[0], first[1], first[2]);
      T* to = &dst(first[0], first[1], first[2]);
      for (index_t i = 0; i < count; ++i) to[i * dst_step] = from[i * src_step];
    }
  }, tile[1] * tile[2]);
}

/// @brief Calls run(unit, student, teacher, grad) with `unit` a std::bool_constant saying whether every column
/// stride is 1; on the host (see host_exec::stage_strided_rows), strided rows are first copied into contiguous
/// buffers and the gradient copied back after the run (gathered first when accumulating), so the unit-stride
/// kernels read them. Not when `in_place` says the problem's host blocks read side-by-side rows in place and they are
/// (rows_side_by_side): a row block or lane group then reads sixteen rows' columns, already in lane layout.
template <class Exec, class T, class Run>
auto run_on_rows(Exec& exec, const strided_view<const T, 3>& student, const strided_view<const T, 3>& teacher,
                 const strided_view<T, 3>& grad, bool accumulate, bool in_place, Run&& run) {
  if (unit_columns(student, teacher, grad)) return run(std::true_type{}, student, teacher, grad);
  if constexpr (std::is_same<Exec, host_exec>::value) {
    const bool blocks_in_place = in_place && exec.runs_row_blocks() && rows_side_by_side(student, teacher, grad);
    if (exec.stages_strided_rows() && !blocks_in_place) {
      const std::array<index_t, 3> extent{student.extent[0], student.extent[1], student.extent[2]};
      const auto staged = [&](int slot) {
        return contiguous_view<T, 3>(exec.template staging<T>(slot, student.size()), extent);
      };
      const strided_view<T, 3> s = staged(0), t = staged(1), g = staged(2);
      copy_tiles(exec, student, s);
      copy_tiles(exec, teacher, t);
      if (accumulate) copy_tiles<T>(exec, grad, g);
      auto result = run(std::true_type{}, strided_view<const T, 3>(s), strided_view<const T, 3>(t), g);
      copy_tiles<T>(exec, g, grad);  // only once the run succeeded: a throwing call leaves grad untouched
      return result;
    }
  } else {
    (void)in_place;
  }
  return run(std::false_type{}, student, teacher, grad);
}

/// @brief Checks a scalar option is finite (and positive when asked); throws naming it.
inline void require_finite(double value, const std::string& name, bool positive = false) {
  require(std::isfinite(value), name, "must be finite, got ", value);
  if (positive) require(value > 0, name, "must be > 0, got ", value);
}

/// @brief Checks one optional per-row view: absent, or a valid [R0, R1] view; throws naming it.
template <class V>
void validate_row_view(const V& v, const char* name, index_t r0, index_t r1, const char* const dim_names[3]) {
  if (!v.data && v.size() == 0) return;
  validate_view(v, name);
  require(v.data != nullptr, argument_member{name, "data"}, "is null");
  require_extent(v, 0, r0, name, dim_names[0], " of the student");
  require_extent(v, 1, r1, name, dim_names[1], " of the student");
}

/// @brief Validates student/teacher/grad [R0, R1, N] views and the row inputs of one loss call; throws on the first problem.
template <class T, class Acc>
void validate_rows_call(const strided_view<const T, 3>& student, const strided_view<const T, 3>& teacher,
                        const strided_view<T, 3>& grad, const row_io<Acc>& io, reduction red,
                        const char* const dim_names[3]) {
  validate_view(student, "student");
  validate_view(teacher, "teacher");
  validate_view(grad, "grad");
  for (int d = 0; d < 3; ++d) {
    require_extent(teacher, d, student.extent[d], "teacher", dim_names[d], " of the student");
    require_extent(grad, d, student.extent[d], "grad", dim_names[d], " of the student");
  }
  require(student.extent[2] >= 1, "student.extent[2]", "(", dim_names[2], ") must be >= 1, got ", student.extent[2]);
  require_no_self_overlap(grad, "grad");
  require(!ranges_overlap(grad, student), "grad", "aliases student: the gradient buffer must not overlap an input");
  require(!ranges_overlap(grad, teacher), "grad", "aliases teacher: the gradient buffer must not overlap an input");
  validate_row_view(io.weights, "weights", student.extent[0], student.extent[1], dim_names);
  validate_row_view(io.upstream, "upstream", student.extent[0], student.extent[1], dim_names);
  validate_row_view(io.row_loss, "row_loss", student.extent[0], student.extent[1], dim_names);
  require(red == reduction::none || !io.upstream.data, "upstream", "is only valid with reduction::none");
  require(red == reduction::none || !io.row_loss.data, "row_loss", "is only valid with reduction::none");
  if (io.row_loss.data) {
    require_no_self_overlap(io.row_loss, "row_loss");
    require(!ranges_overlap(io.row_loss, grad) && !ranges_overlap(io.row_loss, student) &&
                !ranges_overlap(io.row_loss, teacher),
            "row_loss", "overlaps another tensor of the call");
  }
}

/// @brief Copies row inputs into the device-copyable weighting the kernels read.
template <class Acc>
row_weighting<Acc> make_row_weighting(const row_io<Acc>& io, index_t inner) {
  return row_weighting<Acc>{io.weights, io.upstream, io.row_loss, inner};
}

}  // namespace detail
}  // namespace bevkd
