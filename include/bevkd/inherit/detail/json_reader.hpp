// bevkd internal: JSON parsing that rejects repeated keys, and typed, path-naming access to a JSON object.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../format_error.hpp"

namespace bevkd {
namespace detail {

/// @brief Parses the JSON text [first, last), rejecting a key repeated within one object (with the key named).
///
/// Parsers disagree on which of two equal keys wins, so a file could show one tensor (or
/// rule) to another tool and a different one to bevkd; nlohmann alone keeps the last.
/// @param ignore_comments Accept // and /* */ comments (the rules file).
/// @throw bevkd::format_error naming `source`: invalid JSON, or the repeated key.
template <class Iterator>
nlohmann::json parse_json_unique_keys(Iterator first, Iterator last, const std::string& source, const char* what,
                                      bool ignore_comments = false) {
  using event = nlohmann::json::parse_event_t;
  std::vector<std::vector<std::string>> open_objects;  // keys seen so far in each enclosing object
  std::string repeated;
  const auto watch = [&](int, event e, nlohmann::json& value) {
    if (e == event::object_start) open_objects.emplace_back();
    if (e == event::object_end && !open_objects.empty()) open_objects.pop_back();
    if (e == event::key && !open_objects.empty() && repeated.empty()) {
      std::vector<std::string>& keys = open_objects.back();
      const std::string& key = value.get_ref<const std::string&>();
      if (std::find(keys.begin(), keys.end(), key) != keys.end()) repeated = key;
      keys.push_back(key);
    }
    return true;
  };
  nlohmann::json json = nlohmann::json::parse(first, last, watch, false, ignore_comments);
  if (json.is_discarded()) throw format_error(source, std::string(what) + " is not valid JSON");
  if (!repeated.empty())
    throw format_error(source, std::string(what) + " repeats the key \"" + repeated + "\" in one object");
  return json;
}

/// @brief Reads fields of one JSON object, rejecting unknown keys and wrong types with the field's path in the message.
class json_reader {
 public:
  /// @brief A reader of `value`, named `where` (e.g. "rules[2]") in messages about `source`.
  json_reader(const nlohmann::json& value, std::string source, std::string where)
      : value_(value), source_(std::move(source)), where_(std::move(where)) {
    if (!value_.is_object()) fail("must be a JSON object");
  }

  /// @brief Throws when the object has a key outside `allowed` (catches typos such as "tranforms").
  void allow_only(std::initializer_list<const char*> allowed) const {
    for (auto it = value_.begin(); it != value_.end(); ++it) {
      bool known = false;
      for (const char* key : allowed) known = known || it.key() == key;
      if (!known) fail("unknown key \"" + it.key() + "\"");
    }
  }
  /// @brief True when the key is present.
  bool has(const char* key) const { return value_.contains(key); }
  /// @brief The raw value of a required key.
  const nlohmann::json& at(const char* key) const {
    if (!has(key)) fail(std::string("needs \"") + key + "\"");
    return value_.at(key);
  }
  /// @brief A string field (required when `fallback` is null).
  std::string text(const char* key, const char* fallback = nullptr) const {
    if (!has(key) && fallback) return fallback;
    const nlohmann::json& v = at(key);
    if (!v.is_string()) fail(std::string("\"") + key + "\" must be a string");
    return v.get<std::string>();
  }
  /// @brief An integer field, or `fallback` when absent.
  std::int64_t integer(const char* key, std::int64_t fallback) const {
    return has(key) ? integer(key) : fallback;
  }
  /// @brief A required integer field.
  std::int64_t integer(const char* key) const {
    const nlohmann::json& v = at(key);
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > INT64_MAX))
      fail(std::string("\"") + key + "\" must be an integer");
    return v.get<std::int64_t>();
  }
  /// @brief A boolean field, or `fallback` when absent.
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const nlohmann::json& v = value_.at(key);
    if (!v.is_boolean()) fail(std::string("\"") + key + "\" must be true or false");
    return v.get<bool>();
  }
  /// @brief An array of integers (empty when absent and not required).
  std::vector<std::int64_t> integers(const char* key, bool required = false) const {
    if (!has(key) && !required) return {};
    const nlohmann::json& v = at(key);
    if (!v.is_array()) fail(std::string("\"") + key + "\" must be an array of integers");
    std::vector<std::int64_t> out;
    for (const auto& e : v) {
      if (!e.is_number_integer() || (e.is_number_unsigned() && e.get<std::uint64_t>() > INT64_MAX))
        fail(std::string("\"") + key + "\" must be an array of integers");
      out.push_back(e.get<std::int64_t>());
    }
    return out;
  }
  /// @brief Throws bevkd::format_error naming the source and this object's path.
  [[noreturn]] void fail(const std::string& problem) const { throw format_error(source_, where_ + ": " + problem); }
  /// @brief This object's path.
  const std::string& where() const { return where_; }
  /// @brief The file name used in messages.
  const std::string& source() const { return source_; }

 private:
  const nlohmann::json& value_;
  std::string source_;
  std::string where_;
};

}  // namespace detail
}  // namespace bevkd
