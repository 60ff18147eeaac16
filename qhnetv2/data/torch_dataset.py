"""``torch.utils.data.Dataset`` over an LMDB Hamiltonian dataset."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .split import load_split
from .store import HamiltonianReader


#: the record fields a training step needs (``qhnetv2.training``): no overlap, no labels beyond H
TRAINING_FIELDS = ("atomic_numbers", "positions", "hamiltonian", "settings")


class HamiltonianDataset(torch.utils.data.Dataset):
    """Random-access dataset of labelled molecules.

    Args:
        path: dataset directory.
        ids: explicit molecule ids, or
        split_file + split: ids of ``split`` (train/valid/test) in a split file.
        dtype: floating dtype of the returned tensors (float64 by default: the
            labels are float64 and the metrics are computed in float64).
        fields: decode only these record fields (None: all).  Training uses
            ``TRAINING_FIELDS``, which leaves out the overlap matrix and the other
            labels it does not use; their pages are then never read.

    ``dataset[i]`` is a dict: ``atomic_numbers`` long [n_atoms], ``positions``
    [n_atoms, 3] (Angstrom), ``hamiltonian`` and ``overlap`` [n_ao, n_ao]
    (PySCF AO order), ``mo_energy`` [n_ao], ``energy`` [], ``n_cycles`` long
    [], ``converged`` bool [], ``id`` str, plus optional extras (``forces``).
    Molecules differ in size, so batch with ``collate_fn=list`` (or the
    model's own collate) rather than the default collate.
    DataLoader workers are fine: each opens its own LMDB handle.
    """

    def __init__(self, path: str, ids: Optional[List[str]] = None,
                 split_file: Optional[str] = None, split: Optional[str] = None,
                 dtype: torch.dtype = torch.float64, fields: Optional[Sequence[str]] = None):
        if split_file is not None or split is not None:
            if ids is not None:
                raise ValueError("give either ids or split_file+split, not both")
            if split_file is None or split is None:
                raise ValueError("split_file and split must be given together")
            ids = load_split(split_file, split)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.reader = HamiltonianReader(path, ids=ids)
        self.dtype = dtype
        if fields is not None:
            from .serialization import REQUIRED_FIELDS

            fields = tuple(fields)
            unknown = [f for f in fields if not isinstance(f, str) or not f]
            if unknown:
                raise ValueError(f"fields: expected field names such as {REQUIRED_FIELDS}, got {unknown}")
        self.fields = fields

    @property
    def ids(self) -> List[str]:
        return self.reader.ids

    @property
    def meta(self) -> Dict:
        return self.reader.meta

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Dict[str, object]:
        rec = self.reader.read(index, self.fields)
        out: Dict[str, object] = {"id": rec.pop("id")}
        if "settings" in rec:
            out["settings"] = rec.pop("settings")
        for key, value in rec.items():
            if key == "atomic_numbers":
                out[key] = torch.as_tensor(np.asarray(value), dtype=torch.long)
            elif key == "n_cycles":
                out[key] = torch.tensor(value, dtype=torch.long)
            elif key == "converged":
                out[key] = torch.tensor(bool(value))
            else:
                out[key] = torch.as_tensor(np.asarray(value, dtype=np.float64)).to(self.dtype)
        return out
