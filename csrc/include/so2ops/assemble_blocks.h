// Per-item arithmetic of assemble_blocks, shared by the CPU and CUDA kernels.
//
// For item i (atoms a, b of molecule mol) and each shell pair s of its type:
//
//   B[r, c]  = sum_t coef[e, t] features[i, src[e, t]]        e = entry_start + r*n2 + c
//              (invariant item: features[i, inv_src[s]] * I if l1 == l2 and inv_src >= 0, else 0)
//   M_l      = U_l D_l^T                                      (invariant item: D = I)
//   H[r, c]  = (M_{l1} B M_{l2}^T)[r, c]
//   out[base + (ao_a + r0 + r) * nao + ao_b + c0 + c]  = H[r, c]   and the transpose at the mirrored
//   position; a sym shell pair writes (H + H^T) / 2 once.
//
// Backward, with G the gradient of H (the gradient at the block plus that at
// the mirrored position; sym: (g + g^T) / 2):
//   Y = G M2,  Z = M1 B,
//   dB = M1^T Y,  dM1 = Y B^T,  dM2 = G^T Z,  dD_l = dM_l^T U_l  (dM_l summed over shell pairs of
//   degree l, on either side), features: dB scattered back through the table.
//
// The routines below work on one shell pair with a group of `lanes` workers
// (lane = 0..lanes-1) that split the entries of each phase; `sync()` separates
// the phases (CUDA: one warp per shell pair, sync = __syncwarp; CPU: lanes = 1
// and a no-op sync).  Scratch blocks are kAbMaxBlock entries each.  Every
// table value is range-checked before use, so a malformed table or index
// makes the kernels skip the shell pair / item (the CPU entry points reject
// them beforehand with an error), never read or write out of bounds.
#pragma once

#include <stdint.h>

#include "layout.h"

namespace so2ops {

//: Largest shell degree (so2ops.basis_layout.MAX_SHELL_L: g functions).
constexpr int kAbMaxShellL = 4;
constexpr int kAbMaxDim = 2 * kAbMaxShellL + 1;          // 9
constexpr int kAbMaxBlock = kAbMaxDim * kAbMaxDim;       // 81
constexpr int kAbMaxPacked = wigner_size(kAbMaxShellL);  // 165: packed D / U / M of degrees <= 4

//: sum_k a[k * a_step] b[k * b_step], k < n (one entry of a small matrix
//: product; the steps express transposes).
template <typename Acc, typename TA, typename TB>
SO2_HD SO2_INLINE Acc ab_dot(const TA* a, int a_step, const TB* b, int b_step, int n) {
  Acc s = Acc(0);
  for (int k = 0; k < n; ++k) s += Acc(a[k * a_step]) * Acc(b[k * b_step]);
  return s;
}

//: Degree of packed entry p (wigner_offset(l) <= p < wigner_offset(l + 1)).
SO2_HD SO2_INLINE int ab_packed_degree(int p) {
  int l = 0;
  while (p >= wigner_offset(l + 1)) ++l;
  return l;
}

//: One item's place in the output, from the index tensors.
struct AbItem {
  int64_t base;             // mol_offset of its molecule
  int64_t nao;              // AOs of its molecule
  int64_t ao_i, ao_j;       // first AO of its two atoms inside the molecule
  int64_t sp_begin, sp_end; // its type's shell pairs
};

//: Fills `it` for item i; false when an index is out of range or the
//: molecule's block does not fit in [0, total).
SO2_HD SO2_INLINE bool ab_item(int64_t i, const int64_t* item_atoms, const int64_t* item_type,
                               const int64_t* atom_ao, const int64_t* atom_mol, const int64_t* mol_offset,
                               const int64_t* mol_nao, const int64_t* sp_start, int64_t n_atoms,
                               int64_t n_mols, int64_t n_types, int64_t n_sp, int64_t total, AbItem& it) {
  const int64_t a = item_atoms[2 * i], b = item_atoms[2 * i + 1], t = item_type[i];
  if (a < 0 || a >= n_atoms || b < 0 || b >= n_atoms || t < 0 || t >= n_types) return false;
  const int64_t mol = atom_mol[a];
  if (mol < 0 || mol >= n_mols || atom_mol[b] != mol) return false;
  it.base = mol_offset[mol];
  it.nao = mol_nao[mol];
  it.ao_i = atom_ao[a];
  it.ao_j = atom_ao[b];
  it.sp_begin = sp_start[t];
  it.sp_end = sp_start[t + 1];
  // nao <= 2^31 keeps nao * nao and the index arithmetic inside int64
  if (it.nao < 0 || it.nao > (1LL << 31) || it.base < 0 || it.base > total - it.nao * it.nao) return false;
  if (it.ao_i < 0 || it.ao_j < 0) return false;
  if (it.sp_begin < 0 || it.sp_end < it.sp_begin || it.sp_end > n_sp) return false;
  return true;
}

//: One shell pair of an item.
struct AbPair {
  int l1, l2, n1, n2;
  bool sym;
  int64_t r0, c0, e0;  // row / column offset inside the atoms' AOs, first table entry
};

//: Fills `p` for shell pair s of item `it`; false when the table row is out
//: of range (degrees, entries) or the block would leave the molecule.
SO2_HD SO2_INLINE bool ab_pair(const int64_t* sp_info, int64_t s, int64_t n_entries, int lmax_shell,
                               const AbItem& it, AbPair& p) {
  const int64_t* row = sp_info + 6 * s;
  const int64_t l1 = row[0], l2 = row[1];
  if (l1 < 0 || l1 > lmax_shell || l2 < 0 || l2 > lmax_shell) return false;
  p.l1 = int(l1);
  p.l2 = int(l2);
  p.n1 = 2 * p.l1 + 1;
  p.n2 = 2 * p.l2 + 1;
  p.r0 = row[2];
  p.c0 = row[3];
  p.sym = row[4] != 0;
  p.e0 = row[5];
  if (p.sym && p.n1 != p.n2) return false;
  if (p.e0 < 0 || p.e0 > n_entries - p.n1 * p.n2) return false;
  if (p.r0 < 0 || p.c0 < 0 || it.ao_i + p.r0 + p.n1 > it.nao || it.ao_j + p.c0 + p.n2 > it.nao) return false;
  return true;
}

//: Flat output index of block entry (r, c), and of its mirror (the transpose).
SO2_HD SO2_INLINE int64_t ab_index(const AbItem& it, const AbPair& p, int r, int c) {
  return it.base + (it.ao_i + p.r0 + r) * it.nao + (it.ao_j + p.c0 + c);
}
SO2_HD SO2_INLINE int64_t ab_index_t(const AbItem& it, const AbPair& p, int r, int c) {
  return it.base + (it.ao_j + p.c0 + c) * it.nao + (it.ao_i + p.r0 + r);
}

//: Packed entry q of M = U D^T (all degrees <= lmax_shell); d == nullptr
//: means D = I (invariant item).
template <typename Acc, typename T>
SO2_HD SO2_INLINE Acc ab_frame_entry(const T* u, const T* d, int q) {
  const int l = ab_packed_degree(q), n = 2 * l + 1, o = wigner_offset(l);
  const int r = (q - o) / n, c = (q - o) - r * n;
  if (!d) return Acc(u[q]);
  return ab_dot<Acc>(u + o + r * n, 1, d + o + c * n, 1, n);
}

//: Local block entry e of shell pair p: the table terms, or the invariant scalar.
template <typename Acc, typename T>
SO2_HD SO2_INLINE Acc ab_local_entry(const AbPair& p, int e, const T* feat, int64_t kc, const int64_t* entry_src,
                                     const T* entry_coef, bool invariant, int64_t inv) {
  if (invariant) {
    const int r = e / p.n2, c = e - r * p.n2;
    return (p.l1 == p.l2 && r == c && inv >= 0 && inv < kc) ? Acc(feat[inv]) : Acc(0);
  }
  const int64_t* src = entry_src + 2 * (p.e0 + e);
  const T* cf = entry_coef + 2 * (p.e0 + e);
  Acc v = Acc(0);
  for (int t = 0; t < 2; ++t)
    if (src[t] >= 0 && src[t] < kc) v += Acc(cf[t]) * Acc(feat[src[t]]);
  return v;
}

//: Forward of one shell pair: store(index, value) for every output entry.
//: m: packed M of the item; bs, ts, hs: scratch blocks.
template <typename Acc, typename T, typename Sync, typename Store>
SO2_HD void ab_forward_pair(const AbItem& it, const AbPair& p, const T* feat, int64_t kc,
                            const int64_t* entry_src, const T* entry_coef, bool invariant, int64_t inv,
                            const Acc* m, Acc* bs, Acc* ts, Acc* hs, int lane, int lanes, Sync&& sync, Store&& store) {
  const int n1 = p.n1, n2 = p.n2, ne = n1 * n2;
  const Acc* m1 = m + wigner_offset(p.l1);
  const Acc* m2 = m + wigner_offset(p.l2);
  for (int e = lane; e < ne; e += lanes) bs[e] = ab_local_entry<Acc>(p, e, feat, kc, entry_src, entry_coef, invariant, inv);
  sync();
  for (int e = lane; e < ne; e += lanes) {  // T = M1 B
    const int r = e / n2, c = e - r * n2;
    ts[e] = ab_dot<Acc>(m1 + r * n1, 1, bs + c, n2, n1);
  }
  sync();
  for (int e = lane; e < ne; e += lanes) {  // H = T M2^T
    const int r = e / n2, c = e - r * n2;
    hs[e] = ab_dot<Acc>(ts + r * n2, 1, m2 + c * n2, 1, n2);
  }
  sync();
  for (int e = lane; e < ne; e += lanes) {
    const int r = e / n2, c = e - r * n2;
    if (p.sym) {
      store(ab_index(it, p, r, c), Acc(0.5) * (hs[e] + hs[c * n2 + r]));
    } else {
      store(ab_index(it, p, r, c), hs[e]);
      store(ab_index_t(it, p, r, c), hs[e]);
    }
  }
  sync();  // the scratch is reused by the next shell pair
}

//: Backward of one shell pair.
//:   grad: the flat output gradient;
//:   m, u: packed M and U of the item;
//:   dm: packed dL/dM accumulator of the item (nullptr: no wigner gradient);
//:   add_feat(slot, value): gradient of features[i, slot] (nullptr-free: called only with
//:     0 <= slot < kc; when need_features);
//:   gs, bs, ys, zs, dbs: scratch blocks.
template <typename Acc, typename T, typename Sync, typename AddFeat>
SO2_HD void ab_backward_pair(const AbItem& it, const AbPair& p, const T* grad, const T* feat, int64_t kc,
                             const int64_t* entry_src, const T* entry_coef, bool invariant, int64_t inv,
                             const Acc* m, Acc* dm, bool need_features, Acc* gs, Acc* bs, Acc* ys, Acc* zs, Acc* dbs,
                             int lane, int lanes, Sync&& sync, AddFeat&& add_feat) {
  const int n1 = p.n1, n2 = p.n2, ne = n1 * n2;
  const Acc* m1 = m + wigner_offset(p.l1);
  const Acc* m2 = m + wigner_offset(p.l2);
  const bool need_m = dm != nullptr && !invariant;  // D = I of an invariant item is a constant
  for (int e = lane; e < ne; e += lanes) {
    const int r = e / n2, c = e - r * n2;
    if (p.sym)
      gs[e] = Acc(0.5) * (Acc(grad[ab_index(it, p, r, c)]) + Acc(grad[ab_index(it, p, c, r)]));
    else
      gs[e] = Acc(grad[ab_index(it, p, r, c)]) + Acc(grad[ab_index_t(it, p, r, c)]);
    if (need_m) bs[e] = ab_local_entry<Acc>(p, e, feat, kc, entry_src, entry_coef, invariant, inv);
  }
  sync();
  for (int e = lane; e < ne; e += lanes) {
    const int r = e / n2, c = e - r * n2;
    ys[e] = ab_dot<Acc>(gs + r * n2, 1, m2 + c, n2, n2);  // Y = G M2
    if (need_m) zs[e] = ab_dot<Acc>(m1 + r * n1, 1, bs + c, n2, n1);  // Z = M1 B
  }
  sync();
  if (need_features) {
    for (int e = lane; e < ne; e += lanes) {  // dB = M1^T Y
      const int q = e / n2, c = e - q * n2;
      dbs[e] = ab_dot<Acc>(m1 + q, n1, ys + c, n2, n1);
    }
    sync();
    if (invariant) {
      // d(x I)/dx: the trace, summed by one lane in a fixed order
      if (lane == 0 && p.l1 == p.l2 && inv >= 0 && inv < kc) {
        Acc tr = Acc(0);
        for (int r = 0; r < n1; ++r) tr += dbs[r * n2 + r];
        add_feat(inv, tr);
      }
    } else {
      for (int e = lane; e < ne; e += lanes) {
        const int64_t* src = entry_src + 2 * (p.e0 + e);
        const T* cf = entry_coef + 2 * (p.e0 + e);
        for (int t = 0; t < 2; ++t)
          if (src[t] >= 0 && src[t] < kc) add_feat(src[t], Acc(cf[t]) * dbs[e]);
      }
    }
  }
  if (need_m) {
    Acc* dm1 = dm + wigner_offset(p.l1);
    Acc* dm2 = dm + wigner_offset(p.l2);
    if (p.l1 == p.l2) {
      // one accumulator for both sides: each lane owns its entries
      for (int e = lane; e < n1 * n1; e += lanes) {
        const int a = e / n1, b = e - a * n1;
        dm1[e] += ab_dot<Acc>(ys + a * n2, 1, bs + b * n2, 1, n2) + ab_dot<Acc>(gs + a, n2, zs + b, n2, n1);
      }
    } else {
      for (int e = lane; e < n1 * n1; e += lanes) {  // dM1 = Y B^T
        const int a = e / n1, b = e - a * n1;
        dm1[e] += ab_dot<Acc>(ys + a * n2, 1, bs + b * n2, 1, n2);
      }
      for (int e = lane; e < n2 * n2; e += lanes) {  // dM2 = G^T Z
        const int a = e / n2, b = e - a * n2;
        dm2[e] += ab_dot<Acc>(gs + a, n2, zs + b, n2, n1);
      }
    }
  }
  sync();  // the scratch is reused by the next shell pair
}

//: Packed entry q of dL/dD from the packed dL/dM: dD_l = dM_l^T U_l.
template <typename Acc, typename T>
SO2_HD SO2_INLINE Acc ab_wigner_grad_entry(const Acc* dm, const T* u, int q) {
  const int l = ab_packed_degree(q), n = 2 * l + 1, o = wigner_offset(l);
  const int a = (q - o) / n, b = (q - o) - a * n;
  return ab_dot<Acc>(dm + o + a, n, u + o + b, n, n);
}

}  // namespace so2ops
