"""Reproducible train / valid / test splits of a dataset (``qhnetv2 data split``).

Methods:

* ``random``: ids sorted, then permuted by ``numpy.random.default_rng(seed)``
  and cut by ``fractions``.  Same dataset + seed -> same split, on any machine.
* ``size``: out-of-distribution by molecule size, as QH9-stable-ood (train on
  small molecules, test on large; QH9 reports 3-20 / 21-22 / 23-29 atoms).
  ``size_bounds=(A, B)`` puts n_atoms <= A in train, A < n <= B in valid,
  n > B in test; without it A and B are the smallest atom counts at which the
  cumulative fraction reaches ``fractions``.  A size never spans two splits.

* ``qh9``: QH9's published splits (``stable-id``, ``stable-ood``,
  ``dynamic-geo``, ``dynamic-mol``), reproduced index for index from ids made
  by ``qhnetv2 data import`` (see :func:`qh9_split` and docs/data.md).

A split file is JSON ``{"train": [ids], "valid": [ids], "test": [ids],
"method": ..., ...}``, written atomically.
"""
from __future__ import annotations

import json
import os
import random
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


# --------------------------------------------------------------------------- QH9's splits
# QH9 (Yu et al. 2023) defines its benchmark splits by positions ("indices")
# in its source files and fixed seeds; the generators below re-derive them
# from the same seeds with the same random-number generators, so that the
# index sets are identical element for element.  Which generator matters:
#   stable-id   numpy's legacy ``RandomState(43).permutation``;
#   dynamic-geo numpy's legacy ``RandomState(seed)`` with one seed per molecule
#               (the position of that molecule's last geometry);
#   dynamic-mol Python's ``random`` module (Mersenne twister), seed 43, shuffle.
# Counts are ``int(n * ratio)`` (truncation) with the remainder going to test,
# exactly as in QH9; float rounding of ``n * ratio`` is therefore part of the
# definition and is reproduced by using the same expression.

QH9_KINDS = ("stable-id", "stable-ood", "dynamic-geo", "dynamic-mol")
QH9_SEED = 43
QH9_RATIOS = (0.8, 0.1, 0.1)
QH9_OOD_BOUNDS = (20, 22)            # train <= 20 atoms, valid 21-22, test >= 23
QH9_GEOMETRIES_PER_MOLECULE = 100    # QH9-dynamic: 100 MD frames per molecule
QH9_GEOMETRY_COUNTS = (80, 10)       # per molecule: 80 train, 10 valid, rest test

IndexSplit = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _take_counts(n: int, ratios: Sequence[float]) -> Tuple[int, int]:
    # QH9 truncates n * ratio; keep this exact expression (see note above)
    return int(n * ratios[0]), int(n * ratios[1])


def qh9_stable_id_indices(n: int, seed: int = QH9_SEED,
                          ratios: Sequence[float] = QH9_RATIOS) -> IndexSplit:
    """QH9-stable-id: positions ``0..n-1`` shuffled once, cut 80/10/10.

    Args:
        n: number of molecules of the QH9-stable file (positions = QH9 ids).
    Returns:
        ``(train, valid, test)``, int64 arrays of positions, in QH9's order.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_train, n_valid = _take_counts(n, ratios)
    order = np.random.RandomState(seed=int(seed)).permutation(int(n)).astype(np.int64)
    return order[:n_train], order[n_train:n_train + n_valid], order[n_train + n_valid:]


def qh9_stable_ood_indices(n_atoms: Sequence[int],
                           bounds: Tuple[int, int] = QH9_OOD_BOUNDS) -> IndexSplit:
    """QH9-stable-ood: by atom count, ``n <= A`` train, ``A < n <= B`` valid, rest test.

    Args:
        n_atoms: int [n], atom count of the molecule at each position.
    Returns:
        ``(train, valid, test)`` int64 positions in increasing order.
    """
    a = np.asarray(n_atoms, dtype=np.int64).reshape(-1)
    lo, hi = (int(b) for b in bounds)
    if lo > hi:
        raise ValueError(f"bounds must satisfy A <= B, got {bounds}")
    return (np.flatnonzero(a <= lo), np.flatnonzero((a > lo) & (a <= hi)),
            np.flatnonzero(a > hi))


def qh9_dynamic_geo_indices(n_rows: int,
                            geometries_per_molecule: int = QH9_GEOMETRIES_PER_MOLECULE,
                            counts: Tuple[int, int] = QH9_GEOMETRY_COUNTS) -> IndexSplit:
    """QH9-dynamic-geo: every molecule's geometries split 80/10/10 on their own.

    The rows are taken as consecutive blocks of ``geometries_per_molecule``
    (one molecule each).  Block ``b`` covers rows ``b*G .. b*G+G-1``; its
    geometries are shuffled by ``RandomState(seed=b*G+G-1)`` (the row of its
    last geometry), the first ``counts[0]`` go to train, the next
    ``counts[1]`` to valid, the rest to test.  Rows after the last complete
    block belong to no split (as in QH9).

    Returns:
        ``(train, valid, test)`` int64 row positions, in QH9's order.
    """
    g = int(geometries_per_molecule)
    n_train, n_valid = (int(c) for c in counts)
    if g <= 0 or n_train < 0 or n_valid < 0 or n_train + n_valid > g:
        raise ValueError(f"need geometries_per_molecule > 0 and counts {counts} summing "
                         f"to at most {g}")
    parts: List[List[np.ndarray]] = [[], [], []]
    for start in range(0, (int(n_rows) // g) * g, g):
        local = np.random.RandomState(seed=start + g - 1).permutation(g).astype(np.int64)
        rows = start + local
        parts[0].append(rows[:n_train])
        parts[1].append(rows[n_train:n_train + n_valid])
        parts[2].append(rows[n_train + n_valid:])
    empty = np.zeros(0, dtype=np.int64)
    return tuple(np.concatenate(p) if p else empty for p in parts)  # type: ignore[return-value]


def qh9_dynamic_mol_indices(n_rows: int,
                            geometries_per_molecule: int = QH9_GEOMETRIES_PER_MOLECULE,
                            seed: int = QH9_SEED, ratios: Sequence[float] = QH9_RATIOS,
                            n_molecules: Optional[int] = None) -> IndexSplit:
    """QH9-dynamic-mol: whole molecules (all their geometries) split 80/10/10.

    Row ``r`` belongs to molecule ``r // G``.  The molecule numbers
    ``0..n_molecules-1`` are shuffled with Python's ``random`` generator seeded
    with ``seed`` (``random.Random(43).shuffle``, the same stream as
    ``random.seed(43); random.shuffle``); the first ``int(M*0.8)`` molecules
    are train, the next ``int(M*0.1)`` valid, the rest test.

    Returns:
        ``(train, valid, test)`` int64 row positions in increasing order.
    """
    g = int(geometries_per_molecule)
    if g <= 0:
        raise ValueError(f"geometries_per_molecule must be > 0, got {g}")
    m = int(n_rows) // g if n_molecules is None else int(n_molecules)
    molecules = list(range(m))
    random.Random(int(seed)).shuffle(molecules)
    n_train, n_valid = _take_counts(m, ratios)
    molecule_of_row = np.arange(m * g, dtype=np.int64) // g
    groups = (molecules[:n_train], molecules[n_train:n_train + n_valid],
              molecules[n_train + n_valid:])
    return tuple(np.flatnonzero(np.isin(molecule_of_row, np.asarray(grp, dtype=np.int64)))
                 .astype(np.int64) for grp in groups)  # type: ignore[return-value]


def _parse_int_fields(mol_id: str, n_fields: int, kind: str) -> Tuple[str, Tuple[int, ...]]:
    parts = mol_id.rsplit(":", n_fields)
    try:
        if len(parts) != n_fields + 1:
            raise ValueError
        return parts[0], tuple(int(p) for p in parts[1:])
    except ValueError:
        form = ("<prefix>:<QH9 id>" if n_fields == 1
                else "<prefix>:<row>:<QH9 id>:<geo_id>")
        raise ValueError(f"qh9 {kind}: id {mol_id!r} is not of the form {form} made by "
                         f"'qhnetv2 data import qh9-...'") from None


def qh9_split(ids: Sequence[str], kind: str, n_atoms: Optional[Dict[str, int]] = None,
              geometries_per_molecule: int = QH9_GEOMETRIES_PER_MOLECULE,
              geometry_counts: Tuple[int, int] = QH9_GEOMETRY_COUNTS,
              ood_bounds: Tuple[int, int] = QH9_OOD_BOUNDS) -> Dict[str, object]:
    """QH9's published split of a dataset imported from QH9's files.

    Args:
        ids: molecule ids from ``qhnetv2 data import``: ``<prefix>:<QH9 id>``
            for QH9-stable, ``<prefix>:<row>:<QH9 id>:<geo_id>`` for
            QH9-dynamic (``row`` = position in QH9's file = its LMDB key).
        kind: one of :data:`QH9_KINDS`.
        n_atoms: ``{id: atom count}``, needed for ``stable-ood``.
    Returns:
        ``{"train", "valid", "test"}`` sorted id lists plus bookkeeping.

    ``stable-id`` and the dynamic splits are defined on QH9's positions, so
    they need the complete file: the QH9 ids (stable) or rows (dynamic) must
    be exactly ``0..n-1``; a partial import is refused rather than silently
    split differently from the paper.  For the dynamic splits every block of
    ``geometries_per_molecule`` rows must hold one molecule (one QH9 id),
    which is what makes ``dynamic-mol`` keep all conformers of a molecule in
    one split.
    """
    if kind not in QH9_KINDS:
        raise ValueError(f"qh9 split kind must be one of {QH9_KINDS}, got {kind!r}")
    ids = list(ids)
    if not ids:
        raise ValueError("qh9 split: the dataset is empty")
    info: Dict[str, object] = {"qh9": kind}
    n_fields = 1 if kind.startswith("stable") else 3
    prefixes = sorted({_parse_int_fields(i, n_fields, kind)[0] for i in ids})
    if len(prefixes) != 1:
        raise ValueError(f"qh9 {kind}: the ids have several prefixes {prefixes[:4]}; QH9's "
                         f"split is defined on one QH9 file (one import)")
    if kind.startswith("stable"):
        key_to_id: Dict[int, str] = {}
        for mol_id in ids:
            key = _parse_int_fields(mol_id, 1, kind)[1][0]
            if key in key_to_id:
                raise ValueError(f"qh9 {kind}: QH9 id {key} appears twice "
                                 f"({key_to_id[key]!r}, {mol_id!r})")
            key_to_id[key] = mol_id
        keys = sorted(key_to_id)
        if kind == "stable-id":
            if keys != list(range(len(keys))):
                missing = sorted(set(range(len(keys))) - set(keys))[:5]
                raise ValueError(f"qh9 stable-id: the QH9 ids must be exactly 0..{len(keys) - 1} "
                                 f"(QH9's split indexes molecules by id); missing e.g. "
                                 f"{missing}: import the complete QH9Stable file")
            parts = qh9_stable_id_indices(len(keys))
            info.update(seed=QH9_SEED, ratios=list(QH9_RATIOS))
        else:
            if n_atoms is None:
                raise ValueError("qh9 stable-ood needs n_atoms {id: atom count}")
            sizes = [int(n_atoms[key_to_id[k]]) for k in keys]
            parts = tuple(np.asarray(keys, dtype=np.int64)[p]
                          for p in qh9_stable_ood_indices(sizes, ood_bounds))
            info.update(size_bounds=[int(b) for b in ood_bounds])
        out = {name: sorted(key_to_id[int(k)] for k in p) for name, p in zip(SPLITS, parts)}
    else:
        g = int(geometries_per_molecule)
        by_row: Dict[int, Tuple[str, int]] = {}
        for mol_id in ids:
            _, (row, qh9_id, _geo) = _parse_int_fields(mol_id, 3, kind)
            if row in by_row:
                raise ValueError(f"qh9 {kind}: row {row} appears twice "
                                 f"({by_row[row][0]!r}, {mol_id!r})")
            by_row[row] = (mol_id, qh9_id)
        n_rows = len(by_row)
        if sorted(by_row) != list(range(n_rows)):
            raise ValueError(f"qh9 {kind}: the rows must be exactly 0..{n_rows - 1} (QH9's "
                             f"split is defined on file positions): import the complete "
                             f"QH9Dynamic file")
        for start in range(0, (n_rows // g) * g, g):
            molecules = {by_row[r][1] for r in range(start, start + g)}
            if len(molecules) != 1:
                raise ValueError(f"qh9 {kind}: rows {start}..{start + g - 1} hold several "
                                 f"molecules (QH9 ids {sorted(molecules)[:4]}); QH9's split "
                                 f"needs {g} consecutive geometries per molecule "
                                 f"(--geometries-per-molecule)")
        if kind == "dynamic-geo":
            parts = qh9_dynamic_geo_indices(n_rows, g, geometry_counts)
            info.update(geometries_per_molecule=g,
                        geometry_counts=[int(c) for c in geometry_counts])
        else:
            parts = qh9_dynamic_mol_indices(n_rows, g)
            info.update(seed=QH9_SEED, ratios=list(QH9_RATIOS), geometries_per_molecule=g)
        out = {name: sorted(by_row[int(r)][0] for r in p) for name, p in zip(SPLITS, parts)}
        info["n_unassigned"] = n_rows - sum(len(v) for v in out.values())
    out.update(info)
    return out


def make_split(dataset: str, method: str = "random", seed: int = 0,
               fractions=(0.8, 0.1, 0.1), size_bounds=None,
               out: Optional[str] = None, qh9: Optional[str] = None,
               geometries_per_molecule: int = QH9_GEOMETRIES_PER_MOLECULE,
               geometry_counts: Tuple[int, int] = QH9_GEOMETRY_COUNTS) -> Dict[str, object]:
    """Split the successfully labelled molecules of ``dataset``; write ``out`` if given.

    ``qh9``: one of :data:`QH9_KINDS` -> QH9's published split (``method``,
    ``seed``, ``fractions`` and ``size_bounds`` are then not used; see
    :func:`qh9_split`).  ``geometries_per_molecule`` / ``geometry_counts``
    only change the dynamic splits (QH9: 100 and (80, 10)).
    """
    from .store import HamiltonianReader

    reader = HamiltonianReader(dataset)
    if qh9 is not None:
        n_atoms = None
        if qh9 == "stable-ood":
            n_atoms = {i: int(reader.read_field(i, "atomic_numbers").shape[0])
                       for i in reader.ids}
        split = qh9_split(reader.ids, qh9, n_atoms=n_atoms,
                          geometries_per_molecule=geometries_per_molecule,
                          geometry_counts=geometry_counts)
        split["method"] = f"qh9-{qh9}"
        split["dataset"] = os.path.abspath(dataset)
        if out is not None:
            write_json_atomic(out, split)
        return split
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
