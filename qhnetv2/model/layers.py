"""The three per-layer blocks of QHNetV2 (docs/model.md).

Every operation on equivariant features (anything with an m index) is an
so2ops op or ``so2ops.nn`` module; plain ``torch.nn`` only touches invariants
(radial MLPs, embeddings, gate scalars).
"""
from __future__ import annotations

import torch
from torch import nn

import so2ops
from so2ops.layout import num_mod
from so2ops.nn import Gate, SO2LayerNorm, SO2Linear, SO2TensorProduct, init_so2_weight
from so2ops.nn.reversal import ReversalCommutingLinear, conjugation_signs
from so2ops.nn.so2_linear import split_so2_weight


def radial_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class MessageBlock(nn.Module):
    """SO(2) message passing in edge frames: ``x += Gate(sum_e D_e^T L(D_e x_s * radial_e)) / avg_degree``.

    Shapes: ``forward(x[N, K, C], edge_index[2, E], wigner[E, P], rbf[E', R], envelope[E'],
    edge_rows=None) -> [N, K, C]``; with ``edge_rows[E]`` the distance features are given once
    per unordered edge (``E'`` rows) and edge ``e`` uses row ``edge_rows[e]``: the radial MLP
    runs on ``E'`` rows, not ``E``.
    """

    def __init__(self, lmax: int, mmax: int, channels: int, num_rbf: int, avg_degree: float,
                 norm: str = "separate"):
        super().__init__()
        self.lmax, self.mmax, self.channels = lmax, mmax, channels
        self.norm = SO2LayerNorm(lmax, channels, degrees=norm)
        self.weight = nn.Parameter(torch.empty(so2ops.weight_size(lmax, mmax, channels, channels)))
        init_so2_weight(self.weight, lmax, mmax, channels, channels)
        self.radial = radial_mlp(num_rbf, 64, num_mod(lmax, mmax) * channels)
        self.gate = Gate(lmax, channels)
        self.scale = 1.0 / avg_degree

    def forward(self, x, edge_index, wigner, rbf, envelope, edge_rows=None):
        h = self.norm(x)
        if edge_index.shape[1] == 0:
            return torch.zeros_like(x)
        mod = self.radial(rbf).view(-1, num_mod(self.lmax, self.mmax), self.channels) * envelope[:, None, None]
        if edge_rows is not None:  # both orientations of an edge share its distance
            mod = mod[edge_rows]
        msg = so2ops.so2_message(h, wigner, edge_index, self.weight, self.lmax, self.mmax, self.channels, mod)
        return self.gate(msg * self.scale)


class NodeBlock(nn.Module):
    """Node update in each atom's local frame: rotate in, SO(2) tensor product, gate, rotate back.

    With frame averaging (``graph.build_graph(node_frame="average")``) an atom has one or
    more candidate frames: the update is evaluated in each and the rotated-back results
    are summed with the frames' weights, which keeps it exactly equivariant and
    independent of the atom order (docs/model.md, "Node frames").
    Atoms without a frame get only their degree-0 update (the rest would depend on
    an arbitrary frame).

    Shapes: ``forward(x[N, K, C], wigner[F, P], attrs[N, A], has_frame[N], frame_atom[F],
    frame_weight[F]) -> [N, K, C]``; ``frame_atom`` None means one frame per atom (``F == N``).
    """

    def __init__(self, lmax: int, mmax: int, channels: int, attr_dim: int, body_order: int,
                 norm: str = "separate"):
        super().__init__()
        self.lmax = lmax
        self.norm = SO2LayerNorm(lmax, channels, degrees=norm)
        self.tp = SO2TensorProduct(lmax, mmax, channels, channels, attr_dim, body_order=body_order)
        self.gate = Gate(lmax, channels)

    def forward(self, x, wigner, attrs, has_frame, frame_atom=None, frame_weight=None):
        h = so2ops.rotate(self.norm(x), wigner, self.lmax, index=frame_atom)
        y = self.gate(self.tp(h, attrs if frame_atom is None else attrs[frame_atom]))
        y = so2ops.rotate(y, wigner, self.lmax, inverse=True)
        if frame_atom is not None:  # weighted sum over each atom's candidate frames
            y = torch.zeros_like(x).index_add(0, frame_atom, y * frame_weight[:, None, None].to(y.dtype))
        # frameless atoms keep the degree-0 row only
        return torch.cat([y[:, :1], y[:, 1:] * has_frame[:, None, None].to(y.dtype)], dim=1)


class PairBlock(nn.Module):
    """Pair features in pair frames, updated by an SO(2) feed-forward block.

    ``P += env(r) * L2(Gate(y + TP(y)))`` with ``y = L1([D x_i, D x_j, LN(P)] * radial(r_ij))``;
    the gathers and rotations are fused into ``L1`` (``so2_gather_linear`` per input).  Options (docs/model.md "Pair path options"):

    * ``product`` > 0: the continuous SO(2) tensor product ``TP`` of body order
      ``product`` on ``y``, whose product weights come from the pair's invariants
      (``pair_attr``).  ``y`` mixes ``x_i`` and ``x_j``, so its square holds the
      two-body products ``x_i x_j`` that linear layers and scalar gates never form.
      Off: ``y`` goes straight to the gate.
    * ``norm_pairs``: ``LN(P)`` instead of ``P`` as input, and the update multiplied
      by the smooth pair envelope ``env(r)`` (off: neither).

    Shapes: ``forward(x[N, K, C], pair_feat[Pn, K, Cp], pairs[Pn, 2], wigner[Pn, P], rbf[Pn, R],
    pair_attr[Pn, A], envelope[Pn]) -> [Pn, K, Cp]`` (``pair_attr`` only with ``product``,
    ``envelope`` only with ``norm_pairs``).  ``rbf`` may also be ``[Pn / 2, R]`` when the rows
    ``Pn/2 ..`` of ``pairs`` are the rows ``0 .. Pn/2`` reversed (same distances): the radial
    MLP then runs once per unordered pair.
    """

    def __init__(self, lmax: int, mmax: int, channels: int, pair_channels: int, num_rbf: int,
                 norm: str = "separate", product: int = 0, attr_dim: int = 0, norm_pairs: bool = False):
        super().__init__()
        self.lmax, self.mmax, self.channels, self.pair_channels = lmax, mmax, channels, pair_channels
        cin = 2 * channels + pair_channels
        self.cin = cin
        self.norm = SO2LayerNorm(lmax, channels, degrees=norm)
        self.pair_norm = SO2LayerNorm(lmax, pair_channels, degrees=norm) if norm_pairs else None
        self.lin1 = SO2Linear(lmax, mmax, cin, pair_channels)
        self.tp = (SO2TensorProduct(lmax, mmax, pair_channels, pair_channels, attr_dim, body_order=product)
                   if product else None)
        self.lin2 = SO2Linear(lmax, mmax, pair_channels, pair_channels)
        self.radial = radial_mlp(num_rbf, 64, num_mod(lmax, mmax) * cin)
        self.gate = Gate(lmax, pair_channels)

    def forward(self, x, pair_feat, pairs, wigner, rbf, pair_attr=None, envelope=None):
        if pairs.shape[0] == 0:
            return pair_feat
        L, M, C, Cp = self.lmax, self.mmax, self.channels, self.pair_channels
        h = self.norm(x)
        p = pair_feat if self.pair_norm is None else self.pair_norm(pair_feat)
        mod = self.radial(rbf).view(-1, num_mod(L, M), self.cin)
        if mod.shape[0] != pairs.shape[0]:  # one row per unordered pair: the reversed half shares it
            mod = mod.repeat(2, 1, 1)
        # lin1 on [D x_i, D x_j, p], its weight split by input so that the gathers and
        # rotations are fused into it (no [pairs, K, 2C + Cp] concatenation); same function
        w_i, w_j, w_p = split_so2_weight(self.lin1.weight, L, M, (C, C, Cp), Cp)
        mod_i, mod_j, mod_p = (t.contiguous() for t in mod.split([C, C, Cp], dim=2))
        y = so2ops.so2_gather_linear(h, wigner, pairs[:, 0], w_i, L, M, Cp, mod_i)
        y = y + so2ops.so2_gather_linear(h, wigner, pairs[:, 1], w_j, L, M, Cp, mod_j)
        y = y + so2ops.so2_linear(p, w_p, L, M, Cp, mod_p)
        if self.tp is not None:
            y = y + self.tp(y, pair_attr)
        out = self.lin2(self.gate(y))
        if self.pair_norm is not None:
            out = out * envelope[:, None, None].to(out.dtype)
        return out


class TiedPairBlock(nn.Module):
    """``PairBlock`` evaluated once per unordered pair (``pair_scheme: tied``; docs/model.md
    "One evaluation per unordered pair").

    ``P += env(r) * L2(Gate(y))`` with ``y = A (D x_i) + (F A F)(D x_j) + C LN(P)``, each input
    scaled per ``(m, l, channel)`` by ``radial(r)`` (the same scaling for ``x_i`` and ``x_j``);
    ``F`` is the edge reversal (``so2ops.nn.reversal``), ``C`` and ``L2`` commute with it.
    Then the update computed in the reversed orientation (frame ``F D``, inputs ``x_j, x_i,
    F P``) is exactly ``F`` times this one, so the pair stream of the orientation ``(j, i)``
    is ``F P`` and never needs computing.  The gathers and rotations are fused into the
    linear layer (``so2ops.so2_gather_linear``): no ``[pairs, K, 2C + Cp]`` tensor is built.

    Shapes: ``forward(x[N, K, C], pair_feat[P, K, Cp], pairs[P, 2], wigner[P, W], rbf[P, R],
    envelope[P]) -> [P, K, Cp]`` (``envelope`` only with ``norm_pairs``).
    """

    def __init__(self, lmax: int, mmax: int, channels: int, pair_channels: int, num_rbf: int,
                 norm: str = "separate", norm_pairs: bool = False):
        super().__init__()
        self.lmax, self.mmax, self.channels, self.pair_channels = lmax, mmax, channels, pair_channels
        cin = 2 * channels + pair_channels  # the inputs of one output row, as in PairBlock
        self.norm = SO2LayerNorm(lmax, channels, degrees=norm)
        self.pair_norm = SO2LayerNorm(lmax, pair_channels, degrees=norm) if norm_pairs else None
        # A: the map of x_i (and, conjugated by F, of x_j); fan-in of all cin inputs, as PairBlock.lin1
        self.weight_x = nn.Parameter(torch.empty(so2ops.weight_size(lmax, mmax, channels, pair_channels)))
        init_so2_weight(self.weight_x, lmax, mmax, channels, pair_channels, gain=(channels / cin) ** 0.5)
        self.register_buffer("conj_x", conjugation_signs(lmax, mmax, channels, pair_channels).float(),
                             persistent=False)
        self.lin_p = ReversalCommutingLinear(lmax, mmax, pair_channels, pair_channels, gain=(pair_channels / cin) ** 0.5)
        self.lin2 = ReversalCommutingLinear(lmax, mmax, pair_channels, pair_channels)
        self.radial = radial_mlp(num_rbf, 64, num_mod(lmax, mmax) * (channels + pair_channels))
        self.gate = Gate(lmax, pair_channels)

    def forward(self, x, pair_feat, pairs, wigner, rbf, envelope=None):
        if pairs.shape[0] == 0:
            return pair_feat
        L, M, C, Cp = self.lmax, self.mmax, self.channels, self.pair_channels
        h = self.norm(x)
        mod = self.radial(rbf).view(-1, num_mod(L, M), C + Cp)
        mod_x, mod_p = mod[..., :C].contiguous(), mod[..., C:].contiguous()
        p = pair_feat if self.pair_norm is None else self.pair_norm(pair_feat)
        y = so2ops.so2_gather_linear(h, wigner, pairs[:, 0], self.weight_x, L, M, Cp, mod_x)
        y = y + so2ops.so2_gather_linear(h, wigner, pairs[:, 1], self.weight_x * self.conj_x, L, M, Cp, mod_x)
        y = y + self.lin_p(p, mod_p)
        out = self.lin2(self.gate(y))
        if self.pair_norm is not None:
            out = out * envelope[:, None, None].to(out.dtype)
        return out


class GatedReadout(nn.Module):
    """Local-frame features -> block channels by ``L2(Gate(L1(x)))``, ``hidden`` channels
    between, all orders ``|m| <= lmax`` (the two-layer alternative to one ``SO2Linear``).

    ``modulation[E, num_mod(lmax, lmax), in_channels]`` (optional) scales the inputs of
    ``L1`` per ``(m, l, channel)``, as ``SO2Linear`` does: the element-(pair)-specific
    readout weights use it.

    Shapes: ``forward(x[E, K, in_channels], modulation=None) -> [E, K, out_channels]``.
    """

    def __init__(self, lmax: int, in_channels: int, out_channels: int, hidden: int, gain: float = 0.5):
        super().__init__()
        self.lin1 = SO2Linear(lmax, lmax, in_channels, hidden)
        self.gate = Gate(lmax, hidden)
        self.lin2 = SO2Linear(lmax, lmax, hidden, out_channels, gain=gain)

    def forward(self, x, modulation=None):
        return self.after_first(self.lin1(x, modulation))

    def after_first(self, y):
        """Everything after the first layer: ``L2(Gate(y))`` for ``y = L1(x)`` computed
        elsewhere (the pair readout runs ``L1`` split by input, fused with its gathers)."""
        return self.lin2(self.gate(y))
