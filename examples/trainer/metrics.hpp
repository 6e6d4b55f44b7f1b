// bevkd example trainer: held-out detection metric (per-class F1 of objects found by per-pillar argmax, with a tolerance).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "model.hpp"
#include "world.hpp"

namespace trainer {

/// @brief A detection within this distance (max-norm, world units: one student pillar) of an object counts as a hit.
constexpr float match_tolerance = 0.125f;

/// @brief Per-class F1 (classes 1..3) and their mean.
struct detection_metrics {
  double f1[num_classes - 1] = {0, 0, 0};
  double mean_f1 = 0;
};

/// @brief Scores a model on held-out scenes: a pillar whose argmax is class c is a detection of c.
///
/// Precision: detections of c that lie within match_tolerance of an object of class c. Recall: objects of
/// class c with a detection of c within match_tolerance. Counts are pooled over all scenes.
inline detection_metrics evaluate(const bev_model& model, const std::vector<scene>& scenes,
                                  const std::vector<scene_images>& images) {
  const int classes = num_classes - 1, grid = model.cfg().grid;
  std::vector<double> detections(classes, 0), true_detections(classes, 0), objects(classes, 0), found(classes, 0);
  forward_state st;
  for (std::size_t i = 0; i < scenes.size(); ++i) {
    model.forward(images[i], st);
    std::vector<int> predicted(static_cast<std::size_t>(model.cfg().pillars()));
    for (int p = 0; p < model.cfg().pillars(); ++p) {
      const float* z = &st.logits[static_cast<std::size_t>(p) * num_classes];
      predicted[static_cast<std::size_t>(p)] = static_cast<int>(std::max_element(z, z + num_classes) - z);
    }
    const auto near = [&](int p, const object& o) {
      float x, y;
      pillar_centre(p, grid, x, y);
      return std::max(std::fabs(x - o.x), std::fabs(y - o.y)) <= match_tolerance;
    };
    for (int p = 0; p < model.cfg().pillars(); ++p) {
      const int c = predicted[static_cast<std::size_t>(p)];
      if (c == 0) continue;
      detections[c - 1] += 1;
      const auto& objs = scenes[i].objects;
      if (std::any_of(objs.begin(), objs.end(), [&](const object& o) { return o.cls == c && near(p, o); }))
        true_detections[c - 1] += 1;
    }
    for (const object& o : scenes[i].objects) {
      objects[o.cls - 1] += 1;
      for (int p = 0; p < model.cfg().pillars(); ++p)
        if (predicted[static_cast<std::size_t>(p)] == o.cls && near(p, o)) {
          found[o.cls - 1] += 1;
          break;
        }
    }
  }
  detection_metrics m;
  for (int c = 0; c < classes; ++c) {
    const double precision = detections[c] > 0 ? true_detections[c] / detections[c] : 0.0;
    const double recall = objects[c] > 0 ? found[c] / objects[c] : 0.0;
    m.f1[c] = precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
    m.mean_f1 += m.f1[c] / classes;
  }
  return m;
}

}  // namespace trainer
