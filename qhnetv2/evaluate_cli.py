"""``qhnetv2 evaluate``: argparse registration + handler (cheap to import)."""
from __future__ import annotations

import argparse


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate, format_result, write_result

    ids = None
    if args.split or args.subset:
        if not args.split:
            raise ValueError("--subset needs --split FILE")
        from .data.split import load_split
        ids = load_split(args.split, args.subset or "test")
    result = evaluate(args.checkpoint, args.data, ids=ids, scf=args.scf, batch_size=args.batch_size,
                      device=args.device, progress=not args.no_progress, energy_tol=args.energy_tol,
                      density=args.density, refine=args.refine)
    print(format_result(result), flush=True)
    if args.json:
        write_result(result, args.json)
        print(f"results written to {args.json}")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` options to its group parser."""
    parser.description = ("QH9 metrics of a trained checkpoint on a labelled dataset (Hamiltonian, "
                          "diagonal and off-diagonal block MAE, occupied orbital energy MAE in "
                          "micro-Hartree, orbital coefficient similarity in %), spectrum errors (LUMO, "
                          "HOMO-LUMO gap mean and max, worst orbital in eV; lowest-10 virtual orbital "
                          "MAE in micro-Hartree), density errors (total energy of the predicted density "
                          "with the labels' functional in micro-Hartree, dipole in Debye), optionally the "
                          "DFT-acceleration protocol (SCF cycles from the prediction vs minao).")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="model checkpoint (model.save)")
    parser.add_argument("--data", required=True, metavar="DIR", help="labelled dataset directory")
    parser.add_argument("--split", default=None, metavar="FILE", help="split JSON (qhnetv2 data split)")
    parser.add_argument("--subset", default=None, choices=("train", "valid", "test"),
                        help="which split of --split to evaluate (default test)")
    parser.add_argument("--scf", type=_non_negative, default=0, metavar="N",
                        help="run the DFT-acceleration protocol on the first N molecules (default 0)")
    parser.add_argument("--density", type=_non_negative, default=None, metavar="N",
                        help="energy and dipole errors (one PySCF Fock build per density) on the first N "
                             "molecules only (default: all; 0: none)")
    parser.add_argument("--energy-tol", type=float, default=None,
                        help="allowed |E(pred) - E(minao)| in Hartree (default 10 x the dataset's conv_tol)")
    parser.add_argument("--refine", action="store_true",
                        help="also check self-consistency and report the metrics of F[D(H_pred)], one Fock "
                             "build from the predicted density (qhnetv2/consistency.py)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write all results (per molecule too) here")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=8, help="molecules per forward pass (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_evaluate)
