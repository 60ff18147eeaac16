"""Public custom ops (``torch.ops.so2ops.*``) with validation and autograd."""
from .edge_wigner import edge_wigner
from .rotate import rotate
from .so2_linear import so2_linear
from .so2_message import so2_message
from .so2_frame_linear import so2_gather_linear, so2_linear_scatter
from .so2_tensor_product import so2_tensor_product
from .assemble_blocks import HamiltonianIndex, assemble_blocks
from .so2_layer_norm import so2_layer_norm
from .so2_gate import so2_gate
from . import double_backward  # noqa: F401,E402  (autograd formulas of the *_backward ops)

__all__ = ["HamiltonianIndex", "assemble_blocks", "edge_wigner", "rotate", "so2_gate", "so2_gather_linear", "so2_layer_norm", "so2_linear", "so2_linear_scatter", "so2_message", "so2_tensor_product"]
