// bevkd tests: the seed of a test's random inputs, fresh per run and reported by every failure, or fixed to replay one.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <stdexcept>

namespace bevkd_test {

/// @brief A fresh seed per call, or BEVKD_TEST_SEED's value where that is set (to replay a failure that reported it).
inline std::uint32_t fresh_seed() {
  const char* fixed = std::getenv("BEVKD_TEST_SEED");
  if (fixed == nullptr || *fixed == '\0') return std::random_device{}();
  char* end = nullptr;
  const unsigned long seed = std::strtoul(fixed, &end, 10);
  if (*end != '\0' || seed > UINT32_MAX) throw std::invalid_argument("BEVKD_TEST_SEED: not a 32-bit unsigned integer");
  return static_cast<std::uint32_t>(seed);
}

}  // namespace bevkd_test

/// @brief Declares `std::mt19937 name` seeded by bevkd_test::fresh_seed(); every failure in the scope reports the
/// seed as `name_seed` (rerun with BEVKD_TEST_SEED=<that value> to replay it).
#define BEVKD_TEST_RNG(name)                                    \
  const std::uint32_t name##_seed = ::bevkd_test::fresh_seed(); \
  CAPTURE(name##_seed);                                         \
  std::mt19937 name(name##_seed)
