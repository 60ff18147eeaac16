// rotate on CUDA: float / double, and half / bfloat16 computed in float.
//
// Forward and grad_x: one thread per (edge, channel) and degree (grid.y = l),
// applying one Wigner block to one channel (so2ops/rotate.h with W = 1);
// consecutive threads take consecutive channels, so x / out accesses
// coalesce.  With an index grad_x scatters with atomicAdd into an
// accumulation-dtype buffer (summation order, hence the last bits, may vary
// between runs); under torch.use_deterministic_algorithms(True) it instead
// sorts the edges by index and lets the first edge of each run of equal rows
// sum the run in edge order (no atomics, bitwise reproducible).
// grad_wigner: the backend's one Wigner-gradient contraction (wigner_grad.cuh,
// shared with the tile driver): one block per edge, rows staged through shared
// memory.
//
// Index values are validated in Python; a row outside [0, N) is read as zeros
// here (and receives no gradient) rather than read out of bounds, so no
// device synchronisation is needed for safety.
#include <ATen/AccumulateType.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "so2ops/op_checks.h"
#include "so2ops/rotate.h"
#include "so2ops/segments.h"
#include "wigner_grad.cuh"

namespace so2ops {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t source_row(const int64_t* __restrict__ index, int64_t e) {
  return index ? index[e] : e;
}

//: out[e, l, :, c] = D_e^l (or its transpose) x[src, l, :, c].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ wig, const int64_t* __restrict__ index,
                   int64_t E, int64_t N, int64_t C, int lmax, bool inverse, scalar_t* __restrict__ out) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= E * C) return;
  const int l = blockIdx.y, n = 2 * l + 1, nc = num_coeffs(lmax);
  const int64_t e = t / C, c = t - e * C;
  const int64_t src = source_row(index, e);
  scalar_t* o = out + (e * nc + l * l) * C + c;
  if (src < 0 || src >= N) {
    for (int m = 0; m < n; ++m) o[m * C] = scalar_t(0);
    return;
  }
  rotate_block<1, acc_t>(wig + e * wigner_size(lmax) + wigner_offset(l), n, inverse, x + (src * nc + l * l) * C + c,
                         C, [&](int m, int, acc_t v) { o[m * C] = static_cast<scalar_t>(v); });
}

//: grad_x[src, l, :, c] (+)= D_e^T (or D_e) grad[e, l, :, c].  kAtomic (with
//: an index): gx is an acc_t buffer accumulated atomically; otherwise each
//: row has a single writer and gx has the output dtype.
template <typename scalar_t, typename acc_t, typename out_t, bool kAtomic>
__global__ void __launch_bounds__(kThreads)
    grad_x_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ wig,
                  const int64_t* __restrict__ index, int64_t E, int64_t N, int64_t C, int lmax, bool inverse,
                  out_t* __restrict__ gx) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= E * C) return;
  const int l = blockIdx.y, n = 2 * l + 1, nc = num_coeffs(lmax);
  const int64_t e = t / C, c = t - e * C;
  const int64_t src = source_row(index, e);
  if (src < 0 || src >= N) return;
  out_t* o = gx + (src * nc + l * l) * C + c;
  rotate_block<1, acc_t>(wig + e * wigner_size(lmax) + wigner_offset(l), n, !inverse,
                         grad + (e * nc + l * l) * C + c, C, [&](int m, int, acc_t v) {
                           if constexpr (kAtomic)
                             atomicAdd(o + m * C, v);
                           else
                             o[m * C] = static_cast<out_t>(v);
                         });
}

//: Deterministic grad_x with an index.  `order` lists the edges stably sorted
//: by index; thread (position p, row k = blockIdx.y, channel c) works only if
//: p starts a run of equal index values, and then writes
//:   gx[row, k, c] = sum over the run (ascending edge id) of (D_e^T or D_e) grad[e]
//: so each written entry has exactly one writer and a fixed summation order.
//: gx must be zero-initialised (rows no edge gathers from are not written).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    grad_x_segmented_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ wig,
                            const int64_t* __restrict__ index, const int64_t* __restrict__ order, int64_t E,
                            int64_t N, int64_t C, int lmax, bool inverse, scalar_t* __restrict__ gx) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= E * C) return;
  const int k = blockIdx.y, nc = num_coeffs(lmax), wsize = wigner_size(lmax);
  int l = 0;
  while ((l + 1) * (l + 1) <= k) ++l;
  const int n = 2 * l + 1, m = k - l * l;
  const int64_t p = t / C, c = t - p * C;
  auto key_at = [&](int64_t q) { return index[order[q]]; };
  const int64_t row = key_at(p);
  if (row < 0 || row >= N) return;                      // out-of-range rows receive nothing
  // grad_x = D^T g for the forward D x (transpose flag !inverse, as in grad_x_kernel).
  const bool transpose = !inverse;
  acc_t acc = acc_t(0);
  const bool head = segments::for_segment(p, E, key_at, [&](int64_t q) {
    const int64_t e = order[q];
    const scalar_t* d = wig + e * wsize + wigner_offset(l);
    const scalar_t* g = grad + (e * nc + l * l) * C + c;
    for (int mp = 0; mp < n; ++mp)
      acc += acc_t(transpose ? d[mp * n + m] : d[m * n + mp]) * acc_t(g[mp * C]);
  });
  if (!head) return;                                    // not the head of its run
  gx[(row * nc + k) * C + c] = static_cast<scalar_t>(acc);
}

void check_cuda(const at::Tensor& x) { TORCH_CHECK(x.is_cuda(), "rotate (cuda): expected CUDA tensors"); }

dim3 channel_grid(int64_t E, int64_t C, int lmax) {
  const int64_t blocks = (E * C + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "rotate (cuda): E * C too large for one launch");
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(lmax + 1));
}

at::Tensor rotate_forward_cuda(const at::Tensor& x, const at::Tensor& wigner, const std::optional<at::Tensor>& index,
                               int64_t lmax, bool inverse) {
  check_rotate_args(x, wigner, index, lmax);
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t E = wigner.size(0), N = x.size(0), C = x.size(2);
  auto out = at::empty({E, x.size(1), C}, x.options());
  if (E == 0) return out;
  const auto xc = x.contiguous(), wc = wigner.contiguous();
  const auto idx = index.has_value() ? index->contiguous() : at::Tensor();
  const int64_t* idx_ptr = idx.defined() ? idx.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rotate_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    forward_kernel<scalar_t, acc_t><<<channel_grid(E, C, lmax), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), idx_ptr, E, N, C, static_cast<int>(lmax),
        inverse, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rotate_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                        const at::Tensor& wigner,
                                                        const std::optional<at::Tensor>& index, int64_t lmax,
                                                        bool inverse, bool need_x, bool need_wigner) {
  check_rotate_args(x, wigner, index, lmax);
  check_rotate_grad(grad, x, wigner);
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t E = wigner.size(0), N = x.size(0), C = x.size(2);
  const int l = static_cast<int>(lmax), nc = num_coeffs(l);
  const bool gather = index.has_value();
  at::Tensor gx = !need_x ? at::empty({0}, grad.options())
                  : gather ? at::zeros({N, nc, C}, x.options())
                           : at::empty({N, nc, C}, x.options());
  at::Tensor gw = need_wigner ? at::empty({E, wigner.size(1)}, wigner.options()) : at::empty({0}, grad.options());
  if (E == 0 || !(need_x || need_wigner)) return {gx, gw};
  const auto gc = grad.contiguous(), xc = x.contiguous(), wc = wigner.contiguous();
  const auto idx = gather ? index->contiguous() : at::Tensor();
  const int64_t* idx_ptr = gather ? idx.const_data_ptr<int64_t>() : nullptr;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rotate_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    if (need_x) {
      if (!gather) {
        grad_x_kernel<scalar_t, acc_t, scalar_t, false><<<channel_grid(E, C, l), kThreads, 0, stream>>>(
            gc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), nullptr, E, N, C, l, inverse,
            gx.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else if (at::globalContext().deterministicAlgorithms()) {
        // Segmented, atomic-free scatter over the edges stably sorted by index.
        const at::Tensor order = segments::stable_order(idx, N);
        const int64_t blocks = (E * C + kThreads - 1) / kThreads;
        TORCH_CHECK(blocks < (int64_t(1) << 31), "rotate (cuda): E * C too large for one launch");
        grad_x_segmented_kernel<scalar_t, acc_t>
            <<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(nc)), kThreads, 0, stream>>>(
                gc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), idx_ptr,
                order.const_data_ptr<int64_t>(), E, N, C, l, inverse, gx.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        // atomics on the accumulation dtype (half/bfloat16 atomics are slow and lossy)
        at::Tensor buf = std::is_same<scalar_t, acc_t>::value
                             ? gx
                             : at::zeros({N, nc, C}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        grad_x_kernel<scalar_t, acc_t, acc_t, true><<<channel_grid(E, C, l), kThreads, 0, stream>>>(
            gc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), idx_ptr, E, N, C, l, inverse,
            buf.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (!std::is_same<scalar_t, acc_t>::value) gx.copy_(buf);
      }
    }
    if (need_wigner) {
      TORCH_CHECK(E < (int64_t(1) << 31), "rotate (cuda): too many edges for one launch");
      using Frame = wgrad::DenseRows<scalar_t>;
      const wgrad::Term<scalar_t, Frame> term{Frame{gc.const_data_ptr<scalar_t>(), C, l},
                                              xc.const_data_ptr<scalar_t>(), idx_ptr, N};
      const wgrad::Term<scalar_t, Frame> off{Frame{nullptr, C, l}, nullptr, nullptr, 0};
      wgrad::wigner_grad_kernel<scalar_t, acc_t, Frame>
          <<<static_cast<unsigned>(E), wgrad::kThreads, wgrad::smem_bytes<acc_t>(l), stream>>>(
              term, off, l, inverse, 0, nullptr, wgrad::slab_channels(), gw.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {gx, gw};
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CUDA, m) {
  m.impl("rotate_forward", &so2ops::rotate_forward_cuda);
  m.impl("rotate_backward", &so2ops::rotate_backward_cuda);
}
