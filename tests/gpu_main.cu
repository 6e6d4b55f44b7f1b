// doctest's main for GPU test binaries: exits with CTest's skip code 77 where no CUDA device exists.
// SPDX-License-Identifier: Apache-2.0
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cstdio>

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  // --help, --list-test-cases and friends need no device.
  if (context.shouldExit()) return context.run();
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    std::printf("no CUDA device (%s): skipping\n", status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
    return 77;  // CTest's SKIP_RETURN_CODE, set by bevkd_add_test(... GPU)
  }
  return context.run();
}
