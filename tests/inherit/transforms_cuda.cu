// bevkd GPU tests: the weight-inheritance transforms on the CUDA backend, compared with the host backend.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/bevkd.cuh>
#include <bevkd/inherit/transforms.hpp>

#include <random>
#include <vector>

#include "support/device_buffer.cuh"

// Linked with tests/gpu_main.cu, which exits 77 where no CUDA device exists. One element type
// (float) keeps the nvcc instantiations few; the kernels are dtype-generic and the host tests
// cover the other dtypes.

using bevkd::index_t;
using bevkd_test::device_buffer;

namespace {

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

void check_close(const std::vector<float>& device, const std::vector<float>& host) {
  REQUIRE(device.size() == host.size());
  for (std::size_t k = 0; k < host.size(); ++k) {
    INFO("element " << k);
    CHECK(device[k] == doctest::Approx(host[k]).epsilon(1e-6));
  }
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("device transforms match the host") {
    bevkd::host_exec host;
    bevkd::cuda_exec dev;
    const index_t outer = 3, dim = 16, inner = 5;
    const bevkd::axis_split split{outer, dim, inner};
    const std::vector<float> x = random_floats(static_cast<std::size_t>(outer * dim * inner), 1);
    device_buffer<float> d_x(x);

    // Importance ranking: the device norms give the same index set.
    std::vector<double> norms_host(dim);
    bevkd::channel_importance(host, x.data(), split, bevkd::importance_norm::l2, norms_host.data());
    device_buffer<double> d_norms{std::vector<double>(dim)};
    bevkd::channel_importance(dev, static_cast<const float*>(d_x.data()), split, bevkd::importance_norm::l2, d_norms.data());
    const std::vector<index_t> index = bevkd::top_k_channels(norms_host, 6);
    CHECK(bevkd::top_k_channels(d_norms.to_host(), 6) == index);

    // Channel selection, head averaging, permutation, conversion.
    std::vector<float> sel(static_cast<std::size_t>(outer * 6 * inner));
    bevkd::select_channels(host, x.data(), split, index.data(), 6, sel.data());
    device_buffer<index_t> d_index(index);
    device_buffer<float> d_sel(sel);
    bevkd::select_channels(dev, static_cast<const float*>(d_x.data()), split, static_cast<const index_t*>(d_index.data()), 6,
                           d_sel.data());
    check_close(d_sel.to_host(), sel);

    std::vector<float> avg(static_cast<std::size_t>(outer * 8 * inner));
    bevkd::average_head_groups(host, x.data(), split, 8, 4, avg.data());
    device_buffer<float> d_avg(avg);
    bevkd::average_head_groups(dev, static_cast<const float*>(d_x.data()), split, 8, 4, d_avg.data());
    check_close(d_avg.to_host(), avg);

    std::vector<float> perm(x.size());
    bevkd::permute_dims(host, x.data(), {outer, dim, inner}, {2, 0, 1}, perm.data());
    device_buffer<float> d_perm(perm);
    bevkd::permute_dims(dev, static_cast<const float*>(d_x.data()), {outer, dim, inner}, {2, 0, 1}, d_perm.data());
    check_close(d_perm.to_host(), perm);

    std::vector<bevkd::half> h(x.size());
    bevkd::convert_elements(host, x.data(), h.data(), static_cast<index_t>(x.size()));
    device_buffer<bevkd::half> d_h{std::vector<bevkd::half>(x.size())};
    bevkd::convert_elements(dev, static_cast<const float*>(d_x.data()), d_h.data(), static_cast<index_t>(x.size()));
    const std::vector<bevkd::half> h_dev = d_h.to_host();
    for (std::size_t k = 0; k < x.size(); ++k) CHECK(h_dev[k].bits == h[k].bits);
  }

  TEST_CASE("device grid and table resizes match the host in every mode") {
    bevkd::host_exec host;
    bevkd::cuda_exec dev;
    const index_t h = 12, w = 10, c = 4, h2 = 5, w2 = 7;
    const std::vector<float> x = random_floats(static_cast<std::size_t>(h * w * c), 2);
    device_buffer<float> d_x(x);
    for (const auto mode : {bevkd::resize_mode::bilinear, bevkd::resize_mode::bicubic, bevkd::resize_mode::area})
      for (const auto layout : {bevkd::grid_layout::hw_c, bevkd::grid_layout::c_hw}) {
        INFO(static_cast<int>(mode) << " " << static_cast<int>(layout));
        std::vector<float> y(static_cast<std::size_t>(h2 * w2 * c));
        bevkd::resize_grid(host, x.data(), layout, h, w, c, h2, w2, {mode, false}, y.data());
        device_buffer<float> d_y(y);
        bevkd::resize_grid(dev, static_cast<const float*>(d_x.data()), layout, h, w, c, h2, w2, {mode, false}, d_y.data());
        check_close(d_y.to_host(), y);
      }
    std::vector<float> t(static_cast<std::size_t>(30 * c));
    bevkd::resize_table(host, x.data(), h * w, c, 30, {bevkd::resize_mode::bicubic, true}, t.data());
    device_buffer<float> d_t(t);
    bevkd::resize_table(dev, static_cast<const float*>(d_x.data()), h * w, c, 30, {bevkd::resize_mode::bicubic, true}, d_t.data());
    check_close(d_t.to_host(), t);
  }
}
