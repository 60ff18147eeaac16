"""Reproducible train / valid / test splits of a dataset (``qhnetv2 data split``).

Methods:

* ``random``: ids sorted, then permuted by ``numpy.random.default_rng(seed)``
  and cut by ``fractions``.  Same dataset + seed -> same split, on any machine.
* ``size``: out-of-distribution by molecule size, as QH9-stable-ood (train on
  small molecules, test on large; QH9 reports 3-20 / 21-22 / 23-29 atoms).
  ``size_bounds=(A, B)`` puts n_atoms <= A in train, A < n <= B in valid,
  n > B in test; without it A and B are the smallest atom counts at which the
  cumulative fraction reaches ``fractions``.  A size never spans two splits.

A split file is JSON ``{"train": [ids], "valid": [ids], "test": [ids],
"method": ..., ...}``, written atomically.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_file

SPLITS = ("train", "valid", "test")


def _check_fractions(fractions: Sequence[float]) -> Tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1 "
                         f"(train valid test), got {list(fractions)}")
    return f


def random_split(ids: Sequence[str], seed: int, fractions) -> Dict[str, List[str]]:
    f = _check_fractions(fractions)
    ids = sorted(ids)
    perm = np.random.default_rng(int(seed)).permutation(len(ids))
    n_train = int(round(f[0] * len(ids)))
    n_valid = int(round(f[1] * len(ids)))
    n_valid = min(n_valid, len(ids) - n_train)
    chosen = [ids[i] for i in perm]
    return {"train": sorted(chosen[:n_train]),
            "valid": sorted(chosen[n_train:n_train + n_valid]),
            "test": sorted(chosen[n_train + n_valid:])}


def size_split(n_atoms: Dict[str, int], fractions=(0.8, 0.1, 0.1),
               size_bounds: Optional[Tuple[int, int]] = None) -> Dict[str, object]:
    if size_bounds is None:
        f = _check_fractions(fractions)
        sizes = np.sort(np.fromiter(n_atoms.values(), dtype=np.int64))
        if sizes.size == 0:
            raise ValueError("dataset is empty; nothing to split")
        cum = np.arange(1, sizes.size + 1) / sizes.size
        a = int(sizes[np.searchsorted(cum, f[0] - 1e-12)]) if f[0] > 0 else int(sizes[0]) - 1
        b = int(sizes[min(np.searchsorted(cum, f[0] + f[1] - 1e-12), sizes.size - 1)])
        b = max(a, b)
    else:
        a, b = (int(x) for x in size_bounds)
        if a > b:
            raise ValueError(f"size_bounds must satisfy A <= B, got {size_bounds}")
    out = {"train": [], "valid": [], "test": []}
    for mol_id in sorted(n_atoms):
        n = n_atoms[mol_id]
        out["train" if n <= a else "valid" if n <= b else "test"].append(mol_id)
    out["size_bounds"] = [a, b]
    return out


def make_split(dataset: str, method: str = "random", seed: int = 0,
               fractions=(0.8, 0.1, 0.1), size_bounds=None,
               out: Optional[str] = None) -> Dict[str, object]:
    """Split the successfully labelled molecules of ``dataset``; write ``out`` if given."""
    from .store import HamiltonianReader

    reader = HamiltonianReader(dataset)
    if method == "random":
        split: Dict[str, object] = random_split(reader.ids, seed, fractions)
        split["seed"] = int(seed)
    elif method == "size":
        n_atoms = {i: int(reader.read_field(i, "atomic_numbers").shape[0]) for i in reader.ids}
        split = size_split(n_atoms, fractions, size_bounds)
    else:
        raise ValueError(f"method must be 'random' or 'size', got {method!r}")
    split["method"] = method
    split["fractions"] = list(_check_fractions(fractions)) if size_bounds is None else None
    split["dataset"] = os.path.abspath(dataset)
    if out is not None:
        write_json_atomic(out, split)
    return split


def load_split(path: str, split: str) -> List[str]:
    """The ids of one split (``train``, ``valid`` or ``test``) from a split file."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return list(data[split])


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to a temporary file in the same directory, then rename."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=1)
