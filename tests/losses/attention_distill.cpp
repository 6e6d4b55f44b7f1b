// bevkd tests: attention-map distillation against the double reference, finite differences, masks, pooling, teams.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/bevkd.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/attention_harness.hpp"
#include "support/loss_harness.hpp"

using namespace bevkd_test;
using bevkd::attention_input;
using bevkd::attention_normalize;
using bevkd::divergence;
using bevkd::reduction;

namespace {

const divergence all_divergences[] = {divergence::kl, divergence::reverse_kl, divergence::js, divergence::mse};
const attention_normalize both_normalizations[] = {attention_normalize::per_source, attention_normalize::joint};

template <class T>
void check_attention_case(const attention_case<T>& cs, bevkd::host_exec& exec) {
  using acc = bevkd::accum_t<T>;
  std::vector<T> grad(cs.student.size(), sentinel<T>());
  std::vector<acc> rows;
  const auto got = cs.run(exec, grad, rows);
  const auto want = attention_reference(cs);
  INFO("normalize ", static_cast<int>(cs.opts.normalize), " div ", static_cast<int>(cs.opts.div), " inputs ",
       static_cast<int>(cs.opts.student_input), static_cast<int>(cs.opts.teacher_input), " group ", cs.group,
       " levels ", cs.level_group, " masked ", !cs.mask.empty(), " reduce ", static_cast<int>(cs.opts.reduce),
       " heads_outer ", cs.heads_outer);
  const double tol = tolerance<T>();
  CHECK(std::fabs(got.loss - want.loss) <= std::max(tol, 1e-5) * want.scale + 1e-12);
  CHECK(relative_error(got.weight_sum, want.weight_sum, 1e-6) < 1e-6);
  // A half gradient below half's normal range is only as exact as the subnormal spacing (grad_floor).
  CHECK(relative_error(attention_logical_grad(cs, grad), want.grad, grad_floor<T>()) < std::max(tol, 1e-5));
  if (cs.opts.reduce == reduction::none)
    CHECK(relative_error(std::vector<double>(rows.begin(), rows.end()), want.row_loss, 1e-6) < std::max(tol, 1e-5));
}

template <class T>
attention_case<T> make_case(attention_normalize normalize, divergence div, attention_input student,
                            attention_input teacher) {
  attention_case<T> cs;
  cs.opts.normalize = normalize;
  cs.opts.div = div;
  cs.opts.student_input = student;
  cs.opts.teacher_input = teacher;
  cs.opts.temperature = student == attention_input::logits && teacher == attention_input::logits ? 1.7 : 1.0;
  return cs;
}

}  // namespace

TEST_CASE_TEMPLATE("attention_distill matches the double reference: divergences, normalisations, inputs, masks, pooling",
                   T, float, double, bevkd::half, bevkd::bfloat16) {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  const std::pair<attention_input, attention_input> inputs[] = {
      {attention_input::logits, attention_input::logits},
      {attention_input::logits, attention_input::probabilities},
      {attention_input::probabilities, attention_input::probabilities}};
  for (auto normalize : both_normalizations)
    for (divergence div : all_divergences)
      for (auto [student, teacher] : inputs)
        for (int variant = 0; variant < 8; ++variant) {
          auto cs = make_case<T>(normalize, div, student, teacher);
          if (variant >= 4) cs.K = 50;  // KL rows of 50 (and joint rows of 150) keys run in row-layout blocks
          cs.heads_outer = variant % 2 == 0;
          if (variant % 4 >= 2) {  // pooled teacher: 2 heads per student head, 2 levels per student level
            cs.group = 2;
            cs.level_group = 2;
            cs.opts.points = 2;
          }
          if (student == attention_input::probabilities && cs.group > 1) continue;  // pooled teacher needs logits or
                                                                                    // a pooled-prob teacher
          cs.randomize(rng);
          cs.opts.reduce = variant == 1 ? reduction::none : reduction::mean;
          if (variant % 2 == 1) {
            cs.random_mask(rng);
            cs.random_weights(rng);
          }
          if (cs.opts.reduce == reduction::none) cs.random_upstream(rng);
          check_attention_case(cs, exec);
        }
}

TEST_CASE("attention_distill gradient equals central finite differences for every divergence and normalisation") {
  BEVKD_TEST_RNG(rng);
  for (auto normalize : both_normalizations)
    for (divergence div : all_divergences)
      for (auto student : {attention_input::logits, attention_input::probabilities}) {
        auto cs = make_case<double>(normalize, div, student,
                                    student == attention_input::logits ? attention_input::logits
                                                                       : attention_input::probabilities);
        cs.N = 2;
        cs.S = 2;
        cs.K = 3;
        cs.opts.reduce = reduction::sum;
        if (student == attention_input::logits) {
          cs.group = 2;
          cs.level_group = 3;
          cs.opts.points = 1;
        }
        cs.randomize(rng);
        cs.random_mask(rng);
        cs.mask[2] = 1;  // keep query 1's first source
        std::vector<double> grad(cs.student.size()), rows;
        bevkd::host_exec exec;
        cs.run(exec, grad, rows);
        std::vector<double> numeric;
        const double h = 1e-6;
        for (index_t n = 0; n < cs.N; ++n)
          for (index_t hh = 0; hh < cs.H; ++hh)
            for (index_t s = 0; s < cs.S; ++s)
              for (index_t k = 0; k < cs.K; ++k) {
                double& x = cs.student[static_cast<std::size_t>(cs.student_view().offset(n, hh, s, k))];
                const double x0 = x;
                std::vector<double> scratch(cs.student.size());
                x = x0 + h;
                const double up = cs.run(exec, scratch, rows).loss;
                x = x0 - h;
                const double down = cs.run(exec, scratch, rows).loss;
                x = x0;
                numeric.push_back((up - down) / (2 * h));
              }
        INFO("normalize ", static_cast<int>(normalize), " div ", static_cast<int>(div), " student ",
             static_cast<int>(student));
        CHECK(relative_error(attention_logical_grad(cs, grad), numeric) < 1e-5);  // central differences, h = 1e-6
      }
}

TEST_CASE("attention_distill masks: a fully masked query contributes exactly 0; masked keys get exactly 0 gradient") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  for (auto normalize : both_normalizations) {
    auto cs = make_case<float>(normalize, divergence::kl, attention_input::logits, attention_input::logits);
    cs.randomize(rng);
    cs.random_mask(rng);  // query 0 has every source masked
    // Poison what must be ignored: masked keys may hold NaN.
    const auto sv = cs.view<float>(cs.student.data(), cs.H, cs.K);
    for (index_t n = 0; n < cs.N; ++n)
      for (index_t s = 0; s < cs.S; ++s)
        if (!cs.mask[static_cast<std::size_t>(n * cs.S + s)])
          for (index_t h = 0; h < cs.H; ++h)
            for (index_t k = 0; k < cs.K; ++k) sv(n, h, s, k) = std::nanf("");
    std::vector<float> grad(cs.student.size(), 5.0f), rows;
    cs.opts.reduce = reduction::none;
    const auto r = cs.run(exec, grad, rows);
    CHECK(std::isfinite(r.loss));
    const auto g = cs.grad_view(grad);
    for (index_t n = 0; n < cs.N; ++n)
      for (index_t s = 0; s < cs.S; ++s)
        if (!cs.mask[static_cast<std::size_t>(n * cs.S + s)])
          for (index_t h = 0; h < cs.H; ++h)
            for (index_t k = 0; k < cs.K; ++k) CHECK(g(n, h, s, k) == 0.0f);
    for (index_t i = 0; i < cs.H * cs.row_sources(); ++i) CHECK(rows[static_cast<std::size_t>(i)] == 0.0f);
  }
  SUBCASE("joint normalisation with every source masked everywhere: loss 0, gradient 0, weight sum 0") {
    auto cs = make_case<float>(attention_normalize::joint, divergence::js, attention_input::logits, attention_input::logits);
    cs.randomize(rng);
    cs.mask.assign(static_cast<std::size_t>(cs.N * cs.S), 0);
    std::vector<float> grad(cs.student.size(), 5.0f), rows;
    const auto r = cs.run(exec, grad, rows);
    CHECK(r.loss == 0.0);
    CHECK(r.weight_sum == 0.0);
    CHECK(grad == std::vector<float>(grad.size(), 0.0f));
  }
}

TEST_CASE("attention_distill pooling equals an explicitly pooled teacher given as probabilities") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  for (auto normalize : both_normalizations) {
    auto pooled = make_case<double>(normalize, divergence::kl, attention_input::logits, attention_input::logits);
    pooled.group = 2;
    pooled.level_group = 2;
    pooled.opts.points = 2;
    pooled.randomize(rng);
    // Build the pooled teacher by hand: softmax per teacher head, average heads, sum level pairs.
    auto explicit_case = pooled;
    explicit_case.group = 1;
    explicit_case.level_group = 1;
    explicit_case.opts.points = 0;
    explicit_case.opts.teacher_input = attention_input::probabilities;
    explicit_case.opts.temperature = 1.0;
    pooled.opts.temperature = 1.0;
    explicit_case.teacher.assign(explicit_case.student.size(), 0.0);
    const auto te = pooled.teacher_view();
    const auto out = explicit_case.view<double>(explicit_case.teacher.data(), explicit_case.H, explicit_case.K);
    for (index_t n = 0; n < pooled.N; ++n)
      for (index_t h = 0; h < pooled.Ht(); ++h)
        for (index_t s0 = 0; s0 < pooled.row_sources(); ++s0) {
          const index_t s_begin = pooled.joint() ? 0 : s0, s_end = pooled.joint() ? pooled.S : s0 + 1;
          double z = 0;
          for (index_t s = s_begin; s < s_end; ++s)
            for (index_t k = 0; k < pooled.Kt(); ++k) z += std::exp(te(n, h, s, k));
          for (index_t s = s_begin; s < s_end; ++s)
            for (index_t k = 0; k < pooled.Kt(); ++k) {
              const index_t level = k / 2, point = k % 2;
              out(n, h / 2, s, (level / 2) * 2 + point) += std::exp(te(n, h, s, k)) / z / 2;
            }
        }
    std::vector<double> g1(pooled.student.size()), g2(pooled.student.size()), rows;
    const auto a = pooled.run(exec, g1, rows);
    const auto b = explicit_case.run(exec, g2, rows);
    CHECK(a.loss == doctest::Approx(b.loss).epsilon(1e-12));
    CHECK(relative_error(g1, g2) < 1e-12);
  }
}

TEST_CASE("attention_distill per_source on [N, H, 1, K] equals response_kl on [B=1, P=N*H, C=K]") {
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec exec;
  auto cs = make_case<float>(attention_normalize::per_source, divergence::kl, attention_input::logits, attention_input::logits);
  cs.S = 1;
  cs.N = 5;
  cs.K = 9;
  cs.opts.reduce = reduction::sum;
  cs.randomize(rng);
  std::vector<float> g_att(cs.student.size()), g_kl(cs.student.size()), rows;
  const auto att = cs.run(exec, g_att, rows);
  const bevkd::response_kl kl({bevkd::kl_mode::softmax, cs.opts.temperature, reduction::sum});
  const auto r = kl(exec, bevkd::bev_nhwc<const float>(cs.student.data(), 1, 1, cs.N * cs.H, cs.K),
                    bevkd::bev_nhwc<const float>(cs.teacher.data(), 1, 1, cs.N * cs.H, cs.K),
                    bevkd::bev_nhwc(g_kl.data(), 1, 1, cs.N * cs.H, cs.K));
  CHECK(att.loss == doctest::Approx(r.loss).epsilon(1e-6));
  CHECK(relative_error(std::vector<double>(g_att.begin(), g_att.end()), std::vector<double>(g_kl.begin(), g_kl.end())) <
        1e-6);
}

TEST_CASE("attention_distill on host teams of 1, 4, 7, 8, 16, 32 and 256 lanes, with and without row scratch") {
  BEVKD_TEST_RNG(rng);
  for (int lanes : {1, 4, 7, 8, 16, 32, 256})
    for (int chunk : {1, 4}) {
      // Without scratch the softmax kernel recomputes its exponentials, as on the device.
      const bool scratch = chunk == 1;
      bevkd::host_exec exec;
      exec.simulate_team(lanes, chunk, scratch);
      for (auto normalize : both_normalizations)
        for (divergence div : {divergence::js, divergence::kl})
          for (bool masked : {false, true})
            for (index_t K : {1, 5, 32, 70}) {
              auto cs = make_case<float>(normalize, div, attention_input::logits, attention_input::logits);
              cs.K = K;
              // JS pools two teacher heads (the general kernel); KL with an unpooled teacher runs the
              // response KL's softmax over key runs: one run of S x K keys, or one per valid source.
              cs.group = div == divergence::js ? 2 : 1;
              cs.heads_outer = K % 2 == 0;
              cs.randomize(rng);
              if (masked) cs.random_mask(rng);
              INFO("lanes ", lanes, " chunk ", chunk, " scratch ", scratch, " K ", K, " masked ", masked);
              check_attention_case(cs, exec);
            }
    }
}

TEST_CASE("attention_distill in host row blocks gives the per-row kernel's results") {
  // KL of unpooled logits with one key run per row (per_source, or joint over adjacent sources with no mask) runs
  // in row blocks; everything else per row, whatever the switch says. Storage [N, H, S, K] has evenly spaced rows
  // (one distance, no row list); [N, S, H, K] does not, unless H = 1 (an extent-1 dimension with a stride of its own).
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec blocks, per_row;
  per_row.run_row_blocks(false);
  for (auto [heads_outer, heads] :
       {std::pair{true, index_t{2}}, std::pair{false, index_t{2}}, std::pair{false, index_t{1}}})
    for (auto normalize : both_normalizations)
      for (bool masked : {false, true})
        for (index_t K : {1, 7, 32, 43, 64})  // per_source rows of 64 and joint rows of 96 run in row layout
          for (reduction red : {reduction::mean, reduction::none})
            for (bool accumulate : {false, true}) {
              auto cs = make_case<float>(normalize, divergence::kl, attention_input::logits, attention_input::logits);
              cs.N = 11;  // 11 x 2 x 3 = 66 per_source rows: four blocks and a tail (H = 1: two and a tail)
              cs.H = heads;
              cs.heads_outer = heads_outer;
              cs.K = K;
              cs.opts.reduce = red;
              cs.opts.accumulate = accumulate;
              cs.opts.temperature = 1.3;
              cs.randomize(rng);
              cs.random_weights(rng);
              cs.weights[3] = 0.0f;
              if (masked) cs.random_mask(rng);
              if (red == reduction::none) cs.random_upstream(rng);
              const auto prior = random_values<float>(cs.N * cs.H * cs.S * cs.K, rng);
              std::vector<float> in_blocks = prior, by_row = prior, block_losses, row_losses;
              const double block_loss = cs.run(blocks, in_blocks, block_losses).loss;
              const double row_loss = cs.run(per_row, by_row, row_losses).loss;
              INFO("heads_outer ", heads_outer, " H ", heads, " joint ", cs.joint(), " masked ", masked, " K ", K,
                   " accumulate ", accumulate);
              CHECK(block_loss == doctest::Approx(row_loss).epsilon(2e-6));
              CHECK(relative_error(std::vector<double>(block_losses.begin(), block_losses.end()),
                                   std::vector<double>(row_losses.begin(), row_losses.end())) < 2e-6);
              CHECK(relative_error(std::vector<double>(in_blocks.begin(), in_blocks.end()),
                                   std::vector<double>(by_row.begin(), by_row.end())) < 2e-6);
              // Query 3 has weight 0 and query 0 no valid source: their keys are +0, or untouched when accumulating.
              for (index_t n : {index_t{0}, index_t{3}}) {
                if (n == 0 && !masked) continue;
                for (index_t i = n * cs.H * cs.S * cs.K; i < (n + 1) * cs.H * cs.S * cs.K; ++i) {
                  const auto at = static_cast<std::size_t>(i);
                  CHECK(std::memcmp(&in_blocks[at], accumulate ? &prior[at] : &by_row[at], sizeof(float)) == 0);
                }
              }
            }
}

TEST_CASE("attention_distill streams a masked joint gradient of several MiB where its runs start on a line") {
  // Spatial cross-attention's shape: S = 6 cameras of K = 32 keys, a mask of hit cameras, the gradient over
  // min_streamed_grad_bytes. From a line, key runs and masked runs' zeros go out with non-temporal stores on AVX-512
  // hosts; one float off a line they are stored as usual: the same bits either way, and the per-row kernel's values.
  BEVKD_TEST_RNG(rng);
  bevkd::host_exec blocks, per_row;
  per_row.run_row_blocks(false);
  for (bool heads_outer : {true, false}) {
    auto cs = make_case<float>(attention_normalize::joint, divergence::kl, attention_input::logits,
                               attention_input::logits);
    cs.H = 8;
    cs.S = 6;
    cs.K = 32;
    cs.N = bevkd::detail::min_streamed_grad_bytes / (cs.H * cs.S * cs.K * index_t{sizeof(float)}) + 5;
    cs.heads_outer = heads_outer;
    cs.randomize(rng);
    cs.random_weights(rng);
    cs.random_mask(rng);
    const auto n = static_cast<std::size_t>(cs.N * cs.H * cs.S * cs.K);
    line_buffer<float> on_line(n, 0, std::nanf("")), off_line(n, 1, std::nanf("")), by_row(n, 0, std::nanf(""));
    std::vector<float> rows;
    const double streamed = cs.run(blocks, on_line.data(), rows).loss;
    const double stored = cs.run(blocks, off_line.data(), rows).loss;
    const double row_loss = cs.run(per_row, by_row.data(), rows).loss;
    INFO("heads_outer ", heads_outer);
    CHECK(streamed == stored);
    CHECK(std::memcmp(on_line.data(), off_line.data(), n * sizeof(float)) == 0);
    CHECK(streamed == doctest::Approx(row_loss).epsilon(2e-6));
    const auto got = on_line.values(), want = by_row.values();
    CHECK(relative_error(std::vector<double>(got.begin(), got.end()), std::vector<double>(want.begin(), want.end())) <
          2e-6);
  }
}

TEST_CASE("attention_distill rejects bad input before writing anything") {
  bevkd::host_exec exec;
  std::vector<float> s(24, 0.1f), t(48, 0.2f), g(24, 3.0f);
  const auto S = bevkd::contiguous_view<const float, 4>(s.data(), {2, 1, 3, 4});
  const auto T = bevkd::contiguous_view<const float, 4>(t.data(), {2, 2, 3, 4});
  const auto G = bevkd::contiguous_view<float, 4>(g.data(), {2, 1, 3, 4});
  const auto rejected = [&](auto&& call, const char* argument) {
    bool thrown = false;
    try {
      call();
    } catch (const bevkd::invalid_argument& e) {
      thrown = true;
      CHECK(e.argument().find(argument) == 0);
    }
    CHECK_MESSAGE(thrown, argument);
    CHECK(g == std::vector<float>(24, 3.0f));
  };
  const bevkd::attention_distill ad;
  CHECK_NOTHROW(ad(exec, S, T, bevkd::contiguous_view<float, 4>(std::vector<float>(24).data(), {2, 1, 3, 4})));
  rejected([&] { ad(exec, S, bevkd::contiguous_view<const float, 4>(t.data(), {2, 3, 2, 4}), G); }, "teacher");
  rejected([&] { ad(exec, S, bevkd::contiguous_view<const float, 4>(t.data(), {2, 1, 3, 8}), G); }, "teacher.extent[3]");
  bevkd::attention_distill_options bad_points;
  bad_points.points = 3;
  rejected([&] { bevkd::attention_distill{bad_points}(exec, S, T, G); }, "student.extent[3]");
  bevkd::attention_distill_options probs;
  probs.student_input = attention_input::probabilities;
  probs.temperature = 2.0;
  rejected([&] { bevkd::attention_distill{probs}(exec, S, T, G); }, "temperature");
  rejected([&] { ad(exec, S, T, bevkd::contiguous_view<float, 4>(g.data(), {2, 1, 3, 3})); }, "grad");
  rejected([&] { ad(exec, S, bevkd::contiguous_view<const float, 4>(g.data(), {2, 2, 3, 2}), G); }, "teacher");
  const std::vector<std::uint8_t> mask(5, 1);
  bevkd::attention_io<float> io;
  io.source_mask = bevkd::contiguous_view<const std::uint8_t, 2>(mask.data(), {1, 5});
  rejected([&] { ad(exec, S, T, G, io); }, "source_mask");
  const std::vector<float> w = {1.0f, -1.0f};
  bevkd::attention_io<float> wio;
  wio.query_weights = bevkd::contiguous_view<const float, 1>(w.data(), {2});
  rejected([&] { ad(exec, S, T, G, wio); }, "weights");
}

TEST_CASE("a negative query weight deep in a call of many row blocks and chunks is rejected, nothing written") {
  // 300 queries x 3 sources: 900 per_source rows (four host chunks of 256, row blocks of 16), 300 joint rows; the
  // weight sum reads weights a block at a time, and the one bad weight sits in the last chunk, mid-block.
  BEVKD_TEST_RNG(rng);
  const index_t N = 300, S = 3, K = 5;
  std::uniform_real_distribution<float> logit(-3.0f, 3.0f);
  std::vector<float> s(static_cast<std::size_t>(N * S * K)), t(s.size()), g(s.size(), 3.0f), w(N, 0.5f);
  for (auto* v : {&s, &t})
    for (auto& x : *v) x = logit(rng);
  w[290] = -0.25f;
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(N * S), 1);
  mask[7] = 0;
  bevkd::attention_io<float> io;
  io.query_weights = bevkd::contiguous_view<const float, 1>(w.data(), {N});
  bevkd::host_exec exec(2);
  const auto view = [&](auto* p) { return bevkd::contiguous_view<std::remove_pointer_t<decltype(p)>, 4>(p, {N, 1, S, K}); };
  for (auto normalize : {attention_normalize::per_source, attention_normalize::joint}) {
    for (bool masked : {false, true}) {
      CAPTURE(static_cast<int>(normalize));
      CAPTURE(masked);
      io.source_mask = masked ? bevkd::contiguous_view<const std::uint8_t, 2>(mask.data(), {N, S})
                              : bevkd::strided_view<const std::uint8_t, 2>{};
      bevkd::attention_distill_options opts;
      opts.normalize = normalize;
      CHECK_THROWS_WITH_AS(bevkd::attention_distill{opts}(exec, view(static_cast<const float*>(s.data())),
                                                           view(static_cast<const float*>(t.data())), view(g.data()),
                                                           io),
                           doctest::Contains("weights"), bevkd::invalid_argument);
      CHECK(g == std::vector<float>(g.size(), 3.0f));
    }
  }
}

TEST_CASE("teacher attention on a finer BEV grid, resampled onto the student's grid, stays normalised and distils") {
  // Teacher: 2 samples on a 4x4 BEV grid; student: the same scene on 2x2. Teacher probabilities
  // [B*16, H, S, K] are a [B, 4, 4, H*S*K] channels-last grid; any convex resample keeps every
  // (h, s) distribution normalised.
  BEVKD_TEST_RNG(rng);
  const index_t B = 2, H = 2, S = 2, K = 3, C = H * S * K;
  attention_case<double> teacher_case;
  teacher_case.N = B * 16;
  teacher_case.H = H;
  teacher_case.S = S;
  teacher_case.K = K;
  teacher_case.opts.student_input = attention_input::probabilities;  // makes randomize() normalise per source
  teacher_case.randomize(rng);
  const std::vector<double> fine = teacher_case.student;
  std::vector<double> coarse(static_cast<std::size_t>(B * 4 * C));
  bevkd::host_exec exec;
  for (auto mode : {bevkd::resample_mode::area, bevkd::resample_mode::bilinear}) {
    bevkd::resample_options ro;
    ro.mode = mode;
    bevkd::bev_resample(ro).forward(exec, bevkd::grid_nhwc<const double>(fine.data(), B, 4, 4, C),
                                    bevkd::grid_nhwc(coarse.data(), B, 2, 2, C));
    for (index_t row = 0; row < B * 4 * H * S; ++row) {
      double sum = 0;
      for (index_t k = 0; k < K; ++k) sum += coarse[static_cast<std::size_t>(row * K + k)];
      CHECK(sum == doctest::Approx(1.0).epsilon(1e-12));
    }
    if (mode == bevkd::resample_mode::area) {  // the 2x2 mean, by hand, for query (b=1, y=1, x=0)
      const index_t b = 1, c = 5;
      const double mean = (fine[static_cast<std::size_t>(((b * 4 + 2) * 4 + 0) * C + c)] +
                           fine[static_cast<std::size_t>(((b * 4 + 2) * 4 + 1) * C + c)] +
                           fine[static_cast<std::size_t>(((b * 4 + 3) * 4 + 0) * C + c)] +
                           fine[static_cast<std::size_t>(((b * 4 + 3) * 4 + 1) * C + c)]) / 4;
      CHECK(coarse[static_cast<std::size_t>(((b * 2 + 1) * 2 + 0) * C + c)] == doctest::Approx(mean).epsilon(1e-14));
    }
    attention_case<double> cs;
    cs.N = B * 4;
    cs.H = H;
    cs.S = S;
    cs.K = K;
    cs.opts.teacher_input = attention_input::probabilities;
    cs.randomize(rng);
    cs.teacher = coarse;
    std::vector<double> grad(cs.student.size()), rows;
    const auto r = cs.run(exec, grad, rows);
    const auto want = attention_reference(cs);
    CHECK(r.loss == doctest::Approx(want.loss).epsilon(1e-10));
    CHECK(relative_error(attention_logical_grad(cs, grad), want.grad) < 1e-10);
  }
}
