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

Spectrum metrics (what a chemist looks at; the QH9 metrics above only see the
occupied orbitals, so a spurious low virtual orbital goes unnoticed), from the
same eigenvalues, per molecule:

* ``lumo_error``: |eps_pred[n_occ] - eps_true[n_occ]| (0-based: the lowest
  virtual orbital);
* ``gap_error``: |(eps[n_occ] - eps[n_occ-1])_pred - (eps[n_occ] - eps[n_occ-1])_true|,
  the HOMO-LUMO gap error; the dataset summary also has its worst case
  ``gap_error_max``;
* ``virtual_orbital_energy_mae``: mean |eps_pred - eps_true| over the lowest
  ``n_virtual`` (default 10) virtual orbitals, fewer when the basis has fewer;
* ``max_orbital_energy_error``: max |eps_pred - eps_true| over all orbitals,
  occupied and virtual; the dataset summary also has ``max_orbital_energy_error_max``.

The first three are NaN for a molecule without virtual orbitals (n_occ == n_ao).

Density metrics (:func:`density_metrics`; need PySCF and one Fock build per
density): ``energy_error`` = E[D(H_pred)] - E[D(H_true)] (signed, Hartree),
``energy_abs_error`` = its absolute value, ``dipole_error`` = |mu(D_pred) -
mu(D_true)| (Debye), with D(H) = 2 C_occ C_occ^T the closed-shell aufbau density
of H and E, mu evaluated non-self-consistently with the labels' functional.

Units: Hartree for every energy in the raw dicts (Debye for dipoles;
similarity is unitless).  :func:`to_micro_hartree` gives the reporting units:
MAEs and total-energy errors in micro-Hartree (as the papers print them),
LUMO / gap / worst-orbital errors in eV, similarity in percent.
Dataset-level numbers are means over molecules of the per-molecule values
(molecules where a value is undefined, NaN, are left out), and ``*_max`` the
worst molecule.
Note: entry-wise MAEs are invariant under rotations whose AO representation is a
signed permutation (e.g. 90 degree turns) but not under arbitrary rotations;
the orbital and density metrics are invariant under any rotation.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

EIGVAL_FLOOR = 1e-8

#: Hartree -> eV (CODATA 2018)
HARTREE_TO_EV = 27.211386245988

#: per-molecule keys of :func:`hamiltonian_metrics` (the first three need no orbitals)
HAMILTONIAN_KEYS = ("hamiltonian_mae", "hamiltonian_diagonal_mae", "hamiltonian_off_diagonal_mae")
#: the QH9 orbital metrics (occupied orbitals only)
ORBITAL_KEYS = ("orbital_energy_mae", "orbital_coefficient_similarity")
#: the spectrum metrics (LUMO, gap, virtual orbitals, worst orbital), Hartree
SPECTRUM_KEYS = ("lumo_error", "gap_error", "virtual_orbital_energy_mae", "max_orbital_energy_error")
#: all per-molecule keys of :func:`hamiltonian_metrics`
METRIC_KEYS = HAMILTONIAN_KEYS + ORBITAL_KEYS + SPECTRUM_KEYS
#: per-molecule keys of :func:`density_metrics` that are summarised (Hartree / Debye)
DENSITY_KEYS = ("energy_error", "energy_abs_error", "dipole_error")
#: per-molecule keys whose dataset summary also reports the worst molecule as ``<key>_max``
MAX_KEYS = ("gap_error", "max_orbital_energy_error")

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


def summarize(per_molecule: Mapping[str, Sequence[float]]) -> Dict[str, float]:
    """Dataset numbers from per-molecule values.

    Each key -> the mean over the molecules where it is defined (NaN values are
    skipped; NaN if none is); each key of :data:`MAX_KEYS` also -> ``<key>_max``,
    the worst molecule.  Units are those of the inputs.
    """
    out: Dict[str, float] = {}
    for key, values in per_molecule.items():
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        ok = v[~np.isnan(v)]
        out[key] = float(ok.mean()) if ok.size else float("nan")
        if key in MAX_KEYS:
            out[key + "_max"] = float(ok.max()) if ok.size else float("nan")
    return out


def spectrum_errors(eps_pred: np.ndarray, eps_true: np.ndarray, n_occ: int,
                    n_virtual: int = 10) -> Dict[str, float]:
    """The spectrum metrics of one molecule (see the module docstring).

    Args:
        eps_pred, eps_true: float64 [n_ao] ascending orbital energies (Hartree).
        n_occ: doubly occupied orbitals (HOMO = ``eps[n_occ - 1]``, LUMO = ``eps[n_occ]``).
        n_virtual: how many of the lowest virtual orbitals enter
            ``virtual_orbital_energy_mae``.
    Returns:
        ``{key: float}`` for :data:`SPECTRUM_KEYS`, Hartree; the LUMO, gap and
        virtual metrics are NaN when there is no virtual orbital.
    """
    eps_pred, eps_true = np.asarray(eps_pred, np.float64), np.asarray(eps_true, np.float64)
    n = eps_true.shape[0]
    err = np.abs(eps_pred - eps_true)
    out = {"lumo_error": float("nan"), "gap_error": float("nan"),
           "virtual_orbital_energy_mae": float("nan"), "max_orbital_energy_error": float(err.max())}
    if n_occ < n:
        out["lumo_error"] = float(err[n_occ])
        gap_p = eps_pred[n_occ] - eps_pred[n_occ - 1]
        gap_t = eps_true[n_occ] - eps_true[n_occ - 1]
        out["gap_error"] = float(abs(gap_p - gap_t))
        out["virtual_orbital_energy_mae"] = float(err[n_occ: n_occ + n_virtual].mean())
    return out


def hamiltonian_metrics(H_pred: ArrayLike, H_true: ArrayLike, S: ArrayLike,
                        n_occ: Union[int, Sequence[int]],
                        ao_slices: Optional[Union[np.ndarray, Sequence[np.ndarray]]] = None,
                        n_virtual: int = 10) -> Dict[str, object]:
    """QH9 and spectrum metrics of predicted Hamiltonians.

    Args:
        H_pred, H_true, S: [n_ao, n_ao], [batch, n_ao, n_ao], or lists of
            square matrices of varying size (NumPy or torch; used as float64).
        n_occ: number of doubly occupied orbitals, int or one per molecule.
        ao_slices: per-atom ``(start, stop)`` AO ranges, int [n_atoms, 2]
            (see :func:`qhnetv2.data.ao_slices`), one per molecule or one
            shared.  Without it the block MAEs are NaN.
        n_virtual: number of lowest virtual orbitals in ``virtual_orbital_energy_mae``.

    Returns:
        dict with the dataset numbers of :func:`summarize` for
        :data:`METRIC_KEYS` (means, plus ``gap_error_max`` and
        ``max_orbital_energy_error_max``; floats, Hartree / unitless),
        ``"per_molecule"``: the :data:`METRIC_KEYS` as float64 arrays [batch],
        and ``"n_molecules"``.
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
    if int(n_virtual) < 1:
        raise ValueError(f"n_virtual must be >= 1, got {n_virtual}")
    if ao_slices is None:
        slices = [None] * b
    elif isinstance(ao_slices, (list, tuple)) and len(ao_slices) and np.ndim(ao_slices[0]) == 2:
        slices = list(ao_slices)
        if len(slices) != b:
            raise ValueError(f"ao_slices: {len(slices)} entries for {b} molecules")
    else:
        slices = [np.asarray(ao_slices)] * b

    per = {k: np.full(b, np.nan) for k in METRIC_KEYS}
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
            for key, value in spectrum_errors(eps_p[j], eps_t[j], int(k), int(n_virtual)).items():
                per[key][i] = value

    out: Dict[str, object] = dict(summarize(per))
    out["per_molecule"] = per
    out["n_molecules"] = b
    return out


def closed_shell_density(H: np.ndarray, S: np.ndarray, n_occ: int) -> np.ndarray:
    """Aufbau density D = 2 C_occ C_occ^T of a Hamiltonian, float64 [n_ao, n_ao].

    ``H`` is symmetrised first (a predicted H may be slightly asymmetric); the
    orbitals solve H C = S C eps like :func:`orbitals`, so they are the ones the
    spectrum metrics see.  With a degenerate HOMO/LUMO the density is not unique.
    """
    H = _to_numpy(H)
    S = _to_numpy(S)
    _, C = orbitals(0.5 * (H + H.T), S)
    c_occ = C[:, :n_occ]
    return 2.0 * c_occ @ c_occ.T


def _mf_settings(settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The SCF settings of a (record's) settings dict; provenance keys dropped."""
    from .data.labelling import DEFAULT_SETTINGS, make_settings
    return make_settings(**{k: v for k, v in dict(settings or {}).items() if k in DEFAULT_SETTINGS})


def density_errors(mf, mol, dm_pred: np.ndarray, dm_true: np.ndarray,
                   energy_pred: Optional[float] = None) -> Dict[str, float]:
    """One molecule's :func:`density_metrics` row from its two densities ``[n_ao, n_ao]``.

    ``mf`` is the labels' mean-field object of ``mol``; ``energy_pred`` is E[dm_pred]
    when the caller already has it (a stored Fock build), else it is evaluated here.
    Returns ``energy_pred``, ``energy_ref``, ``energy_error``, ``energy_abs_error``
    (Hartree) and ``dipole_error`` (Debye).
    """
    e_p = float(mf.energy_tot(dm=dm_pred)) if energy_pred is None else float(energy_pred)
    e_t = float(mf.energy_tot(dm=dm_true))
    mu_p = np.asarray(mf.dip_moment(mol, dm_pred, unit="Debye", verbose=0))
    mu_t = np.asarray(mf.dip_moment(mol, dm_true, unit="Debye", verbose=0))
    return {"energy_pred": e_p, "energy_ref": e_t, "energy_error": e_p - e_t, "energy_abs_error": abs(e_p - e_t),
            "dipole_error": float(np.linalg.norm(mu_p - mu_t))}


def density_metrics(H_pred: ArrayLike, H_true: ArrayLike, atomic_numbers: Sequence[np.ndarray],
                    positions: Sequence[np.ndarray],
                    settings: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]],
                    charges: Union[int, Sequence[int]] = 0) -> Dict[str, object]:
    """Total-energy and dipole errors of the densities of predicted Hamiltonians.

    For each molecule, with D(H) = 2 C_occ C_occ^T the closed-shell aufbau density
    of H (:func:`closed_shell_density`, S from PySCF for the molecule) and the
    labels' functional E[D] evaluated once, non-self-consistently (PySCF
    ``mf.energy_tot(dm=D)`` with ``mf`` from :func:`qhnetv2.data.labelling.make_mf`):

    * ``energy_error`` = E[D(H_pred)] - E_ref, signed, Hartree, with
      ``E_ref`` = E[D(H_true)];
    * ``energy_abs_error`` = |energy_error|;
    * ``dipole_error`` = |mu(D(H_pred)) - mu(D(H_true))|, norm of the vector
      difference, Debye (PySCF ``dip_moment``; the origin drops out of the
      difference because both densities hold the same number of electrons).

    The reference is the *same* functional at the density of the label H, so the
    errors are exactly zero when H_pred == H_true.  When H_true is the Fock
    matrix of a converged SCF in these settings (``qhnetv2 data build``), D(H_true)
    is that SCF's density and E_ref equals the stored label ``energy`` to within
    the SCF convergence; for imported labels (other codes, grids) the two may
    differ, and E_ref is the consistent reference.  Since the SCF density
    minimises E over closed-shell densities, ``energy_error`` is >= 0 (up to
    the label's convergence) and second order in the density error.

    Args:
        H_pred, H_true: per molecule float [n_ao, n_ao] (PySCF AO order, Hartree),
            as for :func:`hamiltonian_metrics`.
        atomic_numbers: per molecule int [n_atoms]; positions: per molecule
            float [n_atoms, 3] Angstrom.
        settings: the labels' settings (``xc``, ``basis``, ``grid_level``, ...;
            see :data:`qhnetv2.data.labelling.DEFAULT_SETTINGS`; provenance keys
            are ignored), one dict shared or one per molecule.
        charges: total charge, int or one per molecule (closed shell only).

    Returns:
        dict with the dataset means of :data:`DENSITY_KEYS`, ``"per_molecule"``:
        those plus ``energy_pred`` and ``energy_ref`` (Hartree) as float64 arrays
        [batch], and ``"n_molecules"``.
    """
    from .data.labelling import build_mol, make_mf

    hp, ht = _as_list(H_pred, "H_pred"), _as_list(H_true, "H_true")
    b = len(ht)
    zs = [np.asarray(z).reshape(-1) for z in atomic_numbers]
    ps = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in positions]
    if not len(hp) == len(zs) == len(ps) == b:
        raise ValueError(f"H_pred, H_true, atomic_numbers and positions must hold the same number of "
                         f"molecules, got {len(hp)}, {b}, {len(zs)}, {len(ps)}")
    if isinstance(settings, Mapping):
        sets = [_mf_settings(settings)] * b
    else:
        sets = [_mf_settings(s) for s in settings]
        if len(sets) != b:
            raise ValueError(f"settings: {len(sets)} entries for {b} molecules")
    qs = np.broadcast_to(np.asarray(charges, dtype=np.int64), (b,))

    keys = DENSITY_KEYS + ("energy_pred", "energy_ref")
    per = {k: np.full(b, np.nan) for k in keys}
    for i in range(b):
        n_el = int(zs[i].sum()) - int(qs[i])
        if n_el <= 0 or n_el % 2:
            raise ValueError(f"molecule {i}: {n_el} electrons (charge {int(qs[i])}); only closed-shell "
                             f"molecules are supported")
        mol = build_mol(zs[i], ps[i], sets[i]["basis"], int(qs[i]))
        if hp[i].shape != (mol.nao, mol.nao) or ht[i].shape != (mol.nao, mol.nao):
            raise ValueError(f"molecule {i}: H_pred {hp[i].shape} / H_true {ht[i].shape} do not match the "
                             f"{mol.nao} AOs of basis {sets[i]['basis']!r}")
        mf = make_mf(mol, sets[i])  # one object: the DFT grid is built once for both densities
        s = mf.get_ovlp()
        dm_p = closed_shell_density(hp[i], s, n_el // 2)
        dm_t = closed_shell_density(ht[i], s, n_el // 2)
        for k, v in density_errors(mf, mol, dm_p, dm_t).items():
            per[k][i] = v

    out: Dict[str, object] = dict(summarize({k: per[k] for k in DENSITY_KEYS}))
    out["per_molecule"] = per
    out["n_molecules"] = b
    return out


#: raw key -> (reporting key, factor); keys ending in ``_mae`` get ``_uEh`` (x 1e6)
_UNITS = {
    "orbital_coefficient_similarity": ("orbital_coefficient_similarity_percent", 100.0),
    "lumo_error": ("lumo_error_eV", HARTREE_TO_EV),
    "gap_error": ("gap_error_eV", HARTREE_TO_EV),
    "gap_error_max": ("gap_error_max_eV", HARTREE_TO_EV),
    "max_orbital_energy_error": ("max_orbital_energy_error_eV", HARTREE_TO_EV),
    "max_orbital_energy_error_max": ("max_orbital_energy_error_max_eV", HARTREE_TO_EV),
    "energy_error": ("energy_error_uEh", 1e6),
    "energy_abs_error": ("energy_abs_error_uEh", 1e6),
    "dipole_error": ("dipole_error_D", 1.0),
}


def to_micro_hartree(metrics: Mapping[str, object]) -> Dict[str, float]:
    """Reporting units of a metrics dict (raw: Hartree / Debye / unitless).

    MAEs (``*_mae``, including ``virtual_orbital_energy_mae``) -> ``*_mae_uEh``
    (micro-Hartree, as the papers print them); ``energy_error`` /
    ``energy_abs_error`` -> ``*_uEh``; ``lumo_error``, ``gap_error``,
    ``gap_error_max``, ``max_orbital_energy_error`` (and ``_max``) -> ``*_eV``;
    ``dipole_error`` -> ``dipole_error_D`` (Debye, unchanged);
    ``orbital_coefficient_similarity`` -> ``*_percent``.  Other keys are dropped.
    """
    out = {}
    for key, value in metrics.items():
        if key in _UNITS:
            name, factor = _UNITS[key]
            out[name] = float(value) * factor
        elif key.endswith("_mae"):
            out[key + "_uEh"] = float(value) * 1e6
    return out
