"""The README's main job (`python -m so2ops.demo`) runs and checks every backend it can."""
import os
import subprocess
import sys

import torch


def test_demo_runs_and_reports_every_backend():
    gpu = torch.cuda.is_available()
    env = dict(os.environ) if gpu else dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "so2ops.demo", "--lmax", "2", "--mmax", "1", "--channels", "4",
         "--edges", "60", "--nodes", "10", "--repeats", "1"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ") and "backend" not in line}
    assert set(rows) == {"reference", "cpu", "cuda", "triton"}
    # the compiled CPU backend and (interpreted) Triton ran the equivariance check; timings only where meaningful
    assert "not available" not in rows["cpu"] and "not available" not in rows["triton"]
    if gpu:
        assert "not available" not in rows["cuda"]
    else:
        assert "interp." in rows["triton"]
    assert "All backends equivariant" in proc.stdout
