// The fused grid product's per-channel arithmetic (so2ops/so2_grid_product.h):
// a known product (cos^2 = 1/2 + cos(2 theta) / 2, sin cos = sin(2 theta) / 2),
// every channel width against W = 1, and the backward against central
// differences of the forward.
#include <random>
#include <vector>

#include "so2ops/so2_grid_product.h"
#include "test_util.h"

using namespace so2ops;

struct Problem {
  int nu, mmax, grid, H;
  std::vector<double> spec, coef, basis;  // spec [nu][S][H], coef [nu][H], basis [grid][S]
  int S() const { return 2 * mmax + 1; }
};

static Problem make(int nu, int mmax, int grid, int H, std::mt19937& gen) {
  std::normal_distribution<double> nd;
  Problem p{nu, mmax, grid, H, {}, {}, {}};
  p.spec.resize(size_t(nu) * p.S() * H);
  p.coef.resize(size_t(nu) * H);
  for (double& v : p.spec) v = nd(gen);
  for (double& v : p.coef) v = nd(gen);
  p.basis.resize(size_t(grid) * p.S());
  for (int j = 0; j < grid; ++j)
    for (int s = 0; s < p.S(); ++s) p.basis[j * p.S() + s] = gp_basis_value<double>(j, s, mmax, grid);
  return p;
}

//: out[s][h] for channel h at width W (channels [h0, h0 + W)).
template <int W>
static std::vector<double> forward(const Problem& p, int h0) {
  std::vector<double> acc(size_t(p.S()) * W);
  gp_forward<W, double, double>(p.spec.data() + h0, p.S() * p.H, p.H, p.coef.data() + h0, p.H, p.nu, p.mmax, p.grid,
                                p.basis.data(), acc.data(), W);
  return acc;
}

template <int W>
static void check_width(const Problem& p) {
  for (int h0 = 0; h0 + W <= p.H; h0 += W) {
    const auto wide = forward<W>(p, h0);
    for (int w = 0; w < W; ++w) {
      const auto one = forward<1>(p, h0 + w);
      for (int s = 0; s < p.S(); ++s) CHECK_CLOSE(wide[s * W + w], one[s], 1e-12);
    }
  }
}

int main() {
  std::mt19937 gen(5);
  // f_0 = cos, f_1 = cos or sin (mmax = 2, so order 2 is representable), g = p_1
  {
    Problem p = make(2, 2, 7, 2, gen);
    std::fill(p.spec.begin(), p.spec.end(), 0.0);
    const int S = p.S(), H = p.H;
    p.spec[(0 * S + 3) * H + 0] = 1;  // channel 0: cos * cos
    p.spec[(1 * S + 3) * H + 0] = 1;
    p.spec[(0 * S + 3) * H + 1] = 1;  // channel 1: cos * sin
    p.spec[(1 * S + 1) * H + 1] = 1;
    p.coef = {0, 0, 1, 1};  // coef[k][h]: only the product
    for (int h = 0; h < 2; ++h) {
      const auto out = forward<1>(p, h);
      for (int s = 0; s < S; ++s) {
        const double want = h == 0 ? (s == 2 ? 0.5 : s == 4 ? 0.5 : 0.0) : (s == 0 ? 0.5 : 0.0);
        CHECK_CLOSE(out[s], want, 1e-14);
      }
    }
  }
  for (int nu : {1, 3, 8})
    for (int mmax : {0, 2, 8}) {
      const Problem p = make(nu, mmax, (nu + 1) * mmax + 1 + (nu == 3), 37, gen);
      check_width<4>(p);
      check_width<16>(p);
      // backward of channel h against central differences of <g, out>
      const int S = p.S(), h = 5;
      std::normal_distribution<double> nd;
      std::vector<double> g(size_t(S) * p.H);
      for (double& v : g) v = nd(gen);
      std::vector<double> gs(size_t(nu) * S), gc(nu);
      gp_backward<1, double, double>(g.data() + h, p.H, p.spec.data() + h, S * p.H, p.H, p.coef.data() + h, p.H, nu,
                                     mmax, p.grid, p.basis.data(), gs.data(), S, 1, gc.data(), 1);
      auto loss = [&](const Problem& q) {
        const auto out = forward<1>(q, h);
        double l = 0;
        for (int s = 0; s < S; ++s) l += g[s * p.H + h] * out[s];
        return l;
      };
      const double eps = 1e-6;
      for (int k = 0; k < nu; ++k) {
        for (int s = 0; s < S; ++s) {
          Problem a = p, b = p;
          a.spec[(k * S + s) * p.H + h] += eps;
          b.spec[(k * S + s) * p.H + h] -= eps;
          CHECK_CLOSE(gs[k * S + s], (loss(a) - loss(b)) / (2 * eps), 1e-6 * (1 + std::fabs(gs[k * S + s])));
        }
        Problem a = p, b = p;
        a.coef[k * p.H + h] += eps;
        b.coef[k * p.H + h] -= eps;
        CHECK_CLOSE(gc[k], (loss(a) - loss(b)) / (2 * eps), 1e-6 * (1 + std::fabs(gc[k])));
      }
    }
  return so2test::finish("test_grid_product_math");
}
