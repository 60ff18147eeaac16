// CUDA tile kernels of so2_linear and so2_message (CudaKernels, so2_message_kernels.h).
//
// Included once, by so2_message.cu (one translation unit for both ops' CUDA
// tile code; so2_linear.cu instantiates the driver against these symbols).
//
// The tiled driver (so2_message_driver.h) runs, per tile of edges, these
// kernels around cuBLAS GEMMs (at::mm on views of the tile buffers):
//   rotate_in           one thread per (edge, (m, l) pair, channel): both signs
//                       +-m share the loads of x[(l, .)]; coalesced over channels
//   rotate_in_backward  same grid, fuses grad_mod, A' = mod * a and ga *= mod
//   rotate_out_add      one thread per (edge, output row, channel); atomicAdd,
//                       or (deterministic) the first edge of each destination
//                       segment sums the whole segment in position order
//   wigner_grad         the backend's one Wigner-gradient contraction (wigner_grad.cuh,
//                       shared with rotate): one block per edge, shared-memory rows
// Tiles and accumulators are float for half / bfloat16 inputs (opmath type).
#pragma once

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "so2ops/layout.h"
#include "so2ops/so2_message_driver.h"
#include "so2ops/so2_message_kernels.h"
#include "so2ops/so2_message_math.h"
#include "so2ops/segments.h"
#include "wigner_grad.cuh"

namespace so2ops {
namespace {

using so2::decode_pair;
using so2::num_signs;
using so2::row_dot;
using so2::tile_index;

constexpr int kThreads = 256;

/// Blocks of a grid-stride launch over n items: enough for one item per thread, at most 2^30,
/// or at most n' under the tile knob (tile_knob.h), so each thread loops over several items.
inline unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(b, 1), tile_cap(int64_t(1) << 30)));
}

__device__ __forceinline__ int64_t edge_at(const TileSpec& spec, int64_t p) {
  return spec.perm ? spec.perm[spec.p0 + p] : spec.p0 + p;
}

#define SO2_GRID_STRIDE(i, n)                                                                    \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

// One site (p, (m, l) = pair q, c) of the rotate-in grid, t = (p * nmod + q) * C + c, and the
// feature row it reads (x[idx[e]]; out-of-range rows read as zeros).
struct InSite {
  int64_t p, e, c, row;
  int q, m, l;
  bool valid;
};

__device__ __forceinline__ InSite in_site(const TileSpec& spec, int64_t t, int64_t C, int nmod,
                                          const int64_t* __restrict__ idx, int64_t n_rows) {
  InSite st;
  st.c = t % C;
  st.q = int((t / C) % nmod);
  st.p = t / (C * nmod);
  decode_pair(st.q, spec.lmax, st.m, st.l);
  st.e = edge_at(spec, st.p);
  st.row = idx ? idx[st.e] : st.e;
  st.valid = st.row >= 0 && st.row < n_rows;
  return st;
}

// (D_e^l x_l)[i, c] for the l-block x_l (channel c, row stride C); the identity when wig is null.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t rotated_row(const scalar_t* __restrict__ wig, int64_t e, int lmax, int l, int i,
                                             const scalar_t* xl, int64_t C, bool valid) {
  if (!valid) return acc_t(0);
  if (wig == nullptr) return static_cast<acc_t>(xl[i * C]);
  const int n = 2 * l + 1;
  return row_dot<acc_t>(wig + e * wigner_size(lmax) + wigner_offset(l) + i * n, xl, n, C);
}

// tile[(p, m, s, l, c)] = mod[e, (m, l), c] * sum_j D_e^l[l + s m, j] feat[idx[e], (l, j), c]
template <typename scalar_t, typename acc_t>
__global__ void rotate_in_kernel(TileSpec spec, const scalar_t* __restrict__ feat, int64_t n_rows, int64_t C,
                                 const int64_t* __restrict__ idx, const scalar_t* __restrict__ wig,
                                 const scalar_t* __restrict__ mod, acc_t* __restrict__ tile) {
  const int lmax = spec.lmax;
  const int nmod = so2::num_mod(lmax, spec.mmax);
  const int64_t K = num_coeffs(lmax);
  SO2_GRID_STRIDE(t, spec.count * nmod * C) {
    const InSite st = in_site(spec, t, C, nmod, idx, n_rows);
    const scalar_t* xl = feat + (st.row * K + st.l * st.l) * C + st.c;
    const acc_t md = mod ? static_cast<acc_t>(mod[(st.e * nmod + st.q) * C + st.c]) : acc_t(1);
    for (int s = 0; s < num_signs(st.m); ++s) {
      const acc_t v = rotated_row<acc_t>(wig, st.e, lmax, st.l, st.l + (s ? -st.m : st.m), xl, C, st.valid);
      tile[tile_index(spec.count, C, lmax, st.m, st.p, s, st.l, st.c)] = v * md;
    }
  }
}

// Per (p, (m, l), c): a_s = (D_e x[idx[e]])_s; grad_mod = sum_s a_s ga_s; a_tile = mod a; ga *= mod.
template <typename scalar_t, typename acc_t>
__global__ void rotate_in_backward_kernel(TileSpec spec, const scalar_t* __restrict__ x, int64_t n_rows, int64_t C,
                                          const int64_t* __restrict__ idx, const scalar_t* __restrict__ wig,
                                          const scalar_t* __restrict__ mod, acc_t* __restrict__ a_tile,
                                          acc_t* __restrict__ ga_tile, scalar_t* __restrict__ grad_mod) {
  const int lmax = spec.lmax;
  const int nmod = so2::num_mod(lmax, spec.mmax);
  const int64_t K = num_coeffs(lmax);
  const bool need_a = a_tile != nullptr || grad_mod != nullptr;
  SO2_GRID_STRIDE(t, spec.count * nmod * C) {
    const InSite st = in_site(spec, t, C, nmod, idx, n_rows);
    const scalar_t* xl = x + (st.row * K + st.l * st.l) * C + st.c;
    const acc_t md = static_cast<acc_t>(mod[(st.e * nmod + st.q) * C + st.c]);
    acc_t gm = acc_t(0);
    for (int s = 0; s < num_signs(st.m); ++s) {
      const int64_t ti = tile_index(spec.count, C, lmax, st.m, st.p, s, st.l, st.c);
      const acc_t ga = ga_tile[ti];
      if (need_a) {
        const acc_t a = rotated_row<acc_t>(wig, st.e, lmax, st.l, st.l + (s ? -st.m : st.m), xl, C, st.valid);
        gm += a * ga;
        if (a_tile) a_tile[ti] = a * md;
      }
      ga_tile[ti] = ga * md;
    }
    if (grad_mod) grad_mod[(st.e * nmod + st.q) * C + st.c] = static_cast<scalar_t>(gm);
  }
}

// out[idx[e], k, c] += sum_{i: |m_i| <= mmax} D_e^l[i, j] tile[(p, |m_i|, s_i, l, c)],  k = (l, j).
// mode 0: idx == nullptr (rows are the edges themselves, written once);
// mode 1: atomicAdd;  mode 2: segmented over positions sorted by idx (deterministic).
template <typename scalar_t, typename acc_t>
__global__ void rotate_out_kernel(TileSpec spec, const acc_t* __restrict__ tile, int64_t C,
                                  const int64_t* __restrict__ idx, const scalar_t* __restrict__ wig,
                                  acc_t* __restrict__ out, int64_t n_rows, int mode) {
  const int lmax = spec.lmax, mmax = spec.mmax;
  const int64_t K = num_coeffs(lmax), P = wigner_size(lmax);
  SO2_GRID_STRIDE(t, spec.count * K * C) {
    const int64_t c = t % C;
    const int k = int((t / C) % K);
    const int64_t p = t / (C * K);
    const int l = so2::degree_of_row(k), j = k - l * l, n = 2 * l + 1, mtop = min(l, mmax);
    const int64_t e0 = edge_at(spec, p);
    const int64_t row = idx ? idx[e0] : e0;
    if (row < 0 || row >= n_rows) continue;
    acc_t acc = acc_t(0);
    auto add_edge = [&](int64_t q) {
      const int64_t e = q == p ? e0 : edge_at(spec, q);
      if (wig) {
        const scalar_t* Dl = wig + e * P + wigner_offset(l);
        for (int m = 0; m <= mtop; ++m)
          for (int s = 0; s < num_signs(m); ++s)
            acc += static_cast<acc_t>(Dl[(l + (s ? -m : m)) * n + j]) *
                   tile[tile_index(spec.count, C, lmax, m, q, s, l, c)];
      } else {
        const int mj = j - l, am = mj < 0 ? -mj : mj;
        if (am <= mmax) acc += tile[tile_index(spec.count, C, lmax, am, q, mj < 0 ? 1 : 0, l, c)];
      }
    };
    if (mode == 2) {
      // Segmented: only the first position of each destination run works, summing the run.
      auto key_at = [&](int64_t q) { return idx[edge_at(spec, q)]; };
      if (!segments::for_segment(p, spec.count, key_at, add_edge)) continue;
    } else {
      add_edge(p);
    }
    acc_t* dst = out + (row * K + k) * C + c;
    if (mode == 1)
      atomicAdd(dst, acc);
    else
      *dst += acc;
  }
}

template <typename T>
const T* cptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* mptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

#define SO2_DISPATCH(TYPE, NAME, ...) AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace

// ------------------------------------------------------------ CudaKernels

void CudaKernels::rotate_in(const TileSpec& spec, const at::Tensor& feat, const int64_t* idx, const at::Tensor& wigner,
                            const at::Tensor& mod, at::Tensor& tile) {
  const int64_t C = feat.size(2), n = spec.count * so2::num_mod(spec.lmax, spec.mmax) * C;
  SO2_DISPATCH(feat.scalar_type(), "so2_rotate_in_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    rotate_in_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        spec, feat.data_ptr<scalar_t>(), feat.size(0), C, idx, cptr<scalar_t>(wigner), cptr<scalar_t>(mod),
        tile.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void CudaKernels::rotate_in_backward(const TileSpec& spec, const at::Tensor& x, const int64_t* idx,
                                     const at::Tensor& wigner, const at::Tensor& mod, at::Tensor& a_tile,
                                     at::Tensor& ga_tile, at::Tensor& grad_mod) {
  const int64_t C = x.size(2), n = spec.count * so2::num_mod(spec.lmax, spec.mmax) * C;
  SO2_DISPATCH(x.scalar_type(), "so2_rotate_in_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    rotate_in_backward_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        spec, x.data_ptr<scalar_t>(), x.size(0), C, idx, cptr<scalar_t>(wigner), mod.data_ptr<scalar_t>(),
        mptr<acc_t>(a_tile), ga_tile.data_ptr<acc_t>(), mptr<scalar_t>(grad_mod));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void CudaKernels::rotate_out_add(const TileSpec& spec, const at::Tensor& tile, const int64_t* idx,
                                 const at::Tensor& wigner, at::Tensor& out, bool segmented) {
  const int64_t C = out.size(2), n = spec.count * num_coeffs(spec.lmax) * C;
  const int mode = idx == nullptr ? 0 : (segmented ? 2 : 1);
  // The Wigner blocks carry the input dtype; without them (so2_linear) any type will do.
  const at::ScalarType st = wigner.defined() ? wigner.scalar_type() : out.scalar_type();
  SO2_DISPATCH(st, "so2_rotate_out_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    rotate_out_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        spec, tile.data_ptr<acc_t>(), C, idx, cptr<scalar_t>(wigner), out.data_ptr<acc_t>(), out.size(0), mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void CudaKernels::wigner_grad(const TileSpec& spec, const at::Tensor& ga, const at::Tensor& x, const int64_t* src,
                              const at::Tensor& y, const at::Tensor& g, const int64_t* tgt, at::Tensor& grad_wigner) {
  if (spec.count == 0) return;
  TORCH_CHECK(spec.count < (int64_t(1) << 31), "so2 tiles (cuda): too many edges in one tile");
  SO2_DISPATCH(x.scalar_type(), "so2_wigner_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Frame = wgrad::TileRows<acc_t>;
    // rotate-in term (a = D x[src]): ga . x[src];  rotate-out term (out = D^T y): y . g[tgt].
    // A null ga / y: that side's frame is the identity (so2_frame_linear), no term.
    const wgrad::Term<scalar_t, Frame> t_in{Frame{cptr<acc_t>(ga), x.size(2), spec.count, spec.lmax, spec.mmax},
                                            ga.defined() ? x.data_ptr<scalar_t>() : nullptr, src, x.size(0)};
    const wgrad::Term<scalar_t, Frame> t_out{Frame{cptr<acc_t>(y), g.size(2), spec.count, spec.lmax, spec.mmax},
                                             y.defined() ? g.data_ptr<scalar_t>() : nullptr, tgt, g.size(0)};
    wgrad::wigner_grad_kernel<scalar_t, acc_t, Frame>
        <<<static_cast<unsigned>(spec.count), wgrad::kThreads, wgrad::smem_bytes<acc_t>(spec.lmax),
           c10::cuda::getCurrentCUDAStream()>>>(t_in, t_out, spec.lmax, false, spec.p0, spec.perm,
                                                 wgrad::slab_channels(), grad_wigner.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor CudaKernels::sort_by(const at::Tensor& key, int64_t n) {
  return segments::stable_order(key, n);  // stable device radix sort
}

}  // namespace so2ops
