// bevkd-inherit: remaps a teacher safetensors checkpoint onto a student template by a rules file (weight inheritance).
// SPDX-License-Identifier: Apache-2.0
#include <bevkd/inherit/inherit.hpp>

#include <cstdio>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {

/// @brief The tool's exit codes (documented in README "Weight inheritance").
enum exit_code : int {
  exit_ok = 0,            ///< Output written.
  exit_usage = 1,         ///< Bad command line.
  exit_input = 2,         ///< A teacher, student or rules file is unreadable or malformed.
  exit_remap = 3,         ///< A tensor failed, or strict mode and a tensor was kept: no output written.
  exit_output = 4,        ///< The output (or report) could not be written.
  exit_internal = 5       ///< Anything else (a bug: please report it).
};

const char* const usage =
    "usage: bevkd-inherit TEACHER.safetensors STUDENT_TEMPLATE.safetensors RULES.json OUTPUT.safetensors\n"
    "                     [--strict] [--report REPORT.json] [--quiet]\n"
    "Initialises a student from a teacher checkpoint by the rules; writes OUTPUT atomically.\n"
    "exit codes: 0 ok, 1 usage, 2 input/format error, 3 remap failed (error, or kept under --strict),\n"
    "            4 output not written, 5 internal error\n";

struct arguments {
  std::vector<std::string> files;  // teacher, student, rules, output
  std::string report;
  bool strict = false;
  bool quiet = false;
};

bool parse_arguments(int argc, char** argv, arguments& out) {
  for (int k = 1; k < argc; ++k) {
    const std::string arg = argv[k];
    if (arg == "--strict") out.strict = true;
    else if (arg == "--quiet") out.quiet = true;
    else if (arg == "--report" && k + 1 < argc) out.report = argv[++k];
    else if (arg.rfind("--", 0) == 0) return false;
    else out.files.push_back(arg);
  }
  return out.files.size() == 4;
}

// Prints about 20 progress lines per phase, so big checkpoints show life without flooding the terminal.
class progress_printer {
 public:
  progress_printer(const char* phase, bool quiet) : phase_(phase), quiet_(quiet) {}
  void operator()(std::size_t done, std::size_t total, std::uint64_t bytes) {
    if (quiet_ || total == 0) return;
    const std::size_t step = done * 20 / total;
    if (step == last_ && done != total) return;
    last_ = step;
    std::fprintf(stderr, "bevkd-inherit: %s %zu/%zu tensors, %.1f MB\n", phase_, done, total, bytes / 1e6);
  }

 private:
  const char* phase_;
  bool quiet_;
  std::size_t last_ = static_cast<std::size_t>(-1);
};

void write_report(const std::string& path, const bevkd::remap_report& report) {
  std::ofstream out(path);
  out << report.to_json().dump(2) << '\n';
  if (!out) throw bevkd::format_error(path, "cannot write the report");
}

int run(const arguments& args) {
  std::unique_ptr<bevkd::safetensors_file> teacher, student;
  bevkd::rule_set rules;
  try {
    teacher = std::make_unique<bevkd::safetensors_file>(args.files[0]);
    student = std::make_unique<bevkd::safetensors_file>(args.files[1]);
    rules = bevkd::load_rules(args.files[2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bevkd-inherit: %s\n", e.what());
    return exit_input;
  }
  bevkd::remap_options options;
  options.strict = args.strict;
  progress_printer remap_progress("remapped", args.quiet);
  std::uint64_t bytes = 0;
  const bevkd::tensor_catalog& student_tensors = student->tensors();
  options.progress = [&](std::size_t i, std::size_t n, const std::string& name) {
    remap_progress(i + 1, n, bytes += student_tensors.at(name).bytes());
  };
  const bevkd::remap_result result = bevkd::remap_weights(teacher->tensors(), student_tensors, rules, options);
  const bevkd::remap_report& report = result.report;
  try {
    if (!args.report.empty()) write_report(args.report, report);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bevkd-inherit: %s\n", e.what());
    return exit_output;
  }
  for (const bevkd::tensor_report& line : report.tensors)
    if (line.status == bevkd::tensor_status::error || (report.strict && line.status == bevkd::tensor_status::kept))
      std::fprintf(stderr, "bevkd-inherit: %s: %s: %s\n", line.student.c_str(), bevkd::status_name(line.status),
                   line.message.c_str());
  if (!args.quiet) std::fprintf(stderr, "bevkd-inherit: %s\n", report.summary().c_str());
  if (!report.ok()) {
    std::fprintf(stderr, "bevkd-inherit: %s; no output written\n",
                 report.count(bevkd::tensor_status::error) ? "remap failed" : "strict mode: tensors were kept");
    return exit_remap;
  }
  try {
    progress_printer write_progress("wrote", args.quiet);
    bevkd::write_safetensors(args.files[3], result.tensors, student->metadata(),
                             [&](std::size_t done, std::size_t total, std::uint64_t b, std::uint64_t) {
                               write_progress(done, total, b);
                             });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bevkd-inherit: %s\n", e.what());
    return exit_output;
  }
  return exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
  arguments args;
  if (!parse_arguments(argc, argv, args)) {
    std::fputs(usage, stderr);
    return exit_usage;
  }
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bevkd-inherit: internal error: %s\n", e.what());
    return exit_internal;
  }
}
