// bevkd tests: the host team partitions rows like the CUDA teams and reduces in their tree order.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/core/detail/lanes.hpp>
#include <bevkd/core/team.hpp>

#include <array>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

TEST_CASE("for_lane_columns gives every column to exactly one lane, in chunks, for any team size and tail") {
  for (int lanes : {1, 4, 7, 8, 16, 32, 256})
    for (int chunk : {1, 3, 4})
      for (bevkd::index_t n : {0, 1, 5, 31, 32, 33, 300, 1025}) {
        std::vector<int> owner(static_cast<std::size_t>(n), -1);
        for (int lane = 0; lane < lanes; ++lane)
          bevkd::detail::for_lane_columns(lane, lanes, chunk, n, [&](bevkd::index_t c) {
            CHECK(owner[static_cast<std::size_t>(c)] == -1);
            owner[static_cast<std::size_t>(c)] = lane;
          });
        for (bevkd::index_t c = 0; c < n; ++c)
          CHECK(owner[static_cast<std::size_t>(c)] == static_cast<int>((c / chunk) % lanes));
      }
}

TEST_CASE("host_team::reduce is a pairwise tree within groups of 32 lanes, groups left to right") {
  // Non-associative operator that records the bracketing.
  struct record {
    std::string s;
  };
  struct join {
    record operator()(const record& a, const record& b) const { return {"(" + a.s + "+" + b.s + ")"}; }
  };
  const bevkd::host_team seven(7);
  CHECK(seven.reduce(join{}, [](int lane) { return record{std::to_string(lane)}; }).s ==
        "(((0+1)+(2+3))+((4+5)+6))");
  const bevkd::host_team forty(40);
  const std::string got = forty.reduce(join{}, [](int lane) { return record{std::to_string(lane)}; }).s;
  const std::string tail = "+(((32+33)+(34+35))+((36+37)+(38+39))))";  // group 2, joined after group 1
  CHECK(got.rfind("((((((0+1)+(2+3))", 0) == 0);                    // group 1: a 5-level tree
  CHECK(got.substr(got.size() - tail.size()) == tail);
  const bevkd::host_team one(1);
  CHECK(one.reduce(join{}, [](int) { return record{"x"}; }).s == "x");
  // Sums: every lane's partial is counted once.
  for (int lanes : {1, 4, 7, 8, 16, 32, 256}) {
    const bevkd::host_team team(lanes);
    CHECK(team.reduce(bevkd::sum_op{}, [](int lane) { return static_cast<double>(lane + 1); }) ==
          lanes * (lanes + 1) / 2.0);
  }
}

TEST_CASE("max_op propagates NaN like PyTorch's max") {
  const float nan = std::nanf("");
  CHECK(std::isnan(bevkd::max_op{}(nan, 1.0f)));
  CHECK(std::isnan(bevkd::max_op{}(1.0f, nan)));
  CHECK(bevkd::max_op{}(2.0f, 1.0f) == 2.0f);
}

namespace {

/// @brief The (column, student, teacher) triples a lane's pass over a row visits, in order.
template <class Row>
std::vector<std::array<double, 3>> lane_visits(int lane, int lanes, int chunk, const Row& row) {
  std::vector<std::array<double, 3>> visits;
  bevkd::detail::for_lane_values(lane, lanes, chunk, row, [&](bevkd::index_t c, auto s, auto t) {
    visits.push_back({static_cast<double>(c), static_cast<double>(s), static_cast<double>(t)});
  });
  return visits;
}

/// @brief The values of a gradient buffer, as doubles (bfloat16 has no operator==).
template <class T>
std::vector<double> as_doubles(const std::vector<T>& v) {
  std::vector<double> out;
  for (const T& x : v) out.push_back(static_cast<double>(bevkd::load_as_accum(x)));
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("held_row holds a lane's share of a row: the columns, values and order of for_lane_values, and its "
                   "gradients", T, float, double, bevkd::bfloat16) {
  using bevkd::index_t;
  using acc = bevkd::accum_t<T>;
  constexpr int chunks = bevkd::detail::held_row_chunks;
  if (chunks == 0) return;  // held rows turned off (BEVKD_HELD_ROW_CHUNKS=0)
  constexpr int width = bevkd::detail::vector_width<T>();
  for (int lanes : {1, 4, 7, 32})
    for (index_t n : {1, 3, 4, 5, 17, 63, 64, 65, 127, 128, 448, 511, 512}) {
      if (!bevkd::detail::row_fits_held<T, chunks>(lanes, width, n)) continue;
      INFO("lanes ", lanes, " n ", n, " width ", width);
      const index_t padded = n + 2 * width;  // columns past n must be neither read into results nor written
      std::vector<T> s(padded), t(padded);
      for (index_t c = 0; c < padded; ++c) {
        s[c] = bevkd::store_from_accum<T>(acc(c < n ? 0.25f + static_cast<float>(c) : 1e30f));
        t[c] = bevkd::store_from_accum<T>(acc(c < n ? -static_cast<float>(c) : 1e30f));
      }
      for (bool accumulate : {false, true}) {
        const T prior = bevkd::store_from_accum<T>(acc(7));
        std::vector<T> want(padded, prior), got(padded, prior);
        const bevkd::detail::loss_row<T, true> in_memory{{s.data(), 1}, {t.data(), 1}, {want.data(), 1}, n};
        const bevkd::detail::loss_row<T, true> to_hold{{s.data(), 1}, {t.data(), 1}, {got.data(), 1}, n};
        const auto grad_of = [](index_t c, acc sc, acc tc) { return sc - 2 * tc + static_cast<acc>(c); };
        for (int lane = 0; lane < lanes; ++lane) {
          const bevkd::detail::held_row<T, chunks> held(lane, lanes, to_hold);
          CHECK(lane_visits(lane, lanes, width, held) == lane_visits(lane, lanes, width, in_memory));
          bevkd::detail::for_lane_grads(lane, lanes, width, in_memory, accumulate, grad_of);
          bevkd::detail::for_lane_grads(lane, lanes, width, held, accumulate, grad_of);
        }
        CHECK(as_doubles(got) == as_doubles(want));
        for (index_t c = 0; c < padded; ++c) {
          const acc value = grad_of(c, bevkd::load_as_accum(s[c]), bevkd::load_as_accum(t[c]));
          const T expected = c < n ? bevkd::store_from_accum<T>(accumulate ? acc(7) + value : value) : prior;
          CHECK(bevkd::load_as_accum(got[c]) == bevkd::load_as_accum(expected));
        }
      }
    }
}

TEST_CASE("host_team::hold_row holds rows only where a device warp team would: chunks of one vector, up to 32 lanes") {
  std::vector<float> x(600, 1.0f);
  const auto row = [&](bevkd::index_t n) {
    return bevkd::detail::loss_row<float, true>{{x.data(), 1}, {x.data(), 1}, {x.data(), 1}, n};
  };
  const auto held = [](const bevkd::host_team& team, const bevkd::detail::loss_row<float, true>& r) {
    return team.hold_row(r, [](const auto& h) { return !bevkd::detail::is_loss_row<std::decay_t<decltype(h)>>::value; });
  };
  const bool holds = bevkd::detail::held_row_chunks > 0;
  CHECK(!held(bevkd::host_team(1, 1), row(64)));     // the production team
  CHECK(!held(bevkd::host_team(8, 1), row(64)));     // single columns
  CHECK(held(bevkd::host_team(8, 4), row(64)) == holds);
  CHECK(!held(bevkd::host_team(256, 4), row(64)));   // a block team
  CHECK(!held(bevkd::host_team(4, 4), row(4 * 4 * bevkd::detail::held_row_chunks + 1)));  // past a lane's share
}
