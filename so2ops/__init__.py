"""so2ops: fused SO(2)-local-frame primitives for equivariant networks.

Public API::

    wigner = so2ops.edge_wigner(edge_vec, lmax)            # [E, wigner_size(lmax)]
    local  = so2ops.rotate(x, wigner, lmax, index=src)     # [E, (lmax+1)^2, C]
    y      = so2ops.so2_linear(local, weight, lmax, mmax, C_out, modulation)
    out    = so2ops.so2_message(x, wigner, edge_index, weight, lmax, mmax, C_out, modulation)
    y      = so2ops.so2_tensor_product(local, w_in, coeffs, w_out, lmax, mmax, C_out)
    H      = so2ops.assemble_blocks(features, wigner, layout, atomic_numbers, items, batch)
    y      = so2ops.so2_layer_norm(x, weight, bias, lmax, eps, joint)   # SO2LayerNorm, fused
    y      = so2ops.so2_gate(x, gate_logits)                           # Gate (after its linear), fused

Value checks (index range, finite / nonzero edge vectors) read data on the
host: on by default for CPU tensors, off for GPU tensors (CUDA graphs,
``torch.compile``); ``so2ops.set_value_checks(True/False/None)`` or
``with so2ops.value_checks(True):`` switch them.  Under ``torch.autocast`` the
ops compute and return float32.

Conventions are in docs/conventions.md, the math in docs/math.md.
"""
from . import layout, nn, reference
from .dispatch import backends, current_backend, use_backend
from .basis_layout import BasisLayout, e3nn_to_pyscf
from .block_tables import block_channels
from .layout import LMAX_SUPPORTED, num_coeffs, num_mod, tp_grid_size, tp_in_size, tp_out_size, weight_size, wigner_size
from .ops import (HamiltonianIndex, assemble_blocks, edge_wigner, rotate, so2_gate, so2_gather_linear, so2_layer_norm,
                  so2_linear, so2_linear_scatter, so2_message, so2_tensor_product)
from .reference import wigner_to_dense
from .validation import set_value_checks, value_checks

__version__ = "0.1.0"

__all__ = [
    "BasisLayout",
    "HamiltonianIndex",
    "assemble_blocks",
    "block_channels",
    "e3nn_to_pyscf",
    "so2_tensor_product",
    "tp_grid_size",
    "tp_in_size",
    "tp_out_size",
    "LMAX_SUPPORTED",
    "backends",
    "current_backend",
    "edge_wigner",
    "layout",
    "nn",
    "num_coeffs",
    "num_mod",
    "reference",
    "rotate",
    "set_value_checks",
    "so2_gate",
    "so2_gather_linear",
    "so2_layer_norm",
    "so2_linear",
    "so2_linear_scatter",
    "so2_message",
    "use_backend",
    "value_checks",
    "weight_size",
    "wigner_size",
    "wigner_to_dense",
]
