"""Drop-in modules for equivariant models built on the so2ops ops."""
from .gate import Gate
from .norm import SO2LayerNorm
from .so2_convolution import SO2Convolution
from .so2_linear import SO2Linear, init_so2_weight
from .so2_tensor_product import SO2TensorProduct

__all__ = ["Gate", "SO2Convolution", "SO2LayerNorm", "SO2Linear", "SO2TensorProduct", "init_so2_weight"]
