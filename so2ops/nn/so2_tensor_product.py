"""``SO2TensorProduct``: the continuous SO(2) tensor product (``so2ops.so2_tensor_product``) as a module."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..layout import tp_in_blocks, tp_in_size, tp_out_blocks, tp_out_size
from ..ops import so2_tensor_product


class SO2TensorProduct(nn.Module):
    """Node-wise body-order-``nu`` product of local-frame features (MACE-like, at SO(2) cost).

    The per-node weights of the ``nu`` products come from invariant node
    attributes (e.g. an element embedding) through a linear map, as MACE's
    symmetric contraction has element-dependent weights.

    Shapes: ``forward(x[N, (lmax+1)**2, in_channels], attrs[N, attr_dim]) -> [N, (lmax+1)**2, out_channels]``.
    """

    def __init__(self, lmax: int, mmax: int, in_channels: int, out_channels: int, attr_dim: int,
                 hidden: int | None = None, body_order: int = 3):
        super().__init__()
        self.lmax, self.mmax = lmax, mmax
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden = hidden or in_channels
        self.body_order = body_order
        self.w_in = nn.Parameter(torch.empty(body_order, tp_in_size(lmax, mmax, in_channels, self.hidden)))
        self.w_out = nn.Parameter(torch.empty(tp_out_size(lmax, mmax, self.hidden, out_channels)))
        self.coeffs = nn.Linear(attr_dim, body_order * self.hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            # unit-variance circle functions: each factor's order-m entry sums Lm*C_in inputs (2x for m > 0)
            for k in range(self.body_order):
                for m, _, off, rows, cols in tp_in_blocks(self.lmax, self.mmax, self.in_channels, self.hidden):
                    self.w_in[k, off : off + rows * cols].normal_(0.0, 1.0 / math.sqrt(cols * (1 if m == 0 else 2)))
            for m, _, off, rows, cols in tp_out_blocks(self.lmax, self.mmax, self.hidden, self.out_channels):
                self.w_out[off : off + rows * cols].normal_(0.0, 1.0 / math.sqrt(cols * (1 if m == 0 else 2)))
            nn.init.normal_(self.coeffs.weight, 0.0, 1.0 / math.sqrt(self.coeffs.in_features * self.body_order))
            self.coeffs.bias.zero_()
            # start close to the body-order-1 (linear) map
            self.coeffs.bias.view(self.body_order, self.hidden)[0].fill_(1.0)

    def forward(self, x: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        coeffs = self.coeffs(attrs).view(-1, self.body_order, self.hidden)
        return so2_tensor_product(x, self.w_in, coeffs, self.w_out, self.lmax, self.mmax, self.out_channels)

    def extra_repr(self) -> str:
        return (f"lmax={self.lmax}, mmax={self.mmax}, in_channels={self.in_channels}, hidden={self.hidden}, "
                f"out_channels={self.out_channels}, body_order={self.body_order}")
