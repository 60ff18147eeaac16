// so2_layer_norm and so2_gate on CUDA (one translation unit for both: a .cu
// compile is minutes): float / double, and half / bfloat16 computed in float.
//
// so2_layer_norm: one block per row n.  Every thread strides over the row's
// channels (coalesced), keeps its partial sums in registers, and each sum is
// reduced warp by warp (shuffles) then over the block's warps in a fixed
// order through shared memory: deterministic.  Forward: the degree-0 mean,
// then its variance and the per-degree sums of squares, then the output (two
// block barriers).  Backward: the same statistics, then the per-degree
// sums of g * w * x and the degree-0 sums, then grad_x; when the weight or
// bias gradient is asked for, each row also writes its own contribution to a
// [N, lmax + 2, C] buffer, summed over the rows in row order by a second,
// small kernel (no atomics: bitwise reproducible).
//
// so2_gate: elementwise; one thread per (row, degree, channel) computes the
// sigmoid of its gate logit once and applies it to the degree's 2l+1 rows
// (backward: also sums g * x over them for the logit's gradient).
//
// The per-row math is so2ops/so2_norm_gate.h, shared with the CPU kernels.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "so2ops/layout.h"
#include "so2ops/so2_norm_gate.h"

namespace so2ops {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
//: shared-memory slots of one row's sums: mean, variance and S_l (forward); plus
//: sum gh, sum gh * xhat and A_l (backward)
constexpr int kSlots = 2 * (kLmaxSupported + 2);

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

//: Block-wide sums in a fixed order: store(slot, v) from every thread, then
//: (after __syncthreads) total(slot) on every thread.
template <typename acc_t>
struct BlockSums {
  acc_t* red;  // [kSlots * kWarps] shared
  __device__ __forceinline__ void store(int slot, acc_t v) const {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[slot * kWarps + (threadIdx.x >> 5)] = v;
  }
  __device__ __forceinline__ acc_t total(int slot) const {
    acc_t s = acc_t(0);
    for (int w = 0; w < kWarps; ++w) s += red[slot * kWarps + w];
    return s;
  }
};

//: The statistics of row xr: slot 0 = sum x0, slot 1 = sum (x0 - mean)^2, slot 1 + l = S_l.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void row_stats(const scalar_t* __restrict__ xr, int64_t C, int lmax, acc_t eps,
                                          const BlockSums<acc_t>& sums, acc_t& mean, acc_t& rstd) {
  acc_t s = acc_t(0);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) s += acc_t(xr[c]);
  sums.store(0, s);
  __syncthreads();
  mean = sums.total(0) / acc_t(C);
  acc_t v = acc_t(0);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const acc_t d = acc_t(xr[c]) - mean;
    v += d * d;
  }
  sums.store(1, v);
  for (int l = 1; l <= lmax; ++l) {
    const scalar_t* xl = xr + int64_t(l * l) * C;
    acc_t ss = acc_t(0);
    for (int64_t i = threadIdx.x; i < int64_t(2 * l + 1) * C; i += kThreads) {
      const acc_t a = acc_t(xl[i]);
      ss += a * a;
    }
    sums.store(1 + l, ss);
  }
  __syncthreads();
  rstd = norm_rsqrt<acc_t>(sums.total(1) / acc_t(C) + eps);
}

//: 1 / RMS of degree l's group, from the S_l in slots 1 + l.
template <typename acc_t>
__device__ __forceinline__ acc_t degree_r(const BlockSums<acc_t>& sums, int l, int lmax, bool joint, int64_t C,
                                          acc_t eps) {
  acc_t ms = acc_t(0);
  for (int k = 1; k <= lmax; ++k)
    if (norm_group(k, joint) == norm_group(l, joint)) ms += norm_degree_weight<acc_t>(k, lmax, joint, C) * sums.total(1 + k);
  return norm_rsqrt<acc_t>(ms + eps);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    ln_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ b,
                      int64_t C, int lmax, acc_t eps, bool joint, scalar_t* __restrict__ out) {
  __shared__ acc_t red[kSlots * kWarps];
  const BlockSums<acc_t> sums{red};
  const int64_t row = int64_t(num_coeffs(lmax)) * C * blockIdx.x;
  const scalar_t* xr = x + row;
  scalar_t* o = out + row;
  acc_t mean, rstd;
  row_stats(xr, C, lmax, eps, sums, mean, rstd);
  for (int64_t c = threadIdx.x; c < C; c += kThreads)
    o[c] = static_cast<scalar_t>((acc_t(xr[c]) - mean) * rstd * acc_t(w[c]) + acc_t(b[c]));
  for (int l = 1; l <= lmax; ++l) {
    const acc_t r = degree_r(sums, l, lmax, joint, C, eps);
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      const acc_t wr = r * acc_t(w[l * C + c]);
      for (int m = 0; m < 2 * l + 1; ++m) {
        const int64_t i = int64_t(l * l + m) * C + c;
        o[i] = static_cast<scalar_t>(acc_t(xr[i]) * wr);
      }
    }
  }
}

//: part (or null): [N, lmax + 2, C] acc_t, this row's weight (rows 0..lmax) and bias (row lmax + 1) gradient.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    ln_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                       const scalar_t* __restrict__ w, int64_t C, int lmax, acc_t eps, bool joint,
                       scalar_t* __restrict__ gx, acc_t* __restrict__ part) {
  __shared__ acc_t red[kSlots * kWarps];
  const BlockSums<acc_t> sums{red};
  const int64_t row = int64_t(num_coeffs(lmax)) * C * blockIdx.x;
  const scalar_t* xr = x + row;
  const scalar_t* g = grad + row;
  acc_t mean, rstd;
  row_stats(xr, C, lmax, eps, sums, mean, rstd);
  // slots lmax + 2 + j: sum gh (j = 0), sum gh * xhat (j = 1), A_l of degree l (j = 1 + l)
  const int base = kLmaxSupported + 2;
  acc_t sg = acc_t(0), sgx = acc_t(0);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const acc_t gh = acc_t(g[c]) * acc_t(w[c]);
    sg += gh;
    sgx += gh * (acc_t(xr[c]) - mean) * rstd;
  }
  sums.store(base, sg);
  sums.store(base + 1, sgx);
  for (int l = 1; l <= lmax; ++l) {
    acc_t a = acc_t(0);
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      acc_t gxs = acc_t(0);
      for (int m = 0; m < 2 * l + 1; ++m) {
        const int64_t i = int64_t(l * l + m) * C + c;
        gxs += acc_t(g[i]) * acc_t(xr[i]);
      }
      a += gxs * acc_t(w[l * C + c]);
    }
    sums.store(base + 1 + l, a);
  }
  __syncthreads();
  const acc_t mg = sums.total(base) / acc_t(C), mgx = sums.total(base + 1) / acc_t(C);
  acc_t* pr = part ? part + int64_t(lmax + 2) * C * blockIdx.x : nullptr;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const acc_t g0 = acc_t(g[c]), xh = (acc_t(xr[c]) - mean) * rstd;
    if (gx) gx[row + c] = static_cast<scalar_t>(norm_scalar_grad_x<acc_t>(g0 * acc_t(w[c]), xh, mg, mgx, rstd));
    if (pr) {
      pr[c] = g0 * xh;
      pr[int64_t(lmax + 1) * C + c] = g0;
    }
  }
  for (int l = 1; l <= lmax; ++l) {
    const acc_t r = degree_r(sums, l, lmax, joint, C, eps);
    acc_t group_a = acc_t(0);
    for (int k = 1; k <= lmax; ++k)
      if (norm_group(k, joint) == norm_group(l, joint)) group_a += sums.total(base + 1 + k);
    const acc_t coef = r * r * r * norm_degree_weight<acc_t>(l, lmax, joint, C) * group_a;
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      const acc_t wl = acc_t(w[l * C + c]);
      acc_t gxs = acc_t(0);
      for (int m = 0; m < 2 * l + 1; ++m) {
        const int64_t i = int64_t(l * l + m) * C + c;
        const acc_t gi = acc_t(g[i]), xi = acc_t(xr[i]);
        if (gx) gx[row + i] = static_cast<scalar_t>(norm_vector_grad_x<acc_t>(gi, wl, xi, r, coef));
        gxs += gi * xi;
      }
      if (pr) pr[int64_t(l) * C + c] = r * gxs;
    }
  }
}

//: gw[j] = sum_n part[n, j] (j < (lmax + 1) C), gb = the bias row; rows summed in order.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256)
    ln_reduce_rows_kernel(const acc_t* __restrict__ part, int64_t N, int64_t C, int lmax, scalar_t* __restrict__ gw,
                          scalar_t* __restrict__ gb) {
  const int64_t P = int64_t(lmax + 2) * C;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= P) return;
  acc_t s = acc_t(0);
  for (int64_t n = 0; n < N; ++n) s += part[n * P + j];
  const int64_t wsize = int64_t(lmax + 1) * C;
  if (j < wsize) {
    if (gw) gw[j] = static_cast<scalar_t>(s);
  } else if (gb) {
    gb[j - wsize] = static_cast<scalar_t>(s);
  }
}

//: one thread per (row n, degree l, channel c)
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256)
    gate_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ z, int64_t total, int64_t C,
                        int lmax, scalar_t* __restrict__ out) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const int64_t c = t % C, q = t / C;
  const int l = static_cast<int>(q % (lmax + 1));
  const int64_t n = q / (lmax + 1);
  const int64_t row = n * num_coeffs(lmax) * C + c;
  if (l == 0) {
    const acc_t v = acc_t(x[row]);
    out[row] = static_cast<scalar_t>(v * gate_sigmoid<acc_t>(v));
    return;
  }
  const acc_t s = gate_sigmoid<acc_t>(acc_t(z[(n * lmax + l - 1) * C + c]));
  for (int m = 0; m < 2 * l + 1; ++m) {
    const int64_t i = row + int64_t(l * l + m) * C;
    out[i] = static_cast<scalar_t>(acc_t(x[i]) * s);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256)
    gate_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                         const scalar_t* __restrict__ z, int64_t total, int64_t C, int lmax,
                         scalar_t* __restrict__ gx, scalar_t* __restrict__ gz) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const int64_t c = t % C, q = t / C;
  const int l = static_cast<int>(q % (lmax + 1));
  const int64_t n = q / (lmax + 1);
  const int64_t row = n * num_coeffs(lmax) * C + c;
  if (l == 0) {
    if (gx) gx[row] = static_cast<scalar_t>(acc_t(grad[row]) * gate_silu_grad<acc_t>(acc_t(x[row])));
    return;
  }
  const int64_t zi = (n * lmax + l - 1) * C + c;
  const acc_t s = gate_sigmoid<acc_t>(acc_t(z[zi]));
  acc_t acc = acc_t(0);
  for (int m = 0; m < 2 * l + 1; ++m) {
    const int64_t i = row + int64_t(l * l + m) * C;
    const acc_t gi = acc_t(grad[i]);
    if (gx) gx[i] = static_cast<scalar_t>(gi * s);
    acc += gi * acc_t(x[i]);
  }
  if (gz) gz[zi] = static_cast<scalar_t>(acc * s * (acc_t(1) - s));
}

// ------------------------------------------------------------------ host side
void check_ln_args(const at::Tensor& x, const at::Tensor& weight, int64_t lmax, const char* op) {
  TORCH_CHECK(lmax >= 0 && lmax <= kLmaxSupported, op, ": lmax=", lmax, " must be in [0, ", kLmaxSupported, "]");
  const int l = static_cast<int>(lmax);
  TORCH_CHECK(x.dim() == 3 && x.size(1) == num_coeffs(l) && x.size(2) >= 1, op, ": x must be [N, (lmax+1)^2=",
              num_coeffs(l), ", C>=1], got ", x.sizes());
  TORCH_CHECK(x.is_cuda(), op, " (cuda): expected CUDA tensors");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == lmax + 1 && weight.size(1) == x.size(2), op,
              ": weight must be [lmax+1=", lmax + 1, ", C=", x.size(2), "], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.device() == x.device(), op,
              ": weight must match x in dtype and device");
  TORCH_CHECK(x.size(0) < (int64_t(1) << 31), op, " (cuda): too many rows for one launch");
}

unsigned blocks_for(int64_t total, int threads) {
  const int64_t b = (total + threads - 1) / threads;
  TORCH_CHECK(b < (int64_t(1) << 31), "so2ops (cuda): tensor too large for one launch");
  return static_cast<unsigned>(b);
}

at::Tensor so2_layer_norm_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                       int64_t lmax, double eps, bool joint) {
  check_ln_args(x, weight, lmax, "so2_layer_norm");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(2) && bias.scalar_type() == x.scalar_type() &&
                  bias.device() == x.device(),
              "so2_layer_norm: bias must be [C=", x.size(2), "] of x's dtype and device, got ", bias.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(2);
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (N == 0) return out;
  const auto xc = x.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "so2_layer_norm_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    ln_forward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), bc.const_data_ptr<scalar_t>(), C,
        static_cast<int>(lmax), static_cast<acc_t>(eps), joint, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> so2_layer_norm_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                            const at::Tensor& weight, int64_t lmax,
                                                                            double eps, bool joint, bool need_x,
                                                                            bool need_weight, bool need_bias) {
  check_ln_args(x, weight, lmax, "so2_layer_norm_backward");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() && grad.device() == x.device(),
              "so2_layer_norm_backward: grad must match x in shape, dtype and device, got ", grad.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(2);
  const int l = static_cast<int>(lmax);
  at::Tensor gx = need_x ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  at::Tensor gw = need_weight ? at::empty({lmax + 1, C}, x.options()) : at::empty({0}, x.options());
  at::Tensor gb = need_bias ? at::empty({C}, x.options()) : at::empty({0}, x.options());
  if (!(need_x || need_weight || need_bias)) return {gx, gw, gb};
  if (N == 0) {
    if (need_weight) gw.zero_();
    if (need_bias) gb.zero_();
    return {gx, gw, gb};
  }
  const bool need_part = need_weight || need_bias;
  const auto gc = grad.contiguous(), xc = x.contiguous(), wc = weight.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "so2_layer_norm_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    at::Tensor part = need_part ? at::empty({N, l + 2, C}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value))
                                : at::Tensor();
    acc_t* pp = need_part ? part.mutable_data_ptr<acc_t>() : nullptr;
    ln_backward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), C, l,
        static_cast<acc_t>(eps), joint, need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr, pp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (need_part) {
      ln_reduce_rows_kernel<scalar_t, acc_t><<<blocks_for(int64_t(l + 2) * C, 256), 256, 0, stream>>>(
          pp, N, C, l, need_weight ? gw.mutable_data_ptr<scalar_t>() : nullptr,
          need_bias ? gb.mutable_data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {gx, gw, gb};
}

int check_gate_args(const at::Tensor& x, const at::Tensor& logits, const char* op) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) >= 1, op, ": x must be [N, (lmax+1)^2, C>=1], got ", x.sizes());
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == x.size(0) && logits.size(2) == x.size(2), op,
              ": logits must be [N=", x.size(0), ", lmax, C=", x.size(2), "], got ", logits.sizes());
  const int64_t lmax = logits.size(1);
  TORCH_CHECK(lmax <= kLmaxSupported, op, ": lmax=", lmax, " must be in [0, ", kLmaxSupported, "]");
  TORCH_CHECK(x.size(1) == num_coeffs(static_cast<int>(lmax)), op, ": x has ", x.size(1),
              " rows but logits has lmax=", lmax, ": expected (lmax+1)^2=", num_coeffs(static_cast<int>(lmax)));
  TORCH_CHECK(x.is_cuda() && logits.device() == x.device(), op, " (cuda): expected CUDA tensors on one device");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(logits.scalar_type() == x.scalar_type(), op, ": logits dtype ", logits.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  return static_cast<int>(lmax);
}

at::Tensor so2_gate_forward_cuda(const at::Tensor& x, const at::Tensor& logits) {
  const int lmax = check_gate_args(x, logits, "so2_gate");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(2), total = N * (lmax + 1) * C;
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (N == 0) return out;
  const auto xc = x.contiguous(), zc = logits.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "so2_gate_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    gate_forward_kernel<scalar_t, acc_t><<<blocks_for(total, 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        xc.const_data_ptr<scalar_t>(), zc.const_data_ptr<scalar_t>(), total, C, lmax,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> so2_gate_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                          const at::Tensor& logits, bool need_x, bool need_logits) {
  const int lmax = check_gate_args(x, logits, "so2_gate_backward");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() && grad.device() == x.device(),
              "so2_gate_backward: grad must match x in shape, dtype and device, got ", grad.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(2), total = N * (lmax + 1) * C;
  at::Tensor gx = need_x ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  at::Tensor gz = need_logits ? at::empty_like(logits, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  if (N == 0 || !(need_x || need_logits)) return {gx, gz};
  const auto gc = grad.contiguous(), xc = x.contiguous(), zc = logits.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "so2_gate_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    gate_backward_kernel<scalar_t, acc_t><<<blocks_for(total, 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), zc.const_data_ptr<scalar_t>(), total, C, lmax,
        need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr, need_logits ? gz.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gz};
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CUDA, m) {
  m.impl("so2_layer_norm_forward", &so2ops::so2_layer_norm_forward_cuda);
  m.impl("so2_layer_norm_backward", &so2ops::so2_layer_norm_backward_cuda);
  m.impl("so2_gate_forward", &so2ops::so2_gate_forward_cuda);
  m.impl("so2_gate_backward", &so2ops::so2_gate_backward_cuda);
}
