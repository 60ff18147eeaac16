// so2_layer_norm on CPU: at::parallel_for over rows, float and double.
//
// One pass per row computes every statistic of the row (degree-0 mean and
// variance, the per-degree sums of squares), a second writes the output; the
// backward recomputes the statistics from x (nothing is saved but x).  Rows are
// cut into fixed chunks (their size depends on the shape only, not on the
// thread count); the weight / bias gradients are summed per chunk, then over
// the chunks in order: deterministic, the same for any number of threads.
// Per-degree scratch lives on the stack: no allocation per row.  The math is
// so2ops/so2_norm_gate.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "so2ops/layout.h"
#include "so2ops/so2_norm_gate.h"

namespace so2ops {
namespace {

//: Rows per chunk: about 16k entries each (the shape fixes it, so the reduction order does too).
int64_t rows_per_chunk(int64_t K, int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, K * C)); }

//: The statistics of one row: degree-0 mean / rstd, and r_l = 1 / RMS of the group of each degree l > 0.
template <typename T>
struct RowStats {
  T mean, rstd;
  T r[kLmaxSupported + 1];      // r[l], l >= 1
  T alpha[kLmaxSupported + 1];  // alpha_l, l >= 1
};

template <typename T>
inline void row_stats(const T* xr, int lmax, int64_t C, T eps, bool joint, RowStats<T>& st) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < C; ++c) s += xr[c];
  st.mean = s / T(C);
  T v = 0;
#pragma omp simd reduction(+ : v)
  for (int64_t c = 0; c < C; ++c) v += (xr[c] - st.mean) * (xr[c] - st.mean);
  st.rstd = norm_rsqrt<T>(v / T(C) + eps);
  if (lmax == 0) return;
  T group_ms[kLmaxSupported + 1] = {};
  for (int l = 1; l <= lmax; ++l) {
    const T* xl = xr + int64_t(l * l) * C;
    const int64_t n = int64_t(2 * l + 1) * C;  // the 2l+1 rows of degree l are contiguous
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; ++i) ss += xl[i] * xl[i];
    st.alpha[l] = norm_degree_weight<T>(l, lmax, joint, C);
    group_ms[norm_group(l, joint)] += st.alpha[l] * ss;
  }
  for (int l = 1; l <= lmax; ++l) st.r[l] = norm_rsqrt<T>(group_ms[norm_group(l, joint)] + eps);
}

template <typename T>
void forward_kernel(const T* x, const T* w, const T* b, int64_t N, int64_t C, int lmax, T eps, bool joint, T* out) {
  const int64_t K = num_coeffs(lmax);
  at::parallel_for(0, N, rows_per_chunk(K, C), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xr = x + n * K * C;
      T* o = out + n * K * C;
      RowStats<T> st;
      row_stats(xr, lmax, C, eps, joint, st);
      const T mean = st.mean, rstd = st.rstd;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = (xr[c] - mean) * rstd * w[c] + b[c];
      for (int l = 1; l <= lmax; ++l) {
        const T r = st.r[l];
        const T* wl = w + l * C;
        for (int m = 0; m < 2 * l + 1; ++m) {
          const int64_t off = int64_t(l * l + m) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[off + c] = xr[off + c] * r * wl[c];
        }
      }
    }
  });
}

//: part: [chunks, lmax + 2, C] per-chunk weight (rows 0..lmax) and bias (row lmax + 1) gradients, or null.
template <typename T>
void backward_kernel(const T* grad, const T* x, const T* w, int64_t N, int64_t C, int lmax, T eps, bool joint,
                     T* gx, T* part) {
  const int64_t K = num_coeffs(lmax), per = rows_per_chunk(K, C);
  const int64_t chunks = (N + per - 1) / per, P = int64_t(lmax + 2) * C;
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t chunk = cb; chunk < ce; ++chunk) {
      T* pw = part ? part + chunk * P : nullptr;
      if (pw) std::fill(pw, pw + P, T(0));
      for (int64_t n = chunk * per; n < std::min(N, (chunk + 1) * per); ++n) {
        const T* xr = x + n * K * C;
        const T* g = grad + n * K * C;
        RowStats<T> st;
        row_stats(xr, lmax, C, eps, joint, st);
        const T mean = st.mean, rstd = st.rstd;
        // degree 0: the layer-norm backward
        T sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
        for (int64_t c = 0; c < C; ++c) {
          const T gh = g[c] * w[c], xh = (xr[c] - mean) * rstd;
          sg += gh;
          sgx += gh * xh;
        }
        const T mg = sg / T(C), mgx = sgx / T(C);
        if (gx) {
          T* o = gx + n * K * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c)
            o[c] = norm_scalar_grad_x<T>(g[c] * w[c], (xr[c] - mean) * rstd, mg, mgx, rstd);
        }
        if (pw) {
          T* pb = pw + int64_t(lmax + 1) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            pw[c] += g[c] * (xr[c] - mean) * rstd;
            pb[c] += g[c];
          }
        }
        if (lmax == 0) continue;
        // degrees l > 0: A_g = sum over the group of g * w * x
        T group_a[kLmaxSupported + 1] = {};
        for (int l = 1; l <= lmax; ++l) {
          const T* wl = w + l * C;
          T a = 0;
          for (int m = 0; m < 2 * l + 1; ++m) {
            const int64_t off = int64_t(l * l + m) * C;
#pragma omp simd reduction(+ : a)
            for (int64_t c = 0; c < C; ++c) a += g[off + c] * wl[c] * xr[off + c];
          }
          group_a[norm_group(l, joint)] += a;
        }
        for (int l = 1; l <= lmax; ++l) {
          const T r = st.r[l], coef = r * r * r * st.alpha[l] * group_a[norm_group(l, joint)];
          const T* wl = w + l * C;
          T* pl = pw ? pw + l * C : nullptr;
          for (int m = 0; m < 2 * l + 1; ++m) {
            const int64_t off = int64_t(l * l + m) * C;
            if (gx) {
              T* o = gx + n * K * C + off;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) o[c] = norm_vector_grad_x<T>(g[off + c], wl[c], xr[off + c], r, coef);
            }
            if (pl) {
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) pl[c] += r * g[off + c] * xr[off + c];
            }
          }
        }
      }
    }
  });
}

//: dst[i] = sum over chunks k (in order) of part[k, off + i], 0 <= i < len.
template <typename T>
void sum_chunks(const T* part, int64_t chunks, int64_t P, int64_t off, int64_t len, T* dst) {
  std::copy(part + off, part + off + len, dst);
  for (int64_t k = 1; k < chunks; ++k) {
    const T* src = part + k * P + off;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dst[i] += src[i];
  }
}

void check_args(const at::Tensor& x, const at::Tensor& weight, int64_t lmax, const char* op) {
  TORCH_CHECK(lmax >= 0 && lmax <= kLmaxSupported, op, ": lmax=", lmax, " must be in [0, ", kLmaxSupported, "]");
  const int l = static_cast<int>(lmax);
  TORCH_CHECK(x.dim() == 3 && x.size(1) == num_coeffs(l) && x.size(2) >= 1, op, ": x must be [N, (lmax+1)^2=",
              num_coeffs(l), ", C>=1], got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), op, " (cpu): expected CPU tensors");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              " (cpu): x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == lmax + 1 && weight.size(1) == x.size(2), op,
              ": weight must be [lmax+1=", lmax + 1, ", C=", x.size(2), "], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.device() == x.device(), op,
              ": weight must match x in dtype and device");
}

at::Tensor so2_layer_norm_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                      int64_t lmax, double eps, bool joint) {
  check_args(x, weight, lmax, "so2_layer_norm");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(2) && bias.scalar_type() == x.scalar_type() &&
                  bias.device() == x.device(),
              "so2_layer_norm: bias must be [C=", x.size(2), "] of x's dtype and device, got ", bias.sizes());
  const int64_t N = x.size(0), C = x.size(2);
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (N == 0) return out;
  const auto xc = x.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "so2_layer_norm_forward_cpu", [&] {
    forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
                             bc.const_data_ptr<scalar_t>(), N, C, static_cast<int>(lmax), static_cast<scalar_t>(eps),
                             joint, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> so2_layer_norm_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                           const at::Tensor& weight, int64_t lmax,
                                                                           double eps, bool joint, bool need_x,
                                                                           bool need_weight, bool need_bias) {
  check_args(x, weight, lmax, "so2_layer_norm_backward");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() && grad.device() == x.device(),
              "so2_layer_norm_backward: grad must match x in shape, dtype and device, got ", grad.sizes());
  const int64_t N = x.size(0), K = x.size(1), C = x.size(2);
  const int l = static_cast<int>(lmax);
  at::Tensor gx = need_x ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  at::Tensor gw = need_weight ? at::empty({lmax + 1, C}, x.options()) : at::empty({0}, x.options());
  at::Tensor gb = need_bias ? at::empty({C}, x.options()) : at::empty({0}, x.options());
  if (!(need_x || need_weight || need_bias)) return {gx, gw, gb};
  if (N == 0) {
    if (need_weight) gw.zero_();
    if (need_bias) gb.zero_();
    return {gx, gw, gb};
  }
  const auto gc = grad.contiguous(), xc = x.contiguous(), wc = weight.contiguous();
  const bool need_part = need_weight || need_bias;
  const int64_t per = rows_per_chunk(K, C), chunks = (N + per - 1) / per;
  at::Tensor part = need_part ? at::empty({chunks, l + 2, C}, x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "so2_layer_norm_backward_cpu", [&] {
    scalar_t* pp = need_part ? part.mutable_data_ptr<scalar_t>() : nullptr;
    backward_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                              wc.const_data_ptr<scalar_t>(), N, C, l, static_cast<scalar_t>(eps), joint,
                              need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr, pp);
    if (need_part) {
      // the chunks' partial sums, added in chunk order (deterministic, independent of the thread count)
      const int64_t P = int64_t(l + 2) * C;
      if (need_weight) sum_chunks(pp, chunks, P, 0, int64_t(l + 1) * C, gw.mutable_data_ptr<scalar_t>());
      if (need_bias) sum_chunks(pp, chunks, P, int64_t(l + 1) * C, C, gb.mutable_data_ptr<scalar_t>());
    }
  });
  return {gx, gw, gb};
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CPU, m) {
  m.impl("so2_layer_norm_forward", &so2ops::so2_layer_norm_forward_cpu);
  m.impl("so2_layer_norm_backward", &so2ops::so2_layer_norm_backward_cpu);
}
