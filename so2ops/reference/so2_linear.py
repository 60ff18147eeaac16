"""Reference ``so2_linear``: the SO(2) convolution in the edge frame."""
from __future__ import annotations

from typing import Optional

import torch

from ..layout import coeff_index, mod_offset, num_coeffs, weight_blocks


def gather_m(x: torch.Tensor, lmax: int, m: int) -> torch.Tensor:
    """Rows ``(l, m)`` for ``l = |m|..lmax`` of ``x[E, K, C]`` as ``[E, (lmax-|m|+1)*C]``."""
    rows = [coeff_index(l, m) for l in range(abs(m), lmax + 1)]
    return x[:, rows, :].reshape(x.shape[0], len(rows) * x.shape[2])


def so2_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    lmax: int,
    mmax: int,
    out_channels: int,
    modulation: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SO(2)-equivariant linear map acting on edge-frame features.

    For ``m = 0``: ``y_0 = W0 x_0``.  For ``0 < m <= mmax`` on the pair
    ``(+m, -m)``: ``y_{+m} = W1 x_{+m} - W2 x_{-m}``,
    ``y_{-m} = W2 x_{+m} + W1 x_{-m}``, where ``x_{+-m}`` stacks degrees
    ``l = m..lmax`` and channels.  Rows with ``|m| > mmax`` of the output are 0.

    Args:
        x: ``[E, (lmax+1)**2, C_in]`` edge-frame features.
        weight: packed ``[weight_size(lmax, mmax, C_in, out_channels)]``.
        modulation: optional ``[E, num_mod(lmax, mmax), C_in]``: multiplies
            the input coefficient ``(l, +-m)`` by ``modulation[:, (m, l), :]``.
    Returns:
        ``[E, (lmax+1)**2, out_channels]``.
    """
    e, _, cin = x.shape
    if modulation is not None:
        x = _modulate(x, modulation, lmax, mmax)
    out = x.new_zeros(e, num_coeffs(lmax), out_channels)
    blocks = {(m, kind): (off, rows, cols) for m, kind, off, rows, cols in weight_blocks(lmax, mmax, cin, out_channels)}

    def w(m, kind):
        off, rows, cols = blocks[(m, kind)]
        return weight[off : off + rows * cols].view(rows, cols)

    def put(y, m):
        rows = [coeff_index(l, m) for l in range(abs(m), lmax + 1)]
        out[:, rows, :] = y.reshape(e, len(rows), out_channels)

    put(gather_m(x, lmax, 0) @ w(0, "w0").T, 0)
    for m in range(1, mmax + 1):
        xp, xn = gather_m(x, lmax, m), gather_m(x, lmax, -m)
        w1, w2 = w(m, "w1"), w(m, "w2")
        put(xp @ w1.T - xn @ w2.T, m)
        put(xp @ w2.T + xn @ w1.T, -m)
    return out


def _modulate(x: torch.Tensor, modulation: torch.Tensor, lmax: int, mmax: int) -> torch.Tensor:
    """Scale coefficient ``(l, +-m)`` by ``modulation[:, (m, l)]``; |m| > mmax rows are unused."""
    scale = x.new_zeros(x.shape[0], num_coeffs(lmax), x.shape[2])
    for m in range(mmax + 1):
        for l in range(m, lmax + 1):
            s = modulation[:, mod_offset(lmax, m) + l - m, :]
            scale[:, coeff_index(l, m), :] = s
            scale[:, coeff_index(l, -m), :] = s
    return x * scale
