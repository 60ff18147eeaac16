// so2_gate on CPU: at::parallel_for over rows, float and double.
//
// Each row is independent (no reduction across rows).  The sigmoid of a gate
// logit is computed once per (row, degree, channel) into a fixed-size stack
// block of channels and applied to the 2l+1 coefficient rows of the degree:
// no allocation, no repeated exp.  The math is so2ops/so2_norm_gate.h.
//
// float: the sigmoids of a block of channels are computed 4 lanes at a time
// with a polynomial exponential (Cephes' expf: range reduction by ln 2,
// degree-6 polynomial, exponent bits set directly, about 2 ulp); libm's scalar
// expf, one call per entry, cost more than the rest of the op together.
// double keeps libm's exp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>

#include "so2ops/layout.h"
#include "so2ops/so2_norm_gate.h"

namespace so2ops {
namespace {

constexpr int64_t kChannelBlock = 64;

//: Cephes' expf on 4 lanes (GCC / Clang vector extensions: SSE2 on x86-64, NEON on arm64).
//: Plain loops calling a scalar version do not vectorise here: the clamps are float
//: compares, which GCC will not if-convert without -fno-trapping-math.
typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));

inline f4 splat(float v) { return f4{v, v, v, v}; }

inline f4 exp4(f4 v) {
  f4 x = v < splat(-87.0f) ? splat(-87.0f) : v;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  const f4 fx = x * splat(1.44269504088896341f);  // x / ln 2
  const i4 k = __builtin_convertvector(fx + (fx >= splat(0.0f) ? splat(0.5f) : splat(-0.5f)), i4);
  const f4 kf = __builtin_convertvector(k, f4);
  const f4 r = x - kf * splat(0.693359375f) + kf * splat(2.12194440e-4f);  // x - k ln 2, ln 2 in two parts
  f4 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  // 2^k, -126 <= k <= 127: a cast between vector types of one size reinterprets the bits
  // (GCC / Clang vector extensions; std::bit_cast would need C++20, torch < 2.12 builds C++17)
  const f4 scale = (f4)((k + 127) << 23);
  // beyond the float range exp is +inf (so sigmoid(-inf) = 0 and silu(-inf) = NaN, as in
  // torch), not the clamped exp(88); NaN stays NaN
  const f4 e = v > splat(88.0f) ? splat(__builtin_inff()) : p * scale;
  return v != v ? v : e;
}

//: out[j] = sigmoid(in[j]), 0 <= j < n (out may not alias in).
template <typename T>
inline void sigmoid_array(const T* in, T* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = gate_sigmoid<T>(in[j]);
}
template <>
inline void sigmoid_array<float>(const float* in, float* out, int64_t n) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    f4 v;
    std::memcpy(&v, in + j, sizeof(v));
    const f4 s = splat(1.0f) / (splat(1.0f) + exp4(-v));
    std::memcpy(out + j, &s, sizeof(s));
  }
  if (j < n) {  // the tail, through the same lanes (same rounding as the body)
    float buf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    std::memcpy(buf, in + j, sizeof(float) * (n - j));
    f4 v;
    std::memcpy(&v, buf, sizeof(v));
    const f4 s = splat(1.0f) / (splat(1.0f) + exp4(-v));
    std::memcpy(buf, &s, sizeof(s));
    std::memcpy(out + j, buf, sizeof(float) * (n - j));
  }
}

int64_t row_grain(int64_t K, int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, K * C)); }

template <typename T>
void forward_kernel(const T* x, const T* z, int64_t N, int64_t C, int lmax, T* out) {
  const int64_t K = num_coeffs(lmax);
  at::parallel_for(0, N, row_grain(K, C), [&](int64_t begin, int64_t end) {
    T s[kChannelBlock];
    for (int64_t n = begin; n < end; ++n) {
      const T* xr = x + n * K * C;
      T* o = out + n * K * C;
      for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
        const int64_t w = std::min(kChannelBlock, C - c0);
        sigmoid_array(xr + c0, s, w);
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) o[c0 + j] = xr[c0 + j] * s[j];
      }
      for (int l = 1; l <= lmax; ++l) {
        const T* zl = z + (n * lmax + l - 1) * C;
        for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
          const int64_t w = std::min(kChannelBlock, C - c0);
          sigmoid_array(zl + c0, s, w);
          for (int m = 0; m < 2 * l + 1; ++m) {
            const int64_t off = int64_t(l * l + m) * C + c0;
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) o[off + j] = xr[off + j] * s[j];
          }
        }
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* grad, const T* x, const T* z, int64_t N, int64_t C, int lmax, T* gx, T* gz) {
  const int64_t K = num_coeffs(lmax);
  at::parallel_for(0, N, row_grain(K, C), [&](int64_t begin, int64_t end) {
    T s[kChannelBlock], acc[kChannelBlock];
    for (int64_t n = begin; n < end; ++n) {
      const T* xr = x + n * K * C;
      const T* g = grad + n * K * C;
      if (gx) {
        T* o = gx + n * K * C;
        for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
          const int64_t w = std::min(kChannelBlock, C - c0);
          sigmoid_array(xr + c0, s, w);
#pragma omp simd
          for (int64_t j = 0; j < w; ++j) {  // d silu / dx = s + x s (1 - s) (gate_silu_grad)
            const T xv = xr[c0 + j];
            o[c0 + j] = g[c0 + j] * (s[j] + xv * s[j] * (T(1) - s[j]));
          }
        }
      }
      for (int l = 1; l <= lmax; ++l) {
        const T* zl = z + (n * lmax + l - 1) * C;
        for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
          const int64_t w = std::min(kChannelBlock, C - c0);
          sigmoid_array(zl + c0, s, w);
          std::fill(acc, acc + w, T(0));
          for (int m = 0; m < 2 * l + 1; ++m) {
            const int64_t off = int64_t(l * l + m) * C + c0;
            if (gx) {
              T* o = gx + n * K * C + off;
#pragma omp simd
              for (int64_t j = 0; j < w; ++j) o[j] = g[off + j] * s[j];
            }
            if (gz) {
#pragma omp simd
              for (int64_t j = 0; j < w; ++j) acc[j] += g[off + j] * xr[off + j];
            }
          }
          if (gz) {
            T* o = gz + (n * lmax + l - 1) * C + c0;
            for (int64_t j = 0; j < w; ++j) o[j] = acc[j] * s[j] * (T(1) - s[j]);
          }
        }
      }
    }
  });
}

//: x [N, (lmax+1)^2, C >= 1], logits [N, lmax, C] of x's dtype, on the CPU.  Returns lmax.
int check_args(const at::Tensor& x, const at::Tensor& logits, const char* op) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) >= 1, op, ": x must be [N, (lmax+1)^2, C>=1], got ", x.sizes());
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == x.size(0) && logits.size(2) == x.size(2), op,
              ": logits must be [N=", x.size(0), ", lmax, C=", x.size(2), "], got ", logits.sizes());
  const int64_t lmax = logits.size(1);
  TORCH_CHECK(lmax <= kLmaxSupported, op, ": lmax=", lmax, " must be in [0, ", kLmaxSupported, "]");
  TORCH_CHECK(x.size(1) == num_coeffs(static_cast<int>(lmax)), op, ": x has ", x.size(1),
              " rows but logits has lmax=", lmax, ": expected (lmax+1)^2=", num_coeffs(static_cast<int>(lmax)));
  TORCH_CHECK(x.device().is_cpu() && logits.device().is_cpu(), op, " (cpu): expected CPU tensors");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              " (cpu): x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(logits.scalar_type() == x.scalar_type(), op, ": logits dtype ", logits.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  return static_cast<int>(lmax);
}

at::Tensor so2_gate_forward_cpu(const at::Tensor& x, const at::Tensor& logits) {
  const int lmax = check_args(x, logits, "so2_gate");
  const int64_t N = x.size(0), C = x.size(2);
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (N == 0) return out;
  const auto xc = x.contiguous(), zc = logits.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "so2_gate_forward_cpu", [&] {
    forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), zc.const_data_ptr<scalar_t>(), N, C, lmax,
                             out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> so2_gate_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                         const at::Tensor& logits, bool need_x, bool need_logits) {
  const int lmax = check_args(x, logits, "so2_gate_backward");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() && grad.device() == x.device(),
              "so2_gate_backward: grad must match x in shape, dtype and device, got ", grad.sizes());
  const int64_t N = x.size(0), C = x.size(2);
  at::Tensor gx = need_x ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  at::Tensor gz = need_logits ? at::empty_like(logits, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  if (N == 0 || !(need_x || need_logits)) return {gx, gz};
  const auto gc = grad.contiguous(), xc = x.contiguous(), zc = logits.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "so2_gate_backward_cpu", [&] {
    backward_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                              zc.const_data_ptr<scalar_t>(), N, C, lmax,
                              need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr,
                              need_logits ? gz.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {gx, gz};
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CPU, m) {
  m.impl("so2_gate_forward", &so2ops::so2_gate_forward_cpu);
  m.impl("so2_gate_backward", &so2ops::so2_gate_backward_cpu);
}
