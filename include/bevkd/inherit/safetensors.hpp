// bevkd weight inheritance: a validating, memory-mapped safetensors reader and an atomic safetensors writer.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "detail/atomic_file.hpp"
#include "detail/checked.hpp"
#include "detail/json_reader.hpp"
#include "format_error.hpp"
#include "tensor.hpp"

namespace bevkd {

/// @brief Largest accepted safetensors JSON header, in bytes (the reference implementation's limit).
constexpr std::uint64_t safetensors_max_header = 100u * 1000u * 1000u;

/// @brief Largest accepted tensor rank.
constexpr std::size_t safetensors_max_rank = 16;

/// @brief The parsed, validated content of a safetensors buffer: borrowed tensors and the header metadata.
struct safetensors_content {
  tensor_catalog tensors;                         ///< Tensors by name, pointing into the buffer.
  std::map<std::string, std::string> metadata;    ///< The optional "__metadata__" string map.
};

namespace detail {

/// @brief Reads the little-endian u64 at p.
inline std::uint64_t load_le64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int k = 7; k >= 0; --k) v = (v << 8) | p[k];
  return v;
}

/// @brief One tensor entry of a header, before its range is checked against its neighbours.
struct header_entry {
  std::string name;
  tensor_ref tensor;
  std::uint64_t begin = 0, end = 0;
};

/// @brief Reads a JSON value as a non-negative integer that fits 63 bits, or throws naming `what`.
inline std::uint64_t header_uint(const nlohmann::json& value, const std::string& source, const std::string& what) {
  if (!value.is_number_integer()) throw format_error(source, what + " must be a non-negative integer");
  if (value.is_number_unsigned()) {
    const std::uint64_t v = value.get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(INT64_MAX)) throw format_error(source, what + " is too large");
    return v;
  }
  const std::int64_t v = value.get<std::int64_t>();
  if (v < 0) throw format_error(source, what + " must be >= 0, got " + std::to_string(v));
  return static_cast<std::uint64_t>(v);
}

/// @brief Parses and checks one tensor's header entry against a data section of `data_size` bytes.
inline header_entry parse_entry(const std::string& name, const nlohmann::json& value, std::uint64_t data_size,
                                const std::string& source) {
  const std::string where = source + ": tensor '" + name + "'";
  if (!value.is_object()) throw format_error(where, "entry must be a JSON object");
  const auto dtype_it = value.find("dtype");
  const auto shape_it = value.find("shape");
  const auto offsets_it = value.find("data_offsets");
  if (dtype_it == value.end() || shape_it == value.end() || offsets_it == value.end())
    throw format_error(where, "entry needs \"dtype\", \"shape\" and \"data_offsets\"");
  header_entry entry;
  entry.name = name;
  if (!dtype_it->is_string() || !parse_tensor_dtype(dtype_it->get<std::string>(), entry.tensor.type))
    throw format_error(where, "unknown dtype " + dtype_it->dump() +
                                  " (expected F64, F32, F16, BF16, I64, I32, I16, I8, U8 or BOOL)");
  if (!shape_it->is_array() || shape_it->size() > safetensors_max_rank)
    throw format_error(where, "shape must be an array of at most 16 non-negative integers");
  std::uint64_t count = 1;
  for (const auto& extent : *shape_it) {
    const std::uint64_t e = header_uint(extent, where, "shape entry");
    if (!checked_mul(count, e, count)) throw format_error(where, "shape's element count overflows 64 bits");
    entry.tensor.shape.push_back(static_cast<index_t>(e));
  }
  if (!offsets_it->is_array() || offsets_it->size() != 2)
    throw format_error(where, "data_offsets must be an array [begin, end]");
  entry.begin = header_uint((*offsets_it)[0], where, "data_offsets[0]");
  entry.end = header_uint((*offsets_it)[1], where, "data_offsets[1]");
  if (entry.begin > entry.end) throw format_error(where, "data_offsets begin > end");
  if (entry.end > data_size)
    throw format_error(where, "data_offsets end " + std::to_string(entry.end) + " is past the data section (" +
                                  std::to_string(data_size) + " bytes)");
  std::uint64_t bytes = 0;
  if (!checked_mul(count, tensor_dtype_size(entry.tensor.type), bytes) || bytes > static_cast<std::uint64_t>(INT64_MAX))
    throw format_error(where, "byte size overflows 64 bits");
  if (bytes != entry.end - entry.begin)
    throw format_error(where, "holds " + std::to_string(entry.end - entry.begin) + " bytes but shape " +
                                  shape_text(entry.tensor.shape) + " of " + tensor_dtype_name(entry.tensor.type) +
                                  " needs " + std::to_string(bytes));
  return entry;
}

/// @brief Reads the optional "__metadata__" object: string values only.
inline std::map<std::string, std::string> parse_metadata(const nlohmann::json& value, const std::string& source) {
  if (!value.is_object()) throw format_error(source, "__metadata__ must be an object of strings");
  std::map<std::string, std::string> out;
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (!it.value().is_string()) throw format_error(source, "__metadata__ value of '" + it.key() + "' is not a string");
    out.emplace(it.key(), it.value().get<std::string>());
  }
  return out;
}

/// @brief Rejects two entries whose byte ranges intersect (empty tensors occupy nothing).
inline void require_disjoint(std::vector<header_entry>& entries, const std::string& source) {
  std::sort(entries.begin(), entries.end(),
            [](const header_entry& a, const header_entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const header_entry* previous = nullptr;
  for (const header_entry& e : entries) {
    if (e.begin == e.end) continue;
    if (previous && e.begin < previous->end)
      throw format_error(source, "tensors '" + previous->name + "' and '" + e.name + "' have overlapping data ranges");
    previous = &e;
  }
}

/// @brief Splits a buffer into its JSON header and data section after checking the header length.
inline std::pair<const unsigned char*, std::uint64_t> header_of(const unsigned char* data, std::size_t size,
                                                                const std::string& source) {
  if (size < 8) throw format_error(source, "truncated: shorter than the 8-byte header length");
  const std::uint64_t n = load_le64(data);
  if (n > safetensors_max_header)
    throw format_error(source, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
  if (n > size - 8)
    throw format_error(source, "header length " + std::to_string(n) + " exceeds the file (" + std::to_string(size) +
                                   " bytes)");
  return {data + 8, n};
}

}  // namespace detail

/// @brief Parses and validates a whole safetensors buffer, treating it as untrusted; tensors borrow the buffer.
///
/// Checks: 8-byte header length <= 100 MB and <= size - 8; the header is a JSON object
/// with no key repeated in any object;
/// every dtype is known; shapes are arrays of at most 16 non-negative integers; offsets
/// are integers with begin <= end <= data section size; byte ranges do not overlap;
/// end - begin == product(shape) x dtype size; every product and sum is overflow-checked.
/// @param data The buffer (e.g. a mapped file).
/// @param size Its size in bytes.
/// @param source Name used in error messages (usually the path).
/// @throw bevkd::format_error naming the source and the problem.
inline safetensors_content parse_safetensors(const unsigned char* data, std::size_t size,
                                             const std::string& source = "safetensors") {
  const auto header = detail::header_of(data, size, source);
  const nlohmann::json json =
      detail::parse_json_unique_keys(header.first, header.first + header.second, source, "header");
  if (!json.is_object()) throw format_error(source, "header must be a JSON object");
  const unsigned char* section = header.first + header.second;
  const std::uint64_t section_size = size - 8 - header.second;
  safetensors_content content;
  std::vector<detail::header_entry> entries;
  for (auto it = json.begin(); it != json.end(); ++it) {
    if (it.key() == "__metadata__")
      content.metadata = detail::parse_metadata(it.value(), source);
    else
      entries.push_back(detail::parse_entry(it.key(), it.value(), section_size, source));
  }
  detail::require_disjoint(entries, source);
  for (detail::header_entry& e : entries) {
    e.tensor.data = section + e.begin;
    content.tensors.emplace(e.name, std::move(e.tensor));
  }
  return content;
}

/// @brief A safetensors file opened read-only through a memory map; tensors borrow the mapping.
class safetensors_file {
 public:
  /// @brief Maps and validates `path` (see parse_safetensors).
  /// @throw bevkd::format_error when the file cannot be read or is malformed.
  explicit safetensors_file(const std::string& path) : file_(path), content_(parse(file_, path)) {}

  /// @brief Tensors by name (valid while this object lives).
  const tensor_catalog& tensors() const { return content_.tensors; }
  /// @brief The header's "__metadata__" map.
  const std::map<std::string, std::string>& metadata() const { return content_.metadata; }
  /// @brief File size in bytes.
  std::size_t file_size() const { return file_.size(); }

 private:
  static safetensors_content parse(const detail::mapped_file& file, const std::string& path) {
    return parse_safetensors(file.data(), file.size(), path);
  }

  detail::mapped_file file_;
  safetensors_content content_;
};

/// @brief Called after each tensor written: (tensors done, tensors total, bytes done, bytes total).
using write_progress = std::function<void(std::size_t, std::size_t, std::uint64_t, std::uint64_t)>;

namespace detail {

/// @brief The serialized header for tensors laid out in name order, padded with spaces to a multiple of 8.
inline std::string safetensors_header(const tensor_catalog& tensors, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& entry : tensors) {
    const tensor_ref& t = entry.second;
    header[entry.first] = {{"dtype", tensor_dtype_name(t.type)},
                           {"shape", t.shape},
                           {"data_offsets", {offset, offset + t.bytes()}}};
    offset += t.bytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace detail

/// @brief Writes tensors (sorted by name) and metadata to a safetensors file, atomically.
///
/// The header is padded with spaces to a multiple of 8 bytes, as the reference writer
/// does. Data goes to a temporary file in the destination's directory, which is fsynced
/// and renamed over `path`; on any failure the temporary is removed and `path` is untouched.
/// @param path Destination.
/// @param tensors Tensors to write (their names are the keys).
/// @param metadata Optional "__metadata__" strings.
/// @param progress Optional callback after each tensor.
/// @throw bevkd::invalid_argument for a tensor whose byte count does not match its shape pointer (null data);
///        bevkd::format_error when the file cannot be written.
inline void write_safetensors(const std::string& path, const tensor_catalog& tensors,
                              const std::map<std::string, std::string>& metadata = {},
                              const write_progress& progress = {}) {
  std::uint64_t total = 0;
  for (const auto& entry : tensors) {
    detail::require(entry.second.data != nullptr || entry.second.bytes() == 0, "tensors[" + entry.first + "].data",
                    "is null for a non-empty tensor");
    for (const index_t e : entry.second.shape)
      detail::require(e >= 0, "tensors[" + entry.first + "].shape", "has a negative extent ", e);
    total += entry.second.bytes();
  }
  const std::string header = detail::safetensors_header(tensors, metadata);
  unsigned char length[8];
  for (int k = 0; k < 8; ++k) length[k] = static_cast<unsigned char>(static_cast<std::uint64_t>(header.size()) >> (8 * k));
  detail::atomic_file_writer out(path);
  out.write(length, sizeof length);
  out.write(header.data(), header.size());
  std::size_t done = 0;
  std::uint64_t bytes = 0;
  for (const auto& entry : tensors) {
    out.write(entry.second.data, entry.second.bytes());
    bytes += entry.second.bytes();
    if (progress) progress(++done, tensors.size(), bytes, total);
  }
  out.commit();
}

/// @brief Writes owned tensors to a safetensors file, atomically (see the tensor_catalog overload).
inline void write_safetensors(const std::string& path, const tensor_map& tensors,
                              const std::map<std::string, std::string>& metadata = {},
                              const write_progress& progress = {}) {
  write_safetensors(path, catalog_of(tensors), metadata, progress);
}

/// @brief Reads a whole safetensors file into owned tensors (small files, tests; prefer safetensors_file).
/// @throw bevkd::format_error when the file cannot be read or is malformed.
inline tensor_map read_safetensors(const std::string& path) {
  const safetensors_file file(path);
  tensor_map out;
  for (const auto& entry : file.tensors()) out.emplace(entry.first, host_tensor::copy_of(entry.second));
  return out;
}

}  // namespace bevkd
