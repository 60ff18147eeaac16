"""qhnetv2: machine-learned Kohn-Sham Hamiltonians.

Kept deliberately tiny: importing ``qhnetv2`` must not pull in torch, PySCF or
the compiled kernels.  Subpackages (``qhnetv2.data``, ``qhnetv2.metrics``,
``qhnetv2.scf``) import their heavy dependencies themselves.
"""

__version__ = "0.1.0"
