// bevkd tests: a minimal RAII device buffer that copies host vectors to the GPU and back.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <bevkd/core/cuda_backend.cuh>

#include <cstddef>
#include <vector>

namespace bevkd_test {

/// @brief Device copy of a host vector; `to_host()` copies it back.
template <class T>
class device_buffer {
 public:
  explicit device_buffer(const std::vector<T>& host) : size_(host.size()) {
    if (size_ == 0) return;
    BEVKD_CUDA_CHECK(cudaMalloc(&data_, size_ * sizeof(T)));
    BEVKD_CUDA_CHECK(cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { cudaFree(data_); }

  T* data() const { return data_; }
  std::vector<T> to_host() const {
    std::vector<T> host(size_);
    if (size_) BEVKD_CUDA_CHECK(cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* data_ = nullptr;
  std::size_t size_;
};

}  // namespace bevkd_test
