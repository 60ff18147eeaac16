"""so2ops backends as benchmark implementations.

``so2ops.use_backend`` is a context variable: it is not seen by the threads
the autograd engine runs CUDA backwards on, so a backward could silently
dispatch to the default (fastest) backend.  ``force_backend`` therefore also
sets ``SO2OPS_BACKEND``, which every thread reads, for the duration of the block.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import Callable, Dict, List, Optional

import torch

import so2ops
_reg = importlib.import_module("so2ops.backends")

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


def implemented(op: str, backend: str) -> bool:
    """Whether ``backend`` registered an implementation of ``op``."""
    _reg._load_backends()
    return backend in _reg._IMPLS.get(op, {})


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
    for name in _reg.BACKENDS:
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
