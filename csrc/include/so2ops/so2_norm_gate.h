// Per-row arithmetic of so2_layer_norm and so2_gate, shared by the CPU and
// CUDA kernels (docs/math.md, sections 8 and 9).
//
// so2_layer_norm, one row n of x[N, (lmax+1)^2, C] (Acc: accumulation type):
//   degree 0:  xhat = (x0 - mean_c x0) * rstd,  rstd = 1 / sqrt(var_c x0 + eps),
//              out0 = xhat * w[0] + b
//   l > 0:     out = x * r_g * w[l],  r_g = 1 / sqrt(ms_g + eps),
//              ms_g = sum over the degrees l of group g of alpha_l * S_l,
//              S_l = sum_{m,c} x_{l,m,c}^2
//   groups:    "joint": one group (all l > 0), alpha_l = 1 / (lmax (2l+1) C);
//              "separate": one group per degree,  alpha_l = 1 / ((2l+1) C).
// Backward, g = dL/dout:
//   degree 0:  gh = g0 * w[0];  gx0 = rstd (gh - mean_c gh - xhat mean_c(gh xhat))
//              gw[0] += g0 * xhat,  gb += g0
//   l > 0:     A_g = sum over group g of g * w[l] * x  (all rows m, channels c)
//              gx = r_g g w[l] - r_g^3 alpha_l A_g x
//              gw[l] += r_g sum_m g * x
//
// so2_gate, one row n (z: the gate logits [lmax, C], s = sigmoid):
//   out0 = x0 s(x0),        gx0 = g0 (s(x0) + x0 s(x0) (1 - s(x0)))
//   out_l = x_l s(z_{l-1}), gx_l = g_l s(z_{l-1}),  gz_{l-1} = s (1 - s) sum_m g_l x_l
#pragma once

#include <math.h>

#include "layout.h"

namespace so2ops {

//: Degree l of coefficient row k (l*l <= k < (l+1)^2).
SO2_HD SO2_INLINE int degree_of_row(int k) {
  int l = 0;
  while ((l + 1) * (l + 1) <= k) ++l;
  return l;
}

//: RMS group of degree l > 0: 0 for all degrees ("joint"), l - 1 ("separate").
SO2_HD SO2_INLINE int norm_group(int l, bool joint) { return joint ? 0 : l - 1; }

//: Number of RMS groups of degrees l > 0.
SO2_HD SO2_INLINE int norm_groups(int lmax, bool joint) { return lmax == 0 ? 0 : (joint ? 1 : lmax); }

//: alpha_l: weight of degree l's sum of squares S_l in its group's mean square.
template <typename Acc>
SO2_HD SO2_INLINE Acc norm_degree_weight(int l, int lmax, bool joint, long long C) {
  return Acc(1) / (Acc(2 * l + 1) * Acc(C) * Acc(joint ? lmax : 1));
}

template <typename Acc>
SO2_HD SO2_INLINE Acc norm_rsqrt(Acc v) {
  return Acc(1) / sqrt(v);
}

//: Gradient of degree 0 (layer norm over channels) w.r.t. x0 at one channel.
//: gh = g0 * w[0], mean_gh = mean_c gh, mean_ghx = mean_c gh * xhat.
template <typename Acc>
SO2_HD SO2_INLINE Acc norm_scalar_grad_x(Acc gh, Acc xhat, Acc mean_gh, Acc mean_ghx, Acc rstd) {
  return rstd * (gh - mean_gh - xhat * mean_ghx);
}

//: Gradient of a degree l > 0 entry w.r.t. x: r g w - coef x with coef = r^3 alpha_l A_g.
template <typename Acc>
SO2_HD SO2_INLINE Acc norm_vector_grad_x(Acc g, Acc w, Acc x, Acc r, Acc coef) {
  return r * g * w - coef * x;
}

template <typename Acc>
SO2_HD SO2_INLINE Acc gate_sigmoid(Acc z) {
  return Acc(1) / (Acc(1) + exp(-z));
}

//: d silu(x) / dx = s + x s (1 - s), s = sigmoid(x).
template <typename Acc>
SO2_HD SO2_INLINE Acc gate_silu_grad(Acc x) {
  const Acc s = gate_sigmoid(x);
  return s + x * s * (Acc(1) - s);
}

}  // namespace so2ops
