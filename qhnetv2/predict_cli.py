"""``qhnetv2 predict``: argparse registration + handler (cheap to import)."""
from __future__ import annotations

import argparse
import sys


def cmd_predict(args) -> int:
    from .predict import HARTREE_TO_EV, predict_geometries

    summary = predict_geometries(args.checkpoint, args.geometry, args.out, fmt=args.format,
                                 batch_size=args.batch_size, device=args.device,
                                 smiles_seed=args.smiles_seed, progress=not args.no_progress,
                                 check=not args.no_check, refine=args.refine)
    for mol_id, reason in summary["failures"].items():
        print(f"skipped {mol_id}: {reason}", file=sys.stderr)
    for mol_id, gap in summary["gaps_eV"].items():
        flag = "" if mol_id not in summary["out_of_domain"] else "  (outside the training domain)"
        if mol_id in summary["not_self_consistent"]:
            flag += f"  (not self-consistent: the gap moves {summary['not_self_consistent'][mol_id]:.2f} eV)"
        print(f"{mol_id}  HOMO-LUMO gap {gap:.4f} eV ({gap / HARTREE_TO_EV:.6f} Hartree){flag}")
    domain = (f"{len(summary['out_of_domain'])} outside the training domain" if summary["domain_checked"]
              else "training domain not checked (the checkpoint records none)")
    if summary["consistency_checked"]:
        domain += f"; {len(summary['not_self_consistent'])} not self-consistent"
        if args.refine:
            domain += " (H refined: F[D(H_pred)])"
    print(f"{summary['n_ok']} predicted, {summary['n_failed']} skipped (of {summary['n_molecules']}); {domain}; "
          f"written to {summary['out']} (H and orbital energies in Hartree, positions in Angstrom; "
          f"keys: qhnetv2/predict.py)", flush=True)
    return 0 if summary["n_ok"] else 1


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``predict`` options to its group parser."""
    parser.description = ("Predict the Kohn-Sham Hamiltonian, orbital energies and HOMO-LUMO gap of "
                          "every molecule in geometry files (xyz, extxyz, SDF, ... via ASE; SMILES "
                          "lists .smi). Molecules that cannot be predicted are reported and skipped. "
                          "Output keys: see qhnetv2/predict.py.")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="model checkpoint (model.save)")
    parser.add_argument("--geometry", "--geometries", dest="geometry", nargs="+", required=True,
                        metavar="FILE", help="geometry files (ASE formats) or SMILES lists (.smi)")
    parser.add_argument("--out", required=True, metavar="OUT.npz", help="output .npz (written atomically)")
    parser.add_argument("--format", default=None,
                        help="input format for ASE, or 'smiles' (default: from the extension)")
    parser.add_argument("--smiles-seed", type=int, default=0, help="RDKit conformer seed (default 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=16, help="molecules per forward pass (default 16)")
    parser.add_argument("--refine", action="store_true",
                        help="store F[D(H_pred)], one Fock build from the predicted density (the first SCF "
                             "iteration; removes spurious virtual orbitals), with the raw prediction beside it")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the self-consistency check (one Fock build per molecule)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_predict)
