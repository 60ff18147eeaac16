"""Reference ``rotate``: per-edge block-diagonal rotation with a fused gather."""
from __future__ import annotations

from typing import Optional

import torch

from ..layout import wigner_offset


def rotate(
    x: torch.Tensor,
    wigner: torch.Tensor,
    lmax: int,
    index: Optional[torch.Tensor] = None,
    inverse: bool = False,
) -> torch.Tensor:
    """``out[e] = D_e @ x[index[e]]`` (``D_e^T`` when ``inverse``), block by block.

    Args:
        x: ``[N, (lmax+1)**2, C]`` (``N = E`` when ``index`` is None).
        wigner: ``[E, wigner_size(lmax)]`` packed blocks.
        index: optional ``[E]`` int64 rows of ``x`` to gather.
    Returns:
        ``[E, (lmax+1)**2, C]``.
    """
    xe = x if index is None else x.index_select(0, index)
    e = wigner.shape[0]
    outs = []
    for l in range(lmax + 1):
        n = 2 * l + 1
        o = wigner_offset(l)
        d = wigner[:, o : o + n * n].reshape(e, n, n)
        if inverse:
            d = d.transpose(1, 2)
        outs.append(torch.bmm(d, xe[:, l * l : l * l + n, :]))
    return torch.cat(outs, dim=1)
