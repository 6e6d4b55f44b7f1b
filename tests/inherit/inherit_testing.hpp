// bevkd tests: helpers for the weight-inheritance tests (tensors from values, temp files, the malformed-file corpus).
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <bevkd/inherit/inherit.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <unistd.h>
#include <utility>
#include <vector>

namespace inherit_test {

/// @brief A tensor of dtype `type` holding `values` (converted, rounded to nearest even).
inline bevkd::host_tensor make_tensor(bevkd::tensor_dtype type, const bevkd::tensor_shape& shape,
                                      const std::vector<double>& values) {
  bevkd::host_tensor f64{bevkd::tensor_dtype::f64, shape, {}};
  f64.bytes.resize(values.size() * 8);
  std::memcpy(f64.bytes.data(), values.data(), f64.bytes.size());
  return bevkd::detail::convert_tensor(f64, type);
}

/// @brief The values of a floating tensor, widened to double.
inline std::vector<double> values_of(const bevkd::host_tensor& t) {
  const bevkd::host_tensor f64 = bevkd::detail::convert_tensor(t, bevkd::tensor_dtype::f64);
  std::vector<double> out(static_cast<std::size_t>(bevkd::element_count(t.shape)));
  std::memcpy(out.data(), f64.bytes.data(), out.size() * 8);
  return out;
}

/// @brief `n` uniform values in [-1, 1).
inline std::vector<double> random_values(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<double> v(n);
  for (double& x : v) x = u(rng);
  return v;
}

/// @brief A random f32 tensor of the given shape.
inline bevkd::host_tensor random_tensor(const bevkd::tensor_shape& shape, std::mt19937& rng,
                                        bevkd::tensor_dtype type = bevkd::tensor_dtype::f32) {
  return make_tensor(type, shape, random_values(static_cast<std::size_t>(bevkd::element_count(shape)), rng));
}

/// @brief A fresh directory under /tmp, removed (with its files) at the end of the scope.
class temp_dir {
 public:
  temp_dir() {
    char pattern[] = "/tmp/bevkd-inherit-XXXXXX";
    const char* made = ::mkdtemp(pattern);
    if (!made) throw std::runtime_error("temp_dir: mkdtemp failed");
    path_ = made;
  }
  ~temp_dir() {
    std::error_code ignored;  // a test's leftover files must not turn into an exception in a destructor
    std::filesystem::remove_all(path_, ignored);
  }
  /// @brief A path inside the directory.
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  /// @brief The directory.
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

/// @brief Writes bytes to a file.
inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// @brief Reads a whole file ("" when missing).
inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// @brief True when a file exists.
inline bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

/// @brief A safetensors byte string: the 8-byte length `declared` (default: the header's), the header, then `data`.
inline std::string safetensors_bytes(const std::string& header, const std::string& data,
                                     std::uint64_t declared = UINT64_MAX) {
  const std::uint64_t n = declared == UINT64_MAX ? header.size() : declared;
  std::string out(8, '\0');
  for (int k = 0; k < 8; ++k) out[static_cast<std::size_t>(k)] = static_cast<char>((n >> (8 * k)) & 0xff);
  return out + header + data;
}

/// @brief One malformed file of the corpus: its name, its bytes and a word its error message must contain.
struct malformed_case {
  std::string name;
  std::string bytes;
  std::string expect;
};

/// @brief Malformed safetensors files, each of which the reader must reject with a format_error.
inline std::vector<malformed_case> malformed_corpus() {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data(8, '\1');
  auto file = [&](const std::string& entries, const std::string& d = std::string(8, '\1')) {
    return safetensors_bytes("{" + entries + "}", d);
  };
  std::vector<malformed_case> c = {
      {"empty", "", "truncated"},
      {"truncated_length", std::string(5, '\0'), "truncated"},
      {"huge_header_length", safetensors_bytes("{}", "", 1ull << 40), "100 MB"},
      {"max_header_length", safetensors_bytes("{}", "", UINT64_MAX - 1), "100 MB"},
      {"header_longer_than_file", safetensors_bytes("{}", "", 64), "exceeds the file"},
      {"bad_json", file(R"("a":{"dtype":"F32",)"), "JSON"},
      {"not_an_object", safetensors_bytes("[1,2]", ""), "object"},
      {"entry_not_object", file(R"("a":5)"), "object"},
      {"missing_fields", file(R"("a":{"dtype":"F32"})"), "needs"},
      {"unknown_dtype", file(R"("a":{"dtype":"F8","shape":[2],"data_offsets":[0,8]})"), "unknown dtype"},
      {"dtype_not_string", file(R"("a":{"dtype":4,"shape":[2],"data_offsets":[0,8]})"), "unknown dtype"},
      {"negative_shape", file(R"("a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), ">= 0"},
      {"float_shape", file(R"("a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), "integer"},
      {"string_shape", file(R"("a":{"dtype":"F32","shape":"2","data_offsets":[0,8]})"), "shape"},
      {"overflowing_shape",
       file(R"("a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]})"), "overflow"},
      {"overflowing_bytes", file(R"("a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]})"),
       "overflow"},
      {"offsets_past_end", file(R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]})"), "past the data"},
      {"begin_after_end", file(R"("a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]})"), "begin > end"},
      {"negative_offset", file(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"), ">= 0"},
      {"offsets_wrong_arity", file(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0]})"), "[begin, end]"},
      {"size_mismatch", file(R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), "needs 12"},
      {"overlapping_ranges",
       file(ok_entry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), "overlapping"},
      {"huge_offset", file(R"("a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]})"),
       "too large"},
      {"metadata_not_strings", file(ok_entry + R"(,"__metadata__":{"k":1})"), "__metadata__"},
      {"truncated_data", file(ok_entry, std::string(4, '\1')), "past the data"},
      // Two entries named "a": another reader may keep the first, nlohmann the second.
      {"repeated_tensor_name", file(ok_entry + R"(,"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]})"),
       "repeats the key \"a\""},
      {"repeated_field", file(R"("a":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]})"),
       "repeats the key \"dtype\""},
  };
  return c;
}

}  // namespace inherit_test
