// bevkd error types and the argument checks that raise them.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace bevkd {

/// @brief Thrown on the host, before any kernel runs, when an argument is invalid; the message names it.
class invalid_argument : public std::invalid_argument {
 public:
  /// @brief Builds the message "bevkd: <argument>: <what was wrong>".
  invalid_argument(const std::string& argument, const std::string& problem)
      : std::invalid_argument("bevkd: " + argument + ": " + problem), argument_(argument) {}

  /// @brief Name of the offending argument (e.g. "teacher.C").
  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string argument_;
};

/// @brief Thrown when a CUDA runtime call fails; carries the call, file and line.
class cuda_error : public std::runtime_error {
 public:
  /// @brief Builds the message from the failing call, its error string and location.
  cuda_error(const std::string& call, const std::string& error, const char* file, int line)
      : std::runtime_error("bevkd: CUDA call " + call + " failed: " + error + " (" + file + ":" +
                           std::to_string(line) + ")") {}
};

namespace detail {

/// @brief Formats values into one string (used for error messages).
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

/// @brief Throws bevkd::invalid_argument(argument, problem) when `ok` is false (the strings are built only then).
template <class... Parts>
void require(bool ok, std::string_view argument, const Parts&... problem) {
  if (!ok) throw invalid_argument(std::string(argument), cat(problem...));
}

/// @brief The argument name "base.member[index]" (no "[index]" when index < 0), formed only when a check fails:
/// a loss call checks every dimension of every view, and building each name up front cost string allocations on
/// every call.
struct argument_member {
  std::string_view base;   ///< The argument, e.g. "student".
  const char* member;      ///< Its member, e.g. "stride".
  int index = -1;          ///< The dimension, or -1.

  /// @brief The name as the message prints it.
  std::string str() const {
    std::string name = std::string(base) + "." + member;
    return index < 0 ? name : name + "[" + std::to_string(index) + "]";
  }
};

/// @brief require() naming argument.str(), which is built only when `ok` is false.
template <class... Parts>
void require(bool ok, const argument_member& argument, const Parts&... problem) {
  if (!ok) throw invalid_argument(argument.str(), cat(problem...));
}

}  // namespace detail
}  // namespace bevkd
