// bevkd tests: BEVFormer adapters map the public code's tensor layouts onto the attention loss exactly.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/bevkd.hpp>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "support/bev_data.hpp"
#include "support/loss_harness.hpp"

using namespace bevkd_test;

TEST_CASE("TSA views address BEVFormer's logits [bs, nq, H, 2, L*P] and permuted weights [bs*2, nq, H, L, P]") {
  const index_t bs = 2, nq = 5, H = 3, L = 2, P = 2, K = L * P;
  std::vector<float> logits(static_cast<std::size_t>(bs * nq * H * 2 * K)), weights(logits.size());
  const auto lv = bevkd::bevformer_tsa_logits(logits.data(), bs, nq, H, L, P);
  const auto wv = bevkd::bevformer_tsa_weights(weights.data(), bs, nq, H, L, P);
  std::vector<float> loc(logits.size() * 2);
  const auto xv = bevkd::bevformer_tsa_locations(loc.data(), bs, nq, H, L, P);
  for (index_t b = 0; b < bs; ++b)
    for (index_t q = 0; q < nq; ++q)
      for (index_t h = 0; h < H; ++h)
        for (index_t s = 0; s < 2; ++s)
          for (index_t k = 0; k < K; ++k) {
            const index_t n = b * nq + q;
            CHECK(lv.offset(n, h, s, k) == (((b * nq + q) * H + h) * 2 + s) * K + k);
            // permute(3, 0, 1, 2, 4, 5).view(bs*2, nq, H, L, P): the queue index is outermost.
            CHECK(wv.offset(n, h, s, k) == (((s * bs + b) * nq + q) * H + h) * K + k);
            CHECK(xv.offset(n, h, s, k, 1) == ((((s * bs + b) * nq + q) * H + h) * K + k) * 2 + 1);
          }
  CHECK_NOTHROW(bevkd::detail::validate_view(wv, "weights"));
  CHECK_NOTHROW(bevkd::detail::validate_view(xv, "locations"));
}

TEST_CASE("TSA distillation: student logits in BEVFormer's layout against teacher weights after its permute") {
  BEVKD_TEST_RNG(rng);
  const index_t bs = 2, nq = 6, H = 2, L = 1, P = 4, K = L * P;
  auto student = random_values<float>(bs * nq * H * 2 * K, rng);
  auto teacher_logits = random_values<float>(bs * nq * H * 2 * K, rng);
  // The teacher's weights as BEVFormer stores them after softmax and permute.
  std::vector<float> teacher(teacher_logits.size());
  const auto tl = bevkd::bevformer_tsa_logits(teacher_logits.data(), bs, nq, H, L, P);
  const auto tw = bevkd::bevformer_tsa_weights(teacher.data(), bs, nq, H, L, P);
  for (index_t n = 0; n < bs * nq; ++n)
    for (index_t h = 0; h < H; ++h)
      for (index_t s = 0; s < 2; ++s) {
        double z = 0;
        for (index_t k = 0; k < K; ++k) z += std::exp(static_cast<double>(tl(n, h, s, k)));
        for (index_t k = 0; k < K; ++k) tw(n, h, s, k) = static_cast<float>(std::exp(static_cast<double>(tl(n, h, s, k))) / z);
      }
  // Sample 1 starts a sequence: its previous BEV does not exist.
  const std::vector<std::uint8_t> has_previous = {1, 0};
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(bs * nq * 2));
  bevkd::host_exec exec;
  bevkd::bevformer_tsa_mask(exec, has_previous.data(), bs, nq, mask.data());
  CHECK(mask[0] == 1);
  CHECK(mask[2 * nq] == 0);
  CHECK(mask[2 * nq + 1] == 1);
  bevkd::attention_io<float> io;
  io.source_mask = bevkd::contiguous_view<const std::uint8_t, 2>(mask.data(), {bs * nq, 2});
  bevkd::attention_distill_options opts;
  opts.teacher_input = bevkd::attention_input::probabilities;
  std::vector<float> grad(student.size()), grad_ref(student.size());
  const auto r = bevkd::attention_distill(opts)(exec, bevkd::bevformer_tsa_logits<const float>(student.data(), bs, nq, H, L, P),
                                                bevkd::bevformer_tsa_weights<const float>(teacher.data(), bs, nq, H, L, P),
                                                bevkd::bevformer_tsa_logits(grad.data(), bs, nq, H, L, P), io);
  // Same loss from the teacher's logits in the canonical layout.
  opts.teacher_input = bevkd::attention_input::logits;
  const auto r_ref = bevkd::attention_distill(opts)(exec, bevkd::bevformer_tsa_logits<const float>(student.data(), bs, nq, H, L, P),
                                                    bevkd::bevformer_tsa_logits<const float>(teacher_logits.data(), bs, nq, H, L, P),
                                                    bevkd::bevformer_tsa_logits(grad_ref.data(), bs, nq, H, L, P), io);
  CHECK(r.loss == doctest::Approx(r_ref.loss).epsilon(1e-5));
  CHECK(r.weight_sum == doctest::Approx(static_cast<double>(bs * nq * H * 2 - nq * H)));
  CHECK(relative_error(std::vector<double>(grad.begin(), grad.end()), std::vector<double>(grad_ref.begin(), grad_ref.end())) < 1e-5);
}

TEST_CASE("SCA gather and scatter move between BEVFormer's rebatched layout and [bs*nq, H, cams, K]") {
  BEVKD_TEST_RNG(rng);
  bevkd::bevformer_sca_shape shape;
  shape.bs = 2;
  shape.cams = 3;
  shape.num_query = 10;
  shape.heads = 2;
  shape.keys = 4;
  // Camera c sees a random subset of queries, in increasing order (as nonzero() yields them), -1 padded.
  std::vector<std::vector<std::int64_t>> seen(static_cast<std::size_t>(shape.cams));
  std::bernoulli_distribution hit(0.4);
  for (auto& list : seen)
    for (std::int64_t q = 0; q < shape.num_query; ++q)
      if (hit(rng)) list.push_back(q);
  for (const auto& list : seen) shape.max_len = std::max<index_t>(shape.max_len, static_cast<index_t>(list.size()));
  std::vector<std::int64_t> slot_to_query(static_cast<std::size_t>(shape.cams * shape.max_len), -1);
  for (index_t c = 0; c < shape.cams; ++c)
    for (std::size_t j = 0; j < seen[c].size(); ++j) slot_to_query[static_cast<std::size_t>(c * shape.max_len) + j] = seen[c][j];
  const auto rebatched = random_values<float>(shape.bs * shape.cams * shape.max_len * shape.heads * shape.keys, rng);
  std::vector<std::int64_t> query_to_slot(static_cast<std::size_t>(shape.cams * shape.num_query));
  std::vector<float> dense(static_cast<std::size_t>(shape.bs * shape.num_query * shape.heads * shape.cams * shape.keys), -9.0f);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(shape.bs * shape.num_query * shape.cams), 7);
  bevkd::host_exec exec;
  bevkd::bevformer_sca_invert(exec, shape, slot_to_query.data(), query_to_slot.data());
  bevkd::bevformer_sca_gather(exec, shape, rebatched.data(), query_to_slot.data(), dense.data(), mask.data());
  const auto dv = bevkd::bevformer_sca_dense(dense.data(), shape);
  for (index_t b = 0; b < shape.bs; ++b)
    for (index_t q = 0; q < shape.num_query; ++q)
      for (index_t c = 0; c < shape.cams; ++c) {
        const auto it = std::find(seen[c].begin(), seen[c].end(), q);
        const bool visible = it != seen[c].end();
        const index_t slot = visible ? static_cast<index_t>(it - seen[c].begin()) : -1;
        CHECK(mask[static_cast<std::size_t>((b * shape.num_query + q) * shape.cams + c)] == (visible ? 1 : 0));
        for (index_t h = 0; h < shape.heads; ++h)
          for (index_t k = 0; k < shape.keys; ++k) {
            const float want = visible ? rebatched[static_cast<std::size_t>((((b * shape.cams + c) * shape.max_len + slot) * shape.heads + h) * shape.keys + k)] : 0.0f;
            CHECK(dv(b * shape.num_query + q, h, c, k) == want);
          }
      }
  // The scatter is the gather's adjoint: <gather(x), y> = <x, scatter(y)> over visible slots.
  const auto y = random_values<float>(static_cast<index_t>(dense.size()), rng);
  std::vector<float> back(rebatched.size(), 3.0f);
  bevkd::bevformer_sca_scatter_grad(exec, shape, y.data(), slot_to_query.data(), back.data());
  double lhs = 0, rhs = 0;
  for (std::size_t i = 0; i < dense.size(); ++i) lhs += static_cast<double>(dense[i]) * y[i];
  for (std::size_t i = 0; i < back.size(); ++i) rhs += static_cast<double>(rebatched[i]) * back[i];
  CHECK(lhs == doctest::Approx(rhs).epsilon(1e-6));
  for (index_t c = 0; c < shape.cams; ++c)  // padding slots receive exactly 0
    for (index_t j = static_cast<index_t>(seen[c].size()); j < shape.max_len; ++j)
      CHECK(back[static_cast<std::size_t>(((0 * shape.cams + c) * shape.max_len + j) * shape.heads * shape.keys)] == 0.0f);
}
