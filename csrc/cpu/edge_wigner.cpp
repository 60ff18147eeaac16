// edge_wigner on CPU: OpenMP (at::parallel_for) over edges, float and double.
//
// Forward per edge: the K rotated sample points' harmonics go to a stack
// buffer (K x (lmax+1)^2 <= 32 x 81), then every packed entry is a K-term
// dot product with the pinv table.  Backward per edge: one dual-number pass
// per sample point (so2ops/edge_wigner.h), no buffer at all.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "so2ops/edge_wigner.h"
#include "so2ops/op_checks.h"

namespace so2ops {
namespace {

// Edges per parallel task: one edge costs K harmonics evaluations plus
// wigner_size * K multiply-adds, i.e. tens of microseconds at lmax = 8.
constexpr int64_t kEdgeGrain = 16;

template <typename T>
void forward_kernel(const T* vec, const T* points, const T* pinv, int64_t num_edges, int num_points, int lmax,
                    T* out) {
  const ShNorms<T> norms = make_sh_norms<T>();
  const int nc = num_coeffs(lmax), wsize = wigner_size(lmax);
  at::parallel_for(0, num_edges, kEdgeGrain, [&](int64_t begin, int64_t end) {
    T ysh[kMaxPoints * kMaxCoeffs];  // ysh[k * nc + c] = Y_c(R p_k)
    for (int64_t e = begin; e < end; ++e) {
      const T v[3] = {vec[3 * e], vec[3 * e + 1], vec[3 * e + 2]};
      T R[9];
      edge_vec_frame(v, R);
      for (int k = 0; k < num_points; ++k) edge_point_sh(R, points + 3 * k, lmax, norms, ysh + k * nc);
      // D^l[mi, :] = sum_k Y_{l,mi}(R p_k) pinv[k, l, :], accumulated in the
      // output row so the inner loop runs over contiguous m' (vectorised);
      // k is summed in ascending order, as in wigner_entry().
      T* o = out + e * wsize;
      for (int l = 0; l <= lmax; ++l) {
        const int n = 2 * l + 1;
        for (int mi = 0; mi < n; ++mi) {
          T* orow = o + wigner_offset(l) + mi * n;
          for (int mpi = 0; mpi < n; ++mpi) orow[mpi] = T(0);
          for (int k = 0; k < num_points; ++k) {
            const T y = ysh[k * nc + l * l + mi];
            const T* b = pinv + k * nc + l * l;
            for (int mpi = 0; mpi < n; ++mpi) orow[mpi] += y * b[mpi];
          }
        }
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* grad, const T* vec, const T* points, const T* pinv, int64_t num_edges,
                     int num_points, int lmax, T* grad_vec) {
  const ShNorms<T> norms = make_sh_norms<T>();
  const int nc = num_coeffs(lmax), wsize = wigner_size(lmax);
  at::parallel_for(0, num_edges, kEdgeGrain, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const T v[3] = {vec[3 * e], vec[3 * e + 1], vec[3 * e + 2]};
      T g[3] = {T(0), T(0), T(0)};
      const T* grow = grad + e * wsize;
      for (int k = 0; k < num_points; ++k)
        edge_point_backward(v, points + 3 * k, pinv + k * nc, grow, lmax, norms, g);
      for (int i = 0; i < 3; ++i) grad_vec[3 * e + i] = g[i];
    }
  });
}

void check_cpu(const at::Tensor& edge_vec) {
  TORCH_CHECK(edge_vec.device().is_cpu(), "edge_wigner (cpu): expected CPU tensors");
  TORCH_CHECK(edge_vec.scalar_type() == at::kFloat || edge_vec.scalar_type() == at::kDouble,
              "edge_wigner (cpu): edge_vec must be float32 or float64, got ", edge_vec.scalar_type());
}

at::Tensor edge_wigner_forward_cpu(const at::Tensor& edge_vec, const at::Tensor& points, const at::Tensor& pinv,
                                   int64_t lmax) {
  const int64_t num_points = check_edge_wigner_args(edge_vec, points, pinv, lmax);
  check_cpu(edge_vec);
  const int64_t num_edges = edge_vec.size(0);
  auto out = at::empty({num_edges, wigner_size(static_cast<int>(lmax))}, edge_vec.options());
  if (num_edges == 0) return out;
  const auto vec = edge_vec.contiguous();
  // The tables are tiny: bring them to the compute dtype once.
  const auto pts = points.to(edge_vec.scalar_type()).contiguous();
  const auto pin = pinv.to(edge_vec.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(vec.scalar_type(), "edge_wigner_forward_cpu", [&] {
    forward_kernel<scalar_t>(vec.const_data_ptr<scalar_t>(), pts.const_data_ptr<scalar_t>(),
                             pin.const_data_ptr<scalar_t>(), num_edges, static_cast<int>(num_points),
                             static_cast<int>(lmax), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor edge_wigner_backward_cpu(const at::Tensor& grad, const at::Tensor& edge_vec, const at::Tensor& points,
                                    const at::Tensor& pinv, int64_t lmax) {
  const int64_t num_points = check_edge_wigner_args(edge_vec, points, pinv, lmax);
  check_edge_wigner_grad(grad, edge_vec, lmax);
  check_cpu(edge_vec);
  const int64_t num_edges = edge_vec.size(0);
  auto grad_vec = at::empty({num_edges, 3}, edge_vec.options());
  if (num_edges == 0) return grad_vec;
  const auto vec = edge_vec.contiguous();
  const auto g = grad.to(edge_vec.scalar_type()).contiguous();
  const auto pts = points.to(edge_vec.scalar_type()).contiguous();
  const auto pin = pinv.to(edge_vec.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(vec.scalar_type(), "edge_wigner_backward_cpu", [&] {
    backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), vec.const_data_ptr<scalar_t>(),
                              pts.const_data_ptr<scalar_t>(), pin.const_data_ptr<scalar_t>(), num_edges,
                              static_cast<int>(num_points), static_cast<int>(lmax),
                              grad_vec.mutable_data_ptr<scalar_t>());
  });
  return grad_vec;
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CPU, m) {
  m.impl("edge_wigner_forward", &so2ops::edge_wigner_forward_cpu);
  m.impl("edge_wigner_backward", &so2ops::edge_wigner_backward_cpu);
}
