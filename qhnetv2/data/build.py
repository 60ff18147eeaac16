"""``qhnetv2 data build``: label geometries with PySCF into an LMDB dataset.

Resumable by construction: the parent process writes every finished molecule
(record or failure) in its own LMDB transaction; on restart, ids already
present as a record or a failure are skipped.  A killed run therefore never
loses or half-writes a molecule and never recomputes one.  At the end the
dataset's ``index.npz`` (atomic numbers, positions, AO counts: what a training
run's start needs, see :mod:`.store`) is updated with the new records.
"""
from __future__ import annotations

import collections
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .geometries import GeometryItem, embed_smiles, read_geometries
from .labelling import LabelFailure, label_molecule, make_settings
from .parallel import run_tasks
from .store import DatasetWriter

# Settings that must match for a resumed run or a merge to be valid.
_COMPARED = ("xc", "basis", "grid_level", "conv_tol", "conv_tol_grad", "max_cycle",
             "init_guess", "min_distance", "smiles_seed")


def parse_shard(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """``"K/N"`` -> ``(K, N)`` with 0 <= K < N; ``None`` -> ``None``."""
    if text is None:
        return None
    try:
        k_str, n_str = str(text).split("/")
        k, n = int(k_str), int(n_str)
    except ValueError:
        raise ValueError(f"--shard must look like K/N (e.g. 3/16), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--shard K/N needs 0 <= K < N (K is 0-based), got {text!r}")
    return k, n


def shard_items(items: Sequence[GeometryItem], shard: Optional[Tuple[int, int]]):
    """Molecules with global index i such that ``i % N == K``."""
    if shard is None:
        return list(items)
    k, n = shard
    return [it for it in items if it.index % n == k]


def label_task(task: Dict[str, Any]) -> Tuple[str, str, Any]:
    """Worker entry point: ``(mol_id, "ok", record)`` or ``(mol_id, "fail", reason)``.

    Never raises: any error becomes a failure with its reason, so that one bad
    molecule cannot stop the run.
    """
    mol_id = task["mol_id"]
    settings = task["settings"]
    try:
        if task.get("smiles") is not None:
            try:
                z, pos, charge = embed_smiles(task["smiles"], settings["smiles_seed"])
            except ValueError as exc:
                raise LabelFailure(str(exc)) from None
        else:
            z, pos, charge = task["atomic_numbers"], task["positions"], task["charge"]
        return mol_id, "ok", label_molecule(z, pos, settings, charge)
    except LabelFailure as exc:
        return mol_id, "fail", str(exc)
    except Exception as exc:  # PySCF errors on strange input, etc.
        tb = traceback.format_exc(limit=3)
        return mol_id, "fail", f"error: {type(exc).__name__}: {exc}\n{tb}"


def _check_meta(existing: Dict[str, Any], new: Dict[str, Any], out: str) -> None:
    old_s, new_s = existing.get("settings", {}), new["settings"]
    diff = [k for k in _COMPARED if old_s.get(k) != new_s.get(k)]
    if diff:
        raise ValueError(
            f"--out {out!r} already holds a dataset built with different settings "
            f"({', '.join(f'{k}: {old_s.get(k)!r} vs {new_s.get(k)!r}' for k in diff)}); "
            f"use another --out or the same settings to resume")
    key = lambda srcs: [(s["stem"], s["n_frames"], s["sha256"]) for s in srcs]
    if key(existing.get("sources", [])) != key(new["sources"]):
        raise ValueError(f"--out {out!r} was built from different --geometries "
                         f"(file names, frame counts or contents differ)")
    if existing.get("shard") != new["shard"]:
        raise ValueError(f"--out {out!r} was built with --shard {existing.get('shard')}, "
                         f"not {new['shard']}")


def build_dataset(geometries: Sequence[str], out: str, settings: Optional[Dict] = None,
                  workers: int = 1, shard: Optional[str] = None, fmt: Optional[str] = None,
                  retry_failed: bool = False, threads: Optional[int] = None,
                  progress: bool = True) -> Dict[str, Any]:
    """Label every (remaining) molecule of ``geometries`` into ``out``.

    Returns a summary dict: ``n_molecules`` (in this shard), ``n_ok``,
    ``n_failed`` (totals in the dataset, including earlier runs),
    ``n_computed`` (this run), ``wall_s``, ``molecules_per_s``,
    ``failure_reasons`` (reason -> count).
    """
    settings = make_settings(**(settings or {}))
    shard_kn = parse_shard(shard)
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    items, sources = read_geometries(geometries, fmt)
    mine = shard_items(items, shard_kn)
    meta = {"settings": settings, "basis": settings["basis"], "sources": sources,
            "shard": list(shard_kn) if shard_kn else None, "n_inputs": len(items),
            "kind": "pyscf-labelled",
            "units": {"positions": "Angstrom", "hamiltonian": "Hartree",
                      "energy": "Hartree"}}
    writer = DatasetWriter(out)
    try:
        existing = writer.get_meta()
        if existing is None:
            writer.set_meta(meta)
        else:
            _check_meta(existing, meta, out)
        done = writer.record_ids()
        failed = set(writer.failures())
        if not retry_failed:
            done |= failed
        todo = [it for it in mine if it.mol_id not in done]
        tasks = ({"mol_id": it.mol_id, "atomic_numbers": it.atomic_numbers,
                  "positions": it.positions, "smiles": it.smiles, "charge": it.charge,
                  "settings": settings} for it in todo)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(todo), unit="mol", desc="labelling", smoothing=0.1)
        t0 = time.time()
        n_ok_run = n_fail_run = 0
        for mol_id, status, payload in run_tasks(label_task, tasks, workers, threads):
            if status == "ok":
                writer.put_record(mol_id, payload)
                n_ok_run += 1
            else:
                writer.put_failure(mol_id, payload)
                n_fail_run += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ok=n_ok_run, failed=n_fail_run, refresh=False)
        wall = time.time() - t0
        if bar is not None:
            bar.close()
        mine_ids = {it.mol_id for it in mine}
        records = writer.record_ids() & mine_ids
        failures = {k: v for k, v in writer.failures().items() if k in mine_ids}
    finally:
        writer.close()
    reasons = collections.Counter(v["reason"].split("\n")[0] for v in failures.values())
    n_run = n_ok_run + n_fail_run
    return {"n_molecules": len(mine), "n_ok": len(records), "n_failed": len(failures),
            "n_computed": n_run, "n_computed_ok": n_ok_run, "wall_s": wall,
            "molecules_per_s": n_run / wall if wall > 0 and n_run else 0.0,
            "failure_reasons": dict(reasons)}
