// bevkd tests: the bevkd-inherit command-line tool end to end (exit codes, report, no output left on failure).
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <sys/wait.h>

#include "inherit/inherit_testing.hpp"

using namespace inherit_test;

namespace {

int run_tool(const std::string& arguments) {
  const int status = std::system((std::string(BEVKD_INHERIT_TOOL) + " " + arguments + " 2>/dev/null").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("bevkd-inherit: exit codes, report and atomic output") {
  temp_dir dir;
  std::mt19937 rng(9);
  bevkd::tensor_map teacher, student;
  teacher.emplace("w", random_tensor({4, 4}, rng));
  teacher.emplace("pos", random_tensor({8, 2}, rng));
  student.emplace("w", random_tensor({4, 4}, rng, bevkd::tensor_dtype::bf16));
  student.emplace("pos", random_tensor({4, 2}, rng));
  student.emplace("extra", random_tensor({3}, rng));
  const std::string t = dir.file("teacher.safetensors"), s = dir.file("student.safetensors"),
                    r = dir.file("rules.json"), out = dir.file("out.safetensors"), rep = dir.file("report.json");
  bevkd::write_safetensors(t, teacher);
  bevkd::write_safetensors(s, student, {{"format", "pt"}});
  write_bytes(r, R"({"rules": [{"student": "pos", "teacher": "pos", "transforms": [{"op": "resize_1d", "dim": 0}]}]})");
  const std::string files = t + " " + s + " " + r + " " + out;

  CHECK(run_tool("") == 1);
  CHECK(run_tool(files + " --bogus") == 1);
  CHECK(run_tool(t + " " + s + " " + r) == 1);

  SUBCASE("success writes the output and the report") {
    CHECK(run_tool(files + " --quiet --report " + rep) == 0);
    const bevkd::safetensors_file result(out);
    CHECK(result.tensors().size() == 3);
    CHECK(result.tensors().at("w").type == bevkd::tensor_dtype::bf16);
    CHECK(result.metadata().at("format") == "pt");
    const auto report = nlohmann::json::parse(read_bytes(rep));
    CHECK(report["counts"]["exact"] == 1);  // w: f32 -> bf16
    CHECK(report["counts"]["adapted"] == 1);
    CHECK(report["counts"]["kept"] == 1);
    CHECK(report["ok"] == true);
  }
  SUBCASE("strict mode fails when a tensor is kept and leaves no output") {
    CHECK(run_tool(files + " --strict --report " + rep) == 3);
    CHECK_FALSE(exists(out));
    CHECK(nlohmann::json::parse(read_bytes(rep))["ok"] == false);
  }
  SUBCASE("malformed inputs give exit code 2 and no output") {
    write_bytes(dir.file("bad.safetensors"), safetensors_bytes("{", ""));
    CHECK(run_tool(dir.file("bad.safetensors") + " " + s + " " + r + " " + out) == 2);
    CHECK(run_tool(t + " " + dir.file("missing") + " " + r + " " + out) == 2);
    write_bytes(r, "{\"rules\": [");
    CHECK(run_tool(files) == 2);
    CHECK_FALSE(exists(out));
  }
  SUBCASE("a failing tensor gives exit code 3 and keeps an existing output untouched") {
    write_bytes(out, "previous");
    write_bytes(r, R"({"rules": [{"student": "pos", "teacher": "pos"}]})");  // shape mismatch, no transform
    CHECK(run_tool(files + " --quiet") == 3);
    CHECK(read_bytes(out) == "previous");
  }
  SUBCASE("an unwritable output gives exit code 4") {
    CHECK(run_tool(t + " " + s + " " + dir.file("rules.json") + " " + dir.file("no/such/dir/out.safetensors")) == 4);
  }
}
