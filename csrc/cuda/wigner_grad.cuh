// The one Wigner-gradient contraction of the CUDA backend, shared by `rotate`
// (rotate.cu) and the tile driver of so2_linear / so2_message /
// so2_frame_linear (so2_tiles.cuh).
//
// For every packed entry (l, a, b) of edge e's Wigner blocks:
//
//   grad_wigner[e, (l, a, b)] = sum over terms t of
//                               sum_c  F_t[(l, r), c] * G_t[row_t(e), (l, r'), c],
//   (r, r') = wgrad_rows(inverse, a, b)             (so2ops/rotate.h)
//
// F_t is the term's edge-frame side (one edge's rows: rotate's output
// gradient, or a tile's rotate-in gradient / conv output, rows |m| > mmax
// absent = zero) and G_t the gathered side (x[src] or grad_out[tgt]).
//
// One block per edge (blockIdx.x = its position in the tile or edge list):
// both sides' rows of one degree-agnostic [K, `slab` <= 32 channel] slab are staged
// through shared memory (padded rows: no bank conflicts), coalesced over
// channels, and each thread owns up to kEntriesPerThread packed entries
// (wigner_size(8) = 969 <= 1024), summing its two rows from shared memory.
// A gathered row outside [0, n_rows) adds nothing to the edge's gradient (no
// device sync needed for safety; index values are validated on the host where
// checks are on); entries of rows the frame side lacks (|m| > mmax) are exactly 0.
#pragma once

#include <cuda_runtime.h>

#include <stdint.h>

#include "so2ops/layout.h"
#include "so2ops/rotate.h"
#include "so2ops/so2_message_math.h"
#include "so2ops/tile_knob.h"

namespace so2ops {
namespace wgrad {

constexpr int kThreads = 256;
constexpr int kTileC = 32;           // channels per shared-memory slab
constexpr int kTileLd = kTileC + 1;  // padded: the rows land in different banks
constexpr int kEntriesPerThread = 4;
static_assert(kEntriesPerThread * kThreads >= kMaxWignerSize, "wigner_grad: entries per thread");

/// Channels per slab: kTileC, or fewer under the tile knob (tile_knob.h), so that the tests'
/// few channels take several slabs.  Host side, read at each launch.
inline int slab_channels() { return static_cast<int>(tile_cap(kTileC)); }

/// Edge-frame rows in the l-major [edges, K, C] layout (rotate's output gradient).
template <typename T>
struct DenseRows {
  const T* data;
  int64_t C;
  int lmax;
  __device__ __forceinline__ const T* row(int64_t pos, int l, int i) const {
    return data + (pos * num_coeffs(lmax) + l * l + i) * C;
  }
  __device__ __forceinline__ bool holds(int, int) const { return true; }
};

/// Edge-frame rows of an m-major tile (so2_message_math.h); rows |m| > mmax are absent (null).
template <typename T>
struct TileRows {
  const T* data;  // null: the term is off
  int64_t C;
  int64_t count;
  int lmax, mmax;
  __device__ __forceinline__ const T* row(int64_t pos, int l, int i) const {
    const int64_t off = so2::tile_row_offset(count, C, lmax, mmax, pos, l, i);
    return off < 0 ? nullptr : data + off;
  }
  /// Whether the tile has row (l, i) at all (|m| <= mmax); entries of the other rows are exactly 0.
  __device__ __forceinline__ bool holds(int l, int i) const { return (i > l ? i - l : l - i) <= mmax; }
};

/// One term: edge-frame rows F, gathered rows G[index[e]] (G: [n_rows, K, C]).
template <typename scalar_t, typename Frame>
struct Term {
  Frame frame;
  const scalar_t* gathered;  // null: the term is off
  const int64_t* index;      // row of G for edge e; null: row e
  int64_t n_rows;
};

/// Adds one term's slabs into this thread's entries (see wigner_grad_kernel).
template <typename scalar_t, typename acc_t, typename Frame>
__device__ __forceinline__ void add_term(const Term<scalar_t, Frame>& term, int nc, int64_t pos, int64_t e,
                                         const int (&f_row)[kEntriesPerThread], const int (&g_row)[kEntriesPerThread],
                                         int slab, acc_t* fs, acc_t* gs, acc_t (&acc)[kEntriesPerThread]) {
  if (term.gathered == nullptr) return;
  const int64_t row = term.index ? term.index[e] : e;
  // An out-of-range gathered row adds nothing (not 0 * frame: a non-finite frame entry would give NaN).
  // Uniform over the block (one edge per block), so no thread misses a __syncthreads.
  if (row < 0 || row >= term.n_rows) return;
  const int64_t C = term.frame.C;
  const scalar_t* ge = term.gathered + row * nc * C;
  // Slabs of `slab` channels; the shared rows stay kTileC wide (columns >= slab are zero), so the
  // inner sum keeps its compile-time length whatever the slab.
  for (int64_t c0 = 0; c0 < C; c0 += slab) {
    __syncthreads();  // the previous slab is consumed
    for (int i = threadIdx.x; i < nc * kTileC; i += kThreads) {
      const int r = i / kTileC, cc = i - r * kTileC;
      const int64_t c = c0 + cc;
      const bool in = cc < slab && c < C;
      const int l = so2::degree_of_row(r);
      const auto* fr = in ? term.frame.row(pos, l, r - l * l) : nullptr;
      fs[r * kTileLd + cc] = fr ? static_cast<acc_t>(fr[c]) : acc_t(0);
      gs[r * kTileLd + cc] = in ? static_cast<acc_t>(ge[r * C + c]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kEntriesPerThread; ++s) {
      if (f_row[s] < 0) continue;
      const acc_t* a = fs + f_row[s] * kTileLd;
      const acc_t* b = gs + g_row[s] * kTileLd;
      acc_t sum = acc_t(0);
#pragma unroll 8
      for (int cc = 0; cc < kTileC; ++cc) sum += a[cc] * b[cc];
      acc[s] += sum;
    }
  }
}

/// grad_wigner[e] for the edge at position blockIdx.x of [p0, p0 + gridDim.x) in `perm` (null:
/// identity), summing the terms t0 and t1 (a term is skipped when its `gathered` is null), in
/// slabs of `slab` (1..kTileC, slab_channels()) channels.
/// Dynamic shared memory: smem_bytes<acc_t>(lmax).
template <typename scalar_t, typename acc_t, typename Frame>
__global__ void __launch_bounds__(kThreads)
    wigner_grad_kernel(const Term<scalar_t, Frame> t0, const Term<scalar_t, Frame> t1, int lmax, bool inverse,
                       int64_t p0, const int64_t* __restrict__ perm, int slab, scalar_t* __restrict__ gw) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nc = num_coeffs(lmax), wsize = wigner_size(lmax);
  acc_t* fs = reinterpret_cast<acc_t*>(smem_raw);  // [nc][kTileLd]: edge-frame rows
  acc_t* gs = fs + nc * kTileLd;                    // [nc][kTileLd]: gathered rows
  const int64_t pos = blockIdx.x;
  const int64_t e = perm ? perm[p0 + pos] : p0 + pos;

  // The two rows (l-major indices) each of this thread's entries pairs up.
  int f_row[kEntriesPerThread], g_row[kEntriesPerThread];
  acc_t acc[kEntriesPerThread];
#pragma unroll
  for (int s = 0; s < kEntriesPerThread; ++s) {
    const int w = threadIdx.x + s * kThreads;
    acc[s] = acc_t(0);
    f_row[s] = g_row[s] = -1;
    if (w < wsize) {
      int l, a, b, fr, gr;
      so2::decode_wigner(w, l, a, b);
      wgrad_rows(inverse, a, b, fr, gr);
      // A row the frame side does not hold (tile rows |m| > mmax) leaves the entry exactly 0: it is
      // not summed as 0 * gathered (a non-finite gathered entry would give NaN).  Both terms share it.
      if (t0.frame.holds(l, fr)) {
        f_row[s] = l * l + fr;
        g_row[s] = l * l + gr;
      }
    }
  }
  add_term<scalar_t, acc_t, Frame>(t0, nc, pos, e, f_row, g_row, slab, fs, gs, acc);
  add_term<scalar_t, acc_t, Frame>(t1, nc, pos, e, f_row, g_row, slab, fs, gs, acc);
#pragma unroll
  for (int s = 0; s < kEntriesPerThread; ++s) {
    const int w = threadIdx.x + s * kThreads;
    if (w < wsize) gw[e * wsize + w] = static_cast<scalar_t>(acc[s]);
  }
}

/// Dynamic shared memory of one block of wigner_grad_kernel.
template <typename acc_t>
inline size_t smem_bytes(int lmax) {
  return 2 * size_t(num_coeffs(lmax)) * kTileLd * sizeof(acc_t);
}

}  // namespace wgrad
}  // namespace so2ops
