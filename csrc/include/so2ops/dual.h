// A tiny forward-mode dual number: value + N tangents.
//
// The edge_wigner backward runs the same templated per-edge code as the
// forward with Dual<T, 3> in place of T, seeded with d/dv_x, d/dv_y, d/dv_z,
// so the derivative code can never drift from the forward formula.  Only the
// operations that code uses are provided (+ - * /, sqrt, comparisons go
// through value_of()).
#pragma once

#include <math.h>

#include "layout.h"

namespace so2ops {

SO2_HD SO2_INLINE float so2_sqrt(float x) { return ::sqrtf(x); }
SO2_HD SO2_INLINE double so2_sqrt(double x) { return ::sqrt(x); }

template <typename T, int N>
struct Dual {
  T v;     // value
  T d[N];  // tangents

  SO2_HD Dual() : v(T(0)) {
    for (int i = 0; i < N; ++i) d[i] = T(0);
  }
  // A constant: every tangent zero.  Implicit so that mixed expressions with
  // the real type read like the plain formula.
  SO2_HD Dual(T value) : v(value) {
    for (int i = 0; i < N; ++i) d[i] = T(0);
  }
  // The i-th independent variable.
  SO2_HD static Dual variable(T value, int i) {
    Dual r(value);
    r.d[i] = T(1);
    return r;
  }
};

// ---------------------------------------------------------------- traits
template <typename S>
struct real_of {
  using type = S;
};
template <typename T, int N>
struct real_of<Dual<T, N>> {
  using type = T;
};
template <typename S>
using real_t = typename real_of<S>::type;

template <typename T>
SO2_HD SO2_INLINE T value_of(T x) { return x; }
template <typename T, int N>
SO2_HD SO2_INLINE T value_of(const Dual<T, N>& x) { return x.v; }

// ---------------------------------------------------------------- arithmetic
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator-(const Dual<T, N>& a) {
  Dual<T, N> r;
  r.v = -a.v;
  for (int i = 0; i < N; ++i) r.d[i] = -a.d[i];
  return r;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator+(const Dual<T, N>& a, const Dual<T, N>& b) {
  Dual<T, N> r;
  r.v = a.v + b.v;
  for (int i = 0; i < N; ++i) r.d[i] = a.d[i] + b.d[i];
  return r;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator-(const Dual<T, N>& a, const Dual<T, N>& b) {
  Dual<T, N> r;
  r.v = a.v - b.v;
  for (int i = 0; i < N; ++i) r.d[i] = a.d[i] - b.d[i];
  return r;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator*(const Dual<T, N>& a, const Dual<T, N>& b) {
  Dual<T, N> r;
  r.v = a.v * b.v;
  for (int i = 0; i < N; ++i) r.d[i] = a.d[i] * b.v + a.v * b.d[i];
  return r;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator/(const Dual<T, N>& a, const Dual<T, N>& b) {
  Dual<T, N> r;
  r.v = a.v / b.v;
  // (a/b)' = (a' - (a/b) b') / b
  for (int i = 0; i < N; ++i) r.d[i] = (a.d[i] - r.v * b.d[i]) / b.v;
  return r;
}
// Mixed with a real constant (cheaper than promoting the constant).
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator+(const Dual<T, N>& a, T b) {
  Dual<T, N> r = a;
  r.v = a.v + b;
  return r;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator+(T a, const Dual<T, N>& b) {
  return b + a;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator-(const Dual<T, N>& a, T b) {
  Dual<T, N> r = a;
  r.v = a.v - b;
  return r;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator-(T a, const Dual<T, N>& b) {
  Dual<T, N> r = -b;
  r.v = a - b.v;
  return r;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator*(const Dual<T, N>& a, T b) {
  Dual<T, N> r;
  r.v = a.v * b;
  for (int i = 0; i < N; ++i) r.d[i] = a.d[i] * b;
  return r;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator*(T a, const Dual<T, N>& b) {
  Dual<T, N> r;
  r.v = a * b.v;
  for (int i = 0; i < N; ++i) r.d[i] = a * b.d[i];
  return r;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator/(const Dual<T, N>& a, T b) {
  Dual<T, N> r;
  r.v = a.v / b;
  for (int i = 0; i < N; ++i) r.d[i] = a.d[i] / b;
  return r;
}
template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> operator/(T a, const Dual<T, N>& b) {
  Dual<T, N> r;
  r.v = a / b.v;
  // (a/b)' = -(a/b) b' / b
  for (int i = 0; i < N; ++i) r.d[i] = -r.v * b.d[i] / b.v;
  return r;
}

template <typename T, int N>
SO2_HD SO2_INLINE Dual<T, N> so2_sqrt(const Dual<T, N>& a) {
  Dual<T, N> r;
  r.v = so2_sqrt(a.v);
  const T half_inv = T(0.5) / r.v;  // d sqrt(a) = da / (2 sqrt(a))
  for (int i = 0; i < N; ++i) r.d[i] = a.d[i] * half_inv;
  return r;
}

}  // namespace so2ops
