// Device-agnostic tiled driver of so2_linear and so2_message.
//
// Forward, per tile of T edges (T chosen so the tile buffers stay within
// Kernels::kTileBytes):
//   A  = mod (.) D_e x[src[e]]              rotate_in      (own kernel)
//   B_m = SO2Lin_m(A_m) for m = 0..mmax     at::mm / addmm (MKL / cuBLAS): the (+m | -m)
//                                           halves times the W1 / W2 blocks read in place
//   out[tgt[e]] += D_e^T B[e]               rotate_out_add (own kernel)
// Nothing is stored for the backward, which recomputes per tile:
//   G   = D_e g[tgt[e]]                     (rows |m| <= mmax)
//   GA_m = SO2Lin_m^T(G_m)                  gradient w.r.t. the modulated a'
//   a = D_e x[src[e]]; grad_mod = sum_s a * GA; A' = mod * a; GA *= mod
//   gW_m += G_m^T A'_m per W1 / W2 block    (accumulated over tiles, straight into the
//                                           packed weight gradient)
//   Y_m = SO2Lin_m(A'_m); grad_wigner[e] = sum_c GA (x) x[src] + Y (x) g[tgt]
//   grad_x[src[e]] += D_e^T GA[e]
// so2_linear is the same code with D = identity and src = tgt = identity.
//
// Scatters go through a stable order of the edges by their destination when
// they must be segmented (always on CPU, `deterministic` on CUDA; so2ops/
// segments.h): each output row is then summed by one thread in a fixed order,
// so the result is bitwise reproducible.
//
// CUDA runs the tiles in sequence, each kernel and GEMM over the whole device.
// CPU (K::kParallelTiles) opens one parallel region per pass instead: each
// thread takes a contiguous range of whole tiles and runs every kernel and GEMM
// of them serially (MKL is single-threaded inside the region), tiles are cut at
// destination segment boundaries (no two threads write one output row), and the
// weight gradient is summed per thread, then over threads in thread order
// (reproducible for a given thread count).  With K::kComplex3M the m > 0 blocks
// are complex products done with three real GEMMs instead of four (see below).
#pragma once

// Fine-grained ATen headers only: this header is compiled by nvcc too.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "so2ops/layout.h"
#include "so2ops/so2_message_kernels.h"
#include "so2ops/so2_message_math.h"
#include "so2ops/tile_knob.h"

namespace so2ops {
namespace driver {

/// Accumulation dtype: float for half / bfloat16, the input dtype otherwise.
inline at::ScalarType acc_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

/// Problem sizes of one call.
struct Dims {
  int lmax;
  int mmax;
  int64_t cin;
  int64_t cout;
  int64_t coeffs() const { return num_coeffs(lmax); }
  int64_t rows() const { return so2::tile_rows(lmax, mmax); }
  int64_t nmod() const { return so2::num_mod(lmax, mmax); }
  /// Packed weight count (layout.weight_size).
  int64_t weight_size() const {
    int64_t n = 0;
    for (int m = 0; m <= mmax; ++m) {
      const int64_t L = so2::num_l(lmax, m);
      n += so2::num_signs(m) * L * cout * L * cin;
    }
    return n;
  }
};

/// The device and dtype a tile backend's entry point accepts (so2_linear, so2_message,
/// so2_frame_linear): CPU float32 / float64; CUDA also float16 / bfloat16.
inline void check_tile_backend(const at::Tensor& x, const char* op, bool cuda) {
  const auto t = x.scalar_type();
  if (cuda) {
    TORCH_CHECK(x.is_cuda(), op, ": CUDA kernel got a tensor on ", x.device());
    TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
                ": the CUDA backend supports float32/float64/float16/bfloat16, got ", t);
  } else {
    TORCH_CHECK(x.device().is_cpu(), op, ": CPU kernel got a tensor on ", x.device());
    TORCH_CHECK(t == at::kFloat || t == at::kDouble, op, ": the CPU backend supports float32 and float64, got ", t);
  }
}

/// torch.use_deterministic_algorithms(True) promises run-to-run identical results: honour
/// it by taking the segmented (sorted, atomic-free) scatter even when the caller did not
/// ask for `deterministic` explicitly (the CPU backend always is).
inline bool want_deterministic(bool deterministic) {
  return deterministic || at::globalContext().deterministicAlgorithms();
}

/// Metadata checks shared by every entry point (the Python wrappers check the
/// same, but the C++ ops must be safe when called directly).
inline void check_so2_inputs(const char* op, const at::Tensor& x, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& mod, int64_t lmax, int64_t mmax, int64_t cout,
                             int64_t num_edges) {
  TORCH_CHECK(lmax >= 0 && lmax <= kLmaxSupported, op, ": lmax=", lmax, " must be in [0, ", kLmaxSupported, "]");
  TORCH_CHECK(mmax >= 0 && mmax <= lmax, op, ": mmax=", mmax, " must be in [0, lmax=", lmax, "]");
  TORCH_CHECK(cout >= 1, op, ": out_channels must be >= 1, got ", cout);
  TORCH_CHECK(x.dim() == 3 && x.size(1) == num_coeffs(int(lmax)) && x.size(2) >= 1, op,
              ": x must be [*, (lmax+1)^2, C>=1], got ", x.sizes());
  const Dims d{int(lmax), int(mmax), x.size(2), cout};
  TORCH_CHECK(weight.dim() == 1 && weight.numel() == d.weight_size(), op, ": weight must be [",
              d.weight_size(), "], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.device() == x.device(), op,
              ": weight must match x in dtype and device");
  if (mod.has_value() && mod->defined()) {
    TORCH_CHECK(mod->dim() == 3 && mod->size(0) == num_edges && mod->size(1) == d.nmod() && mod->size(2) == d.cin,
                op, ": modulation must be [", num_edges, ", ", d.nmod(), ", ", d.cin, "], got ", mod->sizes());
    TORCH_CHECK(mod->scalar_type() == x.scalar_type() && mod->device() == x.device(), op,
                ": modulation must match x in dtype and device");
  }
}

/// Checks of so2_message's extra inputs.
inline void check_message_inputs(const at::Tensor& x, const at::Tensor& wigner, const at::Tensor& edge_index,
                                 int64_t lmax) {
  TORCH_CHECK(wigner.dim() == 2 && wigner.size(1) == wigner_size(int(lmax)),
              "so2_message: wigner must be [E, ", wigner_size(int(lmax)), "], got ", wigner.sizes());
  TORCH_CHECK(wigner.scalar_type() == x.scalar_type() && wigner.device() == x.device(),
              "so2_message: wigner must match x in dtype and device");
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2 && edge_index.size(1) == wigner.size(0),
              "so2_message: edge_index must be [2, E=", wigner.size(0), "], got ", edge_index.sizes());
  TORCH_CHECK(edge_index.scalar_type() == at::kLong && edge_index.device() == x.device(),
              "so2_message: edge_index must be int64 on the device of x");
}

/// Optional tensor -> contiguous tensor or undefined.
inline at::Tensor defined_or_empty(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

/// Views of the packed weight (in dtype `acc`) per order: W0 (m = 0) or W1, W2,
/// each [Lm*Cout, Lm*Cin].  No copy when the weight already has dtype `acc`:
/// the GEMMs below read the blocks in place (transposed views), so nothing is
/// re-packed per call (re-packing cost a third of the time at molecule scale,
/// where the weights are large next to the activations).
struct WeightViews {
  std::vector<at::Tensor> w1;  // W0 for m = 0
  std::vector<at::Tensor> w2;  // undefined for m = 0
};

inline WeightViews weight_views(const at::Tensor& w, const Dims& d) {
  WeightViews v;
  int64_t off = 0;
  for (int m = 0; m <= d.mmax; ++m) {
    const int64_t L = so2::num_l(d.lmax, m), rows = L * d.cout, cols = L * d.cin;
    v.w1.push_back(w.narrow(0, off, rows * cols).view({rows, cols}));
    off += rows * cols;
    if (m == 0) {
      v.w2.emplace_back();
      continue;
    }
    v.w2.push_back(w.narrow(0, off, rows * cols).view({rows, cols}));
    off += rows * cols;
  }
  return v;
}

/// y = SO2Lin_m(a) on one tile block: y_0 = a_0 W0^T; for m > 0, with the (+m | -m)
/// halves of the columns, y+ = a+ W1^T - a- W2^T and y- = a+ W2^T + a- W1^T.
inline void so2_block_mm(const at::Tensor& a, const WeightViews& w, int m, at::Tensor& y) {
  if (m == 0) {
    at::mm_out(y, a, w.w1[0].t());
    return;
  }
  const int64_t ci = w.w1[m].size(1), co = w.w1[m].size(0);
  const at::Tensor ap = a.narrow(1, 0, ci), an = a.narrow(1, ci, ci);
  at::Tensor yp = y.narrow(1, 0, co), yn = y.narrow(1, co, co);
  yp.addmm_(ap, w.w1[m].t(), 0, 1).addmm_(an, w.w2[m].t(), 1, -1);
  yn.addmm_(ap, w.w2[m].t(), 0, 1).addmm_(an, w.w1[m].t(), 1, 1);
}

/// ga = SO2Lin_m^T(g): ga_0 = g_0 W0; ga+ = g+ W1 + g- W2; ga- = -g+ W2 + g- W1.
inline void so2_block_mm_t(const at::Tensor& g, const WeightViews& w, int m, at::Tensor& ga) {
  if (m == 0) {
    at::mm_out(ga, g, w.w1[0]);
    return;
  }
  const int64_t ci = w.w1[m].size(1), co = w.w1[m].size(0);
  const at::Tensor gp = g.narrow(1, 0, co), gn = g.narrow(1, co, co);
  at::Tensor ap = ga.narrow(1, 0, ci), an = ga.narrow(1, ci, ci);
  ap.addmm_(gp, w.w1[m], 0, 1).addmm_(gn, w.w2[m], 1, 1);
  an.addmm_(gp, w.w2[m], 0, -1).addmm_(gn, w.w1[m], 1, 1);
}

/// Weight gradients of one tile block, accumulated into views of the packed gradient:
/// dW0 += g^T a; dW1 += g+^T a+ + g-^T a-; dW2 += g-^T a+ - g+^T a-.
inline void so2_block_weight_grad(const at::Tensor& a, const at::Tensor& g, WeightViews& gw, int m) {
  if (m == 0) {
    gw.w1[0].addmm_(g.t(), a);
    return;
  }
  const int64_t ci = gw.w1[m].size(1), co = gw.w1[m].size(0);
  const at::Tensor ap = a.narrow(1, 0, ci), an = a.narrow(1, ci, ci);
  const at::Tensor gp = g.narrow(1, 0, co), gn = g.narrow(1, co, co);
  gw.w1[m].addmm_(gp.t(), ap).addmm_(gn.t(), an);
  gw.w2[m].addmm_(gn.t(), ap).addmm_(gp.t(), an, 1, -1);
}

// ---- Gauss / 3M form of the m > 0 blocks (CPU).
// The m > 0 map is a complex matrix product, (y+ + i y-) = (W1 + i W2)(a+ + i a-),
// so three real GEMMs do the work of four:
//   t1 = a+ W1^T, t2 = a- W2^T, t3 = (a+ + a-)(W1 + W2)^T;  y+ = t1 - t2,  y- = t3 - t1 - t2.
// Same for the transposed map and the weight gradient (below).  A quarter fewer
// multiply-adds in the m > 0 GEMMs for a few passes over tile-sized buffers.

/// W1 + W2 and W1 - W2 per order m > 0 (index 0 unused).
struct WeightSums {
  std::vector<at::Tensor> sum;
  std::vector<at::Tensor> diff;
};

inline WeightSums weight_sums(const WeightViews& w) {
  WeightSums s;
  s.sum.emplace_back();
  s.diff.emplace_back();
  for (size_t m = 1; m < w.w1.size(); ++m) {
    s.sum.push_back(at::add(w.w1[m], w.w2[m]));
    s.diff.push_back(at::sub(w.w1[m], w.w2[m]));
  }
  return s;
}

/// Per-worker scratch of the 3M products: `in` / `out` hold up to `rows` x the
/// widest (+m or -m) half of an input / output block; `w1`, `w2` one weight block.
struct Scratch3M {
  at::Tensor in, out, w1, w2;
  Scratch3M() = default;
  Scratch3M(int64_t rows, const Dims& d, const at::TensorOptions& opts, bool weight_grad) {
    const int64_t L = so2::num_l(d.lmax, 1);
    if (d.mmax < 1) return;
    in = at::empty({rows * L * d.cin}, opts);
    out = at::empty({rows * L * d.cout}, opts);
    if (weight_grad) {
      w1 = at::empty({L * d.cout * L * d.cin}, opts);
      w2 = at::empty({L * d.cout * L * d.cin}, opts);
    }
  }
  static at::Tensor mat(const at::Tensor& buf, int64_t r, int64_t c) { return buf.narrow(0, 0, r * c).view({r, c}); }
};

/// so2_block_mm with three GEMMs for m > 0.
inline void so2_block_mm_3m(const at::Tensor& a, const WeightViews& w, const WeightSums& ws, int m, at::Tensor& y,
                            Scratch3M& sc) {
  if (m == 0) return so2_block_mm(a, w, m, y);
  const int64_t n = a.size(0), ci = w.w1[m].size(1), co = w.w1[m].size(0);
  const at::Tensor ap = a.narrow(1, 0, ci), an = a.narrow(1, ci, ci);
  at::Tensor yp = y.narrow(1, 0, co), yn = y.narrow(1, co, co);
  at::Tensor s = Scratch3M::mat(sc.in, n, ci), t = Scratch3M::mat(sc.out, n, co);
  at::add_out(s, ap, an);
  at::mm_out(yp, ap, w.w1[m].t());         // t1
  at::mm_out(yn, s, ws.sum[m].t());        // t3
  at::mm_out(t, an, w.w2[m].t());          // t2
  yn.sub_(yp).sub_(t);
  yp.sub_(t);
}

/// so2_block_mm_t with three GEMMs for m > 0:
/// u1 = g+ W1, u2 = g- W2, u3 = (g+ + g-)(W1 - W2);  ga+ = u1 + u2,  ga- = u3 - u1 + u2.
inline void so2_block_mm_t_3m(const at::Tensor& g, const WeightViews& w, const WeightSums& ws, int m, at::Tensor& ga,
                              Scratch3M& sc) {
  if (m == 0) return so2_block_mm_t(g, w, m, ga);
  const int64_t n = g.size(0), ci = w.w1[m].size(1), co = w.w1[m].size(0);
  const at::Tensor gp = g.narrow(1, 0, co), gn = g.narrow(1, co, co);
  at::Tensor ap = ga.narrow(1, 0, ci), an = ga.narrow(1, ci, ci);
  at::Tensor s = Scratch3M::mat(sc.out, n, co), t = Scratch3M::mat(sc.in, n, ci);
  at::add_out(s, gp, gn);
  at::mm_out(ap, gp, w.w1[m]);             // u1
  at::mm_out(an, s, ws.diff[m]);           // u3
  at::mm_out(t, gn, w.w2[m]);              // u2
  an.sub_(ap).add_(t);
  ap.add_(t);
}

/// so2_block_weight_grad with three GEMMs for m > 0:
/// X = g+^T a+, Y = g-^T a-, Z = (g+ + g-)^T (a+ - a-);  dW1 += X + Y,  dW2 += Z - X + Y.
inline void so2_block_weight_grad_3m(const at::Tensor& a, const at::Tensor& g, WeightViews& gw, int m,
                                     Scratch3M& sc) {
  if (m == 0) return so2_block_weight_grad(a, g, gw, m);
  const int64_t n = a.size(0), ci = gw.w1[m].size(1), co = gw.w1[m].size(0);
  const at::Tensor ap = a.narrow(1, 0, ci), an = a.narrow(1, ci, ci);
  const at::Tensor gp = g.narrow(1, 0, co), gn = g.narrow(1, co, co);
  at::Tensor gs = Scratch3M::mat(sc.out, n, co), ad = Scratch3M::mat(sc.in, n, ci);
  at::Tensor X = Scratch3M::mat(sc.w1, co, ci), Y = Scratch3M::mat(sc.w2, co, ci);
  at::add_out(gs, gp, gn);
  at::sub_out(ad, ap, an);
  at::mm_out(X, gp.t(), ap);
  at::mm_out(Y, gn.t(), an);
  gw.w2[m].addmm_(gs.t(), ad);
  gw.w1[m].add_(X).add_(Y);
  gw.w2[m].sub_(X).add_(Y);
}

/// Block m of a tile buffer as a contiguous [count, ns*L*C] matrix.
inline at::Tensor tile_block(const at::Tensor& buf, int64_t count, int64_t C, int lmax, int m) {
  const int64_t width = so2::num_signs(m) * so2::num_l(lmax, m) * C;
  return buf.narrow(0, count * C * so2::block_coeff_offset(lmax, m), count * width).view({count, width});
}

/// Edges per tile: as many as fit `budget` bytes, at least `min_tile`, at most E.
/// The tile knob (tile_knob.h: so2ops.testing.tile_size(n) or SO2OPS_TILE_EDGES=<n>)
/// forces n edges per tile: tests use it to exercise tile boundaries, e.g.
/// destination segments split across tiles.
inline int64_t tile_edges(int64_t E, int64_t bytes_per_edge, int64_t budget, int64_t min_tile) {
  int64_t t = std::max<int64_t>(min_tile, budget / std::max<int64_t>(1, bytes_per_edge));
  if (const int64_t forced = tile_override()) t = forced;
  return std::max<int64_t>(1, std::min<int64_t>(E, t));
}

/// The tiles of one pass over the edge order: tile t covers positions [bounds[t], bounds[t+1]).
struct TilePlan {
  std::vector<int64_t> bounds;
  int64_t max_len = 0;    // longest tile (buffer size in edges)
  bool parallel = false;  // tiles spread over K::num_workers() workers
  int64_t count() const { return int64_t(bounds.size()) - 1; }
};

/// Tiles of about `T` positions; with `key` (host pointer: the scatter row of each
/// edge, positions ordered by `perm`) every cut falls between two segments of
/// equal key, so that tiles never share an output row.
inline TilePlan cut_tiles(int64_t E, int64_t T, const int64_t* key, const int64_t* perm) {
  TilePlan plan;
  plan.bounds.push_back(0);
  auto key_at = [&](int64_t p) { return key[perm ? perm[p] : p]; };
  for (int64_t p = 0; p < E;) {
    int64_t q = std::min(E, p + T);
    if (key != nullptr && q < E) {
      int64_t r = q;
      while (r > p && key_at(r - 1) == key_at(r)) --r;  // back to the head of the segment at q
      if (r == p) {                                     // one segment longer than T: take it whole
        r = q;
        while (r < E && key_at(r - 1) == key_at(r)) ++r;
      }
      q = r;
    }
    plan.max_len = std::max(plan.max_len, q - p);
    plan.bounds.push_back(q);
    p = q;
  }
  return plan;
}

/// Tiles of a pass.  On a backend with parallel tiles (CPU) and several workers
/// the tiles are at most E / workers long (every worker gets one) and cut at the
/// segments of `key`; when a segment is too long for that (a node with a huge
/// degree), the pass falls back to tiles in sequence with parallel kernels.
template <class K>
TilePlan plan_tiles(int64_t E, int64_t bytes_per_edge, const int64_t* key, const int64_t* perm) {
  int64_t T = tile_edges(E, bytes_per_edge, K::kTileBytes, K::kMinTile);
  const int workers = K::kParallelTiles ? K::num_workers() : 1;
  if (workers > 1 && E > 1) {
    if (tile_override() == 0) T = std::min(T, (E + workers - 1) / workers);
    TilePlan plan = cut_tiles(E, T, key, perm);
    if (plan.count() > 1 && plan.max_len <= 4 * T) {
      plan.parallel = true;
      return plan;
    }
  }
  return cut_tiles(E, T, nullptr, nullptr);
}

/// Runs `fn(worker, first_tile, end_tile)` over the plan's tiles: in one parallel
/// region when `plan.parallel`, else in sequence on this thread (worker 0).
template <class K>
void run_tiles(const TilePlan& plan, const TileLoop& fn) {
  if (plan.parallel) {
    K::parallel_tiles(plan.count(), fn);
  } else {
    fn(0, 0, plan.count());
  }
}

/// The two sides of one edge pass: rotate-in (gather `src`, frame `wig_in`) and
/// rotate-out (frame `wig_out`, scatter `tgt`), each side optional: an undefined
/// Wigner is the identity, a null index is edge e <-> row e.  so2_message has
/// both; so2_linear neither; so2_frame_linear one of them.
struct Sides {
  at::Tensor wig_in;
  const int64_t* src;
  at::Tensor wig_out;
  const int64_t* tgt;
};

/// Per-edge extras of so2_frame_linear, in the accumulation dtype (undefined: none):
/// y_e = scale_e * (SO2Lin(...) + bias on the rows (l, 0)).
struct Extras {
  at::Tensor bias;   // [L0 * cout]
  at::Tensor scale;  // [E]
};

/// scale[edge at each position of the tile] as a [count, 1] column (for broadcasting over a block).
inline at::Tensor tile_scale(const at::Tensor& scale, const at::Tensor& perm, int64_t p0, int64_t count) {
  const at::Tensor s = perm.defined() ? scale.index_select(0, perm.narrow(0, p0, count)) : scale.narrow(0, p0, count);
  return s.view({count, 1});
}

/// Block m = 0 of a tile plus the bias (the m = 0 block's row is (l, c), l = 0..lmax: the bias layout).
inline void add_tile_bias(at::Tensor& tile, const at::Tensor& bias, int64_t count, int64_t C, int lmax) {
  tile_block(tile, count, C, lmax, 0).add_(bias.view({1, bias.numel()}));
}

/// Every block of a tile times the per-edge column `s`.
inline void scale_tile(at::Tensor& tile, const at::Tensor& s, int64_t count, int64_t C, const Dims& d) {
  for (int m = 0; m <= d.mmax; ++m) tile_block(tile, count, C, d.lmax, m).mul_(s);
}

/// out_acc[n_out, K, cout] (+)= sum over edges of D_out^T (scale (SO2Lin(mod (.) D_in feat[src]) + bias))
/// scattered to tgt.  `perm` orders the edges by tgt when `segmented` (may be undefined for identity tgt).
template <class K>
void tiled_forward(const at::Tensor& x, const Sides& sides, const at::Tensor& perm, int64_t E,
                   const at::Tensor& weight, const at::Tensor& mod, const Extras& ex, const Dims& d, bool segmented,
                   at::Tensor& out_acc) {
  const int64_t *src = sides.src, *tgt = sides.tgt;
  if (E == 0) return;
  const at::ScalarType acc = out_acc.scalar_type();
  const at::Tensor w_acc = weight.to(acc);
  const WeightViews wv = weight_views(w_acc, d);
  const int64_t R = d.rows();
  const int64_t* perm_ptr = perm.defined() ? perm.data_ptr<int64_t>() : nullptr;
  const TilePlan plan = plan_tiles<K>(E, R * (d.cin + d.cout) * int64_t(c10::elementSize(acc)),
                                      (K::kParallelTiles && segmented) ? tgt : nullptr, perm_ptr);
  const auto opts = x.options().dtype(acc);
  const WeightSums wsum = K::kComplex3M ? weight_sums(wv) : WeightSums();
  run_tiles<K>(plan, [&](int /*worker*/, int64_t t0, int64_t t1) {
    at::Tensor a = at::empty({plan.max_len * R * d.cin}, opts);
    at::Tensor b = at::empty({plan.max_len * R * d.cout}, opts);
    Scratch3M sc = K::kComplex3M ? Scratch3M(plan.max_len, d, opts, false) : Scratch3M();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = plan.bounds[t];
      const TileSpec spec{d.lmax, d.mmax, p0, plan.bounds[t + 1] - p0, perm_ptr};
      K::rotate_in(spec, x, src, sides.wig_in, mod, a);
      for (int m = 0; m <= d.mmax; ++m) {
        at::Tensor bm = tile_block(b, spec.count, d.cout, d.lmax, m);
        const at::Tensor am = tile_block(a, spec.count, d.cin, d.lmax, m);
        if (K::kComplex3M) {
          so2_block_mm_3m(am, wv, wsum, m, bm, sc);
        } else {
          so2_block_mm(am, wv, m, bm);
        }
      }
      if (ex.bias.defined()) add_tile_bias(b, ex.bias, spec.count, d.cout, d.lmax);
      if (ex.scale.defined()) scale_tile(b, tile_scale(ex.scale, perm, p0, spec.count), spec.count, d.cout, d);
      K::rotate_out_add(spec, b, tgt, sides.wig_out, out_acc, segmented);
    }
  });
}

/// Gradient buffers of the backward; undefined members are not wanted.
struct Grads {
  at::Tensor x_acc;              // [n_src, K, cin] accumulation dtype, zero-initialised
  at::Tensor wigner;             // [E, P] every entry written (the terms of both sides' frames summed)
  at::Tensor weight;             // packed weight gradient (accumulation dtype, zeros)
  at::Tensor mod;                // [E, nmod, cin] every entry written
  at::Tensor bias;               // [L0 * cout] accumulation dtype, zeros
  at::Tensor scale;              // [E] accumulation dtype, every entry written
};

/// Backward of tiled_forward; `perm` orders the edges by src when `segmented`.
/// With parallel tiles each worker accumulates its own weight (and bias) gradient; they are
/// summed in worker order at the end (deterministic for a given thread count).
/// Per tile, with G = D_out g[tgt] (unscaled) and A' = mod (.) D_in x[src]:
///   GA = s SO2Lin^T(G); grad_mod, GA *= mod (rotate_in_backward);
///   Y = SO2Lin(A') + bias; grad_scale = <Y, G>; grad_bias += sum s G_0;
///   gW += (s G)^T A'; grad_wigner = GA (x) x[src] (in side) + s Y (x) g[tgt] (out side);
///   grad_x[src] += D_in^T GA.
template <class K>
void tiled_backward(const at::Tensor& grad, const at::Tensor& x, const Sides& sides, const at::Tensor& perm, int64_t E,
                    const at::Tensor& weight, const at::Tensor& mod, const Extras& ex, const Dims& d, bool segmented,
                    at::ScalarType acc, Grads& out) {
  if (E == 0) return;
  const int64_t *src = sides.src, *tgt = sides.tgt;
  const bool need_x = out.x_acc.defined(), need_wig = out.wigner.defined();
  const bool need_w = out.weight.defined(), need_mod = out.mod.defined();
  const bool need_b = out.bias.defined(), need_s = out.scale.defined();
  const bool wig_in_term = need_wig && sides.wig_in.defined(), wig_out_term = need_wig && sides.wig_out.defined();
  const bool has_mod = mod.defined(), has_scale = ex.scale.defined();
  const bool need_ga = need_x || wig_in_term || need_mod;  // gradient w.r.t. the rotated input
  const bool need_y = wig_out_term || need_s;              // the layer's output Y on the tile
  const bool need_a = need_w || need_y;                    // the (modulated) rotated input itself
  if (!need_ga && !need_w && !need_y && !need_b) return;
  const at::Tensor w_acc = weight.to(acc);
  const WeightViews wv = weight_views(w_acc, d);
  const int64_t R = d.rows();
  const int64_t per_edge = R * (2 * d.cin + 2 * d.cout) * int64_t(c10::elementSize(acc));
  const int64_t* perm_ptr = perm.defined() ? perm.data_ptr<int64_t>() : nullptr;
  const TilePlan plan = plan_tiles<K>(E, per_edge, (K::kParallelTiles && segmented && need_x) ? src : nullptr,
                                      perm_ptr);
  // One weight / bias gradient accumulator per worker: the output itself for worker 0, zeros for the others.
  const int workers = plan.parallel ? K::num_workers() : 1;
  at::Tensor gw_more, gb_more;
  std::vector<WeightViews> gwv;
  std::vector<at::Tensor> gbv;
  if (need_w) {
    if (workers > 1) gw_more = at::zeros({workers - 1, out.weight.numel()}, out.weight.options());
    for (int w = 0; w < workers; ++w) gwv.push_back(weight_views(w == 0 ? out.weight : gw_more.select(0, w - 1), d));
  }
  if (need_b) {
    if (workers > 1) gb_more = at::zeros({workers - 1, out.bias.numel()}, out.bias.options());
    for (int w = 0; w < workers; ++w) gbv.push_back(w == 0 ? out.bias : gb_more.select(0, w - 1));
  }
  const auto opts = x.options().dtype(acc);
  const at::Tensor none;
  const WeightSums wsum = K::kComplex3M ? weight_sums(wv) : WeightSums();
  run_tiles<K>(plan, [&](int worker, int64_t t0, int64_t t1) {
    const int64_t L = plan.max_len;
    Scratch3M sc = K::kComplex3M ? Scratch3M(L, d, opts, need_w) : Scratch3M();
    at::Tensor g_t = at::empty({L * R * d.cout}, opts);
    at::Tensor ga_t = need_ga ? at::empty({L * R * d.cin}, opts) : at::Tensor();
    at::Tensor a_t = need_a ? at::empty({L * R * d.cin}, opts) : at::Tensor();
    at::Tensor y_t = need_y ? at::empty({L * R * d.cout}, opts) : at::Tensor();
    at::Tensor no_a;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = plan.bounds[t];
      const TileSpec spec{d.lmax, d.mmax, p0, plan.bounds[t + 1] - p0, perm_ptr};
      const int64_t n = spec.count;
      const at::Tensor s_col = has_scale ? tile_scale(ex.scale, perm, p0, n) : at::Tensor();
      K::rotate_in(spec, grad, tgt, sides.wig_out, none, g_t);
      if (need_ga) {
        for (int m = 0; m <= d.mmax; ++m) {
          at::Tensor gam = tile_block(ga_t, n, d.cin, d.lmax, m);
          const at::Tensor gm = tile_block(g_t, n, d.cout, d.lmax, m);
          if (K::kComplex3M) {
            so2_block_mm_t_3m(gm, wv, wsum, m, gam, sc);
          } else {
            so2_block_mm_t(gm, wv, m, gam);
          }
        }
        if (has_scale) scale_tile(ga_t, s_col, n, d.cin, d);
      }
      if (has_mod && need_ga) {
        // Fused: A' = mod * a, grad_mod, and GA <- GA * mod (the gradient w.r.t. a).
        K::rotate_in_backward(spec, x, src, sides.wig_in, mod, need_a ? a_t : no_a, ga_t, out.mod);
      } else if (need_a) {
        K::rotate_in(spec, x, src, sides.wig_in, mod, a_t);
      }
      if (need_y) {
        for (int m = 0; m <= d.mmax; ++m) {
          const at::Tensor am = tile_block(a_t, n, d.cin, d.lmax, m);
          at::Tensor ym = tile_block(y_t, n, d.cout, d.lmax, m);
          if (K::kComplex3M) {
            so2_block_mm_3m(am, wv, wsum, m, ym, sc);
          } else {
            so2_block_mm(am, wv, m, ym);
          }
        }
        if (ex.bias.defined()) add_tile_bias(y_t, ex.bias, n, d.cout, d.lmax);
        if (need_s) {
          at::Tensor gs = tile_block(y_t, n, d.cout, d.lmax, 0).mul(tile_block(g_t, n, d.cout, d.lmax, 0)).sum(1);
          for (int m = 1; m <= d.mmax; ++m)
            gs.add_(tile_block(y_t, n, d.cout, d.lmax, m).mul(tile_block(g_t, n, d.cout, d.lmax, m)).sum(1));
          if (perm.defined()) {
            out.scale.index_copy_(0, perm.narrow(0, p0, n), gs);
          } else {
            out.scale.narrow(0, p0, n).copy_(gs);
          }
        }
        if (has_scale && wig_out_term) scale_tile(y_t, s_col, n, d.cout, d);
      }
      if (has_scale && (need_w || need_b)) scale_tile(g_t, s_col, n, d.cout, d);
      if (need_b) gbv[worker].add_(tile_block(g_t, n, d.cout, d.lmax, 0).sum(0));
      for (int m = 0; m <= d.mmax && need_w; ++m) {
        const at::Tensor am = tile_block(a_t, n, d.cin, d.lmax, m);
        const at::Tensor gm = tile_block(g_t, n, d.cout, d.lmax, m);
        if (K::kComplex3M) {
          so2_block_weight_grad_3m(am, gm, gwv[worker], m, sc);
        } else {
          so2_block_weight_grad(am, gm, gwv[worker], m);
        }
      }
      if (need_wig) {
        K::wigner_grad(spec, wig_in_term ? ga_t : none, x, src, wig_out_term ? y_t : none, grad, tgt, out.wigner);
      }
      if (need_x) K::rotate_out_add(spec, ga_t, src, sides.wig_in, out.x_acc, segmented);
    }
  });
  if (need_w && workers > 1) {
    for (int w = 1; w < workers; ++w) out.weight.add_(gw_more.select(0, w - 1));
  }
  if (need_b && workers > 1) {
    for (int w = 1; w < workers; ++w) out.bias.add_(gb_more.select(0, w - 1));
  }
}

// ----------------------------------------------------------------- entry points

/// so2_message forward on backend K (inputs already on K's device).
template <class K>
at::Tensor message_forward(const at::Tensor& x_in, const at::Tensor& wigner_in, const at::Tensor& edge_index_in,
                           const at::Tensor& weight_in, const c10::optional<at::Tensor>& mod_in, int64_t lmax,
                           int64_t mmax, int64_t cout, bool deterministic) {
  check_so2_inputs("so2_message", x_in, weight_in, mod_in, lmax, mmax, cout, wigner_in.size(0));
  check_message_inputs(x_in, wigner_in, edge_index_in, lmax);
  const at::Tensor x = x_in.contiguous(), wigner = wigner_in.contiguous(), ei = edge_index_in.contiguous();
  const at::Tensor weight = weight_in.contiguous(), mod = defined_or_empty(mod_in);
  const Dims d{int(lmax), int(mmax), x.size(2), cout};
  const int64_t N = x.size(0), E = wigner.size(0);
  const at::ScalarType acc = acc_type(x.scalar_type());
  at::Tensor out = at::zeros({N, d.coeffs(), cout}, x.options().dtype(acc));
  if (E == 0) return out.to(x.scalar_type());
  const bool segmented = K::kAlwaysSegmented || deterministic;
  const at::Tensor tgt_row = ei.select(0, 1);
  const at::Tensor perm = segmented ? K::sort_by(tgt_row, N) : at::Tensor();
  const int64_t* src = ei.data_ptr<int64_t>();
  tiled_forward<K>(x, Sides{wigner, src, wigner, src + E}, perm, E, weight, mod, Extras{}, d, segmented, out);
  return out.to(x.scalar_type());
}

/// so2_message backward on backend K.
template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> message_backward(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& wigner_in, const at::Tensor& edge_index_in,
    const at::Tensor& weight_in, const c10::optional<at::Tensor>& mod_in, int64_t lmax, int64_t mmax, int64_t cout,
    bool deterministic, bool need_x, bool need_wigner, bool need_weight, bool need_mod) {
  check_so2_inputs("so2_message_backward", x_in, weight_in, mod_in, lmax, mmax, cout, wigner_in.size(0));
  check_message_inputs(x_in, wigner_in, edge_index_in, lmax);
  TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == x_in.size(0) && grad_in.size(1) == x_in.size(1) &&
                  grad_in.size(2) == cout && grad_in.device() == x_in.device(),
              "so2_message_backward: grad must be [", x_in.size(0), ", ", x_in.size(1), ", ", cout, "], got ",
              grad_in.sizes());
  const at::Tensor x = x_in.contiguous(), wigner = wigner_in.contiguous(), ei = edge_index_in.contiguous();
  const at::Tensor weight = weight_in.contiguous(), mod = defined_or_empty(mod_in);
  const at::Tensor grad = grad_in.to(x.scalar_type()).contiguous();
  const Dims d{int(lmax), int(mmax), x.size(2), cout};
  const int64_t N = x.size(0), E = wigner.size(0);
  const at::ScalarType acc = acc_type(x.scalar_type());
  need_mod = need_mod && mod.defined();
  Grads g;
  if (need_x) g.x_acc = at::zeros({N, d.coeffs(), d.cin}, x.options().dtype(acc));
  if (need_wigner) g.wigner = (E == 0) ? at::zeros_like(wigner) : at::empty_like(wigner);
  if (need_weight) g.weight = at::zeros(weight.sizes(), weight.options().dtype(acc));
  if (need_mod) g.mod = (E == 0) ? at::zeros_like(mod) : at::empty_like(mod);
  const bool segmented = need_x && (K::kAlwaysSegmented || deterministic);
  const int64_t* src = ei.data_ptr<int64_t>();
  const at::Tensor perm = (segmented && E > 0) ? K::sort_by(ei.select(0, 0), N) : at::Tensor();
  tiled_backward<K>(grad, x, Sides{wigner, src, wigner, src + E}, perm, E, weight, mod, Extras{}, d, segmented, acc,
                    g);
  const at::Tensor empty = grad.new_empty({0});
  return {need_x ? g.x_acc.to(x.scalar_type()) : empty, need_wigner ? g.wigner : empty,
          need_weight ? g.weight.to(weight.scalar_type()) : empty, need_mod ? g.mod : empty};
}

/// so2_linear forward on backend K.
template <class K>
at::Tensor linear_forward(const at::Tensor& x_in, const at::Tensor& weight_in, const c10::optional<at::Tensor>& mod_in,
                          int64_t lmax, int64_t mmax, int64_t cout) {
  check_so2_inputs("so2_linear", x_in, weight_in, mod_in, lmax, mmax, cout, x_in.size(0));
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), mod = defined_or_empty(mod_in);
  const Dims d{int(lmax), int(mmax), x.size(2), cout};
  const int64_t E = x.size(0);
  at::Tensor out = at::zeros({E, d.coeffs(), cout}, x.options().dtype(acc_type(x.scalar_type())));
  tiled_forward<K>(x, Sides{at::Tensor(), nullptr, at::Tensor(), nullptr}, at::Tensor(), E, weight, mod, Extras{}, d,
                   /*segmented=*/true, out);
  return out.to(x.scalar_type());
}

/// so2_linear backward on backend K.
template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                               const at::Tensor& weight_in,
                                                               const c10::optional<at::Tensor>& mod_in, int64_t lmax,
                                                               int64_t mmax, int64_t cout, bool need_x,
                                                               bool need_weight, bool need_mod) {
  check_so2_inputs("so2_linear_backward", x_in, weight_in, mod_in, lmax, mmax, cout, x_in.size(0));
  TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == x_in.size(0) && grad_in.size(1) == x_in.size(1) &&
                  grad_in.size(2) == cout && grad_in.device() == x_in.device(),
              "so2_linear_backward: grad must be [", x_in.size(0), ", ", x_in.size(1), ", ", cout, "], got ",
              grad_in.sizes());
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), mod = defined_or_empty(mod_in);
  const at::Tensor grad = grad_in.to(x.scalar_type()).contiguous();
  const Dims d{int(lmax), int(mmax), x.size(2), cout};
  const int64_t E = x.size(0);
  const at::ScalarType acc = acc_type(x.scalar_type());
  need_mod = need_mod && mod.defined();
  Grads g;
  if (need_x) g.x_acc = at::zeros({E, d.coeffs(), d.cin}, x.options().dtype(acc));
  if (need_weight) g.weight = at::zeros(weight.sizes(), weight.options().dtype(acc));
  if (need_mod) g.mod = (E == 0) ? at::zeros_like(mod) : at::empty_like(mod);
  tiled_backward<K>(grad, x, Sides{at::Tensor(), nullptr, at::Tensor(), nullptr}, at::Tensor(), E, weight, mod,
                    Extras{}, d, /*segmented=*/true, acc, g);
  const at::Tensor empty = grad.new_empty({0});
  return {need_x ? g.x_acc.to(x.scalar_type()) : empty,
          need_weight ? g.weight.to(weight.scalar_type()) : empty, need_mod ? g.mod : empty};
}

// ------------------------------------------------------------ so2_frame_linear

/// Checks of so2_frame_linear's inputs besides those of check_so2_inputs.
inline void check_frame_inputs(const char* op, const at::Tensor& x, const at::Tensor& wigner, const at::Tensor& index,
                               const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                               int64_t lmax, int64_t cout, int64_t num_nodes, bool to_nodes) {
  TORCH_CHECK(wigner.dim() == 2 && wigner.size(1) == wigner_size(int(lmax)), op, ": wigner must be [E, ",
              wigner_size(int(lmax)), "], got ", wigner.sizes());
  TORCH_CHECK(wigner.scalar_type() == x.scalar_type() && wigner.device() == x.device(), op,
              ": wigner must match x in dtype and device");
  const int64_t E = wigner.size(0);
  TORCH_CHECK(index.dim() == 1 && index.size(0) == E && index.scalar_type() == at::kLong &&
                  index.device() == x.device(),
              op, ": index must be int64 [E=", E, "] on the device of x, got ", index.sizes());
  if (to_nodes) {
    TORCH_CHECK(x.size(0) == E, op, ": x must hold one row per edge (", E, "), got ", x.size(0));
    TORCH_CHECK(num_nodes >= 0, op, ": num_nodes must be >= 0, got ", num_nodes);
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 2 && bias->size(0) == lmax + 1 && bias->size(1) == cout, op, ": bias must be [",
                lmax + 1, ", ", cout, "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(), op,
                ": bias must match x in dtype and device");
  }
  if (scale.has_value() && scale->defined()) {
    TORCH_CHECK(scale->dim() == 1 && scale->size(0) == E, op, ": scale must be [", E, "], got ", scale->sizes());
    TORCH_CHECK(scale->scalar_type() == x.scalar_type() && scale->device() == x.device(), op,
                ": scale must match x in dtype and device");
  }
}

inline Extras frame_extras(const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                           at::ScalarType acc) {
  Extras ex;
  if (bias.has_value() && bias->defined()) ex.bias = bias->to(acc).contiguous().view({-1});
  if (scale.has_value() && scale->defined()) ex.scale = scale->to(acc).contiguous();
  return ex;
}

/// so2_frame_linear forward on backend K.  to_nodes = false (gather):
///   out[e] = scale_e (SO2Lin(mod_e (.) D_e x[index[e]]) + bias)            [E, K, cout], edge frame
/// to_nodes = true (scatter; x holds one edge-frame row per edge):
///   out[index[e]] += scale_e D_e^T (SO2Lin(mod_e (.) x[e]) + bias)        [num_nodes, K, cout]
template <class K>
at::Tensor frame_forward(const at::Tensor& x_in, const at::Tensor& wigner_in, const at::Tensor& index_in,
                         const at::Tensor& weight_in, const c10::optional<at::Tensor>& mod_in,
                         const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale, int64_t lmax,
                         int64_t mmax, int64_t cout, int64_t num_nodes, bool to_nodes, bool deterministic) {
  check_so2_inputs("so2_frame_linear", x_in, weight_in, mod_in, lmax, mmax, cout, wigner_in.size(0));
  check_frame_inputs("so2_frame_linear", x_in, wigner_in, index_in, bias, scale, lmax, cout, num_nodes, to_nodes);
  const at::Tensor x = x_in.contiguous(), wigner = wigner_in.contiguous(), index = index_in.contiguous();
  const at::Tensor weight = weight_in.contiguous(), mod = defined_or_empty(mod_in);
  const Dims d{int(lmax), int(mmax), x.size(2), cout};
  const int64_t E = wigner.size(0);
  const at::ScalarType acc = acc_type(x.scalar_type());
  const Extras ex = frame_extras(bias, scale, acc);
  at::Tensor out = at::zeros({to_nodes ? num_nodes : E, d.coeffs(), cout}, x.options().dtype(acc));
  if (E == 0) return out.to(x.scalar_type());
  const int64_t* idx = index.data_ptr<int64_t>();
  if (to_nodes) {
    const bool segmented = K::kAlwaysSegmented || deterministic;
    const at::Tensor perm = segmented ? K::sort_by(index, num_nodes) : at::Tensor();
    tiled_forward<K>(x, Sides{at::Tensor(), nullptr, wigner, idx}, perm, E, weight, mod, ex, d, segmented, out);
  } else {
    tiled_forward<K>(x, Sides{wigner, idx, at::Tensor(), nullptr}, at::Tensor(), E, weight, mod, ex, d,
                     /*segmented=*/true, out);
  }
  return out.to(x.scalar_type());
}

/// so2_frame_linear backward on backend K: gradients w.r.t. x, wigner, weight, modulation, bias, scale
/// ([0] placeholders where not wanted or the input is absent).
template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> frame_backward(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& wigner_in, const at::Tensor& index_in,
    const at::Tensor& weight_in, const c10::optional<at::Tensor>& mod_in, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& scale, int64_t lmax, int64_t mmax, int64_t cout, int64_t num_nodes,
    bool to_nodes, bool deterministic, bool need_x, bool need_wigner, bool need_weight, bool need_mod, bool need_bias,
    bool need_scale) {
  check_so2_inputs("so2_frame_linear_backward", x_in, weight_in, mod_in, lmax, mmax, cout, wigner_in.size(0));
  check_frame_inputs("so2_frame_linear_backward", x_in, wigner_in, index_in, bias, scale, lmax, cout, num_nodes,
                     to_nodes);
  const int64_t E = wigner_in.size(0), rows = to_nodes ? num_nodes : E;
  TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == rows && grad_in.size(1) == x_in.size(1) &&
                  grad_in.size(2) == cout && grad_in.device() == x_in.device(),
              "so2_frame_linear_backward: grad must be [", rows, ", ", x_in.size(1), ", ", cout, "], got ",
              grad_in.sizes());
  const at::Tensor x = x_in.contiguous(), wigner = wigner_in.contiguous(), index = index_in.contiguous();
  const at::Tensor weight = weight_in.contiguous(), mod = defined_or_empty(mod_in);
  const at::Tensor grad = grad_in.to(x.scalar_type()).contiguous();
  const Dims d{int(lmax), int(mmax), x.size(2), cout};
  const at::ScalarType acc = acc_type(x.scalar_type());
  const Extras ex = frame_extras(bias, scale, acc);
  need_mod = need_mod && mod.defined();
  need_bias = need_bias && ex.bias.defined();
  need_scale = need_scale && ex.scale.defined();
  Grads g;
  if (need_x) g.x_acc = at::zeros(x.sizes(), x.options().dtype(acc));
  if (need_wigner) g.wigner = (E == 0) ? at::zeros_like(wigner) : at::empty_like(wigner);
  if (need_weight) g.weight = at::zeros(weight.sizes(), weight.options().dtype(acc));
  if (need_mod) g.mod = (E == 0) ? at::zeros_like(mod) : at::empty_like(mod);
  if (need_bias) g.bias = at::zeros({ex.bias.numel()}, x.options().dtype(acc));
  if (need_scale) g.scale = at::zeros({E}, x.options().dtype(acc));
  const int64_t* idx = index.data_ptr<int64_t>();
  if (to_nodes) {
    // the scatter's backward is a gather (no order needed); x's gradient is per edge (identity)
    tiled_backward<K>(grad, x, Sides{at::Tensor(), nullptr, wigner, idx}, at::Tensor(), E, weight, mod, ex, d,
                      /*segmented=*/true, acc, g);
  } else {
    const bool segmented = need_x && (K::kAlwaysSegmented || deterministic);
    const at::Tensor perm = (segmented && E > 0) ? K::sort_by(index, x.size(0)) : at::Tensor();
    tiled_backward<K>(grad, x, Sides{wigner, idx, at::Tensor(), nullptr}, perm, E, weight, mod, ex, d, segmented, acc,
                      g);
  }
  const at::Tensor empty = grad.new_empty({0});
  return {need_x ? g.x_acc.to(x.scalar_type()) : empty,
          need_wigner ? g.wigner : empty,
          need_weight ? g.weight.to(weight.scalar_type()) : empty,
          need_mod ? g.mod : empty,
          need_bias ? g.bias.to(bias->scalar_type()).view(bias->sizes()) : empty,
          need_scale ? g.scale.to(scale->scalar_type()) : empty};
}

}  // namespace driver
}  // namespace so2ops
