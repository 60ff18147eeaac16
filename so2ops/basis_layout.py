"""Atomic-orbital basis layouts as data (no PySCF import here).

A :class:`BasisLayout` lists, per element, the angular momentum of every shell
in PySCF's order (one entry per radial function of a contraction).  It is all
that ``so2ops.assemble_blocks`` needs to know about a basis: built once from
any PySCF basis by ``qhnetv2.data.basis.basis_layout_for`` (or by hand), saved
in checkpoints with :meth:`BasisLayout.to_dict`.

PySCF's AO order (spherical GTOs): atom by atom, shell by shell, inside a shell
``m = -l..l`` except ``l = 1`` which is ``(px, py, pz)``.  so2ops features use
e3nn's real spherical harmonics (polar axis +y, ``l = 1`` is ``(x, y, z)``);
:func:`e3nn_to_pyscf` is the fixed orthogonal change of basis per degree.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, Iterable, Mapping, Sequence, Tuple

import torch

#: Largest shell degree supported (g functions); features then need lmax = 8.
MAX_SHELL_L = 4



class BasisLayout:
    """Per-element shell degrees of an AO basis.

    Args:
        shells: ``{Z: [l_1, l_2, ...]}`` in PySCF's shell order, ``0 <= l <= 4``.
        name: optional basis name, for messages and checkpoints.
    """

    def __init__(self, shells: Mapping[int, Sequence[int]], name: str = ""):
        if not isinstance(shells, Mapping) or not shells:
            raise ValueError("shells must be a non-empty mapping {atomic number: [shell l, ...]}")
        clean: Dict[int, Tuple[int, ...]] = {}
        for z, ls in shells.items():
            z = int(z)
            if z < 1:
                raise ValueError(f"shells: invalid atomic number {z}")
            ls = tuple(int(l) for l in ls)
            if not ls:
                raise ValueError(f"shells: element Z={z} has no shells")
            if any(l < 0 or l > MAX_SHELL_L for l in ls):
                raise ValueError(f"shells: element Z={z} has a shell outside l = 0..{MAX_SHELL_L}: {list(ls)}")
            clean[z] = ls
        self.shells = dict(sorted(clean.items()))
        self.name = name

    # -------------------------------------------------------------- queries
    @property
    def elements(self) -> Tuple[int, ...]:
        return tuple(self.shells)

    @property
    def lmax_shell(self) -> int:
        """Largest shell degree over all elements."""
        return max(max(ls) for ls in self.shells.values())

    @property
    def features_lmax(self) -> int:
        """Smallest feature lmax that can express every block: ``2 * lmax_shell``."""
        return 2 * self.lmax_shell

    def n_ao(self, z: int) -> int:
        return sum(2 * l + 1 for l in self.shell_ls(z))

    def shell_ls(self, z: int) -> Tuple[int, ...]:
        z = int(z)
        if z not in self.shells:
            raise ValueError(f"atomic_numbers: element Z={z} is not in the basis layout "
                             f"{self.name or ''} (elements {list(self.shells)})".replace("  ", " "))
        return self.shells[z]

    def key(self) -> Tuple:
        """Hashable identity (used to cache tables)."""
        return tuple((z, ls) for z, ls in self.shells.items())

    def ao_counts(self, atomic_numbers: Iterable[int]) -> torch.Tensor:
        return torch.tensor([self.n_ao(int(z)) for z in atomic_numbers], dtype=torch.int64)

    # -------------------------------------------------------------- io
    def to_dict(self) -> dict:
        return {"name": self.name, "shells": {str(z): list(ls) for z, ls in self.shells.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "BasisLayout":
        try:
            return cls({int(z): ls for z, ls in d["shells"].items()}, name=d.get("name", ""))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a basis layout dictionary: {exc}") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, BasisLayout) and self.shells == other.shells

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        return f"BasisLayout({self.name!r}, {self.shells})"


# ------------------------------------------------------------------ e3nn -> PySCF
# The standard real harmonics with polar axis z (PySCF's) are e3nn's (polar
# axis y, azimuth atan2(x, z)) evaluated at the cyclically permuted point
# P p = (p_y, p_z, p_x): Y_std(p) = Y_e3nn(P p) = D_e3nn(P) Y_e3nn(p), and P is
# a proper rotation, so the change of basis is a Wigner matrix of e3nn's.
# PySCF's real spherical GTOs use exactly these standard harmonics with no extra
# signs (checked against PySCF's AO values for l = 0..4 by
# tests/test_assemble_blocks.py, which re-derives U_l from PySCF); l = 1 is the
# exception only in name: PySCF orders p as (px, py, pz), e3nn as (x, y, z).
_PERM = ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0))


@lru_cache(maxsize=None)
def _e3nn_to_pyscf_f64(l: int) -> torch.Tensor:
    from .reference.edge_wigner import wigner_from_matrices
    from .layout import wigner_offset

    if l == 0:
        return torch.ones(1, 1, dtype=torch.float64)
    if l == 1:
        # e3nn's l = 1 components are (x, y, z) and PySCF's p shell is (px, py, pz)
        return torch.eye(3, dtype=torch.float64)
    p = torch.tensor(_PERM, dtype=torch.float64)[None]
    w = wigner_from_matrices(p, l)[0]
    n = 2 * l + 1
    d = w[wigner_offset(l): wigner_offset(l) + n * n].view(n, n)
    return d.clone()


def e3nn_to_pyscf(l: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Orthogonal ``U_l[2l+1, 2l+1]`` with ``Y_pyscf(p) = U_l Y_e3nn(p)``.

    So a block in e3nn's basis ``B`` is ``U_{l1} B U_{l2}^T`` in PySCF's, and a
    rotation acts on PySCF's AO coefficients as ``U_l D_e3nn(Q) U_l^T``.
    """
    if not 0 <= l <= MAX_SHELL_L:
        raise ValueError(f"l={l} must be in [0, {MAX_SHELL_L}]")
    return _e3nn_to_pyscf_f64(l).to(dtype=dtype, device=device)
