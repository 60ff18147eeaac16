"""qhnetv2: machine-learned Kohn-Sham Hamiltonians.

Kept deliberately tiny: importing ``qhnetv2`` must not pull in torch, PySCF or
the compiled kernels.  Subpackages (``qhnetv2.data``, ``qhnetv2.metrics``,
``qhnetv2.scf``) import their heavy dependencies themselves.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # ``from qhnetv2 import QHNetV2`` without importing torch on ``import qhnetv2``
    if name == "QHNetV2":
        from .model import QHNetV2

        return QHNetV2
    raise AttributeError(f"module 'qhnetv2' has no attribute {name!r}")
