"""The ``qhnetv2`` command line.

Structure: one top-level parser whose sub-commands are *groups* (``data``,
later ``demo``, ``train``, ...).  Each group lives in its own module exposing
``register(parser)``, which adds its own sub-parsers (or a single handler) and
sets ``func`` via ``parser.set_defaults(func=handler)``.  To add a group,
append one line to ``COMMAND_GROUPS``; nothing else here changes.

Handlers receive the parsed ``argparse.Namespace`` and return an exit code.
Registration modules must stay cheap to import (no torch / PySCF at import
time) so that ``qhnetv2 --help`` is instant.

A plain ``pip install`` brings only torch and numpy; PySCF, LMDB, ASE, RDKit, ...
are the optional ``data`` extra (pyproject.toml).  Before a sub-command runs,
:func:`missing_modules` looks up (``importlib.util.find_spec``, nothing imported)
the optional modules it needs (:data:`REQUIRES`); if any is absent the command
prints one line with the pip command that adds them and exits with
:data:`EXIT_MISSING_EXTRA`, never a traceback.  A ``ModuleNotFoundError`` that still
escapes a handler gets the same one-line treatment.  ``QHNETV2_DEBUG=1`` shows
tracebacks instead.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings
from typing import List, Sequence

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


#: import name -> pip name of every module of the optional ``data`` extra (pyproject.toml)
DATA_EXTRA = {"pyscf": "pyscf", "lmdb": "lmdb", "ase": "ase", "rdkit": "rdkit", "tqdm": "tqdm",
              "yaml": "pyyaml", "matplotlib": "matplotlib", "tensorboard": "tensorboard"}

#: optional modules a sub-command cannot run without ("group" or "group sub-command").
#: tensorboard is left out: training only warns without it.
REQUIRES = {
    "demo": ("pyscf", "lmdb", "ase", "rdkit", "tqdm", "yaml", "matplotlib"),
    "train": ("pyscf", "lmdb", "yaml", "tqdm", "matplotlib"),
    "evaluate": ("pyscf", "lmdb"),
    "predict": ("pyscf", "ase", "rdkit"),
    "data build": ("pyscf", "lmdb", "ase", "rdkit", "tqdm"),
    "data merge": ("lmdb", "tqdm"),
    "data split": ("lmdb",),
    "data import": ("pyscf", "lmdb", "ase", "tqdm"),
    "data scf-bench": ("pyscf", "lmdb", "tqdm"),
    "data recipe": ("pyscf", "lmdb", "ase", "rdkit", "tqdm"),
}

#: exit code of a command whose optional dependencies are not installed
EXIT_MISSING_EXTRA = 3


def command_name(args: argparse.Namespace) -> str:
    """``"demo"``, ``"data build"``, ...: the sub-command ``args`` selects."""
    sub = getattr(args, "data_command", None) if args.group == "data" else None
    return f"{args.group} {sub}" if sub else str(args.group)


def missing_modules(modules: Sequence[str]) -> List[str]:
    """The ``modules`` that cannot be imported here (looked up, not imported)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-removed package counts as missing
            found = False
        if not found:
            missing.append(name)
    return missing


def install_hint(modules: Sequence[str]) -> str:
    """The pip command that installs ``modules`` (import names).

    With so2ops installed (the distribution that ships qhnetv2, from a wheel or a
    checkout, editable or not), ``pip install "so2ops[data]"`` adds the extra's
    dependencies to it without rebuilding it; otherwise (running from a source tree
    on ``PYTHONPATH``) the packages themselves.
    """
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        distribution("so2ops")
        return 'pip install "so2ops[data]"'
    except (ImportError, PackageNotFoundError):
        return "pip install " + " ".join(DATA_EXTRA.get(m, m) for m in modules)


def missing_extra_message(command: str, modules: Sequence[str]) -> str:
    """The one line printed when ``command`` lacks optional ``modules``."""
    names = ", ".join(DATA_EXTRA.get(m, m) for m in modules)
    return (f"qhnetv2 {command} needs the optional data dependencies, not installed here ({names}): "
            f"{install_hint(modules)}")


def _show_domain_warnings(show):
    """``warnings.showwarning`` that prints a DomainWarning or ConsistencyWarning as one
    ``qhnetv2: warning:`` line."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        # by name: importing qhnetv2.domain (NumPy) here would slow down --help
        if category.__name__ in ("DomainWarning", "ConsistencyWarning"):
            print(f"qhnetv2: warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


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
    command = command_name(args)
    debug = bool(os.environ.get("QHNETV2_DEBUG"))
    missing = missing_modules(REQUIRES.get(command, ()))
    if missing and not debug:
        print(missing_extra_message(command, missing), file=sys.stderr, flush=True)
        return EXIT_MISSING_EXTRA
    show = warnings.showwarning
    warnings.showwarning = _show_domain_warnings(show)
    try:
        return int(func(args) or 0)
    except ModuleNotFoundError as exc:
        # a dependency REQUIRES does not list (or one broken after the check): still one line
        if debug:
            raise
        name = (exc.name or "").split(".")[0]
        if name in DATA_EXTRA:
            msg = missing_extra_message(command, [name])
        elif name in ("qhnetv2", "so2ops", ""):  # our own module: a broken installation, not an extra
            msg = f"qhnetv2: error: {exc}: the installation is incomplete; reinstall so2ops (README, Building)"
        else:
            msg = f"qhnetv2 {command} needs the Python module {exc.name!r}, not installed here: pip install {name}"
        print(msg, file=sys.stderr, flush=True)
        return EXIT_MISSING_EXTRA
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        # Bad input: a clear one-line message, not a traceback.  Set
        # QHNETV2_DEBUG=1 to get the traceback anyway.
        if os.environ.get("QHNETV2_DEBUG"):
            raise
        print(f"qhnetv2: error: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
