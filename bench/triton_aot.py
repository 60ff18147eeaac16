"""Ahead-of-time compile of so2ops' Triton kernels for a GPU target, without a GPU.

``TRITON_INTERPRET=1`` (how CI runs the Triton backend) never lowers a kernel to
PTX, so a construct only the interpreter accepts, or a kernel that spills
heavily on the GPU, shows up only on a GPU machine.  This module compiles a
kernel for ``sm_<arch>`` with ``triton.compile`` (no driver needed), down to the
cubin with Triton's bundled ``ptxas`` and Triton's own flags, and reads the
registers, spills and stack per thread from that ``ptxas -v`` report.

Covered: ``so2_message``'s fused forward kernel, at the tile sizes its GPU
launch picks (``so2ops.triton.so2_message._fwd_tiles``) or given ones.

    python -m bench.triton_aot --lmax 4 --mmax 2 --channels 128
    python -m bench.triton_aot --lmax 4 --mmax 2 --block 16 16 16 --warps 8 --stages 1

``ptxas`` on a kernel this size takes up to a few minutes on a small CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from typing import Dict, Optional, Sequence

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from so2ops.triton import so2_message as tmsg

#: argument types of ``_so2_message_fwd_kernel`` before its constexprs (float32 features, int64 indices)
_MSG_FWD_TYPES = ("*fp32", "*fp32", "*i64", "*i64", "*i64", "*i64", "*fp32", "*i64", "*fp32", "*fp32",
                  "i64", "i64", "i64", "i64", "i64")


def lower(kernel, types: Sequence[str], constexprs: Dict[str, object], num_warps: int = 4, arch: int = 90,
          num_stages: Optional[int] = None):
    """``triton.compile`` of ``kernel`` for ``cuda:sm_<arch>``: the compiled kernel (``.asm["ptx"]``).
    Needs real ``@triton.jit`` kernels: run in a process without ``TRITON_INTERPRET=1``."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("bench.triton_aot: TRITON_INTERPRET is set, so the kernels are interpreted functions "
                           "that cannot be lowered; run it in a process without TRITON_INTERPRET")
    names = kernel.arg_names
    sig = dict(zip(names, list(types) + ["constexpr"] * (len(names) - len(types))))
    missing = [n for n, t in sig.items() if t == "constexpr" and n not in constexprs]
    if missing:
        raise ValueError(f"lower: constexprs missing for {missing}")
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in constexprs.items()})
    options = dict(num_warps=num_warps) if num_stages is None else dict(num_warps=num_warps, num_stages=num_stages)
    # triton.compile runs every stage down to the cubin, ptxas included (with Triton's own flags); its
    # `ptxas -v` log is printed when asked for, and only on a real compile (not from the cache)
    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    compiled.ptxas_log = log.getvalue()
    return compiled


def ptxas_stats(log: str) -> Dict[str, int]:
    """Registers, spill stores / loads and stack bytes per thread from a ``ptxas -v`` log."""

    def grab(pattern: str) -> int:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    if "registers" not in log:
        raise RuntimeError("bench.triton_aot: no ptxas -v report in the compile log")
    return {"registers": grab(r"Used (\d+) registers"), "spill_stores": grab(r"(\d+) bytes spill stores"),
            "spill_loads": grab(r"(\d+) bytes spill loads"), "stack": grab(r"(\d+) bytes stack frame")}


def so2_message_fwd(lmax: int, mmax: int, channels: int, block: Optional[Sequence[int]] = None, num_warps: int = 4,
                    segmented: bool = False, arch: int = 90, num_stages: Optional[int] = None):
    """Lower ``so2_message``'s forward kernel (float32, modulated, ``channels`` in and out) for the GPU;
    ``block = (BLOCK_E, BLOCK_CO, BLOCK_CI)``, default: what its GPU launch picks."""
    be, bco, bci = block or tmsg._fwd_tiles(torch.device("cuda"), lmax, channels, channels)
    consts = dict(LMAX=lmax, MMAX=mmax, MOD=True, SEGMENTED=segmented, ACC=tl.float32, BLOCK_E=be, BLOCK_CO=bco,
                  BLOCK_CI=bci, BLOCK_T=16)
    return lower(tmsg._so2_message_fwd_kernel, _MSG_FWD_TYPES, consts, num_warps, arch, num_stages), (be, bco, bci)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lmax", type=int, default=4)
    p.add_argument("--mmax", type=int, default=2)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--block", type=int, nargs=3, metavar=("E", "CO", "CI"), help="default: the GPU launch's")
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--stages", type=int, help="software-pipelining stages (default: Triton's)")
    p.add_argument("--segmented", action="store_true", help="the deterministic (segmented) variant")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--ptx-out", metavar="PATH", help="also write the PTX there")
    a = p.parse_args(argv)
    k, block = so2_message_fwd(a.lmax, a.mmax, a.channels, a.block, a.warps, a.segmented, a.arch, a.stages)
    if a.ptx_out:
        with open(a.ptx_out, "w") as f:
            f.write(k.asm["ptx"])
    line = (f"so2_message fwd lmax={a.lmax} mmax={a.mmax} C={a.channels} block(E,CO,CI)={block} warps={a.warps} "
            f"stages={a.stages or 'default'} "
            f"segmented={a.segmented} sm_{a.arch}: PTX {len(k.asm['ptx'])} chars, shared {k.metadata.shared} B")
    s = ptxas_stats(k.ptxas_log)
    line += (f", {s['registers']} registers, {s['spill_stores']} B spill stores, {s['spill_loads']} B spill "
             f"loads, {s['stack']} B stack")
    print(line)


if __name__ == "__main__":
    main()
