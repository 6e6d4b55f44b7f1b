// bevkd CUDA benchmarks: the host benchmarks' cases on the device, timed with CUDA events, with copy and naive baselines.
// SPDX-License-Identifier: Apache-2.0
//
// Same sizes and names as bench/losses.cpp (B = 2, P = 200 x 200, C in {10, 64, 256},
// fp32 and bf16, and the BEVFormer-base attention cases on the C = 256 and C = 768 inputs;
// the "threads" argument does not exist here). Every iteration flushes the
// L2 cache (a memset of a buffer larger than it) outside the timed region, then times one
// fused call (loss + gradient, result left on the device) with an RAII event pair on the
// call's stream (UseManualTime). Baselines in the same binary:
//   copy/<dtype>      a kernel reading student and teacher and writing the gradient buffer
//                     (16-byte words, g = s + t: STREAM's "add"), i.e. the byte floor.
//   naive_*/<dtype>   the loss as PyTorch eager runs it: one simple kernel per tensor op, each
//                     writing a full-size float temporary, row softmaxes by a warp (short
//                     rows) or a block (long rows), a CUB device sum, then autograd's
//                     backward kernels. bf16 inputs are upcast first, the gradient downcast last.
// Without a device every benchmark reports SkipWithError("no CUDA device").

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <bevkd/bevkd.cuh>

#include <cub/block/block_reduce.cuh>
#include <cub/device/device_reduce.cuh>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace bevkd_bench;

bool has_device() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return count > 0;
}

// Marks a benchmark skipped (with the reason) where there is no device; true when it did.
bool skip_without_device(benchmark::State& state) {
  if (has_device()) return false;
  state.SkipWithError("no CUDA device");
  return true;
}

/// Device memory for n elements of T, freed on destruction.
template <class T>
class device_buffer {
 public:
  explicit device_buffer(std::size_t n = 0) { resize(n); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() {
    if (ptr_) cudaFree(ptr_);
  }
  void resize(std::size_t n) {
    if (n <= size_) return;
    if (ptr_) BEVKD_CUDA_CHECK(cudaFree(ptr_));
    ptr_ = nullptr;
    size_ = 0;
    BEVKD_CUDA_CHECK(cudaMalloc(&ptr_, n * sizeof(T) + 16));
    size_ = n;
  }
  T* get() const { return ptr_; }
  std::size_t size() const { return size_; }

 private:
  T* ptr_ = nullptr;
  std::size_t size_ = 0;
};

/// A non-blocking stream, destroyed on scope exit.
class stream_guard {
 public:
  stream_guard() { BEVKD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  stream_guard(const stream_guard&) = delete;
  stream_guard& operator=(const stream_guard&) = delete;
  ~stream_guard() { cudaStreamDestroy(stream_); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

/// A buffer larger than the device's L2 cache; flush() overwrites it so no input stays cached.
class l2_flusher {
 public:
  l2_flusher() {
    int device = 0, bytes = 0;
    BEVKD_CUDA_CHECK(cudaGetDevice(&device));
    BEVKD_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, device));
    buffer_.resize(2 * static_cast<std::size_t>(bytes > 0 ? bytes : 1));
  }
  void flush(cudaStream_t stream) const {
    BEVKD_CUDA_CHECK(cudaMemsetAsync(buffer_.get(), 0, buffer_.size(), stream));
  }

 private:
  device_buffer<unsigned char> buffer_;
};

/// Times its own lifetime on a stream with CUDA events and hands the time to the benchmark (UseManualTime).
class cuda_event_timer {
 public:
  cuda_event_timer(benchmark::State& state, cudaStream_t stream, const l2_flusher& flusher)
      : state_(state), stream_(stream) {
    flusher.flush(stream);
    BEVKD_CUDA_CHECK(cudaEventCreate(&start_));
    BEVKD_CUDA_CHECK(cudaEventCreate(&stop_));
    BEVKD_CUDA_CHECK(cudaEventRecord(start_, stream_));
  }
  cuda_event_timer(const cuda_event_timer&) = delete;
  cuda_event_timer& operator=(const cuda_event_timer&) = delete;
  ~cuda_event_timer() {
    float ms = 0;
    const bool ok = cudaEventRecord(stop_, stream_) == cudaSuccess && cudaEventSynchronize(stop_) == cudaSuccess &&
                    cudaEventElapsedTime(&ms, start_, stop_) == cudaSuccess;
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
    if (ok) {
      state_.SetIterationTime(static_cast<double>(ms) / 1e3);
    } else {
      state_.SkipWithError("CUDA event timing failed");
    }
  }

 private:
  benchmark::State& state_;
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};

/// Student, teacher and gradient on the device, uploaded from the host benchmarks' inputs.
template <class T>
struct device_inputs {
  const host_inputs<T>& host;
  device_buffer<T> student, teacher, grad;
  explicit device_inputs(index_t channels)
      : host(inputs_for<T>(channels)),
        student(static_cast<std::size_t>(host.size())),
        teacher(static_cast<std::size_t>(host.size())),
        grad(static_cast<std::size_t>(host.size())) {
    const std::size_t bytes = static_cast<std::size_t>(host.size()) * sizeof(T);
    BEVKD_CUDA_CHECK(cudaMemcpy(student.get(), host.student.data(), bytes, cudaMemcpyHostToDevice));
    BEVKD_CUDA_CHECK(cudaMemcpy(teacher.get(), host.teacher.data(), bytes, cudaMemcpyHostToDevice));
  }
};

// ---------------------------------------------------------------------------------------
// Naive reference: simple kernels, one per tensor op.

constexpr int block_threads = 256;

unsigned blocks_for(index_t count) { return static_cast<unsigned>((count + block_threads - 1) / block_threads); }

/// out[i] = op(i) for every element (op is a functor with pointers: no extended lambdas needed).
template <class Op>
__global__ void map_kernel(index_t count, Op op) {
  const index_t i = static_cast<index_t>(blockIdx.x) * block_threads + threadIdx.x;
  if (i < count) op(i);
}

template <class Op>
void launch_map(index_t count, const Op& op, cudaStream_t stream) {
  map_kernel<<<blocks_for(count), block_threads, 0, stream>>>(count, op);
}

enum class row_op { log_softmax, softmax, sum };

/// fmaxf as a functor (cub::Max is gone from CCCL 3; this works with every CUB version).
struct max_fn {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/// One row per warp (short rows) or per block (long rows): softmax, log_softmax (out = full row) or sum (out[r]).
template <row_op Op, bool BlockPerRow>
__global__ void row_kernel(const float* in, float* out, row_layout L) {
  constexpr int team = BlockPerRow ? block_threads : 32;
  const int lane = static_cast<int>(threadIdx.x) % team;
  const index_t r = BlockPerRow ? static_cast<index_t>(blockIdx.x)
                                : static_cast<index_t>(blockIdx.x) * (block_threads / 32) + threadIdx.x / 32;
  using block_reduce = cub::BlockReduce<float, block_threads>;
  __shared__ typename block_reduce::TempStorage storage;
  __shared__ float broadcast;
  auto team_reduce = [&](float v, bool is_max) {
    if constexpr (BlockPerRow) {
      const float total = is_max ? block_reduce(storage).Reduce(v, max_fn{}) : block_reduce(storage).Sum(v);
      if (threadIdx.x == 0) broadcast = total;
      __syncthreads();
      const float result = broadcast;
      __syncthreads();
      return result;
    } else {
      for (int offset = 16; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = is_max ? fmaxf(v, other) : v + other;
      }
      return v;
    }
  };
  const bool active = r < L.rows;
  const float* row = in + (active ? L.base(r) : 0);
  if (Op == row_op::sum) {
    float s = 0;
    if (active)
      for (index_t i = lane; i < L.n; i += team) s += row[i * L.stride];
    s = team_reduce(s, false);
    if (active && lane == 0) out[r] = s;
    return;
  }
  float m = -INFINITY;
  if (active)
    for (index_t i = lane; i < L.n; i += team) m = fmaxf(m, row[i * L.stride]);
  m = team_reduce(m, true);
  float z = 0;
  if (active)
    for (index_t i = lane; i < L.n; i += team) z += expf(row[i * L.stride] - m);
  z = team_reduce(z, false);
  if (!active) return;
  float* o = out + L.base(r);
  const float lz = logf(z), inv = 1.0f / z;
  for (index_t i = lane; i < L.n; i += team)
    o[i * L.stride] = Op == row_op::log_softmax ? row[i * L.stride] - m - lz : expf(row[i * L.stride] - m) * inv;
}

template <row_op Op>
void launch_rows(const float* in, float* out, const row_layout& L, cudaStream_t stream) {
  if (L.n >= 1024) {
    row_kernel<Op, true><<<static_cast<unsigned>(L.rows), block_threads, 0, stream>>>(in, out, L);
  } else {
    const index_t per_block = block_threads / 32;
    row_kernel<Op, false><<<static_cast<unsigned>((L.rows + per_block - 1) / per_block), block_threads, 0, stream>>>(
        in, out, L);
  }
}

// Elementwise ops (one PyTorch op each).
template <class From>
struct upcast_op {
  const From* in;
  float* out;
  __device__ void operator()(index_t i) const { out[i] = static_cast<float>(in[i]); }
};
template <class To>
struct downcast_op {
  const float* in;
  To* out;
  __device__ void operator()(index_t i) const { out[i] = bevkd::store_from_accum<To>(in[i]); }
};
enum class binary { add, sub, mul, xlogx, neg_scale, sq, sigmoid, log_sigmoid, log_sigmoid_neg, one_minus,
                    mul_one_minus_sigmoid, neg_mul_one_minus_sigmoid_neg };
/// out[i] = f(a[i], b[i]) with a scalar k.
template <binary F>
struct binary_op {
  const float* a;
  const float* b;
  float* out;
  float k;
  __device__ static float log_sigmoid_of(float x) { return fminf(x, 0.0f) - log1pf(expf(-fabsf(x))); }
  __device__ static float sigmoid_of(float x) { return 1.0f / (1.0f + expf(-x)); }
  __device__ void operator()(index_t i) const {
    float v = 0;
    switch (F) {
      case binary::add: v = a[i] + b[i]; break;
      case binary::sub: v = a[i] - b[i]; break;
      case binary::mul: v = a[i] * b[i]; break;
      case binary::xlogx: v = a[i] > 0.0f ? a[i] * logf(a[i]) : 0.0f; break;
      case binary::neg_scale: v = -a[i] * k; break;
      case binary::sq: v = k * a[i] * a[i]; break;
      case binary::sigmoid: v = sigmoid_of(a[i]); break;
      case binary::log_sigmoid: v = log_sigmoid_of(a[i]); break;
      case binary::log_sigmoid_neg: v = log_sigmoid_of(-a[i]); break;
      case binary::one_minus: v = 1.0f - a[i]; break;
      case binary::mul_one_minus_sigmoid: v = a[i] * (1.0f - sigmoid_of(b[i])); break;
      case binary::neg_mul_one_minus_sigmoid_neg: v = -a[i] * (1.0f - sigmoid_of(-b[i])); break;
    }
    out[i] = v;
  }
};
template <binary F>
void launch_binary(index_t n, const float* a, const float* b, float* out, float k, cudaStream_t stream) {
  launch_map(n, binary_op<F>{a, b, out, k}, stream);
}

/// log_softmax_backward: grad = g - exp(ls) * rowsum(g)[row].
struct log_softmax_backward_op {
  const float* g;
  const float* ls;
  const float* gsum;
  float* out;
  row_layout L;
  __device__ void operator()(index_t i) const { out[i] = g[i] - expf(ls[i]) * gsum[L.row_of(i)]; }
};
/// out = a * row_value(row) (or a / max(row_value, eps) when divide).
struct row_scale_op {
  const float* a;
  const float* row_value;
  float* out;
  row_layout L;
  float eps;
  bool divide;
  __device__ void operator()(index_t i) const {
    const float v = row_value[L.row_of(i)];
    out[i] = divide ? a[i] / fmaxf(v, eps) : a[i] * v;
  }
};
/// Per-row map over [0, rows): sqrt of sums, or the normalize-backward coefficient.
struct row_map_op {
  float* values;
  const float* norm;
  float eps;
  bool sqrt_only;
  __device__ void operator()(index_t r) const {
    if (sqrt_only) {
      values[r] = sqrtf(values[r]);
      return;
    }
    const float d = fmaxf(norm[r], eps);
    values[r] = norm[r] > eps ? -values[r] / (d * d) / norm[r] : 0.0f;
  }
};

/// masked_fill of the spatial cross-attention: out[i] = in[i] where element i's camera is hit, else `fill`.
struct camera_mask_op {
  const float* in;
  float* out;
  const std::uint8_t* hits;  // [N, 6] on the device
  float fill;
  __device__ void operator()(index_t i) const {
    out[i] = hits[sca_query_of(i) * sca_sources + sca_camera_of(i)] != 0 ? in[i] : fill;
  }
};

/// The camera-hit mask sca_hits() on the device.
class device_camera_hits {
 public:
  device_camera_hits() : buffer_(sca_hits().size()) {
    BEVKD_CUDA_CHECK(cudaMemcpy(buffer_.get(), sca_hits().data(), sca_hits().size(), cudaMemcpyHostToDevice));
  }
  const std::uint8_t* get() const { return buffer_.get(); }

 private:
  device_buffer<std::uint8_t> buffer_;
};

/// Temporaries and CUB scratch of the naive reference, allocated once per benchmark.
struct naive_state {
  device_buffer<float> s32, t32, grad32, a, b, c, d, e, f, g, masked_s, masked_t, row_a, row_b, row_c;
  device_buffer<double> total;
  device_buffer<unsigned char> cub_temp;
  std::size_t cub_bytes = 0;
  naive_state(index_t n, index_t rows) {
    for (auto* v : {&s32, &t32, &grad32, &a, &b, &c, &d, &e, &f, &g, &masked_s, &masked_t})
      v->resize(static_cast<std::size_t>(n));
    for (auto* v : {&row_a, &row_b, &row_c}) v->resize(static_cast<std::size_t>(rows));
    total.resize(1);
    BEVKD_CUDA_CHECK(cub::DeviceReduce::Sum(nullptr, cub_bytes, a.get(), total.get(), n));
    cub_temp.resize(cub_bytes);
  }
  void sum(const float* x, index_t n, cudaStream_t stream) {
    std::size_t bytes = cub_bytes;
    BEVKD_CUDA_CHECK(cub::DeviceReduce::Sum(cub_temp.get(), bytes, x, total.get(), n, stream));
  }
};

void naive_softmax_kl(const float* s, const float* t, float* grad, const row_layout& L, naive_state& B,
                      cudaStream_t st) {
  const index_t n = L.rows * L.n;
  float *ls = B.a.get(), *pt = B.b.get(), *xlogx = B.c.get(), *cross = B.d.get(), *el = B.e.get(), *g = B.f.get();
  launch_rows<row_op::log_softmax>(s, ls, L, st);
  launch_rows<row_op::softmax>(t, pt, L, st);
  launch_binary<binary::xlogx>(n, pt, nullptr, xlogx, 0, st);
  launch_binary<binary::mul>(n, pt, ls, cross, 0, st);
  launch_binary<binary::sub>(n, xlogx, cross, el, 0, st);
  B.sum(el, n, st);
  launch_binary<binary::neg_scale>(n, pt, nullptr, g, 1.0f / static_cast<float>(L.rows), st);
  launch_rows<row_op::sum>(g, B.row_a.get(), L, st);
  launch_map(n, log_softmax_backward_op{g, ls, B.row_a.get(), grad, L}, st);
}

// Joint attention KL over the hit cameras as a PyTorch user masks it (see losses.cpp).
void naive_masked_attention_kl(const float* s, const float* t, float* grad, const std::uint8_t* hits, naive_state& B,
                               cudaStream_t st) {
  const row_layout L = sca_rows();
  const index_t n = L.rows * L.n;
  launch_map(n, camera_mask_op{s, B.masked_s.get(), hits, -1e30f}, st);
  launch_map(n, camera_mask_op{t, B.masked_t.get(), hits, -1e30f}, st);
  naive_softmax_kl(B.masked_s.get(), B.masked_t.get(), grad, L, B, st);
  launch_map(n, camera_mask_op{grad, grad, hits, 0.0f}, st);
}

void naive_sigmoid_kl(const float* s, const float* t, float* grad, const row_layout& L, naive_state& B,
                      cudaStream_t st) {
  const index_t n = L.rows * L.n;
  float *pt = B.a.get(), *lpt = B.b.get(), *lnt = B.c.get(), *lps = B.d.get(), *lns = B.e.get(), *x = B.f.get(),
        *y = B.g.get();
  launch_binary<binary::sigmoid>(n, t, nullptr, pt, 0, st);
  launch_binary<binary::log_sigmoid>(n, t, nullptr, lpt, 0, st);
  launch_binary<binary::log_sigmoid_neg>(n, t, nullptr, lnt, 0, st);
  launch_binary<binary::log_sigmoid>(n, s, nullptr, lps, 0, st);
  launch_binary<binary::log_sigmoid_neg>(n, s, nullptr, lns, 0, st);
  launch_binary<binary::sub>(n, lpt, lps, x, 0, st);
  launch_binary<binary::mul>(n, pt, x, x, 0, st);
  launch_binary<binary::sub>(n, lnt, lns, y, 0, st);
  launch_binary<binary::one_minus>(n, pt, nullptr, lpt, 0, st);  // lpt is dead: reuse it for 1 - pt
  launch_binary<binary::mul>(n, lpt, y, y, 0, st);
  launch_binary<binary::add>(n, x, y, x, 0, st);
  B.sum(x, n, st);
  const float go = 1.0f / static_cast<float>(L.rows);
  launch_binary<binary::neg_scale>(n, pt, nullptr, x, go, st);
  launch_binary<binary::mul_one_minus_sigmoid>(n, x, s, x, 0, st);
  launch_binary<binary::neg_scale>(n, lpt, nullptr, y, go, st);
  launch_binary<binary::neg_mul_one_minus_sigmoid_neg>(n, y, s, y, 0, st);
  launch_binary<binary::add>(n, x, y, grad, 0, st);
}

void naive_mse(const float* s, const float* t, float* grad, const row_layout& L, naive_state& B, cudaStream_t st) {
  const index_t n = L.rows * L.n;
  launch_binary<binary::sub>(n, s, t, B.a.get(), 0, st);
  launch_binary<binary::sq>(n, B.a.get(), nullptr, B.b.get(), 1.0f, st);
  B.sum(B.b.get(), n, st);
  launch_binary<binary::sub>(n, s, t, grad, 0, st);
  launch_binary<binary::neg_scale>(n, grad, nullptr, grad, -2.0f / static_cast<float>(n), st);
}

void naive_normalized_mse(const float* s, const float* t, float* grad, const row_layout& L, naive_state& B,
                          float eps, cudaStream_t st) {
  const index_t n = L.rows * L.n;
  float *sn = B.a.get(), *tn = B.b.get(), *diff = B.c.get(), *sq = B.d.get(), *gsn = B.e.get(), *tmp = B.f.get(),
        *gdirect = B.g.get();
  float *norm_s = B.row_a.get(), *norm_t = B.row_b.get(), *dot = B.row_c.get();
  launch_binary<binary::sq>(n, s, nullptr, tmp, 1.0f, st);
  launch_rows<row_op::sum>(tmp, norm_s, L, st);
  launch_map(L.rows, row_map_op{norm_s, nullptr, eps, true}, st);
  launch_binary<binary::sq>(n, t, nullptr, tmp, 1.0f, st);
  launch_rows<row_op::sum>(tmp, norm_t, L, st);
  launch_map(L.rows, row_map_op{norm_t, nullptr, eps, true}, st);
  launch_map(n, row_scale_op{s, norm_s, sn, L, eps, true}, st);
  launch_map(n, row_scale_op{t, norm_t, tn, L, eps, true}, st);
  launch_binary<binary::sub>(n, sn, tn, diff, 0, st);
  launch_binary<binary::sq>(n, diff, nullptr, sq, 1.0f, st);
  B.sum(sq, n, st);
  launch_binary<binary::neg_scale>(n, diff, nullptr, gsn, -2.0f / static_cast<float>(n), st);
  launch_map(n, row_scale_op{gsn, norm_s, gdirect, L, eps, true}, st);
  launch_binary<binary::mul>(n, gsn, s, tmp, 0, st);
  launch_rows<row_op::sum>(tmp, dot, L, st);
  launch_map(L.rows, row_map_op{dot, norm_s, eps, false}, st);
  launch_map(n, row_scale_op{s, dot, tmp, L, eps, false}, st);
  launch_binary<binary::add>(n, gdirect, tmp, grad, 0, st);
}

// ---------------------------------------------------------------------------------------
// Cases (bench_common.hpp): the fused call and the naive reference.

/// The fused call; `hits` is the device camera mask (used by attention_sca only).
template <class T>
bevkd::device_loss_result fused_call(loss_case c, bevkd::cuda_exec& exec, const device_inputs<T>& in,
                                     const std::uint8_t* hits) {
  return fused_loss_call(exec, c, in.host.channels, static_cast<const T*>(in.student.get()),
                         static_cast<const T*>(in.teacher.get()), in.grad.get(), hits);
}

/// Enqueues the naive reference; the weighted loss sum lands in B.total (divide as returned by the scale).
template <class T>
double naive_call(loss_case c, const device_inputs<T>& in, const std::uint8_t* hits, naive_state& B,
                  cudaStream_t st) {
  const index_t n = in.host.size(), C = in.host.channels;
  const float* s;
  const float* t;
  float* g;
  if constexpr (std::is_same<T, float>::value) {
    s = in.student.get();
    t = in.teacher.get();
    g = in.grad.get();
  } else {
    launch_map(n, upcast_op<T>{in.student.get(), B.s32.get()}, st);
    launch_map(n, upcast_op<T>{in.teacher.get(), B.t32.get()}, st);
    s = B.s32.get();
    t = B.t32.get();
    g = B.grad32.get();
  }
  double divisor = 1;
  switch (c) {
    case loss_case::attention_kl:
      naive_softmax_kl(s, t, g, attention_rows(), B, st);
      divisor = static_cast<double>(attention_rows().rows);
      break;
    case loss_case::attention_sca:
      naive_masked_attention_kl(s, t, g, hits, B, st);
      divisor = static_cast<double>(sca_rows().rows);  // every query hits at least one camera
      break;
    case loss_case::kl_softmax:
      naive_softmax_kl(s, t, g, pillar_rows(C), B, st);
      divisor = static_cast<double>(batch * pillars);
      break;
    case loss_case::kl_sigmoid:
      naive_sigmoid_kl(s, t, g, pillar_rows(C), B, st);
      divisor = static_cast<double>(batch * pillars);
      break;
    case loss_case::kl_spatial:
      naive_softmax_kl(s, t, g, channel_rows(C), B, st);
      divisor = static_cast<double>(batch * C);
      break;
    case loss_case::mse:
      naive_mse(s, t, g, pillar_rows(C), B, st);
      divisor = static_cast<double>(n);
      break;
    default:
      naive_normalized_mse(s, t, g, pillar_rows(C), B, static_cast<float>(l2_eps), st);
      divisor = static_cast<double>(n);
      break;
  }
  if constexpr (!std::is_same<T, float>::value) launch_map(n, downcast_op<T>{g, in.grad.get()}, st);
  BEVKD_CUDA_CHECK(cudaGetLastError());
  return divisor;
}

// ---------------------------------------------------------------------------------------
// Benchmarks. Argument: C.

/// How an executor runs the rows (cuda_exec's tuning settings; the defaults are its own choices).
struct exec_settings {
  int team_width = 0;     ///< Lanes per unit-stride row (0: by row length).
  int rows_per_team = 0;  ///< Rows each team runs (0: the team kind's default).
};

/// The fused call on an executor with the given settings.
template <class T>
void run_fused(benchmark::State& state, loss_case c, exec_settings settings) {
  if (skip_without_device(state)) return;
  const device_inputs<T> in(state.range(0));
  const stream_guard stream;
  const l2_flusher flusher;
  const device_camera_hits hits;
  bevkd::cuda_exec exec(stream.get());
  exec.team_width(settings.team_width).rows_per_team(settings.rows_per_team);
  fused_call(c, exec, in, hits.get()).get();  // warm-up: the workspace grows once
  for (auto _ : state) {
    cuda_event_timer timer(state, stream.get(), flusher);
    const bevkd::device_loss_result result = fused_call(c, exec, in, hits.get());
    benchmark::DoNotOptimize(result);
  }
  set_floor_counter(state, in.host.floor_bytes());
}

template <class T>
void bm_fused(benchmark::State& state, loss_case c) {
  run_fused<T>(state, c, exec_settings{});
}

/// Arguments C and the team width: the sweep behind the executor's choice of width.
template <class T>
void bm_fused_width(benchmark::State& state, loss_case c) {
  run_fused<T>(state, c, exec_settings{static_cast<int>(state.range(1)), 0});
}

/// Arguments C and the rows per team: the sweep behind the team kinds' defaults.
template <class T>
void bm_fused_rows(benchmark::State& state, loss_case c) {
  run_fused<T>(state, c, exec_settings{0, static_cast<int>(state.range(1))});
}

template <class T>
void bm_naive(benchmark::State& state, loss_case c) {
  if (skip_without_device(state)) return;
  const device_inputs<T> in(state.range(0));
  const stream_guard stream;
  const l2_flusher flusher;
  const device_camera_hits hits;
  naive_state buffers(in.host.size(), std::max({batch * pillars, batch * in.host.channels, attention_rows().rows}));
  {  // Untimed check: the reference computes what the fused call computes.
    bevkd::cuda_exec exec(stream.get());
    const double fused = fused_call(c, exec, in, hits.get()).get().loss;
    const double divisor = naive_call(c, in, hits.get(), buffers, stream.get());
    double total = 0;
    BEVKD_CUDA_CHECK(cudaMemcpyAsync(&total, buffers.total.get(), sizeof total, cudaMemcpyDeviceToHost, stream.get()));
    BEVKD_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    const double naive = total / divisor;
    if (!(std::fabs(fused - naive) <= 1e-3 * std::fabs(fused) + 1e-6)) {
      state.SkipWithError(("naive loss " + std::to_string(naive) + " != fused " + std::to_string(fused)).c_str());
      return;
    }
  }
  for (auto _ : state) {
    cuda_event_timer timer(state, stream.get(), flusher);
    naive_call(c, in, hits.get(), buffers, stream.get());
  }
  set_floor_counter(state, in.host.floor_bytes());
}

/// g = s + t over 16-byte words.
__global__ void add_words_kernel(const uint4* s, const uint4* t, uint4* g, index_t words) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < words; i += stride) {
    const uint4 a = s[i], b = t[i];
    g[i] = make_uint4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
  }
}

template <class T>
void bm_copy(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const device_inputs<T> in(state.range(0));
  const stream_guard stream;
  const l2_flusher flusher;
  const index_t words = in.host.size() * static_cast<index_t>(sizeof(T)) / 16;
  int device = 0, sms = 0;
  BEVKD_CUDA_CHECK(cudaGetDevice(&device));
  BEVKD_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const index_t wanted = (words + block_threads - 1) / block_threads;
  const unsigned blocks = static_cast<unsigned>(wanted < 16 * sms ? wanted : 16 * sms);
  const auto* s = reinterpret_cast<const uint4*>(in.student.get());
  const auto* t = reinterpret_cast<const uint4*>(in.teacher.get());
  auto* g = reinterpret_cast<uint4*>(in.grad.get());
  for (auto _ : state) {
    cuda_event_timer timer(state, stream.get(), flusher);
    add_words_kernel<<<blocks, block_threads, 0, stream.get()>>>(s, t, g, words);
  }
  BEVKD_CUDA_CHECK(cudaGetLastError());
  set_floor_counter(state, in.host.floor_bytes());
}

template <class B>
B* with_timing(B* b) {
  b->ArgNames({"C"})->UseManualTime()->Unit(benchmark::kMillisecond);
  return b;
}

template <class B>
void with_sizes(B* b) {
  with_timing(b);
  for (index_t C : channel_counts) b->Args({C});
}

template <class T>
void register_dtype() {
  with_sizes(benchmark::RegisterBenchmark(bench_name<T>("copy").c_str(), bm_copy<T>));
  for (loss_case c : {loss_case::kl_softmax, loss_case::kl_sigmoid, loss_case::kl_spatial, loss_case::mse,
                      loss_case::mse_l2}) {
    with_sizes(benchmark::RegisterBenchmark(bench_name<T>(case_name(c)).c_str(), bm_fused<T>, c));
    with_sizes(benchmark::RegisterBenchmark(naive_name<T>(c).c_str(), bm_naive<T>, c));
  }
  // BEVFormer-base attention (as in losses.cpp): TSA on the C = 256 inputs, SCA on C = 768 with its own copy.
  for (auto [c, channels] : {std::pair{loss_case::attention_kl, attn_channels},
                             std::pair{loss_case::attention_sca, sca_channels}}) {
    with_timing(benchmark::RegisterBenchmark(bench_name<T>(case_name(c)).c_str(), bm_fused<T>, c))->Args({channels});
    with_timing(benchmark::RegisterBenchmark(naive_name<T>(c).c_str(), bm_naive<T>, c))->Args({channels});
  }
  with_timing(benchmark::RegisterBenchmark(bench_name<T>("copy").c_str(), bm_copy<T>))->Args({sca_channels});
  // Every warp team width on the short-row cases.
  using sized_case = std::pair<loss_case, index_t>;
  for (auto [c, channels] : {sized_case{loss_case::kl_softmax, 10}, sized_case{loss_case::kl_softmax, 64},
                             sized_case{loss_case::kl_softmax, 256}, sized_case{loss_case::mse_l2, 64},
                             sized_case{loss_case::attention_kl, attn_channels},
                             sized_case{loss_case::attention_sca, sca_channels}}) {
    const std::string name = bench_name<T>((std::string(case_name(c)) + "_width").c_str());
    auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_fused_width<T>, c);
    b->ArgNames({"C", "width"})->UseManualTime()->Unit(benchmark::kMillisecond);
    for (index_t width : {4, 8, 16, 32}) b->Args({channels, width});
    const std::string rows_name = bench_name<T>((std::string(case_name(c)) + "_rows").c_str());
    auto* r = benchmark::RegisterBenchmark(rows_name.c_str(), bm_fused_rows<T>, c);
    r->ArgNames({"C", "rows"})->UseManualTime()->Unit(benchmark::kMillisecond);
    for (index_t rows : {1, 2, 4, 8}) r->Args({channels, rows});
  }
}

const bool registered = [] {
  register_dtype<float>();
  register_dtype<bevkd::bfloat16>();
  return true;
}();

}  // namespace
