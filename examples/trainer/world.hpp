// bevkd example trainer: a synthetic multi-camera, two-frame BEV world (objects, cameras, images, labels).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace trainer {

constexpr int num_classes = 4;                         ///< Background (0) and three object classes.
constexpr int num_views = 4;                           ///< Cameras around the ego vehicle.
constexpr int num_frames = 2;                          ///< Previous (0) and current (1) frame.
constexpr int num_sources = num_views * num_frames;    ///< Attention sources: source = frame * num_views + view.
constexpr int image_channels = 8;                      ///< Feature channels of every image.
constexpr float pi = 3.14159265358979f;
constexpr float field_of_view = 100.0f * pi / 180.0f;  // 4 x 100 degrees: neighbouring views overlap by 10 degrees
constexpr float max_range = 0.75f;                     // farthest BEV distance from the ego (the grid's corners)

/// @brief Source index of (frame, view) in the attention tensors.
constexpr int source_of(int frame, int view) { return frame * num_views + view; }

/// @brief One object: its class (1..3) and its current BEV position; it was at position - velocity one frame ago.
struct object {
  int cls = 0;
  float x = 0, y = 0, vx = 0, vy = 0;
};

/// @brief One scene: the objects of a two-frame snippet.
struct scene {
  std::vector<object> objects;
};

/// @brief Where a BEV point lands in a view: whether the camera sees it, and its normalised image coordinates.
struct projection {
  bool hit = false;
  float u = 0;  ///< Column in [0, 1): the bearing within the view.
  float r = 0;  ///< Row in [0, 1): the distance from the ego (far objects sit nearer the horizon).
};

/// @brief Projects the BEV point (x, y) in [0, 1)^2 (ego at the centre) into view `view`.
inline projection project(float x, float y, int view) {
  const float dx = x - 0.5f, dy = y - 0.5f;
  float bearing = std::atan2(dy, dx) - static_cast<float>(view) * (pi / 2);
  while (bearing > pi) bearing -= 2 * pi;
  while (bearing <= -pi) bearing += 2 * pi;
  projection p;
  p.u = 0.5f + bearing / field_of_view;
  p.r = std::min(std::sqrt(dx * dx + dy * dy) / max_range, 0.999f);
  p.hit = p.u >= 0.0f && p.u < 1.0f;
  return p;
}

/// @brief A camera's image size and sensor noise: the teacher's cameras are sharper than the student's.
struct camera_config {
  int rows = 16, cols = 32;
  float noise = 0.1f;
  int pixels() const { return rows * cols; }
};

/// @brief The images of one scene for one camera rig: num_sources images of [rows, cols, image_channels].
struct scene_images {
  std::vector<float> pixels;  ///< [source][rows * cols][image_channels]
  const float* image(int source, const camera_config& cam) const {
    return pixels.data() + static_cast<std::size_t>(source) * cam.pixels() * image_channels;
  }
};

/// @brief The appearance of each class in image-feature space; classes 2 and 3 look alike and differ only in motion.
inline std::vector<float> class_appearance(int cls) {
  std::vector<float> e(image_channels);
  const int look = cls == 3 ? 2 : cls;  // a parked car and a moving car have the same appearance
  for (int c = 0; c < image_channels; ++c) e[c] = std::cos(1.9f * static_cast<float>(look * (c + 1)) + 0.7f * look);
  return e;
}

/// @brief Renders every view of both frames: each visible object is a Gaussian blob of its class appearance, plus noise.
inline scene_images render(const scene& s, const camera_config& cam, std::mt19937& rng) {
  constexpr float blob = 0.045f;  // blob radius in normalised image units
  std::normal_distribution<float> noise(0.0f, cam.noise);
  scene_images out;
  out.pixels.assign(static_cast<std::size_t>(num_sources) * cam.pixels() * image_channels, 0.0f);
  for (int frame = 0; frame < num_frames; ++frame)
    for (int view = 0; view < num_views; ++view) {
      float* img = out.pixels.data() + static_cast<std::size_t>(source_of(frame, view)) * cam.pixels() * image_channels;
      for (const object& o : s.objects) {
        const float back = frame == 0 ? 1.0f : 0.0f;  // the previous frame shows where the object was
        const projection p = project(o.x - back * o.vx, o.y - back * o.vy, view);
        if (p.u < -0.1f || p.u > 1.1f) continue;  // blobs just outside the view still bleed into its edge
        const std::vector<float> look = class_appearance(o.cls);
        for (int i = 0; i < cam.rows; ++i)
          for (int j = 0; j < cam.cols; ++j) {
            const float du = (static_cast<float>(j) + 0.5f) / static_cast<float>(cam.cols) - p.u;
            const float dr = (static_cast<float>(i) + 0.5f) / static_cast<float>(cam.rows) - p.r;
            const float w = std::exp(-(du * du + dr * dr) / (2 * blob * blob));
            for (int c = 0; c < image_channels; ++c) img[(i * cam.cols + j) * image_channels + c] += w * look[c];
          }
      }
      for (int k = 0; k < cam.pixels() * image_channels; ++k) img[k] += noise(rng);
    }
  return out;
}

/// @brief Draws a scene: 3 to 6 well-separated objects away from the ego; class 1 walks, class 2 is parked, class 3 drives.
inline scene make_scene(std::mt19937& rng) {
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::uniform_int_distribution<int> count(3, 6), cls(1, 3);
  scene s;
  const int n = count(rng);
  for (int tries = 0; static_cast<int>(s.objects.size()) < n && tries < 200; ++tries) {
    object o;
    o.cls = cls(rng);
    o.x = 0.06f + 0.88f * unit(rng);
    o.y = 0.06f + 0.88f * unit(rng);
    if (std::hypot(o.x - 0.5f, o.y - 0.5f) < 0.12f) continue;  // the ego's own footprint
    const bool crowded = std::any_of(s.objects.begin(), s.objects.end(),
                                     [&](const object& other) { return std::hypot(o.x - other.x, o.y - other.y) < 0.2f; });
    if (crowded) continue;
    const float speed = o.cls == 3 ? 0.09f + 0.04f * unit(rng) : o.cls == 1 ? 0.02f * unit(rng) : 0.0f;
    const float heading = 2 * pi * unit(rng);
    o.vx = speed * std::cos(heading);
    o.vy = speed * std::sin(heading);
    s.objects.push_back(o);
  }
  return s;
}

/// @brief Centre of pillar p of a grid x grid BEV map in world units (pillar p = row * grid + column, row along y).
inline void pillar_centre(int p, int grid, float& x, float& y) {
  x = (static_cast<float>(p % grid) + 0.5f) / static_cast<float>(grid);
  y = (static_cast<float>(p / grid) + 0.5f) / static_cast<float>(grid);
}

/// @brief Half the side of an object's square footprint: one student pillar (1/8) across.
constexpr float footprint = 0.0625f;

/// @brief Per-pillar class labels on a grid: the class of the object whose footprint covers the pillar centre, else 0.
///
/// A footprint rather than "the pillar holding the centre" keeps the two grids consistent: an object covers
/// about one 8x8 pillar and the 2x2 block of 16x16 pillars under it, so the teacher's maps averaged onto the
/// student's grid still say "object" where the student's label does.
inline std::vector<int> pillar_labels(const scene& s, int grid) {
  std::vector<int> labels(static_cast<std::size_t>(grid * grid), 0);
  for (int p = 0; p < grid * grid; ++p) {
    float x, y;
    pillar_centre(p, grid, x, y);
    for (const object& o : s.objects)
      if (std::max(std::fabs(x - o.x), std::fabs(y - o.y)) < footprint) labels[static_cast<std::size_t>(p)] = o.cls;
  }
  return labels;
}

/// @brief A BEV grid's view geometry: each pillar's projection into each view, and the camera-hit mask.
struct grid_geometry {
  int grid = 0;
  std::vector<projection> ref;         ///< [P][num_views] the pillar centre projected into each view.
  std::vector<std::uint8_t> hit_mask;  ///< [P][num_sources] nonzero where the pillar's view is hit (both frames).
  std::vector<int> hit_views;          ///< [P] number of views that see the pillar (>= 1: the views cover 360 degrees).

  explicit grid_geometry(int g) : grid(g) {
    const int pillars = g * g;
    ref.resize(static_cast<std::size_t>(pillars * num_views));
    hit_mask.assign(static_cast<std::size_t>(pillars * num_sources), 0);
    hit_views.assign(static_cast<std::size_t>(pillars), 0);
    for (int p = 0; p < pillars; ++p) {
      float x, y;
      pillar_centre(p, g, x, y);
      for (int v = 0; v < num_views; ++v) {
        const projection pr = project(x, y, v);
        ref[static_cast<std::size_t>(p * num_views + v)] = pr;
        if (!pr.hit) continue;
        ++hit_views[static_cast<std::size_t>(p)];
        for (int f = 0; f < num_frames; ++f) hit_mask[static_cast<std::size_t>(p * num_sources + source_of(f, v))] = 1;
      }
    }
  }
};

/// @brief A data set: scenes with their images as each rig sees them (teacher: sharp; student: degraded).
struct dataset {
  std::vector<scene> scenes;
  std::vector<scene_images> teacher_images, student_images;
};

/// @brief Draws `count` scenes and renders them for both camera rigs, from a fixed seed.
inline dataset make_dataset(int count, const camera_config& teacher_cam, const camera_config& student_cam, unsigned seed) {
  std::mt19937 rng(seed);
  dataset d;
  for (int i = 0; i < count; ++i) {
    d.scenes.push_back(make_scene(rng));
    d.teacher_images.push_back(render(d.scenes.back(), teacher_cam, rng));
    d.student_images.push_back(render(d.scenes.back(), student_cam, rng));
  }
  return d;
}

}  // namespace trainer
