"""Launch helpers shared by the Triton kernels: device guard and index checks.

* ``on_device(t)``: Triton launches on ``torch.cuda.current_device()`` (its
  driver reads the device and stream from there), not on the device of the
  pointers it is given, so a tensor on ``cuda:1`` launched while ``cuda:0`` is
  current would run on the wrong device (an illegal address, or silently
  another GPU's memory).  Every launch in this package runs inside
  ``with on_device(tensor):``; ``tests/test_triton_guards.py`` checks that
  statically for each ``kernel[grid](...)`` call.
* ``check_rows(name, index, n)``: the index-range check of
  ``so2ops.validation`` (on for CPU tensors, off for GPU ones unless asked:
  it reads the data on the host, a device synchronisation), naming the
  argument.  When it is off the kernels themselves treat a row outside
  ``[0, n)`` as absent (reads as zeros, receives nothing), exactly like the
  cuda backend: never an out-of-bounds access, never a host synchronisation.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from ..validation import check_index_range


def on_device(t: torch.Tensor):
    """Context manager making ``t``'s CUDA device current for a launch (no-op for CPU tensors,
    which only the interpreter runs)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def check_rows(name: str, index: Optional[torch.Tensor], n: int) -> None:
    """``index`` (``[E]`` int64 or ``None``) must lie in ``[0, n)``: ``IndexError`` naming ``name``
    when value checks are on (``so2ops.validation.check_values_enabled``)."""
    if index is not None:
        check_index_range(name, index, n)
