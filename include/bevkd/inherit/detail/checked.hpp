// bevkd internal: overflow-checked size arithmetic for untrusted file contents.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <limits>

namespace bevkd {
namespace detail {

/// @brief Stores a * b in `out` and returns true, or returns false when the product overflows 64 bits.
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

/// @brief Stores a + b in `out` and returns true, or returns false when the sum overflows 64 bits.
inline bool checked_add(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (b > std::numeric_limits<std::uint64_t>::max() - a) return false;
  out = a + b;
  return true;
}

}  // namespace detail
}  // namespace bevkd
