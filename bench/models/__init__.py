"""Model benchmarks (``kind = "model"``, ``python -m bench models``); importing this package registers them."""
from . import qhnetv2_model  # noqa: F401
