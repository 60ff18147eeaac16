// Per-edge math of edge_wigner, shared by the CPU and CUDA kernels.
//
//   u = v / |v|,  R = edge_frame(u),  q_k = R p_k   (K fixed sample points),
//   D^l[m, m'] = sum_k Y^l_m(q_k) pinv[k, l*l + m'].
//
// The forward evaluates the harmonics of each rotated point once (callers
// store them, K x (lmax+1)^2, and contract with pinv).  The backward needs no
// such storage: for one point k it forms
//   G_k[l, m] = sum_m' grad[l][m, m'] pinv[k, l*l + m']
// on the fly and accumulates sum_{l,m} G_k[l, m] dY_{l,m}(q_k)/dv, with the
// derivative carried forward from v by Dual<T, 3>.
#pragma once

#include "dual.h"
#include "frames.h"
#include "layout.h"
#include "sh.h"

namespace so2ops {

//: Frame R(v / |v|) of an edge vector v[3] (any scalar: T or Dual<T, 3>).
template <typename S>
SO2_HD SO2_INLINE void edge_vec_frame(const S v[3], S R[9]) {
  S u[3];
  normalize3(v, u);
  edge_frame(u, R);
}

//: ysh[c] = Y_c(R p) for c < (lmax+1)^2 (l-major rows of so2ops.layout).
template <typename T, typename P>
SO2_HD SO2_INLINE void edge_point_sh(const T R[9], const P* p, int lmax, const ShNorms<T>& norms,
                                     T* ysh) {
  T q[3];
  rotate_point(R, p, q);
  spherical_harmonics(q[0], q[1], q[2], lmax, norms,
                      [&](int l, int m, const T& y) { ysh[coeff_index(l, m)] = y; });
}

//: One Wigner entry D^l[mi - l, mpi - l] from the stored harmonics:
//: sum_k ysh[k * ld_y + l*l + mi] * pinv[k * ld_p + l*l + mpi].
template <typename Acc, typename TY, typename TP>
SO2_HD SO2_INLINE Acc wigner_entry(const TY* ysh, int ld_y, const TP* pinv, int ld_p, int num_points,
                                   int l, int mi, int mpi) {
  const int r = l * l + mi, s = l * l + mpi;
  Acc acc = Acc(0);
  for (int k = 0; k < num_points; ++k) acc += Acc(ysh[k * ld_y + r]) * Acc(pinv[k * ld_p + s]);
  return acc;
}

//: Backward contribution of sample point k:
//: g[i] += sum_{l, m} G_k[l, m] dY_{l,m}(R(v) p_k) / dv_i.
//
// v: the edge vector (real), p: point k, pinv_k: row k of pinv
// ((lmax+1)^2 entries), grad: the edge's packed gradient row
// (wigner_size(lmax) entries, any type convertible to T).
template <typename T, typename P, typename TP, typename TG>
SO2_HD SO2_INLINE void edge_point_backward(const T v[3], const P* p, const TP* pinv_k, const TG* grad,
                                           int lmax, const ShNorms<T>& norms, T g[3]) {
  using D3 = Dual<T, 3>;
  D3 vd[3], R[9], q[3];
  for (int i = 0; i < 3; ++i) vd[i] = D3::variable(v[i], i);
  edge_vec_frame(vd, R);
  rotate_point(R, p, q);
  T g0 = T(0), g1 = T(0), g2 = T(0);
  spherical_harmonics(q[0], q[1], q[2], lmax, norms, [&](int l, int m, const D3& y) {
    const int n = 2 * l + 1;
    const TG* grow = grad + wigner_offset(l) + (m + l) * n;  // grad[l][m, :]
    const TP* b = pinv_k + l * l;                               // pinv[k, l, :]
    T gk = T(0);
    for (int mp = 0; mp < n; ++mp) gk += T(grow[mp]) * T(b[mp]);
    g0 += gk * y.d[0];
    g1 += gk * y.d[1];
    g2 += gk * y.d[2];
  });
  g[0] += g0;
  g[1] += g1;
  g[2] += g2;
}

}  // namespace so2ops
