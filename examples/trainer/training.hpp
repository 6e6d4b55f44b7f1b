// bevkd example trainer: the training loop, with the label loss written out and every distillation loss from bevkd.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <bevkd/bevkd.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "loss_backend.hpp"
#include "model.hpp"
#include "world.hpp"

namespace trainer {

/// @brief The teacher's outputs on the training scenes, already moved onto the student's BEV grid.
///
/// The teacher's 16x16 maps are area-resampled (2x2 means) to 8x8 with bevkd::bev_resample, once, before the
/// students train: the targets are constants, so resampling the teacher (rather than upsampling the student every
/// step) costs nothing per step, keeps the student's loss on its own grid, and an average of per-source attention
/// distributions is still a distribution (bevkd then averages the teacher's 4 heads into the student's 2).
struct teacher_targets {
  int teacher_channels = 0, teacher_heads = 0;
  std::vector<float> logits;     ///< [scenes][P_S][NC] class logits (the area mean of the teacher's logits).
  std::vector<float> features;   ///< [scenes][P_S][D_T] BEV features.
  std::vector<float> attention;  ///< [scenes][P_S][H_T][S][K] attention probabilities.
};

/// @brief Runs the teacher over the scenes (its own sharp images) and resamples its outputs onto the student grid.
inline teacher_targets compute_targets(const bev_model& teacher, const std::vector<scene_images>& images, int student_grid,
                                       loss_backend& backend) {
  const model_config& tc = teacher.cfg();
  const bevkd::index_t G = tc.grid, g = student_grid, Ps = g * g;
  teacher_targets t;
  t.teacher_channels = tc.channels;
  t.teacher_heads = tc.heads;
  const bevkd::bev_resample area({bevkd::resample_mode::area});
  const auto to_student_grid = [&](const std::vector<float>& map, bevkd::index_t width, std::vector<float>& out) {
    const std::size_t offset = out.size();
    out.resize(offset + static_cast<std::size_t>(Ps * width));
    backend.resample(area, bevkd::grid_nhwc<const float>(map.data(), 1, G, G, width),
                     bevkd::grid_nhwc(out.data() + offset, 1, g, g, width));
  };
  forward_state st;
  for (const scene_images& img : images) {
    teacher.forward(img, st);
    to_student_grid(st.logits, num_classes, t.logits);
    to_student_grid(st.bev, tc.channels, t.features);
    to_student_grid(st.att, tc.attention_width(), t.attention);
  }
  return t;
}

/// @brief Which distillation losses a run uses, and their weights (0 = off).
struct distill_weights {
  double response_kl = 0, feature_mse = 0, attention = 0;
  bool any() const { return response_kl > 0 || feature_mse > 0 || attention > 0; }
};

/// @brief Training hyper-parameters.
struct train_config {
  int steps = 300;
  int batch = 8;
  int log_every = 25;
  unsigned seed = 1;
  adam_config adam;
  float foreground_weight = 3.0f;  ///< Label loss weight of object pillars (background: 1): objects are rare.
  double kl_temperature = 2.0;
};

/// @brief Mean losses over one logging window (distillation losses as bevkd returns them, before their weights).
struct loss_log {
  int step = 0;
  double label = 0, response_kl = 0, feature_mse = 0, attention = 0;
};

/// @brief What a training run reports.
struct train_result {
  std::vector<loss_log> log;
  bool gradients_finite = true;  ///< Every parameter gradient and every bevkd gradient was finite at every step.
  double seconds = 0;
};

/// @brief Called as training advances: (step, steps, latest window's total loss).
using progress_fn = std::function<void(int, int, double)>;

/// @brief The scenes a model trains on: images as its own cameras see them, and labels on its own grid.
struct training_set {
  const std::vector<scene_images>* images = nullptr;
  std::vector<std::vector<int>> labels;
};

/// @brief Labels of every scene on a grid.
inline training_set make_training_set(const std::vector<scene>& scenes, const std::vector<scene_images>& images, int grid) {
  training_set t;
  t.images = &images;
  for (const scene& s : scenes) t.labels.push_back(pillar_labels(s, grid));
  return t;
}

namespace detail {

/// @brief Weighted cross-entropy over a batch's pillars, written out: returns the loss, writes d loss / d logits.
inline double label_loss(const std::vector<float>& logits, const std::vector<int>& labels, float foreground_weight,
                         std::vector<float>& grad) {
  const std::size_t rows = labels.size();
  double weight_sum = 0, loss = 0;
  for (int y : labels) weight_sum += y ? foreground_weight : 1.0f;
  for (std::size_t r = 0; r < rows; ++r) {
    const float* z = &logits[r * num_classes];
    float top = z[0], sum = 0;
    for (int k = 1; k < num_classes; ++k) top = std::max(top, z[k]);
    for (int k = 0; k < num_classes; ++k) sum += std::exp(z[k] - top);
    const float w = labels[r] ? foreground_weight : 1.0f;
    loss += w * (std::log(sum) + top - z[labels[r]]);
    for (int k = 0; k < num_classes; ++k) {
      const float q = std::exp(z[k] - top) / sum;
      grad[r * num_classes + k] = static_cast<float>(w * (q - (k == labels[r] ? 1.0f : 0.0f)) / weight_sum);
    }
  }
  return loss / weight_sum;
}

inline bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

/// @brief Copies per-scene slices of `from` (each `width` floats) for the batch's scenes into one contiguous batch.
inline void gather(const std::vector<float>& from, std::size_t width, const std::vector<int>& picks, std::vector<float>& to) {
  to.resize(picks.size() * width);
  for (std::size_t b = 0; b < picks.size(); ++b)
    std::copy(from.begin() + static_cast<std::ptrdiff_t>(picks[b] * width),
              from.begin() + static_cast<std::ptrdiff_t>((picks[b] + 1) * width), to.begin() + static_cast<std::ptrdiff_t>(b * width));
}

}  // namespace detail

/// @brief The distillation side of a student run: the teacher's targets, the loss weights, the feature adapter, and
/// the backend the bevkd losses run on.
///
/// The student's BEV features have fewer channels than the teacher's, so a learned linear adapter [D_T, D_S]
/// (trained with the student, dropped after training) lifts them to the teacher's width before the feature MSE;
/// per_pillar_l2 normalisation then compares directions, not the two models' arbitrary feature scales.
struct distillation {
  const teacher_targets* targets = nullptr;
  distill_weights weights;
  tensor adapter;                   ///< [D_T, D_S]
  loss_backend* backend = nullptr;  ///< Runs every bevkd loss (host or CUDA); shared by the experiment's runs.
};

/// @brief Trains a model with Adam on its labels, plus the distillation losses when `distill` is given.
inline train_result train(bev_model& model, const training_set& data, const train_config& cfg, distillation* distill,
                          const progress_fn& progress = {}) {
  const auto start = std::chrono::steady_clock::now();
  const model_config& c = model.cfg();
  const int B = cfg.batch, P = c.pillars(), D = c.channels, A = c.attention_width(), K = c.points;
  const bevkd::index_t N = B * P;
  std::mt19937 rng(cfg.seed);
  std::uniform_int_distribution<int> pick(0, static_cast<int>(data.labels.size()) - 1);
  if (distill && !distill->backend) throw std::invalid_argument("train: distillation.backend is null");

  const bevkd::response_kl kl({bevkd::kl_mode::softmax, cfg.kl_temperature, bevkd::reduction::mean,
                               distill ? distill->weights.response_kl : 0.0, 1.0, /*accumulate=*/true});
  const bevkd::feature_mse mse({bevkd::mse_normalize::per_pillar_l2, 1e-12, bevkd::reduction::mean,
                                distill ? distill->weights.feature_mse : 0.0});
  bevkd::attention_distill_options att_options;  // per-source KL: BEVFormer's own softmax over each source's points
  att_options.teacher_input = bevkd::attention_input::probabilities;
  att_options.loss_weight = distill ? distill->weights.attention : 0.0;
  const bevkd::attention_distill att(att_options);

  std::vector<forward_state> states(static_cast<std::size_t>(B));
  std::vector<int> picks(static_cast<std::size_t>(B)), labels;
  std::vector<float> logits, d_logits, bev, d_bev, att_logits, d_att_logits;
  std::vector<float> t_logits, t_features, t_attention, lifted, d_lifted;
  std::vector<std::uint8_t> mask;
  train_result result;
  loss_log window;
  std::vector<std::pair<std::string, tensor*>> params = model.w.named();
  if (distill && distill->weights.feature_mse > 0) params.emplace_back("feature_adapter.weight", &distill->adapter);

  for (int step = 1; step <= cfg.steps; ++step) {
    labels.clear();
    logits.clear();
    bev.clear();
    att_logits.clear();
    for (int b = 0; b < B; ++b) {
      picks[static_cast<std::size_t>(b)] = pick(rng);
      const int i = picks[static_cast<std::size_t>(b)];
      model.forward((*data.images)[static_cast<std::size_t>(i)], states[static_cast<std::size_t>(b)]);
      const forward_state& st = states[static_cast<std::size_t>(b)];
      labels.insert(labels.end(), data.labels[static_cast<std::size_t>(i)].begin(), data.labels[static_cast<std::size_t>(i)].end());
      logits.insert(logits.end(), st.logits.begin(), st.logits.end());
      bev.insert(bev.end(), st.bev.begin(), st.bev.end());
      att_logits.insert(att_logits.end(), st.att_logits.begin(), st.att_logits.end());
    }
    d_logits.assign(logits.size(), 0.0f);
    d_bev.assign(bev.size(), 0.0f);
    d_att_logits.assign(att_logits.size(), 0.0f);
    window.label += detail::label_loss(logits, labels, cfg.foreground_weight, d_logits);

    if (distill && distill->weights.response_kl > 0) {
      // Student logits [B, 8x8, NC] against the teacher's, resampled to 8x8; accumulates into the label gradient.
      detail::gather(distill->targets->logits, static_cast<std::size_t>(P * num_classes), picks, t_logits);
      const auto r = distill->backend->response_kl(
          kl, bevkd::bev_nhwc<const float>(logits.data(), B, c.grid, c.grid, num_classes),
          bevkd::bev_nhwc<const float>(t_logits.data(), B, c.grid, c.grid, num_classes),
          bevkd::bev_nhwc(d_logits.data(), B, c.grid, c.grid, num_classes));
      window.response_kl += r.loss / distill->weights.response_kl;
    }
    if (distill && distill->weights.feature_mse > 0) {
      // Lift the student's D_S channels to the teacher's D_T with the adapter, compare, and backpropagate.
      const int DT = distill->targets->teacher_channels;
      detail::gather(distill->targets->features, static_cast<std::size_t>(P * DT), picks, t_features);
      lifted.assign(static_cast<std::size_t>(N * DT), 0.0f);
      d_lifted.assign(lifted.size(), 0.0f);
      const std::vector<float>& Wa = distill->adapter.value;
      for (bevkd::index_t r = 0; r < N; ++r)
        for (int o = 0; o < DT; ++o)
          for (int d = 0; d < D; ++d) lifted[r * DT + o] += Wa[o * D + d] * bev[r * D + d];
      const auto m = distill->backend->feature_mse(
          mse, bevkd::bev_nhwc<const float>(lifted.data(), B, c.grid, c.grid, DT),
          bevkd::bev_nhwc<const float>(t_features.data(), B, c.grid, c.grid, DT),
          bevkd::bev_nhwc(d_lifted.data(), B, c.grid, c.grid, DT));
      for (bevkd::index_t r = 0; r < N; ++r)
        for (int o = 0; o < DT; ++o)
          for (int d = 0; d < D; ++d) {
            distill->adapter.grad[o * D + d] += d_lifted[r * DT + o] * bev[r * D + d];
            d_bev[r * D + d] += d_lifted[r * DT + o] * Wa[o * D + d];
          }
      result.gradients_finite = result.gradients_finite && detail::all_finite(d_lifted);
      window.feature_mse += m.loss / distill->weights.feature_mse;
    }
    if (distill && distill->weights.attention > 0) {
      // Student logits [B*P, H_S, S, K] vs the teacher's probabilities [B*P, H_T, S, K] (heads averaged by bevkd);
      // sources a pillar's camera does not see are masked out.
      const int HT = distill->targets->teacher_heads;
      detail::gather(distill->targets->attention, static_cast<std::size_t>(P * HT * num_sources * K), picks, t_attention);
      mask.clear();
      for (int b = 0; b < B; ++b) mask.insert(mask.end(), model.geo.hit_mask.begin(), model.geo.hit_mask.end());
      const auto r = distill->backend->attention_distill(
          att, bevkd::contiguous_view<const float, 4>(att_logits.data(), {N, c.heads, num_sources, K}),
          bevkd::contiguous_view<const float, 4>(t_attention.data(), {N, HT, num_sources, K}),
          bevkd::contiguous_view<float, 4>(d_att_logits.data(), {N, c.heads, num_sources, K}),
          bevkd::contiguous_view<const std::uint8_t, 2>(mask.data(), {N, num_sources}));
      window.attention += r.loss / distill->weights.attention;
    }
    result.gradients_finite = result.gradients_finite && detail::all_finite(d_logits) && detail::all_finite(d_bev) &&
                              detail::all_finite(d_att_logits);

    for (int b = 0; b < B; ++b) {
      output_grads g;
      g.logits = &d_logits[static_cast<std::size_t>(b * P * num_classes)];
      g.bev = &d_bev[static_cast<std::size_t>(b * P * D)];
      g.att_logits = &d_att_logits[static_cast<std::size_t>(b * P * A)];
      model.backward((*data.images)[static_cast<std::size_t>(picks[static_cast<std::size_t>(b)])],
                     states[static_cast<std::size_t>(b)], g);
    }
    for (auto& named : params) {
      result.gradients_finite = result.gradients_finite && finite_gradient(*named.second);
      adam_step(*named.second, cfg.adam, step);
    }

    if (step % cfg.log_every == 0 || step == cfg.steps) {
      const int len = step % cfg.log_every == 0 ? cfg.log_every : step % cfg.log_every;
      window.step = step;
      window.label /= len;
      window.response_kl /= len;
      window.feature_mse /= len;
      window.attention /= len;
      result.log.push_back(window);
      if (progress) progress(step, cfg.steps, window.label + window.response_kl + window.feature_mse + window.attention);
      window = loss_log{};
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

/// @brief A fresh feature adapter [D_T, D_S] from a seed.
inline tensor make_adapter(int teacher_channels, int student_channels, unsigned seed) {
  std::mt19937 rng(seed);
  tensor t;
  t.init({teacher_channels, student_channels}, 1.0f / std::sqrt(static_cast<float>(student_channels)), rng);
  return t;
}

}  // namespace trainer
