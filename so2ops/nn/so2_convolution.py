"""``SO2Convolution``: a drop-in eSCN-style equivariant convolution module."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..layout import num_coeffs, num_mod, weight_blocks, weight_size
from ..ops import edge_wigner, so2_message


class SO2Convolution(nn.Module):
    """Equivariant graph convolution through SO(2) edge frames.

    ``out[t] = sum_{e=(s->t)} D_e^T SO2Linear(D_e x[s] * radial(edge_attr_e))``
    computed by the fused ``so2ops.so2_message`` op.

    Args:
        lmax, mmax: degrees of the features and orders kept in the edge frame.
        in_channels, out_channels: channels per coefficient.
        edge_attr_dim: size of the invariant edge features (e.g. a radial basis);
            an MLP maps them to the per-(m, l, channel) modulation.  0 disables
            the modulation.
        hidden_dim: width of that MLP (default ``max(64, edge_attr_dim)``).
        deterministic: bitwise-reproducible reduction (see ``so2_message``).
    Shapes:
        ``forward(x[N, (lmax+1)**2, in_channels], edge_index[2, E], edge_vec[E, 3],
        edge_attr[E, edge_attr_dim]) -> [N, (lmax+1)**2, out_channels]``
    """

    def __init__(self, lmax: int, mmax: int, in_channels: int, out_channels: int, edge_attr_dim: int,
                 hidden_dim: int | None = None, deterministic: bool = False):
        super().__init__()
        self.lmax, self.mmax = lmax, mmax
        self.in_channels, self.out_channels = in_channels, out_channels
        self.deterministic = deterministic
        self.weight = nn.Parameter(torch.empty(weight_size(lmax, mmax, in_channels, out_channels)))
        self.edge_attr_dim = edge_attr_dim
        if edge_attr_dim > 0:
            hidden = hidden_dim or max(64, edge_attr_dim)
            self.radial = nn.Sequential(
                nn.Linear(edge_attr_dim, hidden), nn.SiLU(), nn.Linear(hidden, num_mod(lmax, mmax) * in_channels)
            )
        else:
            self.radial = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each output row sums L*C_in inputs (twice for m > 0): fan-in scaling per block.
        with torch.no_grad():
            for m, kind, off, rows, cols in weight_blocks(self.lmax, self.mmax, self.in_channels, self.out_channels):
                fan_in = cols * (1 if m == 0 else 2)
                self.weight[off : off + rows * cols].normal_(0.0, 1.0 / math.sqrt(fan_in))

    def forward(self, x, edge_index, edge_vec, edge_attr=None, wigner=None):
        """``wigner`` may be passed in to share one ``edge_wigner`` between layers."""
        if wigner is None:
            wigner = edge_wigner(edge_vec, self.lmax)
        modulation = None
        if self.radial is not None:
            if edge_attr is None:
                raise ValueError("edge_attr is required when edge_attr_dim > 0")
            modulation = self.radial(edge_attr).view(-1, num_mod(self.lmax, self.mmax), self.in_channels)
        return so2_message(x, wigner, edge_index, self.weight, self.lmax, self.mmax, self.out_channels,
                           modulation, self.deterministic)

    def extra_repr(self) -> str:
        return (f"lmax={self.lmax}, mmax={self.mmax}, in_channels={self.in_channels}, "
                f"out_channels={self.out_channels}, edge_attr_dim={self.edge_attr_dim}")


__all__ = ["SO2Convolution", "num_coeffs"]
