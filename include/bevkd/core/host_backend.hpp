// bevkd host backend: runs team-collective row kernels on the CPU (OpenMP over row chunks when available).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "config.hpp"
#include "detail/row_blocks.hpp"
#include "detail/row_driver.hpp"
#include "error.hpp"
#include "reduction.hpp"
#include "team.hpp"

namespace bevkd {
namespace detail {

/// @brief Most rows per deterministic partial sum.
constexpr index_t host_rows_per_chunk = 256;

/// @brief Elements a chunk of long rows aims at: enough work per chunk to pay for its scheduling.
constexpr index_t host_chunk_elements = 1 << 16;

/// @brief Rows per chunk for rows of `columns` elements: 256, fewer when rows are long.
///
/// A call with a few long rows (the spatial KL: B x C rows of P pillars) then still spreads
/// over the threads. A function of the shape alone, so the partition, and with it the
/// result, does not depend on the thread count.
inline index_t rows_per_chunk(index_t columns) {
  const index_t rows = host_chunk_elements / (columns > 1 ? columns : 1);
  return rows < 1 ? 1 : rows > host_rows_per_chunk ? host_rows_per_chunk : rows;
}

/// @brief Fewest row chunks for which a call opens an OpenMP parallel region.
constexpr index_t parallel_chunks = 8;

}  // namespace detail

/// @brief Executes bevkd calls on the CPU; owns the reusable scratch, so keep one per training loop.
///
/// Rows are split into fixed chunks (256 rows, fewer for rows of more than 256 elements,
/// see detail::rows_per_chunk); each chunk's weighted loss is summed in row order and the
/// chunk sums in chunk order, so results are bit-identical for any thread count. The
/// production team is one lane; tests set wider simulated teams.
class host_exec {
 public:
  /// @brief The value a loss call returns on this backend.
  using result_type = loss_result;

  /// @brief A host executor using `threads` OpenMP threads (0: OpenMP's default; ignored without OpenMP).
  explicit host_exec(int threads = 0) : threads_(threads) {
    detail::require(threads >= 0, "threads", "must be >= 0, got ", threads);
  }

  /// @brief Simulates a team of `lanes` lanes owning chunks of `chunk` columns, with or without row scratch (testing).
  host_exec& simulate_team(int lanes, int chunk = 1, bool scratch = true) {
    detail::require(lanes >= 1 && lanes <= host_team::max_lanes, "lanes", "must be in [1, ", host_team::max_lanes,
                    "], got ", lanes);
    detail::require(chunk >= 1, "chunk", "must be >= 1, got ", chunk);
    lanes_ = lanes;
    chunk_ = chunk;
    scratch_enabled_ = scratch;
    return *this;
  }

  /// @brief Whether loss calls copy rows with strided columns into contiguous buffers first (default on).
  ///
  /// Rows whose elements are strided (NCHW in softmax mode, NHWC in spatial mode) touch a
  /// cache line per element and per pass; staged, the row kernels read them like NHWC
  /// rows. Costs three tensors of buffer, kept between calls. Softmax rows that lie side by side
  /// (NCHW in softmax mode, NHWC in spatial mode) are not staged while row blocks are on (see
  /// run_row_blocks) but read in place: of up to 128 columns (float, half, bfloat16) by row
  /// blocks, longer fp32 ones on AVX-512 builds by lane groups.
  host_exec& stage_strided_rows(bool on) {
    stage_ = on;
    return *this;
  }

  /// @brief Whether rows run in row blocks of sixteen rows (default on): softmax rows of up to 1024 columns, the sigmoid
  /// KL's short rows and the feature MSE's (plain rows up to 1024 columns, normalised ones up to 128, read in place on
  /// AVX-512 builds; plain rows under 32 columns, read in place, in other builds).
  ///
  /// A block runs each pass over all sixteen rows before the next pass, so the rows' dependent
  /// chains overlap: rows shorter than 48 columns (or strided, up to 128) side by side in lane
  /// layout, one row per SIMD lane; longer unit-stride rows in place, each in 16 partial sums
  /// (masked joint attention rows too, as runs of their valid sources). On AVX-512 builds, longer
  /// fp32 softmax rows that lie side by side (the spatial KL's channels, NHWC) run sixteen at a
  /// time in "lane groups", one SIMD vector of the sixteen rows per column, read in place with the
  /// exponentials computed twice (no scratch for rows this long), up to eight groups together so
  /// that each pass sweeps memory in order. Off, every row runs
  /// through the per-row team kernel (as with a simulated team). Results of the two agree to
  /// rounding, not bitwise: they sum a row's columns in different orders. Either way they do
  /// not depend on the thread count.
  host_exec& run_row_blocks(bool on) {
    blocks_ = on;
    return *this;
  }

  /// @brief True when row blocks are used: switched on and the production team of one with its scratch (a team
  /// simulated without scratch, as the device's recomputing kernels run, keeps the per-row kernel).
  bool runs_row_blocks() const { return blocks_ && lanes_ == 1 && chunk_ == 1 && scratch_enabled_; }

  /// @brief True when strided rows are staged: switched on and the production team of one (simulated teams read in
  /// place, as the GPU does).
  bool stages_strided_rows() const { return stage_ && lanes_ == 1 && chunk_ == 1; }

  /// @brief Reusable buffer `slot` (0, 1 or 2) of at least `count` elements of T (library internal: row staging).
  template <class T>
  T* staging(int slot, index_t count) {
    staging_buffer& buffer = staging_[slot];
    const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(T);
    if (buffer.bytes < bytes) {  // grows only: steady training steps allocate nothing
      buffer.data.reset(new unsigned char[bytes]);
      buffer.bytes = bytes;
    }
    return reinterpret_cast<T*>(buffer.data.get());
  }

  /// @brief Number of threads a parallel region will use.
  int threads() const {
#if defined(_OPENMP)
    return threads_ > 0 ? threads_ : omp_get_max_threads();
#else
    return 1;
#endif
  }

  /// @brief Runs a validated loss problem over all its rows and reduces the result (library internal).
  template <class Problem>
  loss_result run_loss(const Problem& problem, const detail::loss_call& call) {
    using acc = typename Problem::acc_type;
    const index_t rows = problem.row_count();
    const double weight_sum = problem.rows.has_weights() ? sum_weights(problem) : static_cast<double>(rows);
    const double normaliser = detail::reduction_normaliser(call.red, weight_sum, static_cast<double>(call.batch));
    const auto scaling = detail::make_row_scaling<acc>(call.loss_weight, call.grad_scale, normaliser, call.accumulate);
    const double total = sum_row_losses(problem, scaling);
    return loss_result{detail::finish_loss(total, call.loss_weight, normaliser), call.loss_weight * total, weight_sum};
  }

  /// @brief Runs f(i) for i in [0, count) in parallel (deterministic work; library internal).
  /// @param elements_per_item About how many elements one f(i) touches (a tile of a copy: thousands), so that
  ///        a few large items still go parallel.
  template <class F>
  void parallel_for(index_t count, F&& f, index_t elements_per_item = 1) {
    const int nthreads = threads();
    const bool parallel = nthreads > 1 && count > 1 &&
                          count * elements_per_item >= detail::parallel_chunks * detail::host_rows_per_chunk;
    if (!parallel) {  // no parallel region at all (see sum_over_chunks)
      for (index_t i = 0; i < count; ++i) f(i);
      return;
    }
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(nthreads)
#endif
    for (index_t i = 0; i < count; ++i) f(i);
  }

 private:
  // Sum of w_r * l_r over all rows (each row's gradient written on the way): in row blocks where the problem has a
  // block kernel for rows this short, else row by row through the team kernel.
  template <class Problem, class Acc>
  double sum_row_losses(const Problem& problem, const detail::row_scaling<Acc>& scaling) {
    const index_t rows = problem.row_count();
    const index_t chunk_rows = detail::rows_per_chunk(problem.columns());
    if constexpr (detail::has_lane_groups<Problem>::value) {
      if (runs_row_blocks() && problem.lane_groups_apply()) return sum_lane_groups(problem, scaling);
    }
    if constexpr (detail::has_row_blocks<Problem>::value) {
      if (runs_row_blocks() && problem.blocks_apply()) {
        const index_t bytes = problem.block_scratch_bytes();
        const bool stream_call = detail::streams_grad(problem, scaling.accumulate);
        detail::block_terms<Acc> unit_terms;  // read-only once loaded: every chunk's full blocks share it
        const bool unit = detail::unit_rows(problem.rows);
        if (unit) unit_terms.load_unit(scaling);
        const auto run_chunk = [&](index_t first, index_t last, const host_team& team) {
          Acc* scratch = team.template scratch<Acc>(bytes / static_cast<index_t>(sizeof(Acc)));
          double partial = 0;
          detail::row_block_of<Problem> block;  // each block takes its rows from the one before's `next`
          block.stream_call = stream_call;
          for (index_t r = first; r < last; r += detail::block_rows) {
            const int count = static_cast<int>(last - r < detail::block_rows ? last - r : detail::block_rows);
            // The next block may be the next chunk's, prefetched all the same: stopping at each chunk's end left a
            // sixteenth of the blocks unprefetched (C = 64 KL, 80000 rows, one thread, Zen 4: 3.15 -> 3.08 ms).
            block.load(problem, r, count, rows);
            partial += detail::run_block(problem, block, scaling, scratch, unit ? &unit_terms : nullptr);
          }
          return partial;
        };
        return sum_over_chunks(rows, chunk_rows, bytes, run_chunk, 0, stream_call);
      }
    }
    const index_t scratch_bytes = scratch_enabled_ ? problem.scratch_bytes() : 0;
    return sum_over_chunks(rows, chunk_rows, scratch_bytes, [&](index_t first, index_t last, const host_team& team) {
      double partial = 0;
      for (index_t r = first; r < last; ++r) partial += static_cast<double>(detail::run_row(problem, team, r, scaling));
      return partial;
    });
  }

  // sum_row_losses over lane group sets (row_blocks.hpp), one chunk each: long rows side by side, read in place.
  template <class Problem, class Acc>
  double sum_lane_groups(const Problem& problem, const detail::row_scaling<Acc>& scaling) {
    using set_type = detail::lane_group_set<typename Problem::value_type>;
    const bool stream_call = detail::grad_streamable(problem, scaling.accumulate);
    const index_t groups = detail::lane_group<typename Problem::value_type>::groups_per_outer(problem);
    const index_t elements = set_type::set_size(groups) * detail::block_rows * problem.columns();
    return sum_over_chunks(set_type::count_in(problem), 1, 0, [&](index_t k, index_t, const host_team&) {
      set_type set;
      set.load(problem, k, stream_call);
      return detail::run_lane_group_set(problem, set, scaling);
    }, elements, stream_call);
  }

  // Sum of chunk_value(first, last, team) over the chunks [first, last) of chunk_rows rows, in chunk order: the
  // partition, and with it the result, does not depend on the thread count. `chunk_elements` (about how many elements
  // a chunk touches, when far more than a chunk of short rows) lets a few large chunks go parallel. `streamed`: the
  // chunks may write with non-temporal stores, fenced once by each thread after its last chunk.
  template <class ChunkValue>
  double sum_over_chunks(index_t rows, index_t chunk_rows, index_t scratch_bytes, ChunkValue&& chunk_value,
                         index_t chunk_elements = 0, bool streamed = false) {
    const index_t chunks = (rows + chunk_rows - 1) / chunk_rows;
    const int nthreads = threads();
    partials_.assign(static_cast<std::size_t>(chunks), 0.0);
    // Each thread's scratch starts on a page of its own (so on a cache line: the row blocks' vectors of exponentials
    // never straddle two lines; std::vector's storage here sat 16 bytes past one, measured about 1 % of a C = 64 KL),
    // and a page lies between two threads' scratch.
    //
    // Why the page between them: with the threads' scratch adjacent in one buffer, the C = 64 KL on two
    // threads ran about 4 % slower and far less steadily (measured, fp32, 80000 rows, Zen 4, seven
    // interleaved rounds: 1.54-1.67 ms against 1.49-1.57 with the gap), as if a core's prefetcher
    // pulled in the lines the other core was writing.
    constexpr index_t page = 4096;
    const index_t thread_bytes = scratch_bytes > 0 ? (scratch_bytes + page - 1) / page * page + page : 0;
    scratch_.resize(static_cast<std::size_t>(thread_bytes * nthreads + page) / sizeof(double) + 1);
    const auto base = reinterpret_cast<std::uintptr_t>(scratch_.data());
    double* scratch = reinterpret_cast<double*>((base + page - 1) & ~static_cast<std::uintptr_t>(page - 1));
    double* partials = partials_.data();
    const index_t scratch_doubles = thread_bytes / static_cast<index_t>(sizeof(double));
    const int lanes = lanes_, chunk = chunk_;
    const auto run_chunk = [&](index_t k, const host_team& team) {
      const index_t first = k * chunk_rows;
      const index_t last = first + chunk_rows < rows ? first + chunk_rows : rows;
      partials[k] = chunk_value(first, last, team);
    };
    // Small calls stay on the calling thread: starting a parallel region costs more than a few
    // chunks of work (the partition into chunks, and so the result, is the same either way). They
    // do not enter one at all: even a region of one thread allocated memory and made a futex call in
    // libgomp (measured: a 64-row C = 64 KL call took 1.9 us with it, 1.3 us without).
    const bool few = chunks < detail::parallel_chunks &&
                     (chunks < 2 || chunks * chunk_elements < detail::parallel_chunks * detail::host_chunk_elements);
    if (nthreads == 1 || few) {
      const host_team team(lanes, chunk, scratch, scratch_bytes);
      for (index_t k = 0; k < chunks; ++k) run_chunk(k, team);
      if (streamed) detail::fence_streamed_stores();
    } else {
#if defined(_OPENMP)
#pragma omp parallel num_threads(nthreads)
      {
        const host_team team(lanes, chunk, scratch + omp_get_thread_num() * scratch_doubles, scratch_bytes);
#pragma omp for schedule(static) nowait
        for (index_t k = 0; k < chunks; ++k) run_chunk(k, team);
        if (streamed) detail::fence_streamed_stores();  // before the join: the caller reads the gradient next
      }
#else
      (void)scratch_doubles;  // unreachable: threads() is 1 without OpenMP
#endif
    }
    double total = 0;
    for (index_t k = 0; k < chunks; ++k) total += partials[k];
    return total;
  }

  // Sum of the row weights, each chunk's in row order (the same for any thread count); throws if one is negative.
  //
  // Why through rows.load, sixteen rows at a time: weight(r) decodes its row index anew (the
  // attention's (n, h, s): two 64-bit divisions), which on a masked spatial cross-attention call
  // (640000 joint rows) took about 5 % of the call (measured, perf, Intel Cascade Lake, one thread).
  template <class Problem>
  double sum_weights(const Problem& problem) {
    using acc = typename Problem::acc_type;
    const index_t rows = problem.row_count();
    std::atomic<bool> negative{false};
    const double total = sum_over_chunks(rows, detail::host_rows_per_chunk, 0,
                                         [&](index_t first, index_t last, const host_team&) {
                                           double partial = 0;
                                           acc w[detail::block_rows], upstream[detail::block_rows];
                                           for (index_t r = first; r < last; r += detail::block_rows) {
                                             const int count = static_cast<int>(
                                                 last - r < detail::block_rows ? last - r : detail::block_rows);
                                             problem.rows.load(r, count, w, upstream);
                                             for (int l = 0; l < count; ++l) {
                                               if (w[l] < acc(0)) negative.store(true, std::memory_order_relaxed);
                                               partial += static_cast<double>(w[l]);
                                             }
                                           }
                                           return partial;
                                         });
    detail::require(!negative.load(), "weights", "must be >= 0 everywhere (a negative weight was found)");
    return total;
  }

  [[maybe_unused]] int threads_;  // read only when OpenMP is enabled
  int lanes_ = 1;
  int chunk_ = 1;
  bool scratch_enabled_ = true;
  bool stage_ = true;
  bool blocks_ = true;
  std::vector<double> partials_;
  std::vector<double> scratch_;
  struct staging_buffer {
    std::unique_ptr<unsigned char[]> data;  // new[] storage: aligned for every element type
    std::size_t bytes = 0;
  };
  staging_buffer staging_[3];
};

}  // namespace bevkd
