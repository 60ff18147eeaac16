"""Public custom ops (``torch.ops.so2ops.*``) with validation and autograd."""
from .edge_wigner import edge_wigner
from .rotate import rotate
from .so2_linear import so2_linear
from .so2_message import so2_message

__all__ = ["edge_wigner", "rotate", "so2_linear", "so2_message"]
