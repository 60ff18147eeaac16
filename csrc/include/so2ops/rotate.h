// Per-(edge, degree, channel) arithmetic of rotate, shared by the CPU and
// CUDA kernels.
//
// Forward:   out[e, l-rows, c] = D^l_e x[src, l-rows, c]   (D^T if inverse).
// grad_x:    grad_x[src, l-rows, c] += D^T g[e, l-rows, c] (D if inverse),
//            i.e. the forward with the opposite transpose flag.
// grad_wig:  non-inverse: dL/dD[m, m'] = sum_c g[e, m, c] x[src, m', c];
//            inverse:     dL/dD[m, m'] = sum_c g[e, m', c] x[src, m, c]
//            (out[m] = sum_m' D[m', m] x[m'] reads D[a, b] at out row b, x
//            row a): see wgrad_rows().
#pragma once

#include "layout.h"

namespace so2ops {

//: Apply one (2l+1)x(2l+1) block (row-major `d`, transposed when `transpose`)
//: to W adjacent channels: for each output row m,
//:   emit(m, w, sum_m' D(m, m') x[m' * x_stride + w]),  0 <= w < W.
//
// W is a compile-time width: the CPU kernels use 16/4/1-channel groups so the
// innermost loop vectorises; the CUDA kernels use W = 1 (one thread per
// channel).  emit decides between store, accumulate and atomicAdd.
template <int W, typename Acc, typename TD, typename TX, typename Emit>
SO2_HD SO2_INLINE void rotate_block(const TD* d, int n, bool transpose, const TX* x, long long x_stride,
                                    Emit&& emit) {
  for (int m = 0; m < n; ++m) {
    Acc acc[W];
    for (int w = 0; w < W; ++w) acc[w] = Acc(0);
    for (int mp = 0; mp < n; ++mp) {
      const Acc dm = Acc(transpose ? d[mp * n + m] : d[m * n + mp]);
      const TX* xr = x + mp * x_stride;
      for (int w = 0; w < W; ++w) acc[w] += dm * Acc(xr[w]);
    }
    for (int w = 0; w < W; ++w) emit(m, w, acc[w]);
  }
}

//: Which rows pair up in the Wigner gradient entry (m, mp) of a block:
//: dL/dD[m, mp] = sum_c g[g_row, c] x[x_row, c] (rows within the degree block).
SO2_HD SO2_INLINE void wgrad_rows(bool inverse, int m, int mp, int& g_row, int& x_row) {
  g_row = inverse ? mp : m;
  x_row = inverse ? m : mp;
}

}  // namespace so2ops
