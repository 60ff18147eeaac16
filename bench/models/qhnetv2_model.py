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
bench nor the GPU machine needs PySCF.

Efficiency (``count`` and the rows' ``efficiency`` field):

* FLOPs per (preset, system, mode) are *counted*, not derived:
  ``torch.utils.flop_counter.FlopCounterMode`` around one step of the
  ``reference`` implementation (``model_flops``), cached for the run.  The
  so2ops ops are ``torch.library`` custom ops on every backend, the reference
  included, so a plain counter sees them as opaque calls with no FLOPs; while
  counting, a torch_dispatch rule (``counting_inside_so2ops``) runs each op's
  body with the counter still active, so the plain-PyTorch arithmetic of the
  reference backend inside them is counted too.  The number is therefore the
  *reference's* arithmetic (matmul-class aten ops only, 2 per multiply-add, as
  FlopCounterMode counts): the work any implementation must at least do, up to
  the reference's own redundancies (its backward recomputes each op's forward
  under autograd: ``fwdbwd`` / ``fwd`` is about 3.75 on qh9 water, not ~3; a
  kernel doing less arithmetic than the reference is credited with the
  reference's FLOPs, so its rate is the "reference-equivalent" rate).
* The machine's GEMM rate: float32 ``torch.mm`` at 1024 x 1024 x 1024 and at the
  model's own SO(2) GEMM shape ``[E, (lmax+1) C] x [(lmax+1) C, (lmax+1) C]``
  (E = the headline molecule's edges), timed in the same process with the same
  thread count (``gemm_rates``); the better of the two (median) is *the* GEMM rate.
* Each ok model row gets ``efficiency = {achieved_gflops: FLOPs / median time,
  gemm_gflops, frac_gemm: achieved / GEMM rate, ...}``; the runner's own
  ``flops_per_s`` / ``pct_peak_flops`` (against the ``matmul`` sanity row's best
  repetition) are filled from the same count.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import torch

import so2ops
from so2ops import BasisLayout, HamiltonianIndex
from so2ops.dispatch import BACKENDS, implementations, runnable, select, use_backend

from ..counts import Count
from ..registry import Case, Entry, Impl, Workload, register
from ..so2_backends import force_backend
from ..timer import Budget, timer_for
from ..workloads import step
from . import molecules as mols

#: def2-SVP shells in PySCF order (H: s s p; C/N/O/F: s s s p p d), as ``qhnetv2.data.basis`` reads them.
DEF2_SVP = {1: (0, 0, 1), 6: (0, 0, 0, 1, 1, 2), 7: (0, 0, 0, 1, 1, 2), 8: (0, 0, 0, 1, 1, 2), 9: (0, 0, 0, 1, 1, 2)}
LAYOUT = BasisLayout(DEF2_SVP, name="def2-svp")
ELEMENTS = (1, 6, 7, 8, 9)

#: so2ops ops the model calls, as dispatched (``so2_tensor_product`` dispatches its grid stage ``so2_grid_product``).
MODEL_OPS = ("edge_wigner", "rotate", "so2_message", "so2_linear", "so2_grid_product", "assemble_blocks")

#: Issue targets for the ``qh9`` preset on a CPU (issue 19: uracil, batch 1; the 32-molecule batch).
QHNET_URACIL_FWDBWD_S = 0.98   # QHNet (AIRS, QH9 config, 20.4M parameters) on these 2-core machines
QHNET_URACIL_FWD_S = 0.38
TARGET_URACIL_FWDBWD_S = 0.15  # a training step (forward + every parameter gradient)
TARGET_URACIL_FWD_S = 0.05     # inference
TARGET_GEMM_PCT = 50.0         # uracil fwd+bwd: counted FLOPs / time >= 50% of the measured GEMM rate
TARGET_FUSED_VS_REFERENCE = 4.0        # single molecules (binding on the headline, uracil)
TARGET_FUSED_VS_REFERENCE_BATCH = 3.0  # the 32-molecule batch (qm9x32)

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


# ---------------------------------------------------------------- efficiency: counted FLOPs, measured GEMM rate
#: What the rows' FLOPs are (copied into every row's ``efficiency``).
FLOPS_SOURCE = ("torch.utils.flop_counter.FlopCounterMode of the reference implementation (so2ops ops counted "
                "inside, matmul-class aten ops, 2 per multiply-add; the reference backward recomputes each op's "
                "forward): the reference's arithmetic")

# Whether the torch_dispatch rule below looks inside the so2ops custom ops.  A plain global under a lock, not a
# ContextVar: on a GPU the autograd engine runs the backward on its own thread, which sees no ContextVar of ours.
_INSIDE = [0]
_INSIDE_LOCK = threading.Lock()
_RULES_FOR: set = set()


def _so2ops_opdefs() -> Dict[str, object]:
    """``{"so2ops::op": CustomOpDef}`` of every so2ops custom op (forward and ``*_backward``)."""
    try:
        from torch._library.custom_ops import OPDEFS
    except ImportError as exc:  # a torch without the custom-op registry this relies on
        raise RuntimeError(f"counting inside so2ops ops needs torch._library.custom_ops.OPDEFS ({exc})") from exc
    return {name: d for name, d in list(OPDEFS.items()) if name.startswith("so2ops::")}


def _see_inside(mode, func, types, args, kwargs):
    """torch_dispatch rule of every so2ops op under FlopCounterMode.

    Outside ``counting_inside_so2ops``: what the counter does with any op it has no formula for (run it, count
    nothing).  Inside: run the op's Python body with the counter pushed again, so the aten ops of the backend
    it selects (the reference: plain PyTorch) are counted.  The rule sits at the Python dispatch key, below
    autograd, exactly where the op's own kernel would run.
    """
    if not _INSIDE[0]:
        return func(*args, **kwargs)
    body = getattr(_so2ops_opdefs().get(func._schema.name), "_init_fn", None)
    if body is None:
        raise RuntimeError(f"cannot count inside {func._schema.name}: its Python body is not reachable in this torch")
    with mode:
        return body(*args, **kwargs)


@contextlib.contextmanager
def counting_inside_so2ops():
    """While active, ``FlopCounterMode`` counts the arithmetic inside so2ops custom ops too (see ``_see_inside``)."""
    try:
        from torch.utils.flop_counter import _FlopCounterMode
    except ImportError as exc:
        raise RuntimeError(f"counting inside so2ops ops needs torch.utils.flop_counter._FlopCounterMode ({exc})") from exc
    for name in _so2ops_opdefs():
        if name not in _RULES_FOR:  # registering is once per op and process; the rule is inert outside this block
            torch.library.register_torch_dispatch(name, _FlopCounterMode, _see_inside)
            _RULES_FOR.add(name)
    with _INSIDE_LOCK:
        _INSIDE[0] += 1
    try:
        yield
    finally:
        with _INSIDE_LOCK:
            _INSIDE[0] -= 1


#: ``(preset, system, mode, device type) -> {"flops", "by_op", "params", "out_numel"}``, filled by ``model_flops``.
_FLOP_CACHE: Dict[Tuple, Dict] = {}


def model_flops(preset: str, system: str, mode: str, device: torch.device = torch.device("cpu"), seed: int = 0,
                warmup: bool = True) -> Dict:
    """FLOPs of one step of the ``reference`` implementation, counted by ``FlopCounterMode`` (cached per run).

    Args:
        preset, system: the case (``system_shape``).
        mode: ``fwd`` (under ``no_grad``), ``fwdbwd`` (forward + every parameter gradient) or ``bwd``
            (their difference).
        device, seed: where the step runs and the model's weight seed (the count depends on neither: it
            is shape-only; they select the cached model the run already built).
        warmup: run the step once, uncounted, first: one-time work (tables and constants cached on the
            first call) is not the step's.  The runner's ``count`` skips it: the step has just been run
            there (correctness check and timings).
    Returns:
        ``{"flops": int, "by_op": {aten op: flops}, "params": int, "out_numel": int}``: ``out_numel`` is the
        size of ``H_flat``; ``params`` the trainable parameters.
    """
    if mode == "bwd":
        fb, f = (model_flops(preset, system, m, device, seed, warmup) for m in ("fwdbwd", "fwd"))
        by = {k: fb["by_op"].get(k, 0) - f["by_op"].get(k, 0) for k in fb["by_op"]}
        return {**fb, "flops": fb["flops"] - f["flops"], "by_op": by}
    if mode not in ("fwd", "fwdbwd"):
        raise ValueError(f"model_flops: mode must be 'fwd', 'fwdbwd' or 'bwd', got {mode!r}")
    device = torch.device(device)
    key = (preset, system, mode, device.type)
    if key in _FLOP_CACHE:
        return _FLOP_CACHE[key]
    from torch.utils.flop_counter import FlopCounterMode

    z, pos, batch = mols.system(system, seed=0)
    z, pos, batch = z.to(device), pos.to(device=device, dtype=torch.float32), batch.to(device)
    model = build_model(preset, torch.float32, str(device), seed)
    params = [p for p in model.parameters() if p.requires_grad]
    index = HamiltonianIndex.build(LAYOUT, z, batch)
    seen = {}

    def forward():
        out = model.forward_batch(z, pos, batch, index=index)[0]
        seen["out_numel"] = out.numel()
        return out

    w = Workload(forward=forward, grad_inputs=params, context=lambda: force_backend("reference"))
    with w.context():
        fn = step(w, mode, seed + 1)
        if warmup:
            fn()
        with counting_inside_so2ops(), FlopCounterMode(display=False) as fc:
            fn()
    by_op = {str(k): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
    res = {"flops": int(fc.get_total_flops()), "by_op": by_op, "params": sum(p.numel() for p in params),
           "out_numel": int(seen["out_numel"])}
    _FLOP_CACHE[key] = res
    return res


def gemm_shapes(preset: str) -> List[Tuple[int, int, int]]:
    """``(m, k, n)`` of the GEMM-rate measurement: a square 1024^3 and the model's own SO(2) GEMM.

    The model's: ``[E, (lmax+1) C] x [(lmax+1) C, (lmax+1) C]``, the ``m = 0`` block of an SO(2) linear layer
    over the headline molecule's ``E`` edges (ordered atom pairs within the cutoff).
    """
    from qhnetv2.model import preset as model_preset

    cfg = model_preset(preset)
    lmax = cfg.lmax if cfg.lmax is not None else 2 * max(max(ls) for ls in DEF2_SVP.values())
    from qhnetv2.model.graph import build_topology

    _, pos, batch = mols.system(HEADLINE, seed=0)
    edges = int(build_topology(pos, batch, cfg.cutoff).edge_index.shape[1])  # the model's own edge list
    k = (lmax + 1) * cfg.channels
    return [(1024, 1024, 1024), (max(edges, 1), k, k)]


def measure_gemm(m: int, k: int, n: int, device: torch.device, budget: Budget, dtype=torch.float32) -> Dict:
    """Time one ``torch.mm`` of ``[m, k] x [k, n]`` with the bench's timer; GFLOP/s from the median and the best rep."""
    for name, v in (("m", m), ("k", k), ("n", n)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"measure_gemm: {name} must be a positive int, got {v!r}")
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g, dtype=dtype).to(device)
    b = torch.randn(k, n, generator=g, dtype=dtype).to(device)
    out = torch.empty(m, n, dtype=dtype, device=device)
    t = timer_for(device)(lambda: torch.mm(a, b, out=out), budget)
    flops = 2.0 * m * k * n
    return {"m": m, "k": k, "n": n, "dtype": str(dtype).replace("torch.", ""),
            "gflops": flops / t["median"] / 1e9, "gflops_best": flops / t["min"] / 1e9, "time_s": t}


def gemm_rates(preset: str, device: torch.device, quick: bool = False) -> Dict:
    """The machine's float32 GEMM rate in this process (same thread count as the model rows).

    Returns ``{"gflops": the best median rate of the shapes, "threads", "shapes": [measure_gemm(...), ...]}``.
    """
    if quick:
        budget = Budget(warmup=1, target_s=0.05, min_reps=3, max_reps=20)
    else:
        budget = Budget(warmup=2, target_s=0.5, min_reps=5, max_reps=200)
    shapes = [measure_gemm(m, k, n, device, budget) for m, k, n in gemm_shapes(preset)]
    return {"gflops": max(s["gflops"] for s in shapes), "threads": torch.get_num_threads(), "shapes": shapes}


class QHNetV2Model(Entry):
    name = "qhnetv2"
    kind = "model"
    bound = "flops"
    description = ("QHNetV2 model (qh9 preset, def2-SVP): inference and a training step (all parameter gradients), "
                   "automatic so2ops backends vs everything on the reference")

    def __init__(self, preset: str = "qh9"):
        self.preset = preset
        self._fwd_only: set = set()
        # where and how this run builds the model (count() is called with the shape only)
        self._device: Optional[torch.device] = None
        self._seed = 0
        self._quick = False
        self._gemm: Optional[Dict] = None
        self._count_errors: Dict[Tuple, str] = {}

    def cases(self, quick, device):
        self._quick = quick
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
        pos = pos.to(device=device, dtype=dtype)
        # count() builds the reference step with the same cached model (same device string, same seed)
        self._seed, self._device = seed, pos.device
        return {"atomic_numbers": z.to(device), "positions": pos, "batch": batch.to(device),
                "model_seed": torch.tensor(seed)}

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
        """Counted FLOPs of the reference's step (``model_flops``) and compulsory bytes; None if counting failed.

        Bytes: every parameter and input read once, ``H_flat`` written once, plus every parameter
        gradient written once in ``fwdbwd`` (a lower bound, like the op rows' bytes).  Called by the
        runner after a case is timed, so the extra reference step never overlaps a timing.
        """
        key = (shape["preset"], shape["system"], mode)
        if key in self._count_errors:
            return None
        dev = self._device or torch.device("cpu")
        try:
            c = model_flops(shape["preset"], shape["system"], mode, dev, self._seed, warmup=False)
        except Exception as exc:  # noqa: BLE001 - a failed count must not fail the timed row
            self._count_errors[key] = f"FLOP count failed: {type(exc).__name__}: {exc}"
            print(f"[{self.name} {shape}] {mode}: {self._count_errors[key]}", file=sys.stderr, flush=True)
            return None
        n_in = 5 * shape["N"]  # per atom: 3 coordinates, atomic number, batch id (about one word each)
        fwd_b = itemsize * (c["params"] + n_in + c["out_numel"])
        bwd_b = itemsize * c["params"]
        nbytes = {"fwd": fwd_b, "bwd": bwd_b, "fwdbwd": fwd_b + bwd_b}[mode]
        return Count(c["flops"], nbytes)

    def gemm_rate(self, device: torch.device) -> Dict:
        """The measured GEMM rate (``gemm_rates``), once per run."""
        if self._gemm is None:
            self._gemm = gemm_rates(self.preset, device, self._quick)
        return self._gemm

    def annotate(self, rows: List[Dict], device: torch.device) -> None:
        """Add ``efficiency`` to every ok row of this entry: achieved GFLOP/s, the GEMM rate, their ratio.

        ``efficiency = {"flops_source", "achieved_gflops", "gemm_gflops", "frac_gemm", "threads",
        "gemm": [{"m", "k", "n", "gflops", "gflops_best"}, ...], "note"}``; ``achieved_gflops`` and
        ``frac_gemm`` are null when the row has no FLOP count (the note says why).
        """
        mine = [r for r in rows if r["entry"] == self.name and r["status"] == "ok"]
        if not mine:
            return
        try:
            rate = self.gemm_rate(device)
        except Exception as exc:  # noqa: BLE001 - the rows stand without it
            rate, why = None, f"GEMM rate not measured: {type(exc).__name__}: {exc}"
        for r in mine:
            eff = {"flops_source": FLOPS_SOURCE, "achieved_gflops": None, "gemm_gflops": None, "frac_gemm": None,
                   "threads": torch.get_num_threads() if device.type == "cpu" else None, "gemm": [], "note": ""}
            if rate is not None:
                eff["gemm_gflops"] = rate["gflops"]
                eff["gemm"] = [{k: g[k] for k in ("m", "k", "n", "gflops", "gflops_best")} for g in rate["shapes"]]
            else:
                eff["note"] = why
            if r["flops"]:
                eff["achieved_gflops"] = r["flops"] / r["time_s"]["median"] / 1e9
                if eff["gemm_gflops"]:
                    eff["frac_gemm"] = eff["achieved_gflops"] / eff["gemm_gflops"]
            else:
                err = self._count_errors.get((r["shape"].get("preset"), r["shape"].get("system"), r["mode"]))
                eff["note"] = "; ".join(x for x in (eff["note"], err or "no FLOP count for this row") if x)
            r["efficiency"] = eff

    def mem_estimate(self, shape, itemsize):
        # the runner skips a case above its memory budget: fwd-only cases (see cases) need the forward's
        return fwd_bytes(shape, itemsize)

    def targets(self, rows, device) -> List[Dict]:
        """The issue's numbers (issue 19, qh9 preset on the CPU); first adds ``efficiency`` to the rows.

        Binding (``fused``): uracil fwd+bwd <= 0.15 s, uracil fwd <= 50 ms, uracil fwd+bwd at >= 50%
        of the measured GEMM rate, fused >= 4x reference on uracil and >= 3x on qm9x32 (each mode that
        ran).  The ``cpu`` rows, the QHNet comparisons and the other systems are information.
        """
        # the runner calls this once, at the end of the run: the one hook an entry has on the finished rows
        self.annotate(rows, device)
        if device.type != "cpu":
            return []
        out = []

        def row(system, impl, mode):
            return next((r for r in rows if r["entry"] == self.name and r["shape"].get("system") == system
                         and r["impl"] == impl and r["mode"] == mode and r["dtype"] == "float32"), None)

        def ok(r):
            return r is not None and r["status"] == "ok"

        def add(metric, impl, r, value, goal, cmp, binding, note=""):
            met = None if value is None else (value >= goal if cmp == ">=" else value <= goal)
            if not ok(r):
                note = "not measured: " + (r["note"] if r else note or "case not in this run")
            elif value is None and not note:
                note = "not measured: no value for this row in this run"
            out.append({"entry": self.name, "impl": impl, "metric": metric, "goal": goal,
                        "cmp": cmp, "value": value, "met": met, "binding": binding,
                        "shape": r["shape"] if r else None, "note": note})

        for impl in ("fused", "cpu"):
            r = row(HEADLINE, impl, "fwdbwd")
            t = r["time_s"]["median"] if ok(r) else None
            add("uracil fwd+bwd seconds", impl, r, t, TARGET_URACIL_FWDBWD_S, "<=", impl == "fused")
            rf = row(HEADLINE, impl, "fwd")
            tf = rf["time_s"]["median"] if ok(rf) else None
            add("uracil fwd seconds", impl, rf, tf, TARGET_URACIL_FWD_S, "<=", impl == "fused")
            eff = (r or {}).get("efficiency") or {}
            pct = None if eff.get("frac_gemm") is None else 100.0 * eff["frac_gemm"]
            add("uracil fwd+bwd: % of the measured GEMM rate (counted FLOPs / time)", impl, r, pct, TARGET_GEMM_PCT,
                ">=", impl == "fused", eff.get("note", "") if ok(r) and pct is None else "")
            if impl == "fused":
                add(f"speedup vs QHNet ({QHNET_URACIL_FWDBWD_S} s fwd+bwd, measured elsewhere)", impl, r,
                    None if t is None else QHNET_URACIL_FWDBWD_S / t, QHNET_URACIL_FWDBWD_S / TARGET_URACIL_FWDBWD_S,
                    ">=", False)
                add(f"speedup vs QHNet forward ({QHNET_URACIL_FWD_S} s, measured elsewhere)", impl, rf,
                    None if tf is None else QHNET_URACIL_FWD_S / tf, QHNET_URACIL_FWD_S / TARGET_URACIL_FWD_S,
                    ">=", False)
        systems = list(dict.fromkeys(r["shape"].get("system") for r in rows if r["entry"] == self.name))
        for s in systems:
            batch = s.startswith("qm9x")
            goal = TARGET_FUSED_VS_REFERENCE_BATCH if batch else TARGET_FUSED_VS_REFERENCE
            for mode in ("fwdbwd", "fwd"):
                r = row(s, "fused", mode)
                v = r["speedup"].get("reference") if ok(r) else None
                why = ("the training step is above this machine's memory budget (fwd only, see the case's tags)"
                       if r is None and s in self._fwd_only and mode == "fwdbwd" else "")
                add(f"speedup vs reference ({s}, {mode})", "fused", r, v, goal, ">=", s == HEADLINE or s == "qm9x32",
                    why)
        return out


ENTRY = register(QHNetV2Model("qh9"))
