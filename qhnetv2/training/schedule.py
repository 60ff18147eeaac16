"""Learning-rate schedule: linear warm-up, then cosine or linear decay to a floor.

``lr_factor(step)`` multiplies the base lr (``torch.optim.lr_scheduler.LambdaLR``):
``(step + 1) / warmup`` during the first ``warmup`` steps, then from 1 down to
``floor`` at ``max_steps`` (cosine or straight line, no plateau), ``floor`` after.
"""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, max_steps: int, decay: str = "cosine", floor: float = 0.01) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, max_steps - warmup)
    t = min(1.0, max(0.0, (step - warmup) / span))
    if decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * t))
    elif decay == "linear":
        shape = 1.0 - t
    else:
        raise ValueError(f"lr decay must be cosine or linear, got {decay!r}")
    return floor + (1.0 - floor) * shape


def make_scheduler(optimizer: torch.optim.Optimizer, config) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor` with the config's warmup/max_steps/decay/floor."""
    w, m, d, f = config.warmup_steps, config.max_steps, config.lr_decay, config.lr_floor
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, w, m, d, f))
