// bevkd example trainer: a one-layer BEVFormer-like detector (BEV queries, deformable attention, class head) and Adam.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "world.hpp"

namespace trainer {

/// @brief A model's sizes: BEV grid, channels, attention heads, sampling points per source, and its camera rig.
struct model_config {
  int grid = 16;
  int channels = 16;
  int heads = 4;
  int points = 5;
  camera_config camera;

  int pillars() const { return grid * grid; }
  int head_dim() const { return channels / heads; }
  /// Attention logits per pillar: heads x sources x points, laid out [H, S, K].
  int attention_width() const { return heads * num_sources * points; }
};

/// @brief A parameter tensor with its gradient and Adam moments.
struct tensor {
  std::vector<std::int64_t> shape;
  std::vector<float> value, grad, m, v;

  void init(std::vector<std::int64_t> s, float scale, std::mt19937& rng) {
    shape = std::move(s);
    std::size_t n = 1;
    for (auto e : shape) n *= static_cast<std::size_t>(e);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    value.resize(n);
    for (float& x : value) x = scale * normal(rng);
    grad.assign(n, 0.0f);
    m.assign(n, 0.0f);
    v.assign(n, 0.0f);
  }
};

/// @brief The learned weights; names follow a PyTorch state_dict so the safetensors files read naturally.
struct model_weights {
  model_config cfg;
  tensor bev_queries;   ///< [P, D] one learned query per pillar.
  tensor query_proj;    ///< [D, Ci] adds what the current frame shows at the pillar to its query.
  tensor value_proj_w;  ///< [D, Ci] image features -> values (heads x head_dim).
  tensor value_proj_b;  ///< [D]
  tensor attention_w;   ///< [H*S*K, D] query -> attention logits.
  tensor attention_b;   ///< [H*S*K]
  tensor output_w;      ///< [D, 2D] (previous-frame, current-frame) head outputs -> BEV feature.
  tensor output_b;      ///< [D]
  tensor class_w;       ///< [NC, D] per-pillar class head.
  tensor class_b;       ///< [NC]

  /// @brief Every tensor with its state_dict name, in a fixed order.
  std::vector<std::pair<std::string, tensor*>> named() {
    return {{"bev_queries", &bev_queries},       {"query_proj.weight", &query_proj},
            {"value_proj.weight", &value_proj_w}, {"value_proj.bias", &value_proj_b},
            {"attention.weight", &attention_w},   {"attention.bias", &attention_b},
            {"output_proj.weight", &output_w},    {"output_proj.bias", &output_b},
            {"class_head.weight", &class_w},      {"class_head.bias", &class_b}};
  }
};

/// @brief Freshly initialised weights (scaled normal, zero biases, near-uniform attention) from a seed.
inline model_weights init_model(const model_config& cfg, unsigned seed) {
  std::mt19937 rng(seed);
  const std::int64_t P = cfg.pillars(), D = cfg.channels, A = cfg.attention_width();
  const float ci = static_cast<float>(image_channels), d = static_cast<float>(D);
  model_weights w;
  w.cfg = cfg;
  w.bev_queries.init({P, D}, 0.5f, rng);
  w.query_proj.init({D, image_channels}, 1.0f / std::sqrt(ci), rng);
  w.value_proj_w.init({D, image_channels}, 1.0f / std::sqrt(ci), rng);
  w.value_proj_b.init({D}, 0.0f, rng);
  w.attention_w.init({A, D}, 0.1f / std::sqrt(d), rng);
  w.attention_b.init({A}, 0.0f, rng);
  w.output_w.init({D, 2 * D}, 1.0f / std::sqrt(2 * d), rng);
  w.output_b.init({D}, 0.0f, rng);
  w.class_w.init({num_classes, D}, 1.0f / std::sqrt(d), rng);
  w.class_b.init({num_classes}, 0.0f, rng);
  return w;
}

/// @brief Offset of sampling point k of head h around a reference point: a cross whose size grows with the head index.
///
/// Teacher head groups (h, h+1) straddle the student's head h/2 in scale, so averaging teacher heads (attention
/// distillation, weight inheritance) compares distributions over comparable neighbourhoods.
inline void sampling_offset(int h, int heads, int k, float& du, float& dr) {
  static const float dir[5][2] = {{0, 0}, {1, 0}, {-1, 0}, {0, 1}, {0, -1}};
  const float scale = 0.02f + 0.06f * (static_cast<float>(h) + 0.5f) / static_cast<float>(heads);
  du = scale * dir[k % 5][0] * static_cast<float>(1 + k / 5);
  dr = scale * dir[k % 5][1] * static_cast<float>(1 + k / 5);
}

/// @brief Calls tap(pixel, weight) for the bilinear taps of normalised point (u, r) in a rows x cols image (zero outside).
template <class Tap>
void bilinear_taps(float u, float r, const camera_config& cam, Tap&& tap) {
  const float x = u * static_cast<float>(cam.cols) - 0.5f, y = r * static_cast<float>(cam.rows) - 0.5f;
  const int x0 = static_cast<int>(std::floor(x)), y0 = static_cast<int>(std::floor(y));
  const float fx = x - static_cast<float>(x0), fy = y - static_cast<float>(y0);
  for (int dy = 0; dy < 2; ++dy)
    for (int dx = 0; dx < 2; ++dx) {
      const int xi = x0 + dx, yi = y0 + dy;
      if (xi < 0 || yi < 0 || xi >= cam.cols || yi >= cam.rows) continue;
      tap(yi * cam.cols + xi, (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy));
    }
}

/// @brief Everything one scene's forward pass keeps for its backward pass.
struct forward_state {
  std::vector<float> centre;      ///< [P, Ci] current-frame image feature at the pillar (mean over the views that see it).
  std::vector<float> query;       ///< [P, D] bev_queries + query_proj(centre).
  std::vector<float> values;      ///< [S][pixels, D] projected image features.
  std::vector<float> att_logits;  ///< [P, H, S, K]
  std::vector<float> att;         ///< [P, H, S, K] softmax over K (per source, as BEVFormer).
  std::vector<float> samples;     ///< [P, H, S, K, head_dim] bilinear samples of the values.
  std::vector<float> fused;       ///< [P, 2D] attention output per frame: (previous, current).
  std::vector<float> pre_act;     ///< [P, D] output projection before the ReLU.
  std::vector<float> bev;         ///< [P, D] BEV features.
  std::vector<float> logits;      ///< [P, NC] class logits.
};

/// @brief Gradients arriving at a scene's outputs: class logits, plus optional extra gradients on BEV features and
/// attention logits (from the distillation losses).
struct output_grads {
  const float* logits = nullptr;      ///< [P, NC]
  const float* bev = nullptr;         ///< [P, D] or null.
  const float* att_logits = nullptr;  ///< [P, H, S, K] or null.
};

/// @brief The model: its weights, its grid geometry, and plain-loop forward and backward passes.
class bev_model {
 public:
  model_weights w;
  grid_geometry geo;

  explicit bev_model(model_weights weights) : w(std::move(weights)), geo(w.cfg.grid) {}
  const model_config& cfg() const { return w.cfg; }

  /// @brief Runs one scene's images through the model, filling `st`.
  void forward(const scene_images& images, forward_state& st) const {
    const model_config& c = cfg();
    const int P = c.pillars(), D = c.channels, H = c.heads, K = c.points, hd = c.head_dim(), px = c.camera.pixels();
    st.centre.assign(static_cast<std::size_t>(P * image_channels), 0.0f);
    st.query.assign(static_cast<std::size_t>(P * D), 0.0f);
    st.values.assign(static_cast<std::size_t>(num_sources * px * D), 0.0f);
    st.att_logits.assign(static_cast<std::size_t>(P * c.attention_width()), 0.0f);
    st.att.assign(st.att_logits.size(), 0.0f);
    st.samples.assign(st.att_logits.size() * static_cast<std::size_t>(hd), 0.0f);
    st.fused.assign(static_cast<std::size_t>(P * 2 * D), 0.0f);
    st.pre_act.assign(static_cast<std::size_t>(P * D), 0.0f);
    st.bev.assign(static_cast<std::size_t>(P * D), 0.0f);
    st.logits.assign(static_cast<std::size_t>(P * num_classes), 0.0f);

    project_values(images, st);
    build_queries(images, st);
    // Attention logits: a linear layer on the query; a softmax over the K points of each (head, source).
    for (int p = 0; p < P; ++p)
      for (int j = 0; j < c.attention_width(); ++j) {
        float z = w.attention_b.value[j];
        for (int d = 0; d < D; ++d) z += w.attention_w.value[j * D + d] * st.query[p * D + d];
        st.att_logits[p * c.attention_width() + j] = z;
      }
    for (int row = 0; row < P * H * num_sources; ++row) softmax(&st.att_logits[row * K], &st.att[row * K], K);
    // Deformable sampling: each head reads head_dim value channels at K points around the pillar's projection;
    // views are averaged (as BEVFormer's spatial cross-attention), frames are kept apart for the output layer.
    for (int p = 0; p < P; ++p)
      for_hit_sources(p, [&](int s, int frame, const projection& ref, float view_share) {
        const float* vals = &st.values[static_cast<std::size_t>(s) * px * D];
        for (int h = 0; h < H; ++h)
          for (int k = 0; k < K; ++k) {
            const int row = ((p * H + h) * num_sources + s) * K + k;
            float* smp = &st.samples[static_cast<std::size_t>(row) * hd];
            float du, dr;
            sampling_offset(h, H, k, du, dr);
            bilinear_taps(ref.u + du, ref.r + dr, c.camera, [&](int pix, float t) {
              for (int e = 0; e < hd; ++e) smp[e] += t * vals[pix * D + h * hd + e];
            });
            const float a = st.att[row] * view_share;
            for (int e = 0; e < hd; ++e) st.fused[p * 2 * D + frame * D + h * hd + e] += a * smp[e];
          }
      });
    // Output projection + ReLU gives the BEV feature; a linear class head gives the logits.
    for (int p = 0; p < P; ++p) {
      for (int d = 0; d < D; ++d) {
        float u = w.output_b.value[d];
        for (int j = 0; j < 2 * D; ++j) u += w.output_w.value[d * 2 * D + j] * st.fused[p * 2 * D + j];
        st.pre_act[p * D + d] = u;
        st.bev[p * D + d] = u > 0 ? u : 0;
      }
      for (int k = 0; k < num_classes; ++k) {
        float z = w.class_b.value[k];
        for (int d = 0; d < D; ++d) z += w.class_w.value[k * D + d] * st.bev[p * D + d];
        st.logits[p * num_classes + k] = z;
      }
    }
  }

  /// @brief Adds this scene's parameter gradients (given the gradients at its outputs) into w.*.grad.
  void backward(const scene_images& images, const forward_state& st, const output_grads& g) {
    const model_config& c = cfg();
    const int P = c.pillars(), D = c.channels, H = c.heads, K = c.points, hd = c.head_dim(), px = c.camera.pixels();
    std::vector<float> d_bev(static_cast<std::size_t>(P * D), 0.0f), d_fused(static_cast<std::size_t>(P * 2 * D), 0.0f);
    // Class head and output projection.
    for (int p = 0; p < P; ++p) {
      for (int k = 0; k < num_classes; ++k) {
        const float gl = g.logits[p * num_classes + k];
        w.class_b.grad[k] += gl;
        for (int d = 0; d < D; ++d) {
          w.class_w.grad[k * D + d] += gl * st.bev[p * D + d];
          d_bev[p * D + d] += gl * w.class_w.value[k * D + d];
        }
      }
      for (int d = 0; d < D; ++d) {
        const float gb = d_bev[p * D + d] + (g.bev ? g.bev[p * D + d] : 0.0f);
        const float gu = st.pre_act[p * D + d] > 0 ? gb : 0.0f;
        w.output_b.grad[d] += gu;
        for (int j = 0; j < 2 * D; ++j) {
          w.output_w.grad[d * 2 * D + j] += gu * st.fused[p * 2 * D + j];
          d_fused[p * 2 * D + j] += gu * w.output_w.value[d * 2 * D + j];
        }
      }
    }
    // Deformable sampling: gradients to the attention probabilities and, through the bilinear taps, to the values.
    std::vector<float> d_att(st.att.size(), 0.0f), d_values(st.values.size(), 0.0f);
    for (int p = 0; p < P; ++p)
      for_hit_sources(p, [&](int s, int frame, const projection& ref, float view_share) {
        float* dvals = &d_values[static_cast<std::size_t>(s) * px * D];
        for (int h = 0; h < H; ++h)
          for (int k = 0; k < K; ++k) {
            const int row = ((p * H + h) * num_sources + s) * K + k;
            const float* smp = &st.samples[static_cast<std::size_t>(row) * hd];
            const float* gf = &d_fused[p * 2 * D + frame * D + h * hd];
            float dot = 0;
            for (int e = 0; e < hd; ++e) dot += gf[e] * smp[e];
            d_att[row] += view_share * dot;
            const float a = st.att[row] * view_share;
            float du, dr;
            sampling_offset(h, H, k, du, dr);
            bilinear_taps(ref.u + du, ref.r + dr, c.camera, [&](int pix, float t) {
              for (int e = 0; e < hd; ++e) dvals[pix * D + h * hd + e] += t * a * gf[e];
            });
          }
      });
    // Softmax over K, then the attention linear layer; distillation gradients on the logits join here.
    const int A = c.attention_width();
    std::vector<float> d_query(static_cast<std::size_t>(P * D), 0.0f);
    for (int p = 0; p < P; ++p)
      for (int j0 = 0; j0 < A; j0 += K) {
        const int row = p * A + j0;
        float mean = 0;
        for (int k = 0; k < K; ++k) mean += st.att[row + k] * d_att[row + k];
        for (int k = 0; k < K; ++k) {
          const float dz = st.att[row + k] * (d_att[row + k] - mean) + (g.att_logits ? g.att_logits[row + k] : 0.0f);
          const int j = j0 + k;
          w.attention_b.grad[j] += dz;
          for (int d = 0; d < D; ++d) {
            w.attention_w.grad[j * D + d] += dz * st.query[p * D + d];
            d_query[p * D + d] += dz * w.attention_w.value[j * D + d];
          }
        }
      }
    // Queries: the learned embedding and the projection of the current-frame feature.
    for (int p = 0; p < P; ++p)
      for (int d = 0; d < D; ++d) {
        const float gq = d_query[p * D + d];
        w.bev_queries.grad[p * D + d] += gq;
        for (int ch = 0; ch < image_channels; ++ch) w.query_proj.grad[d * image_channels + ch] += gq * st.centre[p * image_channels + ch];
      }
    // Value projection, shared by every pixel of every source.
    for (int s = 0; s < num_sources; ++s) {
      const float* img = images.image(s, c.camera);
      for (int pix = 0; pix < px; ++pix)
        for (int d = 0; d < D; ++d) {
          const float gv = d_values[(static_cast<std::size_t>(s) * px + pix) * D + d];
          if (gv == 0.0f) continue;
          w.value_proj_b.grad[d] += gv;
          for (int ch = 0; ch < image_channels; ++ch) w.value_proj_w.grad[d * image_channels + ch] += gv * img[pix * image_channels + ch];
        }
    }
  }

 private:
  static void softmax(const float* z, float* out, int n) {
    float top = z[0];
    for (int i = 1; i < n; ++i) top = std::max(top, z[i]);
    float sum = 0;
    for (int i = 0; i < n; ++i) sum += out[i] = std::exp(z[i] - top);
    for (int i = 0; i < n; ++i) out[i] /= sum;
  }

  // Calls f(source, frame, reference point, 1 / views seeing the pillar) for each source whose view sees pillar p.
  template <class F>
  void for_hit_sources(int p, F&& f) const {
    const float view_share = 1.0f / static_cast<float>(geo.hit_views[static_cast<std::size_t>(p)]);
    for (int frame = 0; frame < num_frames; ++frame)
      for (int v = 0; v < num_views; ++v) {
        const projection& ref = geo.ref[static_cast<std::size_t>(p * num_views + v)];
        if (ref.hit) f(source_of(frame, v), frame, ref, view_share);
      }
  }

  void project_values(const scene_images& images, forward_state& st) const {
    const int D = cfg().channels, px = cfg().camera.pixels();
    for (int s = 0; s < num_sources; ++s) {
      const float* img = images.image(s, cfg().camera);
      for (int pix = 0; pix < px; ++pix)
        for (int d = 0; d < D; ++d) {
          float v = w.value_proj_b.value[d];
          for (int ch = 0; ch < image_channels; ++ch) v += w.value_proj_w.value[d * image_channels + ch] * img[pix * image_channels + ch];
          st.values[(static_cast<std::size_t>(s) * px + pix) * D + d] = v;
        }
    }
  }

  // Content-aware queries: what the current frame shows at the pillar's projection steers where the heads look.
  void build_queries(const scene_images& images, forward_state& st) const {
    const int P = cfg().pillars(), D = cfg().channels;
    for (int p = 0; p < P; ++p) {
      float* centre = &st.centre[static_cast<std::size_t>(p) * image_channels];
      for (int v = 0; v < num_views; ++v) {
        const projection& ref = geo.ref[static_cast<std::size_t>(p * num_views + v)];
        if (!ref.hit) continue;
        const float* img = images.image(source_of(1, v), cfg().camera);
        const float share = 1.0f / static_cast<float>(geo.hit_views[static_cast<std::size_t>(p)]);
        bilinear_taps(ref.u, ref.r, cfg().camera, [&](int pix, float t) {
          for (int ch = 0; ch < image_channels; ++ch) centre[ch] += share * t * img[pix * image_channels + ch];
        });
      }
      for (int d = 0; d < D; ++d) {
        float q = w.bev_queries.value[p * D + d];
        for (int ch = 0; ch < image_channels; ++ch) q += w.query_proj.value[d * image_channels + ch] * centre[ch];
        st.query[p * D + d] = q;
      }
    }
  }
};

/// @brief Hyper-parameters of Adam.
struct adam_config {
  float lr = 0.01f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
};

/// @brief One Adam step on a tensor (step counts from 1), then clears its gradient.
inline void adam_step(tensor& t, const adam_config& a, int step) {
  const float c1 = 1.0f - std::pow(a.beta1, static_cast<float>(step)), c2 = 1.0f - std::pow(a.beta2, static_cast<float>(step));
  for (std::size_t i = 0; i < t.value.size(); ++i) {
    const float g = t.grad[i];
    t.m[i] = a.beta1 * t.m[i] + (1 - a.beta1) * g;
    t.v[i] = a.beta2 * t.v[i] + (1 - a.beta2) * g * g;
    t.value[i] -= a.lr * (t.m[i] / c1) / (std::sqrt(t.v[i] / c2) + a.eps);
    t.grad[i] = 0.0f;
  }
}

/// @brief True when every gradient entry of the tensor is finite.
inline bool finite_gradient(const tensor& t) {
  for (float g : t.grad)
    if (!std::isfinite(g)) return false;
  return true;
}

}  // namespace trainer
