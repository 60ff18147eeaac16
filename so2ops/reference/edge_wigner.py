"""Reference ``edge_wigner``: packed Wigner-D blocks of every edge frame."""
from __future__ import annotations

import torch

from ..layout import wigner_offset, wigner_size
from ..wigner_tables import wigner_tables
from .frames import edge_frames
from .spherical_harmonics import spherical_harmonics


def edge_wigner(edge_vec: torch.Tensor, lmax: int) -> torch.Tensor:
    """Wigner-D of each edge frame ``R(edge_vec / |edge_vec|)``.

    Args:
        edge_vec: ``[E, 3]`` (pos[target] - pos[source]), nonzero.
        lmax: largest degree.
    Returns:
        ``[E, wigner_size(lmax)]``: for each ``l`` the block ``D^l(R)[m, m']``
        row-major, so that ``D^l(R) @ Y^l(u) = Y^l(+y)`` for the edge direction u.
    """
    u = edge_vec / edge_vec.norm(dim=-1, keepdim=True)
    return wigner_from_matrices(edge_frames(u), lmax)


def wigner_from_matrices(frames: torch.Tensor, lmax: int) -> torch.Tensor:
    """Packed Wigner-D ``[E, wigner_size(lmax)]`` of rotation matrices ``frames[E, 3, 3]``.

    ``Y^l(R p) = D^l(R) Y^l(p)`` for every unit vector ``p`` (e3nn's basis),
    so ``D^l(R) = [Y^l(R p_k)]_k B_l`` with the constant pseudo-inverse ``B_l``.
    """
    points, pinv = wigner_tables(lmax, frames.dtype, frames.device)
    rotated = torch.einsum("eij,kj->eki", frames, points)  # R p_k
    ysh = spherical_harmonics(rotated, lmax)  # [E, K, (lmax+1)^2]
    blocks = []
    for l in range(lmax + 1):
        s = slice(l * l, (l + 1) ** 2)
        # D^l[m, m'] = sum_k Y^l_m(R p_k) B_l[k, m']
        blocks.append(torch.einsum("ekm,kn->emn", ysh[..., s], pinv[:, s]).reshape(-1, (2 * l + 1) ** 2))
    return torch.cat(blocks, dim=-1) if blocks else frames.new_zeros(frames.shape[0], wigner_size(lmax))


def wigner_to_dense(wigner: torch.Tensor, lmax: int) -> torch.Tensor:
    """Unpack ``[E, wigner_size(lmax)]`` into block-diagonal ``[E, K, K]``, ``K=(lmax+1)**2``."""
    e = wigner.shape[0]
    k = (lmax + 1) ** 2
    dense = wigner.new_zeros(e, k, k)
    for l in range(lmax + 1):
        n = 2 * l + 1
        o = wigner_offset(l)
        dense[:, l * l : l * l + n, l * l : l * l + n] = wigner[:, o : o + n * n].reshape(e, n, n)
    return dense
