"""Edge reversal in local frames: the fixed signed map ``F`` between the frames of ``r`` and ``-r``.

Every edge frame ``D(r)`` maps the bond direction to ``+y``.  A frame of the reversed
edge ``-r`` is ``F D(r)``, with ``F`` the half turn about an axis perpendicular to
``+y``; on the coefficients ``(l, m)`` of the l-major layout it is diagonal:

    F(l, m) = (-1)^(l + |m|)   for m >= 0,        F(l, m) = -(-1)^(l + |m|)   for m < 0.

``so2ops.edge_wigner(-r)`` equals ``F edge_wigner(r)`` off the frame chart's equator
(``r_y != 0``) and differs from it by a roll about the bond on the equator; every
SO(2) op is equivariant to that roll, so either frame serves (docs/math.md, "Edge
reversal").  This module gives ``F`` on features and on packed Wigner rows, and the
two facts about packed SO(2) weights that let a pair model run once per unordered
pair (docs/model.md, "One evaluation per unordered pair"):

* ``so2_linear(F x, W) = F so2_linear(x, W')`` with ``W' = W * conjugation_signs``
  (``W' = F W F``: a sign per packed entry);
* ``so2_linear`` commutes with ``F`` exactly when ``W * commuting_mask == W``.

``ReversalCommutingLinear`` is an ``SO2Linear`` restricted to weights that commute with ``F``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..layout import num_coeffs, weight_blocks, weight_size, wigner_offset, wigner_size
from ..ops import so2_linear
from .so2_linear import SO2Linear


def reversal_signs(lmax: int) -> torch.Tensor:
    """``F`` on the coefficients: ``[(lmax+1)**2]`` float64 of +-1 (row ``l*l + l + m``)."""
    out = torch.empty(num_coeffs(lmax), dtype=torch.float64)
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            s = (-1.0) ** (l + abs(m))
            out[l * l + l + m] = s if m >= 0 else -s
    return out


def reversal_wigner_signs(lmax: int) -> torch.Tensor:
    """``[wigner_size(lmax)]`` float64: packed Wigner rows times these are ``F D``
    (row ``m`` of each block ``D^l`` scaled by ``F(l, m)``)."""
    f = reversal_signs(lmax)
    out = torch.empty(wigner_size(lmax), dtype=torch.float64)
    for l in range(lmax + 1):
        n = 2 * l + 1
        rows = f[l * l : l * l + n]
        out[wigner_offset(l) : wigner_offset(l) + n * n] = rows[:, None].expand(n, n).reshape(-1)
    return out


def _block_parity(lmax: int, m: int, in_channels: int, out_channels: int) -> torch.Tensor:
    """``(-1)^(l_out + l_in)`` over one packed block ``[L*C_out, L*C_in]`` (``L = lmax - m + 1``)."""
    l = torch.arange(m, lmax + 1)
    par = (-1.0) ** (l[:, None] + l[None, :]).double()  # [L, L]
    return par[:, None, :, None].expand(-1, out_channels, -1, in_channels).reshape(-1)


def conjugation_signs(lmax: int, mmax: int, in_channels: int, out_channels: int) -> torch.Tensor:
    """``[weight_size]`` float64 of +-1: ``W * signs`` packs ``F W F``.

    ``w0`` and ``w1`` entries take ``(-1)^(l_out + l_in)``, ``w2`` entries ``-(-1)^(l_out + l_in)``
    (``F`` flips ``x_{-m}`` against ``x_{+m}``, which turns the sign of the ``w2`` coupling).
    """
    out = torch.empty(weight_size(lmax, mmax, in_channels, out_channels), dtype=torch.float64)
    for m, kind, off, rows, cols in weight_blocks(lmax, mmax, in_channels, out_channels):
        par = _block_parity(lmax, m, in_channels, out_channels)
        out[off : off + rows * cols] = -par if kind == "w2" else par
    return out


def commuting_mask(lmax: int, mmax: int, in_channels: int, out_channels: int) -> torch.Tensor:
    """``[weight_size]`` float64 of 0/1: the packed entries a weight commuting with ``F`` may hold
    (those with ``conjugation_signs == +1``: ``w0``/``w1`` between degrees of equal parity,
    ``w2`` between degrees of opposite parity)."""
    return (conjugation_signs(lmax, mmax, in_channels, out_channels) > 0).double()


class ReversalCommutingLinear(SO2Linear):
    """``SO2Linear`` whose map commutes with the edge reversal ``F``: ``L(F x) = F L(x)``.

    The packed entries outside ``commuting_mask`` are zero at initialisation and are
    masked in every forward (so optimiser steps, weight decay or a loaded state cannot
    bring them back); the rest is initialised as ``SO2Linear`` with the fan-in of the
    entries that remain.

    Shapes: as ``SO2Linear``.
    """

    def __init__(self, lmax: int, mmax: int, in_channels: int, out_channels: int, gain: float = 1.0):
        # about half of each block's inputs survive the mask (2/5 or 3/5 of the degrees per
        # output degree for lmax 4): scale the fan-in init up by sqrt(2)
        super().__init__(lmax, mmax, in_channels, out_channels, gain=gain * 2 ** 0.5)
        self.register_buffer("mask", commuting_mask(lmax, mmax, in_channels, out_channels).float(), persistent=False)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor, modulation: Optional[torch.Tensor] = None) -> torch.Tensor:
        return so2_linear(x, self.masked_weight(), self.lmax, self.mmax, self.out_channels, modulation)
