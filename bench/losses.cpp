// bevkd host benchmarks: fused response KL, feature MSE and attention KL against a copy of the same bytes and a naive multi-pass reference.
// SPDX-License-Identifier: Apache-2.0
//
// Every fused call is forward + backward (loss and student gradient in one call). Each case
// runs at B = 2, P = 200 x 200, C in {10, 64, 256}, fp32 and bf16, with 1 and 2 threads;
// the attention KL at BEVFormer-base sizes (N = 40000 queries, H = 8, K = 32) over S = 2
// timestamps (the C = 256 inputs) and over S = 6 cameras, joint and masked to the hit views
// (the C = 768 inputs); the BEV resample (see resample_benches). Next to them, three baselines
// with the same sizes and thread counts:
//   copy/<dtype>      the byte floor moved as plainly as possible: g = s + t over 64-bit
//                     words (STREAM's "add": read two arrays, write one), OpenMP static.
//   naive_*/<dtype>   the loss written the way PyTorch eager runs it: one pass per tensor
//                     op, each writing a full-size temporary, scalar libm std::exp/std::log,
//                     then autograd's backward passes. OpenMP over rows/elements with the
//                     same thread count as the fused call (PyTorch's CPU kernels are
//                     OpenMP-parallel too). bf16 inputs are first upcast to float buffers
//                     (`x.float()`), the gradient is downcast at the end.
//   exp_floor/<dtype> two exponentials per element as the softmax kernels take them
//                     (math::exp_nonpositive of a nonpositive argument, here -|x|; fp32 on
//                     AVX-512 builds the row blocks' base-2 exponential) and a sum, nothing
//                     else: the compute floor of every exact softmax loss.
// The feature MSE also runs on NCHW (mse_nchw, mse_l2_nchw: the same buffers read as [B, C, 1, P], PyTorch's layout of
// BEV features), its naive reference over the same strided rows.
// The cold cases (copy_cold, kl_softmax_cold at C = 64, attention_kl_cold, attention_sca_cold; fp32) run the
// targets' cases again with every cache swept before each iteration (cache_evictor, untimed): the tensors then
// come from memory, as in a trainer, where the other cases reuse what the previous iteration left in the caches
// (on a quiet host, a good part of the copy's 61 MB at C = 64 comes out of the 32 MiB L3).
// The paired cases (kl_softmax_paired at C = 64, attention_kl_paired, attention_sca_paired; fp32) run each target
// case in turn with its copy, one of each per iteration: time is the fused call's, the counter pct_of_copy the
// copies' time over the fused calls' (see bm_paired).
// The counter floor_bw is the byte floor (3 tensors once) divided by the time, for every
// entry, so floor_bw ratios are time ratios (the masked S = 6 case counts whole tensors,
// although its fused call reads only the hit cameras' keys). The naive benchmarks check
// once, untimed, that they compute the same loss as the fused call.

#include <benchmark/benchmark.h>

#include <bevkd/bevkd.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace bevkd_bench;

// ---------------------------------------------------------------------------------------
// Parallel loops of the baselines (the fused calls use host_exec's own).

template <class F>
void for_range(index_t count, int threads, F&& f) {
  (void)threads;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
  for (index_t i = 0; i < count; ++i) f(i);
}

double sum_of(const float* x, index_t count, int threads) {
  (void)threads;
  double total = 0;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : total)
#endif
  for (index_t i = 0; i < count; ++i) total += x[i];
  return total;
}

// Before each iteration of a cold case: one float written in every cache line of 128 MiB (four times a 32 MiB
// last-level cache), split over the case's threads so that each core's private caches are swept too. A trainer
// calls a loss after the layers that produced its inputs have gone through far more data than the caches hold, so
// the tensors arrive from memory, not from a cache that the benchmark's previous iteration left warm; the CUDA
// benchmarks flush the L2 cache before each iteration for the same reason.
class cache_evictor {
 public:
  cache_evictor() : buffer_(static_cast<std::size_t>(lines * floats_per_line), 0.0f) {}
  void run(int threads) {
    float* data = buffer_.data();
    for_range(lines, threads, [&](index_t i) { data[i * floats_per_line] += 1.0f; });
    benchmark::ClobberMemory();
  }

 private:
  static constexpr index_t floats_per_line = 16;
  static constexpr index_t lines = (index_t{128} << 20) / 64;
  host_buffer<float> buffer_;
};

// Sweeps the caches with `threads` threads, untimed, when the case is cold.
inline void evict_if_cold(benchmark::State& state, bool cold, int threads) {
  if (!cold) return;
  static cache_evictor evictor;
  state.PauseTiming();
  evictor.run(threads);
  state.ResumeTiming();
}

// Full-size float temporaries of the naive reference, allocated once (PyTorch's caching
// allocator reuses its blocks too), plus per-row temporaries.
struct naive_buffers {
  host_buffer<float> s32, t32, grad32, a, b, c, d, e, f, g, masked_s, masked_t;
  host_buffer<float> row_a, row_b, row_c;
  void reserve(index_t n, index_t rows) {
    for (auto* v : {&s32, &t32, &grad32, &a, &b, &c, &d, &e, &f, &g, &masked_s, &masked_t})
      v->assign(static_cast<std::size_t>(n), 0.0f);
    for (auto* v : {&row_a, &row_b, &row_c}) v->assign(static_cast<std::size_t>(rows), 0.0f);
  }
};

// log_softmax / softmax along rows (one op each: max, sum of exponentials, write).
void naive_log_softmax(const float* x, float* out, const row_layout& L, int threads) {
  for_range(L.rows, threads, [&](index_t r) {
    const float* row = x + L.base(r);
    float* o = out + L.base(r);
    float m = -INFINITY;
    for (index_t i = 0; i < L.n; ++i) m = std::max(m, row[i * L.stride]);
    double z = 0;
    for (index_t i = 0; i < L.n; ++i) z += std::exp(row[i * L.stride] - m);
    const float lz = static_cast<float>(std::log(z));
    for (index_t i = 0; i < L.n; ++i) o[i * L.stride] = row[i * L.stride] - m - lz;
  });
}
void naive_softmax(const float* x, float* out, const row_layout& L, int threads) {
  for_range(L.rows, threads, [&](index_t r) {
    const float* row = x + L.base(r);
    float* o = out + L.base(r);
    float m = -INFINITY;
    for (index_t i = 0; i < L.n; ++i) m = std::max(m, row[i * L.stride]);
    float z = 0;
    for (index_t i = 0; i < L.n; ++i) {
      const float e = std::exp(row[i * L.stride] - m);
      o[i * L.stride] = e;
      z += e;
    }
    const float inv = 1.0f / z;
    for (index_t i = 0; i < L.n; ++i) o[i * L.stride] *= inv;
  });
}
// Row sums of x into out[r].
void naive_row_sum(const float* x, float* out, const row_layout& L, int threads) {
  for_range(L.rows, threads, [&](index_t r) {
    const float* row = x + L.base(r);
    float z = 0;
    for (index_t i = 0; i < L.n; ++i) z += row[i * L.stride];
    out[r] = z;
  });
}
// out[element] = f(element, row sum) for every element of every row (a row-broadcast op).
template <class F>
void naive_row_broadcast(const row_layout& L, int threads, F&& f) {
  for_range(L.rows, threads, [&](index_t r) {
    const index_t base = L.base(r);
    for (index_t i = 0; i < L.n; ++i) f(base + i * L.stride, r);
  });
}

// F.kl_div(F.log_softmax(S), F.softmax(T), reduction='sum') / rows, then loss.backward().
double naive_softmax_kl(const float* s, const float* t, float* grad, const row_layout& L, naive_buffers& B,
                        int threads) {
  const index_t n = L.rows * L.n;
  float *ls = B.a.data(), *pt = B.b.data(), *xlogx = B.c.data(), *cross = B.d.data(), *el = B.e.data(),
        *g = B.f.data();
  naive_log_softmax(s, ls, L, threads);
  naive_softmax(t, pt, L, threads);
  // kl_div: xlogy(target, target) - target * input, elementwise, then sum.
  for_range(n, threads, [&](index_t i) { xlogx[i] = pt[i] > 0.0f ? pt[i] * std::log(pt[i]) : 0.0f; });
  for_range(n, threads, [&](index_t i) { cross[i] = pt[i] * ls[i]; });
  for_range(n, threads, [&](index_t i) { el[i] = xlogx[i] - cross[i]; });
  const double loss = sum_of(el, n, threads) / static_cast<double>(L.rows);
  // Backward: kl_div's input gradient -target * go, then log_softmax_backward g - exp(ls) * sum(g).
  const float go = 1.0f / static_cast<float>(L.rows);
  for_range(n, threads, [&](index_t i) { g[i] = -pt[i] * go; });
  naive_row_sum(g, B.row_a.data(), L, threads);
  const float* gsum = B.row_a.data();
  naive_row_broadcast(L, threads, [&](index_t i, index_t r) { grad[i] = g[i] - std::exp(ls[i]) * gsum[r]; });
  return loss;
}

// Joint attention KL over the cameras a query hits, the way a PyTorch user masks it: masked_fill
// both logit tensors with -1e30 where the camera is not hit (-inf would make kl_div's target *
// input 0 * -inf = NaN), the softmax KL over the S x K keys, then masked_fill the gradient with 0.
double naive_masked_attention_kl(const float* s, const float* t, float* grad, naive_buffers& B, int threads) {
  const row_layout L = sca_rows();
  const index_t n = L.rows * L.n;
  const std::uint8_t* hits = sca_hits().data();
  const auto hit = [hits](index_t i) { return hits[sca_query_of(i) * sca_sources + sca_camera_of(i)] != 0; };
  float *ms = B.masked_s.data(), *mt = B.masked_t.data();
  for_range(n, threads, [&](index_t i) { ms[i] = hit(i) ? s[i] : -1e30f; });
  for_range(n, threads, [&](index_t i) { mt[i] = hit(i) ? t[i] : -1e30f; });
  const double loss = naive_softmax_kl(ms, mt, grad, L, B, threads);
  for_range(n, threads, [&](index_t i) { grad[i] = hit(i) ? grad[i] : 0.0f; });
  return loss;
}

float log_sigmoid(float x) { return std::min(x, 0.0f) - std::log1p(std::exp(-std::fabs(x))); }
float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// Bernoulli KL with logsigmoid ops, mean over rows of the per-row sums, then backward.
double naive_sigmoid_kl(const float* s, const float* t, float* grad, const row_layout& L, naive_buffers& B,
                        int threads) {
  const index_t n = L.rows * L.n;
  float *pt = B.a.data(), *lpt = B.b.data(), *lnt = B.c.data(), *lps = B.d.data(), *lns = B.e.data(),
        *x = B.f.data(), *y = B.g.data();
  for_range(n, threads, [&](index_t i) { pt[i] = sigmoid(t[i]); });
  for_range(n, threads, [&](index_t i) { lpt[i] = log_sigmoid(t[i]); });
  for_range(n, threads, [&](index_t i) { lnt[i] = log_sigmoid(-t[i]); });
  for_range(n, threads, [&](index_t i) { lps[i] = log_sigmoid(s[i]); });
  for_range(n, threads, [&](index_t i) { lns[i] = log_sigmoid(-s[i]); });
  for_range(n, threads, [&](index_t i) { x[i] = lpt[i] - lps[i]; });
  for_range(n, threads, [&](index_t i) { x[i] = pt[i] * x[i]; });
  for_range(n, threads, [&](index_t i) { y[i] = lnt[i] - lns[i]; });
  for_range(n, threads, [&](index_t i) { y[i] = (1.0f - pt[i]) * y[i]; });
  for_range(n, threads, [&](index_t i) { x[i] = x[i] + y[i]; });
  const double loss = sum_of(x, n, threads) / static_cast<double>(L.rows);
  // Autograd: d/dlps = -pt go, logsigmoid backward; d/dlns = -(1 - pt) go, logsigmoid(-S) backward; add.
  const float go = 1.0f / static_cast<float>(L.rows);
  for_range(n, threads, [&](index_t i) { x[i] = -pt[i] * go; });
  for_range(n, threads, [&](index_t i) { x[i] = x[i] * (1.0f - sigmoid(s[i])); });
  for_range(n, threads, [&](index_t i) { y[i] = -(1.0f - pt[i]) * go; });
  for_range(n, threads, [&](index_t i) { y[i] = -y[i] * (1.0f - sigmoid(-s[i])); });
  for_range(n, threads, [&](index_t i) { grad[i] = x[i] + y[i]; });
  return loss;
}

// F.mse_loss(S, T) and its backward.
double naive_mse(const float* s, const float* t, float* grad, const row_layout& L, naive_buffers& B, int threads) {
  const index_t n = L.rows * L.n;
  float *diff = B.a.data(), *sq = B.b.data();
  for_range(n, threads, [&](index_t i) { diff[i] = s[i] - t[i]; });
  for_range(n, threads, [&](index_t i) { sq[i] = diff[i] * diff[i]; });
  const double loss = sum_of(sq, n, threads) / static_cast<double>(n);
  const float scale = 2.0f / static_cast<float>(n);
  for_range(n, threads, [&](index_t i) { grad[i] = scale * (s[i] - t[i]); });
  return loss;
}

// F.mse_loss(F.normalize(S, dim=-1), F.normalize(T, dim=-1)) and its backward through normalize(S).
double naive_normalized_mse(const float* s, const float* t, float* grad, const row_layout& L, naive_buffers& B,
                            int threads, float eps) {
  const index_t n = L.rows * L.n;
  float *sn = B.a.data(), *tn = B.b.data(), *diff = B.c.data(), *sq = B.d.data(), *gsn = B.e.data(),
        *tmp = B.f.data(), *gdirect = B.g.data();
  float *norm_s = B.row_a.data(), *norm_t = B.row_b.data(), *dot = B.row_c.data();
  // torch.linalg.norm: square, sum, sqrt (one fused reduction op per tensor).
  for_range(L.rows, threads, [&](index_t r) {
    const index_t base = L.base(r);
    float ss = 0, tt = 0;
    for (index_t i = 0; i < L.n; ++i) ss += s[base + i * L.stride] * s[base + i * L.stride];
    norm_s[r] = std::sqrt(ss);
    for (index_t i = 0; i < L.n; ++i) tt += t[base + i * L.stride] * t[base + i * L.stride];
    norm_t[r] = std::sqrt(tt);
  });
  naive_row_broadcast(L, threads, [&](index_t i, index_t r) { sn[i] = s[i] / std::max(norm_s[r], eps); });
  naive_row_broadcast(L, threads, [&](index_t i, index_t r) { tn[i] = t[i] / std::max(norm_t[r], eps); });
  for_range(n, threads, [&](index_t i) { diff[i] = sn[i] - tn[i]; });
  for_range(n, threads, [&](index_t i) { sq[i] = diff[i] * diff[i]; });
  const double loss = sum_of(sq, n, threads) / static_cast<double>(n);
  // Backward: mse -> gsn; division by d = max(norm, eps): direct term gsn / d and the norm's term.
  const float scale = 2.0f / static_cast<float>(n);
  for_range(n, threads, [&](index_t i) { gsn[i] = scale * diff[i]; });
  naive_row_broadcast(L, threads, [&](index_t i, index_t r) { gdirect[i] = gsn[i] / std::max(norm_s[r], eps); });
  for_range(n, threads, [&](index_t i) { tmp[i] = gsn[i] * s[i]; });
  naive_row_sum(tmp, dot, L, threads);
  for_range(L.rows, threads, [&](index_t r) {
    const float d = std::max(norm_s[r], eps);
    dot[r] = norm_s[r] > eps ? -dot[r] / (d * d) / norm_s[r] : 0.0f;  // d(loss)/d(norm) / norm
  });
  naive_row_broadcast(L, threads, [&](index_t i, index_t r) { tmp[i] = s[i] * dot[r]; });
  for_range(n, threads, [&](index_t i) { grad[i] = gdirect[i] + tmp[i]; });
  return loss;
}

// ---------------------------------------------------------------------------------------
// Cases (bench_common.hpp): the fused call and the naive reference.

template <class T>
double fused_call(loss_case c, bevkd::host_exec& exec, const host_inputs<T>& in, T* grad) {
  return fused_loss_call(exec, c, in.channels, in.student.data(), in.teacher.data(), grad, sca_hits().data()).loss;
}

template <class T>
double naive_call(loss_case c, const host_inputs<T>& in, T* grad, naive_buffers& B, int threads) {
  const index_t n = in.size();
  constexpr bool is_float = std::is_same<T, float>::value;
  const float* s = nullptr;
  const float* t = nullptr;
  float* g = nullptr;
  if constexpr (is_float) {
    s = in.student.data();
    t = in.teacher.data();
    g = grad;
  } else {  // S.float(), T.float(); the gradient is computed in float and downcast at the end
    float* s32 = B.s32.data();
    float* t32 = B.t32.data();
    for_range(n, threads, [&](index_t i) { s32[i] = static_cast<float>(in.student[i]); });
    for_range(n, threads, [&](index_t i) { t32[i] = static_cast<float>(in.teacher[i]); });
    s = s32;
    t = t32;
    g = B.grad32.data();
  }
  const index_t C = in.channels;
  double loss = 0;
  switch (c) {
    case loss_case::kl_softmax: loss = naive_softmax_kl(s, t, g, pillar_rows(C), B, threads); break;
    case loss_case::kl_sigmoid: loss = naive_sigmoid_kl(s, t, g, pillar_rows(C), B, threads); break;
    case loss_case::kl_spatial: loss = naive_softmax_kl(s, t, g, channel_rows(C), B, threads); break;
    case loss_case::attention_kl: loss = naive_softmax_kl(s, t, g, attention_rows(), B, threads); break;
    case loss_case::attention_sca: loss = naive_masked_attention_kl(s, t, g, B, threads); break;
    case loss_case::mse: loss = naive_mse(s, t, g, pillar_rows(C), B, threads); break;
    case loss_case::mse_nchw: loss = naive_mse(s, t, g, nchw_pillar_rows(C), B, threads); break;
    case loss_case::mse_l2_nchw:
      loss = naive_normalized_mse(s, t, g, nchw_pillar_rows(C), B, threads, static_cast<float>(l2_eps));
      break;
    default: loss = naive_normalized_mse(s, t, g, pillar_rows(C), B, threads, static_cast<float>(l2_eps)); break;
  }
  if constexpr (!is_float) {
    for_range(n, threads, [&](index_t i) { grad[i] = bevkd::store_from_accum<T>(g[i]); });
  }
  return loss;
}

// ---------------------------------------------------------------------------------------
// Benchmarks. Arguments: C, threads.

template <class T>
void bm_fused(benchmark::State& state, loss_case c, bool cold) {
  const host_inputs<T>& in = inputs_for<T>(state.range(0));
  host_buffer<T> grad(static_cast<std::size_t>(in.size()));
  const int threads = static_cast<int>(state.range(1));
  bevkd::host_exec exec(threads);
  for (auto _ : state) {
    evict_if_cold(state, cold, threads);
    double loss = fused_call(c, exec, in, grad.data());
    benchmark::DoNotOptimize(loss);
    benchmark::ClobberMemory();
  }
  set_floor_counter(state, in.floor_bytes());
}

template <class T>
void bm_naive(benchmark::State& state, loss_case c) {
  const host_inputs<T>& in = inputs_for<T>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  host_buffer<T> grad(static_cast<std::size_t>(in.size()));
  naive_buffers buffers;
  buffers.reserve(in.size(), std::max({batch * std::max(pillars, in.channels), attention_rows().rows, sca_rows().rows}));
  {  // Untimed check: the reference computes what the fused call computes.
    bevkd::host_exec exec(threads);
    const double fused = fused_call(c, exec, in, grad.data());
    const double naive = naive_call(c, in, grad.data(), buffers, threads);
    if (!(std::fabs(fused - naive) <= 1e-3 * std::fabs(fused) + 1e-6)) {
      state.SkipWithError(("naive loss " + std::to_string(naive) + " != fused " + std::to_string(fused)).c_str());
      return;
    }
  }
  for (auto _ : state) {
    double loss = naive_call(c, in, grad.data(), buffers, threads);
    benchmark::DoNotOptimize(loss);
    benchmark::ClobberMemory();
  }
  set_floor_counter(state, in.floor_bytes());
}

// STREAM "add" over 64-bit words of a case's byte floor: reads two arrays and writes a third, as a fused call reads
// student and teacher and writes the gradient; its own copies of the inputs, so that it never finds a fused call's
// lines in a cache.
template <class T>
class floor_copy {
 public:
  explicit floor_copy(const host_inputs<T>& in)
      : words_(in.size() * static_cast<index_t>(sizeof(T)) / 8),
        s_(static_cast<std::size_t>(words_)),
        t_(s_.size()),
        g_(s_.size()) {
    std::memcpy(s_.data(), in.student.data(), s_.size() * 8);
    std::memcpy(t_.data(), in.teacher.data(), t_.size() * 8);
  }

  // One pass over the floor.
  void operator()(int threads) {
    const std::uint64_t* BEVKD_RESTRICT sp = s_.data();
    const std::uint64_t* BEVKD_RESTRICT tp = t_.data();
    std::uint64_t* BEVKD_RESTRICT gp = g_.data();
    for_range(words_, threads, [&](index_t i) { gp[i] = sp[i] + tp[i]; });
  }

 private:
  index_t words_;
  host_buffer<std::uint64_t> s_, t_, g_;
};

template <class T>
void bm_copy(benchmark::State& state, bool cold) {
  const host_inputs<T>& in = inputs_for<T>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  floor_copy<T> copy(in);
  for (auto _ : state) {
    evict_if_cold(state, cold, threads);
    copy(threads);
    benchmark::ClobberMemory();
  }
  set_floor_counter(state, in.floor_bytes());
}

// A fused call and the copy of its bytes in turn, one of each per iteration (family "<case>_paired").
//
// Why: the separate families time the fused call and the copy seconds apart, and a shared host's
// speed changes between seconds: in one process of the target cases (2026-11-29, Cascade Lake VM)
// the C = 64 KL took 7.24 ms in every repetition while it took 4.5-5.2 ms in the next, the copy and
// the naive reference unchanged. Timed in alternation, both see the same seconds. The iteration's
// time is the fused call's (manual time); the counter pct_of_copy is the copies' total time over
// the fused calls' total, in percent: the share of the copy's bandwidth the fused call reached.
template <class T>
void bm_paired(benchmark::State& state, loss_case c) {
  using clock = std::chrono::steady_clock;
  const host_inputs<T>& in = inputs_for<T>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  host_buffer<T> grad(static_cast<std::size_t>(in.size()));
  bevkd::host_exec exec(threads);
  floor_copy<T> copy(in);
  double copy_seconds = 0, fused_seconds = 0;
  for (auto _ : state) {
    const auto start = clock::now();
    copy(threads);
    benchmark::ClobberMemory();
    const auto copied = clock::now();
    double loss = fused_call(c, exec, in, grad.data());
    benchmark::DoNotOptimize(loss);
    benchmark::ClobberMemory();
    const double fused = std::chrono::duration<double>(clock::now() - copied).count();
    state.SetIterationTime(fused);
    fused_seconds += fused;
    copy_seconds += std::chrono::duration<double>(copied - start).count();
  }
  set_floor_counter(state, in.floor_bytes());
  state.counters["copy_ms"] = benchmark::Counter(1e3 * copy_seconds, benchmark::Counter::kAvgIterations);
  state.counters["pct_of_copy"] = fused_seconds > 0 ? 100 * copy_seconds / fused_seconds : 0;
}

#if defined(BEVKD_HOST_AVX512)
// The sum of the fp32 row blocks' exponentials of -|x| over 4096 floats of s and of t from i: 2^(-|x| log2 e) by
// avx512::exp2_of_shift, as those blocks take e^((x - max) / tau).
float row_block_exp_sum(const float* s, const float* t, index_t i) {
  const bevkd::detail::avx512::exp2_of_shift exp2(bevkd::detail::exp_constants::log2e);
  const __m512 zero = _mm512_setzero_ps();
  const auto exp_of_minus_abs = [&](const float* x) {
    const __m512 v = _mm512_loadu_ps(x);
    // The masked form with every lane set: GCC 12 warns on the plain one's placeholder operand (its bug 105593).
    const __m512 minus_abs = _mm512_mask_min_ps(v, bevkd::detail::avx512::all_lanes, v, _mm512_sub_ps(zero, v));
    return exp2(minus_abs).value;
  };
  __m512 sum = zero;
  for (index_t j = i; j < i + 4096; j += 16)
    sum = _mm512_add_ps(sum, _mm512_add_ps(exp_of_minus_abs(s + j), exp_of_minus_abs(t + j)));
  float lanes[16];
  _mm512_storeu_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  return total;
}
#endif

// The compute floor of a softmax KL: the two exponentials per element (teacher, student) that it
// cannot avoid, as its kernels take them (bevkd::math::exp_nonpositive; fp32 on AVX-512 builds: the
// row blocks' base-2 exponential), summed, and nothing else: no maxima, logs, divisions or stores.
// Next to copy/ it shows how much of the copy bandwidth any exact fused softmax loss can reach here.
template <class T>
void bm_exp_floor(benchmark::State& state) {
  const host_inputs<T>& in = inputs_for<T>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  constexpr index_t block = 4096, lanes = 16;
  const index_t blocks = in.size() / block;  // every size here is a multiple of 4096
  std::vector<float> block_sums(static_cast<std::size_t>(blocks));
  const T* s = in.student.data();
  const T* t = in.teacher.data();
  for (auto _ : state) {
    for_range(blocks, threads, [&](index_t b) {
#if defined(BEVKD_HOST_AVX512)
      if constexpr (std::is_same<T, float>::value) {
        block_sums[static_cast<std::size_t>(b)] = row_block_exp_sum(s, t, b * block);
        return;
      }
#endif
      float partial[lanes] = {};
      for (index_t i = b * block; i < (b + 1) * block; i += lanes)
        for (index_t l = 0; l < lanes; ++l)
          partial[l] += bevkd::math::exp_nonpositive(-std::fabs(bevkd::load_as_accum(s[i + l]))) +
                        bevkd::math::exp_nonpositive(-std::fabs(bevkd::load_as_accum(t[i + l])));
      float total = 0;
      for (float p : partial) total += p;
      block_sums[static_cast<std::size_t>(b)] = total;
    });
    benchmark::DoNotOptimize(block_sums.data());
    benchmark::ClobberMemory();
  }
  set_floor_counter(state, in.floor_bytes());
}

// Manual: the benchmark times its iterations itself (bm_paired); else wall time.
template <class B>
B* with_timing(B* b, bool manual = false) {
  // The minimum over repetitions is the figure least disturbed by other work on a shared machine.
  b->ArgNames({"C", "threads"})->Unit(benchmark::kMillisecond);
  if (manual)
    b->UseManualTime();
  else
    b->UseRealTime();
  b->ComputeStatistics("min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); });
  return b;
}

template <class B>
void with_sizes(B* b) {
  with_timing(b);
  for (index_t C : channel_counts)
    for (int threads : {1, 2}) b->Args({C, threads});
}

template <class T>
void register_dtype() {
  constexpr bool warm = false;
  with_sizes(benchmark::RegisterBenchmark(bench_name<T>("copy").c_str(), bm_copy<T>, warm));
  with_sizes(benchmark::RegisterBenchmark(bench_name<T>("exp_floor").c_str(), bm_exp_floor<T>));
  for (loss_case c : {loss_case::kl_softmax, loss_case::kl_sigmoid, loss_case::kl_spatial, loss_case::mse,
                      loss_case::mse_l2, loss_case::mse_nchw, loss_case::mse_l2_nchw}) {
    with_sizes(benchmark::RegisterBenchmark(bench_name<T>(case_name(c)).c_str(), bm_fused<T>, c, warm));
    with_sizes(benchmark::RegisterBenchmark(naive_name<T>(c).c_str(),
                                            bm_naive<T>, c));
  }
  // BEVFormer-base attention (N = 40000, H = 8, K = 32): temporal self-attention (S = 2) on the
  // C = 256 inputs, spatial cross-attention (S = 6, masked) on C = 768 with its own copy baseline.
  for (auto [c, channels] : {std::pair{loss_case::attention_kl, attn_channels},
                             std::pair{loss_case::attention_sca, sca_channels}}) {
    auto* fused = benchmark::RegisterBenchmark(bench_name<T>(case_name(c)).c_str(), bm_fused<T>, c, warm);
    auto* naive = benchmark::RegisterBenchmark(naive_name<T>(c).c_str(),
                                               bm_naive<T>, c);
    for (auto* b : {fused, naive}) {
      with_timing(b);
      for (int threads : {1, 2}) b->Args({channels, threads});
    }
  }
  auto* sca_copy = with_timing(benchmark::RegisterBenchmark(bench_name<T>("copy").c_str(), bm_copy<T>, warm));
  for (int threads : {1, 2}) sca_copy->Args({sca_channels, threads});
}

// The targets' cases, fp32: the KL at C = 64 and both attention cases, each with its channel count.
constexpr std::pair<loss_case, index_t> target_cases[] = {{loss_case::kl_softmax, 64},
                                                          {loss_case::attention_kl, attn_channels},
                                                          {loss_case::attention_sca, sca_channels}};

// Name of the fp32 family of case c with a suffix.
std::string suffixed_name(loss_case c, const char* suffix) {
  return bench_name<float>((std::string(case_name(c)) + suffix).c_str());
}

// The targets' cases and their copies again, each iteration starting with the tensors out of every cache
// (cache_evictor): families "<case>_cold"; and each case in turn with its copy: families "<case>_paired".
void register_targets() {
  constexpr bool cold = true;
  for (auto [c, channels] : target_cases) {
    auto* fused = benchmark::RegisterBenchmark(suffixed_name(c, "_cold").c_str(), bm_fused<float>, c, cold);
    auto* copy = benchmark::RegisterBenchmark(bench_name<float>("copy_cold").c_str(), bm_copy<float>, cold);
    auto* paired = benchmark::RegisterBenchmark(suffixed_name(c, "_paired").c_str(), bm_paired<float>, c);
    with_timing(paired, true);
    for (auto* b : {fused, copy}) with_timing(b);
    for (auto* b : {fused, copy, paired})
      for (int threads : {1, 2}) b->Args({channels, threads});
  }
}

// ---------------------------------------------------------------------------------------
// BEV resample, fp32, forward and backward: the host's per-pixel loops against the device's
// partition run on the CPU (one element per call, taps recomputed each time: "naive") and a
// copy of the byte floor (the read grid once, the written grid once).

struct resample_bench {
  const char* name;
  bevkd::resample_mode mode;
  index_t from, to, channels;  // square grids from x from -> to x to
};
// The teacher's BEVFormer-base TSA maps (H*S*K = 512) onto the student's grid; a 50x50 map up to 200x200.
const resample_bench resample_benches[] = {{"area_200_to_50", bevkd::resample_mode::area, 200, 50, 512},
                                           {"bilinear_50_to_200", bevkd::resample_mode::bilinear, 50, 200, 64}};

// The device's partition on the host: one element per call, OpenMP over elements.
struct element_exec {
  int threads;
  template <class F>
  void parallel_for(index_t count, const F& f) const {
    for_range(count, threads, f);
  }
};

// Arguments: case index, backward (0/1), threads.
void bm_resample(benchmark::State& state, bool per_element) {
  const resample_bench& rb = resample_benches[state.range(0)];
  const bool backward = state.range(1) != 0;
  const int threads = static_cast<int>(state.range(2));
  const index_t small = batch * rb.from * rb.from * rb.channels, large = batch * rb.to * rb.to * rb.channels;
  std::vector<float> in(static_cast<std::size_t>(small)), out(static_cast<std::size_t>(large));
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  for (float& v : in) v = value(gen);
  for (float& v : out) v = value(gen);
  const auto in_grid = [&](auto* p) { return bevkd::grid_nhwc(p, batch, rb.from, rb.from, rb.channels); };
  const auto out_grid = [&](auto* p) { return bevkd::grid_nhwc(p, batch, rb.to, rb.to, rb.channels); };
  const bevkd::bev_resample op({rb.mode});
  bevkd::host_exec host(threads);
  element_exec elements{threads};
  const auto call = [&](auto& exec) {
    if (backward)
      op.backward(exec, out_grid(static_cast<const float*>(out.data())), in_grid(in.data()));
    else
      op.forward(exec, in_grid(static_cast<const float*>(in.data())), out_grid(out.data()));
  };
  for (auto _ : state) {
    if (per_element)
      call(elements);
    else
      call(host);
    benchmark::ClobberMemory();
  }
  set_floor_counter(state, static_cast<double>(small + large) * sizeof(float));
}

// A copy of the resample's byte floor: (small + large) / 2 floats read and as many written.
void bm_resample_copy(benchmark::State& state) {
  const resample_bench& rb = resample_benches[state.range(0)];
  const int threads = static_cast<int>(state.range(2));
  const index_t n = batch * (rb.from * rb.from + rb.to * rb.to) * rb.channels / 2;
  std::vector<float> src(static_cast<std::size_t>(n), 1.0f), dst(src.size());
  const float* BEVKD_RESTRICT sp = src.data();
  float* BEVKD_RESTRICT dp = dst.data();
  for (auto _ : state) {
    for_range(n, threads, [&](index_t i) { dp[i] = sp[i]; });
    benchmark::ClobberMemory();
  }
  set_floor_counter(state, 2.0 * static_cast<double>(n) * sizeof(float));
}

void register_resample() {
  const auto sizes = [](benchmark::internal::Benchmark* b, bool directions) {
    b->ArgNames({"case", "backward", "threads"})->UseRealTime()->Unit(benchmark::kMillisecond);
    b->ComputeStatistics("min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); });
    for (index_t k = 0; k < 2; ++k)
      for (index_t backward = 0; backward < (directions ? 2 : 1); ++backward)
        for (int threads : {1, 2}) b->Args({k, backward, threads});
  };
  sizes(benchmark::RegisterBenchmark("resample/f32", bm_resample, false), true);
  sizes(benchmark::RegisterBenchmark("naive_resample/f32", bm_resample, true), true);
  sizes(benchmark::RegisterBenchmark("copy_resample/f32", bm_resample_copy), false);
}

const bool registered = [] {
  register_dtype<float>();
  register_dtype<bevkd::bfloat16>();
  register_targets();
  register_resample();
  return true;
}();

}  // namespace
