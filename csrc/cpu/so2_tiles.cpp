// CPU tile kernels of so2_linear and so2_message (CpuKernels, so2_message_kernels.h).
//
// The tiled driver (so2_message_driver.h) calls four kernels per tile; here
// they are loops vectorised over channels, parallel over edges with
// at::parallel_for (honouring torch.set_num_threads) when the driver runs the
// tiles in sequence, serial inside a thread when it spreads whole tiles over
// the threads (parallel_tiles).  Scatters are segmented reductions over edges
// sorted by destination (counting sort), so there are no atomics and the
// result is deterministic for a given thread count.
//
// The kernel bodies (so2_tiles_impl.h) are compiled twice: for AVX2 + FMA and
// for the baseline x86-64 ISA the extension is built for; the AVX2 copy runs
// where the CPU has it (checked once).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

#include "so2ops/layout.h"
#include "so2ops/so2_message_kernels.h"
#include "so2ops/so2_message_math.h"
#include "so2ops/segments.h"

namespace so2ops {
namespace tiles_base {
#include "so2_tiles_impl.h"
}  // namespace tiles_base

#if defined(__x86_64__) && defined(__GNUC__)
#define SO2OPS_TILES_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace tiles_avx2 {
#include "so2_tiles_impl.h"
}  // namespace tiles_avx2
#pragma GCC pop_options
#endif

namespace {

#ifdef SO2OPS_TILES_AVX2
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#define SO2_TILE_ISA(fn) (cpu_has_avx2() ? &tiles_avx2::fn : &tiles_base::fn)
#else
#define SO2_TILE_ISA(fn) (&tiles_base::fn)
#endif

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace


int CpuKernels::num_workers() { return std::max(1, at::get_num_threads()); }

void CpuKernels::parallel_tiles(int64_t n, const TileLoop& fn) {
  // grain 1: at::parallel_for hands each thread one contiguous, static range of tiles.  The ATen calls
  // of the tile loop (GEMMs) run on the pool threads: they get this thread's dispatch state (below
  // autograd), as they would have on the calling thread.
  const at::ThreadLocalState state;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard guard(state);
    fn(at::get_thread_num(), begin, end);
  });
}

void CpuKernels::rotate_in(const TileSpec& spec, const at::Tensor& feat, const int64_t* idx, const at::Tensor& wigner,
                           const at::Tensor& mod, at::Tensor& tile) {
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "so2_rotate_in_cpu", [&] {
    SO2_TILE_ISA(rotate_in_cpu<scalar_t>)(spec, feat.data_ptr<scalar_t>(), feat.size(2), idx, ptr_or_null<scalar_t>(wigner),
                            ptr_or_null<scalar_t>(mod), tile.data_ptr<scalar_t>());
  });
}

void CpuKernels::rotate_in_backward(const TileSpec& spec, const at::Tensor& x, const int64_t* idx,
                                    const at::Tensor& wigner, const at::Tensor& mod, at::Tensor& a_tile,
                                    at::Tensor& ga_tile, at::Tensor& grad_mod) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "so2_rotate_in_backward_cpu", [&] {
    SO2_TILE_ISA(rotate_in_backward_cpu<scalar_t>)(spec, x.data_ptr<scalar_t>(), x.size(2), idx, ptr_or_null<scalar_t>(wigner),
                                     mod.data_ptr<scalar_t>(), mut_ptr_or_null<scalar_t>(a_tile),
                                     ga_tile.data_ptr<scalar_t>(), mut_ptr_or_null<scalar_t>(grad_mod));
  });
}

void CpuKernels::rotate_out_add(const TileSpec& spec, const at::Tensor& tile, const int64_t* idx,
                                const at::Tensor& wigner, at::Tensor& out, bool segmented) {
  TORCH_CHECK(segmented || idx == nullptr, "so2ops CPU scatter requires edges sorted by destination");
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "so2_rotate_out_cpu", [&] {
    SO2_TILE_ISA(rotate_out_add_cpu<scalar_t>)(spec, tile.data_ptr<scalar_t>(), out.size(2), idx, ptr_or_null<scalar_t>(wigner),
                                 out.data_ptr<scalar_t>());
  });
}

void CpuKernels::wigner_grad(const TileSpec& spec, const at::Tensor& ga, const at::Tensor& x, const int64_t* src,
                             const at::Tensor& y, const at::Tensor& g, const int64_t* tgt, at::Tensor& grad_wigner) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "so2_wigner_grad_cpu", [&] {
    SO2_TILE_ISA(wigner_grad_cpu<scalar_t>)(spec, ptr_or_null<scalar_t>(ga), x.data_ptr<scalar_t>(), x.size(2), src,
                              ptr_or_null<scalar_t>(y), g.data_ptr<scalar_t>(), g.size(2), tgt,
                              grad_wigner.data_ptr<scalar_t>());
  });
}

at::Tensor CpuKernels::sort_by(const at::Tensor& key, int64_t n) {
  return segments::stable_order(key, n);  // stable counting sort, O(E + n)
}

}  // namespace so2ops
