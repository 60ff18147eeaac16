// rotate on CPU: OpenMP (at::parallel_for), float and double.
//
// Forward and grad_x apply each degree block to 16/4/1-channel groups
// (so2ops/rotate.h), so the innermost loop runs over contiguous channels and
// vectorises.  With an index, grad_x is a scatter-add into x's rows; to stay
// race-free and deterministic the edges are bucketed by index (a counting
// sort, i.e. CSR), and each task owns whole rows of grad_x, summing its
// edges in ascending edge order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "so2ops/op_checks.h"
#include "so2ops/rotate.h"
#include "so2ops/segments.h"

namespace so2ops {
namespace {

//: For every channel c < C: emit(m, c, (D or D^T) x[:, c]) on one degree block.
//: x points at row l*l of one edge/node, rows C apart.
template <typename T, typename Emit>
inline void apply_block_channels(const T* d, int n, bool transpose, const T* x, int64_t C, Emit&& emit) {
  int64_t c0 = 0;
  for (; c0 + 16 <= C; c0 += 16)
    rotate_block<16, T>(d, n, transpose, x + c0, C, [&](int m, int w, T v) { emit(m, c0 + w, v); });
  for (; c0 + 4 <= C; c0 += 4)
    rotate_block<4, T>(d, n, transpose, x + c0, C, [&](int m, int w, T v) { emit(m, c0 + w, v); });
  for (; c0 < C; ++c0)
    rotate_block<1, T>(d, n, transpose, x + c0, C, [&](int m, int w, T v) { emit(m, c0 + w, v); });
}

//: Parallel grain (edges per task) for about 4k multiply-adds per task.
int64_t edge_grain(int lmax, int64_t C) {
  return std::max<int64_t>(1, 4096 / (int64_t(wigner_size(lmax)) * C));
}

template <typename T>
void forward_kernel(const T* x, const T* wig, const int64_t* index, int64_t E, int64_t C, int lmax, bool inverse,
                    T* out) {
  const int nc = num_coeffs(lmax), wsize = wigner_size(lmax);
  at::parallel_for(0, E, edge_grain(lmax, C), [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const int64_t src = index ? index[e] : e;
      const T* xe = x + src * nc * C;
      T* oe = out + e * nc * C;
      for (int l = 0; l <= lmax; ++l) {
        T* ol = oe + int64_t(l * l) * C;
        apply_block_channels(wig + e * wsize + wigner_offset(l), 2 * l + 1, inverse, xe + int64_t(l * l) * C, C,
                             [&](int m, int64_t c, T v) { ol[m * C + c] = v; });
      }
    }
  });
}

//: grad_x without an index: row e of grad_x belongs to edge e alone.
template <typename T>
void grad_x_direct(const T* grad, const T* wig, int64_t E, int64_t C, int lmax, bool inverse, T* gx) {
  const int nc = num_coeffs(lmax), wsize = wigner_size(lmax);
  at::parallel_for(0, E, edge_grain(lmax, C), [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      for (int l = 0; l <= lmax; ++l) {
        const int64_t row = e * nc + l * l;
        T* gl = gx + row * C;
        apply_block_channels(wig + e * wsize + wigner_offset(l), 2 * l + 1, !inverse, grad + row * C, C,
                             [&](int m, int64_t c, T v) { gl[m * C + c] = v; });
      }
    }
  });
}

//: grad_x with an index: gx[n] = sum over edges e with index[e] == n.
//: gx must be zero-initialised (rows no edge points at stay zero).
template <typename T>
void grad_x_scatter(const T* grad, const T* wig, const int64_t* index, int64_t E, int64_t N, int64_t C, int lmax,
                    bool inverse, T* gx) {
  const int nc = num_coeffs(lmax), wsize = wigner_size(lmax);
  // CSR by counting sort: edges of node n are order[start[n] .. start[n+1]),
  // ascending in e (stable), which fixes the summation order.
  std::vector<int64_t> start(N + 1), order(E);
  segments::counting_sort(index, E, N, order.data(), start.data());
  const int64_t avg_degree = std::max<int64_t>(1, E / std::max<int64_t>(N, 1));
  const int64_t grain = std::max<int64_t>(1, edge_grain(lmax, C) / avg_degree);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t node = begin; node < end; ++node) {
      T* gn = gx + node * nc * C;
      for (int64_t j = start[node]; j < start[node + 1]; ++j) {
        const int64_t e = order[j];
        for (int l = 0; l <= lmax; ++l) {
          T* gl = gn + int64_t(l * l) * C;
          apply_block_channels(wig + e * wsize + wigner_offset(l), 2 * l + 1, !inverse,
                               grad + (e * nc + l * l) * C, C, [&](int m, int64_t c, T v) { gl[m * C + c] += v; });
        }
      }
    }
  });
}

//: grad_wigner[e, block l][m, m'] = sum_c g[e, l, g_row, c] x[src, l, x_row, c].
template <typename T>
void grad_wigner_kernel(const T* grad, const T* x, const int64_t* index, int64_t E, int64_t C, int lmax,
                        bool inverse, T* gw) {
  const int nc = num_coeffs(lmax), wsize = wigner_size(lmax);
  at::parallel_for(0, E, edge_grain(lmax, C), [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const int64_t src = index ? index[e] : e;
      for (int l = 0; l <= lmax; ++l) {
        const int n = 2 * l + 1;
        T* gwl = gw + e * wsize + wigner_offset(l);
        for (int m = 0; m < n; ++m) {
          for (int mp = 0; mp < n; ++mp) {
            int gr, xr;
            wgrad_rows(inverse, m, mp, gr, xr);
            const T* a = grad + (e * nc + l * l + gr) * C;
            const T* b = x + (src * nc + l * l + xr) * C;
            T acc = T(0);
#pragma omp simd reduction(+ : acc)
            for (int64_t c = 0; c < C; ++c) acc += a[c] * b[c];
            gwl[m * n + mp] = acc;
          }
        }
      }
    }
  });
}

void check_cpu(const at::Tensor& x, const std::optional<at::Tensor>& index) {
  TORCH_CHECK(x.device().is_cpu(), "rotate (cpu): expected CPU tensors");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "rotate (cpu): x must be float32 or float64, got ", x.scalar_type());
  if (index.has_value() && index->numel() > 0) {
    // The kernels index x with these values: range-check them here (cheap on CPU).
    const auto idx = index->contiguous();
    const int64_t* p = idx.const_data_ptr<int64_t>();
    const auto [lo, hi] = std::minmax_element(p, p + idx.numel());
    TORCH_CHECK(*lo >= 0 && *hi < x.size(0), "rotate: index has entries in [", *lo, ", ", *hi,
                "] but must lie in [0, ", x.size(0), ")");
  }
}

const int64_t* index_ptr(const std::optional<at::Tensor>& index, at::Tensor& holder) {
  if (!index.has_value()) return nullptr;
  holder = index->contiguous();
  return holder.const_data_ptr<int64_t>();
}

at::Tensor rotate_forward_cpu(const at::Tensor& x, const at::Tensor& wigner, const std::optional<at::Tensor>& index,
                              int64_t lmax, bool inverse) {
  check_rotate_args(x, wigner, index, lmax);
  check_cpu(x, index);
  const int64_t E = wigner.size(0), C = x.size(2);
  auto out = at::empty({E, x.size(1), C}, x.options());
  if (E == 0) return out;
  const auto xc = x.contiguous(), wc = wigner.contiguous();
  at::Tensor idx_holder;
  const int64_t* idx = index_ptr(index, idx_holder);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rotate_forward_cpu", [&] {
    forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), idx, E, C,
                             static_cast<int>(lmax), inverse, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rotate_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                       const at::Tensor& wigner,
                                                       const std::optional<at::Tensor>& index, int64_t lmax,
                                                       bool inverse, bool need_x, bool need_wigner) {
  check_rotate_args(x, wigner, index, lmax);
  check_rotate_grad(grad, x, wigner);
  check_cpu(x, index);
  const int64_t E = wigner.size(0), N = x.size(0), C = x.size(2);
  const int l = static_cast<int>(lmax);
  // With an index, rows of x that no edge gathers from get zero gradient.
  at::Tensor gx = !need_x             ? at::empty({0}, grad.options())
                  : index.has_value() ? at::zeros({N, x.size(1), C}, x.options())
                                      : at::empty({N, x.size(1), C}, x.options());
  at::Tensor gw = need_wigner ? at::empty({E, wigner.size(1)}, wigner.options()) : at::empty({0}, grad.options());
  if (E == 0 || !(need_x || need_wigner)) return {gx, gw};
  const auto gc = grad.contiguous(), xc = x.contiguous(), wc = wigner.contiguous();
  at::Tensor idx_holder;
  const int64_t* idx = index_ptr(index, idx_holder);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rotate_backward_cpu", [&] {
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    if (need_x) {
      scalar_t* out = gx.mutable_data_ptr<scalar_t>();
      if (idx)
        grad_x_scatter<scalar_t>(g, wc.const_data_ptr<scalar_t>(), idx, E, N, C, l, inverse, out);
      else
        grad_x_direct<scalar_t>(g, wc.const_data_ptr<scalar_t>(), E, C, l, inverse, out);
    }
    if (need_wigner)
      grad_wigner_kernel<scalar_t>(g, xc.const_data_ptr<scalar_t>(), idx, E, C, l, inverse,
                                   gw.mutable_data_ptr<scalar_t>());
  });
  return {gx, gw};
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CPU, m) {
  m.impl("rotate_forward", &so2ops::rotate_forward_cpu);
  m.impl("rotate_backward", &so2ops::rotate_backward_cpu);
}
