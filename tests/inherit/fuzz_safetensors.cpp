// bevkd fuzz harness: the safetensors reader on arbitrary bytes must return or throw bevkd::format_error, never crash.
// SPDX-License-Identifier: Apache-2.0
#include <bevkd/inherit/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const bevkd::safetensors_content content = bevkd::parse_safetensors(data, size, "fuzz");
    // Touch every accepted tensor's bytes: ASan catches a range the checks let past the buffer.
    volatile unsigned char sink = 0;
    for (const auto& entry : content.tensors)
      for (std::size_t k = 0; k < entry.second.bytes(); k += 61) sink = static_cast<unsigned char>(sink ^ entry.second.data[k]);
    (void)sink;
  } catch (const bevkd::format_error&) {
  }
  return 0;
}
