// Edge frames R(u) with R u = +y: the two-chart construction of
// so2ops/reference/frames.py, templated on the scalar (T or Dual<T, 3>).
#pragma once

#include "dual.h"
#include "layout.h"

namespace so2ops {

//: u = v / |v| for v[3] (|v| > 0 is validated by the caller).
template <typename S>
SO2_HD SO2_INLINE void normalize3(const S v[3], S u[3]) {
  const S n = so2_sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  u[0] = v[0] / n;
  u[1] = v[1] / n;
  u[2] = v[2] / n;
}

//: Frame rotation R (row-major 3x3) of the unit vector u, R u = (0, 1, 0).
//
// u_y >= 0: R = c I + [w]_x + w w^T / (1 + c) with w = u x y, c = u_y;
// u_y <  0: the same for F u (F = diag(-1, -1, 1), a half turn about z),
// times F.  1 + c >= 1 in both charts, so nothing small is divided by.  The
// chart is picked from the value only: tangents flow within one chart, which
// is what autograd does through the reference's torch.where.
template <typename S>
SO2_HD SO2_INLINE void edge_frame(const S u[3], S R[9]) {
  using T = real_t<S>;
  const T sign = value_of(u[1]) < T(0) ? T(-1) : T(1);
  const S a = u[0] * sign, c = u[1] * sign, b = u[2];
  const S inv = T(1) / (T(1) + c);
  const S ab = -a * b * inv;
  R[0] = (c + b * b * inv) * sign;
  R[1] = -a * sign;
  R[2] = ab;
  R[3] = a * sign;
  R[4] = c * sign;
  R[5] = b;
  R[6] = ab * sign;
  R[7] = -b * sign;
  R[8] = c + a * a * inv;
}

//: q = R p for a 3x3 row-major R and a constant point p.
template <typename S, typename P>
SO2_HD SO2_INLINE void rotate_point(const S R[9], const P p[3], S q[3]) {
  using T = real_t<S>;
  const T p0 = T(p[0]), p1 = T(p[1]), p2 = T(p[2]);
  for (int i = 0; i < 3; ++i) q[i] = R[3 * i] * p0 + R[3 * i + 1] * p1 + R[3 * i + 2] * p2;
}

}  // namespace so2ops
