// bevkd tests: name patterns, layer maps, the rules JSON, and the remap engine's report, groups and strict mode.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include "inherit/inherit_testing.hpp"

using bevkd::index_t;
using bevkd::tensor_dtype;
using bevkd::tensor_status;
using namespace inherit_test;

namespace {

bevkd::rule_set rules_from(const char* text) { return bevkd::parse_rules(nlohmann::json::parse(text), "test"); }

const bevkd::tensor_report& line_of(const bevkd::remap_report& r, const std::string& name) {
  for (const auto& t : r.tensors)
    if (t.student == name) return t;
  throw std::runtime_error("no report line for " + name);
}

}  // namespace

TEST_CASE("name patterns capture segments and a suffix") {
  const bevkd::name_pattern p("encoder.layers.{i}.attn.*", "p");
  bevkd::name_match m;
  REQUIRE(p.match("encoder.layers.12.attn.q.weight", m));
  CHECK(m.captures.at("i") == "12");
  CHECK(m.star == "q.weight");
  CHECK_FALSE(p.match("encoder.layers.1.2.attn.q", m));
  CHECK_FALSE(p.match("decoder.layers.1.attn.q", m));
  CHECK(bevkd::name_pattern("a.{x}.b", "p").match("a.conv_1.b", m));
  CHECK_THROWS_AS(bevkd::name_pattern("a.{x.b", "p"), bevkd::invalid_argument);
  CHECK_THROWS_AS(bevkd::name_pattern("a.*.*", "p"), bevkd::invalid_argument);
}

TEST_CASE("layer maps: uniform, first, last, list") {
  bevkd::layer_map m{bevkd::layer_map::kind::uniform, 6, 3, {}};
  CHECK(m.map(0) == 0);
  CHECK(m.map(1) == 3);  // round(2.5) halves up
  CHECK(m.map(2) == 5);
  m.student_layers = 1;
  CHECK(m.map(0) == 0);
  const bevkd::layer_map u{bevkd::layer_map::kind::uniform, 23, 6, {}};
  CHECK(u.map(1) == 4);  // round(4.4)
  CHECK(u.map(5) == 22);
  CHECK(bevkd::layer_map{bevkd::layer_map::kind::first, 6, 3, {}}.map(2) == 2);
  CHECK(bevkd::layer_map{bevkd::layer_map::kind::last, 6, 3, {}}.map(0) == 3);
  CHECK(bevkd::layer_map{bevkd::layer_map::kind::list, 0, 2, {4, 1}}.map(1) == 1);
  CHECK_THROWS_AS(m.map(1), bevkd::invalid_argument);
}

TEST_CASE("rules JSON: schema errors name the field") {
  auto fails = [](const char* text, const char* word) {
    try {
      rules_from(text);
      return false;
    } catch (const bevkd::format_error& e) {
      return std::string(e.what()).find(word) != std::string::npos;
    }
  };
  CHECK(fails(R"({"rules": [{"student": "a", "teacher": "b", "tranforms": []}]})", "tranforms"));
  CHECK(fails(R"({"rules": [{"student": "a", "teacher": "b.{i}"}]})", "{i}"));
  CHECK(fails(R"({"rules": [{"student": "a", "teacher": "b", "transforms": [{"op": "spin"}]}]})", "unknown op"));
  CHECK(fails(R"({"rules": [{"student": "a", "teacher": "b", "transforms": [{"op": "select", "group": "g"}]}]})", "group"));
  CHECK(fails(R"({"rules": [{"student": "l.{i}", "teacher": "l.{i}", "layers": {"i": {"map": "uniform", "teacher": 2, "student": 3}}}]})",
              "student"));
  CHECK(fails(R"({"rules": 3})", "array"));
  CHECK(fails(R"({})", "rules"));
}

TEST_CASE("rules file: a key repeated in one object is rejected, naming the key") {
  inherit_test::temp_dir dir;
  const std::string path = dir.file("repeated.json");
  inherit_test::write_bytes(path, R"({"rules": [{"student": "a", "teacher": "b", /* kept? */ "teacher": "c"}]})");
  try {
    bevkd::load_rules(path);
    FAIL("accepted");
  } catch (const bevkd::format_error& e) {
    CHECK(std::string(e.what()).find("repeats the key \"teacher\"") != std::string::npos);
  }
  inherit_test::write_bytes(path, R"({"rules": [{"student": "a", "teacher": "b"}, {"student": "a", "teacher": "b"}]})");
  CHECK(bevkd::load_rules(path).rules.size() == 2);  // equal keys in different objects are fine
}

TEST_CASE("remap: exact, adapted, kept, error, unused teacher tensors and the inherited share") {
  std::mt19937 rng(3);
  bevkd::tensor_map teacher, student;
  teacher.emplace("enc.layers.0.w", random_tensor({4, 4}, rng));
  teacher.emplace("enc.layers.3.w", random_tensor({4, 4}, rng));
  teacher.emplace("enc.layers.5.w", random_tensor({4, 4}, rng));
  teacher.emplace("pos.row", random_tensor({8, 2}, rng));
  teacher.emplace("head.w", random_tensor({10, 4}, rng));
  teacher.emplace("steps", bevkd::host_tensor::zeros(tensor_dtype::i64, {}));
  teacher.emplace("teacher.only", random_tensor({3}, rng));
  for (int i = 0; i < 3; ++i) student.emplace("enc.layers." + std::to_string(i) + ".w", random_tensor({4, 4}, rng, tensor_dtype::f16));
  student.emplace("pos.row", random_tensor({4, 2}, rng));
  student.emplace("head.w", random_tensor({6, 4}, rng));
  student.emplace("steps", bevkd::host_tensor::zeros(tensor_dtype::i64, {}));
  student.emplace("student.only", random_tensor({5}, rng));
  student.emplace("bad.shape", random_tensor({5}, rng));
  teacher.emplace("bad.shape", random_tensor({6}, rng));
  const auto rules = rules_from(R"({
    "rules": [
      {"student": "enc.layers.{i}.*", "teacher": "enc.layers.{i}.*",
       "layers": {"i": {"map": "uniform", "teacher": 6, "student": 3}}},
      {"student": "pos.row", "teacher": "pos.row", "transforms": [{"op": "resize_1d", "dim": 0, "mode": "bilinear"}]},
      {"student": "head.w", "teacher": "head.w", "transforms": [{"op": "slice", "dim": 0}]}
    ]})");
  const auto result = bevkd::remap_weights(bevkd::catalog_of(teacher), bevkd::catalog_of(student), rules);
  const auto& report = result.report;
  CHECK(line_of(report, "enc.layers.1.w").teacher == "enc.layers.3.w");
  CHECK(line_of(report, "enc.layers.1.w").status == tensor_status::exact);  // a dtype change alone is still exact
  CHECK(line_of(report, "enc.layers.1.w").transforms == "convert(f32->f16)");
  CHECK(values_of(result.tensors.at("enc.layers.2.w")) ==
        values_of(make_tensor(tensor_dtype::f16, {4, 4}, values_of(teacher.at("enc.layers.5.w")))));
  CHECK(line_of(report, "pos.row").status == tensor_status::adapted);
  CHECK(line_of(report, "head.w").transforms == "slice(dim=0, start=0)");
  CHECK(values_of(result.tensors.at("head.w"))[23] == values_of(teacher.at("head.w"))[23]);
  CHECK(line_of(report, "steps").status == tensor_status::exact);
  CHECK(line_of(report, "student.only").status == tensor_status::kept);
  CHECK(result.tensors.at("student.only").bytes == student.at("student.only").bytes);
  CHECK(line_of(report, "bad.shape").status == tensor_status::error);
  CHECK(line_of(report, "bad.shape").message.find("[6]") != std::string::npos);
  CHECK(report.unused_teacher == std::vector<std::string>{"teacher.only"});
  CHECK_FALSE(report.ok());  // an error always fails
  const index_t total = 3 * 16 + 8 + 24 + 1 + 5 + 5, inherited = 3 * 16 + 8 + 24 + 1;
  CHECK(report.student_elements() == total);
  CHECK(report.inherited_share() == doctest::Approx(static_cast<double>(inherited) / total));
  const auto json = report.to_json();
  CHECK(json["counts"]["kept"] == 1);
  CHECK(json["counts"]["error"] == 1);
}

TEST_CASE("remap: exact copies, keep rules and strict mode") {
  std::mt19937 rng(4);
  bevkd::tensor_map teacher, student;
  teacher.emplace("a", random_tensor({2, 3}, rng));
  student.emplace("a", random_tensor({2, 3}, rng));
  student.emplace("b", random_tensor({2}, rng));
  const auto lenient = rules_from(R"({"rules": [{"student": "b", "keep": true}]})");
  auto result = bevkd::remap_weights(bevkd::catalog_of(teacher), bevkd::catalog_of(student), lenient);
  CHECK(line_of(result.report, "a").status == tensor_status::exact);
  CHECK(result.tensors.at("a").bytes == teacher.at("a").bytes);
  CHECK(line_of(result.report, "b").status == tensor_status::kept);
  CHECK(result.report.ok());
  bevkd::remap_options strict;
  strict.strict = true;
  CHECK_FALSE(bevkd::remap_weights(bevkd::catalog_of(teacher), bevkd::catalog_of(student), lenient, strict).report.ok());
  const auto keep_all = rules_from(R"({"unmatched": "keep", "strict": true, "rules": []})");
  const auto kept = bevkd::remap_weights(bevkd::catalog_of(teacher), bevkd::catalog_of(student), keep_all);
  CHECK(line_of(kept.report, "a").status == tensor_status::kept);
  CHECK_FALSE(kept.report.ok());
}

TEST_CASE("remap: a channel group shares one index set across coupled tensors") {
  // fc1 [8, 4] (8 hidden rows) -> [3, 4]; fc2 [4, 8] (8 hidden columns) -> [4, 3]; bias [8] -> [3].
  std::mt19937 rng(5);
  bevkd::tensor_map teacher, student;
  bevkd::host_tensor fc1 = random_tensor({8, 4}, rng);
  // Make rows 6, 1, 4 clearly the largest (L1).
  std::vector<double> v = values_of(fc1);
  for (int c = 0; c < 4; ++c) v[6 * 4 + c] *= 10, v[1 * 4 + c] *= 9, v[4 * 4 + c] *= 8;
  teacher.emplace("l.0.fc1.weight", make_tensor(tensor_dtype::f32, {8, 4}, v));
  teacher.emplace("l.0.fc1.bias", random_tensor({8}, rng));
  teacher.emplace("l.0.fc2.weight", random_tensor({4, 8}, rng));
  student.emplace("l.0.fc1.weight", random_tensor({3, 4}, rng));
  student.emplace("l.0.fc1.bias", random_tensor({3}, rng));
  student.emplace("l.0.fc2.weight", random_tensor({4, 3}, rng));
  const auto rules = rules_from(R"({
    "groups": {"hidden": {"source": "l.{i}.fc1.weight", "dim": 0, "norm": "l1"}},
    "rules": [
      {"student": "l.{i}.fc1.*", "teacher": "l.{i}.fc1.*", "transforms": [{"op": "select", "dim": 0, "group": "hidden"}]},
      {"student": "l.{i}.fc2.weight", "teacher": "l.{i}.fc2.weight", "transforms": [{"op": "select", "dim": 1, "group": "hidden"}]}
    ]})");
  const auto result = bevkd::remap_weights(bevkd::catalog_of(teacher), bevkd::catalog_of(student), rules);
  REQUIRE(result.report.ok());
  const std::vector<index_t> chosen = {1, 4, 6};
  const auto w1 = values_of(result.tensors.at("l.0.fc1.weight"));
  const auto b1 = values_of(result.tensors.at("l.0.fc1.bias"));
  const auto w2 = values_of(result.tensors.at("l.0.fc2.weight"));
  const auto tw1 = values_of(teacher.at("l.0.fc1.weight"));
  const auto tb1 = values_of(teacher.at("l.0.fc1.bias"));
  const auto tw2 = values_of(teacher.at("l.0.fc2.weight"));
  for (std::size_t j = 0; j < 3; ++j) {
    const auto t = static_cast<std::size_t>(chosen[j]);
    CHECK(b1[j] == tb1[t]);
    for (std::size_t c = 0; c < 4; ++c) {
      CHECK(w1[j * 4 + c] == tw1[t * 4 + c]);
      CHECK(w2[c * 3 + j] == tw2[c * 8 + t]);
    }
  }
}

TEST_CASE("remap: transpose, reshape, average_heads and pad_with_student") {
  std::mt19937 rng(6);
  bevkd::tensor_map teacher, student;
  teacher.emplace("t", make_tensor(tensor_dtype::f32, {2, 3}, {1, 2, 3, 4, 5, 6}));
  teacher.emplace("h", make_tensor(tensor_dtype::f32, {4}, {1, 3, 5, 7}));
  teacher.emplace("p", make_tensor(tensor_dtype::f32, {2}, {9, 8}));
  student.emplace("t", random_tensor({3, 2}, rng));
  student.emplace("r", random_tensor({6}, rng));
  student.emplace("h", random_tensor({2}, rng));
  student.emplace("p", make_tensor(tensor_dtype::f64, {4}, {0, 0, 5, 6}));
  const auto rules = rules_from(R"({"rules": [
      {"student": "t", "teacher": "t", "transforms": [{"op": "transpose", "perm": [1, 0]}]},
      {"student": "r", "teacher": "t", "transforms": [{"op": "reshape", "shape": [-1]}]},
      {"student": "h", "teacher": "h", "transforms": [{"op": "average_heads", "dim": 0, "heads": 4, "to_heads": 2}]},
      {"student": "p", "teacher": "p", "transforms": [{"op": "pad_with_student"}]}]})");
  const auto result = bevkd::remap_weights(bevkd::catalog_of(teacher), bevkd::catalog_of(student), rules);
  REQUIRE(result.report.ok());
  CHECK(values_of(result.tensors.at("t")) == std::vector<double>{1, 4, 2, 5, 3, 6});
  CHECK(values_of(result.tensors.at("r")) == std::vector<double>{1, 2, 3, 4, 5, 6});
  CHECK(values_of(result.tensors.at("h")) == std::vector<double>{2, 6});
  CHECK(values_of(result.tensors.at("p")) == std::vector<double>{9, 8, 5, 6});
  CHECK(result.tensors.at("p").type == tensor_dtype::f64);
}
