#!/usr/bin/env python3
"""The Python side of ``scripts/gpu_first_run.sh``: phases 2, 3 and 5 of the first run on a lent GPU.

Subcommands (each takes ``--dry-run``, which runs the same CPU-side logic on the
CPU at tiny sizes: argument parsing, the case lists, the inputs, the reference
calls, the report files; the backend under test is then ``cpu``, or
``reference`` when the compiled extension is missing)::

    python scripts/gpu_smoke.py sanitize-target [--tile 7] [--backends cuda] [--ops a,b] [--tag memcheck]
        Every CUDA op, forward and backward, on tiny shapes, float32 / float64 (and
        float16 / bfloat16 where the op takes them), atomic and deterministic,
        with the edge tile forced small so that the multi-tile and split-segment
        paths of the tiled driver run.  Meant to run under compute-sanitizer
        (memcheck, racecheck, synccheck); writes ``$OUT/sanitize_<tag>.tsv``.
    python scripts/gpu_smoke.py check
        Every op against the reference backend: float64 (relative error 1e-10)
        and float32 (1e-4, TF32 off) at a moderate size, an lmax sweep, forced
        small tiles, bfloat16 under autocast and native float16 / bfloat16
        inputs, one forward past 2**31 output elements checked on slices, and
        run-to-run bitwise equality under ``torch.use_deterministic_algorithms``
        with and without ``CUBLAS_WORKSPACE_CONFIG`` (two child processes).
        Writes ``$OUT/check.tsv`` (a row per case, as it goes) and ``$OUT/check.md``.
    python scripts/gpu_smoke.py determinism --tag NAME
        The child process of ``check``'s determinism rows (appends to check.tsv).
    python scripts/gpu_smoke.py timing
        ``so2_message`` and ``SO2EdgewiseBlock`` forward and forward+backward at
        lmax 4, mmax 2 and 4, C 128, 2e5 and 1e6 edges: the fast backend against
        the reference backend (plain PyTorch), the eSCN-style dense baseline
        (``bench.baselines.escn_dense``), FAIR-Chem's general path when
        importable and the GEMM floor (``bench.gemm_floor``), TF32 off and on,
        peak memory per row.  Rows that do not fit the memory or the time left
        are recorded as skipped.  Writes ``$OUT/timing.md`` and ``timing.json``
        after every row.

Common options: ``--out DIR`` (default ``$OUT``, else a temp folder on a dry
run, else ./out/gpu-first-run), ``--device``, ``--backend`` (default: ``cuda``
on a GPU), ``--deadline EPOCH`` / ``--budget-s S`` (rows not started by then are
recorded as skipped, so the report is complete before the shell's timeout).

The tile knob: ``--tile N`` (and the forced-tile rows of ``check``) set
``SO2OPS_TILE_EDGES=N``, which the compiled kernels read on every call (the
tiled driver of so2_linear / so2_message / so2_frame_linear, CPU and CUDA), and
enter ``so2ops.testing.tile_size(N)`` where the tree has it
(csrc/include/so2ops/tile_knob.h: also the CUDA Wigner-gradient slabs,
grid-stride loops and edge_wigner blocks).  The reference and Triton backends
have no such tiles.

The module is also a pytest plugin (``PYTHONPATH=scripts pytest -p gpu_smoke``):
``GPU_SMOKE_MAX_LMAX=4`` deselects the tests parametrised with a larger
``lmax`` (and tests/test_lmax8.py), ``GPU_SMOKE_SORT_LMAX=1`` runs the
selected tests in increasing lmax (cold Triton compiles grow with lmax),
``GPU_SMOKE_RESULTS=FILE`` appends each test's outcome as it finishes (a
record that survives a timeout), ``GPU_SMOKE_PRETEND_CUDA=1`` makes
``torch.cuda.is_available()`` true during a ``--collect-only`` dry run so that
the GPU selection can be listed on a CPU, ``GPU_SMOKE_SELECTION=FILE`` writes
the selected tests (node id, lmax) in run order.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the tree's so2ops and bench, not an installed copy

#: environment variables the tile size is written to (see the module docstring)
TILE_ENV = ("SO2OPS_TILE_EDGES",)
#: tolerances of ``check``: max |a - b| / max |b| per dtype of the backend's inputs
TOL = {"float64": 1e-10, "float32": 1e-4, "autocast": 1e-3, "float16": 2e-2, "bfloat16": 5e-2, "big": 1e-4}
#: elements past which a forward is "big" (int32 offsets would overflow)
BIG = 2 ** 31


# ============================================================== pytest plugin
def _pretend_cuda() -> None:
    if os.environ.get("GPU_SMOKE_PRETEND_CUDA") == "1":
        import torch

        torch.cuda.is_available = lambda: True  # collection only: the params a GPU machine would see


_pretend_cuda()


def _item_lmax(item) -> int:
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    value = params.get("lmax", 0)
    return value if isinstance(value, int) else 0


def pytest_collection_modifyitems(config, items):
    """``GPU_SMOKE_MAX_LMAX``: deselect tests above that lmax; ``GPU_SMOKE_SORT_LMAX=1``: cheapest lmax first."""
    limit = os.environ.get("GPU_SMOKE_MAX_LMAX")
    if limit:
        limit_i = int(limit)
        keep, drop = [], []
        for item in items:
            high = _item_lmax(item) > limit_i or (limit_i < 8 and "test_lmax8" in item.nodeid)
            (drop if high else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    if os.environ.get("GPU_SMOKE_SORT_LMAX") == "1":
        items.sort(key=_item_lmax)  # stable: file order within one lmax


def pytest_collection_finish(session):
    """``GPU_SMOKE_SELECTION``: the tests that will run, in order (after every plugin's -k / -m / lmax
    deselection), to compare with ``GPU_SMOKE_RESULTS`` when a timeout cuts the run short."""
    path = os.environ.get("GPU_SMOKE_SELECTION")
    if path:
        with open(path, "w") as f:
            f.writelines(f"{item.nodeid}\t{_item_lmax(item)}\n" for item in session.items)


def pytest_runtest_logreport(report):
    path = os.environ.get("GPU_SMOKE_RESULTS")
    if not path:
        return
    if report.when == "call" or report.outcome != "passed":
        with open(path, "a") as f:
            f.write(f"{report.nodeid}\t{report.when}\t{report.outcome}\t{report.duration:.3f}\n")


# ============================================================== shared helpers
class TSV:
    """A tab-separated report written row by row (flushed, so a killed run keeps what it did)."""

    def __init__(self, path: str, columns: Sequence[str]):
        self.path, self.columns = path, list(columns)
        self.rows: List[Dict] = []
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            with open(path, "w") as f:
                f.write("\t".join(self.columns) + "\n")

    def add(self, **row) -> Dict:
        self.rows.append(row)
        cells = [str(row.get(c, "")).replace("\t", " ").replace("\n", " ") for c in self.columns]
        with open(self.path, "a") as f:
            f.write("\t".join(cells) + "\n")
        return row


def read_tsv(path: str) -> List[Dict[str, str]]:
    with open(path) as f:
        lines = [l.rstrip("\n") for l in f if l.strip()]
    head = lines[0].split("\t")
    return [dict(zip(head, l.split("\t"))) for l in lines[1:]]


def say(msg: str) -> None:
    print(msg, flush=True)


def atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _tile_hook():
    """``so2ops.testing.tile_size`` when this tree has it (the knob of csrc/include/so2ops/tile_knob.h), else None."""
    try:
        from so2ops.testing import tile_size
    except ImportError:
        return None
    return tile_size


def apply_tile(n: Optional[int]) -> str:
    """Force ``n`` edges per tile for the rest of the process (None: the kernels' own choice).

    Sets ``SO2OPS_TILE_EDGES`` (read by the kernels on every call, inherited by child processes)
    and, where the tree has it, enters ``so2ops.testing.tile_size(n)`` (which also shrinks the CUDA
    Wigner-gradient slabs, grid-stride grids and edge_wigner blocks).  Returns what was set."""
    global _TILE_CTX
    for key in TILE_ENV:
        if n is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = str(int(n))
    if _TILE_CTX is not None:
        _TILE_CTX.__exit__(None, None, None)
        _TILE_CTX = None
    hook = _tile_hook()
    if hook is not None and n is not None:
        _TILE_CTX = hook(int(n))
        _TILE_CTX.__enter__()
    via = " + so2ops.testing.tile_size" if hook is not None else ""
    return "the kernels' own tiles" if n is None else " ".join(f"{k}={n}" for k in TILE_ENV) + via


_TILE_CTX = None


@contextlib.contextmanager
def forced_tile(n: Optional[int]):
    """``apply_tile(n)`` inside the block; the previous setting after it."""
    old = {k: os.environ.get(k) for k in TILE_ENV}
    hook = _tile_hook()
    ctx = hook(n) if hook is not None else contextlib.nullcontext()
    for key in TILE_ENV:
        if n is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = str(int(n))
    try:
        with ctx:
            yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def deterministic_algorithms(on: bool):
    import torch

    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old)


class Env:
    """What every subcommand needs: device, backend under test, output folder, deadline, dry run."""

    def __init__(self, a: argparse.Namespace):
        self.dry = bool(a.dry_run)
        if self.dry and not a.out and not os.environ.get("OUT"):
            a.out = tempfile.mkdtemp(prefix="gpu-smoke-dry-")
        self.out = os.path.abspath(a.out or os.environ.get("OUT") or os.path.join(ROOT, "out", "gpu-first-run"))
        os.makedirs(self.out, exist_ok=True)
        self.start = time.time()
        self.deadline = a.deadline if a.deadline else self.start + a.budget_s
        import torch

        self.torch = torch
        self.device = torch.device(a.device or ("cpu" if self.dry or not torch.cuda.is_available() else "cuda"))
        if self.device.type == "cpu" and not self.dry:
            raise SystemExit("gpu_smoke: no CUDA device; use --dry-run to run the CPU-side logic")
        self.backend = a.backend or self.default_backend()

    def default_backend(self) -> str:
        from so2ops.dispatch import runnable

        if self.device.type == "cuda":
            return "cuda"
        return "cpu" if runnable("cpu", self.device) else "reference"

    def left(self) -> float:
        return self.deadline - time.time()

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


def add_common(p: argparse.ArgumentParser, budget: float) -> None:
    p.add_argument("--dry-run", action="store_true", help="CPU-side logic only, tiny sizes, on the CPU")
    p.add_argument("--out", default=None, help="report folder (default $OUT)")
    p.add_argument("--device", default=None, help="cuda (default on a GPU) or cpu (dry run)")
    p.add_argument("--backend", default=None, help="backend under test (default cuda; cpu/reference on a dry run)")
    p.add_argument("--deadline", type=float, default=None, help="epoch seconds by which to stop starting cases")
    p.add_argument("--budget-s", type=float, default=budget, help="seconds from start when no --deadline")


def versions() -> Dict[str, str]:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": str(torch.version.cuda)}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001 - any import failure is information
        info["triton"] = f"absent ({type(exc).__name__})"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return info


# ============================================================== op cases
@dataclass
class OpCase:
    """One op call: ``call(inputs) -> out``; ``grad`` names the inputs differentiated."""

    name: str
    inputs: Dict[str, object]
    grad: Tuple[str, ...]
    call: Callable[[Dict[str, object]], object]
    native_half: bool = False  # takes float16 / bfloat16 tensors on CUDA


@dataclass
class Size:
    nodes: int
    edges: int
    cin: int
    cout: int
    lmax: int
    mmax: int
    hidden: int = 8
    nu: int = 2
    molecules: int = 2
    atoms: int = 3


TINY = Size(nodes=10, edges=40, cin=5, cout=3, lmax=2, mmax=1, hidden=4, nu=2, molecules=2, atoms=3)
MODERATE = Size(nodes=2000, edges=32768, cin=32, cout=24, lmax=4, mmax=2, hidden=16, nu=3, molecules=8, atoms=18)
#: every op by name (``--ops`` filter and the report)
OP_NAMES = ("edge_wigner", "rotate_gather", "rotate_inverse", "so2_linear", "so2_message", "so2_message_det",
            "so2_gather_linear", "so2_linear_scatter", "so2_tensor_product", "assemble_blocks")


def _gen(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def _randn(shape, g, dtype, device, scale=1.0):
    import torch

    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def edge_vectors(e: int, g, dtype, device):
    """``[E, 3]`` random edge vectors with the awkward directions (+-y, near the axis) first."""
    import torch

    v = torch.randn(e, 3, generator=g, dtype=torch.float64)
    special = torch.tensor([[0.0, 1.0, 0.0], [0.0, -2.0, 0.0], [1e-9, 1.0, 0.0], [0.0, -1.0, 1e-9],
                            [1.0, 0.0, 0.5]], dtype=torch.float64)
    k = min(e, special.shape[0])
    v[:k] = special[:k]
    return v.to(device=device, dtype=dtype)


def build_cases(s: Size, dtype, device, seed: int = 0, long_segments: bool = False,
                ops: Optional[Sequence[str]] = None) -> List[OpCase]:
    """The op cases at size ``s``: every public so2ops op (both frame-linear directions, so2_message
    atomic and deterministic).  ``long_segments``: few distinct targets, so destination segments
    are long and cut across tiles."""
    import torch

    import so2ops
    from so2ops.layout import num_coeffs, num_mod, tp_in_size, tp_out_size, weight_size

    g = _gen(seed)
    lmax, mmax, cin, cout, n, e = s.lmax, s.mmax, s.cin, s.cout, s.nodes, s.edges
    k = num_coeffs(lmax)
    v = edge_vectors(e, g, torch.float64, "cpu")
    wig = so2ops.reference.edge_wigner(v, lmax).to(device=device, dtype=dtype)
    src = torch.randint(0, n, (e,), generator=g)
    dst = torch.randint(0, 3 if long_segments else n, (e,), generator=g)
    src, dst = src.to(device), dst.to(device)
    ei = torch.stack([src, dst])
    x = _randn((n, k, cin), g, dtype, device)
    xe = _randn((e, k, cin), g, dtype, device)
    w = _randn((weight_size(lmax, mmax, cin, cout),), g, dtype, device, ((lmax + 1) * cin) ** -0.5)
    mod = _randn((e, num_mod(lmax, mmax), cin), g, dtype, device)
    bias = _randn((lmax + 1, cout), g, dtype, device)
    scale = _randn((e,), g, dtype, device)
    out: List[OpCase] = []

    def add(name, inputs, grad, call, native_half=False):
        if ops is None or name in ops:
            out.append(OpCase(name, inputs, grad, call, native_half))

    add("edge_wigner", {"edge_vec": v.to(device=device, dtype=dtype)}, ("edge_vec",),
        lambda t: so2ops.edge_wigner(t["edge_vec"], lmax), native_half=True)
    add("rotate_gather", {"x": x, "wigner": wig, "index": src}, ("x", "wigner"),
        lambda t: so2ops.rotate(t["x"], t["wigner"], lmax, index=t["index"]), native_half=True)
    add("rotate_inverse", {"x": xe, "wigner": wig}, ("x", "wigner"),
        lambda t: so2ops.rotate(t["x"], t["wigner"], lmax, inverse=True), native_half=True)
    add("so2_linear", {"x": xe, "weight": w, "modulation": mod}, ("x", "weight", "modulation"),
        lambda t: so2ops.so2_linear(t["x"], t["weight"], lmax, mmax, cout, t["modulation"]), native_half=True)
    msg_in = {"x": x, "wigner": wig, "edge_index": ei, "weight": w, "modulation": mod}
    msg_grad = ("x", "wigner", "weight", "modulation")
    add("so2_message", msg_in, msg_grad,
        lambda t: so2ops.so2_message(t["x"], t["wigner"], t["edge_index"], t["weight"], lmax, mmax, cout,
                                     t["modulation"]), native_half=True)
    add("so2_message_det", msg_in, msg_grad,
        lambda t: so2ops.so2_message(t["x"], t["wigner"], t["edge_index"], t["weight"], lmax, mmax, cout,
                                     t["modulation"], deterministic=True), native_half=True)
    fl_grad = ("x", "wigner", "weight", "modulation", "bias", "scale")
    add("so2_gather_linear", {"x": x, "wigner": wig, "index": src, "weight": w, "modulation": mod, "bias": bias,
                              "scale": scale}, fl_grad,
        lambda t: so2ops.so2_gather_linear(t["x"], t["wigner"], t["index"], t["weight"], lmax, mmax, cout,
                                           t["modulation"], t["bias"], t["scale"]))
    add("so2_linear_scatter", {"x": xe, "wigner": wig, "index": dst, "weight": w, "modulation": mod, "bias": bias,
                               "scale": scale}, fl_grad,
        lambda t: so2ops.so2_linear_scatter(t["x"], t["wigner"], t["index"], t["weight"], n, lmax, mmax, cout,
                                            t["modulation"], t["bias"], t["scale"]))
    h, nu = s.hidden, s.nu
    add("so2_tensor_product",
        {"x": x, "w_in": _randn((nu, tp_in_size(lmax, mmax, cin, h)), g, dtype, device, cin ** -0.5),
         "coeffs": _randn((n, nu, h), g, dtype, device),
         "w_out": _randn((tp_out_size(lmax, mmax, h, cout),), g, dtype, device, h ** -0.5)},
        ("x", "w_in", "coeffs", "w_out"),
        lambda t: so2ops.so2_tensor_product(t["x"], t["w_in"], t["coeffs"], t["w_out"], lmax, mmax, cout))
    if ops is None or "assemble_blocks" in ops:
        out.extend(_assemble_case(s, dtype, device, g))
    return out


def _assemble_case(s: Size, dtype, device, g) -> List[OpCase]:
    """assemble_blocks on the def2-SVP layout hard-coded in bench (no PySCF)."""
    import so2ops
    from bench.ops import assemble_blocks as ab
    from so2ops.layout import num_coeffs

    z, batch, items = ab.batch_items(s.molecules, s.atoms)
    vec = ab.geometry(s.molecules, s.atoms, items, g)
    wig = so2ops.reference.edge_wigner(vec, ab.LAYOUT.lmax_shell).to(device=device, dtype=dtype)
    cb = so2ops.block_channels(ab.LAYOUT, ab.LMAX)
    feats = _randn((items.shape[0], num_coeffs(ab.LMAX), cb), g, dtype, device)
    z, batch, items = z.to(device), batch.to(device), items.to(device)
    index = so2ops.HamiltonianIndex.build(ab.LAYOUT, z, batch)
    inputs = {"features": feats, "wigner": wig}
    return [OpCase("assemble_blocks", inputs, ("features", "wigner"),
                   lambda t: so2ops.assemble_blocks(t["features"], t["wigner"], ab.LAYOUT, z, items, batch,
                                                    index=index))]


def run_case(case: OpCase, backend: str, dtype=None, grad_seed: int = 1):
    """Forward and backward of ``case`` on ``backend`` (inputs cast to ``dtype`` when given).

    Returns ``(out, {name: grad})``; the output gradient is seeded, the same for every backend."""
    import torch

    import so2ops

    leaves = {}
    for k, v in case.inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            t = v.detach().to(dtype) if dtype is not None else v.detach().clone()
            leaves[k] = t.requires_grad_(k in case.grad)
        else:
            leaves[k] = v
    with so2ops.use_backend(backend):
        out = case.call(leaves)
        if not case.grad:
            return out.detach(), {}
        go = torch.randn(out.shape, generator=_gen(grad_seed), dtype=torch.float64).to(device=out.device,
                                                                                          dtype=out.dtype)
        wrt = [leaves[k] for k in case.grad]
        grads = torch.autograd.grad(out, wrt, go, allow_unused=True)
    return out.detach(), {k: gr for k, gr in zip(case.grad, grads)}


def rel_err(a, b) -> float:
    """``max |a - b| / max |b|`` in float64 (0 for empty tensors; inf on a shape mismatch)."""
    import torch

    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return math.inf
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def compare(case: OpCase, backend: str, dtype, ref_dtype=None) -> Tuple[float, str]:
    """Worst relative error of ``case`` on ``backend`` (in ``dtype``) against the reference (in ``ref_dtype``,
    default float64): output and every gradient; and the name of the worst one."""
    import torch

    out, grads = run_case(case, backend, dtype)
    ref_out, ref_grads = run_case(case, "reference", ref_dtype or torch.float64)
    worst, where = rel_err(out, ref_out), "out"
    for k in case.grad:
        err = rel_err(grads[k], ref_grads[k])
        if err > worst or math.isnan(err):
            worst, where = err, f"grad {k}"
    return worst, where


# ============================================================== sanitize-target
def cmd_sanitize_target(a) -> int:
    env = Env(a)
    torch = env.torch
    tsv = TSV(os.path.join(env.out, f"sanitize_{a.tag}.tsv"), ["case", "backend", "status", "seconds", "note"])
    backends = [b.strip() for b in a.backends.split(",") if b.strip()] if a.backends else [env.backend]
    if env.dry:
        backends = [env.backend if b == "cuda" else b for b in backends]
    ops = [o.strip() for o in a.ops.split(",")] if a.ops else None
    lmaxes = [int(l) for l in a.lmax.split(",")]
    if env.dry:
        lmaxes = lmaxes[-1:]  # every op once: the code paths, not the coverage
    say(f"sanitize-target: device {env.device}, backends {backends}, tile {a.tile} ({apply_tile(a.tile)}), "
        f"lmax {lmaxes}, out {env.out}{' [dry run]' if env.dry else ''}")
    dtypes = [getattr(torch, d.strip()) for d in a.dtypes.split(",") if d.strip()]
    if env.device.type != "cuda":
        dtypes = [d for d in dtypes if d not in (torch.float16, torch.bfloat16)]  # half inputs: CUDA only
    if env.dry:
        dtypes = dtypes[:1]
    failures = 0
    for backend in backends:
        dtypes_b = dtypes[:1] if backend == "triton" else dtypes  # Triton: one cold compile per variant
        for lmax in lmaxes:
            s = Size(nodes=TINY.nodes, edges=TINY.edges, cin=TINY.cin, cout=TINY.cout, lmax=lmax,
                     mmax=min(TINY.mmax + 1, lmax), hidden=TINY.hidden)
            for dtype in dtypes_b:
                half = dtype in (torch.float16, torch.bfloat16)
                for det in (False, True):
                    if half and det:
                        continue
                    cases = build_cases(s, dtype, env.device, seed=lmax, long_segments=True, ops=ops)
                    for case in cases:
                        if half and not case.native_half:
                            continue
                        if case.name == "assemble_blocks" and (lmax != lmaxes[0] or det):
                            continue  # its shapes do not depend on lmax
                        label = f"{case.name}[lmax{lmax},{str(dtype).replace('torch.', '')}" \
                                f"{',det' if det else ''}]"
                        if env.left() < 0:
                            tsv.add(case=label, backend=backend, status="skip", seconds=0, note="out of time")
                            continue
                        t0 = time.time()
                        try:
                            with deterministic_algorithms(det):
                                out, grads = run_case(case, backend)
                            env.sync()
                            status, note = "ok", f"out {tuple(out.shape)}"
                        except Exception as exc:  # noqa: BLE001 - recorded; the sanitizer judges memory errors
                            failures += 1
                            status, note = "error", f"{type(exc).__name__}: {exc}"[:300]
                            say(traceback.format_exc(limit=3))
                        tsv.add(case=label, backend=backend, status=status, seconds=f"{time.time() - t0:.2f}",
                                note=note)
        # the driver's own tile choice once (single tile, no split)
        with forced_tile(None):
            for case in build_cases(TINY, torch.float32, env.device, seed=99, ops=ops or ["so2_message"])[:1]:
                t0 = time.time()
                try:
                    run_case(case, backend)
                    env.sync()
                    tsv.add(case=f"{case.name}[default tile]", backend=backend, status="ok",
                            seconds=f"{time.time() - t0:.2f}")
                except Exception as exc:  # noqa: BLE001
                    failures += 1
                    tsv.add(case=f"{case.name}[default tile]", backend=backend, status="error",
                            seconds=f"{time.time() - t0:.2f}", note=f"{type(exc).__name__}: {exc}"[:300])
    n = len(tsv.rows)
    say(f"sanitize-target: {n} cases, {failures} raised; report {tsv.path}")
    return 1 if failures else 0


# ============================================================== check
CHECK_COLUMNS = ["name", "dtype", "status", "max_rel_err", "tol", "seconds", "note"]


class Checker:
    def __init__(self, env: Env):
        self.env = env
        self.tsv = TSV(os.path.join(env.out, "check.tsv"), CHECK_COLUMNS)

    def row(self, name, dtype, fn: Callable[[], Tuple[float, str]], tol: float):
        """Run ``fn() -> (error, note)`` and record pass / FAIL / error / skip (out of time)."""
        dname = str(dtype).replace("torch.", "")
        if self.env.left() < 0:
            return self.tsv.add(name=name, dtype=dname, status="skip", tol=tol, seconds=0, note="out of time")
        t0 = time.time()
        try:
            err, note = fn()
            self.env.sync()
            status = "pass" if err <= tol else "FAIL"
            row = self.tsv.add(name=name, dtype=dname, status=status, max_rel_err=f"{err:.3g}", tol=tol,
                               seconds=f"{time.time() - t0:.2f}", note=note)
        except SkipCase as sk:
            row = self.tsv.add(name=name, dtype=dname, status="skip", tol=tol, seconds=f"{time.time() - t0:.2f}",
                               note=str(sk))
        except Exception as exc:  # noqa: BLE001 - every failure is a row, the next case still runs
            say(traceback.format_exc(limit=4))
            row = self.tsv.add(name=name, dtype=dname, status="error", tol=tol, seconds=f"{time.time() - t0:.2f}",
                               note=f"{type(exc).__name__}: {exc}"[:300])
            _free_cuda(self.env)
        say(f"  {row['status']:5s} {name} [{dname}] err {row.get('max_rel_err', '-')} {row.get('note', '')}")
        return row


class SkipCase(Exception):
    pass


def _free_cuda(env: Env) -> None:
    if env.device.type == "cuda":
        import gc

        gc.collect()
        env.torch.cuda.empty_cache()


def cmd_check(a) -> int:
    env = Env(a)
    torch = env.torch
    torch.set_float32_matmul_precision("highest")  # TF32 off: float32 rows compare true float32 GEMMs
    ck = Checker(env)
    dry, dev, be = env.dry, env.device, env.backend
    say(f"check: device {dev}, backend {be}, out {env.out}{' [dry run]' if dry else ''}; {json.dumps(versions())}")
    size = TINY if dry else MODERATE

    say("== every op against the reference (float64 1e-10, float32 1e-4)")
    for dtype in (torch.float64, torch.float32):
        for case in build_cases(size, dtype, dev, seed=3):
            ck.row(case.name, dtype, lambda c=case, d=dtype: compare(c, be, d), TOL[str(dtype)[6:]])

    # in order of what matters most if the deadline cuts the phase short: the GPU-scale defects first
    say(f"== one forward past 2**31 elements ({'dry run: past 2**14' if dry else 'rotate with gather'})")
    ck.row("rotate_gather[>2^31 elements]", torch.float32, lambda: _big_forward(env, BIG if not dry else 2 ** 14),
           TOL["big"])

    say("== deterministic run-to-run equality, with and without CUBLAS_WORKSPACE_CONFIG (child processes)")
    for tag, value in (("no_cublas_env", None), ("cublas_env", ":4096:8")):
        if dry and value is not None:  # the same code path with another environment: one child is enough here
            ck.tsv.add(name=f"determinism[{tag}]", dtype="-", status="skip", seconds=0,
                       note="dry run: one child process (no_cublas_env) exercises the path")
            continue
        _determinism_child(env, ck, tag, value, share=0.5 if value is None else 1.0)

    say("== forced small tiles: multi-tile and split destination segments (float64)")
    for tile in ((7,) if dry else (1, 7, 64)):
        with forced_tile(tile):
            s = Size(nodes=40, edges=700 if not dry else 30, cin=9, cout=6, lmax=3, mmax=2)
            for case in build_cases(s, torch.float64, dev, seed=20 + tile, long_segments=True,
                                    ops=("so2_linear", "so2_message", "so2_message_det", "so2_gather_linear",
                                         "so2_linear_scatter")):
                ck.row(f"{case.name}[tile{tile}]", torch.float64, lambda c=case: compare(c, be, torch.float64),
                       TOL["float64"])

    say("== lmax sweep (float64)")
    for lmax in ((0, 3, 8) if dry else range(0, 9)):
        s = Size(nodes=30, edges=300 if not dry else 20, cin=7, cout=5, lmax=lmax, mmax=min(lmax, 2))
        for case in build_cases(s, torch.float64, dev, seed=10 + lmax, ops=("edge_wigner", "rotate_gather",
                                                                           "so2_message")):
            ck.row(f"{case.name}[lmax{lmax}]", torch.float64, lambda c=case: compare(c, be, torch.float64),
                   TOL["float64"])

    say("== bfloat16 under autocast (the ops compute in float32) and native half inputs")
    for case in build_cases(size, torch.float32, dev, seed=5):
        ck.row(f"{case.name}[autocast]", torch.bfloat16, lambda c=case: _autocast_err(env, c), TOL["autocast"])
    for half in (torch.float16, torch.bfloat16):
        for case in build_cases(size, torch.float32, dev, seed=6):
            if case.native_half:
                ck.row(f"{case.name}[native]", half, lambda c=case, h=half: _native_half_err(env, c, h),
                       TOL[str(half)[6:]])

    return _check_summary(env, ck)


def _autocast_err(env: Env, case: OpCase) -> Tuple[float, str]:
    """The op under ``torch.autocast(bfloat16)`` with bfloat16-rounded inputs: float32 out, equal to the
    float32 reference of the same rounded inputs."""
    import torch

    rounded = {k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
               for k, v in case.inputs.items()}
    # the public wrappers bring half inputs to float32 under autocast; feed the rounded values in bf16
    c16 = OpCase(case.name, rounded, case.grad, case.call)
    with torch.autocast(env.device.type, dtype=torch.bfloat16):
        out, _ = run_case(c16, env.backend)
    if out.dtype != torch.float32:
        return math.inf, f"autocast output dtype {out.dtype}, expected float32"
    ref = OpCase(case.name, {k: (v.to(torch.float32) if isinstance(v, torch.Tensor) and v.is_floating_point()
                                 else v) for k, v in rounded.items()}, (), case.call)
    ref_out, _ = run_case(ref, "reference", torch.float64)
    return rel_err(out, ref_out), "forward, bf16 inputs, float32 output"


def _native_half_err(env: Env, case: OpCase, half) -> Tuple[float, str]:
    """float16 / bfloat16 inputs outside autocast (CUDA only): half output, accumulation in float32."""
    import torch

    if env.device.type != "cuda":
        raise SkipCase("half inputs are CUDA-only (dry run on the CPU)")
    out, grads = run_case(case, env.backend, half)
    rounded = OpCase(case.name, {k: (v.to(half) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                                 for k, v in case.inputs.items()}, case.grad, case.call)
    ref_out, ref_grads = run_case(rounded, "reference", torch.float64)
    worst, where = rel_err(out, ref_out), "out"
    for k in case.grad:
        e = rel_err(grads[k], ref_grads[k])
        if e > worst:
            worst, where = e, f"grad {k}"
    return worst, f"output {out.dtype}; worst: {where}"


def big_plan(threshold: int) -> Dict[str, int]:
    """The big forward: ``rotate`` with a gather, lmax 2, C 64, enough edges for ``threshold`` output elements."""
    from so2ops.layout import num_coeffs, wigner_size

    lmax, c, n = 2, 64, 4096
    per_edge = num_coeffs(lmax) * c
    e = -(-(threshold + (1 << 20 if threshold >= BIG else 64)) // per_edge)
    bytes_ = 4 * (e * per_edge + e * wigner_size(lmax) + n * per_edge) + 8 * e
    return {"lmax": lmax, "C": c, "N": n, "E": e, "elements": e * per_edge, "bytes": bytes_}


def _big_forward(env: Env, threshold: int) -> Tuple[float, str]:
    """One float32 ``rotate(x, wigner, index=...)`` with more than ``threshold`` output elements, checked on
    slices (first edges, the edges around element ``threshold``, the last edges) against the reference."""
    import torch

    import so2ops

    p = big_plan(threshold)
    full = big_plan(BIG)
    note = f"E {p['E']}, {p['elements']} elements, {p['bytes'] / 2**30:.2f} GiB"
    if env.dry:
        note += f" (the GPU run: E {full['E']}, {full['elements']} elements, {full['bytes'] / 2**30:.1f} GiB)"
    if env.device.type == "cuda":
        _free_cuda(env)
        free, _ = torch.cuda.mem_get_info()
        if free < 1.2 * p["bytes"]:
            raise SkipCase(f"needs {p['bytes'] / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
    g = _gen(11)
    lmax, c, n, e = p["lmax"], p["C"], p["N"], p["E"]
    x = _randn((n, (lmax + 1) ** 2, c), g, torch.float32, env.device)
    wig = torch.empty(e, so2ops.wigner_size(lmax), device=env.device, dtype=torch.float32)
    wig.uniform_(-1.0, 1.0, generator=None)  # any values: rotate is linear in them, the reference uses the same
    idx = torch.randint(0, n, (e,), device=env.device)
    idx[-1] = n - 1
    with torch.no_grad(), so2ops.use_backend(env.backend):
        out = so2ops.rotate(x, wig, lmax, index=idx)
    env.sync()
    per_edge = (lmax + 1) ** 2 * c
    edge_at = threshold // per_edge
    span = 2048 if not env.dry else 4
    worst = 0.0
    for lo in (0, max(0, edge_at - span // 2), e - span):
        sl = slice(lo, min(e, lo + span))
        with torch.no_grad(), so2ops.use_backend("reference"):
            ref = so2ops.rotate(x, wig[sl], lmax, index=idx[sl])
        worst = max(worst, rel_err(out[sl], ref))
    del out, wig, idx
    _free_cuda(env)
    return worst, note


def _determinism_child(env: Env, ck: Checker, tag: str, cublas: Optional[str], share: float = 1.0) -> None:
    """Run ``determinism`` in a child process with or without ``CUBLAS_WORKSPACE_CONFIG`` (ATen reads it
    once, at the first cuBLAS call of a process, so a fresh process is needed per setting); the child
    gets ``share`` of the time left."""
    child_env = dict(os.environ)
    child_env.pop("CUBLAS_WORKSPACE_CONFIG", None)
    if cublas is not None:
        child_env["CUBLAS_WORKSPACE_CONFIG"] = cublas
    left = env.left()
    if left < 5:
        ck.tsv.add(name=f"determinism[{tag}]", dtype="-", status="skip", seconds=0, note="out of time")
        return
    deadline = time.time() + min(share * left, 25.0)  # a hung child must not eat the rest of the phase
    cmd = [sys.executable, os.path.abspath(__file__), "determinism", "--tag", tag, "--out", env.out,
           "--device", str(env.device.type), "--backend", env.backend, "--deadline", f"{deadline:.0f}"]
    if env.dry:
        cmd.append("--dry-run")
    say("  + " + " ".join(cmd) + f"  (CUBLAS_WORKSPACE_CONFIG={cublas or 'unset'})")
    try:
        res = subprocess.run(cmd, env=child_env, timeout=max(5.0, deadline - time.time() + 5), capture_output=True,
                             text=True)
        sys.stdout.write(res.stdout)
        sys.stdout.write(res.stderr[-4000:])
        if res.returncode not in (0, 1):
            ck.tsv.add(name=f"determinism[{tag}]", dtype="-", status="error", seconds="-",
                       note=f"child exit {res.returncode}: {(res.stderr.strip().splitlines() or [''])[-1][:200]}")
    except subprocess.TimeoutExpired:
        ck.tsv.add(name=f"determinism[{tag}]", dtype="-", status="skip", seconds="-", note="child timed out")


def cmd_determinism(a) -> int:
    env = Env(a)
    torch = env.torch
    ck = Checker(env)
    size = TINY if env.dry else Size(nodes=500, edges=20000, cin=16, cout=16, lmax=3, mmax=2, hidden=8)
    import so2ops  # noqa: F401 - may set CUBLAS_WORKSPACE_CONFIG itself (so2ops.ops._common)

    say(f"determinism[{a.tag}]: CUBLAS_WORKSPACE_CONFIG at start {a.cublas_at_start}, after import so2ops "
        f"{os.environ.get('CUBLAS_WORKSPACE_CONFIG', 'unset')}")
    dtypes = (torch.float32,) if env.dry else (torch.float32, torch.float64)
    ops = ("rotate_gather", "so2_linear", "so2_message_det") if env.dry else None
    for dtype in dtypes:
        for case in build_cases(size, dtype, env.device, seed=7, long_segments=True, ops=ops):
            ck.row(f"determinism[{a.tag}]:{case.name}", dtype, lambda c=case: _run_twice(env, c), 0.0)
    return 1 if any(r["status"] in ("FAIL", "error") for r in ck.tsv.rows) else 0


def _run_twice(env: Env, case: OpCase) -> Tuple[float, str]:
    """Bitwise comparison of two runs under ``torch.use_deterministic_algorithms(True)``: 0 when equal."""
    import torch

    with deterministic_algorithms(True):
        first = run_case(case, env.backend)
        second = run_case(case, env.backend)
    pairs = [("out", first[0], second[0])] + [(f"grad {k}", first[1][k], second[1][k]) for k in case.grad]
    differ = [name for name, p, q in pairs if p is not None and not torch.equal(p, q)]
    if differ:
        return max(rel_err(p, q) for _, p, q in pairs if p is not None), "differs: " + ", ".join(differ)
    return 0.0, f"{len(pairs)} tensors bitwise equal"


def _check_summary(env: Env, ck: Checker) -> int:
    rows = read_tsv(ck.tsv.path)
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    bad = [r for r in rows if r["status"] in ("FAIL", "error")]
    lines = [f"# check: so2ops on {env.device} (backend {env.backend}) against the reference",
             "", f"{json.dumps(versions())}", "",
             "Status counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    if env.dry:
        lines += ["DRY RUN on the CPU at tiny sizes: the logic, not the kernels, was exercised.", ""]
    lines += ["| name | dtype | status | max rel err | tol | s | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(r.get(c, "") for c in CHECK_COLUMNS) + " |")
    atomic_write(os.path.join(env.out, "check.md"), "\n".join(lines) + "\n")
    say(f"check: {counts}; report {ck.tsv.path}")
    for r in bad:
        say(f"  {r['status']}: {r['name']} [{r['dtype']}] {r['note']}")
    return 1 if bad else 0


# ============================================================== timing
TIMING_COLUMNS = ["op", "lmax", "mmax", "C", "E", "impl", "mode", "tf32", "median_ms", "min_ms", "reps",
                  "peak_mib", "vs_reference", "status", "note"]
TIMING_SHAPES = [(e, lmax, mmax, c) for e in (200_000, 1_000_000) for lmax, mmax, c in ((4, 2, 128), (4, 4, 128))]
#: row order of the table (the fast backend and its ``_plain`` variant come first)
IMPL_ORDER = ("gemm_floor", "escn_dense", "fairchem_general", "reference")


@dataclass
class Row:
    op: str
    impl: str
    shape: Dict
    build: Callable[[], object]  # -> bench.registry.Workload
    mem_bytes: int               # estimated peak need (inputs excluded)
    skip: Optional[str] = None
    note: str = ""


def timing_impls(op: str, shape: Dict, inputs: Dict, fast: str, device) -> List[Row]:
    """The rows of one (op, shape): fast backend, GEMM floor, eSCN dense (message), FAIR-Chem, reference."""
    from bench import gemm_floor
    from bench.baselines import escn_dense, fairchem_general  # noqa: F401 (escn: via the entry's builder)
    from bench.ops import edgewise as ew
    from bench.ops import edgewise_block as eb
    from bench.ops import so2_message as sm
    from so2ops.layout import num_coeffs

    e, k, c = shape["E"], num_coeffs(shape["lmax"]), shape["C"]
    isz = 4
    rows: List[Row] = []
    if op == "so2_message":
        impls = {i.name: i for i in sm.ENTRY.impls(device)}
        rows.append(Row(op, fast, shape, lambda: impls[fast].build(inputs, shape), isz * 4 * e * 64))
        floor_gemms = gemm_floor.so2_gemms(shape["lmax"], shape["mmax"], c, c)
        rows.append(Row(op, "gemm_floor", shape, lambda: _floor_workload(floor_gemms, e, device),
                        _floor_bytes(floor_gemms, e, isz), note="bound: the SO(2) GEMMs only (bench.gemm_floor)"))
        rows.append(Row(op, "escn_dense", shape, lambda: sm._escn_build(inputs, shape), sm._escn_mem(shape, isz),
                        note="eSCN/EquiformerV2 style (bench.baselines.escn_dense)"))
        reason = fairchem_general.available()
        rows.append(Row(op, "fairchem_general", shape, lambda: ew._fairchem_build(inputs, shape),
                        fairchem_general.mem_estimate(shape, isz), skip=reason,
                        note="FAIR-Chem's general edgewise path (bench.baselines.fairchem_general)"))
        rows.append(Row(op, "reference", shape, lambda: impls["reference"].build(inputs, shape),
                        sm.ENTRY.mem_estimate(shape, isz), note="plain PyTorch (so2ops reference backend)"))
    else:
        h = shape["H"]
        rows.append(Row(op, fast, shape, lambda: _block_workload(inputs, shape, fast, lean=True), isz * 8 * e * k,
                        note="SO2EdgewiseBlock, lean (default)"))
        rows.append(Row(op, f"{fast}_plain", shape, lambda: _block_workload(inputs, shape, fast, lean=False),
                        isz * 3 * e * k * (2 * c + 3 * h), note="lean=False (composition of fused ops)"))
        floor_gemms = eb._floor_gemms(shape)
        rows.append(Row(op, "gemm_floor", shape, lambda: _floor_workload(floor_gemms, e, device),
                        _floor_bytes(floor_gemms, e, isz), note="bound: the block's GEMMs only"))
        reason = eb._available()
        rows.append(Row(op, "fairchem_general", shape, lambda: eb._fairchem_build(inputs, shape),
                        eb._fairchem_mem(shape, isz), skip=reason,
                        note="FAIR-Chem's Edgewise module, general path (bench.ops.edgewise_block)"))
        rows.append(Row(op, "reference", shape, lambda: _block_workload(inputs, shape, "reference", lean=False),
                        isz * 6 * e * k * (2 * c + 3 * h), note="lean=False on the reference backend (plain PyTorch)"))
    return rows


def _floor_workload(gemms, e: int, device):
    """``bench.gemm_floor.workload`` with its buffers drawn on ``device`` (the bench draws them on the CPU:
    3e9 samples at 1e6 edges, a minute the timing phase does not have)."""
    import torch

    from bench.gemm_floor import _Floor
    from bench.registry import Workload

    g = torch.Generator(device=device).manual_seed(0)
    acts = [torch.randn(e, k, generator=g, device=device) for k, _, _ in gemms]
    weights = [torch.randn(n, k, generator=g, device=device) / k ** 0.5 for k, n, _ in gemms]
    outs = [torch.empty(e, n, device=device) for _, n, _ in gemms]
    dummy = torch.zeros(1, device=device, requires_grad=True)
    return Workload(forward=lambda: _Floor.apply(dummy, list(gemms), acts, weights, outs), grad_inputs=[dummy])


def _floor_bytes(gemms, e: int, isz: int) -> int:
    return isz * (e * sum(k + n for k, n, _ in gemms) + e * max(k for k, _, _ in gemms))


def _block_workload(inputs: Dict, shape: Dict, backend: str, lean: bool):
    """``SO2EdgewiseBlock`` with seeded weights on ``backend`` (no FAIR-Chem needed)."""
    import torch

    from bench.ops.edgewise_block import EDGE_LIST  # UMA's radial MLP form, as the bench uses
    from bench.registry import Workload
    from bench.so2_backends import force_backend
    from so2ops.nn import SO2EdgewiseBlock

    x0 = inputs["x"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        block = SO2EdgewiseBlock(shape["lmax"], shape["mmax"], shape["C"], shape["H"], list(EDGE_LIST), lean=lean)
    block = block.to(device=x0.device, dtype=x0.dtype)
    x = x0.detach().requires_grad_(True)
    ea = inputs["edge_attr"].detach().requires_grad_(True)
    ei, wig, env = inputs["edge_index"], inputs["wigner"], inputs["envelope"]

    def forward():
        return block(x, ei, wig, ea, env)

    return Workload(forward=forward, grad_inputs=[x, ea, *block.parameters()], context=lambda: force_backend(backend))


def _time_workload(env: Env, w, mode: str, reps_cap: int, target_s: float) -> Dict:
    """Warm-up call (peak memory measured on it), then up to ``reps_cap`` timed calls filling ``target_s``."""
    import torch

    cuda = env.device.type == "cuda"
    gout: List = []

    def call():
        with w.context():
            if mode == "fwd":
                with torch.no_grad():
                    return w.forward()
            out = w.forward()
            if not gout:
                gout.append(torch.randn(out.shape, generator=_gen(5), dtype=torch.float32).to(out.device, out.dtype))
            out.backward(gout[0])
            for t in w.grad_inputs:
                t.grad = None
            return None

    if cuda:
        env.sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    call()
    env.sync()
    first = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if cuda else None
    reps = int(max(1, min(reps_cap, target_s / max(first, 1e-6))))
    if first > env.left() / 3:
        reps = 0  # no time for more: the warm-up call is the only measurement
    times = []
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            call()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    if not times:
        times = [first]
    times.sort()
    return {"median_ms": 1e3 * times[len(times) // 2], "min_ms": 1e3 * times[0], "reps": len(times),
            "peak_mib": peak}


def timing_inputs(op: str, shape: Dict, device, seed: int = 0) -> Dict:
    """The inputs of ``bench.ops.so2_message`` / ``bench.ops.edgewise_block`` (same names and shapes), drawn
    on ``device`` itself: the bench's CPU-seeded draws take tens of seconds at 1e6 edges (a [E, 15, 128]
    modulation is 2e9 normal samples), which the timing phase cannot spend."""
    import torch

    from bench import inputs as inp
    from so2ops.layout import num_coeffs, num_mod, weight_size

    g = torch.Generator(device=device).manual_seed(seed)
    lmax, mmax, c, e, n = shape["lmax"], shape["mmax"], shape["C"], shape["E"], shape["N"]
    edge_index, edge_vec = inp.random_graph(e, n, inp.generator(seed))
    edge_index, edge_vec = edge_index.to(device), edge_vec.to(device)

    def randn(*size, scale=1.0):
        return torch.randn(*size, generator=g, device=device, dtype=torch.float32).mul_(scale)

    out = {"x": randn(n, num_coeffs(lmax), c), "wigner": inp.wigner_of(edge_vec, lmax, torch.float32, device),
           "edge_index": edge_index}
    if op == "so2_message":
        out.update(edge_vec=edge_vec, weight=randn(weight_size(lmax, mmax, c, c), scale=((lmax + 1) * c) ** -0.5),
                   modulation=randn(e, num_mod(lmax, mmax), c))
    else:
        from bench.ops import edgewise_block as eb

        out.update(edge_attr=randn(e, eb.EDGE_LIST[0]),
                   envelope=torch.rand(e, generator=g, device=device, dtype=torch.float32))
    return out


def _time_impl(env: Env, r: Row, full: Row, label: Dict, rows_out: List[Dict], emit: Callable[[], None],
               execute: bool = True) -> None:
    """The four rows (fwd / fwdbwd x TF32 off / on) of one implementation; skips recorded with the reason.

    ``full``: the same row at the real size (differs from ``r`` on a dry run), whose memory estimate
    decides the skip; a forward under ``no_grad`` is taken to need 40% of a training step.
    ``execute=False`` (dry run): the rows are listed with the decision, not run."""
    torch = env.torch
    pretend_free = 80 * 2 ** 30  # dry run: which rows an 80 GB GPU would skip for memory
    rows = []
    for tf32 in (False, True):
        for mode in ("fwd", "fwdbwd"):
            rows.append(dict(label, impl=r.impl, mode=mode, tf32="on" if tf32 else "off", note=r.note))
    rows_out.extend(rows)

    def skip_all(reason: str) -> None:
        for row in rows:
            row.update(status="skip", note=reason[:200])
        emit()

    if r.skip:
        return skip_all(r.skip)
    if env.device.type == "cuda":
        _free_cuda(env)
        free = torch.cuda.mem_get_info()[0]
    else:
        free = pretend_free
    for row in rows:
        need = full.mem_bytes * (1.0 if row["mode"] == "fwdbwd" else 0.4)
        if need > 0.9 * free:
            row["no_memory"] = f"needs ~{need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"
            if env.dry:
                row["note"] = f"[the GPU run skips this: {row['no_memory']}] " + row["note"]
                del row["no_memory"]
    if all("no_memory" in row for row in rows):
        return skip_all(rows[0]["no_memory"])
    if not execute:
        for row in rows:
            row.update(status="dry-run", note="listed, not executed. " + row["note"])
        return emit()
    if env.left() < 2:
        return skip_all("out of time")
    try:
        w = r.build()
    except Exception as exc:  # noqa: BLE001 - OOM or a broken baseline: recorded
        say(traceback.format_exc(limit=3))
        oom = "out of memory" in str(exc).lower()
        for row in rows:
            row.update(status="skip" if oom else "error", note=f"build: {type(exc).__name__}: {exc}"[:200])
        _free_cuda(env)
        return emit()
    for row in rows:
        torch.set_float32_matmul_precision("high" if row["tf32"] == "on" else "highest")
        if "no_memory" in row:
            row.update(status="skip", note=row.pop("no_memory"))
            continue
        if env.left() < 2:
            row.update(status="skip", note="out of time")
            continue
        try:
            res = _time_workload(env, w, row["mode"], reps_cap=3 if env.dry else 5, target_s=0.02 if env.dry else 0.4)
            row.update(res, status="ok")
        except Exception as exc:  # noqa: BLE001
            oom = "out of memory" in str(exc).lower()
            row.update(status="skip" if oom else "error", note=f"{type(exc).__name__}: {exc}"[:200])
            if not oom:
                say(traceback.format_exc(limit=3))
            _free_cuda(env)
        say(f"  {row['op']} E{row['E']} mmax{row['mmax']} {r.impl:18s} {row['mode']:6s} tf32 {row['tf32']:3s} "
            f"{row.get('status')} {_fmt(row.get('median_ms'))} ms, peak {_fmt(row.get('peak_mib'))} MiB")
        emit()
    torch.set_float32_matmul_precision("highest")
    del w
    _free_cuda(env)


def cmd_timing(a) -> int:
    env = Env(a)
    torch = env.torch
    from bench.inputs import default_nodes

    fast = env.backend
    out_md, out_json = os.path.join(env.out, "timing.md"), os.path.join(env.out, "timing.json")
    rows_out: List[Dict] = []
    say(f"timing: device {env.device}, fast backend {fast}, {env.left():.0f} s budget"
        f"{' [dry run: tiny sizes, CPU]' if env.dry else ''}")

    def emit():
        _write_timing(env, out_md, out_json, rows_out)

    # two passes: the project's own rows (fast backend, GEMM floor) at every size first, then the
    # baselines, which are slower, so that a run cut short by the deadline still has the headline rows
    for pass_ in ("own", "baselines"):
        for e, lmax, mmax, c in TIMING_SHAPES:
            for op in ("so2_message", "edgewise_block"):
                shape = dict(lmax=lmax, mmax=mmax, C=c, E=e, N=default_nodes(e))
                if op == "edgewise_block":
                    shape["H"] = c
                run_shape = dict(shape, E=64, N=8, C=8, H=8) if env.dry else shape
                if op != "edgewise_block":
                    run_shape.pop("H", None)
                label = dict(op=op, lmax=lmax, mmax=mmax, C=c, E=e)
                if env.left() < 3:
                    rows_out.append(dict(label, impl=f"* ({pass_})", mode="*", tf32="*", status="skip",
                                         note="out of time"))
                    emit()
                    continue
                try:
                    inputs = timing_inputs(op, run_shape, env.device)
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory for the inputs themselves
                    rows_out.append(dict(label, impl=f"* ({pass_})", mode="*", tf32="*", status="skip",
                                         note=f"inputs: {type(exc).__name__}: {exc}"[:200]))
                    _free_cuda(env)
                    emit()
                    continue
                impl_rows = timing_impls(op, run_shape, inputs, fast, env.device)
                full_rows = timing_impls(op, shape, {}, fast, env.device) if env.dry else impl_rows
                execute = not env.dry or (e, mmax) == (TIMING_SHAPES[0][0], TIMING_SHAPES[0][2])
                for r, full in zip(impl_rows, full_rows):
                    if (r.impl.startswith(fast) or r.impl == "gemm_floor") != (pass_ == "own"):
                        continue
                    # one implementation at a time: built once, both modes with TF32 off and on, released
                    _time_impl(env, r, full, label, rows_out, emit, execute)
                del inputs, impl_rows
                _free_cuda(env)
    torch.set_float32_matmul_precision("highest")
    emit()
    bad = [r for r in rows_out if r.get("status") == "error"]
    say(f"timing: {len(rows_out)} rows, {sum(r.get('status') == 'ok' for r in rows_out)} timed, "
        f"{len(bad)} errors; {out_md}")
    return 1 if bad else 0


def _fmt(v, nd=3) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def _write_timing(env: Env, md: str, js: str, rows: List[Dict]) -> None:
    ref = {(r["op"], r["mmax"], r["E"], r["mode"], r["tf32"]): r.get("median_ms") for r in rows
           if r.get("impl") == "reference" and r.get("status") == "ok"}
    for r in rows:
        base = ref.get((r["op"], r["mmax"], r["E"], r.get("mode"), r.get("tf32")))
        if base and r.get("median_ms"):
            r["vs_reference"] = base / r["median_ms"]
    order = {name: i for i, name in enumerate((env.backend, f"{env.backend}_plain") + IMPL_ORDER)}
    rows = sorted(rows, key=lambda r: (r["E"], r["mmax"], r["op"] != "so2_message", order.get(r["impl"], 99),
                                       r.get("tf32", ""), r.get("mode", "")))
    head = [f"# GPU first run: timing ({'DRY RUN, tiny sizes on the CPU: meaningless numbers' if env.dry else env.device})",
            "", f"{json.dumps(versions())}", "",
            "so2_message and SO2EdgewiseBlock (lmax 4, C = H = 128, float32): forward (`fwd`, no_grad) and a "
            "training step (`fwdbwd`); median / min of the timed calls after one warm-up call (CUDA events); "
            "peak MiB = torch.cuda.max_memory_allocated during the warm-up call above what was allocated "
            "before it (inputs excluded); `vs_reference` = reference median / row median; `tf32 on` = "
            "torch.set_float32_matmul_precision('high').  Rows that do not fit the memory or the time left "
            "are listed as skipped.", "",
            "| " + " | ".join(TIMING_COLUMNS) + " |", "|" + "---|" * len(TIMING_COLUMNS)]
    for r in rows:
        head.append("| " + " | ".join(_fmt(r.get(c)) for c in TIMING_COLUMNS) + " |")
    atomic_write(md, "\n".join(head) + "\n")
    atomic_write(js, json.dumps({"versions": versions(), "dry_run": env.dry, "rows": rows}, indent=1, default=str))


# ============================================================== main
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sanitize-target", help="every CUDA op fwd+bwd at tiny sizes (run under compute-sanitizer)")
    add_common(s, 60)
    s.add_argument("--tile", type=int, default=7, help="edges per tile forced in the tiled driver (0: default)")
    s.add_argument("--backends", default=None, help="comma list (default: the backend under test)")
    s.add_argument("--ops", default=None, help=f"comma list of {','.join(OP_NAMES)}")
    s.add_argument("--lmax", default="0,2,4", help="comma list of lmax values")
    s.add_argument("--tag", default="run", help="report name: sanitize_<tag>.tsv")
    s.add_argument("--dtypes", default="float32,float64,float16,bfloat16",
                   help="comma list; float16 / bfloat16 run the ops that take half inputs (CUDA only)")
    c = sub.add_parser("check", help="every op against the reference on the GPU")
    add_common(c, 60)
    d = sub.add_parser("determinism", help="child of check: run-to-run bitwise equality")
    add_common(d, 30)
    d.add_argument("--tag", required=True)
    d.set_defaults(cublas_at_start=os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset"))
    t = sub.add_parser("timing", help="the timing table ($OUT/timing.md)")
    add_common(t, 60)
    a = p.parse_args(argv)
    if a.cmd == "sanitize-target" and a.tile == 0:
        a.tile = None
    if a.dry_run or (a.device or "").startswith("cpu"):
        if a.cmd == "sanitize-target" and a.backends and "triton" in a.backends:
            os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton on the CPU: the interpreter
    if a.dry_run:
        a.device = a.device or "cpu"
    fn = {"sanitize-target": cmd_sanitize_target, "check": cmd_check, "determinism": cmd_determinism,
          "timing": cmd_timing}[a.cmd]
    return fn(a)


if __name__ == "__main__":
    sys.exit(main())
