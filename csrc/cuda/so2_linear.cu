// CUDA backend of so2_linear.
//
// The same tiled driver as so2_message with D = identity and no gather /
// scatter: per tile the |m| <= mmax rows are packed m-major (times the
// modulation), each order m is one cuBLAS GEMM with the combined weight
// [[W1^T, W2^T], [-W2^T, W1^T]], and the result is unpacked into the output
// rows (|m| > mmax rows stay 0).  The tile kernels live in so2_tiles.cuh (compiled in so2_message.cu);
// half / bfloat16 inputs are computed in float.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "so2ops/so2_message_driver.h"
#include "so2ops/so2_message_kernels.h"

namespace so2ops {
namespace {

at::Tensor so2_linear_forward_cuda(const at::Tensor& x, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& modulation, int64_t lmax, int64_t mmax,
                                   int64_t out_channels) {
  driver::check_tile_backend(x, "so2_linear_forward", true);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  return driver::linear_forward<CudaKernels>(x, weight, modulation, lmax, mmax, out_channels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> so2_linear_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& modulation,
    int64_t lmax, int64_t mmax, int64_t out_channels, bool need_x, bool need_weight, bool need_mod) {
  driver::check_tile_backend(x, "so2_linear_backward", true);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  return driver::linear_backward<CudaKernels>(grad, x, weight, modulation, lmax, mmax, out_channels, need_x,
                                              need_weight, need_mod);
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CUDA, m) {
  m.impl("so2_linear_forward", &so2ops::so2_linear_forward_cuda);
  m.impl("so2_linear_backward", &so2ops::so2_linear_backward_cuda);
}
