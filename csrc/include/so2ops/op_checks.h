// Argument checks of the compiled entry points (host only, ATen).  The Python wrappers validate too; these checks make the compiled
// ops safe on their own: every kernel assumes the shapes checked here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <initializer_list>
#include <optional>
#include <utility>

#include "assemble_blocks.h"
#include "layout.h"
#include "so2_grid_product.h"

namespace so2ops {

/// Position of the first entry of a contiguous int64 CPU `index` outside [0, n), or -1
/// (the CPU kernels index with these values unchecked).
inline int64_t first_outside(const at::Tensor& index, int64_t n) {
  const int64_t* p = index.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < index.numel(); ++i) {
    if (p[i] < 0 || p[i] >= n) return i;
  }
  return -1;
}

inline void check_lmax(int64_t lmax) {
  TORCH_CHECK(lmax >= 0 && lmax <= kLmaxSupported, "so2ops: lmax=", lmax,
              " must be in [0, ", kLmaxSupported, "]");
}

//: edge_vec [E, 3] float, points [K, 3], pinv [K, (lmax+1)^2], 1 <= K <= kMaxPoints,
//: all on one device.  Returns K.
inline int64_t check_edge_wigner_args(const at::Tensor& edge_vec, const at::Tensor& points,
                                      const at::Tensor& pinv, int64_t lmax) {
  check_lmax(lmax);
  TORCH_CHECK(edge_vec.dim() == 2 && edge_vec.size(1) == 3, "edge_wigner: edge_vec must be [E, 3], got ",
              edge_vec.sizes());
  TORCH_CHECK(at::isFloatingType(edge_vec.scalar_type()), "edge_wigner: edge_vec must be floating point, got ",
              edge_vec.scalar_type());
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3, "edge_wigner: points must be [K, 3], got ",
              points.sizes());
  const int64_t k = points.size(0);
  TORCH_CHECK(k >= 1 && k <= kMaxPoints, "edge_wigner: need 1 <= K <= ", kMaxPoints, " sample points, got ", k);
  TORCH_CHECK(pinv.dim() == 2 && pinv.size(0) == k && pinv.size(1) == num_coeffs(static_cast<int>(lmax)),
              "edge_wigner: pinv must be [K=", k, ", (lmax+1)^2=", num_coeffs(static_cast<int>(lmax)), "], got ",
              pinv.sizes());
  TORCH_CHECK(at::isFloatingType(points.scalar_type()) && at::isFloatingType(pinv.scalar_type()),
              "edge_wigner: points and pinv must be floating point");
  TORCH_CHECK(points.device() == edge_vec.device() && pinv.device() == edge_vec.device(),
              "edge_wigner: edge_vec, points and pinv must be on one device");
  return k;
}

inline void check_edge_wigner_grad(const at::Tensor& grad, const at::Tensor& edge_vec, int64_t lmax) {
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == edge_vec.size(0) &&
                  grad.size(1) == wigner_size(static_cast<int>(lmax)),
              "edge_wigner_backward: grad must be [E=", edge_vec.size(0), ", ", wigner_size(static_cast<int>(lmax)),
              "], got ", grad.sizes());
  TORCH_CHECK(grad.device() == edge_vec.device(), "edge_wigner_backward: grad and edge_vec must be on one device");
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "edge_wigner_backward: grad must be floating point");
}

//: x [N, (lmax+1)^2, C >= 1], wigner [E, wigner_size(lmax)] of x's dtype and
//: device, index [E] int64 (or N == E without it).  Index values are checked
//: by the caller where that needs no device synchronisation (CPU); the CUDA
//: kernels treat out-of-range rows as zeros instead of reading them.
inline void check_rotate_args(const at::Tensor& x, const at::Tensor& wigner, const std::optional<at::Tensor>& index,
                              int64_t lmax) {
  check_lmax(lmax);
  const int l = static_cast<int>(lmax);
  TORCH_CHECK(x.dim() == 3 && x.size(1) == num_coeffs(l) && x.size(2) >= 1,
              "rotate: x must be [N, (lmax+1)^2=", num_coeffs(l), ", C>=1], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "rotate: x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(wigner.dim() == 2 && wigner.size(1) == wigner_size(l), "rotate: wigner must be [E, ",
              wigner_size(l), "], got ", wigner.sizes());
  TORCH_CHECK(wigner.scalar_type() == x.scalar_type(), "rotate: wigner dtype ", wigner.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(wigner.device() == x.device(), "rotate: x and wigner must be on one device");
  if (index.has_value()) {
    const at::Tensor& idx = *index;
    TORCH_CHECK(idx.dim() == 1 && idx.size(0) == wigner.size(0), "rotate: index must be [E=", wigner.size(0),
                "], got ", idx.sizes());
    TORCH_CHECK(idx.scalar_type() == at::kLong, "rotate: index must be int64, got ", idx.scalar_type());
    TORCH_CHECK(idx.device() == x.device(), "rotate: index and x must be on one device");
  } else {
    TORCH_CHECK(x.size(0) == wigner.size(0), "rotate: x has ", x.size(0), " rows but wigner has ",
                wigner.size(0), " edges; pass index to gather");
  }
}

inline void check_rotate_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& wigner) {
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == wigner.size(0) && grad.size(1) == x.size(1) &&
                  grad.size(2) == x.size(2),
              "rotate_backward: grad must be [E=", wigner.size(0), ", ", x.size(1), ", ", x.size(2), "], got ",
              grad.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && grad.device() == x.device(),
              "rotate_backward: grad must match x in dtype and device");
}

//: so2_grid_product: spectral [N, nu, 2*mmax+1, H], coeffs [N, nu, H] of one
//: floating dtype and device, 1 <= nu <= kGpMaxBodyOrder, 1 <= grid <= kGpMaxGrid.
inline void check_grid_product_args(const at::Tensor& spectral, const at::Tensor& coeffs, int64_t mmax,
                                    int64_t grid, const char* op) {
  TORCH_CHECK(mmax >= 0 && mmax <= kLmaxSupported, op, ": mmax=", mmax, " must be in [0, ", kLmaxSupported, "]");
  TORCH_CHECK(grid >= 1 && grid <= kGpMaxGrid, op, ": grid=", grid, " must be in [1, ", kGpMaxGrid, "]");
  const int S = gp_spectral_size(static_cast<int>(mmax));
  TORCH_CHECK(spectral.dim() == 4 && spectral.size(2) == S, op, ": spectral must be [N, nu, 2*mmax+1=", S,
              ", H], got ", spectral.sizes());
  const int64_t nu = spectral.size(1);
  TORCH_CHECK(nu >= 1 && nu <= kGpMaxBodyOrder, op, ": body order nu=", nu, " must be in [1, ", kGpMaxBodyOrder,
              "]");
  TORCH_CHECK(coeffs.dim() == 3 && coeffs.size(0) == spectral.size(0) && coeffs.size(1) == nu &&
                  coeffs.size(2) == spectral.size(3),
              op, ": coeffs must be [N=", spectral.size(0), ", nu=", nu, ", H=", spectral.size(3), "], got ",
              coeffs.sizes());
  TORCH_CHECK(at::isFloatingType(spectral.scalar_type()), op, ": spectral must be floating point, got ",
              spectral.scalar_type());
  TORCH_CHECK(coeffs.scalar_type() == spectral.scalar_type(), op, ": coeffs dtype ", coeffs.scalar_type(),
              " differs from spectral dtype ", spectral.scalar_type());
  TORCH_CHECK(coeffs.device() == spectral.device(), op, ": spectral and coeffs must be on one device");
}

inline void check_grid_product_grad(const at::Tensor& grad, const at::Tensor& spectral) {
  const int64_t N = spectral.size(0), S = spectral.size(2), H = spectral.size(3);
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == N && grad.size(1) == S && grad.size(2) == H,
              "so2_grid_product_backward: grad must be [N=", N, ", S=", S, ", H=", H, "], got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == spectral.scalar_type() && grad.device() == spectral.device(),
              "so2_grid_product_backward: grad must match spectral in dtype and device");
}

namespace detail {
inline void check_ab_index(const at::Tensor& t, const at::Tensor& like, const char* name,
                           std::initializer_list<int64_t> shape, const char* op) {
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == int64_t(shape.size()), op, ": ", name, " must have ", shape.size(), " dims, got ",
              t.sizes());
  int d = 0;
  for (int64_t s : shape) {
    TORCH_CHECK(s < 0 || t.size(d) == s, op, ": ", name, " has shape ", t.sizes(), ", expected size ", s,
                " in dim ", d);
    ++d;
  }
}
}  // namespace detail

//: assemble_blocks: shapes, dtypes and devices of the 15 tensors (-1 = any size):
//:   features [I, K, C] float, wigner [I, wigner_size(lmax_shell)], item_atoms [I, 2], item_type [I],
//:   invariant [I] bool, atom_ao / atom_mol [Na], mol_offset / mol_nao [B], sp_start [T + 1 >= 1],
//:   sp_info [SP, 6], entry_src [NE, 2], entry_coef [NE, 2], inv_src [SP], basis_change [wigner_size(lmax_shell)];
//:   index tensors int64, float tensors of features' dtype, all on features' device.
//: Index values are checked by the caller where that needs no device synchronisation (CPU);
//: the CUDA kernels skip items and shell pairs whose indices are out of range.
inline void check_assemble_blocks_args(const at::Tensor& features, const at::Tensor& wigner,
                                       const at::Tensor& item_atoms, const at::Tensor& item_type,
                                       const at::Tensor& invariant, const at::Tensor& atom_ao,
                                       const at::Tensor& atom_mol, const at::Tensor& mol_offset,
                                       const at::Tensor& mol_nao, const at::Tensor& sp_start,
                                       const at::Tensor& sp_info, const at::Tensor& entry_src,
                                       const at::Tensor& entry_coef, const at::Tensor& inv_src,
                                       const at::Tensor& basis_change, int64_t lmax_shell, int64_t total,
                                       const char* op) {
  TORCH_CHECK(lmax_shell >= 0 && lmax_shell <= kAbMaxShellL, op, ": lmax_shell=", lmax_shell, " must be in [0, ",
              kAbMaxShellL, "]");
  TORCH_CHECK(total >= 0, op, ": total=", total, " must be >= 0");
  TORCH_CHECK(features.dim() == 3, op, ": features must be [I, K, C], got ", features.sizes());
  TORCH_CHECK(at::isFloatingType(features.scalar_type()), op, ": features must be floating point, got ",
              features.scalar_type());
  const int64_t I = features.size(0);
  const int ws = wigner_size(static_cast<int>(lmax_shell));
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>(wigner, "wigner"),
                                {entry_coef, "entry_coef"},
                                {basis_change, "basis_change"}}) {
    TORCH_CHECK(t.device() == features.device(), op, ": ", name, " must be on ", features.device(), ", got ",
                t.device());
    TORCH_CHECK(t.scalar_type() == features.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
                " differs from features dtype ", features.scalar_type());
  }
  TORCH_CHECK(wigner.dim() == 2 && wigner.size(0) == I && wigner.size(1) == ws, op, ": wigner must be [I=", I,
              ", wigner_size(lmax_shell)=", ws, "], got ", wigner.sizes());
  TORCH_CHECK(basis_change.dim() == 1 && basis_change.size(0) == ws, op, ": basis_change must be [", ws, "], got ",
              basis_change.sizes());
  detail::check_ab_index(item_atoms, features, "item_atoms", {I, 2}, op);
  detail::check_ab_index(item_type, features, "item_type", {I}, op);
  TORCH_CHECK(invariant.device() == features.device() && invariant.scalar_type() == at::kBool &&
                  invariant.dim() == 1 && invariant.size(0) == I,
              op, ": invariant must be a [I=", I, "] bool tensor on ", features.device(), ", got ",
              invariant.scalar_type(), " ", invariant.sizes(), " on ", invariant.device());
  detail::check_ab_index(atom_ao, features, "atom_ao", {-1}, op);
  detail::check_ab_index(atom_mol, features, "atom_mol", {atom_ao.size(0)}, op);
  detail::check_ab_index(mol_offset, features, "mol_offset", {-1}, op);
  detail::check_ab_index(mol_nao, features, "mol_nao", {mol_offset.size(0)}, op);
  detail::check_ab_index(sp_start, features, "sp_start", {-1}, op);
  TORCH_CHECK(sp_start.size(0) >= 1, op, ": sp_start must have T + 1 >= 1 entries");
  detail::check_ab_index(sp_info, features, "sp_info", {-1, 6}, op);
  detail::check_ab_index(entry_src, features, "entry_src", {-1, 2}, op);
  TORCH_CHECK(entry_coef.dim() == 2 && entry_coef.size(0) == entry_src.size(0) && entry_coef.size(1) == 2, op,
              ": entry_coef must be [NE=", entry_src.size(0), ", 2], got ", entry_coef.sizes());
  detail::check_ab_index(inv_src, features, "inv_src", {sp_info.size(0)}, op);
}

inline void check_assemble_blocks_grad(const at::Tensor& grad, const at::Tensor& features, int64_t total) {
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == total, "assemble_blocks_backward: grad must be [total=", total,
              "], got ", grad.sizes());
  TORCH_CHECK(grad.device() == features.device() && grad.scalar_type() == features.scalar_type(),
              "assemble_blocks_backward: grad must match features in dtype and device");
}

}  // namespace so2ops
