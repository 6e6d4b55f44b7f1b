// bevkd benchmarks: problem sizes, random inputs and the byte-floor counter shared by the host and CUDA benchmarks.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <benchmark/benchmark.h>

#include <bevkd/core/dtype.hpp>
#include <bevkd/core/view.hpp>
#include <bevkd/losses/attention_distill.hpp>
#include <bevkd/losses/feature_mse.hpp>
#include <bevkd/losses/response_kl.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace bevkd_bench {

using bevkd::index_t;

/// @brief Batch of every benchmark (DESIGN.md's performance target: B = 2).
constexpr index_t batch = 2;
/// @brief Pillars of a 200x200 BEV grid.
constexpr index_t grid_side = 200;
/// @brief P = 200 * 200.
constexpr index_t pillars = grid_side * grid_side;
/// @brief Channel counts measured: classes (10), the target's 64, wide features (256).
constexpr index_t channel_counts[] = {10, 64, 256};

/// @brief Allocator of 64-byte-aligned storage, as PyTorch's CPU allocator hands out tensors (c10 aligns to 64
/// bytes): a row of 64 floats is then four cache lines, not five, and no 64-byte vector straddles two lines.
///
/// std::vector's default allocation of these sizes sits 16 bytes past a page (glibc's mmap
/// header), as the benchmarks' buffers did up to the runs at 1c7b7a3 (bench/RESULTS.md).
/// Measured in a standalone driver (one thread, native, 80000 x 64 fp32 rows): the fused KL
/// 4.24-4.65 ms from aligned buffers, 4.86-4.93 ms from buffers 16 bytes past a line, the copy
/// loop 2.31-2.43 against 2.19-2.28 ms; in this benchmark binary, on a busy host, both within
/// noise.
template <class T>
struct aligned_allocator {
  using value_type = T;                         ///< Element type.
  static constexpr std::size_t alignment = 64;  ///< Bytes.

  aligned_allocator() = default;
  /// @brief Rebinding copy.
  template <class U>
  aligned_allocator(const aligned_allocator<U>&) {}
  /// @brief Storage for n elements.
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{alignment})); }
  /// @brief Frees what allocate returned.
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t{alignment}); }
  /// @brief Stateless: any two are interchangeable.
  template <class U>
  bool operator==(const aligned_allocator<U>&) const {
    return true;
  }
  /// @brief Stateless: any two are interchangeable.
  template <class U>
  bool operator!=(const aligned_allocator<U>&) const {
    return false;
  }
};

/// @brief A benchmark's host tensor storage (64-byte aligned).
template <class T>
using host_buffer = std::vector<T, aligned_allocator<T>>;

/// @brief Short dtype name used in benchmark names.
template <class T>
const char* dtype_label() {
  return bevkd::dtype_name(bevkd::dtype_of<T>::value);
}

/// @brief Student and teacher tensors [B, P, C] (NHWC, contiguous) with random logits-scaled values.
template <class T>
struct host_inputs {
  index_t channels = 0;     ///< C.
  host_buffer<T> student;   ///< Student logits / features.
  host_buffer<T> teacher;   ///< Teacher logits / features.

  /// @brief Elements of one tensor.
  index_t size() const { return batch * pillars * channels; }
  /// @brief Byte floor of a fused call: student and teacher read once, the gradient written once.
  double floor_bytes() const { return 3.0 * static_cast<double>(size()) * static_cast<double>(sizeof(T)); }
};

/// @brief Inputs for C channels, generated once per (T, C) and reused by every benchmark of that size.
///
/// Values are N(0, 3^2) (the spread of detection-head logits), teacher and student
/// independent, never exactly zero, rounded to T.
template <class T>
const host_inputs<T>& inputs_for(index_t channels) {
  static std::map<index_t, std::unique_ptr<host_inputs<T>>> cache;
  auto& slot = cache[channels];
  if (!slot) {
    slot = std::make_unique<host_inputs<T>>();
    slot->channels = channels;
    const std::size_t n = static_cast<std::size_t>(slot->size());
    slot->student.resize(n);
    slot->teacher.resize(n);
    std::mt19937 gen(static_cast<std::mt19937::result_type>(1234 + channels));
    std::normal_distribution<float> logit(0.0f, 3.0f);
    auto draw = [&] {
      const float x = logit(gen);
      return bevkd::store_from_accum<T>(x == 0.0f ? 0.5f : x);
    };
    for (std::size_t i = 0; i < n; ++i) slot->student[i] = draw();
    for (std::size_t i = 0; i < n; ++i) slot->teacher[i] = draw();
  }
  return *slot;
}

/// @brief Sets the decimal bytes-per-second counter of the byte floor (shown as e.g. "25.1G/s").
inline void set_floor_counter(benchmark::State& state, double floor_bytes) {
  state.counters["floor_bw"] =
      benchmark::Counter(floor_bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::OneK::kIs1000);
}

/// @brief Rows of a [B, P, C] NHWC tensor (or an attention tensor): element i of row r is at base(r) + i * stride.
struct row_layout {
  index_t rows, n, inner, outer_stride, inner_stride, stride;
  /// @brief Offset of row r's element 0: (r / inner) * outer_stride + (r % inner) * inner_stride.
  BEVKD_HOST_DEVICE index_t base(index_t r) const { return (r / inner) * outer_stride + (r % inner) * inner_stride; }
  /// @brief The row an element offset belongs to.
  BEVKD_HOST_DEVICE index_t row_of(index_t offset) const {
    return stride == 1 ? offset / n : (offset / outer_stride) * inner + offset % stride;
  }
};

/// @brief Softmax over C per pillar: rows (b, p).
inline row_layout pillar_rows(index_t channels) {
  return {batch * pillars, channels, pillars, pillars * channels, channels, 1};
}
/// @brief Rows (b, p) of C channels on NCHW: each pillar's channels P apart.
inline row_layout nchw_pillar_rows(index_t channels) {
  return {batch * pillars, channels, pillars, pillars * channels, 1, pillars};
}
/// @brief Softmax over P per channel (CWD): rows (b, c).
inline row_layout channel_rows(index_t channels) {
  return {batch * channels, pillars, channels, pillars * channels, 1, channels};
}

/// @brief BEVFormer-base attention: N = 40000 queries, H = 8 heads, K = 4 levels x 8 points.
constexpr index_t attn_queries = 40000, attn_heads = 8, attn_keys = 32;
/// @brief Temporal self-attention: S = 2 timestamps, per_source rows of K contiguous keys; N*H*S*K = 2 * 40000 * 256,
/// so it uses the C = 256 inputs and copy baseline.
constexpr index_t attn_sources = 2;
/// @brief The C whose inputs hold the temporal self-attention tensors.
constexpr index_t attn_channels = attn_heads * attn_sources * attn_keys / batch;
static_assert(attn_queries == pillars && attn_channels == 256, "attention sizes share the C = 256 inputs");
/// @brief Rows (n, h, s) of the temporal self-attention.
inline row_layout attention_rows() { return {attn_queries * attn_heads * attn_sources, attn_keys, 1, attn_keys, 0, 1}; }

/// @brief Spatial cross-attention: S = 6 cameras, a joint softmax over the S x K keys of the cameras a query's pillar
/// hits (sca_hits()); N*H*S*K = 2 * 40000 * 768, so it uses the C = 768 inputs.
constexpr index_t sca_sources = 6;
/// @brief The C whose inputs hold the spatial cross-attention tensors.
constexpr index_t sca_channels = attn_queries * attn_heads * sca_sources * attn_keys / (batch * pillars);
static_assert(sca_channels * batch * pillars == attn_queries * attn_heads * sca_sources * attn_keys,
              "spatial cross-attention sizes fill whole C = 768 inputs");
/// @brief Rows (n, h) of the spatial cross-attention, S x K keys each.
inline row_layout sca_rows() {
  return {attn_queries * attn_heads, sca_sources * attn_keys, 1, sca_sources * attn_keys, 0, 1};
}
/// @brief The camera of element i of the [N, H, 6, K] spatial cross-attention tensor.
BEVKD_HOST_DEVICE index_t sca_camera_of(index_t i) { return (i / attn_keys) % sca_sources; }
/// @brief The query of element i of the [N, H, 6, K] spatial cross-attention tensor.
BEVKD_HOST_DEVICE index_t sca_query_of(index_t i) { return i / (attn_heads * sca_sources * attn_keys); }

/// @brief The [N, S] camera-hit mask: per query 1, 2 or 3 adjacent cameras (probabilities 1/4, 1/2, 1/4), fixed seed.
inline const std::vector<std::uint8_t>& sca_hits() {
  static const std::vector<std::uint8_t> hits = [] {
    std::vector<std::uint8_t> m(static_cast<std::size_t>(attn_queries * sca_sources), 0);
    std::mt19937 gen(77);
    std::discrete_distribution<int> extra_views({1, 2, 1});
    std::uniform_int_distribution<index_t> first_view(0, sca_sources - 1);
    for (index_t n = 0; n < attn_queries; ++n) {
      const int views = 1 + extra_views(gen);
      const index_t first = first_view(gen);
      for (int v = 0; v < views; ++v) m[static_cast<std::size_t>(n * sca_sources + (first + v) % sca_sources)] = 1;
    }
    return m;
  }();
  return hits;
}

/// @brief The cases both benchmark binaries run; one enum drives the fused call, the naive reference and the names.
enum class loss_case {
  kl_softmax,
  kl_sigmoid,
  kl_spatial,
  mse,
  mse_l2,
  attention_kl,
  attention_sca,
  mse_nchw,
  mse_l2_nchw
};

/// @brief True for the feature MSE's cases on NCHW [B, C, 1, P] (PyTorch's layout of BEV features): the same buffers
/// read as NCHW, so that each pillar's channels lie P apart.
inline bool nchw_case(loss_case c) { return c == loss_case::mse_nchw || c == loss_case::mse_l2_nchw; }

/// @brief Family name of a case in benchmark names.
inline const char* case_name(loss_case c) {
  switch (c) {
    case loss_case::kl_softmax: return "kl_softmax";
    case loss_case::kl_sigmoid: return "kl_sigmoid";
    case loss_case::kl_spatial: return "kl_spatial";
    case loss_case::attention_kl: return "attention_kl";
    case loss_case::attention_sca: return "attention_sca";
    case loss_case::mse: return "mse";
    case loss_case::mse_nchw: return "mse_nchw";
    case loss_case::mse_l2_nchw: return "mse_l2_nchw";
    default: return "mse_l2";
  }
}

/// @brief eps of the normalised MSE cases.
constexpr double l2_eps = 1e-12;

/// @brief The fused call of a case (loss and gradient, reduction mean) on the [B, P, C] NHWC buffers of C channels.
///
/// The attention cases read the same buffers as [N, H, S, K]: TSA per_source over S = 2 (C = 256), SCA joint over
/// the hit cameras of S = 6 (C = 768). `hits` is the [N, 6] camera mask in the executor's memory (SCA only).
template <class Exec, class T>
typename Exec::result_type fused_loss_call(Exec& exec, loss_case c, index_t channels, const T* student,
                                           const T* teacher, T* grad, const std::uint8_t* hits) {
  if (c == loss_case::attention_kl || c == loss_case::attention_sca) {
    const bool sca = c == loss_case::attention_sca;
    const index_t sources = sca ? sca_sources : attn_sources;
    const auto view = [sources](auto* p) {
      using U = std::remove_pointer_t<decltype(p)>;
      return bevkd::contiguous_view<U, 4>(p, {attn_queries, attn_heads, sources, attn_keys});
    };
    bevkd::attention_distill_options opts;
    bevkd::attention_io<bevkd::accum_t<T>> io;
    if (sca) {
      opts.normalize = bevkd::attention_normalize::joint;
      io.source_mask = bevkd::contiguous_view<const std::uint8_t, 2>(hits, {attn_queries, sca_sources});
    }
    return bevkd::attention_distill(opts)(exec, view(student), view(teacher), view(grad), io);
  }
  const auto view = [&](auto* p) {
    using U = std::remove_pointer_t<decltype(p)>;
    return nchw_case(c) ? bevkd::bev_nchw<U>(p, batch, channels, 1, pillars)
                        : bevkd::bev_nhwc<U>(p, batch, 1, pillars, channels);
  };
  const auto s = view(student), t = view(teacher);
  const auto g = view(grad);
  if (c == loss_case::mse || c == loss_case::mse_l2 || nchw_case(c)) {
    bevkd::feature_mse_options opts;
    const bool plain = c == loss_case::mse || c == loss_case::mse_nchw;
    opts.normalize = plain ? bevkd::mse_normalize::none : bevkd::mse_normalize::per_pillar_l2;
    opts.eps = l2_eps;
    opts.reduce = bevkd::reduction::mean;
    return bevkd::feature_mse(opts)(exec, s, t, g);
  }
  const bevkd::kl_mode mode = c == loss_case::kl_softmax   ? bevkd::kl_mode::softmax
                              : c == loss_case::kl_sigmoid ? bevkd::kl_mode::sigmoid
                                                           : bevkd::kl_mode::spatial;
  return bevkd::response_kl({mode, 1.0, bevkd::reduction::mean})(exec, s, t, g);
}

/// @brief "family/dtype" benchmark name; Google Benchmark appends "/C:../threads:..".
template <class T>
std::string bench_name(const char* family) {
  return std::string(family) + "/" + dtype_label<T>();
}

/// @brief "naive_family/dtype" name of a case's naive reference.
template <class T>
std::string naive_name(loss_case c) {
  return bench_name<T>((std::string("naive_") + case_name(c)).c_str());
}

}  // namespace bevkd_bench
