"""Graphs of a batch of molecules: message edges, predicted pairs, node frames.

Everything here is index bookkeeping plus differentiable vectors: the
positions' gradients flow through ``edge_vec`` / ``pair_vec`` / ``frame_vec``
(and the frame weights).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

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


def _polar_axis(pos: torch.Tensor) -> torch.Tensor:
    """``_POLAR`` as a ``[3]`` tensor made on ``pos``'s device (no host-to-device copy, which a
    CUDA graph cannot capture)."""
    return torch.eye(3, dtype=pos.dtype, device=pos.device)[1]


def _same_molecule_distances(pos: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` distances, +inf across molecules and on the diagonal (no gradient)."""
    with torch.no_grad():
        d = torch.cdist(pos, pos)
        # exactly symmetric (cdist's matmul path need not be): the edge set is then symmetric,
        # which the one-row-per-unordered-edge bookkeeping of build_topology relies on
        d = torch.minimum(d, d.T)
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


def _averaged_candidates(d: torch.Tensor, has_frame: torch.Tensor, window: float):
    """Candidate frames of ``node_frame="average"`` (indices only): every neighbour within
    ``window`` of the nearest distance (a generous preselection, weighted exactly by
    :func:`_averaged_weights`).  Returns ``(atom[F], nbr[F])`` sorted by atom; a frameless
    atom gets one candidate, itself (its axis becomes the polar axis)."""
    n = d.shape[0]
    with torch.no_grad():
        dmin = d.min(dim=1).values if n else d.new_zeros(0)
        cand = (d <= (dmin + window + _SELECT_SLACK)[:, None]) & torch.isfinite(d)
        # frameless atoms: a single candidate (themselves, replaced by the polar axis below)
        cand |= torch.diag_embed(~has_frame)
    atom, nbr = torch.nonzero(cand, as_tuple=True)  # row-major: sorted by atom
    return atom, nbr


def _averaged_frames(pos: torch.Tensor, atom: torch.Tensor, nbr: torch.Tensor, has_frame: torch.Tensor,
                     window: float):
    """Axes and weights of the candidate frames ``(atom, nbr)``: weight
    ``frame_weight_profile(r_ij - r_min(i))`` normalised per atom.  Tensor work only
    (no host read): differentiable in ``pos``.

    Returns ``(vec[F, 3], weight[F])``; frameless atoms get the +y axis, weight 1.
    """
    n = pos.shape[0]
    vec = pos[nbr] - pos[atom]
    r = vec.pow(2).sum(-1).clamp_min(1e-24).sqrt()  # clamped: no NaN gradient for frameless self-pairs
    # the nearest distance from the exact norms of the candidates (order-free, differentiable)
    rmin = torch.full((n,), float("inf"), dtype=r.dtype, device=r.device).scatter_reduce(
        0, atom, r, reduce="amin", include_self=True)
    w = frame_weight_profile(r - rmin[atom], window)
    total = torch.zeros(n, dtype=w.dtype, device=w.device).index_add(0, atom, w)
    w = w / total[atom]  # >= 1 term of weight 1 per atom: never a division by 0
    frameless = ~has_frame[atom]
    vec = torch.where(frameless[:, None], _polar_axis(pos).expand_as(vec), vec)
    w = torch.where(frameless, torch.ones_like(w), w)
    return vec, w


@dataclass
class GraphTopology:
    """The index part of a :class:`MoleculeGraph`: which edges, pairs and candidate frames
    exist.  Building it reads data on the host (``nonzero``, the candidate counts), so it
    is built once per batch (:func:`build_topology`); :func:`graph_vectors` then turns it
    and the positions into the differentiable vectors and weights without any host read.

    Shapes: ``edge_index[2, E]``, ``pairs[P, 2]`` (i < j), ``has_frame[N]`` bool,
    ``frame_atom[F]`` / ``frame_nbr[F]`` (atom and neighbour of each candidate frame;
    ``frame_nbr`` only for ``"average"``), ``frame_rank[F]``, ``round_index``: one ``[F_k]``
    tensor per round ``k < frame_rounds``, the candidates of rank ``k`` (ascending);
    ``nearest[N]`` (``"nearest"`` / ``"soft"``), ``same_molecule[N, N]`` (``"soft"``);
    ``upper_edges[U]``: the edges with source < target (one per unordered edge; the edge
    set is symmetric) and ``edge_upper[E]``: for every edge the row of its unordered edge
    in ``upper_edges``, so that per-distance work (radial MLPs) runs once per unordered edge.
    The candidate *set* was chosen from the positions given to ``build_topology``; the
    weights are recomputed from the positions given to ``graph_vectors``.
    """

    node_frame: str
    frame_temperature: float
    frame_window: float
    edge_index: torch.Tensor
    pairs: torch.Tensor
    has_frame: torch.Tensor
    frame_atom: torch.Tensor
    frame_rank: torch.Tensor
    frame_rounds: int
    round_index: Tuple[torch.Tensor, ...]
    frame_nbr: Optional[torch.Tensor] = None
    nearest: Optional[torch.Tensor] = None
    same_molecule: Optional[torch.Tensor] = None
    upper_edges: Optional[torch.Tensor] = None
    edge_upper: Optional[torch.Tensor] = None

    @property
    def num_atoms(self) -> int:
        return self.has_frame.shape[0]

    @property
    def one_frame_per_atom(self) -> bool:
        return self.frame_atom.shape[0] == self.has_frame.shape[0]


def build_topology(pos: torch.Tensor, batch: torch.Tensor, cutoff: float, pair_cutoff: Optional[float] = None,
                   node_frame: str = "average", frame_temperature: float = 0.1,
                   frame_window: float = 0.1) -> GraphTopology:
    """The edges, pairs and candidate frames of a batch (the host-reading half of
    :func:`build_graph`; same arguments).  ``pos`` is read without gradient."""
    if node_frame not in NODE_FRAMES:
        raise ValueError(f"node_frame must be one of {NODE_FRAMES}, got {node_frame!r}")
    if node_frame == "average" and not frame_window > 0:
        raise ValueError(f"frame_window must be > 0 Angstrom, got {frame_window!r}")
    pos = pos.detach()
    n = pos.shape[0]
    dev = pos.device
    d = _same_molecule_distances(pos, batch)
    src, tgt = torch.nonzero(d <= cutoff, as_tuple=True)
    edge_index = torch.stack([src, tgt])
    # one row per unordered edge: the edges (s, t) with s < t come out of nonzero sorted by
    # the key s * n + t, so every edge finds its unordered partner's row by a binary search
    upper_edges = torch.nonzero(src < tgt).squeeze(1)
    key = torch.minimum(src, tgt) * max(n, 1) + torch.maximum(src, tgt)
    edge_upper = torch.searchsorted(key[upper_edges], key)
    upper = torch.triu(torch.isfinite(d) if pair_cutoff is None else d <= pair_cutoff, diagonal=1)
    pi, pj = torch.nonzero(upper, as_tuple=True)
    pairs = torch.stack([pi, pj], dim=1)
    has_frame = torch.isfinite(d).any(dim=1) if n else torch.zeros(0, dtype=torch.bool, device=dev)
    common = dict(node_frame=node_frame, frame_temperature=frame_temperature, frame_window=frame_window,
                  edge_index=edge_index, pairs=pairs, has_frame=has_frame, upper_edges=upper_edges,
                  edge_upper=edge_upper)
    if node_frame == "average":
        frame_atom, frame_nbr = _averaged_candidates(d, has_frame, frame_window)
        counts = torch.bincount(frame_atom, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        frame_rank = torch.arange(frame_atom.shape[0], device=dev) - starts[frame_atom]
        rounds = int(counts.max()) if n else 0
        round_index = tuple(torch.nonzero(frame_rank == k).squeeze(1) for k in range(rounds))
        return GraphTopology(frame_atom=frame_atom, frame_rank=frame_rank, frame_rounds=rounds,
                             round_index=round_index, frame_nbr=frame_nbr, **common)
    atoms = torch.arange(n, device=dev)
    nearest = d.argmin(dim=1) if n else torch.zeros(0, dtype=torch.long, device=dev)
    same = torch.isfinite(d) if node_frame == "soft" else None
    return GraphTopology(frame_atom=atoms, frame_rank=torch.zeros_like(atoms), frame_rounds=1 if n else 0,
                         round_index=(atoms,) if n else (), nearest=nearest, same_molecule=same, **common)


def graph_vectors(pos: torch.Tensor, topo: GraphTopology) -> MoleculeGraph:
    """The :class:`MoleculeGraph` of ``topo`` at positions ``pos[N, 3]``: edge, pair and
    frame vectors and the frame weights, differentiable in ``pos``.

    Tensor work only: no host read, no data-dependent shape (CUDA-graph capturable,
    ``torch.compile(fullgraph=True)`` traceable).
    """
    src, tgt = topo.edge_index[0], topo.edge_index[1]
    edge_vec = pos[tgt] - pos[src]
    pair_vec = pos[topo.pairs[:, 1]] - pos[topo.pairs[:, 0]]
    n = pos.shape[0]
    has_frame = topo.has_frame
    if topo.node_frame == "average":
        frame_vec, frame_weight = _averaged_frames(pos, topo.frame_atom, topo.frame_nbr, has_frame, topo.frame_window)
        return MoleculeGraph(topo.edge_index, edge_vec, topo.pairs, pair_vec, frame_vec, has_frame,
                             topo.frame_atom, frame_weight, topo.frame_rank, topo.frame_rounds)
    polar = _polar_axis(pos).expand(n, 3)
    nn_vec = pos[topo.nearest] - pos
    if topo.node_frame == "nearest":
        frame_vec = nn_vec
    else:  # soft
        valid = topo.same_molecule
        diff = pos[None, :, :] - pos[:, None, :]  # [N, N, 3]: r_j - r_i
        r = diff.pow(2).sum(-1).clamp_min(1e-12).sqrt()  # clamped: no NaN gradient on the diagonal
        w = torch.softmax((-r / topo.frame_temperature).masked_fill(~valid, float("-inf")), dim=1).nan_to_num(0.0)
        soft = (w.unsqueeze(-1) * diff / r.unsqueeze(-1)).sum(1)
        ok = soft.norm(dim=1, keepdim=True) > 0.05
        frame_vec = torch.where(ok, soft, nn_vec)
    frame_vec = torch.where(has_frame[:, None], frame_vec, polar)
    return MoleculeGraph(topo.edge_index, edge_vec, topo.pairs, pair_vec, frame_vec, has_frame,
                         topo.frame_atom, pos.new_ones(n), topo.frame_rank, topo.frame_rounds)


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
    Built as :func:`build_topology` (indices, reads the host) then :func:`graph_vectors`
    (vectors and weights, tensor work only).
    Single-atom molecules have no frame (``has_frame`` False; the model uses invariants only).
    """
    return graph_vectors(pos, build_topology(pos, batch, cutoff, pair_cutoff, node_frame, frame_temperature,
                                             frame_window))
