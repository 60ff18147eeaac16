"""Table-driven conversion between other codes' AO orders and PySCF's.

A *convention* says, for every angular momentum l, how one shell of ``2l+1``
real spherical functions is stored in a foreign file relative to PySCF:
component ``k`` of the file's shell is ``sign[k] * pyscf_component[perm[k]]``.
Shell and atom order are the same as PySCF's in all conventions supported here
(both QH9 and SchNOrb/ORCA def2-SVP list shells like PySCF).

PySCF's own order within a shell: ``(px, py, pz)`` for l = 1, ``m = -l..l``
for l >= 2 (index ``m + l``).

Conventions
-----------
``pyscf``  identity.
``qh9``    the order QH9's code uses internally (its ``matrix_transform`` with
           ``convention='pyscf_def2svp'``): ``m = -l..l`` for every l, so p is
           ``(py, pz, px)``; no sign changes.
``orca``   ORCA (used by SchNOrb's MD17 files): ``m = 0, +1, -1, +2, -2, ...``
           for every l, so p is ``(pz, px, py)``; ORCA's f functions with
           ``|m| = 3`` and g functions with ``|m| >= 3`` have the opposite sign.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

MAX_L = 4


def _orca_shell(l: int) -> Tuple[List[int], List[int]]:
    if l == 0:
        return [0], [1]
    if l == 1:
        return [2, 0, 1], [1, 1, 1]  # file (pz, px, py) -> PySCF (px, py, pz)
    ms = [0]
    for m in range(1, l + 1):
        ms += [m, -m]
    perm = [m + l for m in ms]
    # ORCA's real solid harmonics differ in sign for |m| >= 3 (f: +-3; g: +-3, +-4)
    signs = [-1 if abs(m) >= 3 else 1 for m in ms]
    return perm, signs


def _qh9_shell(l: int) -> Tuple[List[int], List[int]]:
    if l == 1:
        return [1, 2, 0], [1, 1, 1]  # file (py, pz, px) -> PySCF (px, py, pz)
    return list(range(2 * l + 1)), [1] * (2 * l + 1)


def _identity_shell(l: int) -> Tuple[List[int], List[int]]:
    return list(range(2 * l + 1)), [1] * (2 * l + 1)


CONVENTIONS: Dict[str, Dict[int, Tuple[List[int], List[int]]]] = {
    "pyscf": {l: _identity_shell(l) for l in range(MAX_L + 1)},
    "qh9": {l: _qh9_shell(l) for l in range(MAX_L + 1)},
    "orca": {l: _orca_shell(l) for l in range(MAX_L + 1)},
}


def check_convention(name: str) -> str:
    if name not in CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {name!r}")
    return name


def ao_permutation(convention: str, shell_ls: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Global index/sign arrays for a molecule.

    Args:
        convention: key of ``CONVENTIONS``.
        shell_ls: angular momentum of every shell of the molecule, in PySCF
            order (one entry per radial function).

    Returns:
        ``(idx, sign)``, int64 [n_ao] each: file AO ``k`` is
        ``sign[k] * pyscf AO idx[k]``.
    """
    table = CONVENTIONS[check_convention(convention)]
    idx: List[int] = []
    sign: List[int] = []
    offset = 0
    for l in shell_ls:
        if l not in table:
            raise ValueError(f"convention {convention!r}: angular momentum l={l} "
                             f"is not supported (max {MAX_L})")
        perm, sg = table[l]
        idx.extend(offset + p for p in perm)
        sign.extend(sg)
        offset += 2 * l + 1
    return np.asarray(idx, dtype=np.int64), np.asarray(sign, dtype=np.int64)


def molecule_shell_ls(basis_name: str, atomic_numbers: Sequence[int]) -> List[int]:
    """Angular momentum of every shell of a molecule, PySCF order (needs PySCF)."""
    from .basis import element_shells
    return [l for z in np.asarray(atomic_numbers).reshape(-1)
            for l, _ in element_shells(basis_name, int(z))]


def _check_square(matrix: np.ndarray, n: int, what: str) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim < 2 or matrix.shape[-1] != n or matrix.shape[-2] != n:
        raise ValueError(f"{what}: expected shape [..., {n}, {n}] for this molecule and "
                         f"basis, got {tuple(matrix.shape)}")
    return matrix


def to_pyscf(matrix: np.ndarray, convention: str, basis_name: str,
             atomic_numbers: Sequence[int]) -> np.ndarray:
    """Convert ``matrix`` [..., n_ao, n_ao] from ``convention`` to PySCF order."""
    idx, sign = ao_permutation(convention, molecule_shell_ls(basis_name, atomic_numbers))
    m = _check_square(matrix, len(idx), "matrix")
    inv = np.argsort(idx)
    signed = m * sign[:, None] * sign[None, :]
    return np.ascontiguousarray(signed[..., inv, :][..., :, inv])


def from_pyscf(matrix: np.ndarray, convention: str, basis_name: str,
               atomic_numbers: Sequence[int]) -> np.ndarray:
    """Convert ``matrix`` [..., n_ao, n_ao] from PySCF order to ``convention``."""
    idx, sign = ao_permutation(convention, molecule_shell_ls(basis_name, atomic_numbers))
    m = _check_square(matrix, len(idx), "matrix")
    return np.ascontiguousarray(m[..., idx, :][..., :, idx] * sign[:, None] * sign[None, :])
