"""``qhnetv2 demo --quick`` end to end (labels, training, evaluation, SCF, table, plots) and the CLI groups."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("pyscf")
pytest.importorskip("rdkit")
pytest.importorskip("yaml")

from qh_helpers import REPO  # noqa: E402


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_help_lists_train_and_demo_and_stays_cheap():
    code = ("import sys; from qhnetv2.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules, 'pyscf' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
    r = subprocess.run([sys.executable, "-m", "qhnetv2", "--help"], capture_output=True, text=True, env=_env(),
                       cwd=REPO)
    assert "train" in r.stdout and "demo" in r.stdout


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "qhnetv2", "demo", "--quick", "--out", str(out), "--no-progress",
                        "--device", "cpu"], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for line in ("Hamiltonian MAE (uEh)", "occupied orbital-energy MAE (uEh)", "occupied coefficient similarity",
                 "mean SCF cycles from the model", "mean SCF cycles from PySCF minao", "final energies equal"):
        assert line in r.stdout, line
    for f in ("checkpoints/best.pt", "checkpoints/last.pt", "learning_curve.png", "scf_cycles.png", "log.csv",
              "demo.json", "split.json"):
        assert (out / f).exists(), f
    res = json.load(open(out / "demo.json"))
    assert res["n_test"] == 3 and res["scf"]["n_errors"] == 0
    assert res["scf"]["n_energy_diff_above_tol"] == 0  # a different start never changes the answer
    from qhnetv2.model import QHNetV2
    model = QHNetV2.load(str(out / "checkpoints" / "best.pt"))
    assert model.config.basis == "def2-svp"
