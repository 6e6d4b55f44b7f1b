// bevkd tests: BEV layout factories map logical [B, P, C] indices, and view validation catches bad strides.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/core/view.hpp>

#include <vector>

TEST_CASE("layout factories address the element PyTorch would") {
  const bevkd::index_t B = 2, H = 3, W = 4, C = 5, P = H * W;
  std::vector<float> buf(static_cast<std::size_t>(B * P * C));
  const auto nhwc = bevkd::bev_nhwc(buf.data(), B, H, W, C);
  const auto nchw = bevkd::bev_nchw(buf.data(), B, C, H, W);
  const auto seq = bevkd::bev_sequence_first(buf.data(), P, B, C);
  for (bevkd::index_t b = 0; b < B; ++b)
    for (bevkd::index_t y = 0; y < H; ++y)
      for (bevkd::index_t x = 0; x < W; ++x)
        for (bevkd::index_t c = 0; c < C; ++c) {
          const bevkd::index_t p = y * W + x;
          CHECK(nhwc.offset(b, p, c) == ((b * H + y) * W + x) * C + c);
          CHECK(nchw.offset(b, p, c) == ((b * C + c) * H + y) * W + x);
          CHECK(seq.offset(b, p, c) == (p * B + b) * C + c);
        }
  CHECK(nhwc.transposed(1, 2).offset(1, 2, 3) == nhwc.offset(1, 3, 2));
}

TEST_CASE("validate_view and the overlap checks") {
  std::vector<float> buf(60);
  auto v = bevkd::bev_nhwc(buf.data(), 2, 3, 2, 5);
  CHECK_NOTHROW(bevkd::detail::validate_view(v, "x"));
  auto neg = v;
  neg.stride[2] = -1;
  CHECK_THROWS_WITH_AS(bevkd::detail::validate_view(neg, "x"), doctest::Contains("x.stride[2]"), bevkd::invalid_argument);
  auto past = v;
  past.stride[1] = 6;
  CHECK_THROWS_WITH_AS(bevkd::detail::validate_view(past, "x"), doctest::Contains("out of range"), bevkd::invalid_argument);
  auto unknown_capacity = past;
  unknown_capacity.capacity = -1;
  CHECK_NOTHROW(bevkd::detail::validate_view(unknown_capacity, "x"));
  auto overflow = unknown_capacity;
  overflow.stride[0] = bevkd::index_t(1) << 61;
  overflow.extent[0] = 4;
  CHECK_THROWS_AS(bevkd::detail::validate_view(overflow, "x"), bevkd::invalid_argument);
  auto self_overlap = v;
  self_overlap.stride[2] = 0;
  CHECK_THROWS_AS(bevkd::detail::require_no_self_overlap(self_overlap, "g"), bevkd::invalid_argument);
  CHECK_NOTHROW(bevkd::detail::require_no_self_overlap(bevkd::bev_nchw(buf.data(), 2, 5, 3, 2), "g"));
  CHECK(bevkd::detail::ranges_overlap(v, bevkd::bev_nhwc(buf.data() + 59, 1, 1, 1, 1)));
  CHECK_FALSE(bevkd::detail::ranges_overlap(bevkd::bev_nhwc(buf.data(), 1, 1, 1, 30), bevkd::bev_nhwc(buf.data() + 30, 1, 1, 1, 30)));
}
