// bevkd example trainer: the loss backend on bevkd::cuda_exec (host tensors staged through reusable device buffers).
// SPDX-License-Identifier: Apache-2.0
#include <bevkd/bevkd.cuh>

#include <cuda_runtime.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "loss_backend.hpp"

namespace trainer {
namespace {

/// @brief Throws, naming the reason, unless the CUDA runtime sees at least one device.
void require_cuda_device() {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("no usable CUDA device: cudaGetDeviceCount failed: ") +
                             cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
  if (devices == 0) throw std::runtime_error("no usable CUDA device: cudaGetDeviceCount found 0 devices");
}

/// @brief A CUDA stream owned for the backend's lifetime.
class owned_stream {
 public:
  owned_stream() { BEVKD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  owned_stream(const owned_stream&) = delete;
  owned_stream& operator=(const owned_stream&) = delete;
  ~owned_stream() { cudaStreamDestroy(stream_); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

/// @brief Elements from a view's first element to one past the last it reaches (0 when empty).
template <class T, int Rank>
bevkd::index_t span_of(const bevkd::strided_view<T, Rank>& v) {
  if (v.size() == 0) return 0;
  bevkd::index_t last = 0;
  for (int d = 0; d < Rank; ++d) last += (v.extent[d] - 1) * v.stride[d];
  return last + 1;
}

class cuda_loss_backend final : public loss_backend {
 public:
  cuda_loss_backend() : exec_(stream_.get()) {}

  std::string description() const override {
    int id = 0;
    cudaDeviceProp prop{};
    BEVKD_CUDA_CHECK(cudaGetDevice(&id));
    BEVKD_CUDA_CHECK(cudaGetDeviceProperties(&prop, id));
    return "bevkd::cuda_exec on " + std::string(prop.name) + " (device " + std::to_string(id) + ")";
  }

  bevkd::loss_result response_kl(const bevkd::response_kl& loss, bevkd::bev_view<const float> student,
                                 bevkd::bev_view<const float> teacher, bevkd::bev_view<float> grad) override {
    return run_loss(loss, student, teacher, grad);
  }
  bevkd::loss_result feature_mse(const bevkd::feature_mse& loss, bevkd::bev_view<const float> student,
                                 bevkd::bev_view<const float> teacher, bevkd::bev_view<float> grad) override {
    return run_loss(loss, student, teacher, grad);
  }
  bevkd::loss_result attention_distill(const bevkd::attention_distill& loss, bevkd::attention_view<const float> student,
                                       bevkd::attention_view<const float> teacher, bevkd::attention_view<float> grad,
                                       bevkd::strided_view<const std::uint8_t, 2> source_mask) override {
    bevkd::attention_io<bevkd::accum_t<float>> io;
    io.source_mask = stage(mask_buffer, source_mask);
    return run_loss(loss, student, teacher, grad, io);
  }
  void resample(const bevkd::bev_resample& op, bevkd::grid_view<const float> in, bevkd::grid_view<float> out) override {
    const bevkd::grid_view<float> device_out = stage(output_buffer, out);
    op.forward(exec_, stage(input_buffer, in), device_out);
    fetch(device_out, out);
    BEVKD_CUDA_CHECK(cudaStreamSynchronize(exec_.stream()));
  }

 private:
  enum buffer { input_buffer, teacher_buffer, output_buffer, mask_buffer, buffer_count };

  // Stages the student, the teacher and the gradient, runs the loss on the stream, and copies the gradient back;
  // get() waits for the stream, so the gradient has arrived when the loss value has.
  template <class Loss, class View, class... Io>
  bevkd::loss_result run_loss(const Loss& loss, bevkd::strided_view<const float, View::rank> student,
                              bevkd::strided_view<const float, View::rank> teacher, View grad, const Io&... io) {
    const View device_grad = stage(output_buffer, grad);
    const bevkd::device_loss_result result =
        loss(exec_, stage(input_buffer, student), stage(teacher_buffer, teacher), device_grad, io...);
    fetch(device_grad, grad);
    return result.get();
  }

  // A device copy of the memory a host view spans, viewed with the same extents and strides. Outputs are copied
  // up too: with `accumulate` the call adds to them, and the gaps of a strided view must come back unchanged.
  // The buffers only grow, so once the largest tensor has been seen a step allocates nothing.
  template <class T, int Rank>
  bevkd::strided_view<T, Rank> stage(buffer b, bevkd::strided_view<T, Rank> host) {
    const bevkd::index_t span = span_of(host);
    if (span == 0) return bevkd::strided_view<T, Rank>{};
    const std::size_t bytes = static_cast<std::size_t>(span) * sizeof(T);
    void* device = buffers_[b].reserve(bytes);
    BEVKD_CUDA_CHECK(cudaMemcpyAsync(device, host.data, bytes, cudaMemcpyHostToDevice, exec_.stream()));
    bevkd::strided_view<T, Rank> out = host;
    out.data = static_cast<T*>(device);
    out.capacity = span;
    return out;
  }

  // Queues the copy of a staged output back into its host view.
  template <class T, int Rank>
  void fetch(const bevkd::strided_view<T, Rank>& device, const bevkd::strided_view<T, Rank>& host) {
    const bevkd::index_t span = span_of(host);
    if (span > 0)
      BEVKD_CUDA_CHECK(cudaMemcpyAsync(host.data, device.data, static_cast<std::size_t>(span) * sizeof(T),
                                       cudaMemcpyDeviceToHost, exec_.stream()));
  }

  owned_stream stream_;  // declared first: created before, and destroyed after, everything that uses it
  bevkd::cuda_exec exec_;
  bevkd::cuda_workspace buffers_[buffer_count];
};

}  // namespace

std::unique_ptr<loss_backend> make_cuda_loss_backend() {
  require_cuda_device();
  return std::make_unique<cuda_loss_backend>();
}

}  // namespace trainer
