"""The plain install route: base dependencies only (torch, numpy), no ``data`` extra.

``pip install .`` without ``[data]`` has no PySCF, LMDB, ASE, RDKit, tqdm, PyYAML,
matplotlib, TensorBoard.  Simulated here by a ``sitecustomize`` that puts ``None`` into
``sys.modules`` for each of them: ``import ase`` then fails and
``importlib.util.find_spec("ase")`` is None, as without the package.  Every ``qhnetv2``
sub-command that needs them must print exactly one line naming the pip command and
exit non-zero, never a traceback; ``--help`` and so2ops must keep working.
(``scripts/check_plain_install.sh`` does the same after a real plain install; CI runs it.)
"""
import ast
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from qh_helpers import REPO  # noqa: E402

from qhnetv2.cli import DATA_EXTRA, EXIT_MISSING_EXTRA, REQUIRES, build_parser, main  # noqa: E402

HIDDEN = sorted(DATA_EXTRA)

#: one argv per sub-command (arguments that parse; the files need not exist: the check comes first)
COMMANDS = {
    "demo": ["demo", "--out", "OUT"],
    "train": ["train", "--config", "tiny", "--data", "D", "--split", "S", "--out", "OUT"],
    "evaluate": ["evaluate", "--checkpoint", "C.pt", "--data", "D"],
    "predict": ["predict", "--checkpoint", "C.pt", "--geometry", "G.xyz", "--out", "OUT.npz"],
    "data build": ["data", "build", "--geometries", "G.xyz", "--out", "OUT"],
    "data merge": ["data", "merge", "A", "--out", "OUT"],
    "data split": ["data", "split", "D", "--out", "S.json"],
    "data import": ["data", "import", "qh9-stable", "F.db", "--out", "OUT"],
    "data scf-bench": ["data", "scf-bench", "D"],
    "data recipe": ["data", "recipe", "--out", "OUT"],
}


@pytest.fixture(scope="module")
def plain_env(tmp_path_factory):
    """Environment of a Python that cannot import the data extra."""
    site = tmp_path_factory.mktemp("plain_site")
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"for _name in {HIDDEN!r}:\n"
        "    sys.modules[_name] = None  # import fails, importlib.util.find_spec returns None\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("QHNETV2_DEBUG", None)
    return env


def _qhnetv2():
    """The console script next to this Python (what a user types), else ``python -m qhnetv2``."""
    script = os.path.join(os.path.dirname(sys.executable), "qhnetv2")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "qhnetv2"]


def test_hider_hides(plain_env):
    code = ("import importlib.util, json; "
            f"print(json.dumps([importlib.util.find_spec(n) is None for n in {HIDDEN!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=plain_env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(json.loads(r.stdout)), r.stdout


def test_demo_without_the_data_extra_is_one_line(plain_env, tmp_path):
    r = subprocess.run(_qhnetv2() + ["demo", "--out", str(tmp_path / "demo")], capture_output=True, text=True,
                       env=plain_env, cwd=str(tmp_path), timeout=300)
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert r.returncode != 0
    assert "Traceback" not in r.stdout + r.stderr
    assert len(lines) == 1, lines
    assert "pip install" in lines[0] and "qhnetv2 demo" in lines[0]
    assert 'pip install "so2ops[data]"' in lines[0]  # so2ops is installed (editable) here
    for pip_name in ("pyscf", "ase", "lmdb", "rdkit"):
        assert pip_name in lines[0]
    assert not (tmp_path / "demo").exists()  # nothing started


def test_every_subcommand_without_the_data_extra_is_one_line(plain_env, tmp_path):
    """All sub-commands in one interpreter (one torch import): each prints one line, no traceback."""
    harness = (
        "import contextlib, io, json, sys, traceback\n"
        "from qhnetv2.cli import main\n"
        "results = {}\n"
        f"for name, argv in {COMMANDS!r}.items():\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "            rc = main(argv)\n"
        "    except BaseException:\n"
        "        rc, err = 'raised', io.StringIO(err.getvalue() + traceback.format_exc())\n"
        "    results[name] = [rc, out.getvalue() + err.getvalue()]\n"
        "print(json.dumps(results))\n")
    r = subprocess.run([sys.executable, "-c", harness], capture_output=True, text=True, env=plain_env,
                       cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.splitlines()[-1])
    assert set(results) == set(COMMANDS)
    for name, (rc, text) in results.items():
        lines = [line for line in text.splitlines() if line.strip()]
        assert rc == EXIT_MISSING_EXTRA, (name, rc, text)
        assert "Traceback" not in text, (name, text)
        assert len(lines) == 1 and f"qhnetv2 {name} needs" in lines[0] and "pip install" in lines[0], (name, lines)
    assert os.listdir(tmp_path) == []  # nothing was created


def test_help_and_so2ops_work_without_the_data_extra(plain_env, tmp_path):
    for argv in (["--help"], ["demo", "--help"], ["data", "build", "--help"], ["--version"]):
        r = subprocess.run(_qhnetv2() + argv, capture_output=True, text=True, env=plain_env, cwd=str(tmp_path),
                           timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (argv, r.stderr)
    code = ("import torch, so2ops, sys; from so2ops.nn import SO2Convolution; "
            "print(sorted(so2ops.backends()) != [], 'qhnetv2' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=plain_env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]


def test_model_api_works_without_pyscf_for_a_full_target(plain_env, tmp_path):
    """QHNetV2 with an explicit basis layout predicts (target full) with no PySCF at all."""
    code = ("import sys, numpy as np, so2ops\n"
            "from qhnetv2.model import QHNetV2\n"
            "m = QHNetV2(basis='sto-3g', elements=[1, 8], layout=so2ops.BasisLayout({1: [0], 8: [0, 0, 1]}),\n"
            "            channels=8, layers=1, mmax=1, num_rbf=8, body_order=2)\n"
            "h = m.predict([8, 1, 1], [[0, 0, 0.1], [0.76, 0, -0.47], [-0.76, 0, -0.47]])\n"
            "print(h.shape, 'pyscf' in sys.modules and sys.modules['pyscf'] is not None)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=plain_env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(7,", "7)", "False"]


def test_requires_covers_every_subcommand():
    """A new sub-command must say what it needs (REQUIRES), or the plain install may traceback."""
    parser = build_parser()
    groups = next(a for a in parser._actions if a.dest == "group")
    names = []
    for group, sub in groups.choices.items():
        nested = [a for a in sub._actions if getattr(a, "dest", None) == "data_command"]
        names += [f"{group} {s}" for s in nested[0].choices] if nested else [group]
    assert sorted(names) == sorted(REQUIRES) == sorted(COMMANDS)
    for modules in REQUIRES.values():
        assert set(modules) <= set(DATA_EXTRA)


def test_data_extra_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["name"] == "so2ops"  # the name the hint installs
    assert sorted(project["optional-dependencies"]["data"]) == sorted(DATA_EXTRA.values())
    assert not {"pyscf", "lmdb", "ase", "rdkit"} & {d.split("=")[0].split("<")[0].split(">")[0]
                                                   for d in project["dependencies"]}


def test_a_module_error_inside_a_handler_is_one_line(monkeypatch, capsys):
    import qhnetv2.evaluate_cli as ev

    def boom(args):
        raise ModuleNotFoundError("No module named 'lmdb'", name="lmdb")
    monkeypatch.setattr(ev, "cmd_evaluate", boom)
    assert main(["evaluate", "--checkpoint", "c.pt", "--data", "d"]) == EXIT_MISSING_EXTRA
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qhnetv2 evaluate needs" in err[0] and "lmdb" in err[0] and "pip install" in err[0]

    def other(args):
        raise ModuleNotFoundError("No module named 'h5py'", name="h5py")
    monkeypatch.setattr(ev, "cmd_evaluate", other)
    assert main(["evaluate", "--checkpoint", "c.pt", "--data", "d"]) == EXIT_MISSING_EXTRA
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'h5py'" in err[0] and "pip install h5py" in err[0]


def test_so2ops_imports_neither_qhnetv2_nor_pyscf():
    """so2ops stays installable and importable on its own."""
    root = os.path.join(REPO, "so2ops")
    offenders = []
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                offenders += [f"{os.path.relpath(path, REPO)}: {m}" for m in mods
                              if m.split(".")[0] in ("qhnetv2", "pyscf")]
    assert offenders == []
