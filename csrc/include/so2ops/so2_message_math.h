// Index arithmetic and per-element math of the SO(2) tile, shared by the
// CPU (OpenMP) and CUDA kernels of so2_linear and so2_message.
//
// The "m-major tile" holds, for `count` edges, every coefficient with
// |m| <= mmax of a [count, (lmax+1)^2, C] edge-frame feature, reorganised so
// that the SO(2) linear map becomes one GEMM per order m:
//
//   block m (m = 0..mmax) is a row-major [count, ns(m) * L(m) * C] matrix,
//   ns(0) = 1, ns(m > 0) = 2 (sign s = 0 is +m, s = 1 is -m), L(m) = lmax-m+1,
//   and inside a row the entry (s, l, c) sits at (s * L(m) + (l - m)) * C + c.
//
// Blocks follow each other in the buffer, so block m starts at
// count * C * block_coeff_offset(lmax, m).  With this layout
//   m = 0:  [y0]       = [x0]       @ W0^T
//   m > 0:  [y+ | y-]  = [x+ | x-]  @ [[W1^T, W2^T], [-W2^T, W1^T]]
// which is exactly y+ = W1 x+ - W2 x-, y- = W2 x+ + W1 x- of the reference.
//
// Pure functions without any dependency besides layout.h, usable on host and
// device (SO2_HD comes from layout.h).
#pragma once

#include <stdint.h>

#include "so2ops/layout.h"

namespace so2ops {
namespace so2 {

/// Number of signs stored for order m: 1 for m = 0, 2 (+m, -m) otherwise.
SO2_HD SO2_INLINE int num_signs(int m) { return m == 0 ? 1 : 2; }

/// Number of degrees l = m..lmax of order m.
SO2_HD SO2_INLINE int num_l(int lmax, int m) { return lmax - m + 1; }

/// Coefficient rows of the tile before block m: sum_{k<m} ns(k) * L(k).
SO2_HD SO2_INLINE int block_coeff_offset(int lmax, int m) {
  if (m == 0) return 0;
  // L(0) + 2 * sum_{k=1}^{m-1} (lmax + 1 - k)
  return (lmax + 1) + 2 * ((m - 1) * (lmax + 1) - (m - 1) * m / 2);
}

/// Coefficient rows of the whole tile (every (l, m) with |m| <= mmax).
SO2_HD SO2_INLINE int tile_rows(int lmax, int mmax) { return block_coeff_offset(lmax, mmax + 1); }

/// Index of pair (m, l = m) in the m-major modulation list (layout.mod_offset).
SO2_HD SO2_INLINE int mod_offset(int lmax, int m) { return m * (lmax + 1) - m * (m - 1) / 2; }

/// Number of (m, l) pairs with m <= mmax (layout.num_mod).
SO2_HD SO2_INLINE int num_mod(int lmax, int mmax) { return mod_offset(lmax, mmax + 1); }

/// Element (p, m, s, l, c) of a tile of `count` edges with C channels.
SO2_HD SO2_INLINE int64_t tile_index(int64_t count, int64_t C, int lmax, int m, int64_t p, int s, int l, int64_t c) {
  const int L = num_l(lmax, m);
  return count * C * block_coeff_offset(lmax, m) + ((p * num_signs(m) + s) * L + (l - m)) * C + c;
}

/// Offset (channel 0) of the l-major row (l, i), i in 0..2l, of position p in a tile, or -1 when
/// the tile does not hold it (|m| > mmax, m = i - l: rows an SO(2) layer leaves zero).
SO2_HD SO2_INLINE int64_t tile_row_offset(int64_t count, int64_t C, int lmax, int mmax, int64_t p, int l, int i) {
  const int ms = i - l, m = ms < 0 ? -ms : ms;
  return m > mmax ? -1 : tile_index(count, C, lmax, m, p, ms < 0 ? 1 : 0, l, 0);
}

/// Pair q of the m-major list -> (m, l).  q must be < num_mod(lmax, lmax).
SO2_HD SO2_INLINE void decode_pair(int q, int lmax, int& m, int& l) {
  m = 0;
  while (q >= lmax - m + 1) {
    q -= lmax - m + 1;
    ++m;
  }
  l = m + q;
}

/// Integer sqrt for row k of the l-major layout: the degree l with l*l <= k.
SO2_HD SO2_INLINE int degree_of_row(int k) {
  int l = 0;
  while ((l + 1) * (l + 1) <= k) ++l;
  return l;
}

/// Packed Wigner entry w -> (l, i, j) with D^l[i, j], i, j in 0..2l.
SO2_HD SO2_INLINE void decode_wigner(int w, int& l, int& i, int& j) {
  l = 0;
  while (wigner_offset(l + 1) <= w) ++l;
  const int n = 2 * l + 1;
  const int r = w - wigner_offset(l);
  i = r / n;
  j = r - i * n;
}

/// Row i of D^l dotted with the (2l+1) rows of a feature block:
/// sum_j D[i, j] * f[j * stride].  `d_row` points at D^l[i, 0].
template <typename acc_t, typename d_t, typename f_t>
SO2_HD SO2_INLINE acc_t row_dot(const d_t* d_row, const f_t* f, int n, int64_t stride) {
  acc_t acc = acc_t(0);
  for (int j = 0; j < n; ++j) acc += static_cast<acc_t>(d_row[j]) * static_cast<acc_t>(f[j * stride]);
  return acc;
}

}  // namespace so2
}  // namespace so2ops
