"""Triton backend of every so2ops op.

Importing this package registers ``forward``/``backward`` of each op under the
``"triton"`` backend (``so2ops.dispatch`` imports it lazily on first dispatch).
The kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""
from . import assemble_blocks, edge_wigner, rotate, so2_frame_linear, so2_grid_product, so2_linear, so2_message  # noqa: F401  (registration side effects)
from . import so2_gate, so2_layer_norm  # noqa: F401,E402  (registration side effects)
