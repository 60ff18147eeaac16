// Edge frames (so2ops/frames.h): orthonormal, det +1, R u = +y, everywhere
// including the poles, points 1e-9 off them and the equator.
#include <cmath>

#include "so2ops/frames.h"
#include "test_util.h"

using namespace so2ops;

int main() {
  for (const auto& d : so2test::test_directions(500)) {
    // a non-unit edge vector: normalize3 + edge_frame as the kernels use them
    const double v[3] = {3.5 * d[0], 3.5 * d[1], 3.5 * d[2]};
    double u[3], R[9];
    normalize3(v, u);
    edge_frame(u, R);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        double s = 0;
        for (int k = 0; k < 3; ++k) s += R[3 * i + k] * R[3 * j + k];
        CHECK_CLOSE(s, i == j ? 1.0 : 0.0, 1e-14);
      }
    const double det = R[0] * (R[4] * R[8] - R[5] * R[7]) - R[1] * (R[3] * R[8] - R[5] * R[6]) +
                       R[2] * (R[3] * R[7] - R[4] * R[6]);
    CHECK_CLOSE(det, 1.0, 1e-14);
    double q[3];
    rotate_point(R, u, q);
    CHECK_CLOSE(q[0], 0.0, 1e-15);
    CHECK_CLOSE(q[1], 1.0, 1e-15);
    CHECK_CLOSE(q[2], 0.0, 1e-15);
  }
  // +y is its own frame: R = I; -y takes the half turn about z composed
  // with the minimal rotation of +y, i.e. F = diag(-1, -1, 1).
  {
    double u[3] = {0, 1, 0}, R[9];
    edge_frame(u, R);
    for (int i = 0; i < 9; ++i) CHECK_CLOSE(R[i], (i % 4 == 0) ? 1.0 : 0.0, 0);
    double w[3] = {0, -1, 0};
    edge_frame(w, R);
    const double F[9] = {-1, 0, 0, 0, -1, 0, 0, 0, 1};
    for (int i = 0; i < 9; ++i) CHECK_CLOSE(R[i], F[i], 0);
  }
  return so2test::finish("test_frames");
}
