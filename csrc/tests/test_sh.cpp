// Spherical harmonics (so2ops/sh.h): known values, norms, parity, and the
// addition theorem, which pins the basis up to an orthogonal change per l.
#include <cmath>
#include <vector>

#include "so2ops/layout.h"
#include "so2ops/sh.h"
#include "test_util.h"

using namespace so2ops;

static std::vector<double> sh(const std::array<double, 3>& u, int lmax) {
  static const ShNorms<double> norms = make_sh_norms<double>();
  std::vector<double> y(num_coeffs(lmax), NAN);
  spherical_harmonics(u[0], u[1], u[2], lmax, norms, [&](int l, int m, double v) { y[coeff_index(l, m)] = v; });
  return y;
}

// Legendre P_l(t) by the three-term recurrence.
static double legendre(int l, double t) {
  double p0 = 1, p1 = t;
  if (l == 0) return p0;
  for (int k = 2; k <= l; ++k) {
    const double p2 = ((2 * k - 1) * t * p1 - (k - 1) * p0) / k;
    p0 = p1;
    p1 = p2;
  }
  return p1;
}

int main() {
  const int L = kLmaxSupported;
  // Normalisation constants: N_0^0 = 1, N_1^1 = sqrt(3), N_2^2 = sqrt(15)/2 ...
  CHECK_CLOSE(sh_norm_f64(0, 0), 1.0, 0);
  CHECK_CLOSE(sh_norm_f64(1, 0), std::sqrt(3.0), 1e-16);
  CHECK_CLOSE(sh_norm_f64(1, 1), std::sqrt(3.0), 1e-16);
  CHECK_CLOSE(sh_norm_f64(2, 2), std::sqrt(5.0 / 12.0), 1e-15);  // sqrt(2 * 5 * 0!/4!)

  const auto dirs = so2test::test_directions(200);
  for (const auto& u : dirs) {
    const auto y = sh(u, L);
    // every coefficient written exactly once and finite
    for (double v : y) CHECK(std::isfinite(v));
    // l = 1 in e3nn's order (m = -1, 0, 1) is sqrt(3) (x, y, z)
    for (int i = 0; i < 3; ++i) CHECK_CLOSE(y[1 + i], std::sqrt(3.0) * u[i], 1e-15);
    // l = 2, m = 0: sqrt(5) (3 y^2 - 1) / 2
    CHECK_CLOSE(y[coeff_index(2, 0)], std::sqrt(5.0) * (3 * u[1] * u[1] - 1) / 2, 1e-14);
    // component normalisation and parity
    const std::array<double, 3> minus_u = {-u[0], -u[1], -u[2]};
    const auto ym = sh(minus_u, L);
    for (int l = 0; l <= L; ++l) {
      double s = 0;
      for (int m = -l; m <= l; ++m) {
        s += y[coeff_index(l, m)] * y[coeff_index(l, m)];
        CHECK_CLOSE(ym[coeff_index(l, m)], (l % 2 ? -1.0 : 1.0) * y[coeff_index(l, m)], 1e-12);
      }
      CHECK_CLOSE(s, 2.0 * l + 1, 1e-11);
    }
  }
  // addition theorem: sum_m Y_lm(a) Y_lm(b) = (2l+1) P_l(a . b)
  for (size_t i = 0; i + 1 < dirs.size(); ++i) {
    const auto &a = dirs[i], &b = dirs[i + 1];
    const auto ya = sh(a, L), yb = sh(b, L);
    const double t = a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    for (int l = 0; l <= L; ++l) {
      double s = 0;
      for (int m = -l; m <= l; ++m) s += ya[coeff_index(l, m)] * yb[coeff_index(l, m)];
      CHECK_CLOSE(s, (2 * l + 1) * legendre(l, t), 1e-11);
    }
  }
  // float evaluation agrees with double to float precision
  static const ShNorms<float> nf = make_sh_norms<float>();
  for (const auto& u : dirs) {
    const auto y = sh(u, L);
    spherical_harmonics(float(u[0]), float(u[1]), float(u[2]), L, nf, [&](int l, int m, float v) {
      CHECK_CLOSE(double(v), y[coeff_index(l, m)], 2e-4 * (2 * l + 1));
    });
  }
  return so2test::finish("test_sh");
}
