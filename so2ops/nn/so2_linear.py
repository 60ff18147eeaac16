"""``SO2Linear``: the SO(2) linear layer (``so2ops.so2_linear``) as a module."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..layout import num_mod, weight_blocks, weight_size
from ..ops import so2_linear


def init_so2_weight(weight: torch.Tensor, lmax: int, mmax: int, in_channels: int, out_channels: int,
                    gain: float = 1.0) -> None:
    """Fan-in initialisation per packed block (each output row sums ``L*C_in`` inputs, twice for m > 0)."""
    with torch.no_grad():
        for m, kind, off, rows, cols in weight_blocks(lmax, mmax, in_channels, out_channels):
            fan_in = cols * (1 if m == 0 else 2)
            weight[off : off + rows * cols].normal_(0.0, gain / math.sqrt(fan_in))


def split_so2_weight(weight: torch.Tensor, lmax: int, mmax: int, in_channels: Sequence[int],
                     out_channels: int) -> List[torch.Tensor]:
    """A packed weight over concatenated inputs, split into one packed weight per input group.

    ``so2_linear(cat([x_1, .., x_k], dim=2), weight) == sum_k so2_linear(x_k, parts[k])``:
    lets a layer whose inputs are gathered and rotated per edge run them through
    ``so2_gather_linear`` without building the concatenation.  Differentiable (the parts
    are views copied into contiguous buffers).

    Shapes: ``weight[weight_size(lmax, mmax, sum(in_channels), out_channels)]`` ->
    ``[weight_size(lmax, mmax, in_channels[k], out_channels)]`` for each ``k``.
    """
    cin = sum(int(c) for c in in_channels)
    parts: List[List[torch.Tensor]] = [[] for _ in in_channels]
    for m, _, off, rows, cols in weight_blocks(lmax, mmax, cin, out_channels):
        n = lmax - m + 1
        block = weight[off : off + rows * cols].view(n, out_channels, n, cin)
        for k, piece in enumerate(block.split(list(in_channels), dim=3)):
            parts[k].append(piece.reshape(-1))
    return [torch.cat(p) for p in parts]


class SO2Linear(nn.Module):
    """Roll-equivariant linear map of local-frame features.

    Shapes: ``forward(x[E, (lmax+1)**2, in_channels], modulation=None) -> [E, (lmax+1)**2, out_channels]``;
    ``modulation[E, num_mod(lmax, mmax), in_channels]`` scales the inputs per ``(m, l, c)``.
    """

    def __init__(self, lmax: int, mmax: int, in_channels: int, out_channels: int, gain: float = 1.0):
        super().__init__()
        self.lmax, self.mmax, self.in_channels, self.out_channels = lmax, mmax, in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(weight_size(lmax, mmax, in_channels, out_channels)))
        init_so2_weight(self.weight, lmax, mmax, in_channels, out_channels, gain)

    @property
    def num_mod(self) -> int:
        return num_mod(self.lmax, self.mmax)

    def forward(self, x: torch.Tensor, modulation: Optional[torch.Tensor] = None) -> torch.Tensor:
        return so2_linear(x, self.weight, self.lmax, self.mmax, self.out_channels, modulation)

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, mmax={self.mmax}, in_channels={self.in_channels}, out_channels={self.out_channels}"
