"""Basis-set layout in PySCF's AO order (spherical, ``mol.cart = False``).

PySCF orders the AOs of a molecule atom by atom (in input order); within an
atom shell by shell as the basis lists them (PySCF sorts shells by angular
momentum); a contracted shell with several radial functions gives one block of
``2l+1`` functions per radial function.  Inside a block the real spherical
functions are ordered ``m = -l..l`` **except** ``l = 1`` which is
``(px, py, pz)`` (i.e. m = +1, -1, 0).

PySCF is imported lazily: only the functions here need it.
"""
from __future__ import annotations

import functools
import warnings
from typing import Dict, List, Sequence, Tuple

import numpy as np

Shell = Tuple[int, int]  # (l, n_functions == 2l+1)


def _normalize_basis_name(basis_name: str) -> str:
    if not isinstance(basis_name, str) or not basis_name.strip():
        raise ValueError(f"basis_name must be a non-empty string, got {basis_name!r}")
    return basis_name.strip().lower()


@functools.lru_cache(maxsize=None)
def element_shells(basis_name: str, atomic_number: int) -> Tuple[Shell, ...]:
    """Shells of one element, in PySCF order.

    Returns a tuple of ``(l, 2l+1)``, one entry per radial function (a
    contraction with k columns gives k entries).  Raises ``ValueError`` if the
    basis has no functions for the element.
    """
    from pyscf import gto  # lazy: keep qhnetv2.data importable without PySCF
    from pyscf.data.elements import ELEMENTS

    z = int(atomic_number)
    if not 1 <= z < len(ELEMENTS):
        raise ValueError(f"atomic_numbers: invalid atomic number {atomic_number!r}")
    symbol = ELEMENTS[z]
    basis_name = _normalize_basis_name(basis_name)
    try:
        with warnings.catch_warnings():  # PySCF suggests installing basis-set-exchange
            warnings.simplefilter("ignore", UserWarning)
            mol = gto.M(atom=[(symbol, (0.0, 0.0, 0.0))], basis=basis_name,
                        spin=z % 2, cart=False, verbose=0)
    except Exception as exc:  # PySCF raises BasisNotFoundError, KeyError, ...
        raise ValueError(f"basis {basis_name!r} has no functions for element "
                         f"{symbol} (Z={z}): {exc}") from None
    if mol.nao == 0:
        raise ValueError(f"basis {basis_name!r} has no functions for element {symbol}")
    shells: List[Shell] = []
    for b in range(mol.nbas):
        l = int(mol.bas_angular(b))
        shells.extend([(l, 2 * l + 1)] * int(mol.bas_nctr(b)))
    return tuple(shells)


def basis_layout(basis_name: str, atomic_numbers: Sequence[int]) -> Dict[int, List[Shell]]:
    """Per-element shell lists in PySCF order.

    Args:
        basis_name: any basis PySCF knows (``"def2-svp"``, ``"sto-3g"``, ...).
        atomic_numbers: int array [n_atoms] (only the distinct values matter).

    Returns:
        ``{Z: [(l, 2l+1), ...]}`` for every distinct ``Z``.  A model maps the
        atom-pair block ``H[ao_slices[i], ao_slices[j]]`` to irreps with it:
        the block's rows are the concatenation of these shells for atom i.
        Remember PySCF's p order is (px, py, pz), not m = -1, 0, 1.
    """
    zs = np.asarray(atomic_numbers).reshape(-1)
    return {int(z): list(element_shells(basis_name, int(z))) for z in sorted(set(zs.tolist()))}


def ao_counts(basis_name: str, atomic_numbers: Sequence[int]) -> np.ndarray:
    """Number of AOs of each atom, int64 [n_atoms]."""
    zs = np.asarray(atomic_numbers).reshape(-1)
    return np.array([sum(n for _, n in element_shells(basis_name, int(z))) for z in zs],
                    dtype=np.int64)


def ao_slices(basis_name: str, atomic_numbers: Sequence[int]) -> np.ndarray:
    """Per-atom AO ranges, int64 [n_atoms, 2] of ``(start, stop)``.

    ``H[s[i,0]:s[i,1], s[j,0]:s[j,1]]`` is the (i, j) atom-pair block.
    """
    counts = ao_counts(basis_name, atomic_numbers)
    stops = np.cumsum(counts)
    return np.stack([stops - counts, stops], axis=1).astype(np.int64)


def ao_angular_momenta(basis_name: str, atomic_numbers: Sequence[int]) -> np.ndarray:
    """Angular momentum l of every AO, int64 [n_ao], in PySCF order."""
    ls: List[int] = []
    for z in np.asarray(atomic_numbers).reshape(-1):
        for l, n in element_shells(basis_name, int(z)):
            ls.extend([l] * n)
    return np.array(ls, dtype=np.int64)
