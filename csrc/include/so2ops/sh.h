// Real spherical harmonics in e3nn's basis (polar axis +y), templated on the
// scalar so the same code runs on float, double and Dual<T, 3>.
//
// Mirrors so2ops/reference/spherical_harmonics.py operation for operation
// (same recurrences, same association order), so the float results agree
// with the reference to the last few ulps:
//
//   (z + i x)^m = C_m + i S_m,   Q_m^m = (2m-1)!!,   Q_{m+1}^m = (2m+1) y Q_m^m,
//   Q_l^m = ((2l-1) y Q_{l-1}^m - (l+m-1) Q_{l-2}^m) / (l-m),
//   Y_{l,0} = N_l^0 Q_l^0,  Y_{l,+m} = N_l^m Q_l^m C_m,  Y_{l,-m} = N_l^m Q_l^m S_m,
//   N_l^m = sqrt((2l+1) (l-m)!/(l+m)!)  (times sqrt(2) for m > 0).
#pragma once

#include <math.h>

#include "dual.h"
#include "layout.h"

namespace so2ops {

//: Normalisation constants N_l^m (m >= 0) at sh_norm_index(l, m), passed to
//: kernels by value (a CUDA kernel parameter: no constant-memory symbol to
//: manage, and the same struct serves the CPU code).
template <typename T>
struct ShNorms {
  T v[num_sh_norms(kLmaxSupported)];
  SO2_HD SO2_INLINE T operator()(int l, int m) const { return v[sh_norm_index(l, m)]; }
};

//: N_l^m in double, bit-identical to the reference's Python computation:
//: the factorials up to 16! are exact in double and a single correctly
//: rounded division and square root follow, as in Python's int/int and sqrt.
inline double sh_norm_f64(int l, int m) {
  double num = double(2 * l + 1), den = 1.0;
  for (int k = 2; k <= l - m; ++k) num *= double(k);
  for (int k = 2; k <= l + m; ++k) den *= double(k);
  const double f = num / den;
  return sqrt(m == 0 ? f : 2.0 * f);
}

//: The table for every degree up to kLmaxSupported, rounded once to T.
template <typename T>
inline ShNorms<T> make_sh_norms() {
  ShNorms<T> n{};
  for (int l = 0; l <= kLmaxSupported; ++l)
    for (int m = 0; m <= l; ++m) n.v[sh_norm_index(l, m)] = T(sh_norm_f64(l, m));
  return n;
}

//: Evaluate Y_{l,m}(x, y, z) for 0 <= l <= lmax and call emit(l, m, value)
//: once per coefficient (m from -l to l, in m-major order: all l for m = 0,
//: then the pairs (l, +-1), ...).  (x, y, z) must be a unit vector: the
//: harmonics are evaluated as polynomials, not renormalised.
//
// S is float, double or Dual<T, N>; norms are in the real type T.
template <typename S, typename T, typename Emit>
SO2_HD SO2_INLINE void spherical_harmonics(const S& x, const S& y, const S& z, int lmax,
                                           const ShNorms<T>& norms, Emit&& emit) {
  S cm = S(T(1)), sm = S(T(0)), q_mm = S(T(1));
  for (int m = 0; m <= lmax; ++m) {
    if (m > 0) {
      const S c_next = z * cm - x * sm;
      const S s_next = x * cm + z * sm;
      cm = c_next;
      sm = s_next;
      q_mm = q_mm * T(2 * m - 1);
    }
    S q_prev = S(T(0)), q_cur = q_mm;
    for (int l = m; l <= lmax; ++l) {
      if (l == m + 1) {
        q_prev = q_cur;
        q_cur = T(2 * m + 1) * y * q_cur;
      } else if (l > m + 1) {
        const S q_next = (T(2 * l - 1) * y * q_cur - T(l + m - 1) * q_prev) / T(l - m);
        q_prev = q_cur;
        q_cur = q_next;
      }
      const T n = norms(l, m);
      if (m == 0) {
        emit(l, 0, n * q_cur);
      } else {
        const S nq = n * q_cur;
        emit(l, m, nq * cm);
        emit(l, -m, nq * sm);
      }
    }
  }
}

}  // namespace so2ops
