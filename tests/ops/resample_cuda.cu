// bevkd GPU tests: the BEV resample op on the CUDA backend, compared with the host backend and the double reference.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/bevkd.cuh>

#include <cstring>
#include <random>
#include <vector>

#include "ops/resample_testing.hpp"
#include "support/device_buffer.cuh"

// Linked with tests/gpu_main.cu (bevkd_add_test ... GPU), which exits 77 before any test runs
// where no CUDA device exists.

using bevkd::index_t;
using bevkd::resample_mode;
using bevkd::resample_options;
using bevkd_test::device_buffer;
using namespace resample_test;

namespace {

/// @brief The same layout over device memory (U: T or const T).
template <class T, class U>
bevkd::grid_view<U> device_view(const grid<T>& g, U* data) {
  return bevkd::make_view<U, 4>(data, {g.ext.B, g.ext.H, g.ext.W, g.ext.C}, strides_of(g.lay, g.ext));
}

/// @brief Copies `initial` to the device, runs the forward (or backward) there from `src`, and returns the result grid.
template <class T>
grid<T> run_on_device(bevkd::cuda_exec& exec, const bevkd::bev_resample& op, const grid<T>& src, const grid<T>& initial,
                      bool backward) {
  device_buffer<T> d_src(src.storage), d_dst(initial.storage);
  const bevkd::grid_view<const T> s = device_view(src, static_cast<const T*>(d_src.data()));
  const bevkd::grid_view<T> d = device_view(initial, d_dst.data());
  if (backward)
    op.backward(exec, s, d);
  else
    op.forward(exec, s, d);
  BEVKD_CUDA_CHECK(cudaStreamSynchronize(exec.stream()));
  grid<T> result = initial;
  result.storage = d_dst.to_host();
  return result;
}

/// @brief Host and device agree within T's tolerance, gaps stay untouched, and the device matches the reference.
template <class T>
void check_against_host(const grid<T>& device, const grid<T>& host, const grid<T>& initial,
                        const std::vector<double>& reference, const char* what) {
  check_close<T>(device.logical(), host.logical(), std::string(what) + ": device vs host");
  check_close<T>(device.logical(), reference, std::string(what) + ": device vs reference");
  check_gaps_untouched(device, initial);
}

template <class T>
bool bits_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE_TEMPLATE("device resample matches the host and the reference in every layout", T, double, float,
                     bevkd::half, bevkd::bfloat16) {
    BEVKD_TEST_RNG(rng);
    bevkd::host_exec host;
    bevkd::cuda_exec exec;
    for (const auto& rc : all_cases())
      for (layout lay : all_layouts)
        for (const bool accumulate : {false, true}) {
          INFO(rc.name() << " " << layout_name(lay) << (accumulate ? " accumulate" : ""));
          resample_options opt = rc.opt;
          opt.accumulate = accumulate;
          const bevkd::bev_resample op(opt);

          const auto in = random_grid<T>(lay, rc.in, rng);
          const auto out0 = random_grid<T>(lay, rc.out(), rng);
          auto out_host = out0;
          op.forward(host, in.cview(), out_host.view());
          auto expected = apply_separable<T>(rc, in.logical(), false);
          if (accumulate) {
            const auto prior = out0.logical();
            for (std::size_t k = 0; k < expected.size(); ++k) expected[k] += prior[k];
          }
          check_against_host(run_on_device(exec, op, in, out0, false), out_host, out0, expected, "forward");

          const auto grad_out = random_grid<T>(lay, rc.out(), rng);
          const auto grad0 = random_grid<T>(lay, rc.in, rng);
          auto grad_host = grad0;
          op.backward(host, grad_out.cview(), grad_host.view());
          auto expected_grad = apply_separable<T>(rc, grad_out.logical(), true);
          if (accumulate) {
            const auto prior = grad0.logical();
            for (std::size_t k = 0; k < expected_grad.size(); ++k) expected_grad[k] += prior[k];
          }
          check_against_host(run_on_device(exec, op, grad_out, grad0, true), grad_host, grad0, expected_grad,
                             "backward");
        }
  }

  TEST_CASE("device resample at BEV sizes (50x50 <-> 200x200) matches the host, bit for bit across runs") {
    BEVKD_TEST_RNG(rng);
    bevkd::host_exec host;
    bevkd::cuda_exec exec;
    for (const auto& opt : all_modes())
      for (const bool up : {true, false}) {
        const index_t a = up ? 50 : 200, b = up ? 200 : 50;
        const resample_case rc{opt, {2, a, a, 8}, b, b};
        INFO(rc.name());
        const bevkd::bev_resample op(opt);
        const auto in = random_grid<float>(layout::nchw, rc.in, rng);
        const auto out0 = random_grid<float>(layout::nchw, rc.out(), rng);
        auto out_host = out0;
        op.forward(host, in.cview(), out_host.view());
        check_close<float>(run_on_device(exec, op, in, out0, false).logical(), out_host.logical(), "forward");

        const auto grad_out = random_grid<float>(layout::sequence_first, rc.out(), rng);
        const auto grad0 = random_grid<float>(layout::sequence_first, rc.in, rng);
        auto grad_host = grad0;
        op.backward(host, grad_out.cview(), grad_host.view());
        const auto first = run_on_device(exec, op, grad_out, grad0, true);
        const auto second = run_on_device(exec, op, grad_out, grad0, true);
        check_close<float>(first.logical(), grad_host.logical(), "backward");
        CHECK_MESSAGE(bits_equal(first.storage, second.storage), "the gather backward must be deterministic");
      }
  }

  TEST_CASE("device calls validate on the host: a bad call throws and leaves device memory untouched") {
    BEVKD_TEST_RNG(rng);
    bevkd::cuda_exec exec;
    const auto in = random_grid<float>(layout::nhwc, {2, 6, 5, 3}, rng);
    const auto out0 = random_grid<float>(layout::nhwc, {2, 4, 4, 3}, rng);
    device_buffer<float> d_in(in.storage), d_out(out0.storage);
    const auto src = device_view(in, static_cast<const float*>(d_in.data()));
    auto dst = device_view(out0, d_out.data());
    dst.extent[3] = 2;  // channel mismatch
    CHECK_THROWS_AS(bevkd::bev_resample().forward(exec, src, dst), bevkd::invalid_argument);
    auto alias = device_view(in, d_in.data());  // grad_in over grad_out's own buffer
    CHECK_THROWS_AS(bevkd::bev_resample().backward(exec, src, alias), bevkd::invalid_argument);
    BEVKD_CUDA_CHECK(cudaStreamSynchronize(exec.stream()));
    CHECK(bits_equal(d_out.to_host(), out0.storage));
    CHECK(bits_equal(d_in.to_host(), in.storage));
  }

  TEST_CASE("an empty batch launches nothing on the device") {
    bevkd::cuda_exec exec;
    const bevkd::bev_resample op;
    op.forward(exec, bevkd::grid_nhwc<const float>(nullptr, 0, 6, 5, 3), bevkd::grid_nhwc<float>(nullptr, 0, 4, 4, 3));
    op.backward(exec, bevkd::grid_nhwc<const float>(nullptr, 0, 4, 4, 3), bevkd::grid_nhwc<float>(nullptr, 0, 6, 5, 3));
    BEVKD_CUDA_CHECK(cudaStreamSynchronize(exec.stream()));
  }
}
