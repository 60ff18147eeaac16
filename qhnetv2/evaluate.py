"""``qhnetv2 evaluate``: the QH9 benchmark of a trained model on a labelled dataset.

* Metrics (:mod:`qhnetv2.metrics`, QH9 definitions, float64, per molecule then
  averaged): Hamiltonian MAE, diagonal-block and off-diagonal-block MAE, MAE of
  the occupied orbital energies (micro-Hartree) and the occupied orbital
  coefficient similarity (percent).
* Spectrum metrics (same eigenvalues): LUMO error, HOMO-LUMO gap error (mean and
  worst molecule), worst orbital-energy error (eV), and the MAE of the lowest 10
  virtual orbital energies (micro-Hartree).
* Density metrics (the definitions of :func:`qhnetv2.metrics.density_metrics`, one
  PySCF Fock build per density, on the first ``density`` molecules, all by default):
  total-energy error E[D(H_pred)] - E[D(H_true)] with the labels' functional (signed
  mean and mean absolute, micro-Hartree) and dipole error (Debye).  With ``refine``
  the refinement's Fock build F[D(H_pred)] is the one these use (not built twice).
* With ``scf=N``: the QH9 DFT-acceleration protocol on the first N evaluated
  molecules, with the dataset's own SCF settings: SCF cycles started from the
  predicted Hamiltonian vs from PySCF's ``minao`` guess, and |E(pred) - E(minao)|,
  which must stay below the tolerance (10 x ``conv_tol``): a better start must not
  change the answer.

A checkpoint trained on a residual target gets its base Hamiltonian added back
(:func:`qhnetv2.inference.predict_hamiltonians`).  Reusable from Python::

    from qhnetv2.evaluate import evaluate
    result = evaluate("model.pt", "data/water", ids=None, scf=5)
    result["metrics"]["hamiltonian_mae_uEh"]
"""
from __future__ import annotations

import math
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

#: keys of ``result["metrics"]`` (micro-Hartree / percent as the papers print them; eV; Debye),
#: see :func:`qhnetv2.metrics.to_micro_hartree`; the density ones only when they were computed
METRIC_KEYS = ("hamiltonian_mae_uEh", "hamiltonian_diagonal_mae_uEh", "hamiltonian_off_diagonal_mae_uEh",
               "orbital_energy_mae_uEh", "orbital_coefficient_similarity_percent",
               "virtual_orbital_energy_mae_uEh", "lumo_error_eV", "gap_error_eV", "gap_error_max_eV",
               "max_orbital_energy_error_eV", "max_orbital_energy_error_max_eV",
               "energy_error_uEh", "energy_abs_error_uEh", "dipole_error_D")

#: the SCF settings of a dataset's ``__meta__`` that configure the SCF
SCF_SETTING_KEYS = ("xc", "basis", "grid_level", "conv_tol", "conv_tol_grad", "max_cycle", "init_guess")


def _json_safe(obj):
    """NaN/inf -> None, NumPy scalars -> Python, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def _ao_slices(layout, atomic_numbers) -> np.ndarray:
    counts = np.array([layout.n_ao(int(z)) for z in atomic_numbers], dtype=np.int64)
    stop = np.cumsum(counts)
    return np.stack([stop - counts, stop], axis=1)


def check_dataset_basis(model, reader) -> None:
    """Refuse a dataset labelled in another basis, or with elements the model lacks."""
    from .inference import normalize_basis

    settings = reader.meta.get("settings") or {}
    data_basis = settings.get("basis") or reader.meta.get("basis")
    if data_basis is None:
        raise ValueError(f"dataset {reader.path!r} does not record its basis")
    if normalize_basis(data_basis) != normalize_basis(model.config.basis):
        raise ValueError(f"basis mismatch: the checkpoint was trained for basis {model.config.basis!r} "
                         f"but dataset {reader.path!r} is labelled with basis {data_basis!r}")


def _scf_settings(reader) -> Dict[str, Any]:
    settings = {k: v for k, v in (reader.meta.get("settings") or {}).items() if k in SCF_SETTING_KEYS}
    settings.setdefault("conv_tol", 1e-12)
    return settings


def _same_scf(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Do two settings dicts configure the same SCF (functional, basis up to spelling, grid, ...)?"""
    from .consistency import scf_settings
    from .inference import normalize_basis

    a, b = scf_settings(a), scf_settings(b)
    return dict(a, basis=normalize_basis(a["basis"])) == dict(b, basis=normalize_basis(b["basis"]))


def _fock_builds(preds, recs, charges, rows: Sequence[int], settings: Sequence[Dict[str, Any]],
                 shared: Optional[Dict[int, Any]] = None) -> Dict[int, Any]:
    """``{row: (build, settings)}``: the one Fock build ``F[D(H_pred)]`` of each molecule ``recs[row]``.

    ``build`` is :func:`qhnetv2.consistency.fock_build` of ``preds[row]`` with ``settings[k]``
    for ``rows[k]`` (None: open shell).  An entry of ``shared`` (the same form) made with the
    same SCF settings is reused, not redone: the refinement's build serves the density
    metrics, so D(H_pred) and F[D(H_pred)] are built once per molecule.
    """
    from .consistency import fock_build

    out: Dict[int, Any] = {}
    for j, st in zip(rows, settings):
        b, b_settings = (shared or {}).get(j, (None, None))
        if b is not None and _same_scf(b_settings, st):
            out[j] = (b, b_settings)
        else:
            out[j] = (fock_build(preds[j], recs[j]["atomic_numbers"], recs[j]["positions"], st, charges[j]), st)
    return out


def _density_errors(build, mol_id, n_electrons: int, charge: int, h_true: np.ndarray) -> Dict[str, float]:
    """:func:`qhnetv2.metrics.density_metrics`'s per-molecule errors from a :class:`FockBuild` of H_pred.

    The same definitions (``energy_error`` = E[D(H_pred)] - E[D(H_true)], its absolute value,
    ``dipole_error`` = |mu(D(H_pred)) - mu(D(H_true))| Debye, one ``mf`` for both densities),
    with E[D(H_pred)] from the build's stored potential instead of a second Fock build.
    """
    from .metrics import closed_shell_density, density_errors

    if build is None:
        raise ValueError(f"molecule {mol_id!r}: {n_electrons} electrons (charge {charge}); only closed-shell "
                         f"molecules are supported")
    dm_t = closed_shell_density(h_true, build.overlap, build.n_occ)
    row = density_errors(build.mf, build.mol, build.density, dm_t, energy_pred=build.energy())
    return {k: row[k] for k in ("energy_error", "energy_abs_error", "dipole_error")}


def scf_acceleration(items: Sequence[Dict[str, Any]], settings: Dict[str, Any],
                     energy_tol: Optional[float] = None) -> Dict[str, Any]:
    """QH9 DFT acceleration: SCF from each predicted H vs from ``minao``.

    ``items``: dicts with ``id``, ``atomic_numbers``, ``positions`` (Angstrom),
    ``hamiltonian`` (the prediction), ``charge``.  Returns the summary (mean cycles,
    mean per-molecule ratio cycles(pred)/cycles(minao), ratio of totals, energy
    differences, convergence counts) and ``per_molecule`` results; a molecule whose
    SCF raises is recorded with its ``error`` and left out of the means.
    """
    from .scf import run_scf

    if energy_tol is None:
        energy_tol = 10.0 * float(settings.get("conv_tol", 1e-12))
    per: List[Dict[str, Any]] = []
    for it in items:
        row: Dict[str, Any] = {"id": it["id"]}
        try:
            for name, guess in (("pred", it["hamiltonian"]), ("minao", "minao")):
                r = run_scf(it["atomic_numbers"], it["positions"], guess, settings, int(it.get("charge", 0)))
                row[name] = {"cycles": r.cycles, "energy": r.energy, "converged": r.converged}
        except Exception as exc:  # one bad molecule does not stop the benchmark
            row = {"id": it["id"], "error": f"{type(exc).__name__}: {exc}"}
        per.append(row)
    ok = [r for r in per if "error" not in r]
    out: Dict[str, Any] = {"n_molecules": len(per), "n_errors": len(per) - len(ok), "energy_tol": energy_tol,
                           "settings": dict(settings)}
    if ok:
        cp = np.array([r["pred"]["cycles"] for r in ok], dtype=float)
        cm = np.array([r["minao"]["cycles"] for r in ok], dtype=float)
        de = np.array([abs(r["pred"]["energy"] - r["minao"]["energy"]) for r in ok])
        out.update({
            "mean_cycles_pred": float(cp.mean()),
            "mean_cycles_minao": float(cm.mean()),
            "ratio_pred_over_minao": float(np.mean(cp / np.maximum(cm, 1))),
            "ratio_of_totals_pred_over_minao": float(cp.sum() / max(cm.sum(), 1)),
            "max_abs_energy_diff_pred_vs_minao": float(de.max()),
            "mean_abs_energy_diff_pred_vs_minao": float(de.mean()),
            "n_energy_diff_above_tol": int((de > energy_tol).sum()),
            "n_not_converged_pred": int(sum(not r["pred"]["converged"] for r in ok)),
            "n_not_converged_minao": int(sum(not r["minao"]["converged"] for r in ok)),
        })
    out["per_molecule"] = per
    return out


def evaluate(model_or_ckpt, data_dir: str, ids: Optional[Sequence[str]] = None, scf: int = 0,
             batch_size: int = 8, device: Optional[str] = None, extra: Optional[Dict[str, Any]] = None,
             progress: bool = False, energy_tol: Optional[float] = None,
             density: Optional[int] = None, refine: bool = False) -> Dict[str, Any]:
    """Evaluate a model on (a subset of) a labelled dataset.

    Args:
        model_or_ckpt: a :class:`qhnetv2.model.QHNetV2` or a checkpoint path.
        data_dir: dataset directory (``qhnetv2 data build`` / ``import``).
        ids: molecule ids to evaluate (default: all labelled molecules).
        scf: run the DFT-acceleration protocol on the first ``scf`` molecules.
        extra: for a model object, its checkpoint ``extra`` (``target``, ``settings``);
            read from the file for a checkpoint path.
        device: ``cpu``, ``cuda``, ... (default: keep the model's device; for a path, auto).
        density: the density metrics (energy, dipole) on the first ``density``
            molecules; ``None``: all, ``0``: none.
        refine: also the self-consistency check and the metrics of the one-Fock-build
            Hamiltonian ``F[D(H_pred)]`` (:mod:`qhnetv2.consistency`; one Fock build per
            molecule): ``result["refined"]`` and, per molecule, ``self_consistent``,
            ``gap_shift_eV``, ``refined_gap_error_eV``, ``refined_hamiltonian_mae_uEh``.
    Returns:
        ``{"metrics": {<METRIC_KEYS>}, "metrics_hartree": {...}, "per_molecule": [...],
        "n_molecules", "n_density_molecules", "basis", "target", "dataset", "checkpoint",
        "scf": {...} or None}``.  ``metrics_hartree`` has the raw values (Hartree,
        Debye, unitless; keys of :data:`qhnetv2.metrics.METRIC_KEYS` and
        :data:`qhnetv2.metrics.DENSITY_KEYS`, plus ``gap_error_max`` and
        ``max_orbital_energy_error_max``); ``metrics`` and the ``per_molecule``
        rows are in reporting units (:func:`qhnetv2.metrics.to_micro_hartree`).
    """
    from .data.store import HamiltonianReader
    from .inference import model_and_extra, predict_hamiltonians, target_of
    from .metrics import DENSITY_KEYS, METRIC_KEYS as RAW_KEYS, hamiltonian_metrics, summarize, to_micro_hartree

    model, extra, checkpoint = model_and_extra(model_or_ckpt, device, extra)
    target = target_of(extra)
    from .inference import domain_flags
    in_domain: List[Dict[str, Any]] = []  # per molecule vs the training domain (qhnetv2.domain)
    if scf < 0:
        raise ValueError(f"scf must be >= 0, got {scf}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if density is not None and density < 0:
        raise ValueError(f"density must be >= 0 or None (all), got {density}")
    reader = HamiltonianReader(data_dir, ids=list(ids) if ids is not None else None)
    check_dataset_basis(model, reader)
    if len(reader) == 0:
        raise ValueError(f"nothing to evaluate: no molecules selected in {data_dir!r}")
    known = set(model.config.elements)
    layout = model.layout

    n_density = len(reader) if density is None else min(int(density), len(reader))
    meta_settings = dict(reader.meta.get("settings") or {})
    keys = RAW_KEYS + (DENSITY_KEYS if n_density else ())
    per_values: Dict[str, List[float]] = {k: [] for k in keys}
    refined_values: Dict[str, List[float]] = {k: [] for k in RAW_KEYS}
    consistency: List[Dict[str, Any]] = []
    mol_ids: List[str] = []
    scf_items: List[Dict[str, Any]] = []
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(reader), desc="evaluate", unit="mol", file=sys.stderr)
        except ImportError:
            bar = None
    for start in range(0, len(reader), batch_size):
        recs = [reader[i] for i in range(start, min(start + batch_size, len(reader)))]
        for rec in recs:
            missing = sorted(set(int(z) for z in rec["atomic_numbers"]) - known)
            if missing:
                raise ValueError(f"molecule {rec['id']!r} has elements {missing} the model does not "
                                 f"handle (model elements {sorted(known)})")
        charges = [int((rec.get("settings") or {}).get("charge", 0)) for rec in recs]
        preds = predict_hamiltonians(model, extra, [r["atomic_numbers"] for r in recs],
                                     [r["positions"] for r in recs], charges=charges, batch_size=batch_size)
        for rec, h in zip(recs, preds):
            if h.shape != rec["hamiltonian"].shape:
                raise ValueError(f"molecule {rec['id']!r}: the model predicts {h.shape[0]} AOs but the label "
                                 f"has {rec['hamiltonian'].shape[0]}: the basis layouts differ")
        n_occ = [(int(np.sum(r["atomic_numbers"])) - q) // 2 for r, q in zip(recs, charges)]
        m = hamiltonian_metrics(preds, [r["hamiltonian"] for r in recs], [r["overlap"] for r in recs], n_occ,
                                ao_slices=[_ao_slices(layout, r["atomic_numbers"]) for r in recs])
        for k in RAW_KEYS:
            per_values[k].extend(float(v) for v in m["per_molecule"][k])
        builds: Dict[int, Any] = {}  # row -> (FockBuild of D(H_pred), its settings), shared below
        if refine:
            from .consistency import ARRAY_KEYS, consistency_row

            builds = _fock_builds(preds, recs, charges, range(len(recs)),
                                  [dict(meta_settings, basis=model.config.basis)] * len(recs))
            checks = [consistency_row(h, builds[j][0]) for j, h in enumerate(preds)]
            # an open-shell molecule has no refinement: its prediction stands in (and is counted as such)
            refined = [c["refined"] if c["refined"] is not None else h for c, h in zip(checks, preds)]
            mr = hamiltonian_metrics(refined, [r["hamiltonian"] for r in recs], [r["overlap"] for r in recs], n_occ,
                                     ao_slices=[_ao_slices(layout, r["atomic_numbers"]) for r in recs])
            for k in RAW_KEYS:
                refined_values[k].extend(float(v) for v in mr["per_molecule"][k])
            consistency.extend({k: v for k, v in c.items() if k not in ARRAY_KEYS} for c in checks)
        if n_density:
            # molecules past the first n_density get NaN (left out of the means, null in the JSON)
            sel = [j for j in range(len(recs)) if start + j < n_density]
            # the record's own settings (its functional, basis, grid) over the dataset's; the
            # refinement's Fock build of D(H_pred) is reused where those are the same settings
            dbuilds = _fock_builds(preds, recs, charges, sel,
                                   [dict(meta_settings, **(recs[j].get("settings") or {})) for j in sel], builds)
            vals = {k: [float("nan")] * len(recs) for k in DENSITY_KEYS}
            for j in sel:
                n_el = int(np.sum(recs[j]["atomic_numbers"])) - charges[j]
                row = _density_errors(dbuilds[j][0], recs[j]["id"], n_el, charges[j], recs[j]["hamiltonian"])
                for k in DENSITY_KEYS:
                    vals[k][j] = float(row[k])
            for k in DENSITY_KEYS:
                per_values[k].extend(vals[k])
        mol_ids.extend(r["id"] for r in recs)
        in_domain.extend(domain_flags(model, extra, [r["atomic_numbers"] for r in recs], [r["positions"] for r in recs],
                                      ids=[r["id"] for r in recs], source=checkpoint))
        for rec, h, q in zip(recs, preds, charges):
            if len(scf_items) < scf:
                scf_items.append({"id": rec["id"], "atomic_numbers": rec["atomic_numbers"],
                                  "positions": rec["positions"], "hamiltonian": h, "charge": q})
        if bar is not None:
            bar.update(len(recs))
    if bar is not None:
        bar.close()

    means = summarize(per_values)
    per_molecule = []
    for i, mol_id in enumerate(mol_ids):
        row = {"id": mol_id}
        row.update(to_micro_hartree({k: per_values[k][i] for k in keys}))
        row.update(in_domain[i])  # in_domain, domain_reasons (DomainWarning for each outside)
        if refine:
            c = consistency[i]
            row["self_consistent"] = c.get("self_consistent")
            row["gap_shift_eV"] = c.get("gap_shift_eV", float("nan"))
            r = to_micro_hartree({k: refined_values[k][i] for k in ("hamiltonian_mae", "gap_error")})
            row["refined_hamiltonian_mae_uEh"] = r["hamiltonian_mae_uEh"]
            row["refined_gap_error_eV"] = r["gap_error_eV"]
        per_molecule.append(row)
    result: Dict[str, Any] = {
        "checkpoint": checkpoint,
        "dataset": str(data_dir),
        "basis": model.config.basis,
        "target": target,
        "n_molecules": len(mol_ids),
        "n_out_of_domain": sum(not f["in_domain"] for f in in_domain),
        "n_density_molecules": n_density,
        "metrics": to_micro_hartree(means),
        "metrics_hartree": means,
        "per_molecule": per_molecule,
        "scf": None,
        "refined": None,
    }
    if refine:
        from .consistency import CONSISTENCY_TOL_EV

        rmeans = summarize(refined_values)
        result["refined"] = {
            "what": "F[D(H_pred)]: one Fock build from the predicted density (qhnetv2.consistency)",
            "metrics": to_micro_hartree(rmeans), "metrics_hartree": rmeans,
            "n_not_self_consistent": sum(c.get("self_consistent") is False for c in consistency),
            "n_not_checked": sum(c.get("self_consistent") is None for c in consistency),
            "tol_eV": CONSISTENCY_TOL_EV}
    if scf:
        result["scf"] = scf_acceleration(scf_items, _scf_settings(reader), energy_tol=energy_tol)
    return result


def write_result(result: Dict[str, Any], path: str) -> None:
    """Write an :func:`evaluate` result as strict JSON (NaN -> null), atomically."""
    from .data.split import write_json_atomic

    write_json_atomic(path, _json_safe(result))


def format_result(result: Dict[str, Any]) -> str:
    """Human-readable summary of an :func:`evaluate` result."""
    lines = [f"evaluated {result['n_molecules']} molecules of {result['dataset']} "
             f"(basis {result['basis']}, target {result['target']})"]
    for k in METRIC_KEYS:
        if k in result["metrics"]:  # older results / density off: print what is there
            v = result["metrics"][k]
            lines.append(f"  {k:42s} {float('nan') if v is None else v:12.4f}")
    if result.get("n_density_molecules") not in (None, result["n_molecules"]):
        lines.append(f"  (energy and dipole errors on the first {result['n_density_molecules']} molecules)")
    rf = result.get("refined")
    if rf:
        lines.append(f"after one Fock build from the predicted density (F[D(H_pred)]); "
                     f"{rf['n_not_self_consistent']} molecules not self-consistent "
                     f"(gap moves more than {rf['tol_eV']} eV):")
        for k in ("hamiltonian_mae_uEh", "orbital_energy_mae_uEh", "virtual_orbital_energy_mae_uEh",
                  "lumo_error_eV", "gap_error_eV", "gap_error_max_eV", "max_orbital_energy_error_max_eV"):
            if k in rf["metrics"]:
                lines.append(f"  refined {k:34s} {rf['metrics'][k]:12.4f}")
    s = result.get("scf")
    if s:
        lines.append(f"DFT acceleration on {s['n_molecules']} molecules ({s['n_errors']} errors):")
        for k in ("mean_cycles_pred", "mean_cycles_minao", "ratio_pred_over_minao",
                  "ratio_of_totals_pred_over_minao", "max_abs_energy_diff_pred_vs_minao",
                  "n_energy_diff_above_tol", "n_not_converged_pred", "n_not_converged_minao"):
            if k in s:
                v = s[k]
                lines.append(f"  {k:42s} {v:12.6g}" if isinstance(v, float) else f"  {k:42s} {v:12d}")
        lines.append(f"  {'energy_tol':42s} {s['energy_tol']:12.3g}")
    return "\n".join(lines)
