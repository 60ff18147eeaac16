"""The GEMM floor of an SO(2) layer stack: a lower bound on any implementation's time, measured.

Any implementation of the SO(2) convolutions of an eSCN-style message must do
their matrix products; the rest (rotations, gathers, gates, scatters) costs
extra.  The ``gemm_floor`` rows time *only* those products, for the whole edge
set at once (the largest, most efficient GEMM shapes, as the peer uses) and in
the cheapest form known here:

* per order ``m = 0``: one GEMM ``[E, L0 Cin] x [L0 Cin, L0 Cout]``;
* per order ``m > 0``: the complex product ``(W1 + i W2)(a+ + i a-)`` as three
  real GEMMs ``[E, Lm Cin] x [Lm Cin, Lm Cout]`` (Gauss / 3M), not four;
* plus the plain linear layers of the block (gate logits, the radial MLP's
  last layer), each one GEMM;
* backward: per forward GEMM ``Y = A W^T`` one GEMM for ``dA = dY W`` (when the
  input needs a gradient) and one for ``dW = dY^T A``; nothing is recomputed.

Its time is what a fused kernel would take if every other step were free and
its GEMMs ran as fast as the machine's BLAS does at these whole-graph shapes, so
``fairchem_general time / gemm_floor time`` estimates the best speedup over the
peer at this FLOP count: a measured (not proven) ceiling for the speed goals,
timed side by side in the same run.  The rows compute no
useful output (``same_math=False``: only checked finite).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .counts import Count, combine
from .registry import Impl, Workload

#: one GEMM per row of the edge set: (in features, out features, input needs a gradient)
Gemm = Tuple[int, int, bool]


def so2_gemms(lmax: int, mmax: int, cin: int, cout: int, input_grad: bool = True) -> List[Gemm]:
    """The GEMMs of one SO(2) linear layer in 3M form (``m > 0``: three per order)."""
    out: List[Gemm] = []
    for m in range(mmax + 1):
        n_l = lmax - m + 1  # degrees l = m..lmax
        out += [(n_l * cin, n_l * cout, input_grad)] * (1 if m == 0 else 3)
    return out


def count(gemms: Sequence[Gemm], e: int, mode: str, itemsize: int) -> Count:
    """FLOPs of the floor (bytes: the GEMM operands once)."""
    f = sum(2 * e * k * n for k, n, _ in gemms)
    b = sum(2 * e * k * n * (2 if need else 1) for k, n, need in gemms)
    by = itemsize * sum(e * (k + n) + k * n for k, n, _ in gemms)
    return combine(Count(f, by), Count(b, 2 * by), mode)


class _Floor(torch.autograd.Function):
    """Forward: ``Y_i = A_i W_i^T`` for every GEMM; backward: ``dA_i = dY_i W_i``, ``dW_i = dY_i^T A_i``."""

    @staticmethod
    def forward(ctx, dummy, gemms, acts, weights, outs):
        for a, w, y in zip(acts, weights, outs):
            torch.mm(a, w.t(), out=y)
        ctx.gemms, ctx.acts, ctx.weights, ctx.outs = gemms, acts, weights, outs
        return dummy.clone()

    @staticmethod
    def backward(ctx, g):
        gsum = g.sum()
        for (k, n, need), a, w, gy in zip(ctx.gemms, ctx.acts, ctx.weights, ctx.outs):
            gw = gy.t() @ a  # dW (gy stands in for dY: same shape, same cost)
            gsum = gsum + gw[0, 0]
            if need:
                ga = gy @ w  # dA
                gsum = gsum + ga[0, 0]
        return g * 0 + gsum * 0, None, None, None, None


def workload(gemms: Sequence[Gemm], e: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Workload:
    """A training step of the floor over ``e`` edge rows (buffers allocated once, outside the timing)."""
    gen = torch.Generator().manual_seed(seed)
    acts = [torch.randn(e, k, generator=gen).to(device=device, dtype=dtype) for k, _, _ in gemms]
    weights = [torch.randn(n, k, generator=gen).to(device=device, dtype=dtype) / k ** 0.5 for k, n, _ in gemms]
    outs = [torch.empty(e, n, device=device, dtype=dtype) for _, n, _ in gemms]
    dummy = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)

    def forward():
        return _Floor.apply(dummy, list(gemms), acts, weights, outs)

    return Workload(forward=forward, grad_inputs=[dummy])


def impl(gemms_of: Callable[[Dict], List[Gemm]], what: str,
         reading: str = "fairchem_general / gemm_floor estimates the best speedup at this FLOP count") -> Impl:
    """The ``gemm_floor`` row of an entry: ``gemms_of(shape)`` lists its GEMMs, ``what`` names them,
    ``reading`` says what its time is compared with in that entry."""

    def build(inputs, shape):
        return workload(gemms_of(shape), shape["E"], inputs["x"].dtype, inputs["x"].device)

    return Impl("gemm_floor", "baseline", build, same_math=False, memory=False,
                count=lambda shape, mode, isz: count(gemms_of(shape), shape["E"], mode, isz),
                note=f"estimated ceiling, not an implementation: only {what} (3M form, whole edge set, nothing "
                     f"recomputed); {reading}")


def ceiling_target(entry: str, row: dict, goal: float) -> dict:
    """An information row of ``targets``: the speedup of the GEMM floor over the peer (the ceiling)."""
    value = row.get("speedup", {}).get("fairchem_general") if row["status"] == "ok" else None
    return {"entry": entry, "impl": "gemm_floor", "metric": "ceiling: fairchem_general / GEMM floor",
            "goal": goal, "cmp": ">=", "value": value, "met": None if value is None else value >= goal,
            "binding": False, "shape": row["shape"],
            "note": "estimated ceiling: the step's GEMMs alone, at the peer's whole-graph shapes, on this BLAS"}
