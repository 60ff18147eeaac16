// CPU backend of so2_frame_linear: one side of so2_message, fused with its SO(2) layer.
//
//   gather  (to_nodes = false): out[e]        = s_e (SO2Lin(mod_e (.) D_e x[index[e]]) + bias)
//   scatter (to_nodes = true):  out[index[e]] += s_e D_e^T (SO2Lin(mod_e (.) x[e]) + bias)
//
// Both run through the tiled driver of so2_message (so2_message_driver.h,
// frame_forward / frame_backward) with the other side's frame the identity, on
// the CPU tile kernels of so2_tiles.cpp: no [E, (lmax+1)^2, C] tensor is built
// besides the per-edge input or output itself.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "so2ops/op_checks.h"
#include "so2ops/so2_message_driver.h"
#include "so2ops/so2_message_kernels.h"

namespace so2ops {
namespace {

/// Every index in [0, n): guards the raw indexing of the kernels.
void check_index_range(const at::Tensor& index_in, int64_t n, const char* op) {
  TORCH_CHECK(index_in.scalar_type() == at::kLong && index_in.dim() == 1, op, ": index must be int64 [E]");
  const at::Tensor index = index_in.contiguous();
  const int64_t bad = first_outside(index, n);
  TORCH_CHECK(bad < 0, op, ": index[", bad, "] = ", bad < 0 ? 0 : index.const_data_ptr<int64_t>()[bad],
              " is outside [0, ", n, ")");
}

at::Tensor so2_frame_linear_forward_cpu(const at::Tensor& x, const at::Tensor& wigner, const at::Tensor& index,
                                        const at::Tensor& weight, const c10::optional<at::Tensor>& modulation,
                                        const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                                        int64_t lmax, int64_t mmax, int64_t out_channels, int64_t num_nodes,
                                        bool to_nodes, bool deterministic) {
  driver::check_tile_backend(x, "so2_frame_linear_forward", false);
  check_index_range(index, to_nodes ? num_nodes : x.size(0), "so2_frame_linear_forward");
  return driver::frame_forward<CpuKernels>(x, wigner, index, weight, modulation, bias, scale, lmax, mmax,
                                           out_channels, num_nodes, to_nodes, deterministic);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> so2_frame_linear_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& wigner, const at::Tensor& index,
    const at::Tensor& weight, const c10::optional<at::Tensor>& modulation, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& scale, int64_t lmax, int64_t mmax, int64_t out_channels, int64_t num_nodes,
    bool to_nodes, bool deterministic, bool need_x, bool need_wigner, bool need_weight, bool need_mod,
    bool need_bias, bool need_scale) {
  driver::check_tile_backend(x, "so2_frame_linear_backward", false);
  check_index_range(index, to_nodes ? num_nodes : x.size(0), "so2_frame_linear_backward");
  return driver::frame_backward<CpuKernels>(grad, x, wigner, index, weight, modulation, bias, scale, lmax, mmax,
                                            out_channels, num_nodes, to_nodes, deterministic, need_x, need_wigner,
                                            need_weight, need_mod, need_bias, need_scale);
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CPU, m) {
  m.impl("so2_frame_linear_forward", &so2ops::so2_frame_linear_forward_cpu);
  m.impl("so2_frame_linear_backward", &so2ops::so2_frame_linear_backward_cpu);
}
