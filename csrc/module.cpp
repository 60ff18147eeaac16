// so2ops._C: the op schemas of every compiled kernel, and a tiny Python module.
//
// The schemas live here, in one place; each kernel file registers its CPU or
// CUDA implementation with TORCH_LIBRARY_IMPL(so2ops_C, ...).  Python calls
// them as torch.ops.so2ops_C.<name> (so2ops/ops/*.py), after importing this
// module, whose static initialisers perform the registrations.
//
// Built by setup.py (torch.utils.cpp_extension defines TORCH_EXTENSION_NAME)
// this file also defines the pybind11 module; built by CMake as a plain
// libtorch library (SO2OPS_BUILD_TORCH_LIB) it only holds the schemas.
#include <torch/library.h>

#include "so2ops/layout.h"
#include "so2ops/tile_knob.h"

TORCH_LIBRARY(so2ops_C, m) {
  m.def("edge_wigner_forward(Tensor edge_vec, Tensor points, Tensor pinv, int lmax) -> Tensor");
  m.def("edge_wigner_backward(Tensor grad, Tensor edge_vec, Tensor points, Tensor pinv, int lmax) -> Tensor");
  m.def("rotate_forward(Tensor x, Tensor wigner, Tensor? index, int lmax, bool inverse) -> Tensor");
  m.def(
      "rotate_backward(Tensor grad, Tensor x, Tensor wigner, Tensor? index, int lmax, bool inverse, "
      "bool need_x, bool need_wigner) -> (Tensor, Tensor)");
  m.def(
      "so2_linear_forward(Tensor x, Tensor weight, Tensor? modulation, int lmax, int mmax, int out_channels) "
      "-> Tensor");
  m.def(
      "so2_linear_backward(Tensor grad, Tensor x, Tensor weight, Tensor? modulation, int lmax, int mmax, "
      "int out_channels, bool need_x, bool need_weight, bool need_mod) -> (Tensor, Tensor, Tensor)");
  m.def(
      "so2_message_forward(Tensor x, Tensor wigner, Tensor edge_index, Tensor weight, Tensor? modulation, "
      "int lmax, int mmax, int out_channels, bool deterministic) -> Tensor");
  m.def(
      "so2_message_backward(Tensor grad, Tensor x, Tensor wigner, Tensor edge_index, Tensor weight, "
      "Tensor? modulation, int lmax, int mmax, int out_channels, bool deterministic, bool need_x, "
      "bool need_wigner, bool need_weight, bool need_mod) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "so2_frame_linear_forward(Tensor x, Tensor wigner, Tensor index, Tensor weight, Tensor? modulation, "
      "Tensor? bias, Tensor? scale, int lmax, int mmax, int out_channels, int num_nodes, bool to_nodes, "
      "bool deterministic) -> Tensor");
  m.def(
      "so2_frame_linear_backward(Tensor grad, Tensor x, Tensor wigner, Tensor index, Tensor weight, "
      "Tensor? modulation, Tensor? bias, Tensor? scale, int lmax, int mmax, int out_channels, int num_nodes, "
      "bool to_nodes, bool deterministic, bool need_x, bool need_wigner, bool need_weight, bool need_mod, "
      "bool need_bias, bool need_scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("so2_layer_norm_forward(Tensor x, Tensor weight, Tensor bias, int lmax, float eps, bool joint) -> Tensor");
  m.def(
      "so2_layer_norm_backward(Tensor grad, Tensor x, Tensor weight, int lmax, float eps, bool joint, bool need_x, "
      "bool need_weight, bool need_bias) -> (Tensor, Tensor, Tensor)");
  m.def("so2_gate_forward(Tensor x, Tensor logits) -> Tensor");
  m.def("so2_gate_backward(Tensor grad, Tensor x, Tensor logits, bool need_x, bool need_logits) -> (Tensor, Tensor)");
  m.def("so2_grid_product_forward(Tensor spectral, Tensor coeffs, int mmax, int grid) -> Tensor");
  m.def(
      "so2_grid_product_backward(Tensor grad, Tensor spectral, Tensor coeffs, int mmax, int grid, "
      "bool need_spectral, bool need_coeffs) -> (Tensor, Tensor)");
  m.def(
      "assemble_blocks_forward(Tensor features, Tensor wigner, Tensor item_atoms, Tensor item_type, "
      "Tensor invariant, Tensor atom_ao, Tensor atom_mol, Tensor mol_offset, Tensor mol_nao, Tensor sp_start, "
      "Tensor sp_info, Tensor entry_src, Tensor entry_coef, Tensor inv_src, Tensor basis_change, int lmax_shell, "
      "int total) -> Tensor");
  m.def(
      "assemble_blocks_backward(Tensor grad, Tensor features, Tensor wigner, Tensor item_atoms, Tensor item_type, "
      "Tensor invariant, Tensor atom_ao, Tensor atom_mol, Tensor mol_offset, Tensor mol_nao, Tensor sp_start, "
      "Tensor sp_info, Tensor entry_src, Tensor entry_coef, Tensor inv_src, Tensor basis_change, int lmax_shell, "
      "int total, bool need_features, bool need_wigner) -> (Tensor, Tensor)");
}

#ifdef TORCH_EXTENSION_NAME
#include <pybind11/pybind11.h>

namespace {

bool compiled_with_cuda() {
#ifdef SO2OPS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "so2ops compiled kernels; the ops themselves are torch.ops.so2ops_C.*";
  m.def("compiled_with_cuda", &compiled_with_cuda, "True when the CUDA kernels were built into this extension.");
  m.def("lmax_supported", []() { return so2ops::kLmaxSupported; },
        "Largest degree lmax the compiled kernels accept (so2ops.layout.LMAX_SUPPORTED).");
  // The tile knob (so2ops/tile_knob.h); so2ops.testing.tile_size(n) is the context manager around it.
  m.def("set_tile_override", &so2ops::set_tile_override, pybind11::arg("n"),
        "Force at most n edges per tile (and smaller CUDA slabs / grids) in the compiled kernels; "
        "n <= 0 restores their own choice.  Returns the previous setting (0: none).");
  m.def("tile_override", &so2ops::tile_override,
        "The forced tile size in effect (set_tile_override, else SO2OPS_TILE_EDGES), 0 when none.");
}
#endif
