// Argument checks of the edge_wigner and rotate entry points (host only,
// ATen).  The Python wrappers validate too; these checks make the compiled
// ops safe on their own: every kernel assumes the shapes checked here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <optional>

#include "layout.h"

namespace so2ops {

inline void check_lmax(int64_t lmax) {
  TORCH_CHECK(lmax >= 0 && lmax <= kLmaxSupported, "so2ops: lmax=", lmax,
              " must be in [0, ", kLmaxSupported, "]");
}

//: edge_vec [E, 3] float, points [K, 3], pinv [K, (lmax+1)^2], 1 <= K <= kMaxPoints,
//: all on one device.  Returns K.
inline int64_t check_edge_wigner_args(const at::Tensor& edge_vec, const at::Tensor& points,
                                      const at::Tensor& pinv, int64_t lmax) {
  check_lmax(lmax);
  TORCH_CHECK(edge_vec.dim() == 2 && edge_vec.size(1) == 3, "edge_wigner: edge_vec must be [E, 3], got ",
              edge_vec.sizes());
  TORCH_CHECK(at::isFloatingType(edge_vec.scalar_type()), "edge_wigner: edge_vec must be floating point, got ",
              edge_vec.scalar_type());
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3, "edge_wigner: points must be [K, 3], got ",
              points.sizes());
  const int64_t k = points.size(0);
  TORCH_CHECK(k >= 1 && k <= kMaxPoints, "edge_wigner: need 1 <= K <= ", kMaxPoints, " sample points, got ", k);
  TORCH_CHECK(pinv.dim() == 2 && pinv.size(0) == k && pinv.size(1) == num_coeffs(static_cast<int>(lmax)),
              "edge_wigner: pinv must be [K=", k, ", (lmax+1)^2=", num_coeffs(static_cast<int>(lmax)), "], got ",
              pinv.sizes());
  TORCH_CHECK(at::isFloatingType(points.scalar_type()) && at::isFloatingType(pinv.scalar_type()),
              "edge_wigner: points and pinv must be floating point");
  TORCH_CHECK(points.device() == edge_vec.device() && pinv.device() == edge_vec.device(),
              "edge_wigner: edge_vec, points and pinv must be on one device");
  return k;
}

inline void check_edge_wigner_grad(const at::Tensor& grad, const at::Tensor& edge_vec, int64_t lmax) {
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == edge_vec.size(0) &&
                  grad.size(1) == wigner_size(static_cast<int>(lmax)),
              "edge_wigner_backward: grad must be [E=", edge_vec.size(0), ", ", wigner_size(static_cast<int>(lmax)),
              "], got ", grad.sizes());
  TORCH_CHECK(grad.device() == edge_vec.device(), "edge_wigner_backward: grad and edge_vec must be on one device");
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "edge_wigner_backward: grad must be floating point");
}

//: x [N, (lmax+1)^2, C >= 1], wigner [E, wigner_size(lmax)] of x's dtype and
//: device, index [E] int64 (or N == E without it).  Index values are checked
//: by the caller where that needs no device synchronisation (CPU); the CUDA
//: kernels treat out-of-range rows as zeros instead of reading them.
inline void check_rotate_args(const at::Tensor& x, const at::Tensor& wigner, const std::optional<at::Tensor>& index,
                              int64_t lmax) {
  check_lmax(lmax);
  const int l = static_cast<int>(lmax);
  TORCH_CHECK(x.dim() == 3 && x.size(1) == num_coeffs(l) && x.size(2) >= 1,
              "rotate: x must be [N, (lmax+1)^2=", num_coeffs(l), ", C>=1], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "rotate: x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(wigner.dim() == 2 && wigner.size(1) == wigner_size(l), "rotate: wigner must be [E, ",
              wigner_size(l), "], got ", wigner.sizes());
  TORCH_CHECK(wigner.scalar_type() == x.scalar_type(), "rotate: wigner dtype ", wigner.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(wigner.device() == x.device(), "rotate: x and wigner must be on one device");
  if (index.has_value()) {
    const at::Tensor& idx = *index;
    TORCH_CHECK(idx.dim() == 1 && idx.size(0) == wigner.size(0), "rotate: index must be [E=", wigner.size(0),
                "], got ", idx.sizes());
    TORCH_CHECK(idx.scalar_type() == at::kLong, "rotate: index must be int64, got ", idx.scalar_type());
    TORCH_CHECK(idx.device() == x.device(), "rotate: index and x must be on one device");
  } else {
    TORCH_CHECK(x.size(0) == wigner.size(0), "rotate: x has ", x.size(0), " rows but wigner has ",
                wigner.size(0), " edges; pass index to gather");
  }
}

inline void check_rotate_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& wigner) {
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == wigner.size(0) && grad.size(1) == x.size(1) &&
                  grad.size(2) == x.size(2),
              "rotate_backward: grad must be [E=", wigner.size(0), ", ", x.size(1), ", ", x.size(2), "], got ",
              grad.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && grad.device() == x.device(),
              "rotate_backward: grad must match x in dtype and device");
}

}  // namespace so2ops
