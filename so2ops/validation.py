"""Argument checks shared by the public ops.

Metadata checks (shape, dtype, device) run in the Python wrappers, so they
also run under ``torch.compile``; value checks (NaN, zero length, index range)
need the data and run in the eager implementation of each custom op.  Set
``SO2OPS_CHECK_VALUES=0`` to skip the value checks (they synchronise the GPU).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from .layout import LMAX_SUPPORTED

FLOAT_DTYPES = (torch.float32, torch.float64)
GPU_EXTRA_DTYPES = (torch.float16, torch.bfloat16)


def check_values_enabled() -> bool:
    return os.environ.get("SO2OPS_CHECK_VALUES", "1") != "0"


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
    if t.numel() == 0 or not check_values_enabled():
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= size:
        raise IndexError(f"{name} has entries in [{lo}, {hi}] but must lie in [0, {size})")


def check_edge_vec_values(edge_vec: torch.Tensor) -> None:
    """Data check: finite, nonzero edge vectors."""
    if edge_vec.numel() == 0 or not check_values_enabled():
        return
    if not bool(torch.isfinite(edge_vec).all()):
        bad = torch.nonzero(~torch.isfinite(edge_vec).all(dim=1))[0].item()
        raise ValueError(f"edge_vec has non-finite (NaN/inf) entries, first at edge {bad}")
    norm = edge_vec.norm(dim=1)
    if not bool((norm > 0).all()):
        bad = torch.nonzero(norm == 0)[0].item()
        raise ValueError(f"edge_vec has zero-length edges (e.g. edge {bad}); remove self-loops first")


def check_finite_values(name: str, t: torch.Tensor) -> None:
    """Data check: no NaN / inf entries in ``t``."""
    if t.numel() == 0 or not check_values_enabled():
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite (NaN/inf) entries")
