"""``qhnetv2``: the whole QHNetV2 model (a training step and inference), per molecule and per batch.

Cases (float32 parameters and positions; ``shape`` = preset, system, molecules
``B``, atoms ``N``): water, ethanol, uracil (the headline) and a 29-atom
QM9-size molecule (C9H20) one at a time, and a batch of 32 QM9-size molecules
(``bench.models.molecules``); ``--quick``: water only.  Modes ``fwd`` (inference,
``no_grad``) and ``fwdbwd`` (forward + gradients of every parameter: a training
step without the optimizer); peak memory of ``fwdbwd``.

Implementations (the same seeded weights for all):

* ``reference``: every so2ops op forced onto the ``reference`` backend (plain
  PyTorch), forward and backward; the baseline and the oracle.
* ``fused``: no backend forced, i.e. what a user gets: each op takes the
  fastest backend that implements it here (``cpu`` > ``reference`` on a CPU,
  ``cuda`` > ``triton`` > ``reference`` on a GPU).  Its note lists the backend
  each op actually used (``so2ops.dispatch.select``), since an op without a
  kernel on this device falls back to the reference.
* ``cpu`` / ``cuda`` / ``triton``: that backend forced on every op; skipped
  (with the ops it lacks named) until it implements all of them.

The Hamiltonian ``H_flat`` and every parameter gradient are compared with the
reference (runner tolerance table) before anything is timed.  The basis is
def2-SVP hard-coded for H/C/N/O/F (``so2ops.BasisLayout``), so neither the
bench nor the GPU machine needs PySCF.  No analytic FLOP count: the model's
rows report times, speedups and memory only.
"""
from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import torch

import so2ops
from so2ops import BasisLayout, HamiltonianIndex
from so2ops.dispatch import BACKENDS, implementations, runnable, select, use_backend

from ..registry import Case, Entry, Impl, Workload, register
from ..so2_backends import force_backend
from . import molecules as mols

#: def2-SVP shells in PySCF order (H: s s p; C/N/O/F: s s s p p d), as ``qhnetv2.data.basis`` reads them.
DEF2_SVP = {1: (0, 0, 1), 6: (0, 0, 0, 1, 1, 2), 7: (0, 0, 0, 1, 1, 2), 8: (0, 0, 0, 1, 1, 2), 9: (0, 0, 0, 1, 1, 2)}
LAYOUT = BasisLayout(DEF2_SVP, name="def2-svp")
ELEMENTS = (1, 6, 7, 8, 9)

#: so2ops ops the model calls, as dispatched (``so2_tensor_product`` dispatches its grid stage ``so2_grid_product``).
MODEL_OPS = ("edge_wigner", "rotate", "so2_message", "so2_linear", "so2_grid_product", "assemble_blocks")

#: Issue targets for the ``qh9`` preset on a CPU (uracil, batch 1).
QHNET_URACIL_FWDBWD_S = 0.98   # QHNet (AIRS, QH9 config, 20.4M parameters) on these 2-core machines
QHNET_URACIL_FWD_S = 0.38
TARGET_URACIL_FWDBWD_S = 0.2   # 5x faster than QHNet
TARGET_FUSED_VS_REFERENCE = 3.0

HEADLINE = "uracil"


def model_config(preset: str) -> Dict:
    from qhnetv2.model import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return dict(PRESETS[preset])


@lru_cache(maxsize=2)
def build_model(preset: str, dtype: torch.dtype, device: str, seed: int):
    """The seeded model (cached: every implementation of a case shares the same weights)."""
    from qhnetv2.model import QHNetV2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = QHNetV2(elements=ELEMENTS, layout=LAYOUT, **model_config(preset))
    return model.to(device=device, dtype=dtype)


def backends_used(device: torch.device) -> Dict[str, str]:
    """``{op: backend}`` that the automatic choice (nothing forced) runs on ``device``."""
    out = {}
    with _automatic():
        for op in MODEL_OPS:
            try:
                chosen = select(op, device)
            except RuntimeError as exc:
                out[op] = f"none ({exc})"
                continue
            name = "?"
            for b in implementations(op):
                if not runnable(b, device):
                    continue
                with use_backend(b):
                    if select(op, device) is chosen:
                        name = b
                        break
            out[op] = name
    return out


def missing_ops(backend: str, device: torch.device) -> List[str]:
    """Model ops that ``backend`` does not implement (or cannot run on ``device``)."""
    return [op for op in MODEL_OPS if backend not in implementations(op) or not runnable(backend, device)]


@contextlib.contextmanager
def _automatic():
    """No backend forced (neither ``use_backend`` nor ``SO2OPS_BACKEND``): the automatic choice."""
    old = os.environ.pop("SO2OPS_BACKEND", None)
    try:
        with use_backend(None):
            yield
    finally:
        if old is not None:
            os.environ["SO2OPS_BACKEND"] = old


def used_note(device: torch.device) -> str:
    used = backends_used(device)
    return "automatic backend choice; ops ran on: " + ", ".join(f"{op}={b}" for op, b in used.items())


SYSTEMS = ("water", "ethanol", "uracil", "nonane", "qm9x32")


def system_shape(preset: str, system: str) -> Dict:
    z, _, batch = mols.system(system)
    return {"preset": preset, "system": system, "B": int(batch.max()) + 1, "N": int(z.numel())}


def _pair_items(shape: Dict) -> float:
    per = shape["N"] / shape["B"]
    return shape["B"] * per * (per - 1)  # both orientations


def fwdbwd_bytes(shape: Dict, itemsize: int) -> int:
    """Rough peak of the reference's training step: ~0.85 MB per pair item (5 layers, float32; measured on C9H20)."""
    layers = model_config(shape["preset"])["layers"]
    return int(itemsize / 4 * (2e8 + 0.85e6 * _pair_items(shape) * layers / 5))


def fwd_bytes(shape: Dict, itemsize: int) -> int:
    """Rough peak of inference (nothing kept for a backward): pair features and the readout's concatenation."""
    return int(itemsize / 4 * (2e8 + 0.15e6 * _pair_items(shape)))


def device_memory_budget(device: torch.device) -> int:
    """What the runner allows by default (70% of GPU memory; 30% of free RAM, at most 8 GiB, on CPU)."""
    if device.type == "cuda":
        return int(0.7 * torch.cuda.get_device_properties(device).total_memory)
    from ..__main__ import _available_ram

    return int(min(0.3 * _available_ram(), 8 * 2**30))


class QHNetV2Model(Entry):
    name = "qhnetv2"
    kind = "model"
    bound = "flops"
    description = ("QHNetV2 model (qh9 preset, def2-SVP): inference and a training step (all parameter gradients), "
                   "automatic so2ops backends vs everything on the reference")

    def __init__(self, preset: str = "qh9"):
        self.preset = preset
        self._fwd_only: set = set()

    def cases(self, quick, device):
        systems = ("water",) if quick else SYSTEMS
        budget = device_memory_budget(device)
        out = []
        for s in systems:
            shape = system_shape(self.preset, s)
            tags = ("headline",) if s == HEADLINE else ("batch",) if s.startswith("qm9x") else ("molecules",)
            modes = ("fwd", "fwdbwd")
            need = fwdbwd_bytes(shape, 4)
            if need > budget:
                # a training step of this batch does not fit here: inference only (the GPU runs both),
                # and the correctness check compares H alone (no gradients: the check would need the memory too)
                modes = ("fwd",)
                self._fwd_only.add(s)
                tags = tags + (f"fwd only: fwd+bwd needs ~{need / 2**30:.0f} GiB > {budget / 2**30:.0f} GiB",)
            out.append(Case(shape, torch.float32, modes, tags))
        return out

    def make_inputs(self, shape, dtype, device, seed):
        z, pos, batch = mols.system(shape["system"], seed=0)
        return {"atomic_numbers": z.to(device), "positions": pos.to(device=device, dtype=dtype),
                "batch": batch.to(device), "model_seed": torch.tensor(seed)}

    def _bind(self, inputs, shape) -> Tuple:
        dtype = inputs["positions"].dtype
        dev = inputs["positions"].device
        model = build_model(shape["preset"], dtype, str(dev), int(inputs["model_seed"]))
        params = [p for p in model.parameters() if p.requires_grad]
        z, pos, batch = inputs["atomic_numbers"], inputs["positions"], inputs["batch"]
        # built once per batch, as the data loader does
        index = HamiltonianIndex.build(LAYOUT, z, batch)

        def fwd():
            return model.forward_batch(z, pos, batch, index=index)[0]

        # fwd-only cases: no gradients anywhere (the runner then checks H alone)
        return fwd, ([] if shape["system"] in self._fwd_only else params)

    def impls(self, device):
        out = []

        def build_forced(inputs, shape, _name):
            fwd, params = self._bind(inputs, shape)
            return Workload(forward=fwd, grad_inputs=params, context=lambda: force_backend(_name))

        def build_auto(inputs, shape):
            fwd, params = self._bind(inputs, shape)
            return Workload(forward=fwd, grad_inputs=params, context=_automatic)

        out.append(Impl("reference", "backend", lambda i, s: build_forced(i, s, "reference"), is_baseline=True,
                        note="every so2ops op forced onto the reference backend (plain PyTorch)"))
        out.append(Impl("fused", "backend", build_auto, note=used_note(device)))
        for b in BACKENDS:
            if b == "reference":
                continue
            if not runnable(b, device):
                reason = f"backend {b!r} does not run on {device.type}"
            elif b == "triton" and device.type == "cpu":
                reason = "triton on CPU runs in the interpreter (TRITON_INTERPRET=1): timings meaningless"
            else:
                miss = missing_ops(b, device)
                reason = f"backend {b!r} forced on the whole model lacks {', '.join(miss)} (see the fused row)" if miss else None
            out.append(Impl(b, "backend", lambda i, s, _b=b: build_forced(i, s, _b),
                            skip=(lambda shape, dtype, _r=reason: _r),
                            note=f"backend {b!r} forced on every op"))
        return out

    def count(self, shape, mode, itemsize):
        return None

    def mem_estimate(self, shape, itemsize):
        # the runner skips a case above its memory budget: fwd-only cases (see cases) need the forward's
        return fwd_bytes(shape, itemsize)

    def targets(self, rows, device) -> List[Dict]:
        """The issue's numbers: uracil fwd+bwd time on the CPU, fused vs reference speedup, QHNet comparison."""
        if device.type != "cpu":
            return []
        out = []

        def row(system, impl, mode):
            return next((r for r in rows if r["entry"] == self.name and r["shape"].get("system") == system
                         and r["impl"] == impl and r["mode"] == mode and r["dtype"] == "float32"), None)

        def add(metric, impl, r, value, goal, cmp, binding, note=""):
            met = None if value is None else (value >= goal if cmp == ">=" else value <= goal)
            if r is None or r["status"] != "ok":
                note = "not measured: " + (r["note"] if r else "case not in this run")
            out.append({"entry": self.name, "impl": impl, "metric": metric, "goal": goal,
                        "cmp": cmp, "value": value, "met": met, "binding": binding,
                        "shape": r["shape"] if r else None, "note": note})

        for impl in ("fused", "cpu"):
            r = row(HEADLINE, impl, "fwdbwd")
            ok = r is not None and r["status"] == "ok"
            t = r["time_s"]["median"] if ok else None
            add("uracil fwd+bwd seconds", impl, r, t, TARGET_URACIL_FWDBWD_S, "<=", impl == "fused")
            add("speedup vs QHNet (0.98 s fwd+bwd, measured elsewhere)", impl, r,
                None if t is None else QHNET_URACIL_FWDBWD_S / t, QHNET_URACIL_FWDBWD_S / TARGET_URACIL_FWDBWD_S,
                ">=", False)
        rf = row(HEADLINE, "fused", "fwd")
        if rf is not None and rf["status"] == "ok":
            add("speedup vs QHNet forward (0.38 s, measured elsewhere)", "fused", rf,
                QHNET_URACIL_FWD_S / rf["time_s"]["median"], 1.0, ">=", False)
        systems = list(dict.fromkeys(r["shape"].get("system") for r in rows if r["entry"] == self.name))
        for s in systems:
            for mode in ("fwdbwd", "fwd"):
                r = row(s, "fused", mode)
                v = r["speedup"].get("reference") if r is not None and r["status"] == "ok" else None
                add(f"speedup vs reference ({s}, {mode})", "fused", r, v, TARGET_FUSED_VS_REFERENCE, ">=",
                    s == HEADLINE and mode == "fwdbwd")
        return out


ENTRY = register(QHNetV2Model("qh9"))
