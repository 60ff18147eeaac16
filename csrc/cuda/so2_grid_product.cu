// so2_grid_product (the fused grid stage of so2_tensor_product) on CUDA:
// float / double, and half / bfloat16 computed in float.
//
// One thread per (node, hidden channel), grid-stride over N*H; consecutive
// threads take consecutive channels of a node, so every spectral / coeffs /
// grad / output access coalesces.  A thread evaluates its nu factors at each
// of the grid angles, forms the products and projects back
// (so2ops/so2_grid_product.h with W = 1); nothing of grid size is stored, and
// the backward recomputes the grid values.  The [grid, S] table of basis
// values is built on the device by a tiny kernel (no host transfer, no sync)
// and is read by all threads of a warp at the same address (a broadcast).
// The per-thread accumulators (S for the forward, nu*(S+1) for the backward)
// sit in shared memory, one column per thread (bank-conflict free), with the
// block size chosen so they fit in 48 KiB.  Each thread owns its outputs: no
// atomics, deterministic.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "so2ops/op_checks.h"
#include "so2ops/so2_grid_product.h"
#include "so2ops/tile_knob.h"

namespace so2ops {
namespace {

constexpr int kMaxThreads = 256;
constexpr size_t kSmemBudget = 48 * 1024;  // without opting in to more
constexpr int64_t kMaxBlocks = 65536;       // grid-stride beyond this
constexpr int kTableThreads = 256;

// The largest per-thread accumulator footprint (double backward, nu = 8,
// S = 17) must fit with at least one warp per block.
static_assert(32 * (kGpMaxBodyOrder * (kGpMaxSpectral + 1)) * sizeof(double) <= kSmemBudget,
              "so2_grid_product: accumulators of one warp exceed the shared-memory budget");

template <typename acc_t>
__global__ void __launch_bounds__(kTableThreads) basis_kernel(int mmax, int grid, acc_t* __restrict__ basis) {
  const int S = gp_spectral_size(mmax);
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= int64_t(grid) * S) return;
  const int j = static_cast<int>(t / S), s = static_cast<int>(t - int64_t(j) * S);
  basis[t] = gp_basis_value<acc_t>(j, s, mmax, grid);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    forward_kernel(const scalar_t* __restrict__ spec, const scalar_t* __restrict__ coef, int64_t N, int nu, int64_t H,
                   int mmax, int grid, const acc_t* __restrict__ basis, scalar_t* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* acc = reinterpret_cast<acc_t*>(smem_raw) + threadIdx.x;  // column: entry s at s * blockDim.x
  const int S = gp_spectral_size(mmax);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < N * H; t += stride) {
    const int64_t n = t / H, h = t - n * H;
    gp_forward<1, acc_t, scalar_t>(spec + n * nu * S * H + h, S * H, H, coef + n * nu * H + h, H, nu, mmax, grid,
                                   basis, acc, blockDim.x);
    scalar_t* o = out + n * S * H + h;
    for (int s = 0; s < S; ++s) o[s * H] = static_cast<scalar_t>(acc[s * blockDim.x]);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ spec,
                    const scalar_t* __restrict__ coef, int64_t N, int nu, int64_t H, int mmax, int grid,
                    const acc_t* __restrict__ basis, scalar_t* __restrict__ gspec, scalar_t* __restrict__ gcoef) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int S = gp_spectral_size(mmax);
  const int T = blockDim.x;
  // columns: gspec entry (k, s) at (k * S + s) * T, gcoef entry k at (nu * S + k) * T
  acc_t* gs_acc = reinterpret_cast<acc_t*>(smem_raw) + threadIdx.x;
  acc_t* gc_acc = gs_acc + nu * S * T;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < N * H; t += stride) {
    const int64_t n = t / H, h = t - n * H;
    gp_backward<1, acc_t, scalar_t>(grad + n * S * H + h, H, spec + n * nu * S * H + h, S * H, H,
                                    coef + n * nu * H + h, H, nu, mmax, grid, basis, gspec ? gs_acc : nullptr,
                                    int64_t(S) * T, T, gcoef ? gc_acc : nullptr, T);
    if (gspec) {
      scalar_t* o = gspec + n * nu * S * H + h;
      for (int k = 0; k < nu; ++k)
        for (int s = 0; s < S; ++s) o[(k * S + s) * H] = static_cast<scalar_t>(gs_acc[(k * S + s) * T]);
    }
    if (gcoef) {
      scalar_t* o = gcoef + n * nu * H + h;
      for (int k = 0; k < nu; ++k) o[k * H] = static_cast<scalar_t>(gc_acc[k * T]);
    }
  }
}

void check_cuda(const at::Tensor& spectral, const char* op) {
  TORCH_CHECK(spectral.is_cuda(), op, " (cuda): expected CUDA tensors, got one on ", spectral.device());
}

//: Threads per block: the most (<= kMaxThreads, a multiple of 32) whose
//: `per_thread` accumulators fit in the shared-memory budget.
int block_threads(size_t per_thread) {
  int threads = kMaxThreads;
  while (threads > 32 && size_t(threads) * per_thread > kSmemBudget) threads /= 2;
  return threads;
}

//: Blocks of a grid-stride launch: one item per thread up to kMaxBlocks; fewer under the tile
//: knob (so2ops/tile_knob.h), so that the tests' small inputs take several grid-stride steps too.
unsigned block_count(int64_t work, int threads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads,
                                                                      tile_cap(kMaxBlocks))));
}

//: The [grid, S] basis table on the device, in the accumulation type.
template <typename acc_t>
at::Tensor basis_table(const at::Tensor& like, int mmax, int grid, cudaStream_t stream) {
  const int S = gp_spectral_size(mmax);
  const int64_t n = int64_t(grid) * S;  // <= 65536 * 17: one launch
  at::Tensor table = at::empty({n}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  basis_kernel<acc_t><<<static_cast<unsigned>((n + kTableThreads - 1) / kTableThreads), kTableThreads, 0, stream>>>(
      mmax, grid, table.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return table;
}

at::Tensor so2_grid_product_forward_cuda(const at::Tensor& spectral, const at::Tensor& coeffs, int64_t mmax,
                                         int64_t grid) {
  check_grid_product_args(spectral, coeffs, mmax, grid, "so2_grid_product_forward");
  check_cuda(spectral, "so2_grid_product_forward");
  const c10::cuda::CUDAGuard guard(spectral.device());
  const int64_t N = spectral.size(0), nu = spectral.size(1), S = spectral.size(2), H = spectral.size(3);
  auto out = at::empty({N, S, H}, spectral.options());
  if (out.numel() == 0) return out;
  const auto sc = spectral.contiguous(), cc = coeffs.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, spectral.scalar_type(), "so2_grid_product_forward_cuda",
                                  [&] {
                                    using acc_t = at::acc_type<scalar_t, true>;
                                    const auto table = basis_table<acc_t>(spectral, int(mmax), int(grid), stream);
                                    const size_t per_thread = size_t(S) * sizeof(acc_t);
                                    const int threads = block_threads(per_thread);
                                    forward_kernel<scalar_t, acc_t>
                                        <<<block_count(N * H, threads), threads, threads * per_thread, stream>>>(
                                            sc.const_data_ptr<scalar_t>(), cc.const_data_ptr<scalar_t>(), N,
                                            int(nu), H, int(mmax), int(grid), table.const_data_ptr<acc_t>(),
                                            out.mutable_data_ptr<scalar_t>());
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> so2_grid_product_backward_cuda(const at::Tensor& grad, const at::Tensor& spectral,
                                                                  const at::Tensor& coeffs, int64_t mmax, int64_t grid,
                                                                  bool need_spectral, bool need_coeffs) {
  check_grid_product_args(spectral, coeffs, mmax, grid, "so2_grid_product_backward");
  check_grid_product_grad(grad, spectral);
  check_cuda(spectral, "so2_grid_product_backward");
  const c10::cuda::CUDAGuard guard(spectral.device());
  const int64_t N = spectral.size(0), nu = spectral.size(1), S = spectral.size(2), H = spectral.size(3);
  at::Tensor gs = need_spectral ? at::empty(spectral.sizes(), spectral.options()) : at::empty({0}, grad.options());
  at::Tensor gc = need_coeffs ? at::empty(coeffs.sizes(), coeffs.options()) : at::empty({0}, grad.options());
  if (N * H == 0 || !(need_spectral || need_coeffs)) return {gs, gc};
  const auto gr = grad.contiguous(), sc = spectral.contiguous(), cc = coeffs.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, spectral.scalar_type(), "so2_grid_product_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const auto table = basis_table<acc_t>(spectral, int(mmax), int(grid), stream);
        const size_t per_thread = size_t(nu) * (S + 1) * sizeof(acc_t);
        const int threads = block_threads(per_thread);
        backward_kernel<scalar_t, acc_t><<<block_count(N * H, threads), threads, threads * per_thread, stream>>>(
            gr.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(), cc.const_data_ptr<scalar_t>(), N, int(nu),
            H, int(mmax), int(grid), table.const_data_ptr<acc_t>(),
            need_spectral ? gs.mutable_data_ptr<scalar_t>() : nullptr,
            need_coeffs ? gc.mutable_data_ptr<scalar_t>() : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {gs, gc};
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CUDA, m) {
  m.impl("so2_grid_product_forward", &so2ops::so2_grid_product_forward_cuda);
  m.impl("so2_grid_product_backward", &so2ops::so2_grid_product_backward_cuda);
}
