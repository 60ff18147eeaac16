"""Turning an (entry, case, impl) into the callable that is timed or measured.

Shared by the runner and the CPU memory worker (which rebuilds the same
workload in a fresh process from the JSON description of the row).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from .registry import Entry, Impl, Workload, entries


def dtype_of(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def seeded_like(out: torch.Tensor, seed: int) -> torch.Tensor:
    """Seeded normal tensor of ``out``'s shape: the same cotangent for every impl of one shape."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    base = torch.float64 if out.dtype == torch.float64 else torch.float32
    return torch.randn(out.shape, generator=g, dtype=base).to(device=out.device, dtype=out.dtype)


def step(w: Workload, mode: str, grad_seed: int) -> Callable[[], object]:
    """The zero-argument function timed for ``mode``; call it inside ``w.context()``.

    * ``fwd``: the forward under ``torch.no_grad`` (inference).
    * ``fwdbwd``: forward with autograd, then ``torch.autograd.grad`` of a
      fixed cotangent w.r.t. ``w.grad_inputs`` (a training step's cost).
    * ``bwd``: one forward outside the timer, then the backward alone
      (``retain_graph=True`` so that it can be repeated).
    """
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return w.forward()
        return fwd
    if not w.grad_inputs:
        raise ValueError("mode needs gradients but the workload has no grad_inputs")
    if mode == "fwdbwd":
        probe = None

        def fwdbwd():
            nonlocal probe
            out = w.forward()
            if probe is None:
                probe = seeded_like(out, grad_seed)
            return torch.autograd.grad(out, w.grad_inputs, probe)
        return fwdbwd
    if mode == "bwd":
        out = w.forward()
        g = seeded_like(out, grad_seed)

        def bwd():
            return torch.autograd.grad(out, w.grad_inputs, g, retain_graph=True)
        return bwd
    raise ValueError(f"unknown mode {mode!r}")


def find_impl(entry: Entry, name: str, device: torch.device) -> Impl:
    for impl in entry.impls(device):
        if impl.name == name:
            return impl
    raise KeyError(f"{entry.name} has no implementation {name!r}")


def build(entry_name: str, shape: Dict, dtype: str, impl_name: str, device: torch.device, seed: int,
          inputs: Optional[Dict[str, torch.Tensor]] = None) -> Workload:
    """Rebuild a row's workload from its description (used by the memory worker)."""
    entry = entries()[entry_name]
    impl = find_impl(entry, impl_name, device)
    if inputs is None:
        inputs = entry.make_inputs(shape, dtype_of(dtype), device, seed)
    return impl.build(inputs, shape)
