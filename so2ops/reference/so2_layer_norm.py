"""Reference ``so2_layer_norm``: equivariant layer norm of irreps features (plain PyTorch).

This is ``so2ops.nn.SO2LayerNorm``'s forward as it was before the fused op
(issue 19), moved into a function: the readable specification, the test oracle
of every backend, and what the ``reference`` backend runs.
"""
from __future__ import annotations

import torch


def degree_of_rows(lmax: int, device=None) -> torch.Tensor:
    """``[(lmax+1)**2 - 1]`` int64: the degree ``l`` of each coefficient row with ``l > 0``."""
    l = torch.arange(1, lmax + 1, device=device)
    return torch.repeat_interleave(l, 2 * l + 1)


def joint_row_weight(lmax: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """``[(lmax+1)**2 - 1]``: weight of each row ``l > 0`` in the joint mean square,
    ``1 / ((2l+1) lmax)`` (every degree counts equally, whatever its ``2l+1`` rows)."""
    deg = degree_of_rows(lmax, device)
    return (1.0 / ((2 * deg + 1).double() * max(lmax, 1))).to(dtype)


def so2_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, lmax: int, eps: float,
                   joint: bool) -> torch.Tensor:
    """Layer norm that commutes with rotations.

    * degree 0 (row 0): ordinary layer norm over the channels,
      ``(x0 - mean) / sqrt(var + eps) * weight[0] + bias`` (biased variance);
    * degrees ``l > 0``: ``x_l * rsqrt(ms + eps) * weight[l]``, no bias, where the
      mean square ``ms`` is, per row ``n``,

      - ``joint``: ``sum_{l>0} mean_{m,c}(x_l^2) / lmax`` (one RMS for all degrees,
        each degree weighted equally);
      - otherwise (``separate``): ``mean_{m,c}(x_l^2)``, one RMS per degree.

    Args:
        x: ``[N, (lmax+1)**2, C]``.
        weight: ``[lmax+1, C]`` per-degree, per-channel scale.
        bias: ``[C]`` (degree 0 only).
    Returns:
        ``[N, (lmax+1)**2, C]``.
    """
    s = x[:, :1, :]
    s = (s - s.mean(dim=-1, keepdim=True)) * torch.rsqrt(s.var(dim=-1, unbiased=False, keepdim=True) + eps)
    parts = [s * weight[0] + bias]
    if lmax == 0:
        return parts[0]
    if joint:
        xv = x[:, 1:, :]
        ms = xv.pow(2).mean(dim=2) @ joint_row_weight(lmax, x.dtype, x.device)  # [N]
        w = weight[1:][degree_of_rows(lmax, x.device) - 1]  # [(lmax+1)^2 - 1, C]
        parts.append(xv * torch.rsqrt(ms + eps)[:, None, None] * w)
        return torch.cat(parts, dim=1)
    for l in range(1, lmax + 1):
        xl = x[:, l * l : (l + 1) ** 2, :]
        rms = torch.rsqrt(xl.pow(2).mean(dim=(1, 2), keepdim=True) + eps)
        parts.append(xl * rms * weight[l])
    return torch.cat(parts, dim=1)
