// bevkd CUDA backend: a stream, a reusable device workspace, and the launches of the row kernels.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "config.hpp"
#include "cuda_team.cuh"
#include "detail/lanes.hpp"
#include "detail/row_driver.hpp"
#include "error.hpp"
#include "host_backend.hpp"
#include "reduction.hpp"

/// @brief Evaluates a CUDA runtime call and throws bevkd::cuda_error with the call, file and line when it fails.
#define BEVKD_CUDA_CHECK(call)                                                                  \
  do {                                                                                          \
    const cudaError_t bevkd_status_ = (call);                                                   \
    if (bevkd_status_ != cudaSuccess)                                                           \
      throw ::bevkd::cuda_error(#call, cudaGetErrorString(bevkd_status_), __FILE__, __LINE__); \
  } while (0)

namespace bevkd {

/// @brief A loss result living in device memory: {loss, sum, weight_sum}; read it with get() (which synchronises).
struct device_loss_result {
  const double* values = nullptr;  ///< Device pointer to {loss, sum, weight_sum}.
  cudaStream_t stream = nullptr;   ///< Stream that produces the values.

  /// @brief Waits for the stream and copies the three values to the host.
  loss_result get() const {
    double host[3];
    BEVKD_CUDA_CHECK(cudaMemcpyAsync(host, values, sizeof host, cudaMemcpyDeviceToHost, stream));
    BEVKD_CUDA_CHECK(cudaStreamSynchronize(stream));
    return loss_result{host[0], host[1], host[2]};
  }
};

namespace detail {

/// @brief Per-call values a row kernel reads: the weight sum lives on the device when weights are given.
struct device_call {
  loss_call call;                ///< Reduction and scales.
  const double* weight_sum;      ///< Device weight sum, or null (then `rows` is the weight sum).
  index_t rows;                  ///< Number of rows.
  double* partials;              ///< One double per block.
  double* result;                ///< {loss, sum, weight_sum}.
};

/// @brief The weight sum of a call, on the device.
BEVKD_DEVICE double device_weight_sum(const device_call& dc) {
  return dc.weight_sum ? *dc.weight_sum : static_cast<double>(dc.rows);
}

/// @brief Block-wide sum of one double per thread, in CUB's fixed order; thread 0 gets the result.
BEVKD_DEVICE double block_sum(double value) {
  using block_reduce = cub::BlockReduce<double, cuda_block_threads>;
  __shared__ typename block_reduce::TempStorage storage;
  return block_reduce(storage).Sum(value);
}

/// @brief Per-block weight sums (negative weights counted in a second slot, so the total becomes NaN).
template <class Rows>
__global__ void __launch_bounds__(cuda_block_threads)
    weight_partials_kernel(Rows rows, index_t row_count, index_t rows_per_block, double* partials) {
  const index_t first = blockIdx.x * rows_per_block;
  const index_t last = first + rows_per_block < row_count ? first + rows_per_block : row_count;
  double sum = 0, negatives = 0;
  for (index_t r = first + threadIdx.x; r < last; r += cuda_block_threads) {
    const double w = static_cast<double>(rows.weight(r));
    sum += w;
    negatives += w < 0 ? 1.0 : 0.0;
  }
  sum = block_sum(sum);
  __syncthreads();
  negatives = block_sum(negatives);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = sum;
    partials[2 * blockIdx.x + 1] = negatives;
  }
}

/// @brief Sums `count` per-block partials (stride `step`) in a fixed order with one block.
BEVKD_DEVICE double sum_partials(const double* partials, index_t count, int step) {
  double sum = 0;
  for (index_t k = threadIdx.x; k < count; k += cuda_block_threads) sum += partials[k * step];
  return block_sum(sum);
}

/// @brief Reduces the weight partials into the device weight sum (NaN when any weight was negative).
/// (A template so that several .cu files of one program can include this header.)
template <int Unused = 0>
__global__ void __launch_bounds__(cuda_block_threads)
    weight_total_kernel(const double* partials, index_t blocks, double* weight_sum) {
  const double sum = sum_partials(partials, blocks, 2);
  __syncthreads();
  const double negatives = sum_partials(partials + 1, blocks, 2);
  if (threadIdx.x == 0) *weight_sum = negatives > 0 ? __longlong_as_double(0x7ff8000000000000LL) : sum;
}

#ifndef BEVKD_CUDA_ROW_KERNEL_MIN_BLOCKS
/// @brief Blocks of a row kernel that must fit on one multiprocessor (default 3: at most 80 registers a thread).
///
/// Left to itself, nvcc gives the row kernels 91-117 registers: two blocks per multiprocessor,
/// at which the TSA attention ran 15-20 % slower than the same rows at 80 registers (H200,
/// bench/RESULTS.md). Defining it before the first include overrides the bound for a whole build.
#define BEVKD_CUDA_ROW_KERNEL_MIN_BLOCKS 3
#endif

/// @brief Blocks of a row kernel that must fit on one multiprocessor (BEVKD_CUDA_ROW_KERNEL_MIN_BLOCKS).
constexpr int rows_kernel_min_blocks = BEVKD_CUDA_ROW_KERNEL_MIN_BLOCKS;
static_assert(rows_kernel_min_blocks >= 1 && rows_kernel_min_blocks <= 8,
              "BEVKD_CUDA_ROW_KERNEL_MIN_BLOCKS: 1 to 8 blocks of 256 threads per multiprocessor");

/// @brief Runs rows [blockIdx.x * rows_per_block, ...) with teams of kind Team; writes the block's weighted loss.
template <class Problem, class Team>
__global__ void __launch_bounds__(cuda_block_threads, rows_kernel_min_blocks)
    rows_kernel(Problem problem, device_call dc, int chunk, index_t rows_per_block) {
  using acc = typename Problem::acc_type;
  constexpr int team_width = cuda_block_threads / Team::teams_per_block;
  const int team_index = threadIdx.x / team_width;
  const Team team(static_cast<int>(threadIdx.x), chunk);
  const double normaliser =
      reduction_normaliser(dc.call.red, device_weight_sum(dc), static_cast<double>(dc.call.batch));
  const auto scaling = make_row_scaling<acc>(dc.call.loss_weight, dc.call.grad_scale, normaliser, dc.call.accumulate);
  const index_t first = blockIdx.x * rows_per_block;
  const index_t last = first + rows_per_block < dc.rows ? first + rows_per_block : dc.rows;
  double team_sum = 0;
  for (index_t r = first + team_index; r < last; r += Team::teams_per_block)
    team_sum += static_cast<double>(run_row(problem, team, r, scaling));
  __shared__ double team_sums[Team::teams_per_block];
  if (team.leader()) team_sums[team_index] = team_sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double block_total = 0;
    for (int t = 0; t < Team::teams_per_block; ++t) block_total += team_sums[t];
    dc.partials[blockIdx.x] = block_total;
  }
}

/// @brief Reduces the row partials into {loss, sum, weight_sum} (a template for the same reason).
template <int Unused = 0>
__global__ void __launch_bounds__(cuda_block_threads) loss_total_kernel(device_call dc, index_t blocks) {
  const double total = sum_partials(dc.partials, blocks, 1);
  if (threadIdx.x == 0) {
    const double weight_sum = device_weight_sum(dc);
    const double normaliser = reduction_normaliser(dc.call.red, weight_sum, static_cast<double>(dc.call.batch));
    dc.result[0] = finish_loss(total, dc.call.loss_weight, normaliser);
    dc.result[1] = dc.call.loss_weight * total;
    dc.result[2] = weight_sum;
  }
}

/// @brief Calls f(i) for every i in [0, count): one thread per index (elementwise ops such as resampling).
template <class F>
__global__ void __launch_bounds__(cuda_block_threads) for_each_index_kernel(F f, index_t count) {
  const index_t i = static_cast<index_t>(blockIdx.x) * cuda_block_threads + threadIdx.x;
  if (i < count) f(i);
}

/// @brief Lanes per row of a unit-stride row whose passes run over `columns` columns read in chunks of `chunk`: about
/// three chunks per lane, 4 to 16 lanes (a power of two), so that a warp runs several rows side by side.
///
/// From a sweep of every width on an H200 (bench_losses_cuda's *_width cases, bench/RESULTS.md):
/// short rows are latency-bound, and more rows in flight beat wider teams up to 3-4 chunks per lane.
inline int warp_team_width(index_t columns, int chunk) {
  const index_t chunks = (columns + chunk - 1) / chunk;
  int width = 4;
  while (width < 16 && 3 * width < chunks) width *= 2;
  return width;
}

/// @brief True when a problem's rows are held by the warp teams for their passes (Problem::holds_rows, see
/// column_ops::hold_row).
template <class Problem, class = void>
struct problem_holds_rows : std::false_type {};
/// @brief Problems with holds_rows.
template <class Problem>
struct problem_holds_rows<Problem, std::void_t<decltype(Problem::holds_rows)>>
    : std::integral_constant<bool, Problem::holds_rows> {};

/// @brief Lanes per unit-stride row of a problem: for rows a warp team holds, the fewest lanes (4 to 32) that hold the
/// whole row; else (or when none does) warp_team_width's choice.
///
/// Held rows are read once, so more rows in flight no longer beat wider teams: on an H100 the
/// fp32 softmax KL at C = 256 took 113 us on 32 lanes (held) and 127 us on 16 (not held);
/// held rows of 2 chunks a lane were fastest at every measured size (bench/RESULTS.md).
template <class Problem>
int problem_team_width(index_t columns, int chunk) {
  if constexpr (problem_holds_rows<Problem>::value) {
    for (int width = 4; width <= warp_lanes; width *= 2)
      if (row_fits_held<typename Problem::value_type, held_row_chunks>(width, chunk, columns)) return width;
  }
  return warp_team_width(columns, chunk);
}

/// @brief True when a problem's passes run over runs shorter than its rows (run_columns(), e.g. one camera's keys).
template <class Problem, class = void>
struct has_run_columns : std::false_type {};
/// @brief Problems with run_columns().
template <class Problem>
struct has_run_columns<Problem, std::void_t<decltype(std::declval<const Problem&>().run_columns())>>
    : std::true_type {};

/// @brief Columns one pass of a row's kernel runs over: the row, or the runs it is made of.
template <class Problem>
index_t team_columns(const Problem& problem) {
  if constexpr (has_run_columns<Problem>::value) {
    return problem.run_columns();
  } else {
    return problem.columns();
  }
}

/// @brief Rows each team runs by default: the team kind's own, but one where rows are made of runs (masked joint
/// attention rows, whose work varies with the sources they hit: fewer rows per block balance the blocks; 5-8 %
/// faster for the SCA case on an H200, bench/RESULTS.md).
template <class Team, class Problem>
int default_rows_per_team(const Problem& problem) {
  return team_columns(problem) < problem.columns() ? 1 : Team::rows_per_team;
}

/// @brief Blocks needed to cover `rows` rows at `rows_per_block` each.
inline index_t blocks_for(index_t rows, index_t rows_per_block) { return (rows + rows_per_block - 1) / rows_per_block; }

}  // namespace detail

/// @brief Device memory that only grows: scratch for partial sums, reused call after call (no steady-state cudaMalloc).
class cuda_workspace {
 public:
  cuda_workspace() = default;
  cuda_workspace(const cuda_workspace&) = delete;
  cuda_workspace& operator=(const cuda_workspace&) = delete;
  /// @brief Takes over another workspace's memory.
  cuda_workspace(cuda_workspace&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  /// @brief Takes over another workspace's memory.
  cuda_workspace& operator=(cuda_workspace&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  ~cuda_workspace() {
    if (data_) cudaFree(data_);
  }

  /// @brief At least `bytes` of device memory (reallocates, synchronising the device, only when growing).
  void* reserve(std::size_t bytes) {
    if (bytes > bytes_) {
      const std::size_t grown = bytes + bytes / 2;
      if (data_) BEVKD_CUDA_CHECK(cudaFree(data_));
      data_ = nullptr;
      bytes_ = 0;
      BEVKD_CUDA_CHECK(cudaMalloc(&data_, grown));
      bytes_ = grown;
    }
    return data_;
  }

  /// @brief Bytes currently held.
  std::size_t capacity() const { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// @brief Executes bevkd calls on a CUDA stream; results stay on the device until asked for.
///
/// Holds a workspace that grows on the first calls and is then reused, and a ring of
/// `result_slots` result slots: a device_loss_result stays valid for that many later calls.
class cuda_exec {
 public:
  /// @brief The value a loss call returns on this backend.
  using result_type = device_loss_result;
  /// @brief Calls after which a result slot is reused.
  static constexpr int result_slots = 64;

  /// @brief An executor on `stream` (0: the legacy default stream).
  explicit cuda_exec(cudaStream_t stream = nullptr) : stream_(stream) {
    BEVKD_CUDA_CHECK(cudaMalloc(&results_, sizeof(double) * 3 * result_slots));
  }
  cuda_exec(const cuda_exec&) = delete;
  cuda_exec& operator=(const cuda_exec&) = delete;
  ~cuda_exec() { cudaFree(results_); }

  /// @brief The stream every launch goes to.
  cudaStream_t stream() const { return stream_; }

  /// @brief Runs f(i) for i in [0, count) on the stream; f is a device-callable functor (library internal).
  template <class F>
  void parallel_for(index_t count, const F& f) {
    if (count <= 0) return;
    const index_t blocks = detail::blocks_for(count, detail::cuda_block_threads);
    detail::for_each_index_kernel<<<static_cast<unsigned>(blocks), detail::cuda_block_threads, 0, stream_>>>(f, count);
    BEVKD_CUDA_CHECK(cudaGetLastError());
  }

  /// @brief Lanes per row for unit-stride rows under 1024 columns: 0 (the default) picks by row length and whether the
  /// rows are held (see detail::problem_team_width), else 4, 8, 16 or 32 (for benchmarks and tests of every team
  /// width; results agree to rounding, not bitwise).
  cuda_exec& team_width(int lanes) {
    detail::require(lanes == 0 || lanes == 4 || lanes == 8 || lanes == 16 || lanes == 32, "lanes",
                    "must be 0, 4, 8, 16 or 32, got ", lanes);
    team_width_ = lanes;
    return *this;
  }

  /// @brief Rows each team of a row kernel runs (each block runs that many per team): 0 (the default) takes the team
  /// kind's own (2 rows per warp team, 1 otherwise; 1 for masked joint attention rows), else 1 to 64 (for
  /// benchmarks and tests; results agree to rounding, not bitwise, since the blocks' partial sums change).
  cuda_exec& rows_per_team(int rows) {
    detail::require(rows >= 0 && rows <= 64, "rows", "must be 0 (the default) or 1 to 64, got ", rows);
    rows_per_team_ = rows;
    return *this;
  }

  /// @brief Runs a validated loss problem (library internal): weight pre-pass, row kernel, final reduction.
  template <class Problem>
  device_loss_result run_loss(const Problem& problem, const detail::loss_call& call) {
    // Long rows get a block; unit-stride rows a group of 4 to 16 lanes of a warp (coalesced along
    // the row); strided rows (NCHW) a thread each, so that neighbouring threads read neighbouring pillars.
    // Aligned unit-stride rows read (and write their gradients in) 16-byte vectors: chunks of one vector per lane.
    const int chunk = problem.vector_aligned() ? detail::vector_width<typename Problem::value_type>() : 1;
    if (problem.columns() >= 1024) return launch<detail::block_team>(problem, call, chunk);
    if constexpr (Problem::unit_stride) {
      switch (team_width_ ? team_width_ : detail::problem_team_width<Problem>(detail::team_columns(problem), chunk)) {
        case 4: return launch<detail::warp_team<4>>(problem, call, chunk);
        case 8: return launch<detail::warp_team<8>>(problem, call, chunk);
        case 16: return launch<detail::warp_team<16>>(problem, call, chunk);
        default: return launch<detail::warp_team<32>>(problem, call, chunk);
      }
    } else {
      return launch<detail::thread_team>(problem, call, chunk);
    }
  }

 private:
  template <class Team, class Problem>
  device_loss_result launch(const Problem& problem, const detail::loss_call& call, int chunk) {
    using namespace detail;
    const index_t rows = problem.row_count();
    const index_t rows_per_block = static_cast<index_t>(Team::teams_per_block) *
                                   (rows_per_team_ ? rows_per_team_ : default_rows_per_team<Team>(problem));
    const index_t blocks = blocks_for(rows, rows_per_block);
    const index_t weight_blocks = blocks_for(rows, 4 * cuda_block_threads);
    const std::size_t partial_doubles = static_cast<std::size_t>(std::max(blocks, 2 * weight_blocks)) + 1;
    double* scratch = static_cast<double*>(workspace_.reserve(partial_doubles * sizeof(double)));
    double* result = results_ + 3 * next_slot_;
    next_slot_ = (next_slot_ + 1) % result_slots;
    device_call dc{call, nullptr, rows, scratch + 1, result};
    if (problem.rows.has_weights()) {
      dc.weight_sum = scratch;
      if (weight_blocks > 0)
        weight_partials_kernel<<<static_cast<unsigned>(weight_blocks), cuda_block_threads, 0, stream_>>>(
            problem.rows, rows, 4 * cuda_block_threads, scratch + 1);
      weight_total_kernel<><<<1, cuda_block_threads, 0, stream_>>>(scratch + 1, weight_blocks, scratch);
      BEVKD_CUDA_CHECK(cudaGetLastError());
    }
    if (blocks > 0)
      rows_kernel<Problem, Team><<<static_cast<unsigned>(blocks), cuda_block_threads, 0, stream_>>>(problem, dc, chunk,
                                                                                                 rows_per_block);
    loss_total_kernel<><<<1, cuda_block_threads, 0, stream_>>>(dc, blocks);
    BEVKD_CUDA_CHECK(cudaGetLastError());
    return device_loss_result{result, stream_};
  }

  cudaStream_t stream_;
  int team_width_ = 0;
  int rows_per_team_ = 0;
  cuda_workspace workspace_;
  double* results_ = nullptr;
  int next_slot_ = 0;
};

}  // namespace bevkd
