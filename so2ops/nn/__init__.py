"""Drop-in modules for equivariant models built on the so2ops ops."""
from .edge_degree import EdgeDegreeEmbedding
from .edgewise import RadialMLP, SO2EdgeLinear, SO2EdgewiseBlock
from .gate import Gate
from .norm import SO2LayerNorm
from .so2_convolution import SO2Convolution
from .so2_linear import SO2Linear, init_so2_weight
from .so2_tensor_product import SO2TensorProduct

__all__ = [
    "EdgeDegreeEmbedding",
    "Gate",
    "RadialMLP",
    "SO2Convolution",
    "SO2EdgeLinear",
    "SO2EdgewiseBlock",
    "SO2LayerNorm",
    "SO2Linear",
    "SO2TensorProduct",
    "init_so2_weight",
]
