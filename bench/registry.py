"""What can be benchmarked: entries, cases, implementations, workloads.

An ``Entry`` is one benchmarked thing (an so2ops op, a model, a sanity row
such as a large matmul).  It lists its ``Case``s (a shape and a dtype) and its
``Impl``s (every so2ops backend that runs on the device, and the baselines it
replaces).  An ``Impl`` builds a ``Workload`` from the case's inputs: a
zero-argument ``forward`` plus the leaf tensors the backward differentiates.

Adding a model benchmark later means writing one more ``Entry`` subclass with
``kind = "model"`` (shapes = batch sizes, impls = backends, count = the
model's analytic FLOPs) and calling ``register`` on it; the runner, the
writers, the plots and ``compare`` need no change.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch

from .counts import Count

MODES = ("fwd", "bwd", "fwdbwd")
KINDS = ("op", "model", "sanity")


@dataclass
class Workload:
    """One implementation bound to one case's inputs.

    ``forward()`` returns a tensor; ``grad_inputs`` are the leaves whose
    gradients a training step needs.  ``context()`` wraps every call (backend
    selection).  ``to_reference(out, grads)`` maps this implementation's output
    and gradients to the reference's layout so that they can be compared
    (identity for so2ops backends; a weight-layout change for eSCN-style code).
    """

    forward: Callable[[], torch.Tensor]
    grad_inputs: Sequence[torch.Tensor]
    context: Callable[[], ContextManager] = contextlib.nullcontext
    to_reference: Optional[Callable[[torch.Tensor, Sequence[torch.Tensor]], Tuple[torch.Tensor, List[torch.Tensor]]]] = None


@dataclass
class Impl:
    """A way to compute an entry: an so2ops backend or a baseline.

    Attributes:
        name: row label (``"cpu"``, ``"reference"``, ``"escn_dense"``, ``"e3nn_tp"``...).
        kind: ``"backend"`` (so2ops) or ``"baseline"`` (what users would otherwise run).
        build: ``build(inputs, shape) -> Workload``.
        same_math: computes the entry's function exactly, so its output and
            gradients are asserted equal to the reference before timing.
        skip: ``skip(shape, dtype) -> reason or None`` (unsupported dtype,
            too much memory, interpreter-only backend...).
        count: own analytic count when the impl computes a different function
            (the e3nn tensor product); None means the entry's count.
        is_baseline: speedups of the other rows are taken against this one
            (the ``reference`` backend is a backend *and* the plain-PyTorch baseline).
        mem_estimate: ``(shape, itemsize) -> bytes`` when this impl needs far more
            memory than the entry's estimate (cases beyond the budget are skipped).
        memory: measure its peak memory (False: a bound such as the GEMM floor, whose
            buffers are allocated outside the step, has no meaningful peak).
    """

    name: str
    kind: str
    build: Callable[[Dict[str, torch.Tensor], Dict], Workload]
    same_math: bool = True
    skip: Callable[[Dict, torch.dtype], Optional[str]] = lambda shape, dtype: None
    count: Optional[Callable[[Dict, str, int], Count]] = None
    is_baseline: bool = False
    note: str = ""
    mem_estimate: Optional[Callable[[Dict, int], int]] = None
    memory: bool = True


@dataclass
class Case:
    """One shape and dtype of an entry; ``tags`` name the sweeps it belongs to."""

    shape: Dict
    dtype: torch.dtype
    modes: Tuple[str, ...] = MODES
    tags: Tuple[str, ...] = ()
    #: ``{impl name: reason}``: impls not run for this case (e.g. too slow for ``--quick``).
    skip_impls: Dict[str, str] = field(default_factory=dict)
    #: measure fwd+bwd peak memory for this case (``--quick`` does it for the headline only).
    memory: bool = True


class Entry:
    """Base class of everything the harness times.  Subclasses fill in the hooks."""

    name: str = ""
    kind: str = "op"
    #: ``"flops"``: compute-bound rows, % of peak FLOP/s; ``"bytes"``: % of bandwidth.
    bound: str = "flops"
    description: str = ""

    def cases(self, quick: bool, device: torch.device) -> List[Case]:
        raise NotImplementedError

    def make_inputs(self, shape: Dict, dtype: torch.dtype, device: torch.device, seed: int) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def impls(self, device: torch.device) -> List[Impl]:
        raise NotImplementedError

    def count(self, shape: Dict, mode: str, itemsize: int) -> Optional[Count]:
        """Analytic count of ``mode`` (``fwd``, ``bwd``, ``fwdbwd``) for this shape."""
        return None

    def mem_estimate(self, shape: Dict, itemsize: int) -> int:
        """Rough upper bound (bytes) of the hungriest same-math impl's fwd+bwd, to skip cases that cannot fit."""
        return 0


_REGISTRY: Dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    """Add an entry (ops register on import of ``bench.ops``)."""
    if entry.kind not in KINDS:
        raise ValueError(f"entry kind {entry.kind!r} not in {KINDS}")
    _REGISTRY[entry.name] = entry
    return entry


def entries() -> Dict[str, Entry]:
    """All registered entries, in registration order."""
    from . import ops  # noqa: F401  (registers the op entries)
    from .ops import so2_norm_gate  # noqa: F401  (so2_layer_norm, so2_gate: after the ops of bench/ops/__init__)
    from . import models  # noqa: F401  (registers the model entries)

    return dict(_REGISTRY)


def select_entries(targets: Sequence[str]) -> List[Entry]:
    """Entries named by the CLI targets: ``ops``, ``models``, ``all`` or entry names.

    The sanity entries (large matmul, copy) always run: they are the measured
    peaks every other row is compared with.
    """
    reg = entries()
    chosen: List[str] = []
    for t in targets:
        if t == "all":
            chosen += list(reg)
        elif t in ("ops", "models"):
            kind = t[:-1]
            chosen += [n for n, e in reg.items() if e.kind == kind]
        elif t in reg:
            chosen.append(t)
        else:
            raise SystemExit(f"bench: unknown target {t!r}; expected ops, models, all, compare or one of {sorted(reg)}")
    chosen = [n for n, e in reg.items() if e.kind == "sanity"] + chosen
    seen, out = set(), []
    for n in chosen:
        if n not in seen:
            seen.add(n)
            out.append(reg[n])
    return out


@dataclass
class Shape:
    """Helper to build shape dicts with sweep tags; merges duplicates."""

    items: List[Tuple[Dict, set]] = field(default_factory=list)

    def add(self, tag: str, **shape) -> None:
        for s, tags in self.items:
            if s == shape:
                tags.add(tag)
                return
        self.items.append((dict(shape), {tag}))


def standard_cases(sh: Shape, quick: bool, headline_dtypes: Sequence[torch.dtype] = (torch.float64,),
                   skip_impls: Optional[Callable[[Dict], Dict[str, str]]] = None) -> List[Case]:
    """float32 for every shape, plus ``headline_dtypes`` for the headline shape.

    With ``quick`` only the float32 headline case gets every mode and a memory
    measurement; the sweep points get ``fwdbwd`` timing alone (CI budget).
    """
    out = []
    for shape, tags in sh.items:
        head = "headline" in tags
        skips = skip_impls(shape) if skip_impls else {}
        lean = quick and not head
        out.append(Case(shape, torch.float32, ("fwdbwd",) if lean else MODES, tuple(sorted(tags)), skips, memory=not lean))
        if head:
            for dt in headline_dtypes:
                out.append(Case(shape, dt, ("fwdbwd",) if quick else MODES, ("headline",), skips, memory=not quick))
    return out
