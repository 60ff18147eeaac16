// The four tile kernels of so2_linear / so2_message, one set per device.
//
// The tiled driver (so2_message_driver.h) is written once against this
// interface; CpuKernels is defined in csrc/cpu/so2_tiles.cpp (OpenMP through
// at::parallel_for), CudaKernels in csrc/cuda/so2_tiles.cuh.  The GEMMs in
// between are at::mm on views of the tile buffers (MKL / cuBLAS).
//
// Conventions shared by every kernel:
// * A tile covers positions [p0, p0 + count) of an edge order: the edge at
//   position p is perm[p] (identity when perm is null).
// * `idx` maps an edge to a row of a node tensor (source or target); null
//   means the identity (so2_linear: edge e reads / writes row e).
// * An undefined `wigner` means D = identity (so2_linear); otherwise it is
//   [E, wigner_size(lmax)] packed blocks indexed by the edge id.
// * Tiles are flat buffers in the accumulation dtype with the m-major layout
//   of so2_message_math.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <stdint.h>

#include <functional>

namespace so2ops {

/// Which edges a tile covers.
struct TileSpec {
  int lmax;
  int mmax;
  int64_t p0;           // first position of the tile in the edge order
  int64_t count;        // number of edges in the tile
  const int64_t* perm;  // [E] edge id at each position, or nullptr (identity)
};

// Each backend provides the same static interface.
#define SO2OPS_DECLARE_TILE_KERNELS                                                                              \
  /* tile <- (mod (.)) D_e feat[idx[e]]  (rows |m| <= mmax only). */                                            \
  static void rotate_in(const TileSpec& spec, const at::Tensor& feat, const int64_t* idx, const at::Tensor& wigner, \
                        const at::Tensor& mod, at::Tensor& tile);                                                \
  /* Backward companion with modulation, per edge and pair (m, l, c):                                        */ \
  /*   a = D_e x[idx[e]];  grad_mod = sum_s a_s * ga_s;  a_tile = mod * a;  ga <- ga * mod                     */ \
  /* a_tile / grad_mod may be undefined (not needed); ga is updated in place.                                 */ \
  static void rotate_in_backward(const TileSpec& spec, const at::Tensor& x, const int64_t* idx,                 \
                                 const at::Tensor& wigner, const at::Tensor& mod, at::Tensor& a_tile,           \
                                 at::Tensor& ga_tile, at::Tensor& grad_mod);                                    \
  /* out[idx[e]] += D_e^T tile[e].  segmented: positions of the tile are sorted by idx and each output row is */ \
  /* summed by one thread in position order (deterministic); otherwise atomics.                               */ \
  static void rotate_out_add(const TileSpec& spec, const at::Tensor& tile, const int64_t* idx,                  \
                             const at::Tensor& wigner, at::Tensor& out, bool segmented);                        \
  /* grad_wigner[e, (l,i,j)] = sum_c ga[e,(l,i),c] x[src[e],(l,j),c] + y[e,(l,i),c] g[tgt[e],(l,j),c]          */ \
  /* for rows |m_i| <= mmax, 0 elsewhere.  An undefined ga (y) drops the first (second) term; a null src    */ \
  /* (tgt) reads row e.                                                                                       */ \
  static void wigner_grad(const TileSpec& spec, const at::Tensor& ga, const at::Tensor& x, const int64_t* src,  \
                          const at::Tensor& y, const at::Tensor& g, const int64_t* tgt, at::Tensor& grad_wigner); \
  /* Stable order of the edges by key (a row of edge_index, values in [0, n)): [E] int64 on the key's device. */ \
  static at::Tensor sort_by(const at::Tensor& key, int64_t n);

/// Body of a tile loop: `fn(worker, first_tile, end_tile)`; worker in [0, num_workers()).
using TileLoop = std::function<void(int, int64_t, int64_t)>;

/// CPU: scatters are always segmented (no atomics), hence always deterministic.
/// Tiles are spread over the threads (kParallelTiles): one parallel region per
/// pass, each thread runs every kernel and GEMM of its own tiles serially (MKL
/// runs single-threaded inside the region), tiles cut at destination segment
/// boundaries so that no two threads write the same output row.
struct CpuKernels {
  static constexpr bool kAlwaysSegmented = true;
  static constexpr bool kParallelTiles = true;
  static constexpr bool kComplex3M = true;   // m > 0 blocks as 3-GEMM complex products (driver)
  static constexpr int64_t kTileBytes = int64_t(3) << 20;  // per thread: keep the tile working set near L2
  // ... but at least 256 edges: the weight-gradient GEMMs sum over the edges of a tile, and
  // shorter sums re-read and re-write the weight-sized products too often (C = 128: ~1.4x slower).
  static constexpr int64_t kMinTile = 256;
  /// Threads of the tile loop (torch.get_num_threads()).
  static int num_workers();
  /// Tiles [0, n) in one at::parallel_for (contiguous, static chunks per thread).
  static void parallel_tiles(int64_t n, const TileLoop& fn);
  SO2OPS_DECLARE_TILE_KERNELS
};

/// CUDA: atomics unless `deterministic`; half / bfloat16 accumulate in float.
/// Tiles run in sequence on the current stream.
struct CudaKernels {
  static constexpr bool kAlwaysSegmented = false;
  static constexpr bool kParallelTiles = false;
  static constexpr bool kComplex3M = false;
  static constexpr int64_t kTileBytes = int64_t(128) << 20;
  static constexpr int64_t kMinTile = 256;
  static int num_workers() { return 1; }
  static void parallel_tiles(int64_t n, const TileLoop& fn) { fn(0, 0, n); }
  SO2OPS_DECLARE_TILE_KERNELS
};

#undef SO2OPS_DECLARE_TILE_KERNELS

}  // namespace so2ops
