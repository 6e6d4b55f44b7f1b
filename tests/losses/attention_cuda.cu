// bevkd GPU tests: attention and sampling-location distillation and the SCA gathers on the device, compared with the host.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/bevkd.cuh>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "support/attention_harness.hpp"
#include "support/device_buffer.cuh"
#include "support/loss_harness.hpp"

using namespace bevkd_test;
using bevkd::attention_input;
using bevkd::attention_normalize;
using bevkd::divergence;
using bevkd::reduction;

namespace {

/// @brief Runs an attention case on the device; returns the result and the gradient and per-row losses copied back.
template <class T>
bevkd::loss_result run_attention_on_device(const attention_case<T>& cs, bevkd::cuda_exec& exec, std::vector<T>& grad,
                                           std::vector<bevkd::accum_t<T>>& rows) {
  using acc = bevkd::accum_t<T>;
  device_buffer<T> s(cs.student), t(cs.teacher), g(grad);
  device_buffer<std::uint8_t> m(cs.mask);
  device_buffer<acc> w(cs.weights), u(cs.upstream);
  std::vector<acc> rows_init(static_cast<std::size_t>(cs.N * cs.H * cs.row_sources()), acc(-7));
  device_buffer<acc> r(rows_init);
  bevkd::attention_io<acc> io;
  if (!cs.mask.empty()) io.source_mask = bevkd::contiguous_view<const std::uint8_t, 2>(m.data(), {cs.N, cs.S});
  if (!cs.weights.empty()) io.query_weights = bevkd::contiguous_view<const acc, 1>(w.data(), {cs.N});
  if (!cs.upstream.empty()) io.upstream = bevkd::contiguous_view<const acc, 3>(u.data(), {cs.N, cs.H, cs.row_sources()});
  if (cs.opts.reduce == reduction::none) io.row_loss = bevkd::contiguous_view<acc, 3>(r.data(), {cs.N, cs.H, cs.row_sources()});
  const auto result = bevkd::attention_distill(cs.opts)(exec, cs.template view<const T>(s.data(), cs.H, cs.K),
                                                        cs.template view<const T>(t.data(), cs.Ht(), cs.Kt()),
                                                        cs.template view<T>(g.data(), cs.H, cs.K), io)
                          .get();
  grad = g.to_host();
  rows = r.to_host();
  return result;
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE_TEMPLATE("CUDA attention_distill matches the host for every divergence, normalisation and pooling", T, float,
                     bevkd::bfloat16) {
    BEVKD_TEST_RNG(rng);
    bevkd::cuda_exec exec;
    for (int width : {0, 4, 8, 16, 32}) {  // 0: by row length; then every warp team width
      exec.team_width(width);
      for (auto normalize : {attention_normalize::per_source, attention_normalize::joint})
        for (divergence div : {divergence::kl, divergence::reverse_kl, divergence::js, divergence::mse})
          for (int variant = 0; variant < 3; ++variant) {
            attention_case<T> cs;
            cs.N = 300;  // several blocks of warp rows
            cs.K = variant == 2 ? 32 : 5;
            cs.opts.normalize = normalize;
            cs.opts.div = div;
            cs.opts.temperature = 1.3;
            cs.heads_outer = variant != 1;
            if (variant == 1) {
              cs.group = 2;
              cs.level_group = 2;
              cs.opts.points = 1;
              cs.opts.reduce = reduction::none;
            }
            cs.randomize(rng);
            cs.random_mask(rng);
            cs.random_weights(rng);
            if (cs.opts.reduce == reduction::none) cs.random_upstream(rng);
            std::vector<T> host_grad(cs.student.size()), dev_grad(cs.student.size());
            std::vector<bevkd::accum_t<T>> host_rows, dev_rows;
            bevkd::host_exec host;
            const auto h = cs.run(host, host_grad, host_rows);
            const auto d = run_attention_on_device(cs, exec, dev_grad, dev_rows);
            INFO("width ", width, " normalize ", static_cast<int>(normalize), " div ", static_cast<int>(div), " variant ",
                 variant);
            CHECK(relative_error(d.loss, h.loss, 1e-6) < 1e-5);
            CHECK(d.weight_sum == h.weight_sum);
            CHECK(relative_error(attention_logical_grad(cs, dev_grad), attention_logical_grad(cs, host_grad)) <
                  std::max(tolerance<T>(), 1e-5));
            CHECK(relative_error(attention_logical_grad(cs, dev_grad), attention_reference(cs).grad) <
                  std::max(tolerance<T>(), 1e-5));
            if (cs.opts.reduce == reduction::none)
              CHECK(relative_error(std::vector<double>(dev_rows.begin(), dev_rows.end()),
                                   std::vector<double>(host_rows.begin(), host_rows.end()), 1e-6) < 1e-5);
          }
    }
  }

  TEST_CASE("CUDA sampling_location_distill and the SCA gather match the host") {
    BEVKD_TEST_RNG(rng);
    bevkd::cuda_exec exec;
    bevkd::host_exec host;
    const index_t N = 400, H = 4, S = 2, K = 8;
    const auto xs = random_values<float>(N * H * S * K * 2, rng, 0.3, 0.5);
    const auto xt = random_values<float>(N * H * S * K * 2, rng, 0.3, 0.5);
    const auto at = random_values<float>(N * H * S * K, rng, 1.5);
    std::vector<float> host_grad(xs.size()), init(xs.size(), 0.0f);
    bevkd::sampling_location_options opts;
    opts.distance = bevkd::location_distance::smooth_l1;
    opts.beta = 0.2;
    const bevkd::sampling_location_distill loss(opts);
    const auto loc = [&](auto* p) { return bevkd::contiguous_view<std::remove_pointer_t<decltype(p)>, 5>(p, {N, H, S, K, 2}); };
    const auto att = [&](const float* p) { return bevkd::contiguous_view<const float, 4>(p, {N, H, S, K}); };
    const auto h = loss(host, loc(xs.data()), loc(xt.data()), att(at.data()), loc(host_grad.data()));
    device_buffer<float> ds(xs), dt(xt), da(at), dg(init);
    const auto d = loss(exec, loc(static_cast<const float*>(ds.data())), loc(static_cast<const float*>(dt.data())),
                        att(da.data()), loc(dg.data()))
                       .get();
    CHECK(relative_error(d.loss, h.loss) < 1e-5);
    const auto dev_grad = dg.to_host();
    CHECK(relative_error(std::vector<double>(dev_grad.begin(), dev_grad.end()),
                         std::vector<double>(host_grad.begin(), host_grad.end())) < 1e-5);

    bevkd::bevformer_sca_shape shape;
    shape.bs = 2;
    shape.cams = 6;
    shape.num_query = 50;
    shape.max_len = 20;
    shape.heads = 2;
    shape.keys = 8;
    std::vector<std::int64_t> slot_to_query(static_cast<std::size_t>(shape.cams * shape.max_len), -1);
    for (index_t c = 0; c < shape.cams; ++c)
      for (index_t j = 0; j < 15; ++j) slot_to_query[static_cast<std::size_t>(c * shape.max_len + j)] = (c * 7 + j * 3) % 50;
    const auto rebatched = random_values<float>(shape.bs * shape.cams * shape.max_len * shape.heads * shape.keys, rng);
    const std::size_t dense_size = static_cast<std::size_t>(shape.bs * shape.num_query * shape.heads * shape.cams * shape.keys);
    std::vector<std::int64_t> q2s(static_cast<std::size_t>(shape.cams * shape.num_query));
    std::vector<float> host_dense(dense_size);
    std::vector<std::uint8_t> host_mask(static_cast<std::size_t>(shape.bs * shape.num_query * shape.cams));
    bevkd::bevformer_sca_invert(host, shape, slot_to_query.data(), q2s.data());
    bevkd::bevformer_sca_gather(host, shape, rebatched.data(), q2s.data(), host_dense.data(), host_mask.data());
    device_buffer<std::int64_t> d_s2q(slot_to_query), d_q2s(q2s);
    device_buffer<float> d_reb(rebatched), d_dense(std::vector<float>(dense_size, -1.0f));
    device_buffer<std::uint8_t> d_mask(std::vector<std::uint8_t>(host_mask.size(), 9));
    bevkd::bevformer_sca_invert(exec, shape, d_s2q.data(), d_q2s.data());
    bevkd::bevformer_sca_gather(exec, shape, static_cast<const float*>(d_reb.data()), d_q2s.data(), d_dense.data(),
                                d_mask.data());
    CHECK(d_q2s.to_host() == q2s);
    CHECK(d_dense.to_host() == host_dense);
    CHECK(d_mask.to_host() == host_mask);
  }
}
