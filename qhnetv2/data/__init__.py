"""Hamiltonian datasets: labelling with PySCF, import, storage, splits.

Importing this package is cheap: neither torch nor PySCF is imported until a
function that needs it is used (the GPU machine may have no PySCF).

Public API (loaded lazily):

* :class:`HamiltonianReader` - random access to an LMDB dataset (NumPy).
* :class:`HamiltonianDataset` - the same as a ``torch.utils.data.Dataset``.
* :func:`basis_layout`, :func:`ao_slices` - PySCF basis layout per element/atom.
* :func:`build_dataset`, :func:`merge_datasets`, :func:`make_split`,
  :func:`import_qh9`, :func:`import_schnorb` - what the CLI commands run.
"""
import importlib

_EXPORTS = {
    "HamiltonianReader": ".store",
    "DatasetWriter": ".store",
    "HamiltonianDataset": ".torch_dataset",
    "basis_layout": ".basis",
    "ao_slices": ".basis",
    "ao_counts": ".basis",
    "build_dataset": ".build",
    "merge_datasets": ".merge",
    "make_split": ".split",
    "load_split": ".split",
    "import_qh9": ".importers",
    "import_schnorb": ".importers",
    "to_pyscf": ".conventions",
    "from_pyscf": ".conventions",
    "make_md17_like": ".recipe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
