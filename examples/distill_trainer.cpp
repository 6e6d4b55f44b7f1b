// bevkd example: distils a tiny BEVFormer-like teacher into a smaller student (all three parts) and prints an ablation.
// SPDX-License-Identifier: Apache-2.0
//
// The models, the synthetic world and the training loop are in examples/trainer/; this file parses the
// command line and prints the results. Usage:
//   distill_trainer [--quick] [--steps N] [--seed S] [--out DIR] [--rules FILE] [--device cpu|cuda]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>

#include "trainer/experiment.hpp"

#ifndef BEVKD_TRAINER_RULES
#define BEVKD_TRAINER_RULES "examples/trainer/student_rules.json"
#endif
#ifndef BEVKD_TRAINER_OUT
#define BEVKD_TRAINER_OUT "distill_trainer_out"
#endif

namespace {

void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--quick] [--steps N] [--seed S] [--out DIR] [--rules FILE] [--device cpu|cuda]\n"
               "  --quick      a shortened configuration (a few seconds; used by the tests)\n"
               "  --steps N    training steps of the teacher and of each student run\n"
               "  --seed S     seed of the world, the initialisations and the batches\n"
               "  --out DIR    where the safetensors files go (default: %s)\n"
               "  --rules FILE the weight-inheritance rules (default: %s)\n"
               "  --device D   where the bevkd calls run: cpu (default) or cuda (the models stay on the CPU)\n",
               argv0, BEVKD_TRAINER_OUT, BEVKD_TRAINER_RULES);
}

/// @brief What the command line asks for: the experiment, and where its bevkd calls run.
struct options {
  trainer::experiment_config cfg;
  trainer::device device = trainer::device::cpu;
};

/// @brief Parses the command line; exits with status 1 on a usage error.
options parse_args(int argc, char** argv) {
  options opts;
  trainer::experiment_config& cfg = opts.cfg;
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--quick")) cfg = trainer::experiment_config::quick();
  cfg.rules_path = BEVKD_TRAINER_RULES;
  cfg.out_dir = BEVKD_TRAINER_OUT;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--quick") continue;
    if (arg == "--steps" && has_value) {
      const int steps = std::atoi(argv[++i]);
      if (steps < 1) usage(argv[0]), std::exit(1);
      cfg.set_steps(steps);
    } else if (arg == "--seed" && has_value) {
      cfg.seed = static_cast<unsigned>(std::strtoul(argv[++i], nullptr, 10));
    } else if (arg == "--out" && has_value) {
      cfg.out_dir = argv[++i];
    } else if (arg == "--rules" && has_value) {
      cfg.rules_path = argv[++i];
    } else if (arg == "--device" && has_value) {
      const std::string name = argv[++i];
      if (name != "cpu" && name != "cuda") usage(argv[0]), std::exit(1);
      opts.device = name == "cuda" ? trainer::device::cuda : trainer::device::cpu;
    } else {
      usage(argv[0]);
      std::exit(arg == "--help" || arg == "-h" ? 0 : 1);
    }
  }
  return opts;
}

std::string describe(const trainer::model_config& m) {
  char text[160];
  std::snprintf(text, sizeof text, "%dx%d BEV grid, %d channels, %d heads x %d sources x %d points, %dx%d images (noise %.2f)",
                m.grid, m.grid, m.channels, m.heads, trainer::num_sources, m.points, m.camera.rows, m.camera.cols,
                static_cast<double>(m.camera.noise));
  return text;
}

void print_row(const char* name, const trainer::detection_metrics& m, double seconds) {
  std::printf("| %-30s | %5.3f | %5.3f | %5.3f | %7.3f | %7.1f |\n", name, m.f1[0], m.f1[1], m.f1[2], m.mean_f1, seconds);
}

/// @brief First and last logged value of each distillation loss a run used, as "kl 0.41 -> 0.12".
std::string loss_trend(const trainer::row_result& r) {
  const auto& log = r.training.log;
  std::string out;
  const auto add = [&](const char* name, double first, double last) {
    char text[64];
    std::snprintf(text, sizeof text, "%s%s %.4f -> %.4f", out.empty() ? "" : ", ", name, first, last);
    out += text;
  };
  add("label", log.front().label, log.back().label);
  if (r.row.weights.response_kl > 0) add("kl", log.front().response_kl, log.back().response_kl);
  if (r.row.weights.feature_mse > 0) add("mse", log.front().feature_mse, log.back().feature_mse);
  if (r.row.weights.attention > 0) add("attention", log.front().attention, log.back().attention);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const options opts = parse_args(argc, argv);
  const trainer::experiment_config& cfg = opts.cfg;
  // The backend comes first, so that an unavailable device fails before anything is printed or trained.
  std::unique_ptr<trainer::loss_backend> backend;
  try {
    backend = trainer::make_loss_backend(opts.device);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distill_trainer: --device %s: %s\n", opts.device == trainer::device::cuda ? "cuda" : "cpu",
                 e.what());
    return 2;
  }
  try {
    std::filesystem::create_directories(cfg.out_dir);
    std::printf("bevkd distillation trainer: %d training scenes, %d held-out scenes, seed %u\n", cfg.train_scenes,
                cfg.test_scenes, cfg.seed);
    std::printf("  teacher: %s, %d steps\n", describe(cfg.teacher).c_str(), cfg.teacher_training.steps);
    std::printf("  student: %s, %d steps per row\n", describe(cfg.student).c_str(), cfg.student_training.steps);
    // Only a non-default backend is named, so the CPU run's output stays what it always was.
    if (opts.device != trainer::device::cpu) std::printf("  bevkd calls: %s\n", backend->description().c_str());
    std::fflush(stdout);
    const trainer::experiment_result result =
        trainer::run_experiment(cfg, *backend, [](const std::string& what, int step, int steps, double loss) {
          std::fprintf(stderr, "\r[%s] step %d/%d loss %.4f   ", what.c_str(), step, steps, loss);
          if (step == steps) std::fprintf(stderr, "\n");
        });
    std::printf("\nweight inheritance (%s -> %s): %s\n", cfg.rules_path.c_str(), cfg.out_dir.c_str(),
                result.remap_summary.c_str());
    std::printf("\nheld-out detection F1 (per-pillar argmax, tolerance %.3f), %d scenes:\n\n",
                static_cast<double>(trainer::match_tolerance), cfg.test_scenes);
    std::printf("| %-30s | %5s | %5s | %5s | %7s | %7s |\n", "model", "walk", "park", "drive", "mean F1", "train s");
    std::printf("|%s|-------|-------|-------|---------|---------|\n", std::string(32, '-').c_str());
    print_row("teacher (reference)", result.teacher, result.teacher_training.seconds);
    for (const trainer::row_result& r : result.rows) print_row(r.row.name.c_str(), r.metrics, r.training.seconds);
    std::printf("\nlosses, first -> last logging window:\n");
    for (const trainer::row_result& r : result.rows)
      std::printf("  %-30s %s%s\n", r.row.name.c_str(), loss_trend(r).c_str(),
                  r.training.gradients_finite ? "" : "  (NON-FINITE GRADIENT)");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\ndistill_trainer: %s\n", e.what());
    return 2;
  }
}
