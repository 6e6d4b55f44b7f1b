// Tests of the distillation trainer example (examples/trainer/): its backward pass, and a shortened experiment.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainer/experiment.hpp"

namespace {

// Sum of <outputs, fixed random weights>: a scalar whose gradient at the outputs is exactly those weights.
struct probe {
  std::vector<float> logits, bev, att_logits;
  double value(const trainer::forward_state& st) const {
    double s = 0;
    for (std::size_t i = 0; i < logits.size(); ++i) s += static_cast<double>(logits[i]) * st.logits[i];
    for (std::size_t i = 0; i < bev.size(); ++i) s += static_cast<double>(bev[i]) * st.bev[i];
    for (std::size_t i = 0; i < att_logits.size(); ++i) s += static_cast<double>(att_logits[i]) * st.att_logits[i];
    return s;
  }
};

std::vector<float> random_vector(std::size_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

trainer::experiment_config quick_config() {
  trainer::experiment_config cfg = trainer::experiment_config::quick();
  cfg.rules_path = BEVKD_TRAINER_RULES;
  cfg.out_dir = BEVKD_TRAINER_TEST_OUT;
  std::filesystem::create_directories(cfg.out_dir);
  return cfg;
}

}  // namespace

TEST_CASE("the example model's plain backward matches central differences") {
  trainer::model_config cfg{4, 4, 2, 5, trainer::camera_config{4, 8, 0.2f}};
  trainer::bev_model model(trainer::init_model(cfg, 3));
  for (auto& named : model.w.named())  // non-zero biases and sharper attention exercise every term
    for (float& x : named.second->value) x += 0.1f * std::sin(static_cast<float>(&x - named.second->value.data()));
  std::mt19937 rng(5);
  const trainer::scene s = trainer::make_scene(rng);
  const trainer::scene_images images = trainer::render(s, cfg.camera, rng);
  trainer::forward_state st;
  model.forward(images, st);
  const probe pr{random_vector(st.logits.size(), rng), random_vector(st.bev.size(), rng),
                 random_vector(st.att_logits.size(), rng)};
  model.backward(images, st, trainer::output_grads{pr.logits.data(), pr.bev.data(), pr.att_logits.data()});

  for (auto& named : model.w.named()) {
    trainer::tensor& t = *named.second;
    CAPTURE(named.first);
    for (std::size_t i = 0; i < t.value.size(); i += 1 + t.value.size() / 7) {
      const float keep = t.value[i], h = 1e-3f;  // small: a larger step lets ReLUs cross their kink
      t.value[i] = keep + h;
      model.forward(images, st);
      const double up = pr.value(st);
      t.value[i] = keep - h;
      model.forward(images, st);
      const double down = pr.value(st);
      t.value[i] = keep;
      const double numeric = (up - down) / (2.0 * h);
      CAPTURE(i);
      CHECK(t.grad[i] == doctest::Approx(numeric).epsilon(0.03).scale(1.0));
    }
  }
}

TEST_CASE("a shortened experiment: distillation losses fall, gradients stay finite, runs repeat exactly") {
  const trainer::experiment_config cfg = quick_config();
  trainer::host_loss_backend backend;
  const trainer::experiment_result first = trainer::run_experiment(cfg, backend);

  CHECK(first.remap_summary.find("0 kept, 0 errors") != std::string::npos);
  CHECK(first.teacher_training.gradients_finite);
  REQUIRE(first.rows.size() == 6);
  for (const trainer::row_result& r : first.rows) {
    CAPTURE(r.row.name);
    CHECK(r.training.gradients_finite);
    REQUIRE(r.training.log.size() >= 2);
    const trainer::loss_log &start = r.training.log.front(), &end = r.training.log.back();
    const bool alone = (r.row.weights.response_kl > 0) + (r.row.weights.feature_mse > 0) + (r.row.weights.attention > 0) == 1;
    // A loss trained on its own must fall. With all three (and inherited weights, whose attention already
    // matches the teacher's), the losses pull against each other, so their weighted total must fall.
    if (alone) {
      if (r.row.weights.response_kl > 0) CHECK(end.response_kl < start.response_kl);
      if (r.row.weights.feature_mse > 0) CHECK(end.feature_mse < start.feature_mse);
      if (r.row.weights.attention > 0) CHECK(end.attention < start.attention);
    }
    const auto total = [&](const trainer::loss_log& l) {
      return l.label + r.row.weights.response_kl * l.response_kl + r.row.weights.feature_mse * l.feature_mse +
             r.row.weights.attention * l.attention;
    };
    CHECK(total(end) < total(start));
  }

  const trainer::experiment_result second = trainer::run_experiment(cfg, backend);
  for (int c = 0; c < trainer::num_classes - 1; ++c) CHECK(second.teacher.f1[c] == first.teacher.f1[c]);
  for (std::size_t i = 0; i < first.rows.size(); ++i) {
    CAPTURE(first.rows[i].row.name);
    CHECK(second.rows[i].metrics.mean_f1 == first.rows[i].metrics.mean_f1);
    for (int c = 0; c < trainer::num_classes - 1; ++c) CHECK(second.rows[i].metrics.f1[c] == first.rows[i].metrics.f1[c]);
    REQUIRE(second.rows[i].training.log.size() == first.rows[i].training.log.size());
    const trainer::loss_log &a = first.rows[i].training.log.back(), &b = second.rows[i].training.log.back();
    CHECK(a.label == b.label);
    CHECK(a.response_kl == b.response_kl);
    CHECK(a.feature_mse == b.feature_mse);
    CHECK(a.attention == b.attention);
  }
}

TEST_CASE("the shipped rules inherit every student tensor from the teacher, with the student's shapes") {
  const trainer::experiment_config cfg = quick_config();
  trainer::model_weights teacher = trainer::init_model(cfg.teacher, 1);
  const trainer::model_weights student = trainer::init_model(cfg.student, 2);
  std::string summary;
  trainer::model_weights inherited = trainer::inherit_weights(teacher, student, cfg.rules_path, cfg.out_dir, summary);
  CHECK(summary.find("1 exact, 9 adapted, 0 kept, 0 errors") != std::string::npos);
  // class_head.bias is copied exactly; the BEV queries are the teacher's 2x2 means of the selected channels.
  CHECK(inherited.class_b.value == teacher.class_b.value);
  trainer::model_weights student_copy = student;
  auto a = inherited.named(), b = student_copy.named();
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i].second->shape == b[i].second->shape);
  CHECK(inherited.bev_queries.value != student.bev_queries.value);
}

namespace {

/// @brief Runs `call(backend, out)` on two backends from the same starting `out`; checks that the loss values and
/// the outputs agree (float rounding: the CUDA backend sums in a different order).
template <class Call>
void check_backends_agree(trainer::loss_backend& host, trainer::loss_backend& device, const std::vector<float>& start,
                          const Call& call) {
  std::vector<float> on_host = start, on_device = start;
  const bevkd::loss_result a = call(host, on_host), b = call(device, on_device);
  CHECK(b.loss == doctest::Approx(a.loss).epsilon(1e-5));
  CHECK(b.sum == doctest::Approx(a.sum).epsilon(1e-5));
  CHECK(b.weight_sum == doctest::Approx(a.weight_sum).epsilon(1e-12));
  double worst = 0;
  for (std::size_t i = 0; i < start.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(on_device[i]) - on_host[i]) / (1e-6 + std::abs(on_host[i])));
  CHECK(worst < 1e-3);
}

#ifdef BEVKD_TRAINER_EXE  // defined where the examples are built (not in the sanitizer build)
/// @brief Runs the trainer binary; returns its exit status (-1 when it did not exit), its stdout and stderr in `output`.
int run_trainer(const std::string& arguments, std::string& output) {
  output.clear();
  const std::string command = std::string(BEVKD_TRAINER_EXE) + " " + arguments + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char chunk[512];
  for (std::size_t n; (n = std::fread(chunk, 1, sizeof chunk, pipe)) > 0;) output.append(chunk, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
#endif

}  // namespace

// Where the CUDA backend cannot run (this build has no CUDA, or the machine no device) the factory must say why;
// where it can, every call the trainer makes gives the host's results on the trainer's own shapes.
TEST_CASE("the CUDA loss backend agrees with the host one, or says why it cannot run") {
  std::unique_ptr<trainer::loss_backend> device;
#ifdef BEVKD_TRAINER_HAS_CUDA
  try {
    device = trainer::make_loss_backend(trainer::device::cuda);
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("no usable CUDA device") != std::string::npos);
    MESSAGE("no CUDA device, host/device comparison skipped: " << std::string(e.what()));
    return;
  }
#else
  CHECK_THROWS_WITH_AS(trainer::make_loss_backend(trainer::device::cuda), doctest::Contains("built without CUDA"),
                       std::runtime_error);
  return;
#endif
  trainer::host_loss_backend host;
  CHECK(device->description().find("bevkd::cuda_exec") != std::string::npos);
  const trainer::experiment_config cfg = quick_config();
  const int B = cfg.student_training.batch, g = cfg.student.grid, P = g * g, D = cfg.teacher.channels;
  const int HS = cfg.student.heads, HT = cfg.teacher.heads, S = trainer::num_sources, K = cfg.student.points;
  const bevkd::index_t N = B * P;
  std::mt19937 rng(11);
  const auto random = [&](std::size_t n) { return random_vector(n, rng); };

  SUBCASE("response KL, accumulating into a gradient that holds the label loss's") {
    const std::vector<float> s = random(N * trainer::num_classes), t = random(s.size()), start = random(s.size());
    const bevkd::response_kl kl({bevkd::kl_mode::softmax, 2.0, bevkd::reduction::mean, 1.0, 1.0, true});
    check_backends_agree(host, *device, start, [&](trainer::loss_backend& b, std::vector<float>& grad) {
      return b.response_kl(kl, bevkd::bev_nhwc<const float>(s.data(), B, g, g, trainer::num_classes),
                           bevkd::bev_nhwc<const float>(t.data(), B, g, g, trainer::num_classes),
                           bevkd::bev_nhwc(grad.data(), B, g, g, trainer::num_classes));
    });
  }
  SUBCASE("feature MSE, per-pillar L2") {
    const std::vector<float> s = random(N * D), t = random(s.size());
    const bevkd::feature_mse mse({bevkd::mse_normalize::per_pillar_l2, 1e-12, bevkd::reduction::mean, 4.0});
    const std::vector<float> start(s.size());
    check_backends_agree(host, *device, start, [&](trainer::loss_backend& b, std::vector<float>& grad) {
      return b.feature_mse(mse, bevkd::bev_nhwc<const float>(s.data(), B, g, g, D),
                           bevkd::bev_nhwc<const float>(t.data(), B, g, g, D), bevkd::bev_nhwc(grad.data(), B, g, g, D));
    });
  }
  SUBCASE("attention, per-source KL against teacher probabilities, with the camera-hit mask") {
    const std::vector<float> s = random(N * HS * S * K);
    std::vector<float> t = random(N * HT * S * K);
    for (std::size_t row = 0; row < t.size(); row += K) {  // each (query, head, source) a distribution over K
      float sum = 0;
      for (int k = 0; k < K; ++k) sum += t[row + k] = std::exp(t[row + k]);
      for (int k = 0; k < K; ++k) t[row + k] /= sum;
    }
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(N * S));
    for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 7 + i / 5) % 3 != 0;
    bevkd::attention_distill_options options;
    options.teacher_input = bevkd::attention_input::probabilities;
    const bevkd::attention_distill att(options);
    const std::vector<float> start(s.size());
    check_backends_agree(host, *device, start, [&](trainer::loss_backend& b, std::vector<float>& grad) {
      return b.attention_distill(att, bevkd::contiguous_view<const float, 4>(s.data(), {N, HS, S, K}),
                                 bevkd::contiguous_view<const float, 4>(t.data(), {N, HT, S, K}),
                                 bevkd::contiguous_view<float, 4>(grad.data(), {N, HS, S, K}),
                                 bevkd::contiguous_view<const std::uint8_t, 2>(mask.data(), {N, S}));
    });
  }
  SUBCASE("area resample of a teacher map onto the student grid") {
    const int G = cfg.teacher.grid;
    const std::vector<float> in = random(static_cast<std::size_t>(G * G * D));
    const bevkd::bev_resample area({bevkd::resample_mode::area});
    check_backends_agree(host, *device, std::vector<float>(static_cast<std::size_t>(P * D)),
                         [&](trainer::loss_backend& b, std::vector<float>& out) {
                           b.resample(area, bevkd::grid_nhwc<const float>(in.data(), 1, G, G, D),
                                      bevkd::grid_nhwc(out.data(), 1, g, g, D));
                           return bevkd::loss_result{};
                         });
  }
}

#ifdef BEVKD_TRAINER_EXE
// The trainer's `--device` option end to end: an unknown device is a usage error, and `--device cuda` either
// trains (a CUDA build on a machine with a GPU) or fails at once with a message that names the reason.
TEST_CASE("distill_trainer --device: usage errors, and a clean failure where CUDA cannot run") {
  const std::string out = std::string(" --out ") + BEVKD_TRAINER_TEST_OUT + "/cli";
  std::string output;
  CHECK(run_trainer("--quick --device tpu" + out, output) == 1);
  CHECK(output.find("--device cpu|cuda") != std::string::npos);

  const int status = run_trainer("--quick --device cuda" + out, output);
  CAPTURE(output);
#ifdef BEVKD_TRAINER_HAS_CUDA
  if (status == 0) {
    CHECK(output.find("bevkd calls: bevkd::cuda_exec") != std::string::npos);
    CHECK(output.find("NON-FINITE") == std::string::npos);
  } else {
    CHECK(status == 2);
    CHECK(output.find("distill_trainer: --device cuda: no usable CUDA device") != std::string::npos);
    CHECK(output.find("training scenes") == std::string::npos);  // it failed before doing anything
  }
#else
  CHECK(status == 2);
  CHECK(output.find("distill_trainer: --device cuda: the CUDA backend is not available: this trainer was built "
                    "without CUDA") != std::string::npos);
  CHECK(output.find("training scenes") == std::string::npos);
#endif
}
#endif
