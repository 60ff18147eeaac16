"""``SO2LayerNorm``: equivariant layer normalisation of irreps features."""
from __future__ import annotations

import torch
from torch import nn

#: how the degrees ``l > 0`` are normalised (see ``SO2LayerNorm``)
NORM_DEGREES = ("separate", "joint")


def _degree_of_rows(lmax: int) -> torch.Tensor:
    """``[(lmax+1)**2 - 1]`` long: the degree of each coefficient row ``l > 0``."""
    return torch.repeat_interleave(torch.arange(1, lmax + 1), torch.arange(1, lmax + 1) * 2 + 1)


class SO2LayerNorm(nn.Module):
    """Layer norm that commutes with rotations.

    Degree 0: ordinary layer norm over channels.  Degrees ``l > 0``: divide by a
    root-mean-square (a rotation invariant), then scale per degree and channel; no
    bias, which would break equivariance.  ``degrees`` chooses the RMS:

    * ``"separate"``: each degree by its own RMS over ``(m, channel)``.  A degree that
      vanishes by symmetry (e.g. ``l = 1, 2`` at a tetrahedral centre) is then
      rounding noise divided by ``sqrt(eps)``: the norm amplifies it up to
      ``1 / sqrt(eps)``-fold, and stacked layers compound that.
    * ``"joint"``: one RMS for all degrees ``l > 0`` together, each degree weighted
      equally (mean over degrees of the per-degree mean square).  A vanishing degree
      stays as small as it was as long as another degree is non-zero; the relative
      sizes of the degrees are kept.

    Shapes: ``[N, (lmax+1)**2, C] -> [N, (lmax+1)**2, C]``.
    """

    def __init__(self, lmax: int, channels: int, eps: float = 1e-6, degrees: str = "separate"):
        super().__init__()
        if degrees not in NORM_DEGREES:
            raise ValueError(f"degrees must be one of {NORM_DEGREES}, got {degrees!r}")
        self.lmax, self.channels, self.eps, self.degrees = lmax, channels, eps, degrees
        self.weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        deg = _degree_of_rows(lmax)
        # equal weight per degree: a row of degree l counts 1 / ((2l + 1) lmax)
        self.register_buffer("_row_weight", 1.0 / ((2 * deg + 1).double() * max(lmax, 1)), persistent=False)
        self.register_buffer("_row_degree", deg, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :1, :]
        s = (s - s.mean(dim=-1, keepdim=True)) * torch.rsqrt(s.var(dim=-1, unbiased=False, keepdim=True) + self.eps)
        parts = [s * self.weight[0] + self.bias]
        if self.lmax == 0:
            return parts[0]
        if self.degrees == "joint":
            xv = x[:, 1:, :]
            ms = xv.pow(2).mean(dim=2) @ self._row_weight.to(x.dtype)  # [N]
            w = self.weight[1:][self._row_degree - 1]  # [(lmax+1)^2 - 1, C]
            parts.append(xv * torch.rsqrt(ms + self.eps)[:, None, None] * w)
            return torch.cat(parts, dim=1)
        for l in range(1, self.lmax + 1):
            xl = x[:, l * l : (l + 1) ** 2, :]
            rms = torch.rsqrt(xl.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps)
            parts.append(xl * rms * self.weight[l])
        return torch.cat(parts, dim=1)
