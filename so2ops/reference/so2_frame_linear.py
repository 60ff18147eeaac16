"""Reference ``so2_frame_linear``: one side of ``so2_message`` with its SO(2) layer.

Gather (``to_nodes=False``), node features into the edge frames::

    out[e] = scale_e * (SO2Linear(mod_e * D_e x[index[e]]) + bias)        # [E, K, C_out]

Scatter (``to_nodes=True``), edge-frame features back to the nodes::

    out[n] = sum_{e: index[e] = n} scale_e * D_e^T (SO2Linear(mod_e * x[e]) + bias)   # [num_nodes, K, C_out]

``bias[L0, C_out]`` is added to the rows ``(l, 0)`` (the only rows an SO(2)
bias can touch without breaking equivariance); ``scale[E]`` is a per-edge
invariant (an envelope).  Rows ``|m| > mmax`` of the SO(2) layer's output
are zero.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..layout import m0_index
from .rotate import rotate
from .so2_linear import so2_linear


def compose(rotate_fn: Callable, linear_fn: Callable, x: torch.Tensor, wigner: torch.Tensor, index: torch.Tensor,
            weight: torch.Tensor, modulation: Optional[torch.Tensor], bias: Optional[torch.Tensor],
            scale: Optional[torch.Tensor], lmax: int, mmax: int, out_channels: int, num_nodes: int,
            to_nodes: bool) -> torch.Tensor:
    """The op written with ``rotate_fn(x, wigner, lmax, index, inverse)`` and
    ``linear_fn(x, weight, modulation, lmax, mmax, out_channels)``: the reference
    (plain PyTorch ones) and the unfused composition of fast ops (double backward)."""
    local = x if to_nodes else rotate_fn(x, wigner, lmax, index, False)
    y = linear_fn(local, weight, modulation, lmax, mmax, out_channels)
    if bias is not None:
        y = y.index_add(1, m0_index(lmax, y.device), bias.unsqueeze(0).expand(y.shape[0], -1, -1))
    if scale is not None:
        y = y * scale.view(-1, 1, 1)
    if not to_nodes:
        return y
    back = rotate_fn(y, wigner, lmax, None, True)
    return back.new_zeros(num_nodes, back.shape[1], out_channels).index_add(0, index, back)


def so2_frame_linear(
    x: torch.Tensor,
    wigner: torch.Tensor,
    index: torch.Tensor,
    weight: torch.Tensor,
    lmax: int,
    mmax: int,
    out_channels: int,
    num_nodes: int = 0,
    to_nodes: bool = False,
    modulation: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """See the module docstring.

    Args:
        x: ``[N, K, C_in]`` node features (gather) or ``[E, K, C_in]`` edge-frame features (scatter).
        wigner: ``[E, wigner_size(lmax)]``.
        index: ``[E]`` int64: the node each edge reads (gather) or writes (scatter).
        weight, modulation: as in ``so2_linear``.
        num_nodes: rows of the scatter's output (ignored by the gather).
        bias: ``[lmax + 1, C_out]`` or None; scale: ``[E]`` or None.
    """
    rot = lambda t, w, l, idx, inv: rotate(t, w, l, index=idx, inverse=inv)  # noqa: E731
    lin = lambda t, w, m, l, mm, co: so2_linear(t, w, l, mm, co, m)  # noqa: E731
    return compose(rot, lin, x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes,
                   to_nodes)
