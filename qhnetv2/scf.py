"""Starting PySCF's SCF from a (predicted) Hamiltonian: the QH9 DFT-acceleration test.

``init_guess(mf, H)`` turns a Hamiltonian into the initial density
``dm0 = 2 C_occ C_occ^T`` (C from H C = S C eps); usable directly by PySCF
users: ``mf.kernel(dm0=init_guess(mf, H_pred))``.
PySCF is imported lazily.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Union

import numpy as np


@dataclasses.dataclass
class SCFResult:
    """Outcome of one SCF run: cycles (PySCF's ``mf.cycles``), total energy
    (Hartree), convergence flag, and the initial guess used."""
    cycles: int
    energy: float
    converged: bool
    guess: str


def init_guess(mf, H) -> np.ndarray:
    """Initial closed-shell density from a Hamiltonian.

    Args:
        mf: a restricted PySCF SCF object (RHF/RKS) for the molecule.
        H: float [n_ao, n_ao] Hamiltonian in PySCF AO order (NumPy or torch);
            symmetrised before use since a predicted H may not be exactly so.
    Returns:
        dm0 float64 [n_ao, n_ao] = 2 C_occ C_occ^T.
    """
    if hasattr(H, "detach"):
        H = H.detach().cpu().numpy()
    H = np.asarray(H, dtype=np.float64)
    nao = mf.mol.nao
    if H.shape != (nao, nao):
        raise ValueError(f"H: expected shape ({nao}, {nao}) for this molecule, got {H.shape}")
    if not np.isfinite(H).all():
        raise ValueError("H contains NaN or inf")
    if mf.mol.nelectron % 2:
        raise ValueError("init_guess: odd electron count; only closed-shell (restricted) "
                         "molecules are supported")
    H = 0.5 * (H + H.T)
    mo_energy, mo_coeff = mf.eig(H, mf.get_ovlp())
    n_occ = mf.mol.nelectron // 2
    c_occ = mo_coeff[:, :n_occ]
    return 2.0 * c_occ @ c_occ.T


def run_scf(atomic_numbers, positions, guess: Union[str, np.ndarray],
            settings: Optional[Dict[str, Any]] = None, charge: int = 0) -> SCFResult:
    """Run the SCF with ``settings`` (see ``qhnetv2.data.labelling.DEFAULT_SETTINGS``)
    from ``guess``: a PySCF guess name (``"minao"``, ``"1e"``, ...) or a
    Hamiltonian float [n_ao, n_ao] in PySCF order.  Positions in Angstrom."""
    from .data.labelling import DEFAULT_SETTINGS, build_mol, make_mf, make_settings

    # A record's settings also carry provenance (charge, PySCF version, source
    # of an import): keep only what configures the SCF.
    settings = make_settings(**{k: v for k, v in (settings or {}).items()
                                if k in DEFAULT_SETTINGS})
    mol = build_mol(atomic_numbers, positions, settings["basis"], charge)
    mf = make_mf(mol, settings)
    if isinstance(guess, str):
        mf.init_guess = guess
        energy = mf.kernel()
        label = guess
    else:
        energy = mf.kernel(dm0=init_guess(mf, guess))
        label = "hamiltonian"
    return SCFResult(cycles=int(mf.cycles), energy=float(energy),
                     converged=bool(mf.converged), guess=label)


def scf_from_hamiltonian(atomic_numbers, positions, H, basis: str = "def2-svp",
                         xc: str = "b3lyp", grid_level: int = 3, conv_tol: float = 1e-12,
                         max_cycle: int = 100, charge: int = 0,
                         **settings: Any) -> SCFResult:
    """PySCF SCF started from the density of Hamiltonian ``H``.

    Args:
        atomic_numbers: int [n_atoms]; positions: float [n_atoms, 3] Angstrom.
        H: float [n_ao, n_ao], PySCF AO order, Hartree.
        basis, xc, grid_level, conv_tol, max_cycle, charge: the SCF settings;
            use those the Hamiltonian was labelled with.
    Returns:
        :class:`SCFResult` (cycles, energy in Hartree, converged).
    """
    from .data.labelling import DEFAULT_SETTINGS
    unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"scf_from_hamiltonian: unknown settings {unknown}; "
                         f"known: {sorted(DEFAULT_SETTINGS)}")
    all_settings = dict(settings, basis=basis, xc=xc, grid_level=grid_level,
                        conv_tol=conv_tol, max_cycle=max_cycle)
    return run_scf(atomic_numbers, positions, H, all_settings, charge)
