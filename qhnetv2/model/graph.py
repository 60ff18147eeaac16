"""Graphs of a batch of molecules: message edges, predicted pairs, node frames.

Everything here is index bookkeeping plus differentiable vectors: the
positions' gradients flow through ``edge_vec`` / ``pair_vec`` / ``frame_vec``
(and the frame weights).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

#: A frame axis for atoms without one: +y, whose edge frame is the identity rotation.
_POLAR = (0.0, 1.0, 0.0)
#: node-frame constructions (docs/model.md, "Node frames")
NODE_FRAMES = ("average", "nearest", "soft")
#: slack (Angstrom) on the candidate preselection: ``torch.cdist`` may differ from the
#: exact norms by rounding, so candidates are preselected generously and weighted exactly.
_SELECT_SLACK = 1e-6


@dataclass
class MoleculeGraph:
    """Message edges, pairs and node frames of a batch.

    Shapes: ``edge_index[2, E]`` (source, target), ``edge_vec[E, 3]``, ``pairs[P, 2]`` (i < j),
    ``pair_vec[P, 3]``, ``has_frame[N]`` bool.

    Node frames are *candidate* frames: ``F >= N`` of them, ``frame_atom[F]`` the atom each
    belongs to (sorted), ``frame_vec[F, 3]`` its axis, ``frame_weight[F]`` its weight (the
    weights of one atom sum to 1), ``frame_rank[F]`` its position among its atom's candidates
    (0, 1, ...); ``frame_rounds`` = the largest candidate count of an atom.  A frame-dependent
    node quantity is the weighted sum over an atom's candidates of that quantity evaluated in
    each candidate frame and rotated back.  ``F == N`` means one frame per atom
    (``frame_atom == arange(N)``, all weights exactly 1).
    """

    edge_index: torch.Tensor
    edge_vec: torch.Tensor
    pairs: torch.Tensor
    pair_vec: torch.Tensor
    frame_vec: torch.Tensor
    has_frame: torch.Tensor
    frame_atom: torch.Tensor
    frame_weight: torch.Tensor
    frame_rank: torch.Tensor
    frame_rounds: int

    @property
    def one_frame_per_atom(self) -> bool:
        return self.frame_atom.shape[0] == self.has_frame.shape[0]


def _same_molecule_distances(pos: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` distances, +inf across molecules and on the diagonal (no gradient)."""
    with torch.no_grad():
        d = torch.cdist(pos, pos)
        d = d.masked_fill(batch[:, None] != batch[None, :], float("inf"))
        d.fill_diagonal_(float("inf"))
    return d


def frame_weight_profile(delta: torch.Tensor, window: float) -> torch.Tensor:
    """``phi(delta) = cos^2(pi delta / (2 window))`` on ``[0, window)``, 0 beyond.

    ``phi(0) = 1``, ``phi'(0) = 0`` and ``phi`` goes to 0 with its derivative at
    ``window``: a neighbour's frame fades in and out smoothly as its distance
    approaches or leaves the nearest distance (docs/model.md, "Node frames").
    """
    inside = delta < window
    t = (delta.clamp(0.0, window) * (math.pi / (2.0 * window)))
    return torch.where(inside, torch.cos(t).pow(2), torch.zeros_like(delta))


def _averaged_frames(pos: torch.Tensor, d: torch.Tensor, has_frame: torch.Tensor, window: float):
    """Candidate frames of ``node_frame="average"``: every neighbour within ``window`` of
    the nearest distance, weighted by ``frame_weight_profile(r_ij - r_min(i))``.

    Returns ``(atom[F], vec[F, 3], weight[F])``; frameless atoms get one +y candidate.
    """
    n = pos.shape[0]
    with torch.no_grad():
        dmin = d.min(dim=1).values if n else d.new_zeros(0)
        cand = (d <= (dmin + window + _SELECT_SLACK)[:, None]) & torch.isfinite(d)
        # frameless atoms: a single candidate (themselves, replaced by the polar axis below)
        cand |= torch.diag_embed(~has_frame)
    atom, nbr = torch.nonzero(cand, as_tuple=True)  # row-major: sorted by atom
    vec = pos[nbr] - pos[atom]
    r = vec.pow(2).sum(-1).clamp_min(1e-24).sqrt()  # clamped: no NaN gradient for frameless self-pairs
    # the nearest distance from the exact norms of the candidates (order-free, differentiable)
    rmin = torch.full((n,), float("inf"), dtype=r.dtype, device=r.device).scatter_reduce(
        0, atom, r, reduce="amin", include_self=True)
    w = frame_weight_profile(r - rmin[atom], window)
    total = torch.zeros(n, dtype=w.dtype, device=w.device).index_add(0, atom, w)
    w = w / total[atom]  # >= 1 term of weight 1 per atom: never a division by 0
    frameless = ~has_frame[atom]
    vec = torch.where(frameless[:, None], pos.new_tensor(_POLAR).expand_as(vec), vec)
    w = torch.where(frameless, torch.ones_like(w), w)
    return atom, vec, w


def build_graph(pos: torch.Tensor, batch: torch.Tensor, cutoff: float, pair_cutoff: Optional[float] = None,
                node_frame: str = "average", frame_temperature: float = 0.1,
                frame_window: float = 0.1) -> MoleculeGraph:
    """Message edges within ``cutoff``, pairs within ``pair_cutoff`` (None: all pairs), node frames.

    Node frames (``node_frame``, docs/model.md "Node frames"):
    * ``"average"`` (default): frame averaging over the near-nearest neighbours.  Every
      neighbour ``j`` of atom ``i`` with ``r_ij < r_min(i) + frame_window`` gives a
      candidate frame (axis ``r_j - r_i``) of weight ``phi(r_ij - r_min(i))``
      (:func:`frame_weight_profile`), normalised per atom.  Independent of the atom order
      (exact ties included) and continuous in the positions; one frame where the nearest
      neighbour is unique by more than ``frame_window``.
    * ``"nearest"`` (the paper's): the axis points to the nearest neighbour in the molecule;
      it jumps when two neighbours swap order, and ties are broken by atom index.
    * ``"soft"``: ``sum_j softmax_j(-r_ij / T) u_ij``, a smooth reference vector that tends to
      the nearest-neighbour axis as ``T -> 0``; where it nearly cancels (symmetric
      environments) the nearest-neighbour axis is used (ties broken by atom index).
    Single-atom molecules have no frame (``has_frame`` False; the model uses invariants only).
    """
    if node_frame not in NODE_FRAMES:
        raise ValueError(f"node_frame must be one of {NODE_FRAMES}, got {node_frame!r}")
    if node_frame == "average" and not frame_window > 0:
        raise ValueError(f"frame_window must be > 0 Angstrom, got {frame_window!r}")
    n = pos.shape[0]
    d = _same_molecule_distances(pos, batch)
    src, tgt = torch.nonzero(d <= cutoff, as_tuple=True)
    edge_index = torch.stack([src, tgt])
    edge_vec = pos[tgt] - pos[src]
    upper = torch.triu(torch.isfinite(d) if pair_cutoff is None else d <= pair_cutoff, diagonal=1)
    pi, pj = torch.nonzero(upper, as_tuple=True)
    pairs = torch.stack([pi, pj], dim=1)
    pair_vec = pos[pj] - pos[pi]
    has_frame = torch.isfinite(d).any(dim=1) if n else torch.zeros(0, dtype=torch.bool, device=pos.device)
    polar = pos.new_tensor(_POLAR).expand(n, 3)
    atoms = torch.arange(n, device=pos.device)
    if node_frame == "average":
        frame_atom, frame_vec, frame_weight = _averaged_frames(pos, d, has_frame, frame_window)
        counts = torch.bincount(frame_atom, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        frame_rank = torch.arange(frame_atom.shape[0], device=pos.device) - starts[frame_atom]
        rounds = int(counts.max()) if n else 0
        return MoleculeGraph(edge_index, edge_vec, pairs, pair_vec, frame_vec, has_frame,
                             frame_atom, frame_weight, frame_rank, rounds)
    nearest = d.argmin(dim=1) if n else torch.zeros(0, dtype=torch.long, device=pos.device)
    nn_vec = pos[nearest] - pos
    if node_frame == "nearest":
        frame_vec = nn_vec
    else:  # soft
        valid = torch.isfinite(d)
        diff = pos[None, :, :] - pos[:, None, :]  # [N, N, 3]: r_j - r_i
        r = diff.pow(2).sum(-1).clamp_min(1e-12).sqrt()  # clamped: no NaN gradient on the diagonal
        w = torch.softmax((-r / frame_temperature).masked_fill(~valid, float("-inf")), dim=1).nan_to_num(0.0)
        soft = (w.unsqueeze(-1) * diff / r.unsqueeze(-1)).sum(1)
        ok = soft.norm(dim=1, keepdim=True) > 0.05
        frame_vec = torch.where(ok, soft, nn_vec)
    frame_vec = torch.where(has_frame[:, None], frame_vec, polar)
    return MoleculeGraph(edge_index, edge_vec, pairs, pair_vec, frame_vec, has_frame,
                         atoms, pos.new_ones(n), torch.zeros_like(atoms), 1 if n else 0)
