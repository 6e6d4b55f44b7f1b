// bevkd example trainer: weight inheritance as a user runs it (safetensors files, a rules JSON, bevkd::remap_weights).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <bevkd/inherit/inherit.hpp>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "model.hpp"

namespace trainer {

/// @brief The model's weights as safetensors-ready F32 tensors, by state_dict name.
inline bevkd::tensor_map to_tensors(model_weights& w) {
  bevkd::tensor_map out;
  for (const auto& named : w.named()) {
    bevkd::host_tensor t = bevkd::host_tensor::zeros(bevkd::tensor_dtype::f32, named.second->shape);
    std::memcpy(t.bytes.data(), named.second->value.data(), t.bytes.size());
    out.emplace(named.first, std::move(t));
  }
  return out;
}

/// @brief Loads weights from tensors (every name must exist with the model's F32 shape); Adam moments are reset.
inline void load_tensors(const bevkd::tensor_map& tensors, model_weights& w) {
  for (const auto& named : w.named()) {
    const auto it = tensors.find(named.first);
    if (it == tensors.end() || it->second.type != bevkd::tensor_dtype::f32 || it->second.shape != named.second->shape)
      throw std::runtime_error("checkpoint lacks an F32 tensor '" + named.first + "' of shape " +
                               bevkd::shape_text(named.second->shape));
    std::memcpy(named.second->value.data(), it->second.bytes.data(), it->second.bytes.size());
    std::fill(named.second->m.begin(), named.second->m.end(), 0.0f);
    std::fill(named.second->v.begin(), named.second->v.end(), 0.0f);
  }
}

/// @brief Paths of the files one inheritance writes.
struct inheritance_files {
  std::string teacher, student_template, student_inherited;
  explicit inheritance_files(const std::string& dir)
      : teacher(dir + "/teacher.safetensors"),
        student_template(dir + "/student_init.safetensors"),
        student_inherited(dir + "/student_inherited.safetensors") {}
};

/// @brief Saves the teacher and the student template, remaps them by the rules, and returns the inherited weights.
///
/// The same flow as the bevkd-inherit tool: nothing here knows the models' shapes; the rules file does.
/// @throw std::runtime_error when the remap reports an error (or, the rules being strict, a kept tensor).
inline model_weights inherit_weights(model_weights& teacher, model_weights student_template, const std::string& rules_path,
                                     const std::string& out_dir, std::string& summary) {
  const inheritance_files files(out_dir);
  bevkd::write_safetensors(files.teacher, to_tensors(teacher), {{"model", "teacher"}});
  bevkd::write_safetensors(files.student_template, to_tensors(student_template), {{"model", "student"}});

  const bevkd::safetensors_file teacher_file(files.teacher), student_file(files.student_template);
  const bevkd::remap_result r =
      bevkd::remap_weights(teacher_file.tensors(), student_file.tensors(), bevkd::load_rules(rules_path));
  summary = r.report.summary();
  if (!r.report.ok()) {
    std::string why;
    for (const bevkd::tensor_report& line : r.report.tensors)
      if (line.status == bevkd::tensor_status::error || line.status == bevkd::tensor_status::kept)
        why += "\n  " + line.student + ": " + line.message;
    throw std::runtime_error("weight inheritance failed: " + summary + why);
  }
  bevkd::write_safetensors(files.student_inherited, r.tensors, student_file.metadata());
  load_tensors(bevkd::read_safetensors(files.student_inherited), student_template);
  return student_template;
}

}  // namespace trainer
