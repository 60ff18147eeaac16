"""Compatibility layers with other equivariant-network libraries.

* ``so2ops.compat.fairchem``: convert fairchem's eSCN-MD / UMA ``SO2_Convolution``,
  ``Edgewise`` and ``EdgeDegreeEmbedding`` into so2ops modules
  (``so2ops.compat.fairchem.convert``); docs/fairchem.md.
* ``so2ops.compat._fairchem_import.load_fairchem_uma``: import fairchem's UMA
  building blocks without fairchem's heavy top-level package.

Importing this package does not import fairchem; ``convert`` does, on first use.
"""
from . import fairchem
from ._fairchem_import import fairchem_available, load_fairchem_uma

__all__ = ["fairchem", "fairchem_available", "load_fairchem_uma"]
