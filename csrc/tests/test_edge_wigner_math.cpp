// The whole edge_wigner construction (so2ops/edge_wigner.h) with tables
// built here like so2ops/wigner_tables.py: Fibonacci points and the
// least-squares pseudo-inverse.  Checks D^l orthogonal, D^l Y^l(u) = Y^l(+y),
// and D = I for u = +y.
#include <cmath>
#include <vector>

#include "so2ops/edge_wigner.h"
#include "test_util.h"

using namespace so2ops;

// Solve A X = B (A n x n, B n x r, row-major) by Gauss-Jordan with partial pivoting.
static void solve(std::vector<double> A, std::vector<double>& B, int n, int r) {
  for (int c = 0; c < n; ++c) {
    int piv = c;
    for (int i = c + 1; i < n; ++i)
      if (std::fabs(A[i * n + c]) > std::fabs(A[piv * n + c])) piv = i;
    for (int j = 0; j < n; ++j) std::swap(A[c * n + j], A[piv * n + j]);
    for (int j = 0; j < r; ++j) std::swap(B[c * r + j], B[piv * r + j]);
    for (int i = 0; i < n; ++i) {
      if (i == c) continue;
      const double f = A[i * n + c] / A[c * n + c];
      for (int j = 0; j < n; ++j) A[i * n + j] -= f * A[c * n + j];
      for (int j = 0; j < r; ++j) B[i * r + j] -= f * B[c * r + j];
    }
  }
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < r; ++j) B[i * r + j] /= A[i * n + i];
}

int main() {
  const ShNorms<double> norms = make_sh_norms<double>();
  for (int lmax = 0; lmax <= kLmaxSupported; ++lmax) {
    const int K = 3 * lmax + 3, nc = num_coeffs(lmax);
    // Fibonacci sphere, as in wigner_tables._tables_f64
    std::vector<double> pts(3 * K);
    for (int k = 0; k < K; ++k) {
      const double i = k + 0.5, y = 1.0 - 2.0 * i / K, r = std::sqrt(std::fmax(0.0, 1 - y * y));
      const double phi = M_PI * (3.0 - std::sqrt(5.0)) * i;
      pts[3 * k] = r * std::sin(phi);
      pts[3 * k + 1] = y;
      pts[3 * k + 2] = r * std::cos(phi);
    }
    std::vector<double> ys(K * nc);  // Y(p_k)
    const double I[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    for (int k = 0; k < K; ++k) edge_point_sh(I, &pts[3 * k], lmax, norms, &ys[k * nc]);
    // pinv[k, l, :] = rows of A^T (A A^T)^{-1}, A = Y_l^T (n x K)
    std::vector<double> pinv(K * nc);
    for (int l = 0; l <= lmax; ++l) {
      const int n = 2 * l + 1;
      std::vector<double> gram(n * n, 0.0), rhs(n * K);
      for (int a = 0; a < n; ++a)
        for (int b = 0; b < n; ++b)
          for (int k = 0; k < K; ++k) gram[a * n + b] += ys[k * nc + l * l + a] * ys[k * nc + l * l + b];
      for (int a = 0; a < n; ++a)
        for (int k = 0; k < K; ++k) rhs[a * K + k] = ys[k * nc + l * l + a];
      solve(gram, rhs, n, K);  // rhs = (A A^T)^{-1} A
      for (int k = 0; k < K; ++k)
        for (int a = 0; a < n; ++a) pinv[k * nc + l * l + a] = rhs[a * K + k];
    }
    for (const auto& d : so2test::test_directions(30, 5 + lmax)) {
      const double v[3] = {0.3 * d[0], 0.3 * d[1], 0.3 * d[2]};
      double R[9];
      edge_vec_frame(v, R);
      std::vector<double> ysh(K * nc), D(wigner_size(lmax));
      for (int k = 0; k < K; ++k) edge_point_sh(R, &pts[3 * k], lmax, norms, &ysh[k * nc]);
      for (int l = 0; l <= lmax; ++l) {
        const int n = 2 * l + 1;
        for (int a = 0; a < n; ++a)
          for (int b = 0; b < n; ++b)
            D[wigner_offset(l) + a * n + b] = wigner_entry<double>(ysh.data(), nc, pinv.data(), nc, K, l, a, b);
      }
      // Y(u) and Y(+y)
      std::vector<double> yu(nc), yy(nc);
      const double u[3] = {d[0], d[1], d[2]}, ey[3] = {0, 1, 0};
      edge_point_sh(I, u, lmax, norms, yu.data());
      edge_point_sh(I, ey, lmax, norms, yy.data());
      for (int l = 0; l <= lmax; ++l) {
        const int n = 2 * l + 1;
        const double* Dl = &D[wigner_offset(l)];
        for (int a = 0; a < n; ++a) {
          double s = 0;
          for (int b = 0; b < n; ++b) s += Dl[a * n + b] * yu[l * l + b];
          CHECK_CLOSE(s, yy[l * l + a], 1e-10);
          for (int c = 0; c < n; ++c) {
            double o = 0;
            for (int b = 0; b < n; ++b) o += Dl[a * n + b] * Dl[c * n + b];
            CHECK_CLOSE(o, a == c ? 1.0 : 0.0, 1e-10);
          }
        }
      }
      if (d[0] == 0 && d[1] == 1 && d[2] == 0)
        for (int l = 0; l <= lmax; ++l) {
          const int n = 2 * l + 1;
          for (int a = 0; a < n; ++a)
            for (int b = 0; b < n; ++b) CHECK_CLOSE(D[wigner_offset(l) + a * n + b], a == b ? 1.0 : 0.0, 1e-12);
        }
    }
  }
  return so2test::finish("test_edge_wigner_math");
}
