"""The ``qhnetv2`` command line.

Structure: one top-level parser whose sub-commands are *groups* (``data``,
later ``demo``, ``train``, ...).  Each group lives in its own module exposing
``register(parser)``, which adds its own sub-parsers (or a single handler) and
sets ``func`` via ``parser.set_defaults(func=handler)``.  To add a group,
append one line to ``COMMAND_GROUPS``; nothing else here changes.

Handlers receive the parsed ``argparse.Namespace`` and return an exit code.
Registration modules must stay cheap to import (no torch / PySCF at import
time) so that ``qhnetv2 --help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# (group name, module with register(parser), one-line help)
COMMAND_GROUPS = [
    ("data", "qhnetv2.data.commands",
     "label, import, merge, split and benchmark Hamiltonian datasets"),
    ("evaluate", "qhnetv2.evaluate_cli",
     "QH9 metrics (and DFT acceleration) of a checkpoint on a labelled dataset"),
    ("predict", "qhnetv2.predict_cli",
     "Hamiltonians, orbital energies and HOMO-LUMO gaps of new geometries"),
    ("train", "qhnetv2.training.commands",
     "train QHNetV2 on a dataset (YAML config or preset; torchrun for several GPUs)"),
    ("demo", "qhnetv2.demo",
     "label a small water/ethanol set, train the tiny model, show faster SCF"),
]


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser with every registered group."""
    parser = argparse.ArgumentParser(
        prog="qhnetv2",
        description="qhnetv2: machine-learned Kohn-Sham Hamiltonians.")
    from qhnetv2 import __version__
    parser.add_argument("--version", action="version",
                        version=f"qhnetv2 {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    groups.required = True
    for name, module, help_text in COMMAND_GROUPS:
        sub = groups.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).register(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``qhnetv2`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:  # a group given without its sub-command
        parser.parse_args(list(argv or sys.argv[1:]) + ["--help"])
        return 2
    try:
        return int(func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        # Bad input: a clear one-line message, not a traceback.  Set
        # QHNETV2_DEBUG=1 to get the traceback anyway.
        if os.environ.get("QHNETV2_DEBUG"):
            raise
        print(f"qhnetv2: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
