// bevkd weight inheritance: checkpoint tensors (dtype tag, shape, bytes) borrowed or owned, and name maps of them.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "../core/config.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "detail/checked.hpp"

namespace bevkd {

/// @brief Element type of a checkpoint tensor: the safetensors dtypes bevkd reads and writes.
enum class tensor_dtype : std::uint8_t { f64, f32, f16, bf16, i64, i32, i16, i8, u8, boolean };

/// @brief Bytes per element of a tensor dtype.
constexpr std::size_t tensor_dtype_size(tensor_dtype type) {
  switch (type) {
    case tensor_dtype::f64:
    case tensor_dtype::i64: return 8;
    case tensor_dtype::f32:
    case tensor_dtype::i32: return 4;
    case tensor_dtype::f16:
    case tensor_dtype::bf16:
    case tensor_dtype::i16: return 2;
    default: return 1;
  }
}

/// @brief The safetensors spelling of a dtype ("F32", "BF16", "BOOL", ...).
inline const char* tensor_dtype_name(tensor_dtype type) {
  static const char* const names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
  return names[static_cast<int>(type)];
}

/// @brief Parses a safetensors dtype name; returns false for a name bevkd does not know.
inline bool parse_tensor_dtype(const std::string& name, tensor_dtype& out) {
  for (int k = 0; k <= static_cast<int>(tensor_dtype::boolean); ++k)
    if (name == tensor_dtype_name(static_cast<tensor_dtype>(k))) {
      out = static_cast<tensor_dtype>(k);
      return true;
    }
  return false;
}

/// @brief True for the floating dtypes that transforms and conversions accept (F64, F32, F16, BF16).
constexpr bool is_floating(tensor_dtype type) { return static_cast<int>(type) <= static_cast<int>(tensor_dtype::bf16); }

/// @brief The bevkd::dtype of a floating tensor dtype (only valid when is_floating(type)).
constexpr dtype floating_dtype(tensor_dtype type) { return static_cast<dtype>(static_cast<int>(type)); }

/// @brief The tensor dtype of a bevkd::dtype.
constexpr tensor_dtype to_tensor_dtype(dtype type) { return static_cast<tensor_dtype>(static_cast<int>(type)); }

/// @brief A tensor shape: extents, outermost first (empty for a scalar).
using tensor_shape = std::vector<index_t>;

/// @brief Number of elements of a shape (1 for a scalar); the caller guarantees it fits (files are checked on read).
inline index_t element_count(const tensor_shape& shape) {
  index_t n = 1;
  for (const index_t e : shape) n *= e;
  return n;
}

/// @brief A shape as text, e.g. "[200, 256]".
inline std::string shape_text(const tensor_shape& shape) {
  std::string out = "[";
  for (std::size_t d = 0; d < shape.size(); ++d) out += (d ? ", " : "") + std::to_string(shape[d]);
  return out + "]";
}

/// @brief A borrowed tensor: dtype, shape and a pointer to its little-endian bytes (a mapped file or a host_tensor).
struct tensor_ref {
  tensor_dtype type = tensor_dtype::f32;  ///< Element type.
  tensor_shape shape;                     ///< Extents.
  const unsigned char* data = nullptr;    ///< element_count(shape) * tensor_dtype_size(type) bytes.

  /// @brief Number of elements.
  index_t size() const { return element_count(shape); }
  /// @brief Number of bytes.
  std::size_t bytes() const { return static_cast<std::size_t>(size()) * tensor_dtype_size(type); }
};

/// @brief An owned tensor: dtype, shape and its bytes.
struct host_tensor {
  tensor_dtype type = tensor_dtype::f32;  ///< Element type.
  tensor_shape shape;                     ///< Extents.
  std::vector<unsigned char> bytes;       ///< element_count(shape) * tensor_dtype_size(type) bytes.

  /// @brief A zero-filled tensor of the given dtype and shape.
  static host_tensor zeros(tensor_dtype type, const tensor_shape& shape) {
    host_tensor t{type, shape, {}};
    t.bytes.assign(static_cast<std::size_t>(element_count(shape)) * tensor_dtype_size(type), 0);
    return t;
  }
  /// @brief An owned copy of a borrowed tensor.
  static host_tensor copy_of(const tensor_ref& ref) {
    host_tensor t{ref.type, ref.shape, {}};
    t.bytes.assign(ref.data, ref.data + ref.bytes());
    return t;
  }
  /// @brief Typed element pointer (T must match `type`'s element size).
  template <class T>
  T* as() {
    return reinterpret_cast<T*>(bytes.data());
  }
  /// @brief Typed const element pointer.
  template <class T>
  const T* as() const {
    return reinterpret_cast<const T*>(bytes.data());
  }
  /// @brief A borrowed view of this tensor.
  tensor_ref ref() const { return tensor_ref{type, shape, bytes.data()}; }
};

/// @brief Tensors by name, borrowed (sorted by name, as the safetensors writer emits them).
using tensor_catalog = std::map<std::string, tensor_ref>;

/// @brief Tensors by name, owned.
using tensor_map = std::map<std::string, host_tensor>;

/// @brief A catalog borrowing every tensor of a map (valid while the map lives and is not modified).
inline tensor_catalog catalog_of(const tensor_map& tensors) {
  tensor_catalog out;
  for (const auto& entry : tensors) out.emplace(entry.first, entry.second.ref());
  return out;
}

/// @brief Calls f(T{}) with T the element type (double, float, half, bfloat16) of a floating dtype.
template <class F>
decltype(auto) visit_floating(dtype type, F&& f) {
  switch (type) {
    case dtype::f64: return f(double{});
    case dtype::f32: return f(float{});
    case dtype::f16: return f(half{});
    default: return f(bfloat16{});
  }
}

}  // namespace bevkd
