// so2_grid_product (the fused grid stage of so2_tensor_product) on CPU:
// at::parallel_for, float and double.
//
// A task is one node and a group of up to 16 adjacent hidden channels
// (so2ops/so2_grid_product.h with W = 16, the tail in 4s and 1s): the channel
// loops are innermost and contiguous, so they vectorise, and the [grid, H]
// values of a node are recomputed on the fly, never stored.  Each task owns
// its output entries, so there is no reduction across tasks: the results do
// not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "so2ops/op_checks.h"
#include "so2ops/so2_grid_product.h"

namespace so2ops {
namespace {

constexpr int64_t kGroup = 16;  // channels per task

void check_cpu(const at::Tensor& spectral, const char* op) {
  TORCH_CHECK(spectral.device().is_cpu(), op, ": expected CPU tensors, got one on ", spectral.device());
  TORCH_CHECK(spectral.scalar_type() == at::kFloat || spectral.scalar_type() == at::kDouble, op,
              ": the CPU backend supports float32 and float64, got ", spectral.scalar_type());
}

//: [grid, S] table of the Fourier columns at the grid angles.
template <typename T>
std::vector<T> basis_table(int mmax, int grid) {
  const int S = gp_spectral_size(mmax);
  std::vector<T> b(size_t(grid) * S);
  for (int j = 0; j < grid; ++j)
    for (int s = 0; s < S; ++s) b[size_t(j) * S + s] = gp_basis_value<T>(j, s, mmax, grid);
  return b;
}

//: Tasks (n, channel group) with about 64k multiply-adds each.
int64_t task_grain(int64_t nu, int S, int64_t grid) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, grid * (nu + 1) * S * kGroup));
}

//: Run fn<W>(h0) over the channels [g*16, min(H, g*16+16)) of one group,
//: the full group at W = 16, a tail in 4s and 1s.
template <typename Fn>
inline void for_channel_widths(int64_t g, int64_t H, Fn&& fn) {
  int64_t h = g * kGroup;
  const int64_t end = std::min(H, h + kGroup);
  if (end - h == kGroup) {
    fn(std::integral_constant<int, kGroup>(), h);
    return;
  }
  for (; h + 4 <= end; h += 4) fn(std::integral_constant<int, 4>(), h);
  for (; h < end; ++h) fn(std::integral_constant<int, 1>(), h);
}

template <typename T>
void forward_kernel(const T* spec, const T* coef, int64_t N, int64_t nu, int64_t H, int mmax, int grid, T* out) {
  const int S = gp_spectral_size(mmax);
  const std::vector<T> basis = basis_table<T>(mmax, grid);
  const int64_t groups = (H + kGroup - 1) / kGroup;
  at::parallel_for(0, N * groups, task_grain(nu, S, grid), [&](int64_t begin, int64_t end) {
    T acc[kGpMaxSpectral * kGroup];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / groups, g = t - n * groups;
      for_channel_widths(g, H, [&](auto width, int64_t h0) {
        constexpr int W = decltype(width)::value;
        gp_forward<W, T, T>(spec + n * nu * S * H + h0, S * H, H, coef + n * nu * H + h0, H, int(nu), mmax, grid,
                            basis.data(), acc, W);
        T* o = out + n * S * H + h0;
        for (int s = 0; s < S; ++s)
          for (int w = 0; w < W; ++w) o[s * H + w] = acc[s * W + w];
      });
    }
  });
}

template <typename T>
void backward_kernel(const T* grad, const T* spec, const T* coef, int64_t N, int64_t nu, int64_t H, int mmax, int grid,
                     T* gspec, T* gcoef) {
  const int S = gp_spectral_size(mmax);
  const std::vector<T> basis = basis_table<T>(mmax, grid);
  const int64_t groups = (H + kGroup - 1) / kGroup;
  at::parallel_for(0, N * groups, task_grain(2 * nu, S, grid), [&](int64_t begin, int64_t end) {
    T gs_acc[kGpMaxBodyOrder * kGpMaxSpectral * kGroup];
    T gc_acc[kGpMaxBodyOrder * kGroup];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / groups, g = t - n * groups;
      for_channel_widths(g, H, [&](auto width, int64_t h0) {
        constexpr int W = decltype(width)::value;
        gp_backward<W, T, T>(grad + n * S * H + h0, H, spec + n * nu * S * H + h0, S * H, H, coef + n * nu * H + h0,
                             H, int(nu), mmax, grid, basis.data(), gspec ? gs_acc : nullptr, S * W, W,
                             gcoef ? gc_acc : nullptr, W);
        if (gspec) {
          T* o = gspec + n * nu * S * H + h0;
          for (int64_t k = 0; k < nu; ++k)
            for (int s = 0; s < S; ++s)
              for (int w = 0; w < W; ++w) o[(k * S + s) * H + w] = gs_acc[(k * S + s) * W + w];
        }
        if (gcoef) {
          T* o = gcoef + n * nu * H + h0;
          for (int64_t k = 0; k < nu; ++k)
            for (int w = 0; w < W; ++w) o[k * H + w] = gc_acc[k * W + w];
        }
      });
    }
  });
}

at::Tensor so2_grid_product_forward_cpu(const at::Tensor& spectral, const at::Tensor& coeffs, int64_t mmax,
                                        int64_t grid) {
  check_grid_product_args(spectral, coeffs, mmax, grid, "so2_grid_product_forward");
  check_cpu(spectral, "so2_grid_product_forward");
  const int64_t N = spectral.size(0), nu = spectral.size(1), S = spectral.size(2), H = spectral.size(3);
  auto out = at::empty({N, S, H}, spectral.options());
  if (out.numel() == 0) return out;
  const auto sc = spectral.contiguous(), cc = coeffs.contiguous();
  AT_DISPATCH_FLOATING_TYPES(spectral.scalar_type(), "so2_grid_product_forward_cpu", [&] {
    forward_kernel<scalar_t>(sc.const_data_ptr<scalar_t>(), cc.const_data_ptr<scalar_t>(), N, nu, H,
                             static_cast<int>(mmax), static_cast<int>(grid), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> so2_grid_product_backward_cpu(const at::Tensor& grad, const at::Tensor& spectral,
                                                                 const at::Tensor& coeffs, int64_t mmax, int64_t grid,
                                                                 bool need_spectral, bool need_coeffs) {
  check_grid_product_args(spectral, coeffs, mmax, grid, "so2_grid_product_backward");
  check_grid_product_grad(grad, spectral);
  check_cpu(spectral, "so2_grid_product_backward");
  const int64_t N = spectral.size(0), nu = spectral.size(1), H = spectral.size(3);
  at::Tensor gs = need_spectral ? at::empty(spectral.sizes(), spectral.options()) : at::empty({0}, grad.options());
  at::Tensor gc = need_coeffs ? at::empty(coeffs.sizes(), coeffs.options()) : at::empty({0}, grad.options());
  if (N * H == 0 || !(need_spectral || need_coeffs)) return {gs, gc};
  const auto gr = grad.contiguous(), sc = spectral.contiguous(), cc = coeffs.contiguous();
  AT_DISPATCH_FLOATING_TYPES(spectral.scalar_type(), "so2_grid_product_backward_cpu", [&] {
    backward_kernel<scalar_t>(gr.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(),
                              cc.const_data_ptr<scalar_t>(), N, nu, H, static_cast<int>(mmax),
                              static_cast<int>(grid), need_spectral ? gs.mutable_data_ptr<scalar_t>() : nullptr,
                              need_coeffs ? gc.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {gs, gc};
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CPU, m) {
  m.impl("so2_grid_product_forward", &so2ops::so2_grid_product_forward_cpu);
  m.impl("so2_grid_product_backward", &so2ops::so2_grid_product_backward_cpu);
}
