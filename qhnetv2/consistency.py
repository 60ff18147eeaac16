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

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

HARTREE_TO_EV = 27.211386245988
#: |gap(F[D(H)]) - gap(H)| (eV) above which a prediction counts as not self-consistent
CONSISTENCY_TOL_EV = 0.5


class ConsistencyWarning(UserWarning):
    """A prediction that one Fock build changes too much (its spectrum is not trustworthy)."""


def _generalised_eigh(H: np.ndarray, S: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    import scipy.linalg

    return scipy.linalg.eigh(np.asarray(H, dtype=np.float64), np.asarray(S, dtype=np.float64))


def closed_shell_occupied(n_electrons: int) -> Optional[int]:
    """Doubly occupied orbitals, or None for an odd (or non-positive) electron count."""
    n = int(n_electrons)
    if n <= 0 or n % 2:
        return None
    return n // 2


def fock_of_prediction(H: np.ndarray, atomic_numbers, positions, settings: Optional[Dict[str, Any]] = None,
                       charge: int = 0) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """``(F1, S)``: the Fock matrix of the aufbau density of ``H``, and the overlap.

    Args:
        H: ``[n_ao, n_ao]`` predicted Hamiltonian (Hartree, PySCF AO order).
        atomic_numbers: ``[n_atoms]``; positions: ``[n_atoms, 3]`` Angstrom.
        settings: the labels' SCF settings (``xc``, ``basis``, grid, ...:
            :func:`qhnetv2.data.labelling.make_settings` keys; others are ignored).
        charge: total charge.
    Returns ``F1`` and ``S``, both ``[n_ao, n_ao]``; ``(None, None)`` for an open-shell molecule.
    """
    from .data.labelling import DEFAULT_SETTINGS, build_mol, make_mf, make_settings

    settings = make_settings(**{k: v for k, v in (settings or {}).items() if k in DEFAULT_SETTINGS})
    z = np.asarray(atomic_numbers).reshape(-1)
    n_occ = closed_shell_occupied(int(z.sum()) - int(charge))
    if n_occ is None:
        return None, None
    mol = build_mol(z, np.asarray(positions, dtype=np.float64), settings["basis"], charge)
    S = np.asarray(mol.intor_symmetric("int1e_ovlp"))
    H = np.asarray(H, dtype=np.float64)
    if H.shape != S.shape:
        raise ValueError(f"H has shape {H.shape} but the molecule has {S.shape[0]} AOs in basis "
                         f"{settings['basis']!r}")
    _, C = _generalised_eigh(H, S)
    D = 2.0 * C[:, :n_occ] @ C[:, :n_occ].T
    mf = make_mf(mol, settings)
    return np.asarray(mf.get_fock(dm=D)), S


def self_consistency(H: np.ndarray, F1: np.ndarray, S: np.ndarray, n_occ: int,
                     n_virtual: int = 10, tol_eV: float = CONSISTENCY_TOL_EV) -> Dict[str, Any]:
    """How far one Fock build moves the spectrum of ``H``.

    Returns ``gap_eV`` (of ``H``), ``gap_refined_eV`` (of ``F1``), ``gap_shift_eV``,
    ``orbital_shift_max_eV`` (over the occupied and the lowest ``n_virtual`` virtual
    orbitals) and ``self_consistent`` (``gap_shift_eV <= tol_eV``).
    """
    e = _generalised_eigh(H, S)[0]
    e1 = _generalised_eigh(F1, S)[0]
    if not 0 < n_occ < len(e):
        raise ValueError(f"n_occ must be in [1, {len(e) - 1}], got {n_occ}")
    gap, gap1 = (e[n_occ] - e[n_occ - 1]) * HARTREE_TO_EV, (e1[n_occ] - e1[n_occ - 1]) * HARTREE_TO_EV
    k = min(len(e), n_occ + int(n_virtual))
    shift = float(np.abs(gap1 - gap))
    return {"gap_eV": float(gap), "gap_refined_eV": float(gap1), "gap_shift_eV": shift,
            "orbital_shift_max_eV": float(np.abs(e1[:k] - e[:k]).max() * HARTREE_TO_EV),
            "self_consistent": bool(shift <= tol_eV)}


def check_predictions(hamiltonians: Sequence[np.ndarray], atomic_numbers_list: Sequence, positions_list: Sequence,
                      settings: Optional[Dict[str, Any]] = None, charges: Optional[Sequence[int]] = None,
                      tol_eV: float = CONSISTENCY_TOL_EV) -> List[Dict[str, Any]]:
    """Per molecule: :func:`self_consistency` plus ``refined`` (``F1``, or None when open-shell).

    Open-shell molecules get ``{"self_consistent": None, "refined": None, "reason": ...}``.
    """
    if not len(hamiltonians) == len(atomic_numbers_list) == len(positions_list):
        raise ValueError(f"{len(hamiltonians)} Hamiltonians, {len(atomic_numbers_list)} atomic-number arrays and "
                         f"{len(positions_list)} position arrays: they must match")
    charges = [0] * len(hamiltonians) if charges is None else list(charges)
    if len(charges) != len(hamiltonians):
        raise ValueError(f"charges: {len(charges)} values for {len(hamiltonians)} molecules")
    out = []
    for H, z, pos, q in zip(hamiltonians, atomic_numbers_list, positions_list, charges):
        F1, S = fock_of_prediction(H, z, pos, settings, charge=int(q))
        if F1 is None:
            out.append({"self_consistent": None, "refined": None,
                        "reason": "open-shell molecule: the one-Fock-build check is closed-shell only"})
            continue
        n_occ = closed_shell_occupied(int(np.sum(z)) - int(q))
        row = self_consistency(H, F1, S, n_occ, tol_eV=tol_eV)
        row["refined"] = F1
        out.append(row)
    return out
