"""``SO2LayerNorm``: equivariant layer normalisation of irreps features."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.so2_layer_norm import so2_layer_norm

#: how the degrees ``l > 0`` are normalised (see ``SO2LayerNorm``)
NORM_DEGREES = ("separate", "joint")


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

    Runs the fused op ``so2ops.so2_layer_norm`` (one kernel forward, one backward;
    the plain-PyTorch math is ``so2ops.reference.so2_layer_norm``, which the
    ``reference`` backend runs).

    Shapes: ``[N, (lmax+1)**2, C] -> [N, (lmax+1)**2, C]``; float32 / float64 (float16 and
    bfloat16 only under ``torch.autocast``, computed in float32, as the other so2ops ops).
    """

    def __init__(self, lmax: int, channels: int, eps: float = 1e-6, degrees: str = "separate"):
        super().__init__()
        if degrees not in NORM_DEGREES:
            raise ValueError(f"degrees must be one of {NORM_DEGREES}, got {degrees!r}")
        self.lmax, self.channels, self.eps, self.degrees = lmax, channels, eps, degrees
        self.weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return so2_layer_norm(x, self.weight, self.bias, self.lmax, self.eps, self.degrees == "joint")
