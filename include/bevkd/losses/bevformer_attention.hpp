// bevkd adapters for BEVFormer's attention tensors: temporal self-attention views and spatial cross-attention gathers.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>

#include "../core/config.hpp"
#include "../core/detail/bev_rows.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "attention_distill.hpp"

namespace bevkd {

// ---------------------------------------------------------------------------------------------
// Temporal self-attention (TSA): every BEV query attends to the previous and the current BEV,
// S = 2 sources (0: previous, 1: current), K = num_levels x num_points keys.
// ---------------------------------------------------------------------------------------------

/// @brief [bs * num_query, H, 2, L*P] view of TSA logits `attention_weights(query).view(bs, nq, H, 2, L*P)` (before softmax).
template <class T>
attention_view<T> bevformer_tsa_logits(T* data, index_t bs, index_t num_query, index_t heads, index_t levels,
                                       index_t points) {
  return contiguous_view<T, 4>(data, {bs * num_query, heads, 2, levels * points});
}

/// @brief [bs * num_query, H, 2, L*P] view of TSA weights after BEVFormer's softmax and permute: [bs*2, nq, H, L, P], queue outermost.
template <class T>
attention_view<T> bevformer_tsa_weights(T* data, index_t bs, index_t num_query, index_t heads, index_t levels,
                                        index_t points) {
  const index_t k = levels * points, n = bs * num_query;
  return make_view<T, 4>(data, {n, heads, 2, k}, {heads * k, k, n * heads * k, 1}, 2 * n * heads * k);
}

/// @brief [bs * num_query, H, 2, L*P, 2] view of TSA sampling locations [bs*2, nq, H, L, P, 2] (queue outermost).
template <class T>
strided_view<T, 5> bevformer_tsa_locations(T* data, index_t bs, index_t num_query, index_t heads, index_t levels,
                                           index_t points) {
  const index_t k = levels * points, n = bs * num_query;
  return make_view<T, 5>(data, {n, heads, 2, k, 2}, {heads * k * 2, k * 2, n * heads * k * 2, 2, 1},
                         2 * n * heads * k * 2);
}

namespace detail {

/// @brief Fills the TSA source mask: the previous BEV (source 0) is invalid where a sequence starts.
struct tsa_mask_fill {
  const std::uint8_t* has_previous;  ///< [bs]: nonzero where a previous BEV exists.
  std::uint8_t* mask;                ///< [bs * num_query, 2], contiguous.
  index_t num_query;                 ///< Queries per batch element.
  /// @brief Writes both sources of query i.
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    mask[2 * i] = has_previous[i / num_query] != 0 ? 1 : 0;
    mask[2 * i + 1] = 1;
  }
};

}  // namespace detail

/// @brief Writes the [bs * num_query, 2] TSA source mask from a per-sample "has a previous frame" flag (memory of exec's side).
template <class Exec>
void bevformer_tsa_mask(Exec& exec, const std::uint8_t* has_previous, index_t bs, index_t num_query, std::uint8_t* mask) {
  detail::require(bs >= 0 && num_query >= 0, "bs", "and num_query must be >= 0");
  detail::require(bs * num_query == 0 || (has_previous && mask), "mask", "and has_previous must not be null");
  exec.parallel_for(bs * num_query, detail::tsa_mask_fill{has_previous, mask, num_query});
}

// ---------------------------------------------------------------------------------------------
// Spatial cross-attention (SCA): BEVFormer rebatches, per camera, the queries whose pillar
// projects into it: logits [bs * cams, max_len, H, L*P], slot j of camera c holding query
// indexes[c][j]. The distillation wants [bs * nq, H, cams, K] with a camera-hit mask; these
// gathers move between the two (one thread per output element, no atomics).
// ---------------------------------------------------------------------------------------------

/// @brief Sizes of BEVFormer's rebatched spatial cross-attention tensors.
struct bevformer_sca_shape {
  index_t bs = 1;         ///< Batch size.
  index_t cams = 6;       ///< Cameras (sources).
  index_t max_len = 0;    ///< Rebatched slots per camera.
  index_t num_query = 0;  ///< BEV queries (H_bev x W_bev).
  index_t heads = 8;      ///< Attention heads.
  index_t keys = 32;      ///< num_levels x num_points (x num_Z_anchors as BEVFormer folds them).
};

namespace detail {

/// @brief Validates an SCA shape and its pointers; throws naming the field.
inline void validate_sca(const bevformer_sca_shape& s, const void* a, const void* b, const void* c) {
  require(s.bs >= 0 && s.cams >= 1 && s.max_len >= 0 && s.num_query >= 0 && s.heads >= 1 && s.keys >= 1, "shape",
          "needs bs, max_len, num_query >= 0 and cams, heads, keys >= 1");
  require(s.bs * s.num_query == 0 || (a && b && c), "data", "pointers must not be null");
}

/// @brief query_to_slot[c, q] = -1 everywhere (first half of inverting BEVFormer's indexes).
struct sca_clear {
  std::int64_t* query_to_slot;  ///< [cams, num_query].
  /// @brief Clears entry i.
  BEVKD_HOST_DEVICE void operator()(index_t i) const { query_to_slot[i] = -1; }
};

/// @brief query_to_slot[c, slot_to_query[c, j]] = j (indexes are injective per camera, so no two writers meet).
struct sca_invert {
  const std::int64_t* slot_to_query;  ///< [cams, max_len], -1 for padding.
  std::int64_t* query_to_slot;        ///< [cams, num_query].
  index_t max_len, num_query;         ///< Sizes.
  /// @brief Records slot i's query.
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    const std::int64_t q = slot_to_query[i];
    if (q >= 0 && q < num_query) query_to_slot[(i / max_len) * num_query + q] = i % max_len;
  }
};

/// @brief Dense [bs*nq, H, cams, K] element i from the rebatched tensor (0 and mask 0 where the camera misses the pillar).
template <class T>
struct sca_gather {
  const T* rebatched;                 ///< [bs*cams, max_len, H, K].
  const std::int64_t* query_to_slot;  ///< [cams, nq].
  T* dense;                           ///< [bs*nq, H, cams, K].
  std::uint8_t* mask;                 ///< [bs*nq, cams], or null.
  bevformer_sca_shape s;              ///< Sizes.
  /// @brief Writes dense element i (and the mask entry once per (query, camera)).
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    const index_t k = i % s.keys, c = (i / s.keys) % s.cams, h = (i / (s.keys * s.cams)) % s.heads;
    const index_t n = i / (s.keys * s.cams * s.heads), b = n / s.num_query, q = n % s.num_query;
    const std::int64_t slot = query_to_slot[c * s.num_query + q];
    dense[i] = slot >= 0 ? rebatched[(((b * s.cams + c) * s.max_len + slot) * s.heads + h) * s.keys + k]
                         : store_from_accum<T>(accum_t<T>(0));
    if (mask && h == 0 && k == 0) mask[n * s.cams + c] = slot >= 0 ? 1 : 0;
  }
};

/// @brief Rebatched element i of the student's gradient from the dense gradient (padding slots get 0).
template <class T>
struct sca_scatter {
  const T* dense_grad;                ///< [bs*nq, H, cams, K].
  const std::int64_t* slot_to_query;  ///< [cams, max_len].
  T* rebatched_grad;                  ///< [bs*cams, max_len, H, K].
  bevformer_sca_shape s;              ///< Sizes.
  bool accumulate;                    ///< Add instead of overwrite.
  /// @brief Writes rebatched gradient element i.
  BEVKD_HOST_DEVICE void operator()(index_t i) const {
    const index_t k = i % s.keys, h = (i / s.keys) % s.heads, slot = (i / (s.keys * s.heads)) % s.max_len;
    const index_t bc = i / (s.keys * s.heads * s.max_len), b = bc / s.cams, c = bc % s.cams;
    const std::int64_t q = slot_to_query[c * s.max_len + slot];
    const accum_t<T> g =
        q >= 0 ? load_as_accum(dense_grad[(((b * s.num_query + q) * s.heads + h) * s.cams + c) * s.keys + k])
               : accum_t<T>(0);
    write_grad(rebatched_grad[i], g, accumulate);
  }
};

}  // namespace detail

/// @brief Inverts BEVFormer's per-camera `indexes` ([cams, max_len] query ids, -1 padding) into [cams, num_query] slot ids.
template <class Exec>
void bevformer_sca_invert(Exec& exec, const bevformer_sca_shape& shape, const std::int64_t* slot_to_query,
                          std::int64_t* query_to_slot) {
  detail::validate_sca(shape, slot_to_query, query_to_slot, query_to_slot);
  exec.parallel_for(shape.cams * shape.num_query, detail::sca_clear{query_to_slot});
  exec.parallel_for(shape.cams * shape.max_len,
                    detail::sca_invert{slot_to_query, query_to_slot, shape.max_len, shape.num_query});
}

/// @brief Gathers rebatched SCA attention [bs*cams, max_len, H, K] into dense [bs*nq, H, cams, K] plus the camera-hit mask [bs*nq, cams].
template <class Exec, class T>
void bevformer_sca_gather(Exec& exec, const bevformer_sca_shape& shape, const T* rebatched,
                          const std::int64_t* query_to_slot, T* dense, std::uint8_t* mask) {
  detail::validate_sca(shape, rebatched, query_to_slot, dense);
  exec.parallel_for(shape.bs * shape.num_query * shape.heads * shape.cams * shape.keys,
                    detail::sca_gather<T>{rebatched, query_to_slot, dense, mask, shape});
}

/// @brief Moves a dense [bs*nq, H, cams, K] student gradient back to BEVFormer's rebatched layout (written or added).
template <class Exec, class T>
void bevformer_sca_scatter_grad(Exec& exec, const bevformer_sca_shape& shape, const T* dense_grad,
                                const std::int64_t* slot_to_query, T* rebatched_grad, bool accumulate = false) {
  detail::validate_sca(shape, dense_grad, slot_to_query, rebatched_grad);
  exec.parallel_for(shape.bs * shape.cams * shape.max_len * shape.heads * shape.keys,
                    detail::sca_scatter<T>{dense_grad, slot_to_query, rebatched_grad, shape, accumulate});
}

/// @brief The [bs*nq, H, cams, K] view of a dense SCA tensor produced by bevformer_sca_gather.
template <class T>
attention_view<T> bevformer_sca_dense(T* data, const bevformer_sca_shape& shape) {
  return contiguous_view<T, 4>(data, {shape.bs * shape.num_query, shape.heads, shape.cams, shape.keys});
}

}  // namespace bevkd
