"""``qhnetv2 predict``: Hamiltonians, orbital energies and HOMO-LUMO gaps of new molecules.

Input: geometry files read by :func:`qhnetv2.data.geometries.read_geometries` (any
format ASE reads: xyz, extxyz, SDF, ...; or SMILES lists ``.smi`` / ``--format smiles``,
one RDKit conformer each, seeded).  Molecule ids are ``<file stem>:<frame, 8 digits>``
as in ``qhnetv2 data build``.

A molecule that cannot be predicted (element outside the model's basis, atoms closer
than 0.3 Angstrom, NaN coordinates, a SMILES RDKit cannot embed, no electrons) is
reported and skipped; the others go on.  A file that cannot be read or holds no
molecule is an error (nothing is written).

Each predicted molecule is compared with the training domain recorded in the
checkpoint (:mod:`qhnetv2.domain`: elements, element-pair distances within the cutoff,
bonding environments, molecule sizes); one outside it is still predicted but flagged:
a :class:`qhnetv2.domain.DomainWarning` (one ``qhnetv2: warning: ...`` line on the
command line) and ``<id>/in_domain`` False with its ``<id>/domain_reasons``.  For a
checkpoint without a domain record every molecule counts as inside (one note says so).

Units: Hartree for H and every orbital energy (``homo``, ``lumo``, ``homo_lumo_gap``),
except the keys ending in ``_eV``; Angstrom for positions (``meta["units"]`` repeats this).

Output: one ``.npz`` (written to a temporary file, then renamed: never half-written),
loadable with ``np.load(path, allow_pickle=False)``:

============================  ==============  =====================================================
key                           shape / dtype   meaning
============================  ==============  =====================================================
``ids``                       [M] str         predicted molecule ids, input order
``failed_ids``                [F] str         skipped molecules
``failed_reasons``            [F] str         why each was skipped
``meta``                      [] str          JSON: checkpoint, basis, target, units (per key),
                                              settings, domain_checked (bool: the checkpoint
                                              records a training domain)
``<id>``                      [n_ao, n_ao]    H, float64, Hartree, PySCF AO order (so the file
                                              works as ``qhnetv2 data scf-bench --pred``)
``<id>/atomic_numbers``       [n_atoms] int64
``<id>/positions``            [n_atoms, 3]    Angstrom (the SMILES conformer for SMILES input)
``<id>/charge``               [] int64        total charge (extxyz ``charge``, SMILES formal charge)
``<id>/n_electrons``          [] int64        sum(Z) - charge
``<id>/orbital_energies``     [n_ao] float64  eigenvalues of H C = S C eps (Hartree, ascending;
                                              S = PySCF ``int1e_ovlp`` in the model's basis)
``<id>/homo``                 [] float64      eps[ceil(n_electrons / 2) - 1] (Hartree)
``<id>/lumo``                 [] float64      the next orbital energy (NaN if none)
``<id>/homo_lumo_gap``        [] float64      lumo - homo (Hartree)
``<id>/homo_lumo_gap_eV``     [] float64      the same gap in eV (what the command prints)
``<id>/in_domain``            [] bool         inside the checkpoint's training domain (True when
                                              the checkpoint records none)
``<id>/domain_reasons``       [] str          JSON list of why not (``[]`` when inside), e.g.
                                              ``["element F not in the training set (...)"]``
``<id>/self_consistent``      [] int8         1: one Fock build from the predicted density moves
                                              the gap by at most 0.5 eV; 0: it moves it more (the
                                              frontier spectrum is not trustworthy); -1: not
                                              checked (open shell, ``--no-check``, no functional)
``<id>/gap_shift_eV``         [] float64      how far that Fock build moves the gap (NaN: unchecked)
``<id>/homo_lumo_gap_refined_eV`` [] float64  the gap of ``F[D(H_pred)]`` (NaN: unchecked)
``<id>/hamiltonian_network``  [n_ao, n_ao]    with ``--refine`` only: the unrefined prediction
                                              (``<id>`` then holds ``F[D(H_pred)]``)
============================  ==============  =====================================================

**Self-consistency** (:mod:`qhnetv2.consistency`, on by default, one Fock build per
molecule with the checkpoint's functional): a prediction with small entry-wise errors
can still carry a spurious virtual orbital (an error along a poorly conditioned overlap
direction); the domain check cannot see that, because it is about the prediction, not
the input.  Such molecules get a warning line and ``self_consistent`` 0.  ``--refine``
returns ``F[D(H_pred)]`` itself, the first SCF iteration from the prediction, whose
spectrum does not have that failure (measured in docs/model.md, "Self-consistency").

For odd electron counts ``homo`` is the singly occupied orbital (the model was trained
on closed-shell molecules; such predictions are outside its training domain).
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .atomic import atomic_file

HARTREE_TO_EV = 27.211386245988


def molecule_problem(model, atomic_numbers: np.ndarray, positions: np.ndarray, charge: int = 0) -> Optional[str]:
    """Why the model cannot predict this molecule, or None."""
    import torch

    z = np.asarray(atomic_numbers).reshape(-1)
    pos = np.asarray(positions, dtype=np.float64)
    if z.size == 0:
        return "empty geometry: no atoms"
    missing = sorted(set(int(a) for a in z) - set(model.config.elements))
    if missing:
        return (f"element(s) Z={missing} not handled by the model (basis {model.config.basis!r}, "
                f"elements {sorted(model.config.elements)})")
    try:
        model.check_geometry(torch.as_tensor(pos), torch.zeros(z.size, dtype=torch.long))
    except ValueError as exc:
        return str(exc)
    if int(z.sum()) - int(charge) <= 0:
        return f"no electrons (charge {charge})"
    return None


def overlap_matrix(atomic_numbers, positions, basis: str, charge: int = 0) -> np.ndarray:
    """PySCF's AO overlap ``int1e_ovlp`` (spherical AOs, PySCF order), any electron count."""
    from pyscf import gto

    z = np.asarray(atomic_numbers).reshape(-1)
    nelec = int(z.sum()) - int(charge)
    mol = gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, np.asarray(positions, dtype=np.float64))],
                basis=basis, unit="Angstrom", charge=int(charge), spin=nelec % 2, cart=False, verbose=0)
    return np.asarray(mol.intor("int1e_ovlp"), dtype=np.float64)


def orbital_summary(H: np.ndarray, S: np.ndarray, n_electrons: int) -> Dict[str, Any]:
    """Orbital energies (QH9's generalized eigen-solve), HOMO, LUMO and gap, Hartree."""
    from .metrics import orbitals

    eps, _ = orbitals(np.asarray(H, dtype=np.float64), np.asarray(S, dtype=np.float64))
    return frontier_summary(eps, n_electrons)


def frontier_summary(eps: np.ndarray, n_electrons: int) -> Dict[str, Any]:
    """:func:`orbital_summary` from already solved orbital energies ``eps`` ``[n_ao]`` (Hartree, ascending)."""
    eps = np.asarray(eps, dtype=np.float64)
    i_homo = (int(n_electrons) + 1) // 2 - 1
    homo = float(eps[i_homo]) if 0 <= i_homo < eps.size else float("nan")
    lumo = float(eps[i_homo + 1]) if i_homo + 1 < eps.size else float("nan")
    return {"orbital_energies": eps, "homo": homo, "lumo": lumo, "homo_lumo_gap": lumo - homo}


def write_npz_atomic(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file in the same directory, fsync, rename."""
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def predict_geometries(model_or_ckpt, geometries: Sequence[str], out: str, fmt: Optional[str] = None,
                       batch_size: int = 16, device: Optional[str] = None,
                       extra: Optional[Dict[str, Any]] = None, smiles_seed: int = 0,
                       progress: bool = False, check: bool = True, refine: bool = False) -> Dict[str, Any]:
    """Predict every molecule of ``geometries`` and write ``out`` (see the module doc).

    Returns a summary: ``n_molecules``, ``n_ok``, ``n_failed``, ``failures`` {id: reason},
    ``out``, ``gaps_eV`` {id: HOMO-LUMO gap in eV}, ``mean_gap_eV``, ``out_of_domain``
    {id: [reasons]} (predicted, but outside the training domain; each also a
    :class:`qhnetv2.domain.DomainWarning`), ``domain_checked``, ``not_self_consistent``
    {id: gap shift in eV} and ``consistency_checked`` (``check``; ``refine`` implies it).
    """
    import warnings
    from .data.geometries import embed_smiles, read_geometries
    from .inference import domain_flags, model_and_extra, predict_hamiltonians, target_of, training_info

    if isinstance(geometries, str):
        geometries = [geometries]
    if not str(out).endswith(".npz"):
        raise ValueError(f"--out must end in .npz, got {out!r}")
    items = []
    for path in geometries:  # one file at a time, so an empty one is named
        file_items, _ = read_geometries([path], fmt)
        if not file_items:
            raise ValueError(f"geometry file {path!r} holds no molecules")
        items.extend(file_items)
    ids = [it.mol_id for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"two input files give the same molecule ids (e.g. {dup[0]!r}): give files distinct names")

    model, extra, checkpoint = model_and_extra(model_or_ckpt, device, extra)
    target = target_of(extra)
    basis = model.config.basis
    info = training_info(model, extra)
    domain_checked = info["domain"] is not None
    check = bool(check or refine)
    scf_settings = dict(info.get("settings") or {})
    if check and not scf_settings.get("xc"):
        if refine:
            raise ValueError("--refine needs the functional the labels were made with; the checkpoint "
                             "records no SCF settings")
        warnings.warn("the checkpoint records no SCF settings: the self-consistency check is skipped",
                      stacklevel=2)
        check = False
    if check:
        from .consistency import CONSISTENCY_TOL_EV, ConsistencyWarning, check_predictions
        from .inference import base_settings
        scf_settings = base_settings(model, {"settings": scf_settings})
    not_consistent: Dict[str, float] = {}

    failures: Dict[str, str] = {}
    ready: List[Dict[str, Any]] = []
    for it in items:
        z, pos, charge = it.atomic_numbers, it.positions, int(it.charge)
        if it.smiles is not None:
            try:
                z, pos, charge = embed_smiles(it.smiles, seed=smiles_seed)
            except Exception as exc:
                failures[it.mol_id] = f"SMILES {it.smiles!r}: {exc}"
                continue
        problem = molecule_problem(model, z, pos, charge)
        if problem is not None:
            failures[it.mol_id] = problem
            continue
        ready.append({"id": it.mol_id, "atomic_numbers": np.asarray(z, dtype=np.int64),
                      "positions": np.asarray(pos, dtype=np.float64), "charge": int(charge)})

    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(ready), desc="predict", unit="mol", file=sys.stderr)
        except ImportError:
            bar = None
    arrays: Dict[str, np.ndarray] = {}
    done: List[str] = []
    # flag (not skip) molecules outside the training domain, before the slow part
    flags = domain_flags(model, extra, [g["atomic_numbers"] for g in ready], [g["positions"] for g in ready],
                         ids=[g["id"] for g in ready], source=checkpoint)
    flag_of = {g["id"]: f for g, f in zip(ready, flags)}

    def _predict(group):
        return predict_hamiltonians(model, extra, [g["atomic_numbers"] for g in group],
                                    [g["positions"] for g in group], charges=[g["charge"] for g in group],
                                    batch_size=batch_size)

    for start in range(0, len(ready), batch_size):
        group = ready[start:start + batch_size]
        try:
            hs = _predict(group)
        except Exception:  # find the culprit: one at a time, the others go on
            hs = []
            for g in group:
                try:
                    hs.append(_predict([g])[0])
                except Exception as exc:
                    failures[g["id"]] = f"{type(exc).__name__}: {exc}"
                    hs.append(None)
        for g, h in zip(group, hs):
            if h is None:
                continue
            n_el = int(g["atomic_numbers"].sum()) - g["charge"]
            key = g["id"]
            c = None
            if check:
                try:
                    c = check_predictions([h], [g["atomic_numbers"]], [g["positions"]], scf_settings,
                                          charges=[g["charge"]])[0]
                except Exception as exc:
                    failures[key] = f"self-consistency check: {type(exc).__name__}: {exc}"
                    continue
                if c["self_consistent"] is False:
                    not_consistent[key] = c["gap_shift_eV"]
                    warnings.warn(f"molecule {key}: the prediction is not self-consistent: one Fock build from "
                                  f"its density moves the HOMO-LUMO gap by {c['gap_shift_eV']:.2f} eV (more than "
                                  f"{CONSISTENCY_TOL_EV} eV); its orbital spectrum is not trustworthy"
                                  + ("" if refine else " (--refine gives F[D(H_pred)])"), ConsistencyWarning,
                                  stacklevel=2)
            # the check already solved H C = S C eps (and F1's): reuse it, no second overlap / eigen-solve
            eps = None if c is None else c.get("mo_energy")
            if refine and c is not None and c["refined"] is not None:
                arrays[f"{key}/hamiltonian_network"] = np.asarray(h, dtype=np.float64)
                h = c["refined"]
                eps = c["mo_energy_refined"]
            try:
                if eps is None:  # not checked (--no-check, open shell): solve here
                    S = overlap_matrix(g["atomic_numbers"], g["positions"], basis, g["charge"])
                    orb = orbital_summary(h, S, n_el)
                else:
                    orb = frontier_summary(eps, n_el)
            except Exception as exc:
                failures[key] = f"orbital energies: {type(exc).__name__}: {exc}"
                arrays.pop(f"{key}/hamiltonian_network", None)
                continue
            arrays[key] = np.asarray(h, dtype=np.float64)
            ok = None if c is None else c["self_consistent"]
            arrays[f"{key}/self_consistent"] = np.int8(-1 if ok is None else int(ok))
            arrays[f"{key}/gap_shift_eV"] = np.float64(c["gap_shift_eV"] if ok is not None else math.nan)
            arrays[f"{key}/homo_lumo_gap_refined_eV"] = np.float64(c["gap_refined_eV"] if ok is not None
                                                                   else math.nan)
            arrays[f"{key}/atomic_numbers"] = g["atomic_numbers"]
            arrays[f"{key}/positions"] = g["positions"]
            arrays[f"{key}/charge"] = np.int64(g["charge"])
            arrays[f"{key}/n_electrons"] = np.int64(n_el)
            arrays[f"{key}/orbital_energies"] = orb["orbital_energies"]
            for k in ("homo", "lumo", "homo_lumo_gap"):
                arrays[f"{key}/{k}"] = np.float64(orb[k])
            arrays[f"{key}/homo_lumo_gap_eV"] = np.float64(orb["homo_lumo_gap"] * HARTREE_TO_EV)
            arrays[f"{key}/in_domain"] = np.bool_(flag_of[key]["in_domain"])
            arrays[f"{key}/domain_reasons"] = np.array(json.dumps(flag_of[key]["domain_reasons"]))
            done.append(key)
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()

    order = {i: k for k, i in enumerate(ids)}
    done.sort(key=order.__getitem__)
    failed = sorted(failures, key=order.__getitem__)
    meta = {"checkpoint": checkpoint, "basis": basis, "target": target, "geometries": list(geometries),
            "units": {"hamiltonian": "Hartree", "positions": "Angstrom", "orbital_energies": "Hartree",
                      "homo": "Hartree", "lumo": "Hartree", "homo_lumo_gap": "Hartree",
                      "homo_lumo_gap_eV": "eV"},
            "ao_order": "pyscf", "settings": (extra or {}).get("settings"), "domain_checked": domain_checked,
            "consistency_checked": check, "refined": bool(refine)}
    arrays["ids"] = np.array(done, dtype=str)
    arrays["failed_ids"] = np.array(failed, dtype=str)
    arrays["failed_reasons"] = np.array([failures[i] for i in failed], dtype=str)
    arrays["meta"] = np.array(json.dumps(meta, default=str))
    write_npz_atomic(out, arrays)
    gaps = [float(arrays[f"{i}/homo_lumo_gap"]) for i in done]
    return {"out": out, "n_molecules": len(items), "n_ok": len(done), "n_failed": len(failed),
            "failures": {i: failures[i] for i in failed},
            "gaps_eV": {i: g * HARTREE_TO_EV for i, g in zip(done, gaps)},
            "mean_gap_eV": float(np.mean(gaps)) * HARTREE_TO_EV if gaps else math.nan,
            "out_of_domain": {i: flag_of[i]["domain_reasons"] for i in done if not flag_of[i]["in_domain"]},
            "domain_checked": domain_checked, "consistency_checked": check,
            "not_self_consistent": {i: not_consistent[i] for i in done if i in not_consistent}}
