"""The Triton kernels lower to GPU code (PTX for sm_90) without a GPU.

CI runs the Triton backend under ``TRITON_INTERPRET=1``, which never compiles a
kernel: a construct only the interpreter accepts (e.g. a ``tl.constexpr``
re-bound inside an unrolled loop) would fail only on a GPU machine.  Here
``python -m bench.triton_aot`` compiles ``so2_message``'s fused forward kernel
for sm_90 down to the cubin (PTX, then Triton's ptxas) at the tile sizes its GPU
launch picks, in a process without ``TRITON_INTERPRET``, and reports ptxas'
register count.  ``--all`` lowers every kernel variant the launchers use; the
cheap ones are checked here to need no register spills at lmax 4, C 128 (the
full table, fused forward included: bench/results/*/triton_ptxas/README.md).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lower(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    ptx = tmp_path / "k.ptx"
    res = subprocess.run([sys.executable, "-m", "bench.triton_aot", *args, "--ptx-out", str(ptx)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout, ptx.read_text()


# each lowering takes tens of seconds on 2 cores: two cases, both variants, mmax = lmax and < lmax
@pytest.mark.parametrize("lmax,mmax,segmented", [(2, 2, False), (3, 1, True)], ids=["atomic", "segmented"])
def test_so2_message_fwd_lowers_for_sm90(tmp_path, lmax, mmax, segmented):
    from so2ops.triton.so2_message import _fwd_launch

    out, ptx = _lower(tmp_path, "--lmax", str(lmax), "--mmax", str(mmax), "--channels", "64",
                      *(["--segmented"] if segmented else []))
    assert ".target sm_90" in ptx and ".entry _so2_message_fwd_kernel" in ptx
    # atomic adds into the output only in the non-deterministic variant
    atomics = re.findall(r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.global", ptx, flags=re.M)
    assert bool(atomics) == (not segmented)
    be, bco, bci, warps, _ = _fwd_launch(torch.device("cuda"), lmax, 64, 64, segmented)
    assert f"block(E,CO,CI)={(be, bco, bci)} warps={warps}" in out
    regs = int(re.search(r"(\d+) registers", out).group(1))  # ptxas -v of the real cubin build was read
    assert 0 < regs <= 255


def test_rotate_kernels_do_not_spill_at_lmax4(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "bench.triton_aot", "--all", "--lmax", "4", "--mmax", "2", "--channels",
                          "128", "--only", "^rotate|segment_sum"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in res.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    rows = [[c.strip() for c in r] for r in rows if r[0].strip() != "kernel"]
    names = [r[0] for r in rows]
    assert names == ["rotate gather", "rotate scatter^T", "rotate ^T", "rotate grad_wigner", "segment_sum"], names
    for name, tiles, warps, stages, regs, stores, loads, stack, _ in rows:
        assert 0 < int(regs) <= 255, (name, regs)
        assert int(stores) == 0 and int(loads) == 0, f"{name} ({tiles}) spills: {stores} B stores, {loads} B loads"


def test_lower_refuses_interpreted_kernels(monkeypatch):
    from bench import triton_aot

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_aot.so2_message_fwd(1, 1, 16)
