// Forward-mode duals (so2ops/dual.h) and the edge_wigner backward built on
// them (edge_point_backward) against central finite differences.
#include <cmath>
#include <random>
#include <vector>

#include "so2ops/dual.h"
#include "so2ops/edge_wigner.h"
#include "test_util.h"

using namespace so2ops;
using D3 = Dual<double, 3>;

// f(v) = sum_k sum_{l,m,m'} grad[l][m,m'] Y_lm(R(v) p_k) pinv[k, l, m'] (the
// scalar whose v-gradient edge_wigner_backward computes), in plain double.
static double objective(const double v[3], const std::vector<double>& pts, const std::vector<double>& pinv,
                        const std::vector<double>& grad, int K, int lmax) {
  static const ShNorms<double> norms = make_sh_norms<double>();
  const int nc = num_coeffs(lmax);
  double R[9];
  edge_vec_frame(v, R);
  std::vector<double> ysh(nc);
  double f = 0;
  for (int k = 0; k < K; ++k) {
    edge_point_sh(R, &pts[3 * k], lmax, norms, ysh.data());
    for (int l = 0; l <= lmax; ++l) {
      const int n = 2 * l + 1;
      for (int mi = 0; mi < n; ++mi)
        for (int mpi = 0; mpi < n; ++mpi)
          f += grad[wigner_offset(l) + mi * n + mpi] * ysh[l * l + mi] * pinv[k * nc + l * l + mpi];
    }
  }
  return f;
}

int main() {
  // elementary rules
  {
    const D3 x = D3::variable(0.7, 0), y = D3::variable(-1.3, 1), z = D3::variable(2.1, 2);
    const D3 f = (x * y - z / x + 2.0 * so2_sqrt(z * z + 1.0)) / (1.0 - y);
    auto fv = [](double a, double b, double c) { return (a * b - c / a + 2 * std::sqrt(c * c + 1)) / (1 - b); };
    const double h = 1e-6, a = 0.7, b = -1.3, c = 2.1;
    CHECK_CLOSE(f.v, fv(a, b, c), 1e-15);
    CHECK_CLOSE(f.d[0], (fv(a + h, b, c) - fv(a - h, b, c)) / (2 * h), 1e-8);
    CHECK_CLOSE(f.d[1], (fv(a, b + h, c) - fv(a, b - h, c)) / (2 * h), 1e-8);
    CHECK_CLOSE(f.d[2], (fv(a, b, c + h) - fv(a, b, c - h)) / (2 * h), 1e-8);
  }
  // edge_point_backward vs finite differences of the objective, random
  // tables (the identity holds for any pinv / grad).
  std::mt19937 gen(7);
  std::normal_distribution<double> nd;
  const ShNorms<double> norms = make_sh_norms<double>();
  for (int lmax = 0; lmax <= kLmaxSupported; ++lmax) {
    const int K = 3 * lmax + 3, nc = num_coeffs(lmax);
    std::vector<double> pts(3 * K), pinv(K * nc), grad(wigner_size(lmax));
    for (int k = 0; k < K; ++k) {
      double p[3] = {nd(gen), nd(gen), nd(gen)};
      const double r = std::sqrt(p[0] * p[0] + p[1] * p[1] + p[2] * p[2]);
      for (int i = 0; i < 3; ++i) pts[3 * k + i] = p[i] / r;
    }
    for (double& x : pinv) x = nd(gen);
    for (double& x : grad) x = nd(gen);
    // stay 1e-3 away from the equator: the frame (not the ops using it) jumps there
    for (const auto& d : so2test::test_directions(20, 99 + lmax)) {
      if (std::fabs(d[1]) < 1e-3) continue;
      const double v[3] = {2 * d[0], 2 * d[1], 2 * d[2]};
      double g[3] = {0, 0, 0};
      for (int k = 0; k < K; ++k) edge_point_backward(v, &pts[3 * k], &pinv[k * nc], grad.data(), lmax, norms, g);
      const double h = 1e-6;
      for (int i = 0; i < 3; ++i) {
        double vp[3] = {v[0], v[1], v[2]}, vm[3] = {v[0], v[1], v[2]};
        vp[i] += h;
        vm[i] -= h;
        const double fd = (objective(vp, pts, pinv, grad, K, lmax) - objective(vm, pts, pinv, grad, K, lmax)) / (2 * h);
        // FD truncation + round-off (objective ~ 1e2) bound the accuracy to ~1e-7
        CHECK_CLOSE(g[i], fd, 1e-5 * (1 + std::fabs(fd)));
      }
    }
  }
  return so2test::finish("test_dual");
}
