"""``qhnetv2 demo``: from nothing to a model that makes PySCF converge faster, in minutes.

Steps (each cached under ``--out``, so a second run skips what is done):

1. MD17-like geometries of water and ethanol (``qhnetv2.data.recipe``: MMFF
   Langevin MD at 500 K), ``RUN/geometries/*.extxyz``;
2. PySCF labels (``qhnetv2.data.build.build_dataset``, the code of
   ``qhnetv2 data build``), ``RUN/data``; demo recipe: restricted HF / def2-SVP
   unless ``--xc``/``--basis`` say otherwise (``--xc b3lyp`` is QH9's recipe, ~5x
   slower to label and to run the SCF);
3. a split holding out the last frames of each trajectory (``RUN/split.json``);
4. training of the ``tiny`` preset on the residual over PySCF's ``minao`` Fock
   matrix (``qhnetv2.training.train``), ``RUN/checkpoints/best.pt``;
5. evaluation on the held-out geometries (``qhnetv2.evaluate``): H MAE,
   occupied orbital-energy MAE, coefficient similarity, and the SCF started from
   the prediction vs from ``minao`` (cycles; final energies must agree);
6. a table on stdout, ``RUN/demo.json``, ``RUN/learning_curve.png`` and
   ``RUN/scf_cycles.png``.

``--quick`` is a reduced run for CI (a few minutes on two cores).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

#: sizes of the full and the quick demo
#: 10 held-out geometries per molecule (the last of each trajectory): with 3, a model whose
#: spectrum fails on most later ethanol frames looked fine (bench/results/cpu-amd-epyc-2t/consistency/)
FULL = {"water": 120, "ethanol": 200, "test_water": 10, "test_ethanol": 10, "valid_water": 3, "valid_ethanol": 3,
        "steps": 3000}
QUICK = {"water": 10, "ethanol": 4, "test_water": 2, "test_ethanol": 1, "valid_water": 1, "valid_ethanol": 1,
         "steps": 60}


def demo_split(reader, sizes: Dict[str, int]) -> Dict[str, List[str]]:
    """Per molecule (file stem): the last ``test_<name>`` frames are test, the ``valid_<name>``
    before them valid, the rest train (held-out geometries come later in the trajectory)."""
    by_mol: Dict[str, List[str]] = {}
    for mol_id in sorted(reader.ids):
        by_mol.setdefault(mol_id.split(":")[0], []).append(mol_id)
    out: Dict[str, List[str]] = {"train": [], "valid": [], "test": []}
    for name, ids in sorted(by_mol.items()):
        n_test, n_valid = sizes.get(f"test_{name}", 1), sizes.get(f"valid_{name}", 1)
        if len(ids) < n_test + n_valid + 1:
            raise ValueError(f"demo: only {len(ids)} labelled {name} molecules; need {n_test + n_valid + 1}")
        out["test"] += ids[len(ids) - n_test:]
        out["valid"] += ids[len(ids) - n_test - n_valid: len(ids) - n_test]
        out["train"] += ids[: len(ids) - n_test - n_valid]
    return out


def _plot_scf(per: List[Dict[str, Any]], path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in per if "error" not in r]
    labels = [r["id"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2), 3.8))
    w = 0.38
    ax.bar(x - w / 2, [r["minao"]["cycles"] for r in rows], w, label="PySCF minao guess")
    ax.bar(x + w / 2, [r["pred"]["cycles"] for r in rows], w, label="QHNetV2 prediction")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("SCF cycles to convergence")
    ax.set_title("SCF cycles per held-out molecule")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(res: Dict[str, Any]) -> str:
    """The demo's summary table.  Rows whose numbers are missing (a ``demo.json``
    written before a metric existed, a failed SCF) print ``n/a``."""
    m = res.get("metrics") or {}
    s = res.get("scf") or {}

    def num(value, fmt: str, scale: float = 1.0) -> str:
        if value is None or value != value:  # missing, null in JSON, or NaN
            return f"{'n/a':>14s}"
        return format(float(value) * scale, fmt)

    def row(label: str, value, fmt: str = "14.1f", scale: float = 1.0) -> str:
        return f"  {label:44s} {num(value, fmt, scale)}"

    def flag(ok) -> str:
        return f"{'n/a' if ok is None else ('yes' if ok else 'NO'):>14s}"

    lines = [
        f"QHNetV2 demo: {res.get('n_train', '?')} train / {res.get('n_valid', '?')} valid / "
        f"{res.get('n_test', '?')} held-out geometries ({res.get('recipe', '?')}), {res.get('steps', '?')} "
        f"training steps, target {res.get('target', '?')}",
        "",
        f"  {'metric (held-out geometries)':44s} {'value':>14s}",
        f"  {'-' * 44} {'-' * 14}",
        row("Hamiltonian MAE (uEh)", m.get("hamiltonian_mae_uEh")),
        row("  diagonal blocks (uEh)", m.get("hamiltonian_diagonal_mae_uEh")),
        row("  off-diagonal blocks (uEh)", m.get("hamiltonian_off_diagonal_mae_uEh")),
        row("occupied orbital-energy MAE (uEh)", m.get("orbital_energy_mae_uEh")),
        row("occupied coefficient similarity (%)", m.get("orbital_coefficient_similarity_percent"), "14.2f"),
        # the spectrum beyond the occupied orbitals: a spurious low virtual orbital shows here
        row("lowest-10 virtual orbital-energy MAE (uEh)", m.get("virtual_orbital_energy_mae_uEh")),
        row("LUMO energy error, mean (eV)", m.get("lumo_error_eV"), "14.3f"),
        row("HOMO-LUMO gap error, mean (eV)", m.get("gap_error_eV"), "14.3f"),
        row("HOMO-LUMO gap error, max (eV)", m.get("gap_error_max_eV"), "14.3f"),
        row("worst orbital-energy error, max (eV)", m.get("max_orbital_energy_error_max_eV"), "14.3f"),
        # non-self-consistent energy / dipole of the predicted density, labels' functional
        row("energy error E[D(H_pred)]-E_ref, mean (mEh)", m.get("energy_error_uEh"), "14.3f", 1e-3),
        row("|energy error|, mean (mEh)", m.get("energy_abs_error_uEh"), "14.3f", 1e-3),
        row("dipole error, mean (Debye)", m.get("dipole_error_D"), "14.3f"),
    ]
    rf = res.get("refined")
    if rf:
        # F[D(H_pred)]: one Fock build from the predicted density (qhnetv2.consistency)
        r = rf.get("metrics") or {}
        lines += [
            row("predictions not self-consistent (count)", rf.get("n_not_self_consistent"), "14.0f"),
            row("after one Fock build F[D(H_pred)]: H MAE (uEh)", r.get("hamiltonian_mae_uEh")),
            row("  lowest-10 virtual orbital-energy MAE (uEh)", r.get("virtual_orbital_energy_mae_uEh")),
            row("  HOMO-LUMO gap error, mean (eV)", r.get("gap_error_eV"), "14.3f"),
            row("  HOMO-LUMO gap error, max (eV)", r.get("gap_error_max_eV"), "14.3f"),
        ]
    lines += [
        row("mean SCF cycles from the model", s.get("mean_cycles_pred"), "14.2f"),
        row("mean SCF cycles from PySCF minao", s.get("mean_cycles_minao"), "14.2f"),
    ]
    if res.get("base_cycles") is not None:
        lines.append(row("mean SCF cycles from the base F[minao] alone", res["base_cycles"], "14.2f"))
    tol = s.get("energy_tol")
    n_above, n_err = s.get("n_energy_diff_above_tol"), s.get("n_errors")
    equal = None if n_above is None else (n_above == 0 and not n_err)
    cp, cm = s.get("mean_cycles_pred"), s.get("mean_cycles_minao")
    lines += [
        row("cycles model / minao (mean ratio)", s.get("ratio_pred_over_minao"), "14.3f"),
        row("max |E(model) - E(minao)| (Eh)", s.get("max_abs_energy_diff_pred_vs_minao"), "14.2e"),
        f"  {('final energies equal (< %.0e Eh)' % tol) if tol is not None else 'final energies equal':44s} "
        f"{flag(equal)}",
        f"  {'model helps (fewer cycles than minao)':44s} "
        f"{flag(None if cp is None or cm is None else cp < cm)}",
    ]
    t = res.get("timings") or {}
    if "wall_s" in res:
        lines += ["", f"wall time {res['wall_s']:.0f} s (labelling {t.get('label_s', float('nan')):.0f} s, training "
                      f"{t.get('train_s', float('nan')):.0f} s, evaluation + SCF {t.get('evaluate_s', float('nan')):.0f} s) "
                      f"on {res.get('device', '?')}"]
    return "\n".join(lines)


def run_demo(out: str = "qhnetv2-demo", quick: bool = False, steps: Optional[int] = None,
             xc: str = "hf", basis: str = "def2-svp", target: Optional[str] = None,
             device: str = "auto", workers: Optional[int] = None, base_scf: bool = True,
             progress: bool = True, orbital_loss: Optional[float] = None) -> Dict[str, Any]:
    """The whole demo; returns the result dict (also written to ``RUN/demo.json``)."""
    import numpy as np
    import torch

    from .data.build import build_dataset
    from .data.recipe import make_md17_like
    from .data.split import write_json_atomic
    from .data.store import HamiltonianReader
    from .training import load_config, train

    t0 = time.time()
    sizes = dict(QUICK if quick else FULL)
    run = os.path.abspath(out)
    os.makedirs(run, exist_ok=True)
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    timings: Dict[str, float] = {}

    def say(msg: str) -> None:
        print(f"[demo {time.time() - t0:6.0f}s] {msg}", flush=True)

    # 1-2. geometries and labels (cached / resumable)
    t = time.time()
    paths = make_md17_like(os.path.join(run, "geometries"), {"water": sizes["water"], "ethanol": sizes["ethanol"]},
                           seed=0)
    data = os.path.join(run, "data")
    settings = {"xc": xc, "basis": basis}
    ncpu = os.cpu_count() or 1
    n_workers = workers if workers is not None else min(2, ncpu)
    say(f"labelling {sizes['water']} water + {sizes['ethanol']} ethanol geometries with PySCF "
        f"({xc}/{basis}; cached in {data})")
    summary = build_dataset(paths, data, settings, workers=n_workers, threads=max(1, ncpu // max(1, n_workers)),
                            progress=progress)
    if summary["n_failed"]:
        say(f"warning: {summary['n_failed']} molecules failed to label: {summary['failure_reasons']}")
    timings["label_s"] = time.time() - t

    # 3. split
    reader = HamiltonianReader(data)
    split = demo_split(reader, sizes)
    split_path = os.path.join(run, "split.json")
    write_json_atomic(split_path, dict(split, method="demo: last frames of each trajectory held out"))

    # 4. training
    t = time.time()
    n_steps = int(steps if steps is not None else sizes["steps"])
    cfg = load_config("tiny", max_steps=n_steps, val_every=max(10, n_steps // 8), log_every=5,
                      device="cuda" if cuda else "cpu", target=target)
    if orbital_loss is not None:  # the orbital-energy loss term (docs/model.md, "Training loss")
        from .training.config import TrainConfig
        cfg = TrainConfig.from_dict(dict(cfg.to_dict(), loss=dict(cfg.loss, orbital=float(orbital_loss))))
    say(f"training the tiny preset for {n_steps} steps (target {cfg.target}, {cfg.dtype}, "
        f"{'GPU' if cuda else 'CPU'})")
    threads = torch.get_num_threads()
    if not cuda:
        # the tiny model's ops are small: one thread avoids OpenMP overhead on a busy 2-core machine
        torch.set_num_threads(1)
    try:
        tsum = train(cfg, data, split_path, run, resume=True, progress=progress)
    finally:
        torch.set_num_threads(threads)
    timings["train_s"] = time.time() - t
    say(f"trained: best valid H MAE {tsum['best_val_mae_uEh']:.1f} uEh at step {tsum['best_step']}")

    # 5. evaluation + SCF from the predictions
    t = time.time()
    from .evaluate import evaluate

    say(f"evaluating on {len(split['test'])} held-out geometries; SCF from the model vs from minao")
    res = evaluate(tsum["best_checkpoint"], data, ids=split["test"], scf=len(split["test"]),
                   device="cuda" if cuda else "cpu", refine=True)
    base_cycles = None
    if base_scf and cfg.target != "full":
        from .baseline import base_hamiltonian
        from .scf import run_scf

        scf_settings = res["scf"]["settings"]
        cyc = []
        for mol_id in split["test"]:
            rec = reader[mol_id]
            hb = base_hamiltonian(rec["atomic_numbers"], rec["positions"], cfg.target, scf_settings)
            cyc.append(run_scf(rec["atomic_numbers"], rec["positions"], hb, scf_settings).cycles)
        base_cycles = float(np.mean(cyc))
    timings["evaluate_s"] = time.time() - t

    # 6. report
    result = {
        "recipe": f"{xc}/{basis}", "target": cfg.target, "steps": tsum["steps"],
        "n_train": len(split["train"]), "n_valid": len(split["valid"]), "n_test": len(split["test"]),
        "metrics": res["metrics"], "scf": {k: v for k, v in res["scf"].items()},
        "refined": res.get("refined"),
        "base_cycles": base_cycles, "training": tsum, "timings": timings,
        "device": "GPU" if cuda else f"CPU ({ncpu} cores)", "run_dir": run,
        "checkpoint": tsum["best_checkpoint"], "learning_curve": tsum["learning_curve"],
        "scf_plot": _plot_scf(res["scf"]["per_molecule"], os.path.join(run, "scf_cycles.png")),
    }
    result["wall_s"] = time.time() - t0
    from .evaluate import _json_safe
    write_json_atomic(os.path.join(run, "demo.json"), _json_safe(result))
    return result


def cmd_demo(args) -> int:
    result = run_demo(out=args.out, quick=args.quick, steps=args.steps, xc=args.xc, basis=args.basis,
                      target=args.target, device=args.device, workers=args.workers,
                      base_scf=not args.no_base_scf, progress=not args.no_progress,
                      orbital_loss=args.orbital_loss)
    print()
    print(format_table(result))
    print(f"\nrun folder {result['run_dir']}: checkpoints/best.pt (QHNetV2.load), learning_curve.png, "
          f"scf_cycles.png, log.csv, demo.json")
    sys.stdout.flush()
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser`` (the ``demo`` group parser)."""
    parser.add_argument("--out", default="qhnetv2-demo", metavar="DIR",
                        help="run folder (default %(default)s); reruns reuse its labels and training")
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes for CI (fewer molecules and steps; a few minutes on 2 cores)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 3000, quick: 60)")
    parser.add_argument("--xc", default="hf", help="labelling functional, or hf (default %(default)s; "
                        "b3lyp is QH9's recipe, ~5x slower)")
    parser.add_argument("--basis", default="def2-svp", help="basis (default %(default)s)")
    parser.add_argument("--target", choices=("full", "core", "minao"), default=None,
                        help="what the model learns (default: the tiny preset's, minao)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="default: a GPU when there is one")
    parser.add_argument("--workers", type=int, default=None, help="labelling worker processes")
    parser.add_argument("--no-base-scf", action="store_true",
                        help="skip the extra SCF from the base Hamiltonian alone")
    parser.add_argument("--orbital-loss", type=float, default=None, metavar="W",
                        help="weight of the orbital-energy loss term (default: the tiny preset's, 0; 0.03 "
                             "halves the held-out gap error at some cost in H MAE, docs/model.md)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=cmd_demo)
