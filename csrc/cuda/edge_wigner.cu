// edge_wigner on CUDA: one warp per edge, lane k owning sample point k
// (K = 3 lmax + 3 <= 27 <= 32).  float / double, and half / bfloat16 inputs
// computed in float (at::acc_type).
//
// Forward: each lane writes the harmonics of its rotated point into the
// warp's shared-memory slab ysh[K][(lmax+1)^2]; then the lanes stride over
// the packed output row (coalesced stores), each entry a K-term dot product
// with pinv.  Backward: each lane runs the dual-number pass of its point
// (so2ops/edge_wigner.h) and the warp sums the three components with
// shuffles; no shared memory.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "so2ops/edge_wigner.h"
#include "so2ops/op_checks.h"
#include "so2ops/tile_knob.h"

namespace so2ops {
namespace {

constexpr int kWarp = 32;
static_assert(kMaxPoints <= kWarp, "one lane per sample point");
constexpr int kMaxEdgesPerBlock = 8;
constexpr int kSmemBudget = 48 * 1024;  // no opt-in needed below this

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kWarp* kMaxEdgesPerBlock)
    forward_kernel(const scalar_t* __restrict__ vec, const acc_t* __restrict__ points, const acc_t* __restrict__ pinv,
                   int64_t num_edges, int num_points, int lmax, const ShNorms<acc_t> norms,
                   scalar_t* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t e = int64_t(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (e >= num_edges) return;  // the whole warp leaves together
  const int nc = num_coeffs(lmax), wsize = wigner_size(lmax);
  acc_t* ysh = reinterpret_cast<acc_t*>(smem_raw) + warp * num_points * nc;
  if (lane < num_points) {
    const acc_t v[3] = {acc_t(vec[3 * e]), acc_t(vec[3 * e + 1]), acc_t(vec[3 * e + 2])};
    acc_t R[9];
    edge_vec_frame(v, R);
    edge_point_sh(R, points + 3 * lane, lmax, norms, ysh + lane * nc);
  }
  __syncwarp();
  scalar_t* o = out + e * wsize;
  int l = 0;
  for (int p = lane; p < wsize; p += kWarp) {
    while (p >= wigner_offset(l + 1)) ++l;  // p only grows: l follows it
    const int n = 2 * l + 1, idx = p - wigner_offset(l), mi = idx / n;
    o[p] = static_cast<scalar_t>(wigner_entry<acc_t>(ysh, nc, pinv, nc, num_points, l, mi, idx - mi * n));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kWarp* kMaxEdgesPerBlock)
    backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ vec,
                    const acc_t* __restrict__ points, const acc_t* __restrict__ pinv, int64_t num_edges,
                    int num_points, int lmax, const ShNorms<acc_t> norms, scalar_t* __restrict__ grad_vec) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t e = int64_t(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (e >= num_edges) return;
  const int nc = num_coeffs(lmax), wsize = wigner_size(lmax);
  acc_t g[3] = {acc_t(0), acc_t(0), acc_t(0)};
  if (lane < num_points) {
    const acc_t v[3] = {acc_t(vec[3 * e]), acc_t(vec[3 * e + 1]), acc_t(vec[3 * e + 2])};
    edge_point_backward(v, points + 3 * lane, pinv + lane * nc, grad + e * wsize, lmax, norms, g);
  }
#pragma unroll
  for (int i = 0; i < 3; ++i)
    for (int off = kWarp / 2; off > 0; off /= 2) g[i] += __shfl_down_sync(0xffffffffu, g[i], off);
  if (lane == 0)
    for (int i = 0; i < 3; ++i) grad_vec[3 * e + i] = static_cast<scalar_t>(g[i]);
}

void check_cuda(const at::Tensor& edge_vec) {
  TORCH_CHECK(edge_vec.is_cuda(), "edge_wigner (cuda): expected CUDA tensors");
}

at::Tensor edge_wigner_forward_cuda(const at::Tensor& edge_vec, const at::Tensor& points, const at::Tensor& pinv,
                                    int64_t lmax) {
  const int num_points = static_cast<int>(check_edge_wigner_args(edge_vec, points, pinv, lmax));
  check_cuda(edge_vec);
  const c10::cuda::CUDAGuard guard(edge_vec.device());
  const int64_t num_edges = edge_vec.size(0);
  const int l = static_cast<int>(lmax);
  auto out = at::empty({num_edges, wigner_size(l)}, edge_vec.options());
  if (num_edges == 0) return out;
  const auto vec = edge_vec.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, vec.scalar_type(), "edge_wigner_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    const auto pts = points.to(acc_dtype).contiguous(), pin = pinv.to(acc_dtype).contiguous();
    const int per_edge = num_points * num_coeffs(l) * int(sizeof(acc_t));
    // (fewer under the tile knob, so2ops/tile_knob.h: the kernels take the count from blockDim)
    const int edges_per_block =
        std::max(1, std::min(static_cast<int>(tile_cap(kMaxEdgesPerBlock)), kSmemBudget / per_edge));
    const int64_t blocks = (num_edges + edges_per_block - 1) / edges_per_block;
    TORCH_CHECK(blocks < (int64_t(1) << 31), "edge_wigner (cuda): too many edges for one launch");
    forward_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned>(blocks), kWarp * edges_per_block, edges_per_block * per_edge, c10::cuda::getCurrentCUDAStream()>>>(
            vec.const_data_ptr<scalar_t>(), pts.const_data_ptr<acc_t>(), pin.const_data_ptr<acc_t>(), num_edges,
            num_points, l, make_sh_norms<acc_t>(), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor edge_wigner_backward_cuda(const at::Tensor& grad, const at::Tensor& edge_vec, const at::Tensor& points,
                                     const at::Tensor& pinv, int64_t lmax) {
  const int num_points = static_cast<int>(check_edge_wigner_args(edge_vec, points, pinv, lmax));
  check_edge_wigner_grad(grad, edge_vec, lmax);
  check_cuda(edge_vec);
  const c10::cuda::CUDAGuard guard(edge_vec.device());
  const int64_t num_edges = edge_vec.size(0);
  auto grad_vec = at::empty({num_edges, 3}, edge_vec.options());
  if (num_edges == 0) return grad_vec;
  const auto vec = edge_vec.contiguous();
  const auto g = grad.to(edge_vec.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, vec.scalar_type(), "edge_wigner_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    const auto pts = points.to(acc_dtype).contiguous(), pin = pinv.to(acc_dtype).contiguous();
    const int edges_per_block = static_cast<int>(tile_cap(kMaxEdgesPerBlock));  // kMaxEdgesPerBlock but for the knob
    const int64_t blocks = (num_edges + edges_per_block - 1) / edges_per_block;
    TORCH_CHECK(blocks < (int64_t(1) << 31), "edge_wigner (cuda): too many edges for one launch");
    backward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kWarp * edges_per_block, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), vec.const_data_ptr<scalar_t>(), pts.const_data_ptr<acc_t>(),
        pin.const_data_ptr<acc_t>(), num_edges, num_points, static_cast<int>(lmax), make_sh_norms<acc_t>(),
        grad_vec.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_vec;
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CUDA, m) {
  m.impl("edge_wigner_forward", &so2ops::edge_wigner_forward_cuda);
  m.impl("edge_wigner_backward", &so2ops::edge_wigner_backward_cuda);
}
