"""Plain-PyTorch reference implementations: the executable specification.

Every function here is differentiable with ordinary autograd and runs on any
device; every fast backend is tested against it.
"""
from .edge_wigner import edge_wigner, wigner_from_matrices, wigner_to_dense
from .frames import edge_frames
from .rotate import rotate
from .so2_linear import so2_linear
from .so2_message import so2_message
from .so2_frame_linear import so2_frame_linear
from .so2_tensor_product import grid_product, so2_tensor_product
from .assemble_blocks import assemble_blocks
from .spherical_harmonics import spherical_harmonics
from .so2_layer_norm import so2_layer_norm
from .so2_gate import so2_gate

__all__ = [
    "edge_frames",
    "edge_wigner",
    "rotate",
    "so2_gate",
    "so2_layer_norm",
    "so2_linear",
    "so2_message",
    "so2_frame_linear",
    "spherical_harmonics",
    "grid_product",
    "so2_tensor_product",
    "assemble_blocks",
    "wigner_from_matrices",
    "wigner_to_dense",
]
