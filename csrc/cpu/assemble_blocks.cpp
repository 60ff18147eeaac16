// assemble_blocks on CPU: at::parallel_for over items, float and double.
//
// Each task takes whole items and runs their shell pairs one after the other
// (so2ops/assemble_blocks.h with one lane): the packed frame matrices
// M_l = U_l D_l^T of the item are formed once, then every shell pair block
// H = M1 B M2^T goes straight to its place in the flat output.  Items own
// disjoint output entries (validated in Python), their own feature row and
// their own Wigner row, so the forward is plain stores into a zeroed buffer
// and the backward needs no reduction across tasks: the results are
// deterministic and independent of the thread count.  Nothing of size
// [items, n_ao, n_ao] is formed.
//
// Every index and table value is checked here before the kernels run, with an
// error naming it, so a bad input cannot read or write out of bounds.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "so2ops/assemble_blocks.h"
#include "so2ops/op_checks.h"

namespace so2ops {
namespace {

//: The 15 tensor arguments, contiguous, in the order of the schema.
struct Args {
  at::Tensor features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset, mol_nao, sp_start,
      sp_info, entry_src, entry_coef, inv_src, basis_change;
  int lmax_shell;
  int64_t total;
  int64_t I, KC, n_atoms, n_mols, n_types, n_sp, n_entries;
};

//: Shapes, dtypes, devices (op_checks.h), then every index value (serial: O(items + table)).
Args check_args(const at::Tensor& features, const at::Tensor& wigner, const at::Tensor& item_atoms,
                const at::Tensor& item_type, const at::Tensor& invariant, const at::Tensor& atom_ao,
                const at::Tensor& atom_mol, const at::Tensor& mol_offset, const at::Tensor& mol_nao,
                const at::Tensor& sp_start, const at::Tensor& sp_info, const at::Tensor& entry_src,
                const at::Tensor& entry_coef, const at::Tensor& inv_src, const at::Tensor& basis_change,
                int64_t lmax_shell, int64_t total, const char* op) {
  check_assemble_blocks_args(features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset,
                             mol_nao, sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change, lmax_shell,
                             total, op);
  TORCH_CHECK(features.device().is_cpu(), op, ": expected CPU tensors, features is on ", features.device());
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble, op,
              ": the CPU backend supports float32 and float64, got ", features.scalar_type());
  const int64_t I = features.size(0);
  Args a;
  a.features = features.contiguous();
  a.wigner = wigner.contiguous();
  a.item_atoms = item_atoms.contiguous();
  a.item_type = item_type.contiguous();
  a.invariant = invariant.contiguous();
  a.atom_ao = atom_ao.contiguous();
  a.atom_mol = atom_mol.contiguous();
  a.mol_offset = mol_offset.contiguous();
  a.mol_nao = mol_nao.contiguous();
  a.sp_start = sp_start.contiguous();
  a.sp_info = sp_info.contiguous();
  a.entry_src = entry_src.contiguous();
  a.entry_coef = entry_coef.contiguous();
  a.inv_src = inv_src.contiguous();
  a.basis_change = basis_change.contiguous();
  a.lmax_shell = static_cast<int>(lmax_shell);
  a.total = total;
  a.I = I;
  a.KC = features.size(1) * features.size(2);
  a.n_atoms = atom_ao.size(0);
  a.n_mols = mol_offset.size(0);
  a.n_types = sp_start.size(0) - 1;
  a.n_sp = sp_info.size(0);
  a.n_entries = entry_src.size(0);

  // table values: entries and invariant slots address features[i] (or -1)
  {
    const int64_t* src = a.entry_src.const_data_ptr<int64_t>();
    for (int64_t e = 0; e < 2 * a.n_entries; ++e)
      TORCH_CHECK(src[e] >= -1 && src[e] < a.KC, op, ": entry_src[", e / 2, ", ", e % 2, "] = ", src[e],
                  " must be -1 or in [0, K*C=", a.KC, ")");
    const int64_t* inv = a.inv_src.const_data_ptr<int64_t>();
    for (int64_t s = 0; s < a.n_sp; ++s)
      TORCH_CHECK(inv[s] >= -1 && inv[s] < a.KC, op, ": inv_src[", s, "] = ", inv[s], " must be -1 or in [0, K*C=",
                  a.KC, ")");
  }
  // per type: its shell pairs are valid table rows; the AO extent they need
  const int64_t* sps = a.sp_start.const_data_ptr<int64_t>();
  const int64_t* info = a.sp_info.const_data_ptr<int64_t>();
  std::vector<int64_t> rows_needed(a.n_types, 0), cols_needed(a.n_types, 0);
  for (int64_t t = 0; t < a.n_types; ++t) {
    TORCH_CHECK(sps[t] >= 0 && sps[t] <= sps[t + 1] && sps[t + 1] <= a.n_sp, op, ": sp_start[", t, ":", t + 2,
                "] = [", sps[t], ", ", sps[t + 1], "] is not a range inside [0, SP=", a.n_sp, "]");
    AbItem whole{0, int64_t(1) << 31, 0, 0, sps[t], sps[t + 1]};  // an item as large as allowed
    for (int64_t s = sps[t]; s < sps[t + 1]; ++s) {
      AbPair p;
      TORCH_CHECK(ab_pair(info, s, a.n_entries, a.lmax_shell, whole, p), op, ": sp_info[", s, "] = (", info[6 * s],
                  ", ", info[6 * s + 1], ", ", info[6 * s + 2], ", ", info[6 * s + 3], ", ", info[6 * s + 4], ", ",
                  info[6 * s + 5], ") is not a valid shell pair (degrees <= lmax_shell=", a.lmax_shell,
                  ", offsets >= 0, entries inside [0, NE=", a.n_entries, "), sym only for equal degrees)");
      rows_needed[t] = std::max(rows_needed[t], p.r0 + p.n1);
      cols_needed[t] = std::max(cols_needed[t], p.c0 + p.n2);
    }
  }
  // per item: indices in range, the block inside its molecule's matrix
  const int64_t* ia = a.item_atoms.const_data_ptr<int64_t>();
  const int64_t* it = a.item_type.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < I; ++i) {
    AbItem item;
    TORCH_CHECK(ab_item(i, ia, it, a.atom_ao.const_data_ptr<int64_t>(), a.atom_mol.const_data_ptr<int64_t>(),
                        a.mol_offset.const_data_ptr<int64_t>(), a.mol_nao.const_data_ptr<int64_t>(), sps,
                        a.n_atoms, a.n_mols, a.n_types, a.n_sp, total, item),
                op, ": item ", i, " (atoms ", ia[2 * i], ", ", ia[2 * i + 1], ", type ", it[i],
                ") has an index out of range (atoms < ", a.n_atoms, ", types < ", a.n_types,
                ", one molecule, its matrix inside total=", total, ")");
    TORCH_CHECK(item.ao_i + rows_needed[it[i]] <= item.nao && item.ao_j + cols_needed[it[i]] <= item.nao, op,
                ": item ", i, " has a block outside its molecule's ", item.nao, " AOs");
  }
  return a;
}

//: Items per task for about 32k multiply-adds per task.
int64_t item_grain(const Args& a) {
  const int64_t pairs = a.n_types > 0 ? std::max<int64_t>(1, a.n_sp / a.n_types) : 1;
  const int n = 2 * a.lmax_shell + 1;
  return std::max<int64_t>(1, 32768 / (pairs * 2 * n * n * n));
}

//: The item's packed M = U D^T (D = I for an invariant item).
template <typename T>
void frame_matrices(const T* u, const T* d, int ws, T* m) {
  for (int q = 0; q < ws; ++q) m[q] = ab_frame_entry<T>(u, d, q);
}

struct NoSync {
  void operator()() const {}
};

template <typename T>
void forward_kernel(const Args& a, T* out) {
  const T* feat = a.features.const_data_ptr<T>();
  const T* wig = a.wigner.const_data_ptr<T>();
  const T* u = a.basis_change.const_data_ptr<T>();
  const T* coef = a.entry_coef.const_data_ptr<T>();
  const int64_t* src = a.entry_src.const_data_ptr<int64_t>();
  const int64_t* inv = a.inv_src.const_data_ptr<int64_t>();
  const int64_t* info = a.sp_info.const_data_ptr<int64_t>();
  const bool* invariant = a.invariant.const_data_ptr<bool>();
  const int ws = wigner_size(a.lmax_shell);
  at::parallel_for(0, a.I, item_grain(a), [&](int64_t begin, int64_t end) {
    T m[kAbMaxPacked], bs[kAbMaxBlock], ts[kAbMaxBlock], hs[kAbMaxBlock];
    for (int64_t i = begin; i < end; ++i) {
      AbItem item;
      if (!ab_item(i, a.item_atoms.const_data_ptr<int64_t>(), a.item_type.const_data_ptr<int64_t>(),
                   a.atom_ao.const_data_ptr<int64_t>(), a.atom_mol.const_data_ptr<int64_t>(),
                   a.mol_offset.const_data_ptr<int64_t>(), a.mol_nao.const_data_ptr<int64_t>(),
                   a.sp_start.const_data_ptr<int64_t>(), a.n_atoms, a.n_mols, a.n_types, a.n_sp, a.total, item))
        continue;  // unreachable after check_args
      const bool inv_item = invariant[i];
      frame_matrices<T>(u, inv_item ? nullptr : wig + i * ws, ws, m);
      const T* fi = feat + i * a.KC;
      for (int64_t s = item.sp_begin; s < item.sp_end; ++s) {
        AbPair p;
        if (!ab_pair(info, s, a.n_entries, a.lmax_shell, item, p)) continue;
        ab_forward_pair<T, T>(item, p, fi, a.KC, src, coef, inv_item, inv[s], m, bs, ts, hs, 0, 1, NoSync(),
                              [&](int64_t idx, T v) { out[idx] = v; });
      }
    }
  });
}

template <typename T>
void backward_kernel(const Args& a, const T* grad, T* gf, T* gw) {
  const T* feat = a.features.const_data_ptr<T>();
  const T* wig = a.wigner.const_data_ptr<T>();
  const T* u = a.basis_change.const_data_ptr<T>();
  const T* coef = a.entry_coef.const_data_ptr<T>();
  const int64_t* src = a.entry_src.const_data_ptr<int64_t>();
  const int64_t* inv = a.inv_src.const_data_ptr<int64_t>();
  const int64_t* info = a.sp_info.const_data_ptr<int64_t>();
  const bool* invariant = a.invariant.const_data_ptr<bool>();
  const int ws = wigner_size(a.lmax_shell);
  at::parallel_for(0, a.I, item_grain(a), [&](int64_t begin, int64_t end) {
    T m[kAbMaxPacked], dm[kAbMaxPacked];
    T gs[kAbMaxBlock], bs[kAbMaxBlock], ys[kAbMaxBlock], zs[kAbMaxBlock], dbs[kAbMaxBlock];
    for (int64_t i = begin; i < end; ++i) {
      const bool inv_item = invariant[i];
      // D = I of an invariant item is a constant: zero gradient (as for an item that writes nothing)
      if (gw) std::fill(gw + i * ws, gw + (i + 1) * ws, T(0));
      AbItem item;
      if (!ab_item(i, a.item_atoms.const_data_ptr<int64_t>(), a.item_type.const_data_ptr<int64_t>(),
                   a.atom_ao.const_data_ptr<int64_t>(), a.atom_mol.const_data_ptr<int64_t>(),
                   a.mol_offset.const_data_ptr<int64_t>(), a.mol_nao.const_data_ptr<int64_t>(),
                   a.sp_start.const_data_ptr<int64_t>(), a.n_atoms, a.n_mols, a.n_types, a.n_sp, a.total, item))
        continue;
      frame_matrices<T>(u, inv_item ? nullptr : wig + i * ws, ws, m);
      std::fill(dm, dm + ws, T(0));
      const T* fi = feat + i * a.KC;
      T* gfi = gf ? gf + i * a.KC : nullptr;
      for (int64_t s = item.sp_begin; s < item.sp_end; ++s) {
        AbPair p;
        if (!ab_pair(info, s, a.n_entries, a.lmax_shell, item, p)) continue;
        ab_backward_pair<T, T>(item, p, grad, fi, a.KC, src, coef, inv_item, inv[s], m, gw ? dm : nullptr,
                               gfi != nullptr, gs, bs, ys, zs, dbs, 0, 1, NoSync(),
                               [&](int64_t slot, T v) { gfi[slot] += v; });
      }
      if (gw && !inv_item)
        for (int q = 0; q < ws; ++q) gw[i * ws + q] = ab_wigner_grad_entry<T>(dm, u, q);
    }
  });
}

at::Tensor assemble_blocks_forward_cpu(const at::Tensor& features, const at::Tensor& wigner,
                                       const at::Tensor& item_atoms, const at::Tensor& item_type,
                                       const at::Tensor& invariant, const at::Tensor& atom_ao,
                                       const at::Tensor& atom_mol, const at::Tensor& mol_offset,
                                       const at::Tensor& mol_nao, const at::Tensor& sp_start,
                                       const at::Tensor& sp_info, const at::Tensor& entry_src,
                                       const at::Tensor& entry_coef, const at::Tensor& inv_src,
                                       const at::Tensor& basis_change, int64_t lmax_shell, int64_t total) {
  const Args a = check_args(features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset,
                            mol_nao, sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change, lmax_shell,
                            total, "assemble_blocks_forward");
  // entries no item writes stay zero
  auto out = at::zeros({total}, features.options());
  if (a.I == 0 || total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "assemble_blocks_forward_cpu",
                             [&] { forward_kernel<scalar_t>(a, out.mutable_data_ptr<scalar_t>()); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> assemble_blocks_backward_cpu(
    const at::Tensor& grad, const at::Tensor& features, const at::Tensor& wigner, const at::Tensor& item_atoms,
    const at::Tensor& item_type, const at::Tensor& invariant, const at::Tensor& atom_ao, const at::Tensor& atom_mol,
    const at::Tensor& mol_offset, const at::Tensor& mol_nao, const at::Tensor& sp_start, const at::Tensor& sp_info,
    const at::Tensor& entry_src, const at::Tensor& entry_coef, const at::Tensor& inv_src,
    const at::Tensor& basis_change, int64_t lmax_shell, int64_t total, bool need_features, bool need_wigner) {
  const Args a = check_args(features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset,
                            mol_nao, sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change, lmax_shell,
                            total, "assemble_blocks_backward");
  check_assemble_blocks_grad(grad, features, total);
  // features grad is accumulated (a slot may feed two entries); wigner grad is written whole
  at::Tensor gf = need_features ? at::zeros(features.sizes(), features.options()) : at::empty({0}, grad.options());
  at::Tensor gw = need_wigner ? at::empty(wigner.sizes(), wigner.options()) : at::empty({0}, grad.options());
  if (a.I == 0 || !(need_features || need_wigner)) return {gf, gw};
  const auto gc = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "assemble_blocks_backward_cpu", [&] {
    backward_kernel<scalar_t>(a, gc.const_data_ptr<scalar_t>(),
                              need_features ? gf.mutable_data_ptr<scalar_t>() : nullptr,
                              need_wigner ? gw.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {gf, gw};
}

}  // namespace
}  // namespace so2ops

TORCH_LIBRARY_IMPL(so2ops_C, CPU, m) {
  m.impl("assemble_blocks_forward", &so2ops::assemble_blocks_forward_cpu);
  m.impl("assemble_blocks_backward", &so2ops::assemble_blocks_backward_cpu);
}
