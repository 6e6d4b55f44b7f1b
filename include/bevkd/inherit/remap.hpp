// bevkd weight inheritance: the remap engine (teacher + student template + rules -> student weights and a report).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/host_backend.hpp"
#include "report.hpp"
#include "rules.hpp"
#include "tensor.hpp"
#include "transforms.hpp"

namespace bevkd {

/// @brief Options of remap_weights.
struct remap_options {
  bool strict = false;  ///< Also fail when a tensor is kept (ORed with the rule set's own "strict").
  /// @brief Called before each student tensor: (index, total, name); e.g. the CLI's progress line.
  std::function<void(std::size_t, std::size_t, const std::string&)> progress;
};

/// @brief The remapped student tensors (every student tensor, in the student's dtypes and shapes) and the report.
struct remap_result {
  tensor_map tensors;   ///< Student tensors: inherited, or the student's own values where kept or errored.
  remap_report report;  ///< What happened to each; write `tensors` only when report.ok().
};

namespace detail {

/// @brief Converts a floating tensor to another floating dtype (a copy when the dtypes agree).
inline host_tensor convert_tensor(const host_tensor& in, tensor_dtype to) {
  if (in.type == to) return in;
  host_tensor out = host_tensor::zeros(to, in.shape);
  host_exec exec;
  visit_floating(floating_dtype(in.type), [&](auto from_tag) {
    using From = decltype(from_tag);
    visit_floating(floating_dtype(to), [&](auto to_tag) {
      using To = decltype(to_tag);
      convert_elements(exec, in.as<From>(), out.as<To>(), element_count(in.shape));
    });
  });
  return out;
}

/// @brief Runs the rules over every student tensor; one instance per remap call.
class remapper {
 public:
  remapper(const tensor_catalog& teacher, const rule_set& rules) : teacher_(teacher), rules_(rules) {}

  /// @brief Fills `out` with the student tensor `name` and returns its report line.
  tensor_report run(const std::string& name, const tensor_ref& student, host_tensor& out) {
    tensor_report line{name, tensor_status::kept, "", "", "", student.size()};
    out = host_tensor::copy_of(student);  // the student's own values unless a rule replaces them
    try {
      inherit(line, student, out);
    } catch (const std::exception& e) {
      line.status = tensor_status::error;
      line.message = e.what();
      out = host_tensor::copy_of(student);
    }
    return line;
  }

  /// @brief Teacher tensors that no rule read, in name order.
  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (const auto& entry : teacher_)
      if (!used_.count(entry.first)) out.push_back(entry.first);
    return out;
  }

 private:
  void inherit(tensor_report& line, const tensor_ref& student, host_tensor& out) {
    name_match match;
    const rule* r = find_rule(line.student, match);
    if (!r && !(rules_.unmatched_same_name && teacher_.count(line.student))) {
      line.message = "no rule matches and the teacher has no tensor of this name";
      return;
    }
    if (r && r->keep) {
      line.message = "the rule keeps the student's values";
      return;
    }
    line.teacher = r ? expand(r->teacher, match, r->layers) : line.student;
    const auto source = teacher_.find(line.teacher);
    if (source == teacher_.end()) {
      line.message = "the teacher has no tensor '" + line.teacher + "'";
      return;
    }
    used_.insert(line.teacher);
    static const std::vector<transform_step> no_steps;
    const std::vector<transform_step>& steps = r ? r->steps : no_steps;
    out = transform(source->second, student, steps, match, r, line.transforms);
    line.status = steps.empty() ? tensor_status::exact : tensor_status::adapted;  // exact may still convert the dtype
  }

  const rule* find_rule(const std::string& name, name_match& match) const {
    for (const rule& r : rules_.rules)
      if (r.student.match(name, match)) return &r;
    return nullptr;
  }

  // The teacher name of a template: captures substituted, layer maps applied to their captures.
  static std::string expand(const name_pattern& templ, const name_match& match, const std::map<std::string, layer_map>& layers) {
    std::string out;
    for (const name_pattern::piece& p : templ.pieces()) {
      if (p.type == name_pattern::piece::kind::literal) out += p.text;
      if (p.type == name_pattern::piece::kind::star) out += match.star;
      if (p.type != name_pattern::piece::kind::capture) continue;
      const std::string& value = match.captures.at(p.text);
      const auto map = layers.find(p.text);
      if (map == layers.end()) {
        out += value;
        continue;
      }
      require(value.find_first_not_of("0123456789") == std::string::npos && value.size() < 18, "layers." + p.text,
              "captured \"", value, "\" is not a layer index");
      out += std::to_string(map->second.map(std::stoll(value)));
    }
    return out;
  }

  host_tensor transform(const tensor_ref& teacher, const tensor_ref& student, const std::vector<transform_step>& steps,
                        const name_match& match, const rule* r, std::string& chain) {
    if (!is_floating(teacher.type) || !is_floating(student.type)) {
      require(teacher.type == student.type && steps.empty(), "dtype", "integer and boolean tensors are copied as they are: ",
              tensor_dtype_name(teacher.type), " -> ", tensor_dtype_name(student.type),
              steps.empty() ? "" : " with transforms", " is not supported");
      require(teacher.shape == student.shape, "shape", "teacher ", shape_text(teacher.shape), " != student ",
              shape_text(student.shape));
      return host_tensor::copy_of(teacher);
    }
    host_tensor work = host_tensor::copy_of(teacher);
    for (const transform_step& step : steps) {
      work = apply(step, work, student, match, r);
      chain += (chain.empty() ? "" : " -> ") + step.text();
    }
    if (work.type != student.type)
      chain += std::string(chain.empty() ? "" : " -> ") + "convert(" + dtype_name(floating_dtype(work.type)) + "->" +
               dtype_name(floating_dtype(student.type)) + ")";
    require(work.shape == student.shape, "shape", "the chain gives ", shape_text(work.shape), " but the student needs ",
            shape_text(student.shape), steps.empty() ? " (add transforms to the rule)" : "");
    return convert_tensor(work, student.type);
  }

  static index_t student_extent(const tensor_ref& student, int dim, index_t size) {
    if (size >= 0) return size;
    require(dim < static_cast<int>(student.shape.size()), "dim", dim, " is outside the student's shape ",
            shape_text(student.shape));
    return student.shape[static_cast<std::size_t>(dim)];
  }

  host_tensor apply(const transform_step& s, const host_tensor& in, const tensor_ref& student, const name_match& match,
                    const rule* r) {
    using kind = transform_step::kind;
    if (s.op == kind::reshape) return reshaped(in, s.shape.empty() ? student.shape : s.shape);
    if (s.op == kind::pad_with_student) return padded(in, student);
    if (s.op == kind::transpose) {
      host_tensor out = host_tensor::zeros(in.type, permuted_shape(in.shape, s.perm));
      typed(in.type, [&](auto* tag) { permute_dims(exec_, as<decltype(tag)>(in), in.shape, s.perm, as<decltype(tag)>(out)); });
      return out;
    }
    if (s.op == kind::resize_grid) return resized_grid(s, in, student);
    const axis_split split = split_at(in.shape, s.dim);
    tensor_shape shape = in.shape;
    host_tensor out;
    switch (s.op) {
      case kind::slice: {
        shape[static_cast<std::size_t>(s.dim)] = student_extent(student, s.dim, s.size);
        out = host_tensor::zeros(in.type, shape);
        typed(in.type, [&](auto* tag) {
          slice_dim(exec_, as<decltype(tag)>(in), split, s.start, shape[static_cast<std::size_t>(s.dim)], as<decltype(tag)>(out));
        });
        return out;
      }
      case kind::select: {
        const index_t k = student_extent(student, s.dim, s.size);
        const std::vector<index_t> index = s.group.empty() ? ranked(in, s.dim, s.norm, k) : group_indices(s.group, match, *r, k, split.dim);
        shape[static_cast<std::size_t>(s.dim)] = k;
        out = host_tensor::zeros(in.type, shape);
        typed(in.type, [&](auto* tag) { select_channels(exec_, as<decltype(tag)>(in), split, index.data(), k, as<decltype(tag)>(out)); });
        return out;
      }
      case kind::resize_1d: {
        const index_t m = student_extent(student, s.dim, s.size);
        shape[static_cast<std::size_t>(s.dim)] = m;
        out = host_tensor::zeros(in.type, shape);
        typed(in.type, [&](auto* tag) { resize_along(exec_, as<decltype(tag)>(in), split, m, s.resize, as<decltype(tag)>(out)); });
        return out;
      }
      default: {  // average_heads
        require(split.dim % s.heads == 0, "average_heads", "dimension ", s.dim, " of extent ", split.dim, " is not ",
                s.heads, " heads x head_dim");
        shape[static_cast<std::size_t>(s.dim)] = split.dim / s.heads * s.to_heads;
        out = host_tensor::zeros(in.type, shape);
        typed(in.type, [&](auto* tag) {
          average_head_groups(exec_, as<decltype(tag)>(in), split, s.heads, s.to_heads, as<decltype(tag)>(out));
        });
        return out;
      }
    }
  }

  host_tensor resized_grid(const transform_step& s, const host_tensor& in, const tensor_ref& student) {
    const bool hw_c = s.layout == grid_layout::hw_c;
    require(in.shape.size() == (hw_c ? 2u : 3u) && student.shape.size() == in.shape.size(), "resize_grid",
            hw_c ? "hw_c needs [H*W, C] tensors" : "c_hw needs [C, H, W] tensors", ", got teacher ", shape_text(in.shape),
            " and student ", shape_text(student.shape));
    index_t from[2] = {s.from[0], s.from[1]}, to[2] = {s.to[0], s.to[1]};
    if (hw_c) {
      if (!from[0]) from[0] = from[1] = square_side(in.shape[0], "teacher");
      if (!to[0]) to[0] = to[1] = square_side(student.shape[0], "student");
    } else {
      if (!from[0]) from[0] = in.shape[1], from[1] = in.shape[2];
      if (!to[0]) to[0] = student.shape[1], to[1] = student.shape[2];
    }
    const index_t channels = hw_c ? in.shape[1] : in.shape[0];
    const bool fits = hw_c ? from[0] * from[1] == in.shape[0] : from[0] == in.shape[1] && from[1] == in.shape[2];
    require(fits, "resize_grid.from", "[", from[0], ", ", from[1], "] does not match the teacher's ", shape_text(in.shape));
    host_tensor out = host_tensor::zeros(in.type, hw_c ? tensor_shape{to[0] * to[1], channels} : tensor_shape{channels, to[0], to[1]});
    typed(in.type, [&](auto* tag) {
      resize_grid(exec_, as<decltype(tag)>(in), s.layout, from[0], from[1], channels, to[0], to[1], s.resize, as<decltype(tag)>(out));
    });
    return out;
  }

  static index_t square_side(index_t cells, const char* who) {
    const index_t side = static_cast<index_t>(std::llround(std::sqrt(static_cast<double>(cells))));
    require(side * side == cells, "resize_grid", who, "'s ", cells, " cells are not a square grid: give \"from\"/\"to\"");
    return side;
  }

  static host_tensor reshaped(const host_tensor& in, const std::vector<index_t>& shape) {
    tensor_shape out_shape = shape;
    index_t known = 1, unknown = -1;
    for (std::size_t d = 0; d < shape.size(); ++d) {
      require(shape[d] >= -1 && (shape[d] != -1 || unknown < 0), "reshape", "at most one -1 and no other negative extent");
      if (shape[d] == -1) unknown = static_cast<index_t>(d);
      else known *= shape[d];
    }
    const index_t count = element_count(in.shape);
    if (unknown >= 0 && known > 0) out_shape[static_cast<std::size_t>(unknown)] = count / known;
    require(element_count(out_shape) == count, "reshape", shape_text(in.shape), " cannot become ", shape_text(shape));
    host_tensor out = in;
    out.shape = out_shape;
    return out;
  }

  // The student's values, with the transformed teacher written over its leading corner.
  static host_tensor padded(const host_tensor& in, const tensor_ref& student) {
    require(in.shape.size() == student.shape.size(), "pad_with_student", "rank differs: ", shape_text(in.shape), " vs ",
            shape_text(student.shape));
    for (std::size_t d = 0; d < in.shape.size(); ++d)
      require(in.shape[d] <= student.shape[d], "pad_with_student", shape_text(in.shape), " exceeds the student's ",
              shape_text(student.shape));
    host_tensor out = convert_tensor(host_tensor::copy_of(student), in.type);
    const std::size_t bytes = tensor_dtype_size(in.type);
    const index_t count = element_count(in.shape);
    for (index_t i = 0; i < count; ++i) {
      index_t rest = i, offset = 0, step = 1;
      for (std::size_t d = in.shape.size(); d-- > 0;) {
        offset += (rest % in.shape[d]) * step;
        rest /= in.shape[d];
        step *= student.shape[d];
      }
      std::memcpy(out.bytes.data() + static_cast<std::size_t>(offset) * bytes, in.bytes.data() + static_cast<std::size_t>(i) * bytes, bytes);
    }
    return out;
  }

  std::vector<index_t> ranked(const host_tensor& in, int dim, importance_norm norm, index_t k) {
    const axis_split split = split_at(in.shape, dim);
    std::vector<double> norms(static_cast<std::size_t>(split.dim));
    typed(in.type, [&](auto* tag) { channel_importance(exec_, as<decltype(tag)>(in), split, norm, norms.data()); });
    return top_k_channels(norms, k);
  }

  // One index set per (group, resolved source, k), ranked once and shared by every tensor of the group.
  std::vector<index_t> group_indices(const std::string& group, const name_match& match, const rule& r, index_t k,
                                     index_t extent) {
    const channel_group& g = rules_.groups.at(group);
    const std::string source = expand(g.source, match, r.layers);
    const std::string key = group + "|" + source + "|" + std::to_string(k);
    auto cached = index_sets_.find(key);
    if (cached == index_sets_.end()) {
      const auto it = teacher_.find(source);
      require(it != teacher_.end(), "group " + group, "the teacher has no source tensor '", source, "'");
      require(is_floating(it->second.type), "group " + group, "source '", source, "' is not a floating tensor");
      used_.insert(source);
      cached = index_sets_.emplace(key, ranked(host_tensor::copy_of(it->second), g.dim, g.norm, k)).first;
    }
    require(static_cast<index_t>(cached->second.empty() ? 0 : cached->second.back()) < extent, "group " + group,
            "index set from '", source, "' selects channel ", cached->second.empty() ? 0 : cached->second.back(),
            " of a dimension of extent ", extent);
    return cached->second;
  }

  template <class Ptr>
  using element_of = std::remove_pointer_t<Ptr>;

  template <class Ptr>
  static const element_of<Ptr>* as(const host_tensor& t) {
    return t.as<element_of<Ptr>>();
  }
  template <class Ptr>
  static element_of<Ptr>* as(host_tensor& t) {
    return t.as<element_of<Ptr>>();
  }

  // Calls f(static_cast<T*>(nullptr)) with T the element type of a floating dtype.
  template <class F>
  static void typed(tensor_dtype type, F&& f) {
    visit_floating(floating_dtype(type), [&](auto tag) { f(static_cast<decltype(tag)*>(nullptr)); });
  }

  const tensor_catalog& teacher_;
  const rule_set& rules_;
  host_exec exec_;
  std::set<std::string> used_;
  std::map<std::string, std::vector<index_t>> index_sets_;
};

}  // namespace detail

/// @brief Builds the student's initial weights from the teacher by the rules; never throws for a per-tensor problem.
///
/// Every student tensor gets a report line: the first rule whose pattern matches decides
/// its teacher source and transform chain; with no matching rule the same-named teacher
/// tensor is copied (unless the rules say "unmatched": "keep"). A missing teacher source
/// keeps the student's values; a failing chain is an error. Floating tensors are converted
/// to the student's dtype at the end; integer and boolean tensors are copied byte for byte.
/// @param teacher Teacher tensors (e.g. safetensors_file::tensors()).
/// @param student Student template tensors: names, dtypes, shapes and initial values.
/// @param rules The rule set.
/// @param options Strictness and progress.
/// @return All student tensors and the report; write them only when report.ok().
inline remap_result remap_weights(const tensor_catalog& teacher, const tensor_catalog& student, const rule_set& rules,
                                  const remap_options& options = {}) {
  detail::remapper engine(teacher, rules);
  remap_result result;
  result.report.strict = options.strict || rules.strict;
  std::size_t index = 0;
  for (const auto& entry : student) {
    if (options.progress) options.progress(index++, student.size(), entry.first);
    host_tensor out;
    result.report.tensors.push_back(engine.run(entry.first, entry.second, out));
    result.tensors.emplace(entry.first, std::move(out));
  }
  result.report.unused_teacher = engine.unused();
  return result;
}

}  // namespace bevkd
