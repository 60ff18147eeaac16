"""Reference ``so2_message``: gather, rotate in, SO(2) conv, rotate out, sum."""
from __future__ import annotations

from typing import Optional

import torch

from .rotate import rotate
from .so2_linear import so2_linear


def so2_message(
    x: torch.Tensor,
    wigner: torch.Tensor,
    edge_index: torch.Tensor,
    weight: torch.Tensor,
    lmax: int,
    mmax: int,
    out_channels: int,
    modulation: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``out[t] = sum_{e: (s -> t)} D_e^T SO2Linear(D_e x[s])``.

    Args:
        x: ``[N, (lmax+1)**2, C_in]`` node features.
        wigner: ``[E, wigner_size(lmax)]`` from ``edge_wigner``.
        edge_index: ``[2, E]`` int64, row 0 source, row 1 target.
        weight, modulation: as in ``so2_linear``.
    Returns:
        ``[N, (lmax+1)**2, out_channels]``.
    """
    local = rotate(x, wigner, lmax, index=edge_index[0])
    msg = so2_linear(local, weight, lmax, mmax, out_channels, modulation)
    back = rotate(msg, wigner, lmax, inverse=True)
    out = back.new_zeros(x.shape[0], back.shape[1], out_channels)
    return out.index_add(0, edge_index[1], back)
