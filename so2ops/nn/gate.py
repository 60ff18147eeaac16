"""``Gate``: equivariant gated non-linearity."""
from __future__ import annotations

import torch
from torch import nn


class Gate(nn.Module):
    """Scalars through SiLU; each degree ``l > 0`` scaled per channel by a sigmoid
    gate computed from the scalars (invariant, so equivariance holds).

    Shapes: ``[N, (lmax+1)**2, C] -> [N, (lmax+1)**2, C]``.
    """

    def __init__(self, lmax: int, channels: int):
        super().__init__()
        self.lmax, self.channels = lmax, channels
        self.gates = nn.Linear(channels, lmax * channels) if lmax > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, :]
        out = [torch.nn.functional.silu(s)[:, None, :]]
        if self.gates is not None:
            g = torch.sigmoid(self.gates(s)).view(-1, self.lmax, self.channels)
            for l in range(1, self.lmax + 1):
                out.append(x[:, l * l : (l + 1) ** 2, :] * g[:, l - 1, None, :])
        return torch.cat(out, dim=1)
