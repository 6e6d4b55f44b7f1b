// bevkd tests: the shipped BEVFormer-base -> BEVFormer-tiny rules on synthetic checkpoints with BEVFormer's names.
// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <algorithm>

#include "inherit/inherit_testing.hpp"

using bevkd::index_t;
using bevkd::tensor_dtype;
using bevkd::tensor_shape;
using namespace inherit_test;

namespace {

/// @brief The sizes that differ between BEVFormer-base and BEVFormer-tiny.
struct bevformer_size {
  index_t bev;                   // bev_h = bev_w
  index_t encoder_layers;
  index_t levels;                // spatial cross-attention feature levels
  std::vector<index_t> blocks;   // ResNet blocks per stage
  std::vector<index_t> neck_in;  // FPN input channels
  index_t neck_out;              // FPN outputs
  bool dcn;                      // DCNv2 in stages 3 and 4
};

const bevformer_size base{200, 6, 4, {3, 4, 23, 3}, {512, 1024, 2048}, 4, true};
const bevformer_size tiny{50, 3, 1, {3, 4, 6, 3}, {2048}, 1, false};

using shape_list = std::vector<std::pair<std::string, tensor_shape>>;

void linear(shape_list& out, const std::string& name, index_t rows, index_t cols) {
  out.push_back({name + ".weight", {rows, cols}});
  out.push_back({name + ".bias", {rows}});
}

void vector_param(shape_list& out, const std::string& name, index_t n) { out.push_back({name, {n}}); }

void norm(shape_list& out, const std::string& name) {
  vector_param(out, name + ".weight", 256);
  vector_param(out, name + ".bias", 256);
}

void deformable(shape_list& out, const std::string& p, index_t in, index_t levels, index_t points, index_t queues) {
  linear(out, p + "sampling_offsets", queues * 8 * levels * points * 2, in);
  linear(out, p + "attention_weights", queues * 8 * levels * points, in);
  linear(out, p + "value_proj", 256, 256);
}

void ffn_and_norms(shape_list& out, const std::string& p) {
  linear(out, p + "ffns.0.layers.0.0", 512, 256);
  linear(out, p + "ffns.0.layers.1", 256, 512);
  for (int n = 0; n < 3; ++n) norm(out, p + "norms." + std::to_string(n));
}

// mmdet3d/BEVFormer parameter names with their real shapes; the backbone keeps its real names but
// narrow channels (8), so the test stays small: its rules only rename, whatever the width.
shape_list bevformer_shapes(const bevformer_size& s) {
  shape_list out;
  const std::string head = "pts_bbox_head.", tr = head + "transformer.";
  out.push_back({head + "bev_embedding.weight", {s.bev * s.bev, 256}});
  out.push_back({head + "query_embedding.weight", {900, 512}});
  out.push_back({head + "positional_encoding.row_embed.weight", {s.bev, 128}});
  out.push_back({head + "positional_encoding.col_embed.weight", {s.bev, 128}});
  out.push_back({tr + "level_embeds", {4, 256}});
  out.push_back({tr + "cams_embeds", {6, 256}});
  linear(out, tr + "reference_points", 3, 256);
  linear(out, tr + "can_bus_mlp.0", 128, 18);
  linear(out, tr + "can_bus_mlp.2", 256, 128);
  norm(out, tr + "can_bus_mlp.norm");
  for (index_t i = 0; i < s.encoder_layers; ++i) {
    const std::string p = tr + "encoder.layers." + std::to_string(i) + ".";
    deformable(out, p + "attentions.0.", 512, 1, 4, 2);  // temporal self-attention: 2 BEV queues
    linear(out, p + "attentions.0.output_proj", 256, 256);
    deformable(out, p + "attentions.1.deformable_attention.", 256, s.levels, 8, 1);
    linear(out, p + "attentions.1.output_proj", 256, 256);
    ffn_and_norms(out, p);
  }
  for (int i = 0; i < 6; ++i) {
    const std::string p = tr + "decoder.layers." + std::to_string(i) + ".";
    out.push_back({p + "attentions.0.attn.in_proj_weight", {768, 256}});
    out.push_back({p + "attentions.0.attn.in_proj_bias", {768}});
    linear(out, p + "attentions.0.attn.out_proj", 256, 256);
    deformable(out, p + "attentions.1.", 256, 1, 4, 1);
    linear(out, p + "attentions.1.output_proj", 256, 256);
    ffn_and_norms(out, p);
    const std::string k = std::to_string(i);
    for (const char* l : {".0", ".3"}) linear(out, head + "cls_branches." + k + l, 256, 256);
    for (const char* n : {".1", ".4"}) norm(out, head + "cls_branches." + k + n);
    linear(out, head + "cls_branches." + k + ".6", 10, 256);
    for (const char* l : {".0", ".2"}) linear(out, head + "reg_branches." + k + l, 256, 256);
    linear(out, head + "reg_branches." + k + ".4", 10, 256);
  }
  for (std::size_t l = 0; l < s.neck_in.size(); ++l) {
    out.push_back({"img_neck.lateral_convs." + std::to_string(l) + ".conv.weight", {256, s.neck_in[l], 1, 1}});
    vector_param(out, "img_neck.lateral_convs." + std::to_string(l) + ".conv.bias", 256);
  }
  for (index_t l = 0; l < s.neck_out; ++l) {
    out.push_back({"img_neck.fpn_convs." + std::to_string(l) + ".conv.weight", {256, 256, 3, 3}});
    vector_param(out, "img_neck.fpn_convs." + std::to_string(l) + ".conv.bias", 256);
  }
  out.push_back({"img_backbone.conv1.weight", {8, 3, 7, 7}});
  for (std::size_t stage = 0; stage < 4; ++stage)
    for (index_t b = 0; b < s.blocks[stage]; ++b) {
      const std::string p = "img_backbone.layer" + std::to_string(stage + 1) + "." + std::to_string(b) + ".";
      for (int c = 1; c <= 3; ++c) out.push_back({p + "conv" + std::to_string(c) + ".weight", {8, 8, 1, 1}});
      if (s.dcn && stage >= 2) linear(out, p + "conv2.conv_offset", 27, 8);
    }
  return out;
}

bevkd::tensor_map synthetic_checkpoint(const bevformer_size& s, unsigned seed) {
  std::mt19937 rng(seed);
  bevkd::tensor_map out;
  for (const auto& entry : bevformer_shapes(s)) out.emplace(entry.first, random_tensor(entry.second, rng));
  out.emplace("img_backbone.bn1.num_batches_tracked", bevkd::host_tensor::zeros(tensor_dtype::i64, {}));  // integer buffer
  return out;
}

std::vector<float> floats(const bevkd::host_tensor& t) {
  const std::vector<double> v = values_of(t);
  return std::vector<float>(v.begin(), v.end());
}

/// @brief Teacher, student and remap result, built once: doctest re-runs a test case for each SUBCASE.
struct bevformer_remap {
  bevkd::tensor_map teacher = synthetic_checkpoint(base, 11);
  bevkd::tensor_map student = synthetic_checkpoint(tiny, 12);
  bevkd::remap_result result = run();

  bevkd::remap_result run() const {
    bevkd::remap_options options;
    options.strict = true;
    const std::string rules = std::string(BEVKD_SOURCE_DIR) + "/share/rules/bevformer_base_to_tiny.json";
    return bevkd::remap_weights(bevkd::catalog_of(teacher), bevkd::catalog_of(student), bevkd::load_rules(rules), options);
  }
};

}  // namespace

TEST_CASE("BEVFormer-base -> BEVFormer-tiny with the shipped rules") {
  static const bevformer_remap remap;
  const bevkd::tensor_map& teacher = remap.teacher;
  const bevkd::tensor_map& student = remap.student;
  const bevkd::remap_result& result = remap.result;
  const auto& report = result.report;
  for (const auto& line : report.tensors) {
    INFO(line.student << ": " << line.message);
    CHECK(line.status != bevkd::tensor_status::error);
    CHECK(line.status != bevkd::tensor_status::kept);
  }
  CHECK(report.ok());
  CHECK(report.inherited_share() == 1.0);
  auto source = [&](const std::string& name) {
    for (const auto& line : report.tensors)
      if (line.student == name) return line.teacher;
    return std::string("?");
  };
  const std::string enc = "pts_bbox_head.transformer.encoder.layers.";
  CHECK(source(enc + "1.ffns.0.layers.0.0.weight") == enc + "3.ffns.0.layers.0.0.weight");
  CHECK(source(enc + "2.norms.2.bias") == enc + "5.norms.2.bias");
  CHECK(source("img_neck.lateral_convs.0.conv.weight") == "img_neck.lateral_convs.2.conv.weight");
  CHECK(source("img_backbone.layer3.5.conv2.weight") == "img_backbone.layer3.22.conv2.weight");
  CHECK(result.tensors.at(enc + "1.attentions.0.value_proj.weight").bytes ==
        teacher.at(enc + "3.attentions.0.value_proj.weight").bytes);

  SUBCASE("BEV queries: 200x200 -> 50x50 area resize equals the 4x4 block mean (resample reference)") {
    const std::vector<float> t = floats(teacher.at("pts_bbox_head.bev_embedding.weight"));
    const std::vector<float> s = floats(result.tensors.at("pts_bbox_head.bev_embedding.weight"));
    std::vector<float> reference(s.size());
    bevkd::host_exec exec;
    bevkd::bev_resample({bevkd::resample_mode::area, false, false})
        .forward(exec, bevkd::grid_nhwc<const float>(t.data(), 1, 200, 200, 256), bevkd::grid_nhwc(reference.data(), 1, 50, 50, 256));
    CHECK(s == reference);
    double mean = 0;  // cell (7, 9), channel 5, by hand
    for (int y = 0; y < 4; ++y)
      for (int x = 0; x < 4; ++x) mean += t[static_cast<std::size_t>(((28 + y) * 200 + 36 + x) * 256 + 5)];
    CHECK(s[static_cast<std::size_t>((7 * 50 + 9) * 256 + 5)] == doctest::Approx(mean / 16).epsilon(1e-5));
  }
  SUBCASE("row/column positional embeddings: 1-D bilinear resize 200 -> 50") {
    for (const char* axis : {"row_embed", "col_embed"}) {
      const std::string name = std::string("pts_bbox_head.positional_encoding.") + axis + ".weight";
      const std::vector<float> t = floats(teacher.at(name));
      std::vector<float> reference(50 * 128);
      bevkd::host_exec exec;
      bevkd::bev_resample().forward(exec, bevkd::grid_nhwc<const float>(t.data(), 1, 200, 1, 128),
                                    bevkd::grid_nhwc(reference.data(), 1, 50, 1, 128));
      CHECK(floats(result.tensors.at(name)) == reference);
    }
  }
  SUBCASE("spatial cross-attention keeps base level 2 (C5); level_embeds row 0 <- base row 2") {
    const std::string p = "attentions.1.deformable_attention.sampling_offsets.weight";
    const std::vector<float> t = floats(teacher.at(enc + "5." + p)), s = floats(result.tensors.at(enc + "2." + p));
    for (index_t h = 0; h < 8; ++h)
      for (index_t r = 0; r < 16; ++r)
        CHECK(s[static_cast<std::size_t>((h * 16 + r) * 256 + 3)] == t[static_cast<std::size_t>((h * 64 + 2 * 16 + r) * 256 + 3)]);
    const std::vector<float> tl = floats(teacher.at("pts_bbox_head.transformer.level_embeds"));
    const std::vector<float> sl = floats(result.tensors.at("pts_bbox_head.transformer.level_embeds"));
    const std::vector<float> init = floats(student.at("pts_bbox_head.transformer.level_embeds"));
    CHECK(sl[10] == tl[2 * 256 + 10]);
    CHECK(sl[256 + 10] == init[256 + 10]);
  }
  SUBCASE("unused teacher tensors: skipped encoder layers, neck levels, backbone blocks, DCN offsets") {
    const auto& unused = report.unused_teacher;
    auto has = [&](const std::string& n) { return std::find(unused.begin(), unused.end(), n) != unused.end(); };
    CHECK(has(enc + "1.ffns.0.layers.1.weight"));
    CHECK_FALSE(has(enc + "3.ffns.0.layers.1.weight"));
    CHECK(has("img_neck.fpn_convs.3.conv.weight"));
    CHECK(has("img_backbone.layer3.1.conv1.weight"));
    CHECK(has("img_backbone.layer4.0.conv2.conv_offset.weight"));
  }
}
