"""Argument checks shared by the public ops.

Metadata checks (shape, dtype, device) run in the Python wrappers, so they
also run under ``torch.compile``; value checks (NaN, zero length, index range)
need the data and run in the eager implementation of each custom op.

Value checks read data on the host, so on a GPU each one is a device
synchronisation (and CUDA-graph capture fails on one).  Whether they run
(first match wins, docs/conventions.md "Value checks and CUDA graphs"):

1. never while ``torch.compile`` traces (``torch.compiler.is_compiling()``) or
   while the current CUDA stream is being captured into a CUDA graph;
2. the innermost ``value_checks(flag)`` context manager;
3. ``set_value_checks(flag)`` (``None`` restores the default);
4. the ``SO2OPS_CHECK_VALUES`` environment variable (``0``: off, ``1``: on, on
   every device);
5. the default: on for CPU tensors, off for GPU tensors.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Optional, Sequence, Union

import torch

from .layout import LMAX_SUPPORTED

FLOAT_DTYPES = (torch.float32, torch.float64)
GPU_EXTRA_DTYPES = (torch.float16, torch.bfloat16)


_UNSET = object()
_scoped: contextvars.ContextVar = contextvars.ContextVar("so2ops_value_checks", default=_UNSET)
_global: Optional[bool] = None


def set_value_checks(enabled: Optional[bool]) -> None:
    """Switch the value checks on (``True``) or off (``False``) on every device;
    ``None`` restores the default (``SO2OPS_CHECK_VALUES``, else on for CPU, off for GPU)."""
    global _global
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_value_checks expects True, False or None, got {enabled!r}")
    _global = enabled


@contextlib.contextmanager
def value_checks(enabled: Optional[bool] = True):
    """Context manager: value checks on (``True``), off (``False``) or default (``None``) inside the block."""
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"value_checks expects True, False or None, got {enabled!r}")
    token = _scoped.set(enabled)
    try:
        yield
    finally:
        _scoped.reset(token)


def _capturing(device) -> bool:
    """Whether the current CUDA stream is capturing a graph (never without an initialised CUDA context)."""
    if device is not None and torch.device(device).type != "cuda":
        return False
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def check_values_enabled(device: Union[torch.device, str, None] = None) -> bool:
    """Whether value checks run for tensors on ``device`` (see the module docstring).

    ``device=None`` means "a CPU tensor" for the default.
    """
    if torch.compiler.is_compiling() or _capturing(device):
        return False
    flag = _scoped.get()
    if flag is _UNSET or flag is None:
        flag = _global
    if flag is None:
        env = os.environ.get("SO2OPS_CHECK_VALUES")
        if env is not None and env != "":
            return env != "0"
        return device is None or torch.device(device).type == "cpu"
    return flag


def check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        if name == "lmax" and value > LMAX_SUPPORTED:
            raise ValueError(f"lmax={value} exceeds the compiled maximum LMAX_SUPPORTED={LMAX_SUPPORTED}")
        raise ValueError(f"{name}={value} must be in [{low}, {high}]")


def check_tensor(name: str, t, shape: Sequence[Optional[int]], dtype=None, device=None) -> None:
    """Check ``t`` is a tensor with ``len(shape)`` dims; ``None`` entries are free."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the other inputs have dtype {dtype}")


def check_float(name: str, t: torch.Tensor) -> None:
    ok = t.dtype in FLOAT_DTYPES or (t.dtype in GPU_EXTRA_DTYPES and t.device.type == "cuda")
    if not ok:
        allowed = "float32 or float64" + (" (float16/bfloat16 on CUDA only)" if t.dtype in GPU_EXTRA_DTYPES else "")
        raise TypeError(f"{name} must be {allowed}, got {t.dtype}")


def check_index(name: str, t: torch.Tensor, shape: Sequence[Optional[int]], device) -> None:
    check_tensor(name, t, shape, device=device)
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {t.dtype}")


def check_index_range(name: str, t: torch.Tensor, size: int) -> None:
    """Data check: every entry of ``t`` in ``[0, size)``."""
    if t.numel() == 0 or not check_values_enabled(t.device):
        return
    lo, hi = torch.aminmax(t)
    lo, hi = torch.stack([lo, hi]).tolist()  # one host synchronisation
    if lo < 0 or hi >= size:
        raise IndexError(f"{name} has entries in [{lo}, {hi}] but must lie in [0, {size})")


def check_edge_vec_values(edge_vec: torch.Tensor) -> None:
    """Data check: finite, nonzero edge vectors."""
    if edge_vec.numel() == 0 or not check_values_enabled(edge_vec.device):
        return
    finite = torch.isfinite(edge_vec).all(dim=1)
    nonzero = edge_vec.norm(dim=1) > 0
    if bool((finite & nonzero).all()):  # one host synchronisation when the input is good
        return
    if not bool(finite.all()):
        bad = torch.nonzero(~finite)[0].item()
        raise ValueError(f"edge_vec has non-finite (NaN/inf) entries, first at edge {bad}")
    bad = torch.nonzero(~nonzero)[0].item()
    raise ValueError(f"edge_vec has zero-length edges (e.g. edge {bad}); remove self-loops first")


def check_finite_values(name: str, t: torch.Tensor) -> None:
    """Data check: no NaN / inf entries in ``t``."""
    if t.numel() == 0 or not check_values_enabled(t.device):
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite (NaN/inf) entries")
