"""so2ops: fused SO(2)-local-frame primitives for equivariant networks.

Public API::

    wigner = so2ops.edge_wigner(edge_vec, lmax)            # [E, wigner_size(lmax)]
    local  = so2ops.rotate(x, wigner, lmax, index=src)     # [E, (lmax+1)^2, C]
    y      = so2ops.so2_linear(local, weight, lmax, mmax, C_out, modulation)
    out    = so2ops.so2_message(x, wigner, edge_index, weight, lmax, mmax, C_out, modulation)

Conventions are in docs/conventions.md, the math in docs/math.md.
"""
from . import layout, nn, reference
from .dispatch import backends, current_backend, use_backend
from .layout import LMAX_SUPPORTED, num_coeffs, num_mod, weight_size, wigner_size
from .ops import edge_wigner, rotate, so2_linear, so2_message
from .reference import wigner_to_dense

__version__ = "0.1.0"

__all__ = [
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
    "so2_linear",
    "so2_message",
    "use_backend",
    "weight_size",
    "wigner_size",
    "wigner_to_dense",
]
