"""Backend registry and dispatch.

Four backends implement every op with the same signature:

* ``reference``: plain PyTorch (``so2ops.reference``), any device; the oracle.
* ``cpu``: C++/OpenMP kernels of ``csrc/cpu`` (``so2ops._C``), CPU tensors.
* ``cuda``: CUDA kernels of ``csrc/cuda`` (``so2ops._C``), CUDA tensors.
* ``triton``: Triton kernels (``so2ops.triton``), CUDA tensors, or CPU tensors
  when ``TRITON_INTERPRET=1`` (how CI runs them).

Selection, first match wins: ``use_backend(name)`` (a context manager), the
``SO2OPS_BACKEND`` environment variable, then the fastest runnable backend for
the device (``cuda`` > ``triton`` > ``reference`` on GPU, ``cpu`` >
``reference`` on CPU).  A forced backend that cannot run on the inputs' device
raises instead of silently falling back.

If the compiled extension ``so2ops._C`` is missing or fails to import, the
``cpu`` and ``cuda`` backends are unavailable: so2ops then warns once (a
``RuntimeWarning`` quoting the ``ImportError``) and the automatic choice uses
``reference`` / ``triton``.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")

_forced: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("so2ops_backend", default=None)


@dataclass
class Impl:
    """One op on one backend: ``forward(*args)`` and ``backward(*args)``."""

    forward: Callable
    backward: Callable


_IMPLS: Dict[str, Dict[str, Impl]] = {}


def register_impl(op: str, backend: str, forward: Callable, backward: Callable) -> None:
    """Register the implementation of ``op`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _IMPLS.setdefault(op, {})[backend] = Impl(forward, backward)


# ---------------------------------------------------------------- availability
_EXT_UNSET = object()
_ext = _EXT_UNSET
_ext_warned = False


def _extension():
    """The compiled ``so2ops._C`` module, or None (with a one-time ``RuntimeWarning``) if it does not import."""
    global _ext, _ext_warned
    if _ext is not _EXT_UNSET:
        return _ext
    try:
        _ext = importlib.import_module("so2ops._C")
    except ImportError as err:
        _ext = None
        if not _ext_warned:
            _ext_warned = True
            warnings.warn(
                f"so2ops: the compiled extension so2ops._C could not be imported ({type(err).__name__}: {err}); "
                "the 'cpu' and 'cuda' backends are unavailable and ops run on 'reference' (CPU) or "
                "'triton'/'reference' (GPU), which are much slower. Rebuild the package (pip install -e .) "
                "to get the compiled kernels.",
                RuntimeWarning,
                stacklevel=2,
            )
    return _ext


def _reset_extension_state() -> None:
    """Forget the cached import result and the warning (tests only)."""
    global _ext, _ext_warned
    _ext = _EXT_UNSET
    _ext_warned = False


def _cxx_has(device_kind: str) -> bool:
    ext = _extension()
    if ext is None:
        return False
    return bool(ext.compiled_with_cuda()) if device_kind == "cuda" else True


def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runnable(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` can run on tensors of ``device``."""
    kind = torch.device(device).type
    if backend == "reference":
        return True
    if backend == "cpu":
        return kind == "cpu" and _cxx_has("cpu")
    if backend == "cuda":
        return kind == "cuda" and _cxx_has("cuda")
    if backend == "triton":
        if not _triton_importable():
            return False
        return kind == "cuda" or (kind == "cpu" and triton_interpret())
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def backends() -> Dict[str, Dict[str, object]]:
    """What was built and what can run here.

    Returns ``{name: {"built": bool, "devices": [device types it can run on now]}}``.
    """
    gpu = torch.cuda.is_available()
    built = {
        "reference": True,
        "cpu": _cxx_has("cpu"),
        "cuda": _cxx_has("cuda"),
        "triton": _triton_importable(),
    }
    out = {}
    for name in BACKENDS:
        devs = [d for d in (["cpu", "cuda"] if gpu else ["cpu"]) if runnable(name, torch.device(d))]
        out[name] = {"built": built[name], "devices": devs}
    return out


# ---------------------------------------------------------------- selection
@contextlib.contextmanager
def use_backend(name: Optional[str]):
    """Force every so2ops op inside the block onto backend ``name`` (None: automatic)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"use_backend: unknown backend {name!r}; expected one of {BACKENDS}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def current_backend() -> Optional[str]:
    """The forced backend name, if any (context manager first, then ``SO2OPS_BACKEND``)."""
    name = _forced.get()
    if name is None:
        name = os.environ.get("SO2OPS_BACKEND") or None
        if name is not None and name not in BACKENDS:
            raise ValueError(f"SO2OPS_BACKEND={name!r} is not one of {BACKENDS}")
    return name


def select(op: str, device: torch.device) -> Impl:
    """The implementation of ``op`` to run for tensors on ``device``."""
    _load_backends()
    forced = current_backend()
    if forced is not None:
        if not runnable(forced, device):
            raise RuntimeError(
                f"so2ops: backend {forced!r} was requested but cannot run on device {device} "
                f"(available: {backends()})"
            )
        order = [forced]
    elif torch.device(device).type == "cuda":
        order = ["cuda", "triton", "reference"]
    else:
        order = ["cpu", "reference"]
    impls = _IMPLS.get(op, {})
    for name in order:
        if name in impls and runnable(name, device):
            return impls[name]
    raise RuntimeError(f"so2ops: no implementation of {op!r} on backend(s) {order} for device {device}")


_loaded = False


def _load_backends() -> None:
    """Import the optional backend modules once, so they register themselves."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    if _triton_importable():
        importlib.import_module("so2ops.triton")


def implementations(op: str) -> list:
    """Names of the backends that implement ``op`` (runnable here or not)."""
    _load_backends()
    return [name for name in BACKENDS if name in _IMPLS.get(op, {})]
