// Minimal test harness for the header-math tests (no framework dependency).
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <array>
#include <vector>

namespace so2test {

inline int& failures() {
  static int n = 0;
  return n;
}

//: Record a failure (with location) when |a - b| > tol; returns the error.
inline double check_close(double a, double b, double tol, const char* what, const char* file, int line) {
  const double err = std::fabs(a - b);
  if (!(err <= tol)) {  // also catches NaN
    if (failures() < 20) std::fprintf(stderr, "%s:%d: %s: %.17g vs %.17g (|err| %.3g > %.3g)\n", file, line, what, a, b, err, tol);
    ++failures();
  }
  return err;
}

#define CHECK_CLOSE(a, b, tol) ::so2test::check_close((a), (b), (tol), #a " ~ " #b, __FILE__, __LINE__)
#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      ++::so2test::failures();                                                       \
    }                                                                                \
  } while (0)

inline int finish(const char* name) {
  if (failures()) {
    std::fprintf(stderr, "%s: %d failure(s)\n", name, failures());
    return EXIT_FAILURE;
  }
  std::printf("%s: ok\n", name);
  return EXIT_SUCCESS;
}

//: Random unit vectors plus the hard cases: the poles +-y, points 1e-9 off
//: them, the equator u_y = 0 and a point just below it.
inline std::vector<std::array<double, 3>> test_directions(int n_random, unsigned seed = 1234) {
  std::vector<std::array<double, 3>> out = {
      {0, 1, 0}, {0, -1, 0}, {1e-9, 1, 0}, {0, -1, 1e-9}, {1e-9, -1, -1e-9}, {1, 0, 0},
      {0, 0, 1}, {0.6, 0, -0.8}, {0.6, -1e-12, -0.8}, {-1, 1e-9, 0},
  };
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd;
  for (int i = 0; i < n_random; ++i) out.push_back({nd(gen), nd(gen), nd(gen)});
  for (auto& u : out) {
    const double r = std::sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
    for (double& c : u) c /= r;
  }
  return out;
}

}  // namespace so2test
