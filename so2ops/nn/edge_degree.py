"""``EdgeDegreeEmbedding``: the eSCN-MD / UMA initial equivariant node embedding."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layout import wigner_offset
from .edgewise import RadialMLP

__all__ = ["EdgeDegreeEmbedding"]


def _m0_column_index(lmax: int) -> list[int]:
    """Packed-Wigner positions of ``D^l[0, m]`` for every row ``(l, m)`` (l-major order)."""
    return [wigner_offset(l) + l * (2 * l + 1) + (m + l) for l in range(lmax + 1) for m in range(-l, l + 1)]


class EdgeDegreeEmbedding(nn.Module):
    """Sum over incoming edges of an invariant radial embedding rotated out of the edge frame.

    ``out[t] = x[t] + (1 / rescale_factor) sum_{e = (s -> t)} envelope_e D_e^T r_e``, where
    ``r_e[K, C]`` is zero except on the ``m = 0`` rows ``(l, 0)``, which hold
    ``radial(edge_attr_e).view(lmax + 1, C)``.  Only column ``m' = 0`` of each
    ``D^l_e`` is used: ``(D_e^T r_e)[(l, m)] = D^l_e[0, m] r_e[l]`` (``D^l[0, :]``
    is the degree-``l`` spherical harmonic of the edge direction), so the op is
    a gather of ``K`` Wigner entries per edge and a broadcast multiply, not a rotation.
    ``m = 0`` rows are fixed by rolls about the edge, hence the roll of the
    frame never matters.

    Args:
        lmax: largest degree; sphere_channels: ``C``.
        edge_channels_list: ``[edge_attr_dim, hidden...]`` of the radial MLP (to ``(lmax+1) C`` outputs).
        rescale_factor: divides the sum (fairchem / UMA: 5.0, "sqrt of the average degree").
        edge_chunk: process ``edge_chunk`` edges at a time under ``torch.utils.checkpoint``
            (less peak memory, one forward recomputed in backward).
    Shapes:
        ``forward(x[N, K, C] or None, edge_index[2, E], wigner[E, wigner_size(lmax)],
        edge_attr[E, edge_attr_dim], envelope[E] or None, num_nodes=None) -> [N, K, C]``
        (``x = None``: start from zeros; ``num_nodes`` is then required).
    """

    def __init__(self, lmax: int, sphere_channels: int, edge_channels_list: Sequence[int],
                 rescale_factor: float = 5.0, edge_chunk: Optional[int] = None):
        super().__init__()
        self.lmax, self.sphere_channels = lmax, sphere_channels
        self.rescale_factor = float(rescale_factor)
        self.edge_chunk = edge_chunk
        self.radial = RadialMLP(list(edge_channels_list) + [(lmax + 1) * sphere_channels])
        self.register_buffer("_wigner_index", torch.tensor(_m0_column_index(lmax)), persistent=False)
        deg = [l for l in range(lmax + 1) for _ in range(2 * l + 1)]
        self.register_buffer("_degree", torch.tensor(deg), persistent=False)

    def edge_messages(self, wigner: torch.Tensor, edge_attr: torch.Tensor,
                      envelope: Optional[torch.Tensor]) -> torch.Tensor:
        """``[E, K, C]`` messages ``envelope_e D_e^T r_e / rescale_factor``."""
        e = wigner.shape[0]
        r = self.radial(edge_attr).view(e, self.lmax + 1, self.sphere_channels)
        w = wigner.index_select(1, self._wigner_index)  # [E, K]
        scale = 1.0 / self.rescale_factor
        w = w * (scale if envelope is None else envelope.reshape(e, 1) * scale)
        return w.unsqueeze(2) * r.index_select(1, self._degree)

    def forward(self, x: Optional[torch.Tensor], edge_index: torch.Tensor, wigner: torch.Tensor,
                edge_attr: torch.Tensor, envelope: Optional[torch.Tensor] = None,
                num_nodes: Optional[int] = None) -> torch.Tensor:
        dst = edge_index[1]
        e = wigner.shape[0]
        if x is None:
            if num_nodes is None:
                raise ValueError("num_nodes is required when x is None")
            out = wigner.new_zeros(num_nodes, (self.lmax + 1) ** 2, self.sphere_channels)
        else:
            out = x.clone()
        if envelope is not None:
            envelope = envelope.reshape(e)
        chunk = self.edge_chunk
        if chunk is None or e <= chunk:
            return out.index_add_(0, dst, self.edge_messages(wigner, edge_attr, envelope))
        for s in range(0, e, chunk):
            sl = slice(s, min(s + chunk, e))
            env = None if envelope is None else envelope[sl]
            msg = checkpoint(self.edge_messages, wigner[sl], edge_attr[sl], env, use_reentrant=False)
            out.index_add_(0, dst[sl], msg)
        return out

    def extra_repr(self) -> str:
        return (f"lmax={self.lmax}, sphere_channels={self.sphere_channels}, "
                f"rescale_factor={self.rescale_factor}, edge_chunk={self.edge_chunk}")

