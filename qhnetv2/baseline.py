"""Cheap physical Hamiltonians for residual targets (``target: minao`` / ``core``).

The model can learn ``H - H_base`` instead of ``H``: ``H_base`` is

* ``core``: the one-electron core Hamiltonian ``T + V_nuc`` (no SCF at all);
* ``minao``: the Kohn-Sham Fock matrix of PySCF's ``minao`` guess density (a
  superposition of atomic densities), i.e. one Fock build;

computed with the SCF settings the labels were made with.  Both are exact
functions of the geometry and rotate like ``H``, so the residual keeps the
equivariance of the prediction.  PySCF is imported lazily; cached per molecule.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Optional

import numpy as np

from .atomic import atomic_file

TARGETS = ("full", "core", "minao")


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return target


def base_hamiltonian(atomic_numbers, positions, kind: str, settings: Optional[Dict[str, Any]] = None,
                     charge: int = 0) -> Optional[np.ndarray]:
    """``H_base[n_ao, n_ao]`` (PySCF AO order, Hartree) for ``kind`` (None for ``full``)."""
    check_target(kind)
    if kind == "full":
        return None
    from .data.labelling import DEFAULT_SETTINGS, build_mol, make_mf, make_settings

    settings = make_settings(**{k: v for k, v in (settings or {}).items() if k in DEFAULT_SETTINGS})
    mol = build_mol(np.asarray(atomic_numbers), np.asarray(positions, dtype=np.float64), settings["basis"], charge)
    if kind == "core":
        return np.asarray(mol.intor_symmetric("int1e_kin") + mol.intor_symmetric("int1e_nuc"))
    mf = make_mf(mol, settings)
    dm0 = mf.get_init_guess(key="minao")
    return np.asarray(mf.get_fock(dm=dm0))


class BaseCache:
    """Disk cache of base Hamiltonians, one ``.npy`` per (kind, molecule key), written atomically."""

    def __init__(self, folder: str, kind: str, settings: Optional[Dict[str, Any]] = None):
        self.folder, self.kind, self.settings = folder, check_target(kind), dict(settings or {})
        os.makedirs(folder, exist_ok=True)

    def _path(self, key: str) -> str:
        tag = hashlib.sha1(repr(sorted(self.settings.items())).encode()).hexdigest()[:8]
        return os.path.join(self.folder, f"{self.kind}-{tag}-{key}.npy")

    def get(self, key: str, atomic_numbers, positions) -> Optional[np.ndarray]:
        if self.kind == "full":
            return None
        path = self._path(key)
        if os.path.exists(path):
            return np.load(path)
        h = base_hamiltonian(atomic_numbers, positions, self.kind, self.settings)
        with atomic_file(path) as f:
            np.save(f, h)
        return h
