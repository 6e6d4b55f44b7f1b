// bevkd example: both response losses on a synthetic teacher/student BEV pair, printing losses and gradient norms.
// SPDX-License-Identifier: Apache-2.0
//
// A teacher head sees a 200x200 BEV grid; the student's 50x50 grid is compared with the
// teacher's after average-pooling the teacher 4x4 (what a real trainer would do with the
// resample op). The student's logits start as a noisy copy of the teacher's, and a few
// steps of plain gradient descent on the distillation losses pull them together.
#include <bevkd/bevkd.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

constexpr bevkd::index_t batch = 2, grid = 50, pool = 4, classes = 10, channels = 64;
constexpr bevkd::index_t pillars = grid * grid;

// Teacher maps on a 200x200 grid, reduced to the student's 50x50 grid by 4x4 means (NHWC).
std::vector<float> pooled_teacher(std::mt19937& rng, bevkd::index_t width) {
  const bevkd::index_t big = grid * pool;
  std::normal_distribution<float> noise(0.0f, 1.0f);
  std::vector<float> fine(static_cast<std::size_t>(batch * big * big * width));
  for (bevkd::index_t i = 0; i < static_cast<bevkd::index_t>(fine.size()); ++i) {
    const bevkd::index_t c = i % width, x = (i / width) % big, y = (i / width / big) % big;
    fine[i] = 2.0f * std::sin(0.05f * static_cast<float>(x + 3 * c)) * std::cos(0.04f * static_cast<float>(y)) +
              0.3f * noise(rng);
  }
  std::vector<float> coarse(static_cast<std::size_t>(batch * pillars * width), 0.0f);
  for (bevkd::index_t i = 0; i < static_cast<bevkd::index_t>(fine.size()); ++i) {
    const bevkd::index_t c = i % width, x = (i / width) % big, y = (i / width / big) % big, b = i / (width * big * big);
    coarse[((b * grid + y / pool) * grid + x / pool) * width + c] += fine[i] / (pool * pool);
  }
  return coarse;
}

double l2_norm(const std::vector<float>& v) {
  double sum = 0;
  for (float x : v) sum += static_cast<double>(x) * x;
  return std::sqrt(sum);
}

}  // namespace

int main() {
  std::mt19937 rng(2026);
  std::normal_distribution<float> noise(0.0f, 1.5f);
  const auto teacher_logits = pooled_teacher(rng, classes);
  const auto teacher_features = pooled_teacher(rng, channels);
  std::vector<float> student_logits = teacher_logits, student_features = teacher_features;
  for (auto& v : student_logits) v += noise(rng);
  for (auto& v : student_features) v += noise(rng);
  // Foreground weights: pillars where the teacher is confident count more.
  std::vector<float> weights(static_cast<std::size_t>(batch * pillars));
  for (bevkd::index_t r = 0; r < batch * pillars; ++r) {
    float top = -1e30f;
    for (bevkd::index_t c = 0; c < classes; ++c) top = std::max(top, teacher_logits[r * classes + c]);
    weights[r] = top > 1.0f ? 1.0f : 0.2f;
  }

  bevkd::host_exec exec;
  const bevkd::response_kl kl({bevkd::kl_mode::softmax, /*temperature=*/2.0, bevkd::reduction::mean});
  const bevkd::feature_mse mse({bevkd::mse_normalize::per_pillar_l2});
  std::vector<float> grad_logits(student_logits.size()), grad_features(student_features.size());
  bevkd::row_io<float> rows;
  rows.weights = bevkd::rows_contiguous<const float>(weights.data(), batch, pillars);

  std::printf("bevkd demo: B=%lld, %lldx%lld student grid, %lld classes, %lld channels, %d thread(s)\n",
              static_cast<long long>(batch), static_cast<long long>(grid), static_cast<long long>(grid),
              static_cast<long long>(classes), static_cast<long long>(channels), exec.threads());
  std::printf("%4s %12s %14s %12s %14s %10s\n", "step", "kl_loss", "|grad kl|", "mse_loss", "|grad mse|", "ms");
  // The mean reductions divide by ~5000 pillars, so the steps are large in per-element terms.
  const float kl_rate = 1500.0f, mse_rate = 4.0e5f;
  for (int step = 0; step <= 10; ++step) {
    const auto start = std::chrono::steady_clock::now();
    const auto k = kl(exec, bevkd::bev_nhwc<const float>(student_logits.data(), batch, grid, grid, classes),
                      bevkd::bev_nhwc<const float>(teacher_logits.data(), batch, grid, grid, classes),
                      bevkd::bev_nhwc(grad_logits.data(), batch, grid, grid, classes), rows);
    const auto m = mse(exec, bevkd::bev_nhwc<const float>(student_features.data(), batch, grid, grid, channels),
                       bevkd::bev_nhwc<const float>(teacher_features.data(), batch, grid, grid, channels),
                       bevkd::bev_nhwc(grad_features.data(), batch, grid, grid, channels));
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (step % 2 == 0)
      std::printf("%4d %12.6f %14.6e %12.6f %14.6e %10.3f\n", step, k.loss, l2_norm(grad_logits), m.loss,
                  l2_norm(grad_features), ms);
    for (std::size_t i = 0; i < student_logits.size(); ++i) student_logits[i] -= kl_rate * grad_logits[i];
    for (std::size_t i = 0; i < student_features.size(); ++i)
      student_features[i] -= mse_rate * grad_features[i];
  }
  return 0;
}
