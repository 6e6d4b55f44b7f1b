// bevkd example trainer: the whole experiment (teacher, weight inheritance, six student runs) and its configuration.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "inheritance.hpp"
#include "metrics.hpp"
#include "model.hpp"
#include "training.hpp"
#include "world.hpp"

namespace trainer {

/// @brief Everything that defines a run of the experiment; the defaults are the full configuration.
struct experiment_config {
  model_config teacher{16, 16, 4, 5, camera_config{16, 32, 0.15f}};  ///< 16x16 grid, sharp 16x32 images.
  model_config student{8, 8, 2, 5, camera_config{8, 16, 0.35f}};     ///< 8x8 grid, half-size, noisier images.
  int train_scenes = 96;
  int test_scenes = 128;
  train_config teacher_training;
  train_config student_training;
  distill_weights distill{1.0, 4.0, 1.0};  ///< Weights of response KL, feature MSE, attention in the distilled rows.
  unsigned seed = 2026;
  std::string rules_path;  ///< The remap rules (examples/trainer/student_rules.json).
  std::string out_dir;     ///< Where the safetensors files go.

  experiment_config() {
    teacher_training.steps = 800;
    teacher_training.adam.lr = 0.01f;
    student_training.steps = 800;
    student_training.adam.lr = 0.01f;
  }

  /// @brief A shortened configuration for tests: a few seconds.
  static experiment_config quick() {
    experiment_config c;
    c.train_scenes = 24;
    c.test_scenes = 16;
    c.teacher_training.steps = 40;
    c.teacher_training.log_every = 10;
    c.student_training.steps = 40;
    c.student_training.log_every = 10;
    c.teacher_training.batch = c.student_training.batch = 4;
    return c;
  }

  /// @brief Sets the number of training steps of the teacher and of each student run.
  void set_steps(int steps) {
    teacher_training.steps = student_training.steps = steps;
    teacher_training.log_every = student_training.log_every = std::max(1, steps / 10);
  }
};

/// @brief One row of the ablation: whether the student inherits the teacher's weights, and its distillation losses.
struct ablation_row {
  std::string name;
  bool inherit = false;
  distill_weights weights;
};

/// @brief The paper's ablation: labels only, each part alone, then all together.
inline std::vector<ablation_row> ablation_rows(const distill_weights& w) {
  return {{"labels only", false, {}},
          {"+ weight inheritance", true, {}},
          {"+ response KL", false, {w.response_kl, 0, 0}},
          {"+ feature MSE", false, {0, w.feature_mse, 0}},
          {"+ spatial-temporal attention", false, {0, 0, w.attention}},
          {"all three", true, w}};
}

/// @brief The result of one student run.
struct row_result {
  ablation_row row;
  detection_metrics metrics;
  train_result training;
};

/// @brief The whole experiment's results.
struct experiment_result {
  detection_metrics teacher;
  train_result teacher_training;
  std::string remap_summary;
  std::vector<row_result> rows;
};

/// @brief Reports progress: (what is training, e.g. "row 3/6", step, steps, loss).
using experiment_progress = std::function<void(const std::string&, int, int, double)>;

/// @brief Trains the teacher, inherits its weights into the student template, and runs every ablation row; every
/// bevkd call (resampling the teacher's targets, the distillation losses) goes through `backend`.
inline experiment_result run_experiment(const experiment_config& cfg, loss_backend& backend,
                                        const experiment_progress& progress = {}) {
  const dataset train_set = make_dataset(cfg.train_scenes, cfg.teacher.camera, cfg.student.camera, cfg.seed);
  const dataset test_set = make_dataset(cfg.test_scenes, cfg.teacher.camera, cfg.student.camera, cfg.seed + 1);
  const auto reporter = [&](const std::string& what) -> progress_fn {
    if (!progress) return {};
    return [&progress, what](int step, int steps, double loss) { progress(what, step, steps, loss); };
  };
  experiment_result out;

  bev_model teacher(init_model(cfg.teacher, cfg.seed + 10));
  train_config teacher_cfg = cfg.teacher_training;
  teacher_cfg.seed = cfg.seed + 20;
  out.teacher_training = train(teacher, make_training_set(train_set.scenes, train_set.teacher_images, cfg.teacher.grid),
                               teacher_cfg, nullptr, reporter("teacher"));
  out.teacher = evaluate(teacher, test_set.scenes, test_set.teacher_images);

  const teacher_targets targets = compute_targets(teacher, train_set.teacher_images, cfg.student.grid, backend);
  const model_weights student_init = init_model(cfg.student, cfg.seed + 30);
  const model_weights inherited = inherit_weights(teacher.w, student_init, cfg.rules_path, cfg.out_dir, out.remap_summary);

  const training_set student_data = make_training_set(train_set.scenes, train_set.student_images, cfg.student.grid);
  const std::vector<ablation_row> rows = ablation_rows(cfg.distill);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    bev_model student(rows[i].inherit ? inherited : student_init);
    distillation distill{&targets, rows[i].weights, make_adapter(cfg.teacher.channels, cfg.student.channels, cfg.seed + 40),
                         &backend};
    train_config student_cfg = cfg.student_training;
    student_cfg.seed = cfg.seed + 50;  // every row sees the same batches
    const std::string what = "row " + std::to_string(i + 1) + "/" + std::to_string(rows.size());
    row_result r{rows[i], {}, train(student, student_data, student_cfg, rows[i].weights.any() ? &distill : nullptr, reporter(what))};
    r.metrics = evaluate(student, test_set.scenes, test_set.student_images);
    out.rows.push_back(std::move(r));
  }
  return out;
}

}  // namespace trainer
