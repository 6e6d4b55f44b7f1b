// bevkd CUDA teams: a thread, a group of a warp's lanes or a block runs one row, reducing with CUB's warp and
// block primitives.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/util_ptx.cuh>
#include <cub/warp/warp_reduce.cuh>

#include "config.hpp"
#include "detail/lanes.hpp"
#include "team.hpp"

namespace bevkd {
namespace detail {

/// @brief Blocks of every bevkd row kernel have this many threads.
constexpr int cuda_block_threads = 256;

/// @brief The column-level operations every CUDA team offers, from its lane, size, chunk and reduce (CRTP).
template <class Team>
struct column_ops {
  /// @brief Reduces f(c) over a row's n columns: each lane folds its own columns, then the team reduces.
  template <class Op, class V, class F>
  BEVKD_DEVICE V reduce_columns(Op op, V init, index_t n, F&& f) const {
    const Team& team = static_cast<const Team&>(*this);
    V partial = init;
    for_lane_columns(team.lane(), team.size(), team.chunk(), n, [&](index_t c) { partial = op(partial, f(c)); });
    return team.reduce(op, [&](int) { return partial; });
  }
  /// @brief reduce_columns with the student and teacher values loaded (16-byte vector loads when the chunk allows),
  /// from a loss_row or a held_row.
  template <class Op, class V, class Row, class F>
  BEVKD_DEVICE V reduce_values(Op op, V init, const Row& row, F&& f) const {
    const Team& team = static_cast<const Team&>(*this);
    V partial = init;
    for_lane_values(team.lane(), team.size(), team.chunk(), row,
                    [&](index_t c, auto s, auto t) { partial = op(partial, f(c, s, t)); });
    return team.reduce(op, [&](int) { return partial; });
  }
  /// @brief Runs f(c) for this lane's columns.
  template <class F>
  BEVKD_DEVICE void for_columns(index_t n, F&& f) const {
    const Team& team = static_cast<const Team&>(*this);
    for_lane_columns(team.lane(), team.size(), team.chunk(), n, f);
  }
  /// @brief for_columns with the student and teacher values loaded.
  template <class Row, class F>
  BEVKD_DEVICE void for_values(const Row& row, F&& f) const {
    const Team& team = static_cast<const Team&>(*this);
    for_lane_values(team.lane(), team.size(), team.chunk(), row, f);
  }
  /// @brief Writes (accumulate: adds) the gradient f(c, s_c, t_c) of this lane's columns (16-byte vector stores when
  /// the chunk allows).
  template <class Row, class F>
  BEVKD_DEVICE void write_grads(const Row& row, bool accumulate, F&& f) const {
    const Team& team = static_cast<const Team&>(*this);
    for_lane_grads(team.lane(), team.size(), team.chunk(), row, accumulate, f);
  }
  /// @brief write_grads and a reduction in one pass: f(c, s_c, t_c) returns graded{gradient, term}.
  template <class Op, class V, class Row, class F>
  BEVKD_DEVICE V reduce_grads(Op op, V init, const Row& row, bool accumulate, F&& f) const {
    const Team& team = static_cast<const Team&>(*this);
    V partial = init;
    for_lane_grads(team.lane(), team.size(), team.chunk(), row, accumulate, folding_terms(op, partial, f));
    return team.reduce(op, [&](int) { return partial; });
  }
  /// @brief f(row as this lane holds it) when the team holds rows and the row fits (see row_fits_held), else f(row):
  /// later passes over a held row read registers, not memory.
  template <class T, bool Unit, class F>
  BEVKD_DEVICE auto hold_row(const loss_row<T, Unit>& row, F&& f) const -> decltype(f(row)) {
    const Team& team = static_cast<const Team&>(*this);
    if constexpr (Unit && Team::holds_rows && held_row_chunks > 0) {
      if (row_fits_held<T, held_row_chunks>(team.size(), team.chunk(), row.n))
        return f(held_row<T, held_row_chunks>(team.lane(), team.size(), row));
    }
    return f(row);
  }
};

/// @brief One thread per row (rows whose columns are strided: consecutive threads read consecutive pillars).
struct thread_team : column_ops<thread_team> {
  /// @brief Rows processed side by side in one block.
  static constexpr int teams_per_block = cuda_block_threads;
  /// @brief Rows each team runs by default (one launch's choice, never the device's: partial sums stay fixed).
  static constexpr int rows_per_team = 1;
  /// @brief False: a thread's strided row is read in single columns (see column_ops::hold_row).
  static constexpr bool holds_rows = false;
  /// @brief Built from the thread's index (its lane is always 0).
  BEVKD_DEVICE thread_team(int, int) {}
  /// @brief Lane 0.
  BEVKD_DEVICE int lane() const { return 0; }
  /// @brief One lane.
  BEVKD_DEVICE int size() const { return 1; }
  /// @brief Lane-strided columns.
  BEVKD_DEVICE int chunk() const { return 1; }
  /// @brief The thread is its own leader.
  BEVKD_DEVICE bool leader() const { return true; }
  /// @brief No scratch on the device: kernels recompute.
  template <class Acc>
  BEVKD_DEVICE Acc* scratch(index_t) const {
    return nullptr;
  }
  /// @brief f(0): nothing to reduce.
  template <class Op, class F>
  BEVKD_DEVICE auto reduce(Op, F&& f) const -> decltype(f(0)) {
    return f(0);
  }
};

/// @brief Lane index, chunk width and the accessors shared by the warp and block teams.
template <class Team>
struct lane_team : column_ops<Team> {
  int lane_;   ///< Lane within the team.
  int chunk_;  ///< Columns per lane chunk: 1, or one 16-byte vector for aligned unit-stride rows.
  /// @brief Built from the lane and the launch's chunk width.
  BEVKD_DEVICE lane_team(int lane, int chunk) : lane_(lane), chunk_(chunk) {}
  /// @brief This thread's lane.
  BEVKD_DEVICE int lane() const { return lane_; }
  /// @brief Columns per lane chunk.
  BEVKD_DEVICE int chunk() const { return chunk_; }
  /// @brief Lane 0 performs single writes.
  BEVKD_DEVICE bool leader() const { return lane_ == 0; }
  /// @brief No scratch on the device: kernels recompute (keeping exponentials in shared memory was measured slower:
  /// the kernels that carry both paths need more registers, and fewer blocks fit; bench/RESULTS.md).
  template <class Acc>
  BEVKD_DEVICE Acc* scratch(index_t) const {
    return nullptr;
  }
};

/// @brief A group of Width lanes of one warp per row (Width a power of two, 2 to 32); reductions with cub::WarpReduce
/// over a logical warp of Width lanes, the result broadcast from the group's lane 0.
///
/// Narrow groups keep short rows from idling most of a warp: a warp runs 32 / Width rows side by
/// side, and each reduction takes log2(Width) shuffle steps (the host team of Width lanes reduces
/// in the same pairwise tree).
template <int Width = warp_lanes>
struct warp_team : lane_team<warp_team<Width>> {
  static_assert(Width >= 2 && Width <= warp_lanes && (Width & (Width - 1)) == 0,
                "a warp team is a power-of-two group of 2 to 32 lanes");
  /// @brief Rows processed side by side in one block.
  static constexpr int teams_per_block = cuda_block_threads / Width;
  /// @brief Rows each team runs by default: two (a sweep of 1, 2, 4 and 8 on an H200: 1 or 2 fastest for the response
  /// KL, 4 for the TSA attention by 3 %; more blocks of fewer rows leave a shorter last wave).
  static constexpr int rows_per_team = 2;
  /// @brief True: short rows are held in registers between passes (see column_ops::hold_row).
  static constexpr bool holds_rows = true;
  /// @brief Built from the thread's index in the block and the launch's chunk width.
  BEVKD_DEVICE warp_team(int thread, int chunk) : lane_team<warp_team>(thread % Width, chunk) {}
  /// @brief Width lanes.
  BEVKD_DEVICE int size() const { return Width; }
  /// @brief Reduction of f(lane) over the group; every lane of the group returns the result.
  template <class Op, class F>
  BEVKD_DEVICE auto reduce(Op op, F&& f) const -> decltype(f(0)) {
    using value_type = decltype(f(0));
    using warp_reduce = cub::WarpReduce<value_type, Width>;
    __shared__ typename warp_reduce::TempStorage storage[teams_per_block];
    const value_type partial = f(this->lane_);
    const value_type total = warp_reduce(storage[threadIdx.x / Width]).Reduce(partial, op);
    return cub::ShuffleIndex<Width>(total, 0, group_mask());
  }

 private:
  // The group's lanes only: other groups of the warp may be on another row, or done.
  BEVKD_DEVICE static unsigned group_mask() {
    return Width == warp_lanes ? 0xffffffffu : ((1u << Width) - 1u) << (threadIdx.x % warp_lanes / Width * Width);
  }
};

/// @brief A whole block per row (long rows: the spatial KL over P pillars); reductions with cub::BlockReduce.
struct block_team : lane_team<block_team> {
  /// @brief One row at a time per block.
  static constexpr int teams_per_block = 1;
  /// @brief Rows the team runs by default.
  static constexpr int rows_per_team = 1;
  /// @brief False: block rows are long, and their passes read memory (see column_ops::hold_row).
  static constexpr bool holds_rows = false;
  /// @brief Built from the thread's index in the block and the launch's chunk width.
  BEVKD_DEVICE block_team(int thread, int chunk) : lane_team<block_team>(thread, chunk) {}
  /// @brief 256 lanes.
  BEVKD_DEVICE int size() const { return cuda_block_threads; }
  /// @brief Block-wide reduction of f(lane); every thread returns the result.
  template <class Op, class F>
  BEVKD_DEVICE auto reduce(Op op, F&& f) const -> decltype(f(0)) {
    using value_type = decltype(f(0));
    using block_reduce = cub::BlockReduce<value_type, cuda_block_threads>;
    __shared__ typename block_reduce::TempStorage storage;
    __shared__ value_type result;
    const value_type total = block_reduce(storage).Reduce(f(this->lane_), op);
    if (this->lane_ == 0) result = total;
    __syncthreads();
    const value_type out = result;
    __syncthreads();  // storage and result are reused by the next reduction
    return out;
  }
};

}  // namespace detail
}  // namespace bevkd
