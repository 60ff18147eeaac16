"""Ahead-of-time compile of so2ops' Triton kernels for a GPU target, without a GPU.

``TRITON_INTERPRET=1`` (how CI runs the Triton backend) never lowers a kernel to
PTX, so a construct only the interpreter accepts, or a kernel that spills
heavily on the GPU, shows up only on a GPU machine.  This module compiles a
kernel for ``sm_<arch>`` with ``triton.compile`` (no driver needed), down to the
cubin with Triton's bundled ``ptxas`` and Triton's own flags, and reads the
registers, spills and stack per thread from that ``ptxas -v`` report.

Covered: every Triton kernel of so2ops, in the variants its launchers use, at
the tile sizes and warp counts the GPU launch picks (each launcher's tile
function, e.g. ``so2ops.triton.so2_message._fwd_launch``), float32 data, int64
indices, 32-bit sizes (what a launch with fewer than 2**31 elements passes).

    python -m bench.triton_aot --all --lmax 4 --mmax 2 --channels 128     # markdown table, every kernel
    python -m bench.triton_aot --all --only rotate                        # kernels whose name matches
    python -m bench.triton_aot --lmax 4 --mmax 2 --channels 128           # so2_message's fused forward only
    python -m bench.triton_aot --lmax 4 --mmax 2 --block 16 16 16 --warps 8 --stages 1

``ptxas`` on the fused forward takes up to a few minutes on a small CPU; the
other kernels take seconds each.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import os
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from so2ops.layout import num_coeffs, spectral_size, wigner_size
from so2ops.triton import assemble_blocks as tasm
from so2ops.triton import edge_wigner as twig
from so2ops.triton import rotate as trot
from so2ops.triton import so2_grid_product as tgrid
from so2ops.triton import so2_linear as tlin
from so2ops.triton import so2_message as tmsg

#: argument types of ``_so2_message_fwd_kernel`` before its constexprs (float32 features, int64 indices)
_MSG_FWD_TYPES = ("*fp32", "*fp32", "*i64", "*i64", "*i64", "*i64", "*fp32", "*i64", "*fp32", "*fp32",
                  "i64", "i64", "i64", "i64", "i64")

#: pointer arguments that hold int64 indices / offsets (every other pointer: float32 data)
_INDEX_PTRS = {"src_ptr", "dst_ptr", "a_idx_ptr", "b_idx_ptr", "tgt_ptr", "perm_ptr", "rowptr_ptr", "woff_ptr",
               "unit_item_ptr", "unit_sp_ptr", "atoms_ptr", "atom_ao_ptr", "atom_mol_ptr", "mol_off_ptr",
               "mol_nao_ptr", "sp_info_ptr", "esrc_ptr", "inv_src_ptr", "W_ptr", "part_off_ptr", "unit_start_ptr",
               "err_ptr"}
_BYTE_PTRS = {"inv_ptr"}  # bool item flags, passed as uint8
_CUDA = torch.device("cuda")


def _refuse_interpreted() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("bench.triton_aot: TRITON_INTERPRET is set, so the kernels are interpreted functions "
                           "that cannot be lowered; run it in a process without TRITON_INTERPRET")


def lower(kernel, types: Sequence[str], constexprs: Dict[str, object], num_warps: int = 4, arch: int = 90,
          num_stages: Optional[int] = None):
    """``triton.compile`` of ``kernel`` for ``cuda:sm_<arch>``: the compiled kernel (``.asm["ptx"]``).
    Needs real ``@triton.jit`` kernels: run in a process without ``TRITON_INTERPRET=1``."""
    _refuse_interpreted()
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
    _refuse_interpreted()
    be, bco, bci = block or _msg_launch(lmax, channels, segmented)[:3]
    consts = dict(LMAX=lmax, MMAX=mmax, MOD=True, SEGMENTED=segmented, ACC=tl.float32, BLOCK_E=be, BLOCK_CO=bco,
                  BLOCK_CI=bci, BLOCK_T=tmsg._seg_targets(_CUDA))
    types = _types(tmsg._so2_message_fwd_kernel,
                   {"W_ptr": "*fp32", "E": "i64", "N": "i64", "CI": "i64", "CO": "i64", "NM": "i64"})
    return lower(tmsg._so2_message_fwd_kernel, types, consts, num_warps, arch, num_stages), (be, bco, bci)


def _msg_launch(lmax: int, channels: int, segmented: bool):
    """``(BLOCK_E, BLOCK_CO, BLOCK_CI, num_warps, num_stages)`` of the fused forward's GPU launch."""
    return tmsg._fwd_launch(_CUDA, lmax, channels, channels, segmented)


# ------------------------------------------------------------------ every kernel
def _types(kernel, overrides: Optional[Dict[str, str]] = None) -> List[str]:
    """Argument types before the constexprs: index pointers int64, data pointers float32, sizes int32."""
    out = []
    for p in kernel.params:
        if p.is_constexpr:
            break
        name = p.name
        if overrides and name in overrides:
            out.append(overrides[name])
        elif name.endswith("_ptr"):
            out.append("*i64" if name in _INDEX_PTRS else ("*u8" if name in _BYTE_PTRS else "*fp32"))
        else:
            out.append("i32")
    return out


@dataclass
class Case:
    """One kernel variant as a launcher runs it on a GPU."""

    name: str
    kernel: object
    consts: Dict[str, object]
    num_warps: int = 4
    overrides: Dict[str, str] = field(default_factory=dict)
    num_stages: Optional[int] = None  # None: Triton's default (what a launch without num_stages gets)

    def tiles(self) -> str:
        return " ".join(f"{k[6:] if k.startswith('BLOCK_') else k}={v}" for k, v in self.consts.items()
                        if k.startswith("BLOCK") or k in ("NP", "BU"))


def cases(lmax: int, mmax: int, channels: int, nu: int = 4) -> List[Case]:
    """Every kernel variant the GPU launchers use at ``lmax`` / ``mmax`` with ``channels`` in and out
    (so2_grid_product: body order ``nu``, ``mmax``; assemble_blocks: shells up to ``min(lmax, 4)``)."""
    f32 = tl.float32
    k, c, p = num_coeffs(lmax), channels, wigner_size(lmax)
    out: List[Case] = []
    # rotate: forward with a gather, grad_x (transposed, atomic scatter), and the plain transposed form
    # (deterministic grad_x before segment_sum)
    be, bc, rw = trot._tiles(_CUDA, lmax, c)
    for tag, g, s, t in (("gather", True, False, False), ("scatter^T", False, True, True), ("^T", False, False, True)):
        out.append(Case(f"rotate {tag}", trot._rotate_kernel,
                        dict(LMAX=lmax, GATHER=g, SCATTER=s, TRANSPOSE=t, ACC=f32, BLOCK_E=be, BLOCK_C=bc), rw))
    be, bp, bc = trot._grad_wigner_tiles(_CUDA, p, c)
    out.append(Case("rotate grad_wigner", trot._rotate_grad_wigner_kernel,
                    dict(LMAX=lmax, A_GATHER=False, B_GATHER=True, ACC=f32, BLOCK_E=be, BLOCK_P=bp, BLOCK_C=bc)))
    # so2_message fused forward: atomic and segmented (deterministic)
    for seg in (False, True):
        be, bco, bci, fw, fs = _msg_launch(lmax, c, seg)
        out.append(Case(f"so2_message fwd {'segmented' if seg else 'atomic'}", tmsg._so2_message_fwd_kernel,
                        dict(LMAX=lmax, MMAX=mmax, MOD=True, SEGMENTED=seg, ACC=f32, BLOCK_E=be, BLOCK_CO=bco,
                             BLOCK_CI=bci, BLOCK_T=tmsg._seg_targets(_CUDA)), fw, {"W_ptr": "*fp32"}, fs))
    out.append(Case("segment_sum", tmsg._segment_sum_kernel,
                    dict(ACC=f32, BLOCK=tmsg._segment_block(_CUDA, k * c))))
    # so2_linear: forward (modulated input) and transposed (grad_x with the modulation gradient), m = 0 and m > 0
    for trans in (False, True):
        be, bn, bk, nw = tlin._apply_tiles(_CUDA, lmax, c, c, torch.float32)
        for m0, pair in ((0, False), (1, True)):
            if pair and mmax == 0:
                continue
            out.append(Case(f"so2_apply {'^T ' if trans else ''}{'m>0' if pair else 'm=0'}", tlin._so2_apply_kernel,
                            dict(LMAX=lmax, M0=m0, PAIR=pair, TRANS=trans, MOD_IN=not trans, MOD_OUT=trans,
                                 NEED_OUT=True, NEED_GMOD=trans, ACC=f32, BLOCK_E=be, BLOCK_N=bn, BLOCK_K=bk), nw))
    be, bn, bk, nw = tlin._grad_weight_tiles(_CUDA, lmax, c, c, torch.float32)
    for m0, pair in ((0, False), (1, True)):
        if pair and mmax == 0:
            continue
        out.append(Case(f"so2_grad_weight {'m>0' if pair else 'm=0'}", tlin._so2_grad_weight_kernel,
                        dict(LMAX=lmax, M0=m0, PAIR=pair, MOD_IN=True, ACC=f32, BLOCK_E=be, BLOCK_N=bn, BLOCK_K=bk),
                        nw))
    # edge_wigner
    from so2ops.wigner_tables import num_points

    out.append(Case("edge_wigner fwd", twig._edge_wigner_fwd_kernel,
                    dict(LMAX=lmax, NPTS=num_points(lmax), P=p, ACC=f32, BLOCK_E=twig._block_e(_CUDA, lmax))))
    # so2_grid_product (nu, mmax; H = channels)
    s = spectral_size(mmax)
    nup, sp = triton.next_power_of_2(nu), triton.next_power_of_2(s)
    for bwd in (False, True):
        block, nw = tgrid._block(_CUDA, 1 << 20, nup, sp, bwd, torch.float32)
        consts = dict(NU=nu, S=s, NUP=nup, SP=sp)
        if bwd:
            consts.update(NEED_S=True, NEED_C=True)
        consts.update(ACC=f32, BLOCK=block)
        out.append(Case(f"grid_product {'bwd' if bwd else 'fwd'} nu={nu}",
                        tgrid._grid_bwd_kernel if bwd else tgrid._grid_fwd_kernel, consts, nw))
    # assemble_blocks (shell degree up to min(lmax, 4))
    ls = min(lmax, 4)
    np_, bu, nw = tasm._tile(ls, _CUDA, torch.float32)
    out.append(Case(f"assemble fwd l_shell={ls}", tasm._assemble_fwd_kernel, dict(NP=np_, BU=bu, ACC=f32), nw))
    out.append(Case(f"assemble bwd l_shell={ls}", tasm._assemble_bwd_kernel,
                    dict(NEED_F=True, NEED_W=True, NP=np_, BU=bu, ACC=f32), nw))
    out.append(Case(f"assemble wigner_reduce l_shell={ls}", tasm._wigner_reduce_kernel,
                    dict(NP=np_, BU=bu, ACC=f32), nw))
    return out


def _run_case(case: Case, arch: int) -> Dict[str, object]:
    """Lower one case: its ptxas figures (``-1`` and the error where it fails to lower)."""
    t0 = time.perf_counter()
    try:
        k = lower(case.kernel, _types(case.kernel, case.overrides), case.consts, case.num_warps, arch,
                  case.num_stages)
        row = dict(ptxas_stats(k.ptxas_log), error="")
    except Exception as exc:  # a kernel that fails to lower is a row, not the end of the table
        row = dict(registers=-1, spill_stores=-1, spill_loads=-1, stack=-1, error=f"{type(exc).__name__}: {exc}"[:200])
    row.update(name=case.name, tiles=case.tiles(), warps=case.num_warps, stages=case.num_stages or "default",
               seconds=time.perf_counter() - t0)
    return row


def table(lmax: int, mmax: int, channels: int, arch: int = 90, only: Optional[str] = None, jobs: int = 1,
          nu: int = 4) -> List[Dict[str, object]]:
    """ptxas figures of every kernel variant (``only``: a regex on the case name)."""
    todo = [i for i, c in enumerate(cases(lmax, mmax, channels, nu)) if only is None or re.search(only, c.name)]
    args = [(lmax, mmax, channels, nu, i, arch) for i in todo]
    if jobs <= 1:
        return [_run_indexed(*a) for a in args]
    with cf.ProcessPoolExecutor(jobs) as pool:  # jit functions do not pickle: each worker rebuilds the cases
        return list(pool.map(_run_indexed, *zip(*args)))


def _run_indexed(lmax: int, mmax: int, channels: int, nu: int, i: int, arch: int) -> Dict[str, object]:
    return _run_case(cases(lmax, mmax, channels, nu)[i], arch)


def markdown(rows: Sequence[Dict[str, object]], lmax: int, mmax: int, channels: int, arch: int) -> str:
    head = (f"lmax={lmax} mmax={mmax} C={channels} float32, sm_{arch}, Triton {triton.__version__}\n\n"
            "| kernel | tiles | warps | stages | registers | spill stores (B) | spill loads (B) | stack (B) "
            "| lower (s) |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['name']} | {r['tiles']} | {r['warps']} | {r['stages']} | error: {r['error']} | | | | "
                         f"{r['seconds']:.0f} |")
        else:
            lines.append(f"| {r['name']} | {r['tiles']} | {r['warps']} | {r['stages']} | {r['registers']} | "
                         f"{r['spill_stores']} | {r['spill_loads']} | {r['stack']} | {r['seconds']:.0f} |")
    return head + "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--all", action="store_true", help="every kernel variant: a markdown table")
    p.add_argument("--only", metavar="REGEX", help="with --all: only the kernels whose name matches")
    p.add_argument("--jobs", type=int, default=1, help="with --all: parallel lowering processes")
    p.add_argument("--nu", type=int, default=4, help="with --all: so2_grid_product body order")
    p.add_argument("--lmax", type=int, default=4)
    p.add_argument("--mmax", type=int, default=2)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--block", type=int, nargs=3, metavar=("E", "CO", "CI"), help="default: the GPU launch's")
    p.add_argument("--warps", type=int, help="default: the GPU launch's")
    p.add_argument("--stages", type=int, help="software-pipelining stages (default: Triton's)")
    p.add_argument("--segmented", action="store_true", help="the deterministic (segmented) variant")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--ptx-out", metavar="PATH", help="also write the PTX there")
    a = p.parse_args(argv)
    if a.all:
        rows = table(a.lmax, a.mmax, a.channels, a.arch, a.only, a.jobs, a.nu)
        print(markdown(rows, a.lmax, a.mmax, a.channels, a.arch), end="")
        return
    _, _, _, launch_warps, launch_stages = _msg_launch(a.lmax, a.channels, a.segmented)
    warps = a.warps or launch_warps
    stages = a.stages or launch_stages
    k, block = so2_message_fwd(a.lmax, a.mmax, a.channels, a.block, warps, a.segmented, a.arch, stages)
    if a.ptx_out:
        with open(a.ptx_out, "w") as f:
            f.write(k.asm["ptx"])
    line = (f"so2_message fwd lmax={a.lmax} mmax={a.mmax} C={a.channels} block(E,CO,CI)={block} warps={warps} "
            f"stages={stages or 'default'} "
            f"segmented={a.segmented} sm_{a.arch}: PTX {len(k.asm['ptx'])} chars, shared {k.metadata.shared} B")
    s = ptxas_stats(k.ptxas_log)
    line += (f", {s['registers']} registers, {s['spill_stores']} B spill stores, {s['spill_loads']} B spill "
             f"loads, {s['stack']} B stack")
    print(line)


if __name__ == "__main__":
    main()
