"""Self-consistency of a predicted Hamiltonian: a check that flags a wrong spectrum, and a one-step refinement.

An element-wise accurate ``H_pred`` can still have a wrong virtual spectrum: a small
error along a poorly conditioned direction of the overlap ``S`` (eigenvalue ``s``)
moves a generalised eigenvalue by about ``error / s``.  For ethanol in def2-SVP the
smallest ``s`` is about 0.003, and an error of 5 mEh there gives a spurious virtual
orbital more than 1 Eh too low: a HOMO-LUMO gap off by 15 eV while the H MAE looks
normal and the molecule is well inside the training domain (measured,
``bench/results/cpu-amd-epyc-2t/consistency/``).

The occupied orbitals, hence the density ``D = 2 C_occ C_occ^T``, are far less
sensitive.  One Fock build from that density,

    F1 = F[D(H_pred)]        (the labels' functional and basis, PySCF),

is the first SCF iteration started from the prediction.  Two uses:

* **check**: for an exact prediction ``F1 = H_pred`` (the label is self-consistent).
  ``gap_shift = |gap(F1) - gap(H_pred)|`` above :data:`CONSISTENCY_TOL_EV` flags a
  prediction whose frontier spectrum is not trustworthy -- a failure the domain check
  cannot see, because it is about the prediction, not the input;
* **refinement**: ``F1`` itself is a better Hamiltonian than ``H_pred`` whenever the
  occupied space is right (its error is first order in the density error only), and
  it removes spurious virtual orbitals.  It costs one Fock build, the same as the
  ``minao`` base a residual model already needs.

Closed-shell molecules only (an odd electron count is not checked: ``None``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

HARTREE_TO_EV = 27.211386245988
#: |gap(F[D(H)]) - gap(H)| (eV) above which a prediction counts as not self-consistent
CONSISTENCY_TOL_EV = 0.5


class ConsistencyWarning(UserWarning):
    """A prediction that one Fock build changes too much (its spectrum is not trustworthy)."""


def _orbitals(H: np.ndarray, S: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(eps [n], C [n, n])`` of ``H C = S C eps`` with :func:`qhnetv2.metrics.orbitals` (QH9's solve).

    ``H`` is symmetrised first, as :func:`qhnetv2.metrics.closed_shell_density` does, so the
    density built from ``C`` is the one the density metrics use (bit for bit): one solver for the
    check, the density metrics and ``qhnetv2 predict``'s orbital energies.
    """
    from .metrics import orbitals

    H = np.asarray(H, dtype=np.float64)
    return orbitals(0.5 * (H + H.T), np.asarray(S, dtype=np.float64))


def closed_shell_occupied(n_electrons: int) -> Optional[int]:
    """Doubly occupied orbitals, or None for an odd (or non-positive) electron count."""
    n = int(n_electrons)
    if n <= 0 or n % 2:
        return None
    return n // 2


def scf_settings(settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The SCF settings of ``settings`` (:func:`qhnetv2.data.labelling.make_settings`; other keys dropped)."""
    from .data.labelling import DEFAULT_SETTINGS, make_settings

    return make_settings(**{k: v for k, v in (settings or {}).items() if k in DEFAULT_SETTINGS})


@dataclass
class FockBuild:
    """One Fock build from the aufbau density of a Hamiltonian ``H`` (closed shell).

    Everything the check, the refinement and the density metrics need, computed once:

    * ``mol``, ``mf``: the PySCF molecule and mean-field object (labels' settings; for a
      DFT functional ``mf`` holds the grid, pruned on ``density``);
    * ``overlap``: ``S`` ``[n_ao, n_ao]`` (PySCF ``int1e_ovlp``);
    * ``mo_energy``: ``[n_ao]`` eigenvalues of ``H C = S C eps`` (Hartree, ascending);
    * ``density``: ``D = 2 C_occ C_occ^T`` ``[n_ao, n_ao]``;
    * ``veff``: PySCF's effective potential of ``D`` (``mf.get_veff``; for KS tagged with
      ``ecoul`` / ``exc``, so :meth:`energy` needs no second build);
    * ``fock``: ``F1 = F[D] = h_core + veff`` ``[n_ao, n_ao]``;
    * ``n_occ``: doubly occupied orbitals.
    """
    mol: Any
    mf: Any
    overlap: np.ndarray
    mo_energy: np.ndarray
    density: np.ndarray
    veff: Any
    fock: np.ndarray
    n_occ: int

    def energy(self) -> float:
        """``E[D]``: the functional's total energy at ``density`` (Hartree), from the stored ``veff``."""
        return float(self.mf.energy_tot(dm=self.density, vhf=self.veff))


def fock_build(H: np.ndarray, atomic_numbers, positions, settings: Optional[Dict[str, Any]] = None,
               charge: int = 0) -> Optional[FockBuild]:
    """The one Fock build ``F[D(H)]`` (:class:`FockBuild`), or None for an open-shell molecule.

    Args:
        H: ``[n_ao, n_ao]`` predicted Hamiltonian (Hartree, PySCF AO order).
        atomic_numbers: ``[n_atoms]``; positions: ``[n_atoms, 3]`` Angstrom.
        settings: the labels' SCF settings (``xc``, ``basis``, grid, ...:
            :func:`qhnetv2.data.labelling.make_settings` keys; others are ignored).
        charge: total charge.
    """
    from .data.labelling import build_mol, make_mf

    settings = scf_settings(settings)
    z = np.asarray(atomic_numbers).reshape(-1)
    n_occ = closed_shell_occupied(int(z.sum()) - int(charge))
    if n_occ is None:
        return None
    mol = build_mol(z, np.asarray(positions, dtype=np.float64), settings["basis"], charge)
    S = np.asarray(mol.intor_symmetric("int1e_ovlp"))
    H = np.asarray(H, dtype=np.float64)
    if H.shape != S.shape:
        raise ValueError(f"H has shape {H.shape} but the molecule has {S.shape[0]} AOs in basis "
                         f"{settings['basis']!r}")
    eps, C = _orbitals(H, S)
    D = 2.0 * C[:, :n_occ] @ C[:, :n_occ].T
    mf = make_mf(mol, settings)
    veff = mf.get_veff(mol, D)  # the Fock build: J, K, XC of D (first call: builds the DFT grid)
    F1 = np.asarray(mf.get_fock(dm=D, vhf=veff))
    return FockBuild(mol=mol, mf=mf, overlap=S, mo_energy=eps, density=D, veff=veff, fock=F1, n_occ=n_occ)


def fock_of_prediction(H: np.ndarray, atomic_numbers, positions, settings: Optional[Dict[str, Any]] = None,
                       charge: int = 0) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """``(F1, S)``: the Fock matrix of the aufbau density of ``H``, and the overlap.

    Arguments as for :func:`fock_build`.
    Returns ``F1`` and ``S``, both ``[n_ao, n_ao]``; ``(None, None)`` for an open-shell molecule.
    """
    b = fock_build(H, atomic_numbers, positions, settings, charge)
    return (None, None) if b is None else (b.fock, b.overlap)


def _spectrum_shift(e: np.ndarray, e1: np.ndarray, n_occ: int, n_virtual: int, tol_eV: float) -> Dict[str, Any]:
    """:func:`self_consistency`'s numbers from the eigenvalues ``e`` of ``H`` and ``e1`` of ``F1``."""
    if not 0 < n_occ < len(e):
        raise ValueError(f"n_occ must be in [1, {len(e) - 1}], got {n_occ}")
    gap, gap1 = (e[n_occ] - e[n_occ - 1]) * HARTREE_TO_EV, (e1[n_occ] - e1[n_occ - 1]) * HARTREE_TO_EV
    k = min(len(e), n_occ + int(n_virtual))
    shift = float(np.abs(gap1 - gap))
    return {"gap_eV": float(gap), "gap_refined_eV": float(gap1), "gap_shift_eV": shift,
            "orbital_shift_max_eV": float(np.abs(e1[:k] - e[:k]).max() * HARTREE_TO_EV),
            "self_consistent": bool(shift <= tol_eV)}


def self_consistency(H: np.ndarray, F1: np.ndarray, S: np.ndarray, n_occ: int,
                     n_virtual: int = 10, tol_eV: float = CONSISTENCY_TOL_EV) -> Dict[str, Any]:
    """How far one Fock build moves the spectrum of ``H``.

    Returns ``gap_eV`` (of ``H``), ``gap_refined_eV`` (of ``F1``), ``gap_shift_eV``,
    ``orbital_shift_max_eV`` (over the occupied and the lowest ``n_virtual`` virtual
    orbitals) and ``self_consistent`` (``gap_shift_eV <= tol_eV``).
    """
    return _spectrum_shift(_orbitals(H, S)[0], _orbitals(F1, S)[0], n_occ, n_virtual, tol_eV)


def consistency_row(H: np.ndarray, build: Optional[FockBuild], tol_eV: float = CONSISTENCY_TOL_EV,
                    n_virtual: int = 10) -> Dict[str, Any]:
    """One molecule of :func:`check_predictions`, from its :func:`fock_build` (None: open shell).

    ``H``'s spectrum comes from ``build`` (solved once there); only ``F1``'s is solved here.
    """
    if build is None:
        return {"self_consistent": None, "refined": None,
                "reason": "open-shell molecule: the one-Fock-build check is closed-shell only"}
    e1 = _orbitals(build.fock, build.overlap)[0]
    row = _spectrum_shift(build.mo_energy, e1, build.n_occ, n_virtual, tol_eV)
    row.update(refined=build.fock, overlap=build.overlap, mo_energy=build.mo_energy, mo_energy_refined=e1)
    return row


#: keys of a :func:`check_predictions` row that hold matrices / spectra (not summary numbers)
ARRAY_KEYS = ("refined", "overlap", "mo_energy", "mo_energy_refined")


def check_predictions(hamiltonians: Sequence[np.ndarray], atomic_numbers_list: Sequence, positions_list: Sequence,
                      settings: Optional[Dict[str, Any]] = None, charges: Optional[Sequence[int]] = None,
                      tol_eV: float = CONSISTENCY_TOL_EV) -> List[Dict[str, Any]]:
    """Per molecule: :func:`self_consistency` plus ``refined`` (``F1``, or None when open-shell).

    A checked row also holds what the check computed, for callers to reuse instead of
    recomputing: ``overlap`` (``S`` ``[n_ao, n_ao]``), ``mo_energy`` (``[n_ao]``, the
    eigenvalues of ``H C = S C eps``, Hartree, ascending) and ``mo_energy_refined`` (those of ``F1``).
    Open-shell molecules get ``{"self_consistent": None, "refined": None, "reason": ...}``.
    """
    if not len(hamiltonians) == len(atomic_numbers_list) == len(positions_list):
        raise ValueError(f"{len(hamiltonians)} Hamiltonians, {len(atomic_numbers_list)} atomic-number arrays and "
                         f"{len(positions_list)} position arrays: they must match")
    charges = [0] * len(hamiltonians) if charges is None else list(charges)
    if len(charges) != len(hamiltonians):
        raise ValueError(f"charges: {len(charges)} values for {len(hamiltonians)} molecules")
    return [consistency_row(H, fock_build(H, z, pos, settings, charge=int(q)), tol_eV=tol_eV)
            for H, z, pos, q in zip(hamiltonians, atomic_numbers_list, positions_list, charges)]
