// bevkd weight inheritance: remap rules (name patterns, layer maps, transform chains, channel groups) and their JSON form.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "detail/json_reader.hpp"
#include "format_error.hpp"
#include "name_pattern.hpp"
#include "transforms.hpp"

namespace bevkd {

/// @brief How a captured student layer index i maps to a teacher layer index.
struct layer_map {
  /// @brief The mapping rule.
  enum class kind {
    uniform,  ///< round(i (L_T - 1) / (L_S - 1)), halves away from zero; 0 when L_S = 1.
    first,    ///< i (the first L_S teacher layers).
    last,     ///< L_T - L_S + i (the last L_S teacher layers).
    list      ///< list[i].
  };
  kind type = kind::uniform;      ///< Rule.
  index_t teacher_layers = 0;     ///< L_T.
  index_t student_layers = 0;     ///< L_S (the list's length for kind::list).
  std::vector<index_t> list;      ///< Teacher index of each student layer (kind::list).

  /// @brief The teacher layer of student layer i.
  /// @throw bevkd::invalid_argument when i is outside [0, L_S).
  index_t map(index_t i) const {
    detail::require(i >= 0 && i < student_layers, "layer", "student layer ", i, " is outside [0, ", student_layers, ")");
    switch (type) {
      case kind::first: return i;
      case kind::last: return teacher_layers - student_layers + i;
      case kind::list: return list[static_cast<std::size_t>(i)];
      default:
        if (student_layers == 1) return 0;
        // Integer rounding, halves up: round(i (L_T - 1) / (L_S - 1)) without floating point.
        return (2 * i * (teacher_layers - 1) + (student_layers - 1)) / (2 * (student_layers - 1));
    }
  }
};

/// @brief One step of a rule's transform chain (fields other than `op`'s own are ignored).
struct transform_step {
  /// @brief The operation.
  enum class kind { slice, select, resize_grid, resize_1d, average_heads, transpose, reshape, pad_with_student };
  kind op = kind::slice;                ///< Operation.
  int dim = 0;                          ///< slice, select, resize_1d, average_heads: the dimension.
  index_t start = 0;                    ///< slice: first index.
  index_t size = -1;                    ///< slice, select, resize_1d: target extent (-1: the student's).
  std::string group;                    ///< select: channel group sharing the index set ("" : rank this tensor).
  importance_norm norm = importance_norm::l1;  ///< select without group: importance norm.
  grid_layout layout = grid_layout::hw_c;      ///< resize_grid: table layout.
  index_t from[2] = {0, 0};             ///< resize_grid: teacher H, W (0: inferred, square for hw_c).
  index_t to[2] = {0, 0};               ///< resize_grid: student H, W (0: inferred from the student shape).
  resize_options resize;                ///< resize_grid, resize_1d: interpolation.
  index_t heads = 0;                    ///< average_heads: teacher heads.
  index_t to_heads = 0;                 ///< average_heads: student heads.
  std::vector<int> perm;                ///< transpose: out dimension d is input dimension perm[d].
  std::vector<index_t> shape;           ///< reshape: new shape (one -1 allowed; empty: the student's shape).

  /// @brief The step as text for the report, e.g. "select(dim=0, group=ffn_hidden)".
  std::string text() const {
    std::ostringstream s;
    static const char* const modes[] = {"bilinear", "bicubic", "area", "nearest"};
    const char* mode = modes[static_cast<int>(resize.mode)];
    switch (op) {
      case kind::slice: s << "slice(dim=" << dim << ", start=" << start << ")"; break;
      case kind::select:
        s << "select(dim=" << dim << ", " << (group.empty() ? (norm == importance_norm::l1 ? "l1" : "l2") : "group=" + group) << ")";
        break;
      case kind::resize_grid:
        s << "resize_grid(" << (layout == grid_layout::hw_c ? "hw_c" : "c_hw") << ", " << mode
          << (resize.align_corners ? ", align_corners" : "") << ")";
        break;
      case kind::resize_1d: s << "resize_1d(dim=" << dim << ", " << mode << (resize.align_corners ? ", align_corners" : "") << ")"; break;
      case kind::average_heads: s << "average_heads(dim=" << dim << ", " << heads << "->" << to_heads << ")"; break;
      case kind::transpose: s << "transpose"; break;
      case kind::reshape: s << "reshape"; break;
      case kind::pad_with_student: s << "pad_with_student"; break;
    }
    return s.str();
  }
};

/// @brief A named channel group: every select step naming it reuses one index set, ranked from its source tensor.
struct channel_group {
  name_pattern source;                         ///< Teacher tensor template (captures of the using rule apply).
  int dim = 0;                                 ///< Dimension of the source whose channels are ranked.
  importance_norm norm = importance_norm::l1;  ///< Ranking norm.
};

/// @brief One remap rule: the student tensors it matches, their teacher source and the transform chain.
struct rule {
  name_pattern student;                    ///< Student-name pattern.
  name_pattern teacher;                    ///< Teacher-name template (unused when `keep`).
  bool keep = false;                       ///< Keep the student's own values (no teacher source).
  std::map<std::string, layer_map> layers; ///< Layer maps by capture name.
  std::vector<transform_step> steps;       ///< Transform chain (empty: exact copy with dtype conversion).
};

/// @brief An ordered rule list (first match wins) with its channel groups and defaults.
struct rule_set {
  std::vector<rule> rules;                       ///< Rules, in priority order.
  std::map<std::string, channel_group> groups;   ///< Channel groups by name.
  bool strict = false;                           ///< Fail when any student tensor is kept or errors.
  bool unmatched_same_name = true;               ///< A student tensor no rule matches copies the same-named teacher tensor.
};

namespace detail {

inline importance_norm parse_norm(const json_reader& r) {
  const std::string norm = r.text("norm", "l1");
  if (norm != "l1" && norm != "l2") r.fail("\"norm\" must be \"l1\" or \"l2\"");
  return norm == "l1" ? importance_norm::l1 : importance_norm::l2;
}

inline resize_options parse_resize(const json_reader& r) {
  const std::string mode = r.text("mode", "bilinear");
  static const char* const names[] = {"bilinear", "bicubic", "area", "nearest"};
  for (int k = 0; k < 4; ++k)
    if (mode == names[k]) return resize_options{static_cast<resize_mode>(k), r.boolean("align_corners", false)};
  r.fail("\"mode\" must be bilinear, bicubic, area or nearest");
}

inline void parse_pair(const json_reader& r, const char* key, index_t (&out)[2]) {
  if (!r.has(key)) return;
  const std::vector<std::int64_t> v = r.integers(key);
  if (v.size() != 2 || v[0] < 1 || v[1] < 1) r.fail(std::string("\"") + key + "\" must be [H, W] with H, W >= 1");
  out[0] = v[0];
  out[1] = v[1];
}

inline transform_step parse_step(const json_reader& r) {
  transform_step s;
  const std::string op = r.text("op");
  s.dim = static_cast<int>(r.integer("dim", 0));
  s.size = r.integer("size", -1);
  if (s.dim < 0 || s.dim > 16) r.fail("\"dim\" must be in [0, 16]");
  if (op == "slice") {
    r.allow_only({"op", "dim", "start", "size"});
    s.op = transform_step::kind::slice;
    s.start = r.integer("start", 0);
    if (s.start < 0) r.fail("\"start\" must be >= 0");
  } else if (op == "select") {
    r.allow_only({"op", "dim", "size", "group", "norm"});
    s.op = transform_step::kind::select;
    s.group = r.text("group", "");
    s.norm = parse_norm(r);
  } else if (op == "resize_grid") {
    r.allow_only({"op", "layout", "from", "to", "mode", "align_corners"});
    s.op = transform_step::kind::resize_grid;
    const std::string layout = r.text("layout", "hw_c");
    if (layout != "hw_c" && layout != "c_hw") r.fail("\"layout\" must be \"hw_c\" or \"c_hw\"");
    s.layout = layout == "hw_c" ? grid_layout::hw_c : grid_layout::c_hw;
    parse_pair(r, "from", s.from);
    parse_pair(r, "to", s.to);
    s.resize = parse_resize(r);
  } else if (op == "resize_1d") {
    r.allow_only({"op", "dim", "size", "mode", "align_corners"});
    s.op = transform_step::kind::resize_1d;
    s.resize = parse_resize(r);
  } else if (op == "average_heads") {
    r.allow_only({"op", "dim", "heads", "to_heads"});
    s.op = transform_step::kind::average_heads;
    s.heads = r.integer("heads");
    s.to_heads = r.integer("to_heads");
    if (s.heads < 1 || s.to_heads < 1 || s.heads % s.to_heads != 0)
      r.fail("\"heads\" must be a positive multiple of \"to_heads\"");
  } else if (op == "transpose") {
    r.allow_only({"op", "perm"});
    s.op = transform_step::kind::transpose;
    for (const std::int64_t p : r.integers("perm", true)) s.perm.push_back(static_cast<int>(p));
  } else if (op == "reshape") {
    r.allow_only({"op", "shape"});
    s.op = transform_step::kind::reshape;
    for (const std::int64_t e : r.integers("shape")) s.shape.push_back(e);  // absent: the student's shape
  } else if (op == "pad_with_student") {
    r.allow_only({"op"});
    s.op = transform_step::kind::pad_with_student;
  } else {
    r.fail("unknown op \"" + op +
           "\" (slice, select, resize_grid, resize_1d, average_heads, transpose, reshape, pad_with_student)");
  }
  return s;
}

inline layer_map parse_layer_map(const json_reader& r) {
  r.allow_only({"map", "teacher", "student", "list"});
  layer_map m;
  const std::string kind = r.text("map");
  if (kind == "list") {
    for (const std::int64_t i : r.integers("list", true)) {
      if (i < 0) r.fail("\"list\" entries must be >= 0");
      m.list.push_back(i);
    }
    m.type = layer_map::kind::list;
    m.student_layers = static_cast<index_t>(m.list.size());
    return m;
  }
  if (kind == "uniform") m.type = layer_map::kind::uniform;
  else if (kind == "first") m.type = layer_map::kind::first;
  else if (kind == "last") m.type = layer_map::kind::last;
  else r.fail("\"map\" must be uniform, first, last or list");
  m.teacher_layers = r.integer("teacher");
  m.student_layers = r.integer("student");
  if (m.student_layers < 1 || m.teacher_layers < m.student_layers)
    r.fail("needs 1 <= \"student\" <= \"teacher\" layers");
  return m;
}

/// @brief A pattern from a JSON string field, with pattern errors turned into format errors.
inline name_pattern parse_pattern(const json_reader& r, const char* key) {
  try {
    return name_pattern(r.text(key), key);
  } catch (const invalid_argument& e) {
    r.fail(e.what());
  }
}

/// @brief Throws unless every capture the template uses is captured by the pattern (or is a layer map).
inline void require_captures(const json_reader& r, const name_pattern& pattern, const name_pattern& templ) {
  const std::vector<std::string> names = pattern.capture_names();
  for (const std::string& used : templ.capture_names()) {
    bool found = false;
    for (const std::string& n : names) found = found || n == used;
    if (!found) r.fail("template \"" + templ.text() + "\" uses {" + used + "}, which \"student\" does not capture");
  }
  if (templ.has_star() && !pattern.has_star())
    r.fail("template \"" + templ.text() + "\" uses '*' but \"student\" has none");
}

inline rule parse_rule(const json_reader& r) {
  r.allow_only({"student", "teacher", "keep", "layers", "transforms", "comment"});
  rule out;
  out.student = parse_pattern(r, "student");
  out.keep = r.boolean("keep", false);
  if (out.keep) return out;
  out.teacher = parse_pattern(r, "teacher");
  require_captures(r, out.student, out.teacher);
  if (r.has("layers")) {
    const json_reader layers(r.at("layers"), r.source(), r.where() + ".layers");
    for (auto it = r.at("layers").begin(); it != r.at("layers").end(); ++it)
      out.layers[it.key()] = parse_layer_map(json_reader(it.value(), r.source(), layers.where() + "." + it.key()));
  }
  if (r.has("transforms")) {
    const nlohmann::json& steps = r.at("transforms");
    if (!steps.is_array()) r.fail("\"transforms\" must be an array");
    for (std::size_t k = 0; k < steps.size(); ++k)
      out.steps.push_back(parse_step(json_reader(steps[k], r.source(), r.where() + ".transforms[" + std::to_string(k) + "]")));
  }
  return out;
}

}  // namespace detail

/// @brief Builds a rule set from its JSON form (schema: README "Weight inheritance").
/// @param json The parsed rules document.
/// @param source Name for error messages (the file path).
/// @throw bevkd::format_error naming the offending field.
inline rule_set parse_rules(const nlohmann::json& json, const std::string& source = "rules") {
  const detail::json_reader top(json, source, "rules file");
  top.allow_only({"format", "version", "comment", "strict", "unmatched", "groups", "rules"});
  if (top.integer("version", 1) != 1) top.fail("\"version\" must be 1");
  rule_set out;
  out.strict = top.boolean("strict", false);
  const std::string unmatched = top.text("unmatched", "same_name");
  if (unmatched != "same_name" && unmatched != "keep") top.fail("\"unmatched\" must be \"same_name\" or \"keep\"");
  out.unmatched_same_name = unmatched == "same_name";
  if (top.has("groups")) {
    const detail::json_reader groups(top.at("groups"), source, "groups");
    for (auto it = top.at("groups").begin(); it != top.at("groups").end(); ++it) {
      const detail::json_reader g(it.value(), source, "groups." + it.key());
      g.allow_only({"source", "dim", "norm", "comment"});
      channel_group group{detail::parse_pattern(g, "source"), static_cast<int>(g.integer("dim", 0)), detail::parse_norm(g)};
      if (group.dim < 0) g.fail("\"dim\" must be >= 0");
      out.groups.emplace(it.key(), std::move(group));
    }
  }
  const nlohmann::json& rules = top.at("rules");
  if (!rules.is_array()) top.fail("\"rules\" must be an array");
  for (std::size_t k = 0; k < rules.size(); ++k) {
    const detail::json_reader r(rules[k], source, "rules[" + std::to_string(k) + "]");
    out.rules.push_back(detail::parse_rule(r));
    for (const transform_step& s : out.rules.back().steps)
      if (!s.group.empty() && !out.groups.count(s.group)) r.fail("uses undefined channel group \"" + s.group + "\"");
  }
  return out;
}

/// @brief Reads and parses a rules JSON file.
/// @throw bevkd::format_error when the file cannot be read, is not JSON, or breaks the schema.
inline rule_set load_rules(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw format_error(path, "cannot open the rules file");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_rules(detail::parse_json_unique_keys(text.begin(), text.end(), path, "rules file", true), path);
}

}  // namespace bevkd
