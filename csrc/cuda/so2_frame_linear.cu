// CUDA backend of so2_frame_linear (see csrc/cpu/so2_frame_linear.cpp): the
// tiled driver's frame_forward / frame_backward on the CUDA tile kernels of
// so2_tiles.cuh (compiled in so2_message.cu).  Index ranges are checked in
// Python (value checks, so2ops.validation), not here: no host sync.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "so2ops/so2_message_driver.h"
#include "so2ops/so2_message_kernels.h"

namespace so2ops {
namespace {

at::Tensor so2_frame_linear_forward_cuda(const at::Tensor& x, const at::Tensor& wigner, const at::Tensor& index,
                                         const at::Tensor& weight, const c10::optional<at::Tensor>& modulation,
                                         const c10::optional<at::Tensor>& bias,
                                         const c10::optional<at::Tensor>& scale, int64_t lmax, int64_t mmax,
                                         int64_t out_channels, int64_t num_nodes, bool to_nodes, bool deterministic) {
  driver::check_tile_backend(x, "so2_frame_linear_forward", true);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const bool det = driver::want_deterministic(deterministic);
  return driver::frame_forward<CudaKernels>(x, wigner, index, weight, modulation, bias, scale, lmax, mmax,
                                            out_channels, num_nodes, to_nodes, det);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> so2_frame_linear_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& wigner, const at::Tensor& index,
    const at::Tensor& weight, const c10::optional<at::Tensor>& modulation, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& scale, int64_t lmax, int64_t mmax, int64_t out_channels, int64_t num_nodes,
    bool to_nodes, bool deterministic, bool need_x, bool need_wigner, bool need_weight, bool need_mod,
    bool need_bias, bool need_scale) {
  driver::check_tile_backend(x, "so2_frame_linear_backward", true);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const bool det = driver::want_deterministic(deterministic);
  return driver::frame_backward<CudaKernels>(grad, x, wigner, index, weight, modulation, bias, scale, lmax, mmax,
                                             out_channels, num_nodes, to_nodes, det, need_x, need_wigner, need_weight,
                                             need_mod, need_bias, need_scale);
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CUDA, m) {
  m.impl("so2_frame_linear_forward", &so2ops::so2_frame_linear_forward_cuda);
  m.impl("so2_frame_linear_backward", &so2ops::so2_frame_linear_backward_cuda);
}
