"""The accuracy yardstick: model variants trained for the same wall-clock budget on a fixed set.

    python -m bench accuracy [--variant NAME[=JSON]] ... [--budget-s 900] [--preset md17]
                             [--molecules water=300,ethanol=300,malondialdehyde=200,uracil=150]
                             [--xc b3lyp] [--basis def2-svp] [--cache DIR] [--jobs 2] [--scf 5]
                             [--speed-molecule uracil] [--speed-threads 2] [--out DIR] [--name NAME]
                             [--qhnet-src PATH/TO/AIRS [--qhnet-model JSON]]

1. **Data** (built once, cached in ``--cache``, default ``$XDG_CACHE_HOME/qhnetv2/yardstick``):
   MD17-like trajectories of each molecule (``qhnetv2.data.recipe``: MMFF Langevin MD
   at 500 K, seeded), labelled with PySCF (``--xc``/``--basis``, B3LYP/def2-SVP by
   default).  Resumable: a killed build continues where it stopped.
2. **Split by time**: per molecule the last ``--test-fraction`` of the frames are test,
   the ``--valid-fraction`` before them valid, the earlier ones train, so every test
   geometry lies later in its trajectory than every training geometry.
3. **Equal wall clock**: each variant's steps per second are measured on this machine
   (a short calibration run), and its ``max_steps`` (hence its whole learning-rate
   schedule) is set so that training takes ``--budget-s``.  Variants train side by
   side, ``--jobs`` at a time with ``--threads`` each, so that they see the same load.
4. **Report** on the test geometries: H MAE (all, diagonal, off-diagonal, and
   off-diagonal by atom-pair distance bin), orbital-energy MAE, HOMO-LUMO gap error
   (mean, max), lowest-10 virtual MAE, and SCF cycles from the prediction against
   PySCF's ``minao`` start; per molecule and over all.
5. **Speed**: each variant's batch-1 forward and forward+backward time on
   ``--speed-molecule`` (def2-SVP, float32), timed side by side in one process, and the
   ratio to the first variant (the accuracy is only worth what it costs per molecule).

A variant is ``NAME`` (the preset unchanged, e.g. ``main``) or ``NAME={"model": {...},
"lr": ...}``: overrides of the training config (``qhnetv2/training/config.py``), the
``model`` key merged into the preset's model section.  Results:
``OUT/<device>/accuracy/<name>.{json,md}`` with the command line.

``--qhnet-src PATH`` (an AIRS checkout, its ``OpenDFT/QHBench`` or its ``QH9`` folder) adds
the row ``qhnet``: AIRS QHNet trained with its own QH9 recipe (``bench/qhnet_baseline.py``;
QHNet's code is imported from the checkout, never shipped here) in the same pool, for the
same budget, with the preset's batch size, and scored by the same metric code on
PySCF-order predictions.  When the path is missing, QHNet does not import, or the data are
not in QHNet's def2-SVP layout, one line says so and the row is left out.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

DEFAULT_MOLECULES = "water=300,ethanol=300,malondialdehyde=200,uracil=150"
#: upper edges (Angstrom) of the pair-distance bins of the off-diagonal error
DISTANCE_BINS = (1.2, 1.6, 2.5, 3.5, math.inf)


def default_cache() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "qhnetv2", "yardstick")


def parse_variant(text: str) -> Tuple[str, Dict[str, Any]]:
    """``"main"`` -> ("main", {}); ``'wide={"model": {"channels": 64}}'`` -> (name, overrides)."""
    name, sep, body = text.partition("=")
    name = name.strip()
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"--variant: the name must be letters, digits, - or _; got {name!r}")
    if not sep:
        return name, {}
    try:
        over = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"--variant {name}: not JSON after '=': {e}") from None
    if not isinstance(over, dict):
        raise ValueError(f"--variant {name}: the overrides must be a JSON object, got {type(over).__name__}")
    return name, over


def data_dir(cache: str, counts: Dict[str, int], xc: str, basis: str, seed: int) -> str:
    key = "_".join(f"{k}{v}" for k, v in sorted(counts.items()))
    return os.path.join(cache, f"{xc}_{basis}_seed{seed}_{key}".replace("/", "-"))


def build_data(cache: str, counts: Dict[str, int], xc: str, basis: str, seed: int = 0,
               workers: int = 1, progress: bool = True) -> str:
    """Generate and label the yardstick set (cached); returns its dataset directory."""
    from qhnetv2.data.build import build_dataset
    from qhnetv2.data.recipe import make_md17_like

    root = data_dir(cache, counts, xc, basis, seed)
    paths = make_md17_like(os.path.join(root, "geometries"), counts, seed=seed)
    out = os.path.join(root, "data")
    summary = build_dataset(paths, out, {"xc": xc, "basis": basis}, workers=workers, threads=1, progress=progress)
    if summary["n_failed"]:
        print(f"yardstick: {summary['n_failed']} geometries failed to label: {summary['failure_reasons']}",
              file=sys.stderr)
    return out


def time_split(ids: Sequence[str], test_fraction: float, valid_fraction: float) -> Dict[str, List[str]]:
    """Per molecule (id prefix before ':'), in trajectory order: train, then valid, then test."""
    if not 0 < test_fraction < 1 or not 0 <= valid_fraction < 1 or test_fraction + valid_fraction >= 1:
        raise ValueError(f"fractions must leave training data: test {test_fraction}, valid {valid_fraction}")
    by_mol: Dict[str, List[str]] = {}
    for i in sorted(ids):
        by_mol.setdefault(i.split(":")[0], []).append(i)
    out: Dict[str, List[str]] = {"train": [], "valid": [], "test": []}
    for name, mol in sorted(by_mol.items()):
        n_test = max(1, int(round(test_fraction * len(mol))))
        n_valid = max(1, int(round(valid_fraction * len(mol)))) if valid_fraction > 0 else 0
        if len(mol) - n_test - n_valid < 1:
            raise ValueError(f"molecule {name}: {len(mol)} geometries are too few to split")
        out["train"] += mol[: len(mol) - n_test - n_valid]
        out["valid"] += mol[len(mol) - n_test - n_valid: len(mol) - n_test]
        out["test"] += mol[len(mol) - n_test:]
    return out


def variant_config(preset: str, overrides: Dict[str, Any], max_steps: int, threads: int):
    """The training config of one variant (the preset's, with ``overrides`` merged)."""
    from qhnetv2.training import load_config
    from qhnetv2.training.config import TrainConfig

    base = load_config(preset).to_dict()
    over = dict(overrides)
    model = dict(base["model"], **over.pop("model", {}))
    loss = dict(base["loss"], **over.pop("loss", {}))
    cfg = dict(base, **over)
    cfg.update(model=model, loss=loss, max_steps=int(max_steps), device="cpu", num_workers=0,
               val_every=max(10, int(max_steps) // 6), log_every=max(1, int(max_steps) // 50))
    cfg["warmup_steps"] = min(int(cfg.get("warmup_steps", 0)), max(1, int(max_steps) // 10))
    return TrainConfig.from_dict(cfg)


def _spawn():
    """Fresh interpreters for the workers: forking a process whose OpenMP pool is running can hang."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _train_worker(args: Dict[str, Any]) -> Dict[str, Any]:
    """One training run in its own process (own thread count)."""
    import torch

    if args.get("kind") == "qhnet":  # the AIRS QHNet baseline row (bench/qhnet_baseline.py)
        from bench.qhnet_baseline import train_worker

        return train_worker(args)
    from qhnetv2.training import train

    torch.set_num_threads(int(args["threads"]))
    cfg = variant_config(args["preset"], args["overrides"], args["steps"], args["threads"])
    t = time.time()
    summary = train(cfg, args["data"], args["split"], args["run_dir"], resume=True, progress=False)
    return {"wall_s": time.time() - t, "steps": int(summary["steps"]), "steps_per_s": summary["steps_per_s"],
            "best_checkpoint": summary["best_checkpoint"], "best_val_mae_uEh": summary["best_val_mae_uEh"]}


def _calibrate_worker(args: Dict[str, Any]) -> float:
    """Seconds per training step: a short run's training-loop rate (startup excluded,
    its validations included, as in the real run)."""
    import shutil

    run = args["run_dir"] + "_calibration"
    shutil.rmtree(run, ignore_errors=True)
    rate = _train_worker(dict(args, steps=args["cal_steps"], run_dir=run))["steps_per_s"]
    shutil.rmtree(run, ignore_errors=True)
    if not rate or not rate > 0:
        raise RuntimeError(f"calibration of {args['run_dir']}: no training-loop rate measured")
    return 1.0 / float(rate)


def batch1_speed(preset: str, variants: Dict[str, Dict[str, Any]], threads: int,
                 molecule: str = "uracil", target_s: float = 3.0) -> Dict[str, Dict[str, float]]:
    """Batch-1 ``molecule`` forward and forward+backward seconds of each variant's model
    (def2-SVP, float32, random weights, ``threads`` torch threads; about ``target_s``
    seconds of repetitions per row), timed side by side in rounds
    (``bench.timer.time_cpu_interleaved``) so that the ratios to ``main`` are fair.

    Returns ``{variant: {"fwd_s": median, "fwdbwd_s": median}}``.
    """
    import torch

    from bench.models.molecules import system
    from bench.models.qhnetv2_model import ELEMENTS, LAYOUT
    from bench.timer import Budget, time_cpu_interleaved
    from qhnetv2.model import QHNetV2
    from qhnetv2.model import preset as model_preset
    from so2ops import HamiltonianIndex

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        z, pos, batch = system(molecule)
        pos = pos.float()
        index = HamiltonianIndex.build(LAYOUT, z, batch)
        calls, names = [], []
        for name, over in variants.items():
            cfg = variant_config(preset, over, 1, threads)
            torch.manual_seed(0)
            sizes = model_preset(cfg.model["preset"], **cfg.model_overrides()).to_dict()
            sizes.pop("basis"), sizes.pop("elements")
            model = QHNetV2(elements=ELEMENTS, layout=LAYOUT, **sizes).float()
            params = [q for q in model.parameters() if q.requires_grad]

            def fwd(model=model):
                with torch.no_grad():
                    model.forward_batch(z, pos, batch, index=index)

            def fwdbwd(model=model, params=params):
                h = model.forward_batch(z, pos, batch, index=index)[0]
                torch.autograd.grad(h.square().sum(), params, allow_unused=True)

            budget = Budget(warmup=1, target_s=target_s, min_reps=3, max_reps=30)
            calls += [(fwd, _nullcontext, budget), (fwdbwd, _nullcontext, budget)]
            names.append(name)
        res = time_cpu_interleaved(calls)
    finally:
        torch.set_num_threads(old_threads)
    out = {}
    for k, name in enumerate(names):
        f, fb = res[2 * k], res[2 * k + 1]
        for r in (f, fb):
            if isinstance(r, Exception):
                raise r
        out[name] = {"fwd_s": f["median"], "fwdbwd_s": fb["median"]}
    return out


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def offdiagonal_by_distance(preds: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                            positions: Sequence[np.ndarray], ao_slices: Sequence[np.ndarray],
                            bins: Sequence[float] = DISTANCE_BINS) -> Dict[str, Tuple[float, int]]:
    """Off-diagonal-block MAE (Hartree) by the distance of the atom pair.

    Args:
        preds, targets: per molecule [n_ao, n_ao].
        positions: per molecule [n_atoms, 3] in Angstrom.
        ao_slices: per molecule [n_atoms, 2] AO (start, stop) of each atom (``qhnetv2.evaluate``'s).
    Returns ``{"<lo>-<hi> A": (mae, n_entries)}``; empty bins are left out.
    """
    sums = np.zeros(len(bins))
    counts = np.zeros(len(bins), dtype=np.int64)
    for hp, ht, pos, sl in zip(preds, targets, positions, ao_slices):
        err = np.abs(np.asarray(hp) - np.asarray(ht))
        sl = np.asarray(sl, dtype=np.int64).reshape(-1, 2)
        pos = np.asarray(pos, dtype=np.float64)
        n = len(pos)
        for a in range(n):
            for b in range(n):
                if a == b:
                    continue
                d = float(np.linalg.norm(pos[a] - pos[b]))
                k = int(np.searchsorted(bins, d, side="left"))
                blk = err[sl[a, 0]:sl[a, 1], sl[b, 0]:sl[b, 1]]
                sums[k] += blk.sum()
                counts[k] += blk.size
    out = {}
    lo = 0.0
    for k, hi in enumerate(bins):
        if counts[k]:
            label = f"{lo:.1f}-{hi:.1f} A" if math.isfinite(hi) else f">{lo:.1f} A"
            out[label] = (float(sums[k] / counts[k]), int(counts[k]))
        lo = hi
    return out


def evaluate_variant(checkpoint: str, data: str, test_ids: Sequence[str], scf: int) -> Dict[str, Any]:
    """Test metrics of one trained variant, per molecule and over all (reporting units):
    :func:`evaluate_predictions` of the checkpoint's full-H predictions."""
    from qhnetv2.inference import model_and_extra, predict_hamiltonians

    model, extra, _ = model_and_extra(checkpoint, "cpu", None)

    def predict(records):
        return predict_hamiltonians(model, extra, [r["atomic_numbers"] for r in records],
                                    [r["positions"] for r in records])

    return evaluate_predictions(predict, data, test_ids, scf)


def evaluate_predictions(predict, data: str, test_ids: Sequence[str], scf: int) -> Dict[str, Any]:
    """Test metrics of any predictor, per molecule and over all, as :func:`evaluate_variant` gives them.

    ``predict(records) -> [H_pred]``: PySCF-order float64 [n_ao, n_ao] per record (Hartree).
    The same metric code as our variants (``qhnetv2.evaluate.evaluate`` with ``density=0``):
    :func:`qhnetv2.metrics.hamiltonian_metrics` per molecule, averaged
    (:func:`qhnetv2.metrics.summarize`, :func:`qhnetv2.metrics.to_micro_hartree`), the QH9
    SCF-acceleration protocol on the first ``scf`` test geometries of each molecule with the
    dataset's SCF settings, and :func:`offdiagonal_by_distance`; atom blocks from the basis.
    """
    from qhnetv2.data.basis import ao_slices
    from qhnetv2.data.store import HamiltonianReader
    from qhnetv2.evaluate import _scf_settings, scf_acceleration
    from qhnetv2.metrics import METRIC_KEYS, hamiltonian_metrics, summarize, to_micro_hartree

    by_mol: Dict[str, List[str]] = {}
    for i in test_ids:
        by_mol.setdefault(i.split(":")[0], []).append(i)
    reader = HamiltonianReader(data, ids=list(test_ids))
    basis = reader.basis
    recs = {r["id"]: r for r in (reader[i] for i in range(len(reader)))}
    preds = dict(zip(recs, predict(list(recs.values()))))
    result: Dict[str, Any] = {"molecules": {}}
    for name, ids in dict(by_mol, all=list(test_ids)).items():
        rs = [recs[i] for i in ids]
        hp = [np.asarray(preds[i], dtype=np.float64) for i in ids]
        for r, h in zip(rs, hp):
            if h.shape != r["hamiltonian"].shape:
                raise ValueError(f"molecule {r['id']!r}: predicted {h.shape}, label {r['hamiltonian'].shape}")
        charges = [int((r.get("settings") or {}).get("charge", 0)) for r in rs]
        n_occ = [(int(np.sum(r["atomic_numbers"])) - q) // 2 for r, q in zip(rs, charges)]
        slices = [ao_slices(basis, r["atomic_numbers"]) for r in rs]
        m = hamiltonian_metrics(hp, [r["hamiltonian"] for r in rs], [r["overlap"] for r in rs], n_occ,
                                ao_slices=slices)
        row = dict(to_micro_hartree(summarize({k: m["per_molecule"][k] for k in METRIC_KEYS})))
        n_scf = scf if name != "all" else 0
        if n_scf:
            items = [{"id": r["id"], "atomic_numbers": r["atomic_numbers"], "positions": r["positions"],
                      "hamiltonian": h, "charge": q} for r, h, q in list(zip(rs, hp, charges))[:n_scf]]
            res = scf_acceleration(items, _scf_settings(reader))
            if "mean_cycles_pred" in res:
                row["scf_cycles_model"] = res["mean_cycles_pred"]
                row["scf_cycles_minao"] = res["mean_cycles_minao"]
                row["scf_ratio"] = res["ratio_pred_over_minao"]
        bins = offdiagonal_by_distance(hp, [r["hamiltonian"] for r in rs], [r["positions"] for r in rs], slices)
        row["offdiag_by_distance_uEh"] = {k: v[0] * 1e6 for k, v in bins.items()}
        result["molecules"][name] = row
    if scf:
        pooled = [r for n, r in result["molecules"].items() if n != "all" and "scf_ratio" in r]
        if pooled:
            result["molecules"]["all"]["scf_ratio"] = float(np.mean([r["scf_ratio"] for r in pooled]))
    return result


def qhnet_row_job(src: Optional[str], model_json: Optional[str], data: str, preset: str
                  ) -> Tuple[Optional[Dict[str, Any]], str]:
    """``(job fields, message)`` of the ``qhnet`` row, or ``(None, why it is skipped)``; never raises."""
    try:
        from bench import qhnet_baseline
        from qhnetv2.data.store import HamiltonianReader
        from qhnetv2.training import load_config

        ok, why = qhnet_baseline.available(src)
        if not ok:
            return None, f"qhnet row skipped: QHNet is not usable from --qhnet-src {src!r}: {why}"
        reader = HamiltonianReader(data)
        zs = sorted({int(z) for s in reader.summaries() for z in np.asarray(s[0]).reshape(-1)})
        bad = qhnet_baseline.check_data(reader.basis, zs)
        if bad:
            return None, f"qhnet row skipped: {bad}"
        over = json.loads(model_json) if model_json else {}
        if not isinstance(over, dict):
            return None, f"qhnet row skipped: --qhnet-model must be a JSON object, got {model_json!r}"
        unknown = set(over) - set(qhnet_baseline.QH9_MODEL)
        if unknown:
            return None, f"qhnet row skipped: --qhnet-model: unknown QHNet arguments {sorted(unknown)}"
        job = {"kind": "qhnet", "qhnet_src": os.path.abspath(src), "qhnet_model": over,
               "batch_size": int(load_config(preset).batch_size)}
        return job, why
    except Exception as exc:  # whatever goes wrong, the yardstick's own rows still run
        return None, f"qhnet row skipped: {type(exc).__name__}: {exc}"


def _run_jobs(pool, fn, jobs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """``{name: fn(job)}`` in the pool; a failing ``qhnet`` job gives its exception (its row is
    dropped), any other failure is raised."""
    futures = {n: pool.submit(fn, j) for n, j in jobs.items()}
    out: Dict[str, Any] = {}
    for n, fut in futures.items():
        try:
            out[n] = fut.result()
        except Exception as exc:
            if jobs[n].get("kind") != "qhnet":
                raise
            out[n] = exc
    return out


ROWS = [("hamiltonian_mae_uEh", "H MAE (uEh)", "{:.1f}"),
        ("hamiltonian_diagonal_mae_uEh", "diagonal (uEh)", "{:.1f}"),
        ("hamiltonian_off_diagonal_mae_uEh", "off-diagonal (uEh)", "{:.1f}"),
        ("orbital_energy_mae_uEh", "occupied orbital energy MAE (uEh)", "{:.1f}"),
        ("virtual_orbital_energy_mae_uEh", "lowest-10 virtual MAE (uEh)", "{:.1f}"),
        ("gap_error_eV", "gap error mean (eV)", "{:.3f}"),
        ("gap_error_max_eV", "gap error max (eV)", "{:.3f}"),
        ("scf_ratio", "SCF cycles model / minao", "{:.3f}")]


def format_report(doc: Dict[str, Any]) -> str:
    names = list(doc["variants"])
    lines = [f"# Accuracy yardstick: {doc['name']}", "",
             f"    {doc['command']}", "",
             f"{doc['date']}, commit {doc['commit']}, {doc['device']}; data {doc['data']} "
             f"({doc['xc']}/{doc['basis']}; train/valid/test {doc['n_train']}/{doc['n_valid']}/{doc['n_test']}); "
             f"budget {doc['budget_s']:.0f} s per variant, {doc['jobs']} at a time, {doc['threads']} thread(s) each.", ""]
    speed = doc.get("speed") or {}
    mol = doc.get("speed_molecule", "uracil")
    lines += [f"| variant | steps | s/step | train wall (s) | parameters | batch-1 {mol} fwd (ms) "
              f"| batch-1 {mol} fwd+bwd (ms) | fwd+bwd vs {names[0]} |", "|---|---|---|---|---|---|---|---|"]
    base = speed.get(names[0], {}).get("fwdbwd_s")
    for n in names:
        v = doc["variants"][n]
        sp = speed.get(n)
        t = (f"{1e3 * sp['fwd_s']:.0f} | {1e3 * sp['fwdbwd_s']:.0f} | {sp['fwdbwd_s'] / base:.2f}x"
             if sp and base else "— | — | —")
        lines.append(f"| {n} | {v['steps']} | {v['s_per_step']:.3f} | {v['wall_s']:.0f} | {v['parameters']:,} | {t} |")
    lines.append("")
    mols = list(doc["variants"][names[0]]["test"]["molecules"])
    for mol in mols:
        lines += [f"## {mol}", "", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for key, label, fmt in ROWS:
            vals = [doc["variants"][n]["test"]["molecules"][mol].get(key) for n in names]
            if all(v is None for v in vals):
                continue
            lines.append(f"| {label} | " + " | ".join("—" if v is None else fmt.format(v) for v in vals) + " |")
        bins = doc["variants"][names[0]]["test"]["molecules"][mol].get("offdiag_by_distance_uEh", {})
        for b in bins:
            vals = [doc["variants"][n]["test"]["molecules"][mol]["offdiag_by_distance_uEh"].get(b) for n in names]
            lines.append(f"| off-diagonal {b} (uEh) | " + " | ".join("—" if v is None else f"{v:.1f}" for v in vals) + " |")
        lines.append("")
    return "\n".join(lines)


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _qhnet_row(job: Dict[str, Any], tr: Dict[str, Any], s_per_step: float, data: str,
               test_ids: Sequence[str], scf: int) -> Dict[str, Any]:
    """The report row of the trained QHNet baseline (scored by :func:`evaluate_predictions`)."""
    from bench.qhnet_baseline import load_checkpoint, predict_qhnet
    from qhnetv2.data.store import HamiltonianReader

    model, _ = load_checkpoint(job["qhnet_src"], tr["best_checkpoint"])
    basis = HamiltonianReader(data).basis

    def predict(recs):
        return predict_qhnet(job["qhnet_src"], None, [r["atomic_numbers"] for r in recs],
                             [r["positions"] for r in recs], basis=basis, model=model)

    return {"overrides": {"qhnet_src": job["qhnet_src"], "model": tr["model_kwargs"],
                          "batch_size": job["batch_size"]},
            "steps": tr["steps"], "s_per_step": s_per_step, "wall_s": tr["wall_s"],
            "best_val_mae_uEh": tr["best_val_mae_uEh"],
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "test": evaluate_predictions(predict, data, test_ids, scf)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench accuracy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", default=None,
                    help='NAME or NAME=JSON overrides (repeatable; default: "main", the preset unchanged)')
    ap.add_argument("--preset", default="md17", help="training preset the variants start from (default md17)")
    ap.add_argument("--budget-s", type=float, default=900.0, help="training wall clock per variant (seconds)")
    ap.add_argument("--molecules", default=DEFAULT_MOLECULES, help=f"name=frames,... (default {DEFAULT_MOLECULES})")
    ap.add_argument("--xc", default="b3lyp")
    ap.add_argument("--basis", default="def2-svp")
    ap.add_argument("--seed", type=int, default=0, help="MD seed of the data set")
    ap.add_argument("--test-fraction", type=float, default=0.15)
    ap.add_argument("--valid-fraction", type=float, default=0.05)
    ap.add_argument("--cache", default=None, help="data cache (default $XDG_CACHE_HOME/qhnetv2/yardstick)")
    ap.add_argument("--label-workers", type=int, default=2, help="PySCF labelling processes (first run only)")
    ap.add_argument("--jobs", type=int, default=2, help="variants trained at the same time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    ap.add_argument("--scf", type=int, default=3, help="SCF runs per molecule from the prediction and from minao")
    ap.add_argument("--calibration-steps", type=int, default=30, help="steps of the short run that measures s/step")
    ap.add_argument("--speed-molecule", default="uracil",
                    help="time each variant's batch-1 forward(+backward) on this molecule ('' to skip)")
    ap.add_argument("--speed-threads", type=int, default=2, help="torch threads for the speed rows")
    ap.add_argument("--speed-seconds", type=float, default=3.0, help="timed repetitions per speed row (seconds)")
    ap.add_argument("--runs", default=None, help="folder of the training runs (default: CACHE/runs/NAME)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--name", default="yardstick", help="result file stem")
    ap.add_argument("--qhnet-src", default=None,
                    help="AIRS checkout (root, OpenDFT/QHBench or its QH9 folder): add the AIRS QHNet row 'qhnet'")
    ap.add_argument("--qhnet-model", default=None,
                    help="JSON overrides of QHNet's QH9 model arguments (default: QH9's sizes)")
    args = ap.parse_args(list(argv) if argv is not None else None)

    from qhnetv2.data.recipe import parse_counts

    variants = dict(parse_variant(v) for v in (args.variant or ["main"]))
    counts = parse_counts(args.molecules)
    if args.budget_s <= 0:
        raise ValueError(f"--budget-s must be positive, got {args.budget_s}")
    if args.jobs < 1 or args.threads < 1:
        raise ValueError("--jobs and --threads must be >= 1")
    if args.calibration_steps < 2:
        raise ValueError(f"--calibration-steps must be >= 2, got {args.calibration_steps}")
    cache = args.cache or default_cache()
    data = build_data(cache, counts, args.xc, args.basis, args.seed, workers=args.label_workers)

    from qhnetv2.data.split import write_json_atomic
    from qhnetv2.data.store import HamiltonianReader

    split = time_split(HamiltonianReader(data).ids, args.test_fraction, args.valid_fraction)
    runs = args.runs or os.path.join(cache, "runs", args.name)
    os.makedirs(runs, exist_ok=True)
    split_path = os.path.join(runs, "split.json")
    write_json_atomic(split_path, dict(split, method="bench.accuracy: per molecule by trajectory time"))

    base = {"preset": args.preset, "data": data, "split": split_path, "threads": args.threads,
            "cal_steps": args.calibration_steps}
    jobs = {n: dict(base, overrides=o, run_dir=os.path.join(runs, n)) for n, o in variants.items()}
    if args.qhnet_src is not None:
        if "qhnet" in jobs:
            raise ValueError("--qhnet-src adds the row 'qhnet': no --variant may have that name")
        qjob, msg = qhnet_row_job(args.qhnet_src, args.qhnet_model, data, args.preset)
        print(f"yardstick: {msg}", flush=True)
        if qjob is not None:
            jobs["qhnet"] = dict(base, overrides={}, run_dir=os.path.join(runs, "qhnet"), **qjob)
    # 1. steps per second of each variant, measured side by side like the real runs
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=_spawn()) as pool:
        s_per_step = _run_jobs(pool, _calibrate_worker, jobs)
    for n in [n for n, v in s_per_step.items() if isinstance(v, Exception)]:
        print(f"yardstick: qhnet row skipped: its calibration run failed: {type(s_per_step[n]).__name__}: "
              f"{s_per_step[n]}", flush=True)
        del jobs[n], s_per_step[n]
    for n, job in jobs.items():
        job["steps"] = max(args.calibration_steps, int(args.budget_s / s_per_step[n]))
        print(f"yardstick: {n}: {s_per_step[n]:.3f} s/step -> {job['steps']} steps in {args.budget_s:.0f} s", flush=True)
    # 2. the real runs (resumable: a rerun continues each from its last checkpoint)
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=_spawn()) as pool:
        trained = _run_jobs(pool, _train_worker, jobs)
    for n in [n for n, v in trained.items() if isinstance(v, Exception)]:
        print(f"yardstick: qhnet row skipped: its training run failed: {type(trained[n]).__name__}: {trained[n]}",
              flush=True)
        del jobs[n], trained[n]
    # 3. evaluation
    import torch

    from qhnetv2.inference import load_model

    doc: Dict[str, Any] = {
        "name": args.name, "command": "python -m bench accuracy " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "data": data, "xc": args.xc, "basis": args.basis,
        "molecules": counts, "budget_s": args.budget_s, "jobs": args.jobs, "threads": args.threads,
        "n_train": len(split["train"]), "n_valid": len(split["valid"]), "n_test": len(split["test"]),
        "variants": {}}
    from bench.device import _git_commit, device_name, results_dirname

    doc["commit"] = _git_commit()
    doc["device"] = device_name(torch.device("cpu"))
    for n, tr in trained.items():
        if jobs[n].get("kind") == "qhnet":
            try:
                doc["variants"][n] = _qhnet_row(jobs[n], tr, s_per_step[n], data, split["test"], args.scf)
            except Exception as exc:
                print(f"yardstick: qhnet row skipped: its evaluation failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        model, _ = load_model(tr["best_checkpoint"], "cpu")
        doc["variants"][n] = {"overrides": variants[n], "steps": tr["steps"], "s_per_step": s_per_step[n],
                              "wall_s": tr["wall_s"], "best_val_mae_uEh": tr["best_val_mae_uEh"],
                              "parameters": int(sum(p.numel() for p in model.parameters())),
                              "test": evaluate_variant(tr["best_checkpoint"], data, split["test"], args.scf)}
    # batch-1 speed of every variant, side by side (what each one costs a user per molecule)
    if args.speed_molecule:
        doc["speed_molecule"] = args.speed_molecule
        doc["speed"] = batch1_speed(args.preset, variants, args.speed_threads, args.speed_molecule,
                                   args.speed_seconds)
    out_dir = os.path.join(args.out, results_dirname(torch.device("cpu")), "accuracy")
    from qhnetv2.evaluate import _json_safe

    _write_atomic(os.path.join(out_dir, f"{args.name}.json"), json.dumps(_json_safe(doc), indent=1))
    text = format_report(doc)
    _write_atomic(os.path.join(out_dir, f"{args.name}.md"), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
