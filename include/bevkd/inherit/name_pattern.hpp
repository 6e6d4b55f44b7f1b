// bevkd weight inheritance: tensor-name patterns with captures ("layers.{i}.attn.*") and the templates that use them.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cctype>
#include <map>
#include <string>
#include <vector>

#include "../core/error.hpp"

namespace bevkd {

/// @brief What a pattern captured from a name: named segments and the `*` suffix.
struct name_match {
  std::map<std::string, std::string> captures;  ///< `{name}` -> the matched segment.
  std::string star;                             ///< What `*` matched (empty when the pattern has none).
};

/// @brief A parsed name pattern: literal text, `{name}` (one segment of [A-Za-z0-9_]+) and at most one `*` (any suffix).
///
/// Patterns match whole names. A template (the teacher side) uses the same syntax: each
/// `{name}` is replaced by its capture (or its layer-mapped value) and `*` by the suffix.
class name_pattern {
 public:
  /// @brief One piece of a pattern.
  struct piece {
    enum class kind { literal, capture, star } type;  ///< What the piece is.
    std::string text;                                 ///< Literal text or capture name.
  };

  name_pattern() = default;
  /// @brief Parses `text`; throws bevkd::invalid_argument naming `what` on an unbalanced brace, an empty capture
  ///        name or a second `*`.
  name_pattern(const std::string& text, const std::string& what) : text_(text) {
    std::size_t stars = 0;
    for (std::size_t k = 0; k < text.size();) {
      if (text[k] == '{') {
        const std::size_t close = text.find('}', k);
        detail::require(close != std::string::npos, what, "unclosed '{' in \"", text, "\"");
        const std::string name = text.substr(k + 1, close - k - 1);
        detail::require(is_identifier(name), what, "capture name \"", name, "\" must be [A-Za-z0-9_]+ in \"", text, "\"");
        pieces_.push_back({piece::kind::capture, name});
        k = close + 1;
      } else if (text[k] == '*') {
        detail::require(++stars == 1, what, "at most one '*' per pattern, in \"", text, "\"");
        pieces_.push_back({piece::kind::star, ""});
        ++k;
      } else {
        detail::require(text[k] != '}', what, "unmatched '}' in \"", text, "\"");
        if (pieces_.empty() || pieces_.back().type != piece::kind::literal) pieces_.push_back({piece::kind::literal, ""});
        pieces_.back().text += text[k++];
      }
    }
  }

  /// @brief True when the whole `name` matches; fills `out` with the captures.
  bool match(const std::string& name, name_match& out) const {
    out = name_match{};
    return match_from(0, name, 0, out);
  }

  /// @brief The pattern's capture names, in order.
  std::vector<std::string> capture_names() const {
    std::vector<std::string> out;
    for (const piece& p : pieces_)
      if (p.type == piece::kind::capture) out.push_back(p.text);
    return out;
  }
  /// @brief True when the pattern has a `*`.
  bool has_star() const {
    for (const piece& p : pieces_)
      if (p.type == piece::kind::star) return true;
    return false;
  }
  /// @brief The parsed pieces.
  const std::vector<piece>& pieces() const { return pieces_; }
  /// @brief The pattern as written.
  const std::string& text() const { return text_; }

 private:
  static bool is_segment_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }
  static bool is_identifier(const std::string& s) {
    if (s.empty()) return false;
    for (const char c : s)
      if (!is_segment_char(c)) return false;
    return true;
  }

  // Backtracking is bounded: captures never cross '.', and there is at most one '*'.
  bool match_from(std::size_t p, const std::string& name, std::size_t at, name_match& out) const {
    if (p == pieces_.size()) return at == name.size();
    const piece& pc = pieces_[p];
    if (pc.type == piece::kind::literal)
      return name.compare(at, pc.text.size(), pc.text) == 0 && match_from(p + 1, name, at + pc.text.size(), out);
    std::size_t end = at;
    if (pc.type == piece::kind::capture)
      while (end < name.size() && is_segment_char(name[end])) ++end;
    else
      end = name.size();
    const std::size_t min_end = pc.type == piece::kind::capture ? at + 1 : at;
    for (std::size_t e = end + 1; e-- > min_end;) {  // longest first
      if (pc.type == piece::kind::capture) {
        const auto previous = out.captures.find(pc.text);
        if (previous != out.captures.end() && previous->second != name.substr(at, e - at)) continue;
        out.captures[pc.text] = name.substr(at, e - at);
      } else {
        out.star = name.substr(at, e - at);
      }
      if (match_from(p + 1, name, e, out)) return true;
    }
    return false;
  }

  std::string text_;
  std::vector<piece> pieces_;
};

}  // namespace bevkd
