"""Training data: a ``HamiltonianDataset`` plus the cached base Hamiltonian of residual targets.

``ResidualDataset(dataset, cache)`` adds ``base_hamiltonian [n_ao, n_ao]``
(float64, PySCF order) to every item, read from (or computed into) a
``qhnetv2.baseline.BaseCache``; :func:`qhnetv2.training.collate` then uses
``hamiltonian - base_hamiltonian`` as the target.  With an ``eigen`` cache
(:class:`qhnetv2.training.eigenbasis_loss.EigenCache`, for the eigenbasis loss)
it also adds the label's generalised eigenpairs ``label_orbital_energies [k]``
and ``label_eigenvectors [n_ao, k]`` (float64), computed once per molecule.

Startup data (no matrices): :func:`split_summaries` gives each molecule's atomic
numbers, positions and AO count from the dataset's index (``qhnetv2.data.store``);
:func:`seeded_subset` picks the validation and atomic-reference molecules.
"""
from __future__ import annotations

import json
import zlib
from typing import Any, Dict, List, Optional, Sequence

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

            mol_id = item["id"]
            # the overlap is read only when the label's eigenvectors are not cached yet
            # (training items leave it out: qhnetv2.data.torch_dataset.TRAINING_FIELDS)
            overlap = item["overlap"].double().numpy() if "overlap" in item else \
                (lambda: np.asarray(self.dataset.reader.read_field(mol_id, "overlap"), dtype=np.float64))
            e, c = self.eigen.get(cache_key(mol_id), item["hamiltonian"].double().numpy(),
                                  overlap, n_occupied(item), write=self.write)
            item["label_orbital_energies"] = torch.as_tensor(e, dtype=torch.float64)
            item["label_eigenvectors"] = torch.as_tensor(c, dtype=torch.float64)
        return item


def split_summaries(dataset, write_cache: bool = True):
    """``(atomic_numbers int64 [n_atoms], positions float64 [n_atoms, 3], n_ao)`` of every molecule
    of ``dataset`` (a ``HamiltonianDataset``), in its order, from the dataset's index: no record
    is read when the index covers them (``qhnetv2.data.store.dataset_index``)."""
    return dataset.reader.summaries(write_cache=write_cache)


def atomic_numbers_of(dataset) -> List[np.ndarray]:
    """int64 ``[n_atoms]`` of every molecule (from the dataset's index, see :func:`split_summaries`)."""
    return [z for z, _, _ in split_summaries(dataset)]


def seeded_subset(ids: Sequence[str], limit: Optional[int], seed: int, purpose: str) -> List[int]:
    """Positions (ascending) in ``ids`` of a seeded random subset of ``limit`` molecules (all of them
    when ``limit`` is None or not smaller than ``len(ids)``).

    Replaces "the first ``limit`` sorted ids": if ids follow a catalogue order (QM9 numbers
    molecules by size), the first ones are the smallest molecules, which biases the validation
    error and the atomic-reference fit.  The choice depends only on the set of ids, ``seed`` and
    ``purpose`` (a label such as ``"valid"`` that keeps different subsets independent), never on
    the order of ``ids``, the rank or the process: every rank, and a resumed run, picks the same.
    """
    n = len(ids)
    if limit is None or int(limit) >= n:
        return list(range(n))
    if int(limit) < 0:
        raise ValueError(f"subset size must be >= 0 or None, got {limit!r}")
    by_id = sorted(range(n), key=lambda k: ids[k])
    rng = np.random.default_rng([int(seed), zlib.crc32(purpose.encode("utf-8"))])
    chosen = rng.choice(n, size=int(limit), replace=False)
    return sorted(by_id[int(k)] for k in chosen)


def molecule_sizes(zs: List[np.ndarray], layout) -> np.ndarray:
    """int64 ``[n]``: AO count of each molecule given its atomic numbers."""
    n_ao = {}
    out = np.empty(len(zs), dtype=np.int64)
    for i, z in enumerate(zs):
        out[i] = sum(n_ao.setdefault(int(a), layout.n_ao(int(a))) for a in z)
    return out
