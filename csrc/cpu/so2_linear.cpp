// CPU backend of so2_linear.
//
// The SO(2) linear map on [E, (lmax+1)^2, C] edge-frame features runs through
// the same tiled driver as so2_message with D = identity and no gather /
// scatter: per tile the |m| <= mmax rows are packed m-major (times the
// modulation), each order m is four MKL GEMMs reading the packed W1 / W2 blocks in place
// (no re-packed combined weight), and the result is unpacked into the output
// rows (|m| > mmax rows stay 0).  The tile kernels live in so2_tiles.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "so2ops/so2_message_driver.h"
#include "so2ops/so2_message_kernels.h"

namespace so2ops {
namespace {

at::Tensor so2_linear_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& modulation, int64_t lmax, int64_t mmax,
                                  int64_t out_channels) {
  driver::check_tile_backend(x, "so2_linear_forward", false);
  return driver::linear_forward<CpuKernels>(x, weight, modulation, lmax, mmax, out_channels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> so2_linear_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& modulation,
    int64_t lmax, int64_t mmax, int64_t out_channels, bool need_x, bool need_weight, bool need_mod) {
  driver::check_tile_backend(x, "so2_linear_backward", false);
  return driver::linear_backward<CpuKernels>(grad, x, weight, modulation, lmax, mmax, out_channels, need_x,
                                             need_weight, need_mod);
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CPU, m) {
  m.impl("so2_linear_forward", &so2ops::so2_linear_forward_cpu);
  m.impl("so2_linear_backward", &so2ops::so2_linear_backward_cpu);
}
