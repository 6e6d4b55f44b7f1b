// bevkd packaging test: a CPU-only consumer's program, built by tests/cmake/add_subdirectory and find_package.
// SPDX-License-Identifier: Apache-2.0
#include <bevkd/bevkd.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  constexpr bevkd::index_t B = 2, H = 3, W = 4, C = 5;
  std::vector<float> s(B * H * W * C), t(s.size()), g(s.size(), 0.0f);
  for (std::size_t i = 0; i < s.size(); ++i) {
    s[i] = 0.25f * static_cast<float>(i % 7);
    t[i] = 0.5f * static_cast<float>(i % 3);
  }
  bevkd::host_exec exec;
  bevkd::response_kl kl;
  const auto r = kl(exec, bevkd::bev_nhwc<const float>(s.data(), B, H, W, C),
                    bevkd::bev_nhwc<const float>(t.data(), B, H, W, C), bevkd::bev_nhwc(g.data(), B, H, W, C));
  // A KL of two different distributions is positive; a softmax gradient sums to 0 over each row.
  double worst_row_sum = 0;
  for (bevkd::index_t row = 0; row < B * H * W; ++row) {
    double sum = 0;
    for (bevkd::index_t c = 0; c < C; ++c) sum += g[static_cast<std::size_t>(row * C + c)];
    worst_row_sum = std::fmax(worst_row_sum, std::fabs(sum));
  }
  std::printf("bevkd %d.%d response_kl: loss %g, weight_sum %g, max |row sum of grad| %g\n", BEVKD_VERSION_MAJOR,
              BEVKD_VERSION_MINOR, r.loss, r.weight_sum, worst_row_sum);
  const bool ok = std::isfinite(r.loss) && r.loss > 0 && r.weight_sum == static_cast<double>(B * H * W) &&
                  worst_row_sum < 1e-6;
  return ok ? 0 : 1;
}
