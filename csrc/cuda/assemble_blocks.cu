// assemble_blocks on CUDA: float / double, and half / bfloat16 computed in float.
//
// One block per item, four warps.  The block first forms the item's packed
// frame matrices M_l = U_l D_l^T in shared memory; then each warp takes every
// fourth shell pair of the item's type and runs it with its 32 lanes splitting
// the entries of each phase (so2ops/assemble_blocks.h, sync = __syncwarp),
// with its own scratch blocks in shared memory.
//
// Forward: plain stores into the zeroed output (items and shell pairs own
// disjoint entries).  Backward: each warp accumulates dL/dM of its shell
// pairs in its own shared array; at the end the four arrays are summed in a
// fixed order and turned into dL/dD, written whole for every item (zeros for
// invariant or skipped items).  The features gradient is added with atomics
// into the item's own row: a feature slot feeds at most two entries of one
// item (so2ops.block_tables), and a sum of two terms onto zero is the same in
// either order, so the result is deterministic.  half / bfloat16 accumulate
// that gradient in a float buffer.
//
// Index values are validated in Python (and by the CPU entry points); here an
// item or shell pair with an out-of-range index is skipped rather than read
// or written out of bounds, so no device synchronisation is needed.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>
#include <vector>

#include "so2ops/assemble_blocks.h"
#include "so2ops/op_checks.h"

namespace so2ops {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 4;
constexpr int kThreads = kWarp * kWarps;

struct WarpSync {
  __device__ __forceinline__ void operator()() const { __syncwarp(); }
};

//: Index tensors and tables of one call (device pointers) and their sizes.
template <typename scalar_t>
struct Params {
  const scalar_t* features;
  const scalar_t* wigner;
  const int64_t* item_atoms;
  const int64_t* item_type;
  const bool* invariant;
  const int64_t* atom_ao;
  const int64_t* atom_mol;
  const int64_t* mol_offset;
  const int64_t* mol_nao;
  const int64_t* sp_start;
  const int64_t* sp_info;
  const int64_t* entry_src;
  const scalar_t* entry_coef;
  const int64_t* inv_src;
  const scalar_t* basis_change;
  int lmax_shell;
  int64_t total, kc, n_atoms, n_mols, n_types, n_sp, n_entries;
};

template <typename scalar_t>
__device__ __forceinline__ bool load_item(const Params<scalar_t>& P, int64_t i, AbItem& it) {
  return ab_item(i, P.item_atoms, P.item_type, P.atom_ao, P.atom_mol, P.mol_offset, P.mol_nao, P.sp_start, P.n_atoms,
                 P.n_mols, P.n_types, P.n_sp, P.total, it);
}

//: m[q] = packed M = U D^T of item i (D = I for an invariant item), by the whole block.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_frames(const Params<scalar_t>& P, int64_t i, bool inv_item, acc_t* m) {
  const int ws = wigner_size(P.lmax_shell);
  const scalar_t* d = inv_item ? nullptr : P.wigner + i * ws;
  for (int q = threadIdx.x; q < ws; q += kThreads) m[q] = ab_frame_entry<acc_t>(P.basis_change, d, q);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) forward_kernel(const Params<scalar_t> P, scalar_t* __restrict__ out) {
  __shared__ acc_t m[kAbMaxPacked];
  __shared__ acc_t scratch[kWarps][3][kAbMaxBlock];
  const int64_t i = blockIdx.x;
  AbItem item;
  if (!load_item(P, i, item)) return;  // uniform over the block
  const bool inv_item = P.invariant[i];
  load_frames<scalar_t, acc_t>(P, i, inv_item, m);
  __syncthreads();
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const scalar_t* fi = P.features + i * P.kc;
  acc_t(*sc)[kAbMaxBlock] = scratch[warp];
  for (int64_t s = item.sp_begin + warp; s < item.sp_end; s += kWarps) {
    AbPair p;
    if (!ab_pair(P.sp_info, s, P.n_entries, P.lmax_shell, item, p)) continue;  // uniform over the warp
    ab_forward_pair<acc_t, scalar_t>(item, p, fi, P.kc, P.entry_src, P.entry_coef, inv_item, P.inv_src[s], m, sc[0],
                                     sc[1], sc[2], lane, kWarp, WarpSync(),
                                     [&](int64_t idx, acc_t v) { out[idx] = static_cast<scalar_t>(v); });
  }
}

//: gf: [I, K*C] features gradient in acc_t (zeroed, accumulated atomically; nullptr: not needed);
//: gw: [I, ws] wigner gradient (written whole; nullptr: not needed).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const Params<scalar_t> P, const scalar_t* __restrict__ grad, acc_t* __restrict__ gf,
                    scalar_t* __restrict__ gw) {
  __shared__ acc_t m[kAbMaxPacked];
  __shared__ acc_t dm[kWarps][kAbMaxPacked];
  __shared__ acc_t scratch[kWarps][5][kAbMaxBlock];
  const int64_t i = blockIdx.x;
  const int ws = wigner_size(P.lmax_shell);
  AbItem item;
  const bool ok = load_item(P, i, item);
  const bool inv_item = P.invariant[i];
  if (!ok || (inv_item && !gf)) {
    // nothing flows back: D = I of an invariant item is a constant
    if (gw)
      for (int q = threadIdx.x; q < ws; q += kThreads) gw[i * ws + q] = scalar_t(0);
    return;  // uniform over the block
  }
  load_frames<scalar_t, acc_t>(P, i, inv_item, m);
  for (int q = threadIdx.x; q < kWarps * kAbMaxPacked; q += kThreads) dm[q / kAbMaxPacked][q % kAbMaxPacked] = acc_t(0);
  __syncthreads();
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const scalar_t* fi = P.features + i * P.kc;
  acc_t* gfi = gf ? gf + i * P.kc : nullptr;
  acc_t(*sc)[kAbMaxBlock] = scratch[warp];
  for (int64_t s = item.sp_begin + warp; s < item.sp_end; s += kWarps) {
    AbPair p;
    if (!ab_pair(P.sp_info, s, P.n_entries, P.lmax_shell, item, p)) continue;  // uniform over the warp
    ab_backward_pair<acc_t, scalar_t>(item, p, grad, fi, P.kc, P.entry_src, P.entry_coef, inv_item, P.inv_src[s], m,
                                      gw ? dm[warp] : nullptr, gfi != nullptr, sc[0], sc[1], sc[2], sc[3], sc[4],
                                      lane, kWarp, WarpSync(),
                                      [&](int64_t slot, acc_t v) { atomicAdd(gfi + slot, v); });
  }
  if (!gw) return;  // uniform
  __syncthreads();
  if (inv_item) {
    for (int q = threadIdx.x; q < ws; q += kThreads) gw[i * ws + q] = scalar_t(0);
    return;
  }
  // the warps' partial dL/dM, summed in a fixed order
  for (int q = threadIdx.x; q < ws; q += kThreads) {
    acc_t v = dm[0][q];
    for (int w = 1; w < kWarps; ++w) v += dm[w][q];
    dm[0][q] = v;
  }
  __syncthreads();
  for (int q = threadIdx.x; q < ws; q += kThreads)
    gw[i * ws + q] = static_cast<scalar_t>(ab_wigner_grad_entry<acc_t>(dm[0], P.basis_change, q));
}

//: A contiguous copy of t, kept alive in `hold`.
const at::Tensor& keep(std::vector<at::Tensor>& hold, const at::Tensor& t) {
  hold.push_back(t.contiguous());
  return hold.back();
}

//: Kernel parameters; `hold` keeps the contiguous copies alive until the
//: kernel is enqueued (the caching allocator orders their reuse on the stream).
template <typename scalar_t>
Params<scalar_t> make_params(std::vector<at::Tensor>& hold, const at::Tensor& features, const at::Tensor& wigner,
                             const at::Tensor& item_atoms, const at::Tensor& item_type, const at::Tensor& invariant,
                             const at::Tensor& atom_ao, const at::Tensor& atom_mol, const at::Tensor& mol_offset,
                             const at::Tensor& mol_nao, const at::Tensor& sp_start, const at::Tensor& sp_info,
                             const at::Tensor& entry_src, const at::Tensor& entry_coef, const at::Tensor& inv_src,
                             const at::Tensor& basis_change, int64_t lmax_shell, int64_t total) {
  hold.reserve(hold.size() + 15);
  Params<scalar_t> P;
  P.features = keep(hold, features).const_data_ptr<scalar_t>();
  P.wigner = keep(hold, wigner).const_data_ptr<scalar_t>();
  P.item_atoms = keep(hold, item_atoms).const_data_ptr<int64_t>();
  P.item_type = keep(hold, item_type).const_data_ptr<int64_t>();
  P.invariant = keep(hold, invariant).const_data_ptr<bool>();
  P.atom_ao = keep(hold, atom_ao).const_data_ptr<int64_t>();
  P.atom_mol = keep(hold, atom_mol).const_data_ptr<int64_t>();
  P.mol_offset = keep(hold, mol_offset).const_data_ptr<int64_t>();
  P.mol_nao = keep(hold, mol_nao).const_data_ptr<int64_t>();
  P.sp_start = keep(hold, sp_start).const_data_ptr<int64_t>();
  P.sp_info = keep(hold, sp_info).const_data_ptr<int64_t>();
  P.entry_src = keep(hold, entry_src).const_data_ptr<int64_t>();
  P.entry_coef = keep(hold, entry_coef).const_data_ptr<scalar_t>();
  P.inv_src = keep(hold, inv_src).const_data_ptr<int64_t>();
  P.basis_change = keep(hold, basis_change).const_data_ptr<scalar_t>();
  P.lmax_shell = static_cast<int>(lmax_shell);
  P.total = total;
  P.kc = features.size(1) * features.size(2);
  P.n_atoms = atom_ao.size(0);
  P.n_mols = mol_offset.size(0);
  P.n_types = sp_start.size(0) - 1;
  P.n_sp = sp_info.size(0);
  P.n_entries = entry_src.size(0);
  return P;
}

void check_cuda(const at::Tensor& features, int64_t items, const char* op) {
  TORCH_CHECK(features.is_cuda(), op, " (cuda): expected CUDA tensors, got one on ", features.device());
  TORCH_CHECK(items < (int64_t(1) << 31), op, " (cuda): too many items for one launch");
}

#define SO2OPS_AB_ARGS                                                                                         \
  features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset, mol_nao, sp_start, sp_info,  \
      entry_src, entry_coef, inv_src, basis_change, lmax_shell, total

at::Tensor assemble_blocks_forward_cuda(const at::Tensor& features, const at::Tensor& wigner,
                                        const at::Tensor& item_atoms, const at::Tensor& item_type,
                                        const at::Tensor& invariant, const at::Tensor& atom_ao,
                                        const at::Tensor& atom_mol, const at::Tensor& mol_offset,
                                        const at::Tensor& mol_nao, const at::Tensor& sp_start,
                                        const at::Tensor& sp_info, const at::Tensor& entry_src,
                                        const at::Tensor& entry_coef, const at::Tensor& inv_src,
                                        const at::Tensor& basis_change, int64_t lmax_shell, int64_t total) {
  const char* op = "assemble_blocks_forward";
  check_assemble_blocks_args(features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset,
                             mol_nao, sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change, lmax_shell,
                             total, op);
  const int64_t I = features.size(0);
  check_cuda(features, I, op);
  const c10::cuda::CUDAGuard guard(features.device());
  auto out = at::zeros({total}, features.options());  // entries no item writes stay zero
  if (I == 0 || total == 0) return out;
  std::vector<at::Tensor> hold;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "assemble_blocks_forward_cuda",
                                  [&] {
                                    using acc_t = at::acc_type<scalar_t, true>;
                                    const auto P = make_params<scalar_t>(hold, SO2OPS_AB_ARGS);
                                    forward_kernel<scalar_t, acc_t>
                                        <<<static_cast<unsigned>(I), kThreads, 0,
                                           c10::cuda::getCurrentCUDAStream()>>>(P, out.mutable_data_ptr<scalar_t>());
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> assemble_blocks_backward_cuda(
    const at::Tensor& grad, const at::Tensor& features, const at::Tensor& wigner, const at::Tensor& item_atoms,
    const at::Tensor& item_type, const at::Tensor& invariant, const at::Tensor& atom_ao, const at::Tensor& atom_mol,
    const at::Tensor& mol_offset, const at::Tensor& mol_nao, const at::Tensor& sp_start, const at::Tensor& sp_info,
    const at::Tensor& entry_src, const at::Tensor& entry_coef, const at::Tensor& inv_src,
    const at::Tensor& basis_change, int64_t lmax_shell, int64_t total, bool need_features, bool need_wigner) {
  const char* op = "assemble_blocks_backward";
  check_assemble_blocks_args(features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset,
                             mol_nao, sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change, lmax_shell,
                             total, op);
  check_assemble_blocks_grad(grad, features, total);
  const int64_t I = features.size(0);
  check_cuda(features, I, op);
  const c10::cuda::CUDAGuard guard(features.device());
  at::Tensor gf = need_features ? at::zeros(features.sizes(), features.options()) : at::empty({0}, grad.options());
  at::Tensor gw = need_wigner ? at::empty(wigner.sizes(), wigner.options()) : at::empty({0}, grad.options());
  if (I == 0 || !(need_features || need_wigner)) return {gf, gw};
  const auto gc = grad.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> hold;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "assemble_blocks_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const auto P = make_params<scalar_t>(hold, SO2OPS_AB_ARGS);
        // the features gradient is accumulated in acc_t (half / bfloat16: a float buffer, rounded once)
        constexpr bool direct = std::is_same<scalar_t, acc_t>::value;
        at::Tensor buf = !need_features ? at::Tensor()
                         : direct       ? gf
                                        : at::zeros(features.sizes(),
                                                    features.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        backward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(I), kThreads, 0, stream>>>(
            P, gc.const_data_ptr<scalar_t>(), need_features ? buf.mutable_data_ptr<acc_t>() : nullptr,
            need_wigner ? gw.mutable_data_ptr<scalar_t>() : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (need_features && !direct) gf.copy_(buf);
      });
  return {gf, gw};
}

#undef SO2OPS_AB_ARGS

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CUDA, m) {
  m.impl("assemble_blocks_forward", &so2ops::assemble_blocks_forward_cuda);
  m.impl("assemble_blocks_backward", &so2ops::assemble_blocks_backward_cuda);
}
