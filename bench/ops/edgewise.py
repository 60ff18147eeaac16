"""``edgewise``: ``so2_message`` against FAIR-Chem's general edgewise path, at the issue's sizes.

Same function, same inputs and gradients as the ``so2_message`` entry
(``x``, ``weight``, ``modulation``; Wigner blocks precomputed for both and
needing no gradient), but the baseline is FAIR-Chem's own code
(``bench.baselines.fairchem_general``: gather, truncated m-major Wigner
``bmm``, FAIR-Chem's ``SO2_Convolution`` with the modulation as ``x_edge``,
transposed ``bmm``, ``index_add``), and the shapes are the ones the issue
states its goal for (lmax / mmax / C / E):

    2/2/64/2e4, 4/2/64/2e4, 4/4/64/2e4, 4/4/128/1e4, 6/2/64/1e4

Goal (``targets``): every fast so2ops backend >= 2x faster than the peer in a
float32 training step (fwd+bwd) at <= 1/4 of its peak extra memory.
``--quick``: the first two shapes at E 2e3.
"""
from __future__ import annotations

import torch

from .. import gemm_floor
from .. import inputs as inp
from ..baselines import fairchem_general
from ..registry import Case, Impl, Workload, register
from . import so2_message as msg

#: (lmax, mmax, C, E) of the issue's comparison table
PEER_SHAPES = ((2, 2, 64, 20_000), (4, 2, 64, 20_000), (4, 4, 64, 20_000), (4, 4, 128, 10_000), (6, 2, 64, 10_000))
SPEEDUP_GOAL = 2.0
MEM_GOAL = 0.25


class Edgewise(msg.SO2Message):
    name = "edgewise"
    description = "so2_message vs FAIR-Chem's general edgewise path (gather, Wigner bmm, SO2_Convolution, bmm back, index_add)"

    def cases(self, quick, device):
        shapes = PEER_SHAPES[:2] if quick else PEER_SHAPES
        out = []
        for lmax, mmax, c, e in shapes:
            if quick:
                e = 2_000
            shape = dict(lmax=lmax, mmax=mmax, C=c, E=e, N=inp.default_nodes(e))
            # the reference backend is the oracle only (its timing is the so2_message entry's; at these
            # sizes one plain-PyTorch training step takes tens of seconds on a small CPU)
            skips = {} if quick else {"reference": "oracle only (timed in the so2_message entry)"}
            out.append(Case(shape, torch.float32, ("fwd", "fwdbwd"), ("peer",), skips))
        return out

    def impls(self, device):
        impls = [i for i in super().impls(device) if i.kind == "backend"]
        reason = fairchem_general.available()
        impls.append(gemm_floor.impl(_floor_gemms, "the conv's GEMMs"))
        impls.append(Impl(
            "fairchem_general", "baseline", _fairchem_build, is_baseline=True,
            mem_estimate=fairchem_general.mem_estimate, skip=lambda shape, dtype: reason,
            note=f"FAIR-Chem {fairchem_general.VERSION} general path: x[src], truncated m-major Wigner bmm, "
                 "SO2_Convolution (modulation as x_edge), transposed bmm, index_add",
        ))
        return impls

    def targets(self, rows, device):
        fast = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
        goals = [("speedup vs fairchem_general", "speedup", SPEEDUP_GOAL, ">="),
                 ("peak memory / fairchem_general", "mem_ratio", MEM_GOAL, "<=")]
        return peer_targets(self.name, rows, fast, lambda r: goals, lambda r: False, SPEEDUP_GOAL)


def peer_targets(entry, rows, fast, goals, binding, speedup_goal):
    """Target rows against ``fairchem_general`` (float32 fwd+bwd): ``goals(row) -> [(metric, key, goal, cmp)]``
    for the rows of the ``fast`` impls, and the ``gemm_floor`` row as the speedup ceiling."""
    out = []
    for r in rows:
        if r["entry"] != entry or r["mode"] != "fwdbwd" or r["dtype"] != "float32":
            continue
        if r["impl"] == "gemm_floor":
            out.append(gemm_floor.ceiling_target(entry, r, speedup_goal))
            continue
        if r["impl"] not in fast:
            continue
        for metric, key, goal, cmp in goals(r):
            value = r.get(key, {}).get("fairchem_general") if r["status"] == "ok" else None
            met = None if value is None else (value >= goal if cmp == ">=" else value <= goal)
            out.append({"entry": entry, "impl": r["impl"], "metric": metric, "goal": goal, "cmp": cmp,
                        "value": value, "met": met, "binding": binding(r), "shape": r["shape"],
                        "note": "" if value is not None else f"not measured ({r['status']}: {r.get('note', '')})"})
    return out


def _floor_gemms(shape):
    return gemm_floor.so2_gemms(shape["lmax"], shape["mmax"], shape["C"], shape["C"])


def _fairchem_build(inputs, shape):
    fwd, grads, to_ref = fairchem_general.build(inputs, shape)
    return Workload(forward=fwd, grad_inputs=grads, to_reference=to_ref)


ENTRY = register(Edgewise())
