// bevkd weight inheritance: the error raised for malformed files (safetensors, rules JSON).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <stdexcept>
#include <string>

namespace bevkd {

/// @brief Thrown when a file's content is malformed; the message names the file and what was wrong.
class format_error : public std::runtime_error {
 public:
  /// @brief Builds the message "bevkd: <source>: <problem>".
  format_error(const std::string& source, const std::string& problem)
      : std::runtime_error("bevkd: " + source + ": " + problem), source_(source) {}

  /// @brief The file (or other input) that was malformed.
  const std::string& source() const noexcept { return source_; }

 private:
  std::string source_;
};

}  // namespace bevkd
