"""Training data: a ``HamiltonianDataset`` plus the cached base Hamiltonian of residual targets.

``ResidualDataset(dataset, cache)`` adds ``base_hamiltonian [n_ao, n_ao]``
(float64, PySCF order) to every item, read from (or computed into) a
``qhnetv2.baseline.BaseCache``; :func:`qhnetv2.training.collate` then uses
``hamiltonian - base_hamiltonian`` as the target.  With an ``eigen`` cache
(:class:`qhnetv2.training.eigenbasis_loss.EigenCache`, for the eigenbasis loss)
it also adds the label's generalised eigenpairs ``label_orbital_energies [k]``
and ``label_eigenvectors [n_ao, k]`` (float64), computed once per molecule.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import numpy as np
import torch


def dataset_settings(dataset) -> Dict[str, Any]:
    """The SCF settings a dataset was labelled with (``__meta__`` or its first record)."""
    meta = dataset.meta or {}
    settings = meta.get("settings")
    if not settings and len(dataset):
        raw = dataset.reader[0].get("settings")
        settings = json.loads(raw) if isinstance(raw, str) else raw
    return dict(settings or {})


def cache_key(mol_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.:" else "_" for c in str(mol_id))


class ResidualDataset(torch.utils.data.Dataset):
    """``dataset[i]`` plus ``base_hamiltonian`` from ``cache`` (a ``BaseCache``), or unchanged if cache is None;
    plus ``label_orbital_energies``/``label_eigenvectors`` from ``eigen`` (an ``EigenCache``) if given.

    ``write=False`` computes missing bases and eigenvectors without writing them (ranks > 0).
    """

    def __init__(self, dataset, cache=None, write: bool = True, eigen=None):
        self.dataset, self.cache, self.write, self.eigen = dataset, cache, write, eigen

    @property
    def ids(self) -> List[str]:
        return self.dataset.ids

    def __len__(self) -> int:
        return len(self.dataset)

    def base(self, mol_id: str, atomic_numbers, positions) -> Optional[np.ndarray]:
        if self.cache is None or self.cache.kind == "full":
            return None
        key = cache_key(mol_id)
        if self.write:
            return self.cache.get(key, atomic_numbers, positions)
        import os
        path = self.cache._path(key)
        if os.path.exists(path):
            return np.load(path)
        from qhnetv2.baseline import base_hamiltonian
        return base_hamiltonian(atomic_numbers, positions, self.cache.kind, self.cache.settings)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.dataset[index]
        base = self.base(item["id"], item["atomic_numbers"].numpy(),
                         item["positions"].double().numpy())
        if base is not None:
            item["base_hamiltonian"] = torch.as_tensor(base, dtype=torch.float64)
        if self.eigen is not None:
            from .collate import n_occupied

            e, c = self.eigen.get(cache_key(item["id"]), item["hamiltonian"].double().numpy(),
                                  item["overlap"].double().numpy(), n_occupied(item), write=self.write)
            item["label_orbital_energies"] = torch.as_tensor(e, dtype=torch.float64)
            item["label_eigenvectors"] = torch.as_tensor(c, dtype=torch.float64)
        return item


def atomic_numbers_of(dataset) -> List[np.ndarray]:
    """int64 ``[n_atoms]`` of every molecule (cheap: reads only that field)."""
    reader = dataset.reader
    return [np.asarray(reader.read_field(i, "atomic_numbers"), dtype=np.int64).reshape(-1) for i in reader.ids]


def molecule_sizes(zs: List[np.ndarray], layout) -> np.ndarray:
    """int64 ``[n]``: AO count of each molecule given its atomic numbers."""
    n_ao = {}
    out = np.empty(len(zs), dtype=np.int64)
    for i, z in enumerate(zs):
        out[i] = sum(n_ao.setdefault(int(a), layout.n_ao(int(a))) for a in z)
    return out
