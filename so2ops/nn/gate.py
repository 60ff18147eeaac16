"""``Gate``: equivariant gated non-linearity."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.so2_gate import so2_gate


class Gate(nn.Module):
    """Scalars through SiLU; each degree ``l > 0`` scaled per channel by a sigmoid
    gate computed from the scalars (invariant, so equivariance holds).

    The gate logits come from an ``nn.Linear`` on ``x[:, 0]``; the sigmoid, the SiLU
    and the scaling of every degree run in the fused op ``so2ops.so2_gate`` (one
    kernel forward, one backward; plain-PyTorch math: ``so2ops.reference.so2_gate``).

    Shapes: ``[N, (lmax+1)**2, C] -> [N, (lmax+1)**2, C]``; float32 / float64 (float16 and
    bfloat16 only under ``torch.autocast``, computed in float32, as the other so2ops ops).
    """

    def __init__(self, lmax: int, channels: int):
        super().__init__()
        self.lmax, self.channels = lmax, channels
        self.gates = nn.Linear(channels, lmax * channels) if lmax > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gates is None:
            return torch.nn.functional.silu(x[:, :1, :])
        logits = self.gates(x[:, 0, :]).view(x.shape[0], self.lmax, self.channels)
        return so2_gate(x, logits)
