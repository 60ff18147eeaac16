"""The QH9 benchmark metrics for predicted Hamiltonians.

Definitions (QH9 benchmark, Yu et al. 2023), per molecule, all in float64:

* ``hamiltonian_mae``: mean |H_pred - H_true| over all n_ao^2 entries.
* ``hamiltonian_diagonal_mae``: the same over the entries of the diagonal atom
  blocks H[i, i]; ``hamiltonian_off_diagonal_mae``: over the off-diagonal
  blocks H[i, j], i != j (both triangles).  Needs the per-atom AO ranges.
* ``orbital_energy_mae``: mean |eps_pred - eps_true| over the ``n_occ`` lowest
  (occupied) orbitals of the generalized eigenproblem H C = S C eps, solved by
  orthogonalisation X = U diag(lambda)^-1/2 with S = U diag(lambda) U^T and
  lambda floored at 1e-8 (as QH9 does).
* ``orbital_coefficient_similarity``: mean over occupied orbitals of
  |cos(C_pred[:, k], C_true[:, k])| (cosine along the AO axis).

Units: Hartree for MAEs (:func:`to_micro_hartree` gives the micro-Hartree
numbers the papers print; similarity is unitless, papers print it x100 as %).
Dataset-level numbers are means over molecules of the per-molecule values.
Note: entry-wise MAEs are invariant under rotations whose AO representation is a
signed permutation (e.g. 90 degree turns) but not under arbitrary rotations;
the orbital metrics are invariant under any rotation.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np

EIGVAL_FLOOR = 1e-8

ArrayLike = Union[np.ndarray, Sequence[np.ndarray]]


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_list(x, name: str) -> List[np.ndarray]:
    if isinstance(x, (list, tuple)):
        mats = [_to_numpy(m) for m in x]
    else:
        arr = _to_numpy(x)
        if arr.ndim == 2:
            mats = [arr]
        elif arr.ndim == 3:
            mats = list(arr)
        else:
            raise ValueError(f"{name}: expected [n_ao, n_ao] or [batch, n_ao, n_ao], "
                             f"got shape {arr.shape}")
    for i, m in enumerate(mats):
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"{name}[{i}]: expected a square matrix, got shape {m.shape}")
    return mats


def orbitals(H: np.ndarray, S: np.ndarray):
    """Solve H C = S C eps (QH9's way), batched.

    Args: H, S float64 [..., n, n].
    Returns: eps [..., n] ascending, C [..., n, n] (columns are orbitals).
    """
    lam, U = np.linalg.eigh(S)
    lam = np.where(lam > EIGVAL_FLOOR, lam, EIGVAL_FLOOR)
    X = U / np.sqrt(lam)[..., None, :]
    F = np.swapaxes(X, -1, -2) @ H @ X
    eps, V = np.linalg.eigh(F)
    return eps, X @ V


def _block_mask(slices: np.ndarray, n: int) -> np.ndarray:
    """Boolean [n, n], True on the diagonal atom blocks."""
    owner = np.full(n, -1, dtype=np.int64)
    for atom, (a, b) in enumerate(np.asarray(slices, dtype=np.int64)):
        owner[a:b] = atom
    if (owner < 0).any():
        raise ValueError(f"ao_slices do not cover all {n} AOs")
    return owner[:, None] == owner[None, :]


def hamiltonian_metrics(H_pred: ArrayLike, H_true: ArrayLike, S: ArrayLike,
                        n_occ: Union[int, Sequence[int]],
                        ao_slices: Optional[Union[np.ndarray, Sequence[np.ndarray]]] = None
                        ) -> Dict[str, object]:
    """QH9 metrics of predicted Hamiltonians.

    Args:
        H_pred, H_true, S: [n_ao, n_ao], [batch, n_ao, n_ao], or lists of
            square matrices of varying size (NumPy or torch; used as float64).
        n_occ: number of doubly occupied orbitals, int or one per molecule.
        ao_slices: per-atom ``(start, stop)`` AO ranges, int [n_atoms, 2]
            (see :func:`qhnetv2.data.ao_slices`), one per molecule or one
            shared.  Without it the block MAEs are NaN.

    Returns:
        dict with the five metric means (floats, Hartree / unitless), and
        ``"per_molecule"``: the same keys as float64 arrays [batch].
    """
    hp, ht, ss = _as_list(H_pred, "H_pred"), _as_list(H_true, "H_true"), _as_list(S, "S")
    b = len(ht)
    if len(hp) != b or len(ss) != b:
        raise ValueError(f"H_pred, H_true and S must hold the same number of molecules, "
                         f"got {len(hp)}, {b}, {len(ss)}")
    for i in range(b):
        if not hp[i].shape == ht[i].shape == ss[i].shape:
            raise ValueError(f"molecule {i}: H_pred {hp[i].shape}, H_true {ht[i].shape} "
                             f"and S {ss[i].shape} differ in shape")
    occ = np.broadcast_to(np.asarray(n_occ, dtype=np.int64), (b,))
    for i in range(b):
        if not 0 < occ[i] <= ht[i].shape[0]:
            raise ValueError(f"n_occ: molecule {i} has {ht[i].shape[0]} orbitals, "
                             f"n_occ={occ[i]} is out of range")
    if ao_slices is None:
        slices = [None] * b
    elif isinstance(ao_slices, (list, tuple)) and len(ao_slices) and np.ndim(ao_slices[0]) == 2:
        slices = list(ao_slices)
        if len(slices) != b:
            raise ValueError(f"ao_slices: {len(slices)} entries for {b} molecules")
    else:
        slices = [np.asarray(ao_slices)] * b

    keys = ("hamiltonian_mae", "hamiltonian_diagonal_mae", "hamiltonian_off_diagonal_mae",
            "orbital_energy_mae", "orbital_coefficient_similarity")
    per = {k: np.full(b, np.nan) for k in keys}
    for i in range(b):
        err = np.abs(hp[i] - ht[i])
        per["hamiltonian_mae"][i] = err.mean()
        if slices[i] is not None:
            mask = _block_mask(slices[i], err.shape[0])
            per["hamiltonian_diagonal_mae"][i] = err[mask].mean()
            if (~mask).any():  # single atoms have no off-diagonal blocks
                per["hamiltonian_off_diagonal_mae"][i] = err[~mask].mean()

    # Orbitals: batch molecules of equal size into one stacked eigh call.
    by_size: Dict[int, List[int]] = {}
    for i in range(b):
        by_size.setdefault(ht[i].shape[0], []).append(i)
    for idx in by_size.values():
        eps_p, c_p = orbitals(np.stack([hp[i] for i in idx]), np.stack([ss[i] for i in idx]))
        eps_t, c_t = orbitals(np.stack([ht[i] for i in idx]), np.stack([ss[i] for i in idx]))
        for j, i in enumerate(idx):
            k = occ[i]
            per["orbital_energy_mae"][i] = np.abs(eps_p[j, :k] - eps_t[j, :k]).mean()
            cp, ct = c_p[j, :, :k], c_t[j, :, :k]
            cos = (cp * ct).sum(0) / (np.linalg.norm(cp, axis=0) * np.linalg.norm(ct, axis=0))
            per["orbital_coefficient_similarity"][i] = np.abs(cos).mean()

    out: Dict[str, object] = {k: float(np.mean(v)) for k, v in per.items()}
    out["per_molecule"] = per
    out["n_molecules"] = b
    return out


def to_micro_hartree(metrics: Dict[str, object]) -> Dict[str, float]:
    """Papers' units: MAEs in micro-Hartree, similarity in percent."""
    out = {}
    for key, value in metrics.items():
        if key.endswith("_mae"):
            out[key + "_uEh"] = float(value) * 1e6
        elif key == "orbital_coefficient_similarity":
            out[key + "_percent"] = float(value) * 100.0
    return out
