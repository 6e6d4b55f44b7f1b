// Tests of the distillation trainer example (examples/trainer/): its backward pass, and a shortened experiment.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <random>
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
  const trainer::experiment_result first = trainer::run_experiment(cfg);

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

  const trainer::experiment_result second = trainer::run_experiment(cfg);
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
