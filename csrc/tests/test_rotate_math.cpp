// rotate's per-block arithmetic (so2ops/rotate.h): rotate_block at every
// channel width against a naive product, and the Wigner-gradient row
// pairing (wgrad_rows) against the derivative of <g, D x> (both transposes).
#include <random>
#include <vector>

#include "so2ops/layout.h"
#include "so2ops/rotate.h"
#include "test_util.h"

using namespace so2ops;

template <int W>
static void check_width(int n, int C, bool transpose, const std::vector<double>& d, const std::vector<double>& x) {
  // x: [n][C]; apply to channels [c0, c0 + W)
  for (int c0 = 0; c0 + W <= C; c0 += W) {
    rotate_block<W, double>(d.data(), n, transpose, x.data() + c0, C, [&](int m, int w, double v) {
      double ref = 0;
      for (int mp = 0; mp < n; ++mp) ref += (transpose ? d[mp * n + m] : d[m * n + mp]) * x[mp * C + c0 + w];
      CHECK_CLOSE(v, ref, 1e-12);
    });
  }
}

int main() {
  std::mt19937 gen(3);
  std::normal_distribution<double> nd;
  for (int l = 0; l <= kLmaxSupported; ++l) {
    const int n = 2 * l + 1, C = 37;
    std::vector<double> d(n * n), x(n * C), g(n * C);
    for (double& v : d) v = nd(gen);
    for (double& v : x) v = nd(gen);
    for (double& v : g) v = nd(gen);
    for (bool tr : {false, true}) {
      check_width<1>(n, C, tr, d, x);
      check_width<4>(n, C, tr, d, x);
      check_width<16>(n, C, tr, d, x);
      // d<g, out>/dD[m, mp] with out = D x (tr: D^T x) is sum_c g[g_row] x[x_row]
      for (int m = 0; m < n; ++m)
        for (int mp = 0; mp < n; ++mp) {
          int gr, xr;
          wgrad_rows(tr, m, mp, gr, xr);
          double pred = 0;
          for (int c = 0; c < C; ++c) pred += g[gr * C + c] * x[xr * C + c];
          // <g, out> is linear in D: its derivative is the difference quotient
          auto inner = [&](const std::vector<double>& dd) {
            double s = 0;
            for (int c = 0; c < C; ++c)
              rotate_block<1, double>(dd.data(), n, tr, x.data() + c, C,
                                      [&](int mm, int, double v) { s += g[mm * C + c] * v; });
            return s;
          };
          std::vector<double> dp = d;
          dp[m * n + mp] += 1.0;
          CHECK_CLOSE(inner(dp) - inner(d), pred, 1e-9);
        }
      // grad_x = the opposite transpose: <g, D x> = <D^T g, x>
      double lhs = 0, rhs = 0;
      for (int c = 0; c < C; ++c) {
        rotate_block<1, double>(d.data(), n, tr, x.data() + c, C, [&](int m, int, double v) { lhs += g[m * C + c] * v; });
        rotate_block<1, double>(d.data(), n, !tr, g.data() + c, C, [&](int m, int, double v) { rhs += x[m * C + c] * v; });
      }
      CHECK_CLOSE(lhs, rhs, 1e-9);
    }
  }
  return so2test::finish("test_rotate_math");
}
