"""Radial basis with a smooth envelope."""
from __future__ import annotations

import math

import torch
from torch import nn


class RadialBasis(nn.Module):
    """Gaussians on ``[0, cutoff]`` times the cosine envelope ``(cos(pi r / rc) + 1) / 2``.

    The envelope and its derivative vanish at ``rc``, so anything built from these
    features goes to zero smoothly as an atom leaves the cutoff sphere.

    Shapes: ``forward(r[E]) -> [E, num]``; ``envelope(r[E]) -> [E]``.
    """

    def __init__(self, num: int, cutoff: float):
        super().__init__()
        self.num, self.cutoff = num, float(cutoff)
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num), persistent=False)
        self.width = cutoff / max(num - 1, 1)

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        x = (r / self.cutoff).clamp(max=1.0)
        return 0.5 * (torch.cos(math.pi * x) + 1.0)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        g = torch.exp(-(((r[:, None] - self.centers.to(r.dtype)) / self.width) ** 2))
        return g * self.envelope(r)[:, None]
