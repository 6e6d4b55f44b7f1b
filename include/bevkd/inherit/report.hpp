// bevkd weight inheritance: the remap report (per-tensor status, unused teacher tensors, inherited share) and its JSON.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/config.hpp"

namespace bevkd {

/// @brief What happened to one student tensor.
enum class tensor_status {
  exact,    ///< Copied from the teacher, at most with a dtype change.
  adapted,  ///< Derived from the teacher through a transform chain.
  kept,     ///< The student's own initial values (no teacher source).
  error     ///< The rule failed; see the message.
};

/// @brief Lower-case name of a status ("exact", "adapted", "kept", "error").
inline const char* status_name(tensor_status s) {
  static const char* const names[] = {"exact", "adapted", "kept", "error"};
  return names[static_cast<int>(s)];
}

/// @brief The report line of one student tensor.
struct tensor_report {
  std::string student;                        ///< Student tensor name.
  tensor_status status = tensor_status::kept; ///< Outcome.
  std::string teacher;                        ///< Teacher source name ("" when kept without one).
  std::string transforms;                     ///< Transform chain as text (adapted), e.g. "slice(dim=0, start=0) -> convert(f32->f16)".
  std::string message;                        ///< Why it was kept, or the error.
  index_t elements = 0;                       ///< Student element count.
};

/// @brief The outcome of a remap: one line per student tensor, in name order, and the totals.
struct remap_report {
  std::vector<tensor_report> tensors;      ///< Per student tensor.
  std::vector<std::string> unused_teacher; ///< Teacher tensors no rule read.
  bool strict = false;                     ///< Whether kept tensors count as failures.

  /// @brief Number of student tensors with status s.
  std::size_t count(tensor_status s) const {
    std::size_t n = 0;
    for (const tensor_report& t : tensors) n += t.status == s;
    return n;
  }
  /// @brief Student elements (parameters and buffers) in total.
  index_t student_elements() const {
    index_t n = 0;
    for (const tensor_report& t : tensors) n += t.elements;
    return n;
  }
  /// @brief Student elements inherited (exact or adapted).
  index_t inherited_elements() const {
    index_t n = 0;
    for (const tensor_report& t : tensors)
      n += (t.status == tensor_status::exact || t.status == tensor_status::adapted) ? t.elements : 0;
    return n;
  }
  /// @brief inherited_elements / student_elements (0 for an empty student).
  double inherited_share() const {
    const index_t total = student_elements();
    return total > 0 ? static_cast<double>(inherited_elements()) / static_cast<double>(total) : 0.0;
  }
  /// @brief True when no tensor errored and, in strict mode, none was kept: the output may be written.
  bool ok() const { return count(tensor_status::error) == 0 && (!strict || count(tensor_status::kept) == 0); }

  /// @brief The report as JSON (the CLI's --report file).
  nlohmann::json to_json() const {
    nlohmann::json lines = nlohmann::json::array();
    for (const tensor_report& t : tensors) {
      nlohmann::json line = {{"student", t.student}, {"status", status_name(t.status)}, {"elements", t.elements}};
      if (!t.teacher.empty()) line["teacher"] = t.teacher;
      if (!t.transforms.empty()) line["transforms"] = t.transforms;
      if (!t.message.empty()) line["message"] = t.message;
      lines.push_back(std::move(line));
    }
    return {{"ok", ok()},
            {"strict", strict},
            {"counts",
             {{"exact", count(tensor_status::exact)},
              {"adapted", count(tensor_status::adapted)},
              {"kept", count(tensor_status::kept)},
              {"error", count(tensor_status::error)}}},
            {"student_elements", student_elements()},
            {"inherited_elements", inherited_elements()},
            {"inherited_share", inherited_share()},
            {"tensors", lines},
            {"unused_teacher", unused_teacher}};
  }

  /// @brief A one-line summary, e.g. "120 exact, 30 adapted, 2 kept, 0 errors; 97.1% of parameters inherited".
  std::string summary() const {
    const double percent = 100.0 * inherited_share();
    char share[32];
    std::snprintf(share, sizeof share, "%.2f%%", percent);
    return std::to_string(count(tensor_status::exact)) + " exact, " + std::to_string(count(tensor_status::adapted)) +
           " adapted, " + std::to_string(count(tensor_status::kept)) + " kept, " +
           std::to_string(count(tensor_status::error)) + " errors; " + share + " of student parameters inherited; " +
           std::to_string(unused_teacher.size()) + " teacher tensors unused";
  }
};

}  // namespace bevkd
