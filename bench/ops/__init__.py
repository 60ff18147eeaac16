"""One module per benchmarked op; importing this package registers them.

Order matters only for the report: sanity rows first (they give the measured
peaks), then the ops from the cheapest to the fused message op.
"""
from . import sanity  # noqa: F401
from . import edge_wigner, rotate, so2_linear, so2_message, so2_frame_linear  # noqa: F401
from . import so2_tensor_product, assemble_blocks  # noqa: F401  (after so2_message: the new ops)
from . import edgewise  # noqa: F401  (so2_message vs FAIR-Chem's general path)
from . import edgewise_block  # noqa: F401  (the two-conv Edgewise block vs FAIR-Chem's module)
