// bevkd example trainer: the seam every bevkd call goes through, on the host backend or on the CUDA backend.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <bevkd/bevkd.hpp>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

namespace trainer {

/// @brief Where the trainer's bevkd calls run (`--device cpu|cuda`).
enum class device { cpu, cuda };

/// @brief Runs the trainer's bevkd calls (the three losses and the resample) on host tensors, on some bevkd backend.
///
/// The models' forward and backward passes are host loops, so every call takes host views and leaves its results
/// (gradient, resampled grid, loss value) in host memory; how the call runs (options, weights, accumulate) comes
/// with the functor, so the call sites read the same for every backend. One instance serves a whole experiment:
/// what a backend keeps between calls (host scratch; a stream and device buffers) is set up once.
class loss_backend {
 public:
  loss_backend() = default;
  loss_backend(const loss_backend&) = delete;
  loss_backend& operator=(const loss_backend&) = delete;
  virtual ~loss_backend() = default;

  /// @brief What runs the calls, in words (for the run's header).
  virtual std::string description() const = 0;

  /// @brief `loss(exec, student, teacher, grad)`: returns the loss, writes (or adds to) the student's gradient.
  virtual bevkd::loss_result response_kl(const bevkd::response_kl& loss, bevkd::bev_view<const float> student,
                                         bevkd::bev_view<const float> teacher, bevkd::bev_view<float> grad) = 0;

  /// @brief `loss(exec, student, teacher, grad)`: returns the loss, writes (or adds to) the student's gradient.
  virtual bevkd::loss_result feature_mse(const bevkd::feature_mse& loss, bevkd::bev_view<const float> student,
                                         bevkd::bev_view<const float> teacher, bevkd::bev_view<float> grad) = 0;

  /// @brief `loss(exec, student, teacher, grad, {source_mask})`: returns the loss, writes the student's gradient.
  /// @param source_mask [N, S], nonzero where a query's pillar sees the source; an empty view masks nothing.
  virtual bevkd::loss_result attention_distill(const bevkd::attention_distill& loss,
                                               bevkd::attention_view<const float> student,
                                               bevkd::attention_view<const float> teacher,
                                               bevkd::attention_view<float> grad,
                                               bevkd::strided_view<const std::uint8_t, 2> source_mask) = 0;

  /// @brief `op.forward(exec, in, out)`: resamples `in` into `out`.
  virtual void resample(const bevkd::bev_resample& op, bevkd::grid_view<const float> in,
                        bevkd::grid_view<float> out) = 0;
};

/// @brief The host backend for this trainer's calls: bevkd::host_exec on one thread.
///
/// A batch here is 512 rows (two of bevkd's 256-row chunks), so an OpenMP region costs more than it saves; on a
/// shared two-core machine each fork/join waited milliseconds for the second core. Results do not depend on the
/// thread count (bevkd sums chunks in a fixed order), so this changes speed only.
inline bevkd::host_exec small_tensor_exec() { return bevkd::host_exec(1); }

/// @brief The trainer's calls on the host: each is the bevkd call itself, on one host_exec that keeps its scratch.
class host_loss_backend final : public loss_backend {
 public:
  std::string description() const override { return "bevkd::host_exec, 1 thread"; }

  bevkd::loss_result response_kl(const bevkd::response_kl& loss, bevkd::bev_view<const float> student,
                                 bevkd::bev_view<const float> teacher, bevkd::bev_view<float> grad) override {
    return loss(exec_, student, teacher, grad);
  }
  bevkd::loss_result feature_mse(const bevkd::feature_mse& loss, bevkd::bev_view<const float> student,
                                 bevkd::bev_view<const float> teacher, bevkd::bev_view<float> grad) override {
    return loss(exec_, student, teacher, grad);
  }
  bevkd::loss_result attention_distill(const bevkd::attention_distill& loss, bevkd::attention_view<const float> student,
                                       bevkd::attention_view<const float> teacher, bevkd::attention_view<float> grad,
                                       bevkd::strided_view<const std::uint8_t, 2> source_mask) override {
    bevkd::attention_io<bevkd::accum_t<float>> io;
    io.source_mask = source_mask;
    return loss(exec_, student, teacher, grad, io);
  }
  void resample(const bevkd::bev_resample& op, bevkd::grid_view<const float> in, bevkd::grid_view<float> out) override {
    op.forward(exec_, in, out);
  }

 private:
  bevkd::host_exec exec_ = small_tensor_exec();
};

#ifdef BEVKD_TRAINER_HAS_CUDA
/// @brief The trainer's calls on bevkd::cuda_exec (trainer/cuda_loss_backend.cu): host tensors are staged through
/// device buffers that only grow, the call runs on one stream, and the results are copied back.
/// @throw std::runtime_error naming the reason when no CUDA device can be used.
std::unique_ptr<loss_backend> make_cuda_loss_backend();
#endif

/// @brief The backend for a device.
/// @throw std::runtime_error when `d` is device::cuda and this build has no CUDA, or no CUDA device can be used.
inline std::unique_ptr<loss_backend> make_loss_backend(device d) {
  if (d == device::cpu) return std::make_unique<host_loss_backend>();
#ifdef BEVKD_TRAINER_HAS_CUDA
  return make_cuda_loss_backend();
#else
  throw std::runtime_error(
      "the CUDA backend is not available: this trainer was built without CUDA (configure with a CUDA compiler, "
      "e.g. -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc, and BEVKD_ENABLE_CUDA=ON)");
#endif
}

}  // namespace trainer
