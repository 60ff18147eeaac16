// Per-(node, channel) arithmetic of the fused grid stage of
// so2_tensor_product, shared by the CPU and CUDA kernels.
//
// One node n and channel h own nu circle functions f_k (k = 0..nu-1), given by
// their Fourier coefficients spec[k, s], s = 0..S-1, S = 2*mmax+1: column
// mmax is the constant, mmax+m the cos(m theta), mmax-m the sin(m theta)
// coefficient.  On the uniform angles theta_j = 2 pi j / grid:
//
//   p_0 = f_0,  p_k = p_{k-1} f_k,   g = sum_k c_k p_k,
//   out[s] = scale_s sum_j basis[j, s] g_j,  scale = 1/grid (s = mmax), 2/grid (else).
//
// Backward, with gg_j = dL/dg_j = sum_s basis[j, s] scale_s grad[s]:
//   dL/dc_k        = sum_j gg_j p_k(j)
//   q_{nu-1} = gg c_{nu-1},  q_k = gg c_k + q_{k+1} f_{k+1}      (q_k = dL/dp_k)
//   dL/df_k(j)     = q_k p_{k-1}(j)   (p_{-1} = 1)
//   dL/dspec[k, s] = sum_j basis[j, s] dL/df_k(j)
// so the grid values are recomputed per (n, h) and never stored: the kernels
// hold O(nu * S) accumulators per channel, nothing of grid size.
//
// W is a compile-time channel width, as in rotate.h: the CPU kernels run
// 16/4/1 adjacent channels together so the innermost loops vectorise; the CUDA
// kernels use W = 1 (one thread per (n, h)).  Accumulators are passed in by
// the caller (CPU: a stack array, CUDA: the thread's column of shared memory)
// with explicit strides; entry (k, s, w) of an accumulator lives at
// k * k_stride + s * s_stride + w.
//
// Loops over k run to the compile-time bound kGpMaxBodyOrder with an `if (k <
// nu)` guard, so that after unrolling the per-k scratch arrays have constant
// indices (registers, not local memory, on the GPU).
#pragma once

#include <math.h>

#include "layout.h"

// Full unrolling of the k loops matters on the GPU only (host compilers would
// warn about an unknown pragma).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define SO2_GP_UNROLL _Pragma("unroll")
#else
#define SO2_GP_UNROLL
#endif

namespace so2ops {

//: Largest body order nu (so2ops.ops.so2_tensor_product.MAX_BODY_ORDER).
constexpr int kGpMaxBodyOrder = 8;
//: Largest number of Fourier columns S = 2*mmax+1 (mmax <= lmax <= kLmaxSupported).
constexpr int kGpMaxSpectral = 2 * kLmaxSupported + 1;
//: Largest grid the op accepts (the Python wrapper's limit).
constexpr int kGpMaxGrid = 1 << 16;

SO2_HD constexpr int gp_spectral_size(int mmax) { return 2 * mmax + 1; }

//: basis[j, col]: the value of Fourier column `col` at theta_j, computed in
//: double exactly as the reference's grid_basis (theta = j * (2 pi / grid),
//: then cos / sin of m * theta) and rounded once to the accumulation type.
template <typename Acc>
SO2_HD SO2_INLINE Acc gp_basis_value(int j, int col, int mmax, int grid) {
  const int m = col - mmax;
  if (m == 0) return Acc(1);
  const double theta = double(j) * (2.0 * 3.14159265358979323846 / double(grid));
  return m > 0 ? Acc(cos(double(m) * theta)) : Acc(sin(double(-m) * theta));
}

//: Projection scale of column `col`: 1/grid for the constant, 2/grid else.
template <typename Acc>
SO2_HD SO2_INLINE Acc gp_scale(int col, int mmax, int grid) {
  return col == mmax ? Acc(1) / Acc(grid) : Acc(2) / Acc(grid);
}

//: f_k(theta_j) for W channels: f[w] = sum_s b[s] spec[k*ks + s*ss + w].
template <int W, typename Acc, typename T>
SO2_HD SO2_INLINE void gp_eval(const Acc* b, int S, const T* spec_k, long long ss, Acc* f) {
  for (int w = 0; w < W; ++w) f[w] = Acc(0);
  for (int s = 0; s < S; ++s) {
    const Acc bs = b[s];
    const T* row = spec_k + s * ss;
    for (int w = 0; w < W; ++w) f[w] += bs * Acc(row[w]);
  }
}

//: Forward of W channels of one node.
//:   spec: &spectral[n, 0, 0, h0], strides ks (factor) and ss (column);
//:   coef: &coeffs[n, 0, h0], stride cks (factor);
//:   basis: [grid][S] table of gp_basis_value;
//:   acc:   S x W accumulators at s * acc_ss + w; on return acc holds out[s]
//:          (scaled), ready to be stored.
template <int W, typename Acc, typename T>
SO2_HD void gp_forward(const T* spec, long long ks, long long ss, const T* coef, long long cks, int nu, int mmax,
                       int grid, const Acc* basis, Acc* acc, long long acc_ss) {
  const int S = gp_spectral_size(mmax);
  for (int s = 0; s < S; ++s)
    for (int w = 0; w < W; ++w) acc[s * acc_ss + w] = Acc(0);
  for (int j = 0; j < grid; ++j) {
    const Acc* b = basis + (long long)j * S;
    // p = 1 and g = 0 to start: 1 * f and 0 + c p are exact, so this equals p_0 = f_0, g = c_0 p_0
    Acc p[W], g[W], f[W];
    for (int w = 0; w < W; ++w) {
      p[w] = Acc(1);
      g[w] = Acc(0);
    }
SO2_GP_UNROLL
    for (int k = 0; k < kGpMaxBodyOrder; ++k) {
      if (k < nu) {
        gp_eval<W, Acc, T>(b, S, spec + k * ks, ss, f);
        const T* ck = coef + k * cks;
        for (int w = 0; w < W; ++w) {
          p[w] *= f[w];
          g[w] += Acc(ck[w]) * p[w];
        }
      }
    }
    for (int s = 0; s < S; ++s) {
      const Acc bs = b[s];
      Acc* a = acc + s * acc_ss;
      for (int w = 0; w < W; ++w) a[w] += bs * g[w];
    }
  }
  for (int s = 0; s < S; ++s) {
    const Acc sc = gp_scale<Acc>(s, mmax, grid);
    for (int w = 0; w < W; ++w) acc[s * acc_ss + w] *= sc;
  }
}

//: Backward of W channels of one node (strides as in gp_forward; grad: &grad[n, 0, h0]
//: with column stride gs).  Accumulates, after zeroing them,
//:   gspec (if non-null): nu x S x W at k * gks + s * gss + w,
//:   gcoef (if non-null): nu x W at k * gcks + w.
template <int W, typename Acc, typename T>
SO2_HD void gp_backward(const T* grad, long long gs, const T* spec, long long ks, long long ss, const T* coef,
                        long long cks, int nu, int mmax, int grid, const Acc* basis, Acc* gspec, long long gks,
                        long long gss, Acc* gcoef, long long gcks) {
  const int S = gp_spectral_size(mmax);
  if (gspec)
    for (int k = 0; k < nu; ++k)
      for (int s = 0; s < S; ++s)
        for (int w = 0; w < W; ++w) gspec[k * gks + s * gss + w] = Acc(0);
  if (gcoef)
    for (int k = 0; k < nu; ++k)
      for (int w = 0; w < W; ++w) gcoef[k * gcks + w] = Acc(0);
  if (!gspec && !gcoef) return;

  // The coefficients of this node, once (read every grid point otherwise).
  Acc c[kGpMaxBodyOrder][W];
SO2_GP_UNROLL
  for (int k = 0; k < kGpMaxBodyOrder; ++k)
    if (k < nu)
      for (int w = 0; w < W; ++w) c[k][w] = Acc(coef[k * cks + w]);

  for (int j = 0; j < grid; ++j) {
    const Acc* b = basis + (long long)j * S;
    // gg = dL/dg at theta_j
    Acc gg[W];
    for (int w = 0; w < W; ++w) gg[w] = Acc(0);
    for (int s = 0; s < S; ++s) {
      const Acc bs = b[s] * gp_scale<Acc>(s, mmax, grid);
      const T* row = grad + s * gs;
      for (int w = 0; w < W; ++w) gg[w] += bs * Acc(row[w]);
    }
    // recompute f_k and the running products p_k at theta_j
    Acc f[kGpMaxBodyOrder][W], p[kGpMaxBodyOrder][W];
SO2_GP_UNROLL
    for (int k = 0; k < kGpMaxBodyOrder; ++k) {
      if (k < nu) {
        gp_eval<W, Acc, T>(b, S, spec + k * ks, ss, f[k]);
        for (int w = 0; w < W; ++w) p[k][w] = (k == 0 ? Acc(1) : p[k > 0 ? k - 1 : 0][w]) * f[k][w];
      }
    }
    if (gcoef) {
SO2_GP_UNROLL
      for (int k = 0; k < kGpMaxBodyOrder; ++k)
        if (k < nu)
          for (int w = 0; w < W; ++w) gcoef[k * gcks + w] += gg[w] * p[k][w];
    }
    if (gspec) {
      Acc q[W];
      for (int w = 0; w < W; ++w) q[w] = Acc(0);
SO2_GP_UNROLL
      for (int kk = kGpMaxBodyOrder - 1; kk >= 0; --kk) {
        if (kk < nu) {
          // clamped indices: the unrolled code must not name f[kMax] or p[-1],
          // even where kk == nu - 1 / kk == 0 makes the term unused
          const int next = kk + 1 < kGpMaxBodyOrder ? kk + 1 : kk, prev = kk > 0 ? kk - 1 : 0;
          Acc df[W];
          for (int w = 0; w < W; ++w) {
            q[w] = kk == nu - 1 ? gg[w] * c[kk][w] : gg[w] * c[kk][w] + q[w] * f[next][w];
            df[w] = kk == 0 ? q[w] : q[w] * p[prev][w];
          }
          for (int s = 0; s < S; ++s) {
            const Acc bs = b[s];
            Acc* a = gspec + kk * gks + s * gss;
            for (int w = 0; w < W; ++w) a[w] += bs * df[w];
          }
        }
      }
    }
  }
}

}  // namespace so2ops
