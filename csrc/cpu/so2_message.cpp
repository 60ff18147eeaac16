// CPU backend of so2_message: input checks and the entry points of the tiled
// driver (so2_message_driver.h).  The tile kernels it runs (shared with
// so2_linear) are CpuKernels in so2_tiles.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>

#include "so2ops/op_checks.h"
#include "so2ops/so2_message_driver.h"
#include "so2ops/so2_message_kernels.h"

namespace so2ops {
namespace {

/// Every source and target index in [0, n): guards the raw indexing of the kernels.
void check_edge_range(const at::Tensor& ei, int64_t n) {
  const int64_t bad = first_outside(ei, n);
  TORCH_CHECK(bad < 0, "so2_message: edge_index[", bad / std::max<int64_t>(1, ei.size(1)), ", ",
              bad % std::max<int64_t>(1, ei.size(1)), "] = ", bad < 0 ? 0 : ei.const_data_ptr<int64_t>()[bad],
              " is outside [0, ", n, ")");
}

}  // namespace

// ------------------------------------------------------------ entry points

namespace {

at::Tensor so2_message_forward_cpu(const at::Tensor& x, const at::Tensor& wigner, const at::Tensor& edge_index,
                                   const at::Tensor& weight, const c10::optional<at::Tensor>& modulation,
                                   int64_t lmax, int64_t mmax, int64_t out_channels, bool deterministic) {
  driver::check_tile_backend(x, "so2_message_forward", false);
  driver::check_message_inputs(x, wigner, edge_index, lmax);
  check_edge_range(edge_index.contiguous(), x.size(0));
  return driver::message_forward<CpuKernels>(x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels,
                                             deterministic);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> so2_message_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& wigner, const at::Tensor& edge_index,
    const at::Tensor& weight, const c10::optional<at::Tensor>& modulation, int64_t lmax, int64_t mmax,
    int64_t out_channels, bool deterministic, bool need_x, bool need_wigner, bool need_weight, bool need_mod) {
  driver::check_tile_backend(x, "so2_message_backward", false);
  driver::check_message_inputs(x, wigner, edge_index, lmax);
  check_edge_range(edge_index.contiguous(), x.size(0));
  return driver::message_backward<CpuKernels>(grad, x, wigner, edge_index, weight, modulation, lmax, mmax,
                                              out_channels, deterministic, need_x, need_wigner, need_weight, need_mod);
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CPU, m) {
  m.impl("so2_message_forward", &so2ops::so2_message_forward_cpu);
  m.impl("so2_message_backward", &so2ops::so2_message_backward_cpu);
}
