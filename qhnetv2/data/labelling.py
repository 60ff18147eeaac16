"""Labelling one molecule with PySCF: validation, RKS, converged Fock and overlap.

PySCF is imported inside the functions (workers import it once, on first use).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import numpy as np

# The QH9 recipe: restricted KS, B3LYP, def2-SVP, grid level 3, tight convergence.
DEFAULT_SETTINGS: Dict[str, Any] = {
    "xc": "b3lyp",          # "hf" selects restricted Hartree-Fock instead of KS
    "basis": "def2-svp",
    "grid_level": 3,
    "conv_tol": 1e-12,      # energy, Hartree
    "conv_tol_grad": None,  # None: PySCF's default sqrt(conv_tol)
    "max_cycle": 100,
    "init_guess": "minao",
    "min_distance": 0.3,    # Angstrom; closer atoms are rejected as invalid input
    "smiles_seed": 0,       # RDKit conformer seed for SMILES input
}


class LabelFailure(Exception):
    """A molecule that cannot be labelled; ``str(exc)`` is the reason."""


def make_settings(**overrides: Any) -> Dict[str, Any]:
    """Defaults updated with ``overrides`` (``None`` values are ignored), validated."""
    settings = copy.deepcopy(DEFAULT_SETTINGS)
    for key, value in overrides.items():
        if key not in settings:
            raise ValueError(f"unknown setting {key!r}; known: {sorted(settings)}")
        if value is not None:
            settings[key] = value
    if not isinstance(settings["xc"], str) or not settings["xc"]:
        raise ValueError(f"xc must be a functional name, got {settings['xc']!r}")
    if not isinstance(settings["basis"], str) or not settings["basis"]:
        raise ValueError(f"basis must be a basis name, got {settings['basis']!r}")
    settings["basis"] = settings["basis"].strip().lower()
    settings["xc"] = settings["xc"].strip().lower()
    if int(settings["grid_level"]) not in range(10):
        raise ValueError(f"grid_level must be 0..9, got {settings['grid_level']!r}")
    settings["grid_level"] = int(settings["grid_level"])
    if not float(settings["conv_tol"]) > 0:
        raise ValueError(f"conv_tol must be > 0, got {settings['conv_tol']!r}")
    settings["conv_tol"] = float(settings["conv_tol"])
    if int(settings["max_cycle"]) < 1:
        raise ValueError(f"max_cycle must be >= 1, got {settings['max_cycle']!r}")
    settings["max_cycle"] = int(settings["max_cycle"])
    if settings["init_guess"] not in ("minao", "1e", "atom", "huckel", "sap"):
        raise ValueError(f"init_guess must be one of minao, 1e, atom, huckel, sap; "
                         f"got {settings['init_guess']!r}")
    return settings


def is_hf(settings: Dict[str, Any]) -> bool:
    return settings["xc"] in ("hf", "rhf")


def validate_geometry(atomic_numbers: np.ndarray, positions: np.ndarray, charge: int,
                      settings: Dict[str, Any]) -> Optional[str]:
    """Return the reason a geometry cannot be labelled, or ``None`` if it can.

    Args: atomic_numbers int [n_atoms]; positions float [n_atoms, 3] Angstrom.
    """
    from .basis import element_shells
    from pyscf.data.elements import ELEMENTS

    z = np.asarray(atomic_numbers).reshape(-1)
    pos = np.asarray(positions, dtype=np.float64)
    if z.size == 0:
        return "empty frame: no atoms"
    if pos.shape != (z.size, 3):
        return f"positions have shape {pos.shape}, expected ({z.size}, 3)"
    bad = np.where(~np.isfinite(pos).all(axis=1))[0]
    if bad.size:
        return f"non-finite (NaN/inf) coordinates for atoms {bad.tolist()[:10]}"
    for zi in sorted(set(z.tolist())):
        if not 1 <= zi < len(ELEMENTS):
            return f"unknown element with atomic number {zi}"
        try:
            element_shells(settings["basis"], zi)
        except ValueError:
            return (f"unknown element for the basis: {ELEMENTS[zi]} (Z={zi}) is not in "
                    f"basis {settings['basis']!r}")
    if z.size > 1:
        d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
        d[np.diag_indices_from(d)] = np.inf
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] < settings["min_distance"]:
            return (f"atoms {min(i, j)} and {max(i, j)} are {d[i, j]:.3f} Angstrom apart "
                    f"(closer than {settings['min_distance']} Angstrom)")
    n_electrons = int(z.sum()) - int(charge)
    if n_electrons <= 0:
        return f"no electrons (charge {charge})"
    if n_electrons % 2:
        return (f"odd electron count {n_electrons} (charge {charge}): a restricted "
                f"closed-shell calculation needs an even number")
    return None


def build_mol(atomic_numbers, positions, basis: str, charge: int = 0):
    """PySCF ``Mole`` in Angstrom, spherical AOs, closed shell."""
    from pyscf import gto
    z = np.asarray(atomic_numbers).reshape(-1)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    return gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], basis=basis,
                 unit="Angstrom", charge=int(charge), spin=0, cart=False, verbose=0)


def make_mf(mol, settings: Dict[str, Any]):
    """Restricted KS (or HF if ``xc == "hf"``) object configured from ``settings``."""
    from pyscf import dft, scf
    if is_hf(settings):
        mf = scf.RHF(mol)
    else:
        mf = dft.RKS(mol)
        mf.xc = settings["xc"]
        mf.grids.level = settings["grid_level"]
    mf.conv_tol = settings["conv_tol"]
    if settings.get("conv_tol_grad") is not None:
        mf.conv_tol_grad = float(settings["conv_tol_grad"])
    mf.max_cycle = settings["max_cycle"]
    mf.init_guess = settings["init_guess"]
    mf.verbose = 0
    return mf


def label_molecule(atomic_numbers, positions, settings: Dict[str, Any],
                   charge: int = 0) -> Dict[str, Any]:
    """Converged restricted KS labels of one molecule.

    Returns a record (see :mod:`.serialization`): H is the Fock matrix built
    from the converged density (no DIIS extrapolation), S the AO overlap, both
    float64 [n_ao, n_ao] in PySCF order; ``mo_energy`` are the eigenvalues of
    the stored (H, S).  Raises :class:`LabelFailure` with the reason.
    """
    import pyscf
    import scipy.linalg

    reason = validate_geometry(atomic_numbers, positions, charge, settings)
    if reason is not None:
        raise LabelFailure(reason)
    mol = build_mol(atomic_numbers, positions, settings["basis"], charge)
    mf = make_mf(mol, settings)
    energy = mf.kernel()
    if not mf.converged:
        raise LabelFailure(f"SCF did not converge in {settings['max_cycle']} cycles "
                           f"(last energy {energy:.10f} Eh)")
    dm = mf.make_rdm1()
    hamiltonian = np.asarray(mf.get_fock(dm=dm), dtype=np.float64)
    overlap = np.asarray(mf.get_ovlp(), dtype=np.float64)
    mo_energy = scipy.linalg.eigh(hamiltonian, overlap, eigvals_only=True)
    used = dict(settings, charge=int(charge), pyscf_version=pyscf.__version__)
    return {
        "atomic_numbers": np.asarray(atomic_numbers, dtype=np.int64).reshape(-1),
        "positions": np.asarray(positions, dtype=np.float64).reshape(-1, 3),
        "hamiltonian": hamiltonian,
        "overlap": overlap,
        "energy": float(mf.e_tot),
        "mo_energy": mo_energy,
        "n_cycles": int(mf.cycles),
        "converged": bool(mf.converged),
        "settings": used,
    }
