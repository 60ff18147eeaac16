"""``qhnetv2 data scf-bench``: the QH9 DFT-acceleration protocol.

For every molecule the SCF (with the dataset's own settings) is run three
times: from the predicted Hamiltonian's density, from PySCF's ``minao`` guess
and from the ``1e`` (core Hamiltonian) guess.  Reported, as in the QH9 paper:
mean cycles of each, the mean per-molecule ratio cycles(pred) / cycles(guess)
(and the ratio of totals), and |E(pred) - E(minao)|, which must stay within
the energy tolerance: a better start must not change the answer.

Per-molecule results are appended to ``<out>.jsonl`` as they finish (flushed
and fsynced), so a killed benchmark resumes where it stopped; the summary is
written atomically to ``<out>`` at the end.
"""
from __future__ import annotations

import json
import os
import zlib
from typing import Any, Dict, List, Optional

import numpy as np

from .conventions import check_convention, to_pyscf
from .parallel import run_tasks
from .split import write_json_atomic
from .store import HamiltonianReader, is_dataset

GUESSES = ("minao", "1e")


class _PredictionSource:
    """Predicted Hamiltonians by molecule id: ``exact`` (the labels), another
    dataset directory (its ``hamiltonian`` field) or an ``.npz`` keyed by id."""

    def __init__(self, pred: str):
        self.pred = pred
        self.reader = None
        self.npz = None
        if pred == "exact":
            return
        if is_dataset(pred):
            self.reader = HamiltonianReader(pred)
        elif pred.endswith(".npz") and os.path.isfile(pred):
            self.npz = np.load(pred, allow_pickle=False)
        else:
            raise ValueError(f"--pred must be 'exact', a dataset directory or an .npz "
                             f"file keyed by molecule id; got {pred!r}")

    def get(self, mol_id: str, record: Dict[str, Any]) -> np.ndarray:
        if self.reader is not None:
            return self.reader.read_field(mol_id, "hamiltonian")
        if self.npz is not None:
            if mol_id not in self.npz.files:
                raise ValueError(f"--pred {self.pred!r} has no Hamiltonian for {mol_id!r}")
            return self.npz[mol_id]
        return record["hamiltonian"]


def bench_task(task: Dict[str, Any]) -> Dict[str, Any]:
    """Worker: three SCF runs of one molecule; never raises."""
    from ..scf import run_scf
    out: Dict[str, Any] = {"id": task["mol_id"]}
    try:
        for name, guess in [("pred", task["hamiltonian"])] + [(g, g) for g in GUESSES]:
            r = run_scf(task["atomic_numbers"], task["positions"], guess, task["settings"],
                        task["charge"])
            out[name] = {"cycles": r.cycles, "energy": r.energy, "converged": r.converged}
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def summarize(results: List[Dict[str, Any]], energy_tol: float) -> Dict[str, Any]:
    ok = [r for r in results if "error" not in r]
    summary: Dict[str, Any] = {"n_molecules": len(results), "n_errors": len(results) - len(ok),
                               "energy_tol": energy_tol}
    if not ok:
        return summary
    cyc = {k: np.array([r[k]["cycles"] for r in ok], dtype=float) for k in ("pred",) + GUESSES}
    for k, v in cyc.items():
        summary[f"mean_cycles_{k}"] = float(v.mean())
    for g in GUESSES:
        summary[f"ratio_pred_over_{g}"] = float(np.mean(cyc["pred"] / cyc[g]))
        summary[f"ratio_of_totals_pred_over_{g}"] = float(cyc["pred"].sum() / cyc[g].sum())
    de = np.array([abs(r["pred"]["energy"] - r["minao"]["energy"]) for r in ok])
    summary["max_abs_energy_diff_pred_vs_minao"] = float(de.max())
    summary["mean_abs_energy_diff_pred_vs_minao"] = float(de.mean())
    summary["n_energy_diff_above_tol"] = int((de > energy_tol).sum())
    summary["n_not_converged"] = {k: int(sum(not r[k]["converged"] for r in ok))
                                  for k in ("pred",) + GUESSES}
    return summary


def _load_progress(path: str, header: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    done: Dict[str, Dict[str, Any]] = {}
    if not os.path.exists(path):
        return done
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: that molecule is simply redone
        if i == 0:
            if obj.get("header") != header:
                raise ValueError(f"{path!r} belongs to a benchmark with different inputs "
                                 f"({obj.get('header')}); use another --out")
            continue
        done[obj["id"]] = obj
    return done


def scf_bench(dataset: str, pred: str = "exact", out: Optional[str] = None,
              pred_order: str = "pyscf", noise: float = 0.0, ids: Optional[List[str]] = None,
              limit: Optional[int] = None, workers: int = 1, threads: Optional[int] = None,
              energy_tol: Optional[float] = None, progress: bool = True) -> Dict[str, Any]:
    """Run the benchmark; returns the summary (also written to ``out``).

    Args:
        pred: ``exact``, a dataset directory, or an ``.npz`` {id: H [n_ao, n_ao]}.
        pred_order: AO order of the predictions (``pyscf``, ``qh9``, ``orca``).
        noise: std (Hartree) of symmetric Gaussian noise added to the
            predictions, seeded per molecule (to emulate a model's error).
        energy_tol: allowed |E(pred) - E(minao)|; default 10 x the dataset's
            ``conv_tol``.
    """
    check_convention(pred_order)
    if noise < 0:
        raise ValueError(f"--noise must be >= 0, got {noise}")
    reader = HamiltonianReader(dataset, ids=ids)
    settings = {k: v for k, v in reader.meta["settings"].items()
                if k in ("xc", "basis", "grid_level", "conv_tol", "conv_tol_grad",
                         "max_cycle", "init_guess")}
    if "conv_tol" not in settings:
        settings["conv_tol"] = 1e-12
    if energy_tol is None:
        energy_tol = 10.0 * float(settings["conv_tol"])
    source = _PredictionSource(pred)
    header = {"dataset": os.path.abspath(dataset), "pred": pred, "pred_order": pred_order,
              "noise": noise, "settings": settings}
    progress_path = (out + ".jsonl") if out else None
    done = _load_progress(progress_path, header) if progress_path else {}
    todo_ids = reader.ids[:limit] if limit is not None else list(reader.ids)

    def tasks():
        for mol_id in todo_ids:
            if mol_id in done:
                continue
            rec = reader[mol_id]
            h = np.asarray(source.get(mol_id, rec), dtype=np.float64)
            z = rec["atomic_numbers"]
            if pred_order != "pyscf":
                h = to_pyscf(h, pred_order, settings["basis"], z)
            if noise > 0:
                rng = np.random.default_rng(zlib.crc32(mol_id.encode("utf-8")))
                e = rng.normal(scale=noise, size=h.shape)
                h = h + (e + e.T) / np.sqrt(2.0)
            yield {"mol_id": mol_id, "atomic_numbers": z, "positions": rec["positions"],
                   "hamiltonian": h, "settings": settings,
                   "charge": int(rec["settings"].get("charge", 0))}

    log = None
    if progress_path:
        new_file = not os.path.exists(progress_path) or os.path.getsize(progress_path) == 0
        log = open(progress_path, "a", encoding="utf-8")
        if new_file:
            log.write(json.dumps({"header": header}) + "\n")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len([i for i in todo_ids if i not in done]), unit="mol",
                   desc="scf-bench")
    try:
        for result in run_tasks(bench_task, tasks(), workers, threads):
            done[result["id"]] = result
            if log is not None:
                log.write(json.dumps(result) + "\n")
                log.flush()
                os.fsync(log.fileno())
            if bar is not None:
                bar.update(1)
    finally:
        if log is not None:
            log.close()
        if bar is not None:
            bar.close()
    results = [done[i] for i in todo_ids if i in done]
    summary = summarize(results, energy_tol)
    summary.update(header)
    if out:
        write_json_atomic(out, {"summary": summary, "molecules": results})
    return summary
