"""Drop-in modules for equivariant models built on the so2ops ops."""
from .gate import Gate
from .norm import SO2LayerNorm
from .so2_convolution import SO2Convolution

__all__ = ["Gate", "SO2Convolution", "SO2LayerNorm"]
