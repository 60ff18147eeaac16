"""``SO2LayerNorm``: equivariant layer normalisation of irreps features."""
from __future__ import annotations

import torch
from torch import nn


class SO2LayerNorm(nn.Module):
    """Layer norm that commutes with rotations.

    Degree 0: ordinary layer norm over channels.  Degree ``l > 0``: divide by
    the root-mean-square over ``(m, channel)`` of that degree (a rotation
    invariant), then scale per channel; no bias, which would break equivariance.

    Shapes: ``[N, (lmax+1)**2, C] -> [N, (lmax+1)**2, C]``.
    """

    def __init__(self, lmax: int, channels: int, eps: float = 1e-6):
        super().__init__()
        self.lmax, self.channels, self.eps = lmax, channels, eps
        self.weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :1, :]
        s = (s - s.mean(dim=-1, keepdim=True)) * torch.rsqrt(s.var(dim=-1, unbiased=False, keepdim=True) + self.eps)
        parts = [s * self.weight[0] + self.bias]
        for l in range(1, self.lmax + 1):
            xl = x[:, l * l : (l + 1) ** 2, :]
            rms = torch.rsqrt(xl.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps)
            parts.append(xl * rms * self.weight[l])
        return torch.cat(parts, dim=1)
