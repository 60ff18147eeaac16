"""``qhnetv2 data ...`` sub-commands (argparse registration + thin handlers).

Cheap to import: handlers import the heavy modules when they run.
"""
from __future__ import annotations

import argparse
import json
import sys


def _print_summary(title: str, summary: dict) -> None:
    print(f"{title}:")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
        print(f"  {key}: {value}")
    sys.stdout.flush()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _add_label_settings(p: argparse.ArgumentParser) -> None:
    from .labelling import DEFAULT_SETTINGS as d
    g = p.add_argument_group("PySCF settings (defaults: the QH9 recipe)")
    g.add_argument("--xc", default=d["xc"], help="functional, or 'hf' (default %(default)s)")
    g.add_argument("--basis", default=d["basis"], help="any PySCF basis (default %(default)s)")
    g.add_argument("--grid-level", type=int, default=d["grid_level"],
                   help="DFT grid level 0-9 (default %(default)s)")
    g.add_argument("--conv-tol", type=float, default=d["conv_tol"],
                   help="SCF energy tolerance, Hartree (default %(default)s)")
    g.add_argument("--conv-tol-grad", type=float, default=None,
                   help="SCF gradient tolerance (default: sqrt(conv-tol))")
    g.add_argument("--max-cycle", type=int, default=d["max_cycle"],
                   help="max SCF cycles before a molecule is a failure (default %(default)s)")
    g.add_argument("--init-guess", default=d["init_guess"], help="default %(default)s")
    g.add_argument("--min-distance", type=float, default=d["min_distance"],
                   help="reject atoms closer than this, Angstrom (default %(default)s)")
    g.add_argument("--smiles-seed", type=int, default=d["smiles_seed"],
                   help="RDKit conformer seed for SMILES input (default %(default)s)")


def _settings_from_args(args) -> dict:
    return {"xc": args.xc, "basis": args.basis, "grid_level": args.grid_level,
            "conv_tol": args.conv_tol, "conv_tol_grad": args.conv_tol_grad,
            "max_cycle": args.max_cycle, "init_guess": args.init_guess,
            "min_distance": args.min_distance, "smiles_seed": args.smiles_seed}


def _add_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="parallel worker processes; 0 = run in this process (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="OpenMP threads per worker (default: cores / workers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------- handlers
def cmd_build(args) -> int:
    from .build import build_dataset
    summary = build_dataset(args.geometries, args.out, _settings_from_args(args),
                            workers=args.workers, shard=args.shard, fmt=args.format,
                            retry_failed=args.retry_failed, threads=args.threads,
                            progress=not args.no_progress)
    _print_summary(f"build {args.out}", summary)
    print(f"{summary['n_ok']} succeeded, {summary['n_failed']} failed "
          f"(of {summary['n_molecules']} in this shard)")
    return 0


def cmd_merge(args) -> int:
    from .merge import merge_datasets
    _print_summary("merge", merge_datasets(args.parts, args.out, args.allow_missing,
                                           progress=not args.no_progress))
    return 0


def cmd_split(args) -> int:
    from .split import make_split
    split = make_split(args.dataset, args.method, args.seed, args.fractions,
                       args.size_bounds, out=args.out, qh9=args.qh9,
                       geometries_per_molecule=args.geometries_per_molecule,
                       geometry_counts=tuple(args.geometry_counts))
    print(f"split written to {args.out}: " + ", ".join(
        f"{k} {len(split[k])}" for k in ("train", "valid", "test")))
    if split.get("n_unassigned"):
        print(f"  {split['n_unassigned']} rows after the last complete molecule block "
              f"are in no split (as in QH9)")
    return 0


def cmd_import(args) -> int:
    from .importers import import_qh9, import_schnorb
    progress = not args.no_progress
    if args.source in ("qh9-stable", "qh9-dynamic"):
        summary = import_qh9(args.file, args.out, variant=args.source.split("-")[1],
                             orbital_order=args.orbital_order,
                             positions_unit=args.positions_unit, prefix=args.prefix,
                             verify=args.verify, limit=args.limit, progress=progress)
    else:
        summary = import_schnorb(args.file, args.out, prefix=args.prefix,
                                 verify=max(args.verify, 1), energy_unit=args.energy_unit,
                                 hamiltonian_unit=args.hamiltonian_unit, limit=args.limit,
                                 progress=progress)
    _print_summary(f"import {args.source} -> {args.out}", summary)
    return 0


def cmd_scf_bench(args) -> int:
    from .scf_bench import scf_bench
    from .split import load_split
    ids = None
    if args.split_file or args.split:
        if not (args.split_file and args.split):
            raise ValueError("--split-file and --split must be given together")
        ids = load_split(args.split_file, args.split)
    summary = scf_bench(args.dataset, pred=args.pred, out=args.out, pred_order=args.pred_order,
                        noise=args.noise, ids=ids, limit=args.limit, workers=args.workers,
                        threads=args.threads, energy_tol=args.energy_tol,
                        progress=not args.no_progress)
    _print_summary("scf-bench", summary)
    return 0


def cmd_recipe(args) -> int:
    from .recipe import make_md17_like, parse_counts
    paths = make_md17_like(args.out, parse_counts(args.counts), seed=args.seed,
                           temperature=args.temperature)
    print("geometries: " + " ".join(paths))
    if args.label:
        from .build import build_dataset
        summary = build_dataset(paths, args.label, _settings_from_args(args),
                                workers=args.workers, threads=args.threads,
                                progress=not args.no_progress)
        _print_summary(f"build {args.label}", summary)
    return 0


# ---------------------------------------------------------------- registration
def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``data`` sub-commands to ``parser`` (the ``data`` group parser)."""
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("build", help="label geometries with PySCF into an LMDB dataset",
                       description="Label every molecule of the input files with restricted "
                       "KS (PySCF). Resumable: rerun the same command after an interruption.")
    p.add_argument("--geometries", nargs="+", required=True, metavar="FILE",
                   help="files ASE can read (xyz, extxyz, ...) or SMILES lists (.smi)")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory")
    p.add_argument("--format", default=None,
                   help="input format for ASE, or 'smiles' (default: from the extension)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="label only molecules with global index i %% N == K (K 0-based)")
    p.add_argument("--retry-failed", action="store_true",
                   help="recompute molecules recorded as failures")
    _add_label_settings(p)
    _add_worker_args(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("merge", help="join shard datasets, checking nothing is missing")
    p.add_argument("parts", nargs="+", metavar="PART", help="dataset directories")
    p.add_argument("--out", required=True, metavar="DIR", help="new merged dataset")
    p.add_argument("--allow-missing", action="store_true",
                   help="merge even if shards or molecules are missing")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("split", help="reproducible train/valid/test split")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--out", required=True, metavar="FILE", help="split JSON file")
    p.add_argument("--method", choices=("random", "size"), default="random",
                   help="random (seeded) or by molecule size (QH9-stable-ood style)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VALID", "TEST"))
    p.add_argument("--size-bounds", type=int, nargs=2, default=None, metavar=("A", "B"),
                   help="size split: train n_atoms <= A, valid <= B, test > B")
    p.add_argument("--qh9", choices=("stable-id", "stable-ood", "dynamic-geo", "dynamic-mol"),
                   default=None,
                   help="QH9's published split of a dataset made by 'data import qh9-*' "
                   "(overrides --method/--seed/--fractions)")
    p.add_argument("--geometries-per-molecule", type=int, default=100, metavar="G",
                   help="--qh9 dynamic-*: consecutive rows per molecule (QH9: 100)")
    p.add_argument("--geometry-counts", type=int, nargs=2, default=(80, 10),
                   metavar=("TRAIN", "VALID"),
                   help="--qh9 dynamic-geo: geometries per molecule in train and valid "
                   "(QH9: 80 10; the rest is test)")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("import", help="convert QH9 / SchNOrb-MD17 files")
    p.add_argument("source", choices=("qh9-stable", "qh9-dynamic", "schnorb-md17"))
    p.add_argument("file", metavar="FILE", help="QH9 SQLite/LMDB file or SchNOrb ASE db")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--orbital-order", choices=("auto", "pyscf", "qh9"), default="auto",
                   help="QH9 only: AO order of the file's matrices (default auto-detect)")
    p.add_argument("--positions-unit", choices=("angstrom", "bohr"), default=None,
                   help="QH9 only (default: angstrom for stable, bohr for dynamic)")
    p.add_argument("--energy-unit", choices=("hartree", "ev"), default="hartree",
                   help="SchNOrb only")
    p.add_argument("--hamiltonian-unit", choices=("hartree", "ev"), default="hartree",
                   help="SchNOrb only")
    p.add_argument("--prefix", default=None, help="molecule-id prefix")
    p.add_argument("--verify", type=_positive_int, default=0,
                   help="check this many converted molecules against PySCF")
    p.add_argument("--limit", type=int, default=None, help="import at most N molecules")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("scf-bench", help="QH9 DFT-acceleration benchmark (SCF cycles)")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--pred", default="exact",
                   help="'exact' (the labels), a dataset dir, or an .npz keyed by id")
    p.add_argument("--pred-order", choices=("pyscf", "qh9", "orca"), default="pyscf")
    p.add_argument("--noise", type=float, default=0.0,
                   help="add symmetric Gaussian noise of this std (Hartree) to --pred")
    p.add_argument("--split-file", default=None)
    p.add_argument("--split", choices=("train", "valid", "test"), default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--energy-tol", type=float, default=None,
                   help="allowed |E(pred)-E(minao)| (default 10 x conv_tol)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="results JSON (progress in FILE.jsonl, resumable)")
    _add_worker_args(p)
    p.set_defaults(func=cmd_scf_bench)

    p = sub.add_parser("recipe", help="MD17-like water/ethanol geometries (+ labels)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for .extxyz files")
    p.add_argument("--counts", default="water=100,ethanol=20",
                   help="molecules and frame counts (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=500.0, help="MD temperature, K")
    p.add_argument("--label", default=None, metavar="DATASET",
                   help="also label the geometries into this dataset directory")
    _add_label_settings(p)
    _add_worker_args(p)
    p.set_defaults(func=cmd_recipe)
