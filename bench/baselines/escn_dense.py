"""eSCN / EquiformerV2-style plain-PyTorch code: what users write without so2ops.

The way those code bases write an SO(2) convolution:

1. gather the source features ``x[src]``;
2. rotate them with a *dense* per-edge Wigner matrix ``[E, K', K]`` by
   ``torch.bmm`` (block-diagonal in value, dense in storage and work), whose
   rows are already restricted to ``|m| <= mmax`` and reordered m-major (eSCN's
   ``CoefficientMapping.to_m`` folded into the Wigner matrix);
3. one ``nn.Linear`` per order ``m``: ``m = 0`` maps ``L0*C_in -> L0*C_out``;
   ``m > 0`` maps the stacked ``(+m, -m)`` pair with a single
   ``Lm*C_in -> 2*Lm*C_out`` Linear whose two output halves are the "real" and
   "imaginary" weights (``W1``, ``W2``);
4. rotate back with the transposed dense Wigner and ``index_add`` onto targets.

The per-m Linear weights are separate leaf parameters (as in those models);
``packed_grad`` maps their gradients back to so2ops' packed layout so the
baseline can be checked against the reference before it is timed.  The dense
Wigner matrix is built outside the timed region, as the packed one is for
so2ops (both are an edge-setup cost shared by every layer).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from so2ops.layout import coeff_index, mod_offset, num_coeffs, weight_blocks
from so2ops.reference import wigner_to_dense


def m_major_rows(lmax: int, mmax: int) -> List[int]:
    """l-major rows in eSCN order: ``m = 0`` (l = 0..lmax), then per m ``+m`` rows, then ``-m`` rows."""
    rows = [coeff_index(l, 0) for l in range(lmax + 1)]
    for m in range(1, mmax + 1):
        rows += [coeff_index(l, m) for l in range(m, lmax + 1)]
        rows += [coeff_index(l, -m) for l in range(m, lmax + 1)]
    return rows


def dense_wigner(wigner: torch.Tensor, lmax: int, mmax: Optional[int] = None) -> torch.Tensor:
    """``[E, K', K]`` dense Wigner; rows m-major and truncated to ``|m| <= mmax`` (all rows, l-major, if None)."""
    dense = wigner_to_dense(wigner, lmax)
    if mmax is None:
        return dense.contiguous()
    return dense[:, m_major_rows(lmax, mmax), :].contiguous()


def per_m_weights(weight: torch.Tensor, lmax: int, mmax: int, cin: int, cout: int) -> List[torch.Tensor]:
    """Split packed weights into eSCN's per-m Linear weights (fresh leaves).

    ``m = 0``: ``W0 [L0*cout, L0*cin]``; ``m > 0``: ``cat([W1, W2]) [2*Lm*cout, Lm*cin]``.
    """
    blocks = {(m, kind): weight[off : off + r * c].view(r, c) for m, kind, off, r, c in weight_blocks(lmax, mmax, cin, cout)}
    ws = [blocks[(0, "w0")]]
    for m in range(1, mmax + 1):
        ws.append(torch.cat([blocks[(m, "w1")], blocks[(m, "w2")]], 0))
    return [w.detach().clone().requires_grad_(True) for w in ws]


def packed_grad(grads: Sequence[torch.Tensor], lmax: int, mmax: int, cout: int) -> torch.Tensor:
    """Gradients of the per-m weights in so2ops' packed weight layout."""
    parts = [grads[0].reshape(-1)]
    for m in range(1, mmax + 1):
        half = (lmax - m + 1) * cout
        parts += [grads[m][:half].reshape(-1), grads[m][half:].reshape(-1)]
    return torch.cat(parts)


def so2_conv(xm: torch.Tensor, ws: Sequence[torch.Tensor], mod: Optional[torch.Tensor], lmax: int, mmax: int) -> torch.Tensor:
    """eSCN's SO(2) convolution on m-major features.

    Args:
        xm: ``[E, K', C_in]`` rotated features, rows as ``m_major_rows``.
        ws: per-m weights from ``per_m_weights``.
        mod: optional ``[E, num_mod, C_in]`` radial modulation (m-major, shared by +-m).
    Returns:
        ``[E, K', C_out]``.
    """
    e, _, cin = xm.shape
    cout = ws[0].shape[0] // (lmax + 1)
    l0 = lmax + 1
    x0 = xm[:, :l0].reshape(e, l0 * cin)
    if mod is not None:
        x0 = x0 * mod[:, :l0].reshape(e, l0 * cin)
    outs = [F.linear(x0, ws[0]).view(e, l0, cout)]
    off = l0
    for m in range(1, mmax + 1):
        lm = lmax - m + 1
        x = xm[:, off : off + 2 * lm].reshape(e, 2, lm * cin)
        if mod is not None:
            mo = mod_offset(lmax, m)
            x = x * mod[:, mo : mo + lm].reshape(e, 1, lm * cin)
        y = F.linear(x, ws[m])  # [E, 2, 2*lm*cout]: (W1 x, W2 x) for x = x+, x-
        yr, yi = y[..., : lm * cout], y[..., lm * cout :]
        plus = yr[:, 0] - yi[:, 1]  # W1 x+ - W2 x-
        minus = yr[:, 1] + yi[:, 0]  # W1 x- + W2 x+
        outs.append(torch.stack([plus, minus], 1).view(e, 2 * lm, cout))
        off += 2 * lm
    return torch.cat(outs, 1)


def message(x, dense_m, edge_index, ws, mod, lmax, mmax):
    """Full eSCN-style message passing: gather, dense bmm, per-m Linear, dense bmm back, index_add."""
    xs = x.index_select(0, edge_index[0])
    y = so2_conv(torch.bmm(dense_m, xs), ws, mod, lmax, mmax)
    back = torch.bmm(dense_m.transpose(1, 2), y)
    out = back.new_zeros(x.shape[0], back.shape[1], back.shape[2])
    return out.index_add(0, edge_index[1], back)


def so2_linear(x, ws, mod, lmax, mmax):
    """Standalone eSCN-style SO(2) linear on l-major edge features (rows |m| > mmax of the output are 0)."""
    rows = torch.tensor(m_major_rows(lmax, mmax), device=x.device)
    y = so2_conv(x.index_select(1, rows), ws, mod, lmax, mmax)
    out = y.new_zeros(x.shape[0], num_coeffs(lmax), y.shape[2])
    return out.index_copy(1, rows, y)


def rotate(x, dense, index, inverse):
    """Dense-Wigner rotation ``D x[index]`` (``D^T`` if inverse) by one ``bmm``."""
    xs = x if index is None else x.index_select(0, index)
    return torch.bmm(dense.transpose(1, 2) if inverse else dense, xs)
