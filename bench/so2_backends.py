"""so2ops backends as benchmark implementations.

The ops remember the backend chosen at forward time for their backward (which
may run on an autograd worker thread); ``force_backend`` also sets
``SO2OPS_BACKEND`` so that helper code outside the ops sees the same choice.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, List, Optional

import torch

import so2ops
from so2ops.dispatch import BACKENDS, implementations

from .registry import Impl, Workload


@contextlib.contextmanager
def force_backend(name: str):
    """Run every so2ops op of the block (forward and backward) on backend ``name``."""
    old = os.environ.get("SO2OPS_BACKEND")
    os.environ["SO2OPS_BACKEND"] = name
    try:
        with so2ops.use_backend(name):
            yield
    finally:
        if old is None:
            os.environ.pop("SO2OPS_BACKEND", None)
        else:
            os.environ["SO2OPS_BACKEND"] = old


class timed_backend:
    """``use_backend(backend)`` with value checks off, as a re-enterable context object:
    entered around every timed call (``bench.timer.time_cpu_interleaved`` takes a
    context factory per row)."""

    def __init__(self, backend: str):
        self.backend = backend

    def __enter__(self):
        self._stack = [so2ops.use_backend(self.backend), so2ops.value_checks(False)]
        for c in self._stack:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self._stack):
            c.__exit__(*exc)
        return False


def implemented(op: str, backend: str) -> bool:
    """Whether ``backend`` registered an implementation of ``op``."""
    return backend in implementations(op)


def skip_reason(op: str, backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` gets no timed row for ``op`` on ``device`` (None: it runs)."""
    info = so2ops.backends()[backend]
    if device.type not in info["devices"]:
        return f"not runnable on {device.type} (built: {info['built']})"
    if not implemented(op, backend):
        return f"backend {backend!r} has no implementation of {op}"
    if backend == "triton" and device.type == "cpu":
        # TRITON_INTERPRET=1 runs kernels in a Python interpreter: its timings mean nothing.
        return "triton on CPU runs in the interpreter (TRITON_INTERPRET=1): timings meaningless"
    return None


def backend_impls(
    op: str,
    device: torch.device,
    bind: Callable[[Dict[str, torch.Tensor], Dict], tuple],
) -> List[Impl]:
    """One ``Impl`` per so2ops backend that can run ``op`` on ``device``.

    ``bind(inputs, shape) -> (forward, grad_inputs)`` calls the public op;
    the returned workload runs it under ``force_backend``.  Backends that
    cannot run still get an Impl whose ``skip`` says why, so the report shows
    the gap instead of hiding it.
    """
    out = []
    for name in BACKENDS:
        reason = skip_reason(op, name, device)

        def build(inputs, shape, _name=name):
            fwd, grads = bind(inputs, shape)
            return Workload(forward=fwd, grad_inputs=grads, context=lambda: force_backend(_name))

        out.append(
            Impl(
                name=name,
                kind="backend",
                build=build,
                skip=(lambda shape, dtype, _r=reason: _r),
                is_baseline=(name == "reference"),
                note="plain-PyTorch reference (the baseline users would write)" if name == "reference" else "",
            )
        )
    return out


def leaves(inputs: Dict[str, torch.Tensor], grad: tuple) -> Dict[str, torch.Tensor]:
    """Fresh leaf copies of ``inputs``; those named in ``grad`` require grad."""
    return {k: (v.detach().requires_grad_(True) if k in grad and v is not None else v) for k, v in inputs.items()}
