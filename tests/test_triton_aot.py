"""The Triton kernels lower to GPU code (PTX for sm_90) without a GPU.

CI runs the Triton backend under ``TRITON_INTERPRET=1``, which never compiles a
kernel: a construct only the interpreter accepts (e.g. a ``tl.constexpr``
re-bound inside an unrolled loop) would fail only on a GPU machine.  Here
``python -m bench.triton_aot`` compiles ``so2_message``'s fused forward kernel
for sm_90 down to the cubin (PTX, then Triton's ptxas) at the tile sizes its GPU
launch picks, in a process without ``TRITON_INTERPRET``, and reports ptxas'
register count.
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
    from so2ops.triton.so2_message import _fwd_tiles

    out, ptx = _lower(tmp_path, "--lmax", str(lmax), "--mmax", str(mmax), "--channels", "64",
                      *(["--segmented"] if segmented else []))
    assert ".target sm_90" in ptx and ".entry _so2_message_fwd_kernel" in ptx
    # atomic adds into the output only in the non-deterministic variant
    atomics = re.findall(r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.global", ptx, flags=re.M)
    assert bool(atomics) == (not segmented)
    assert f"block(E,CO,CI)={_fwd_tiles(torch.device('cuda'), lmax, 64, 64)}" in out
    regs = int(re.search(r"(\d+) registers", out).group(1))  # ptxas -v of the real cubin build was read
    assert 0 < regs <= 255


def test_lower_refuses_interpreted_kernels(monkeypatch):
    from bench import triton_aot

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_aot.so2_message_fwd(1, 1, 16)
