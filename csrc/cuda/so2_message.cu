// CUDA backend of so2_message: the entry points of the tiled driver
// (so2_message_driver.h) on the CUDA tile kernels of so2_tiles.cuh (shared with
// so2_linear, compiled in this translation unit).
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "so2ops/so2_message_driver.h"
#include "so2ops/so2_message_kernels.h"
#include "so2_tiles.cuh"

namespace so2ops {

// ------------------------------------------------------------ entry points

namespace {

at::Tensor so2_message_forward_cuda(const at::Tensor& x, const at::Tensor& wigner, const at::Tensor& edge_index,
                                    const at::Tensor& weight, const c10::optional<at::Tensor>& modulation,
                                    int64_t lmax, int64_t mmax, int64_t out_channels, bool deterministic) {
  driver::check_tile_backend(x, "so2_message_forward", true);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  return driver::message_forward<CudaKernels>(x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels,
                                              driver::want_deterministic(deterministic));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> so2_message_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& wigner, const at::Tensor& edge_index,
    const at::Tensor& weight, const c10::optional<at::Tensor>& modulation, int64_t lmax, int64_t mmax,
    int64_t out_channels, bool deterministic, bool need_x, bool need_wigner, bool need_weight, bool need_mod) {
  driver::check_tile_backend(x, "so2_message_backward", true);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  return driver::message_backward<CudaKernels>(grad, x, wigner, edge_index, weight, modulation, lmax, mmax,
                                               out_channels, driver::want_deterministic(deterministic), need_x,
                                               need_wigner, need_weight, need_mod);
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CUDA, m) {
  m.impl("so2_message_forward", &so2ops::so2_message_forward_cuda);
  m.impl("so2_message_backward", &so2ops::so2_message_backward_cuda);
}
