// bevkd tests: the safetensors reader and writer (round trip in every dtype, layout, atomic writes, malformed files).
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <cstdlib>

#include "inherit/inherit_testing.hpp"

using namespace inherit_test;
using bevkd::tensor_dtype;

TEST_CASE("safetensors: write/read round trip in every dtype, with metadata") {
  temp_dir dir;
  std::mt19937 rng(7);
  bevkd::tensor_map tensors;
  for (int k = 0; k <= static_cast<int>(tensor_dtype::boolean); ++k) {
    const auto type = static_cast<tensor_dtype>(k);
    bevkd::host_tensor t = bevkd::host_tensor::zeros(type, {3, 2});
    for (unsigned char& b : t.bytes) b = static_cast<unsigned char>(rng() & (type == tensor_dtype::boolean ? 1 : 0xff));
    tensors.emplace(std::string("t_") + bevkd::tensor_dtype_name(type), t);
  }
  tensors.emplace("scalar", make_tensor(tensor_dtype::f32, {}, {2.5}));
  tensors.emplace("empty", bevkd::host_tensor::zeros(tensor_dtype::f16, {0, 4}));
  const std::string path = dir.file("round.safetensors");
  bevkd::write_safetensors(path, tensors, {{"format", "pt"}});

  const bevkd::safetensors_file file(path);
  CHECK(file.metadata().at("format") == "pt");
  REQUIRE(file.tensors().size() == tensors.size());
  for (const auto& entry : tensors) {
    INFO(entry.first);
    const bevkd::tensor_ref& r = file.tensors().at(entry.first);
    CHECK(r.type == entry.second.type);
    CHECK(r.shape == entry.second.shape);
    CHECK((r.bytes() == 0 || std::memcmp(r.data, entry.second.bytes.data(), r.bytes()) == 0));
  }

  // Layout as the reference writer: header padded with spaces to 8 bytes, data in name order.
  const std::string bytes = read_bytes(path);
  std::uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(k)]);
  CHECK(n % 8 == 0);
  CHECK(bytes[8 + n - 1] != '\0');
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  CHECK(header["empty"]["data_offsets"] == nlohmann::json::array({0, 0}));
  CHECK(header["scalar"]["shape"] == nlohmann::json::array());
  CHECK(header["t_BF16"]["data_offsets"][0] == 4);  // after "scalar" (4 bytes)
}

TEST_CASE("safetensors: an existing output survives a failed write, and no temporary is left") {
  temp_dir dir;
  const std::string path = dir.file("out.safetensors");
  write_bytes(path, "old");
  bevkd::tensor_catalog bad;
  bad.emplace("x", bevkd::tensor_ref{tensor_dtype::f32, {4}, nullptr});
  CHECK_THROWS_AS(bevkd::write_safetensors(path, bad), bevkd::invalid_argument);
  CHECK_THROWS_AS(bevkd::write_safetensors(dir.file("missing/out.safetensors"), bevkd::tensor_map{}), bevkd::format_error);
  CHECK(read_bytes(path) == "old");
  CHECK(std::system(("test $(ls -A '" + dir.path() + "' | wc -l) -eq 1").c_str()) == 0);
}

TEST_CASE("safetensors: every malformed file is rejected with a format_error naming the problem") {
  temp_dir dir;
  for (const malformed_case& c : malformed_corpus()) {
    INFO(c.name);
    const auto* data = reinterpret_cast<const unsigned char*>(c.bytes.data());
    try {
      bevkd::parse_safetensors(data, c.bytes.size(), c.name);
      FAIL("accepted");
    } catch (const bevkd::format_error& e) {
      CHECK(std::string(e.what()).find(c.expect) != std::string::npos);
    }
    write_bytes(dir.file(c.name), c.bytes);
    CHECK_THROWS_AS(bevkd::safetensors_file(dir.file(c.name)), bevkd::format_error);
  }
  CHECK_THROWS_AS(bevkd::safetensors_file(dir.file("does-not-exist")), bevkd::format_error);
  CHECK_THROWS_AS(bevkd::safetensors_file(dir.path()), bevkd::format_error);
}

TEST_CASE("safetensors: the corpus is written for the fuzzer when BEVKD_FUZZ_CORPUS is set") {
  const char* out = std::getenv("BEVKD_FUZZ_CORPUS");
  if (!out) return;
  for (const malformed_case& c : malformed_corpus()) write_bytes(std::string(out) + "/" + c.name, c.bytes);
  std::mt19937 rng(1);
  bevkd::tensor_map valid;
  valid.emplace("a.weight", random_tensor({3, 4}, rng));
  valid.emplace("b.bias", random_tensor({4}, rng, tensor_dtype::bf16));
  bevkd::write_safetensors(std::string(out) + "/valid.safetensors", valid, {{"format", "pt"}});
}
