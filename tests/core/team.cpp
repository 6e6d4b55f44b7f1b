// bevkd tests: the host team partitions rows like the CUDA teams and reduces in their tree order.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <bevkd/core/detail/lanes.hpp>
#include <bevkd/core/team.hpp>

#include <cmath>
#include <string>
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
