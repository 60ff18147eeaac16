"""Resumability: a build killed with SIGKILL and restarted ends identical to an
uninterrupted run, with every molecule exactly once and none recomputed."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from qhnetv2.data import HamiltonianReader, build_dataset
from qhnetv2.data.store import _scan_ids, open_readonly, release

from qh_helpers import REPO, water_frames, write_xyz

ARGS = ["--xc", "pbe", "--basis", "def2-svp", "--grid-level", "1", "--conv-tol", "1e-10"]
SETTINGS = {"xc": "pbe", "basis": "def2-svp", "grid_level": 1, "conv_tol": 1e-10}
N = 14


def _n_done(path):
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return 0
    try:
        records, failures = _scan_ids(open_readonly(path))
    finally:
        release(path)
    return len(records) + len(failures)


def test_sigkill_then_resume(tmp_path):
    frames = water_frames(N - 1, seed=3)
    frames.insert(5, (np.array([8, 1]), np.array([[0, 0, 0], [0, 0, 0.97]])))  # odd: failure
    geo = write_xyz(tmp_path / "w.xyz", frames)
    killed = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "qhnetv2.cli", "data", "build", "--geometries", geo,
           "--out", killed, "--workers", "1", "--threads", "1", "--no-progress"] + ARGS
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # own session, so that SIGKILL takes the worker processes down too
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _n_done(killed) < 4:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "build made no progress"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = _n_done(killed)
    assert 4 <= n_before < N, "the kill must land mid-run"

    summary = build_dataset([geo], killed, SETTINGS, workers=1, threads=1, progress=False)
    assert summary["n_computed"] == N - n_before  # nothing finished was recomputed
    assert summary["n_ok"] == N - 1 and summary["n_failed"] == 1

    ref = str(tmp_path / "reference")
    build_dataset([geo], ref, SETTINGS, workers=0, threads=1, progress=False)
    a, b = HamiltonianReader(killed), HamiltonianReader(ref)
    assert a.ids == b.ids and len(set(a.ids)) == N - 1
    assert a.failure_ids == b.failure_ids == ["w:00000005"]
    for mol_id in a.ids:
        ra, rb = a[mol_id], b[mol_id]
        np.testing.assert_allclose(ra["hamiltonian"], rb["hamiltonian"], atol=1e-9)
        np.testing.assert_allclose(ra["overlap"], rb["overlap"], atol=1e-12)
        assert abs(ra["energy"] - rb["energy"]) < 1e-9

    a.close()
    b.close()
    # a third run has nothing left to do
    again = build_dataset([geo], killed, SETTINGS, workers=1, progress=False)
    assert again["n_computed"] == 0 and again["n_ok"] == N - 1
