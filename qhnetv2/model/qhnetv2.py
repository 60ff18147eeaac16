"""QHNetV2: Kohn-Sham Hamiltonians from SO(2) local frames (docs/model.md)."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import so2ops
from so2ops import BasisLayout, HamiltonianIndex
from so2ops.block_tables import block_tables
from so2ops.layout import num_coeffs, num_mod
from so2ops.nn.reversal import reversal_signs, reversal_wigner_signs
from so2ops.nn.so2_linear import split_so2_weight

from ..atomic import atomic_file
from .config import ModelConfig, preset
from .graph import GraphTopology, build_topology, graph_vectors
from .layers import GatedReadout, MessageBlock, NodeBlock, PairBlock, TiedPairBlock
from .radial import RadialBasis

CHECKPOINT_FORMAT = "qhnetv2-checkpoint"
#: ``ordered``: the pair stream for both orientations of each pair; ``tied``: once per unordered pair
PAIR_SCHEMES = ("ordered", "tied")
MIN_DISTANCE = 0.3  # Angstrom: closer atoms are certainly an input error


def layout_from_basis(basis: str, elements: Sequence[int]) -> BasisLayout:
    """The shells of ``elements`` in PySCF basis ``basis`` (needs PySCF)."""
    from qhnetv2.data.basis import element_shells

    return BasisLayout({int(z): [l for l, _ in element_shells(basis, int(z))] for z in elements}, name=basis)


@dataclass
class ModelInputs:
    """A checked, indexed batch (:meth:`QHNetV2.prepare`) for :meth:`QHNetV2.forward_prepared`.

    Everything a forward pass needs besides the positions, built on the host once per
    batch; on the model's device.  Shapes: ``atomic_numbers``, ``batch``, ``elem`` (the
    model's element indices) ``[N]``; ``pairs_both[2P, 2]`` (each pair in both orientations);
    ``diag_items[N, 2]``, ``first_items[N + P, 2]`` / ``first_invariant[N + P]`` (the first
    ``assemble_blocks`` call: round-0 diagonal blocks and the pairs), ``round_items[k]`` /
    ``round_invariant[k]`` (frame rounds ``1 ..``), ``no_frame[P]``, ``all_invariant[N]``.
    ``n_atoms``, ``n_pairs``, ``frame_rounds`` are Python ints (no host read later).
    """

    atomic_numbers: torch.Tensor
    batch: torch.Tensor
    elem: torch.Tensor
    index: HamiltonianIndex
    topology: GraphTopology
    n_atoms: int
    n_pairs: int
    frame_rounds: int
    pairs_both: torch.Tensor
    diag_items: torch.Tensor
    first_items: torch.Tensor
    first_invariant: torch.Tensor
    round_items: Tuple[torch.Tensor, ...]
    round_invariant: Tuple[torch.Tensor, ...]
    no_frame: torch.Tensor
    all_invariant: torch.Tensor


class QHNetV2(nn.Module):
    """The QHNetV2 Hamiltonian model.

    Args:
        basis: PySCF basis name (its per-element shells are read at construction).
        elements: atomic numbers the model handles.
        layout: a ``so2ops.BasisLayout`` instead of reading ``basis`` through PySCF.
        **sizes: ``ModelConfig`` fields (lmax, mmax, channels, layers, ...).

    ``model(atomic_numbers[n], positions[n, 3])`` (Angstrom) returns the network output
    ``[n_ao, n_ao]`` in PySCF's AO order, differentiable w.r.t. parameters and positions:
    the Hamiltonian itself for target ``full``, ``H - H_base`` for a residual target.
    ``predict`` / ``predict_many`` return the full Kohn-Sham H whatever the target.

    What the model was trained on comes from its checkpoint (``from_checkpoint`` /
    ``load``, from ``checkpoint["extra"]``): ``target`` (``full``, ``core``, ``minao``),
    ``settings`` (the labels' SCF settings, to rebuild ``H_base``) and ``domain``
    (:mod:`qhnetv2.domain`); a model built directly has target ``full``, no domain.
    """

    #: what the network learned (qhnetv2.baseline.TARGETS); from_checkpoint sets the trained one
    target: str = "full"
    #: SCF settings of the training labels (for H_base), None: PySCF defaults with the model's basis
    settings: Optional[Dict] = None
    #: training-domain record (qhnetv2.domain), None: unknown, nothing is checked
    domain: Optional[Dict] = None
    #: the file load() read, for messages (None otherwise)
    checkpoint_path: Optional[str] = None
    #: True once from_checkpoint set target / settings / domain (an old checkpoint may lack a domain)
    from_trained_checkpoint: bool = False

    def __init__(self, basis: str = "def2-svp", elements: Sequence[int] = (1, 6, 7, 8, 9),
                 layout: Optional[BasisLayout] = None, **sizes):
        super().__init__()
        cfg = ModelConfig.from_dict({**sizes, "basis": basis, "elements": [int(z) for z in elements]})
        self.layout = layout if layout is not None else layout_from_basis(cfg.basis, cfg.elements)
        missing = sorted(set(cfg.elements) - set(self.layout.elements))
        if missing:
            raise ValueError(f"basis layout has no shells for elements {missing}")
        if cfg.lmax is None:
            cfg.lmax = self.layout.features_lmax
        so2ops.block_tables.check_block_lmax(self.layout, cfg.lmax)
        cfg.tp_mmax = cfg.mmax if cfg.tp_mmax is None else cfg.tp_mmax
        cfg.pair_mmax = cfg.mmax if cfg.pair_mmax is None else cfg.pair_mmax
        cfg.pair_channels = cfg.channels if cfg.pair_channels is None else cfg.pair_channels
        for name in ("mmax", "tp_mmax", "pair_mmax"):
            if not 0 <= getattr(cfg, name) <= cfg.lmax:
                raise ValueError(f"{name}={getattr(cfg, name)} must be in [0, lmax={cfg.lmax}]")
        self.config = cfg
        L, C, Cp = cfg.lmax, cfg.channels, cfg.pair_channels
        self.register_buffer("z_index", self._z_index(cfg.elements), persistent=False)
        self.embedding = nn.Embedding(len(cfg.elements), C)
        self.rbf = RadialBasis(cfg.num_rbf, cfg.cutoff)
        self.pair_rbf = RadialBasis(cfg.num_rbf, cfg.pair_cutoff or 12.0)
        self.messages = nn.ModuleList(MessageBlock(L, cfg.mmax, C, cfg.num_rbf, cfg.avg_degree, cfg.norm) for _ in range(cfg.layers))
        self.nodes = nn.ModuleList(NodeBlock(L, cfg.tp_mmax, C, C, cfg.body_order, cfg.norm) for _ in range(cfg.layers))
        if cfg.pair_product < 0 or cfg.readout_hidden < 0:
            raise ValueError(f"pair_product ({cfg.pair_product}) and readout_hidden ({cfg.readout_hidden}) must be >= 0")
        # the pair product's weights come from the pair's invariants: distance and both elements
        pair_attr_dim = cfg.num_rbf + 2 * C
        if cfg.pair_scheme not in PAIR_SCHEMES:
            raise ValueError(f"pair_scheme must be one of {PAIR_SCHEMES}, got {cfg.pair_scheme!r}")
        self.tied_pairs = cfg.pair_scheme == "tied"
        if self.tied_pairs:
            if cfg.pair_product:
                raise ValueError("pair_product needs pair_scheme 'ordered' (the pair tensor product does not "
                                 "commute with the edge reversal that pair_scheme 'tied' relies on)")
            self.pairs = nn.ModuleList(TiedPairBlock(L, cfg.pair_mmax, C, Cp, cfg.num_rbf, cfg.norm,
                                                     norm_pairs=cfg.pair_norm) for _ in range(cfg.layers))
        else:
            self.pairs = nn.ModuleList(PairBlock(L, cfg.pair_mmax, C, Cp, cfg.num_rbf, cfg.norm,
                                                 product=cfg.pair_product, attr_dim=pair_attr_dim,
                                                 norm_pairs=cfg.pair_norm) for _ in range(cfg.layers))
        # the edge reversal F on coefficients and on packed Wigner rows (so2ops.nn.reversal):
        # the reversed orientation of a tied pair has stream F P and frame F D
        self.register_buffer("reversal", reversal_signs(L)[:, None].float(), persistent=False)
        self.register_buffer("reversal_wigner", reversal_wigner_signs(L).float(), persistent=False)
        self.block_channels = so2ops.block_channels(self.layout, L)
        self.diag_norm = so2ops.nn.SO2LayerNorm(L, C, degrees=cfg.norm)
        self.pair_norm = so2ops.nn.SO2LayerNorm(L, Cp, degrees=cfg.norm)
        Cb, H = self.block_channels, cfg.readout_hidden
        self.diag_readout = GatedReadout(L, C, Cb, H) if H else so2ops.nn.SO2Linear(L, L, C, Cb, gain=0.5)
        self.pair_readout = GatedReadout(L, Cp + 2 * C, Cb, H) if H else so2ops.nn.SO2Linear(L, L, Cp + 2 * C, Cb, gain=0.5)
        # element-specific (diagonal) and ordered-element-pair-specific (off-diagonal) input
        # scalings of the readouts per (m, l, channel); invariant, so equivariance holds; start at 1
        E = len(cfg.elements)
        if cfg.element_pair_readout:
            self.diag_readout_scale = nn.Parameter(torch.ones(E, num_mod(L, L), C))
            self.pair_readout_scale = nn.Parameter(torch.ones(E * E, num_mod(L, L), Cp + 2 * C))
        else:
            self.diag_readout_scale = self.pair_readout_scale = None
        # atomic reference: per element, a rotation-invariant diagonal block (c_q I per
        # equal-degree shell pair), fitted to the data before training (fit_atom_reference)
        self.atom_reference = nn.Parameter(torch.zeros(len(cfg.elements), self.block_channels))

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _z_index(elements: Sequence[int]) -> torch.Tensor:
        lut = torch.full((max(elements) + 1,), -1, dtype=torch.long)
        for i, z in enumerate(elements):
            lut[z] = i
        return lut

    def element_index(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        z = atomic_numbers.to(self.z_index.device)
        bad = (z < 1) | (z >= self.z_index.numel())
        idx = self.z_index[z.clamp(0, self.z_index.numel() - 1)]
        bad = bad | (idx < 0)
        if bool(bad.any()):
            zs = sorted(set(atomic_numbers[bad].tolist()))
            raise ValueError(f"atomic_numbers: element(s) {zs} not in this model "
                             f"(basis {self.config.basis}, elements {self.config.elements})")
        return idx

    def check_geometry(self, positions: torch.Tensor, batch: torch.Tensor) -> None:
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape [n_atoms, 3], got {list(positions.shape)}")
        if positions.shape[0] == 0:
            raise ValueError("positions: the geometry has no atoms")
        if not bool(torch.isfinite(positions).all()):
            raise ValueError("positions has NaN or infinite coordinates")
        with torch.no_grad():
            d = torch.cdist(positions, positions)
            d = d.masked_fill(batch[:, None] != batch[None, :], float("inf"))
            d.fill_diagonal_(float("inf"))
            dmin = float(d.min()) if d.numel() else float("inf")
        if dmin < MIN_DISTANCE:
            i, j = divmod(int(d.argmin()), d.shape[0])
            raise ValueError(f"positions: atoms {i} and {j} are {dmin:.3f} Angstrom apart "
                             f"(< {MIN_DISTANCE}); positions must be in Angstrom")

    # ------------------------------------------------------------------ forward
    def forward_batch(self, atomic_numbers: torch.Tensor, positions: torch.Tensor,
                      batch: Optional[torch.Tensor] = None,
                      index: Optional[HamiltonianIndex] = None) -> Tuple[torch.Tensor, HamiltonianIndex]:
        """Hamiltonians of a batch.

        Args:
            atomic_numbers: ``[N]`` int64; positions: ``[N, 3]`` Angstrom;
            batch: ``[N]`` sorted molecule index (default: one molecule).
        Returns:
            ``(H_flat[index.total], index)``: every molecule's ``n_ao x n_ao`` matrix
            row-major in a flat buffer (``index.unpack(H_flat)`` for matrices).

        The two halves, for CUDA graphs / ``torch.compile``: :meth:`prepare` (input checks,
        graph and index, reads the host) then :meth:`forward_prepared` (tensor work only).
        """
        inputs = self.prepare(atomic_numbers, positions, batch, index=index)
        return self.forward_prepared(positions, inputs), inputs.index

    def prepare(self, atomic_numbers: torch.Tensor, positions: torch.Tensor,
                batch: Optional[torch.Tensor] = None, index: Optional[HamiltonianIndex] = None) -> "ModelInputs":
        """Everything of a forward pass that reads data on the host, once per batch.

        Checks the input (:meth:`element_index`: known elements; :meth:`check_geometry`:
        shape, finite, no atoms closer than ``MIN_DISTANCE``), builds the graph's indices
        (message edges, pairs, candidate node frames: ``graph.build_topology``) and the
        ``HamiltonianIndex`` (unless ``index`` is given), and the index tensors of the
        assembly.  ``positions`` is only read (no gradient flows through this).

        Args: as :meth:`forward_batch`.
        Returns:
            a :class:`ModelInputs` for :meth:`forward_prepared`, on the model's device.
        """
        cfg = self.config
        dev = self.embedding.weight.device
        z = torch.as_tensor(atomic_numbers).to(dev).long()
        pos = torch.as_tensor(positions).detach().to(device=dev, dtype=self.embedding.weight.dtype)
        batch = torch.zeros_like(z) if batch is None else batch.to(dev).long()
        if z.dim() != 1 or batch.shape != z.shape or (pos.dim() == 2 and pos.shape[0] != z.shape[0]):
            raise ValueError(f"atomic_numbers ({list(z.shape)}), positions ({list(pos.shape)}) and batch "
                             f"({list(batch.shape)}) must have the same number of atoms")
        elem = self.element_index(z)
        self.check_geometry(pos, batch)
        if index is None:
            index = HamiltonianIndex.build(self.layout, z, batch)
        topo = build_topology(pos, batch, cfg.cutoff, cfg.pair_cutoff, cfg.node_frame, cfg.frame_temperature,
                              cfg.frame_window)
        n, n_pairs = z.shape[0], topo.pairs.shape[0]
        atoms = torch.arange(n, device=dev)
        diag_items = torch.stack([atoms, atoms], 1)
        no_frame = torch.zeros(n_pairs, dtype=torch.bool, device=dev)
        # rounds k >= 1 of the diagonal blocks (round 0 goes with the pairs' first orientation)
        round_atoms = tuple(topo.frame_atom[sel] for sel in topo.round_index[1:])
        return ModelInputs(
            atomic_numbers=z, batch=batch, elem=elem, index=index, topology=topo, n_atoms=n, n_pairs=n_pairs,
            frame_rounds=topo.frame_rounds,
            pairs_both=torch.cat([topo.pairs, topo.pairs.flip(1)], 0),
            diag_items=diag_items,
            first_items=torch.cat([diag_items, topo.pairs], 0),
            first_invariant=torch.cat([~topo.has_frame, no_frame]),
            round_items=tuple(torch.stack([fa, fa], 1) for fa in round_atoms),
            round_invariant=tuple(~topo.has_frame[fa] for fa in round_atoms),
            no_frame=no_frame,
            all_invariant=torch.ones(n, dtype=torch.bool, device=dev))

    def forward_prepared(self, positions: torch.Tensor, inputs: "ModelInputs") -> torch.Tensor:
        """The network on a prepared batch: ``H_flat[inputs.index.total]`` (as :meth:`forward_batch`).

        Tensor work only: no host read of a tensor value (no ``.item()``, ``bool(t)``,
        ``nonzero``, data-dependent shape), so it can be captured in a CUDA graph or
        compiled with ``torch.compile(fullgraph=True)``; the so2ops value checks, which do
        read the host, are on by default on CPU only and never run while compiling or
        capturing (docs/conventions.md).  The inputs were checked by :meth:`prepare`;
        nothing is checked here but shapes.

        Args:
            positions: ``[N, 3]`` Angstrom, differentiable: the edge, pair and frame vectors
                and the frame weights are recomputed from them (forces, training).  The
                graph (edges, pairs, candidate frames) is the one ``prepare`` chose; new
                positions of the same molecules are only valid while those do not change.
            inputs: from :meth:`prepare`.
        """
        cfg = self.config
        dev = self.embedding.weight.device
        pos = positions.to(device=dev, dtype=self.embedding.weight.dtype)
        n, n_pairs = inputs.n_atoms, inputs.n_pairs
        if pos.dim() != 2 or pos.shape[0] != n or pos.shape[1] != 3:
            raise ValueError(f"positions must have shape [{n}, 3] (the prepared batch), got {list(pos.shape)}")
        topo = inputs.topology
        g = graph_vectors(pos, topo)
        elem, z, batch, index = inputs.elem, inputs.atomic_numbers, inputs.batch, inputs.index
        # candidate node frames (docs/model.md "Node frames"); one per atom: no gather / sum
        f_atom, f_weight = (None, None) if topo.one_frame_per_atom else (g.frame_atom, g.frame_weight)
        # Every pair in both orientations, the two blocks averaged at assembly: the pair path
        # (frame r_j - r_i, inputs [x_i, x_j]) is not symmetric in (i, j), and H must not
        # depend on the order of the atoms (permutation equivariance).  "ordered" evaluates
        # the pair stream for both; "tied" once (rows 0..P), the reversed orientation being
        # F times it in the frame F D (docs/model.md "One evaluation per unordered pair").
        pairs = inputs.pairs_both
        L = cfg.lmax
        attrs = self.embedding(elem)  # [N, C]
        x = torch.cat([attrs[:, None, :], attrs.new_zeros(n, num_coeffs(L) - 1, attrs.shape[1])], dim=1)
        w_edge = so2ops.edge_wigner(g.edge_vec, L)
        w_node = so2ops.edge_wigner(g.frame_vec, L)
        if self.tied_pairs:
            w_pair1 = so2ops.edge_wigner(g.pair_vec, L)
            w_pair = torch.cat([w_pair1, w_pair1 * self.reversal_wigner.to(w_pair1.dtype)], 0)
        else:
            w_pair = so2ops.edge_wigner(torch.cat([g.pair_vec, -g.pair_vec], 0), L)
        # distance features once per unordered edge (both orientations share the distance)
        edge_rows = topo.edge_upper
        r_edge = g.edge_vec.norm(dim=1) if edge_rows is None else g.edge_vec[topo.upper_edges].norm(dim=1)
        rbf_e, env_e = self.rbf(r_edge), self.rbf.envelope(r_edge)
        # distance features once per unordered pair (both orientations share the distance);
        # the pair blocks' radial MLPs run on these P rows and repeat them for the reversed half
        r_pair = g.pair_vec.norm(dim=1)
        rbf_p = self.pair_rbf(r_pair)
        env_p = self.pair_rbf.envelope(r_pair) if cfg.pair_norm else None
        if self.tied_pairs:
            pair_feat = x.new_zeros(n_pairs, num_coeffs(L), cfg.pair_channels)
            for msg, node, pair in zip(self.messages, self.nodes, self.pairs):
                x = x + msg(x, g.edge_index, w_edge, rbf_e, env_e, edge_rows)
                x = x + node(x, w_node, attrs, g.has_frame, f_atom, f_weight)
                pair_feat = pair_feat + pair(x, pair_feat, topo.pairs, w_pair1, rbf_p, env_p)
        else:
            env_p = env_p.repeat(2) if env_p is not None else None
            pair_attr = (torch.cat([rbf_p.repeat(2, 1), attrs[pairs[:, 0]], attrs[pairs[:, 1]]], dim=1)
                         if cfg.pair_product else None)
            pair_feat = x.new_zeros(pairs.shape[0], num_coeffs(L), cfg.pair_channels)
            for msg, node, pair in zip(self.messages, self.nodes, self.pairs):
                x = x + msg(x, g.edge_index, w_edge, rbf_e, env_e, edge_rows)
                x = x + node(x, w_node, attrs, g.has_frame, f_atom, f_weight)
                pair_feat = pair_feat + pair(x, pair_feat, pairs, w_pair, rbf_p, pair_attr, env_p)
        # readout: diagonal blocks in node frames, off-diagonal blocks in pair frames
        xn = self.diag_norm(x)
        diag_mod = None
        if self.diag_readout_scale is not None:
            diag_mod = self.diag_readout_scale[elem if f_atom is None else elem[f_atom]]
        diag = self.diag_readout(so2ops.rotate(xn, w_node, L, index=f_atom), diag_mod)
        if f_weight is not None:
            diag = diag * f_weight[:, None, None].to(diag.dtype)
        if n_pairs:  # a Python int of the prepared batch, not a host read
            pair_mod = None
            if self.pair_readout_scale is not None:
                pair_mod = self.pair_readout_scale[elem[pairs[:, 0]] * len(cfg.elements) + elem[pairs[:, 1]]]
            pn = self.pair_norm(pair_feat)
            if self.tied_pairs:  # the reversed orientations' stream: F P (the norm commutes with F)
                pn = torch.cat([pn, pn * self.reversal.to(pn.dtype)], 0)
            off = 0.5 * self._pair_readout(pn, xn, pairs, w_pair, pair_mod)
        else:
            off = diag.new_zeros(0, diag.shape[1], diag.shape[2])
        # diagonal blocks: round k holds every atom's k-th candidate frame (assemble_blocks takes
        # each block at most once per call; the weighted blocks of the rounds add up); the
        # rounds' rows are prebuilt index tensors (a boolean mask would be a data-dependent shape)
        if topo.one_frame_per_atom:
            diag0, w0 = diag, w_node
        else:
            sel0 = topo.round_index[0]
            diag0, w0 = diag[sel0], w_node[sel0]
        h = so2ops.assemble_blocks(torch.cat([diag0, off[:n_pairs]], 0), torch.cat([w0, w_pair[:n_pairs]], 0),
                                   self.layout, z, inputs.first_items, batch, invariant=inputs.first_invariant,
                                   index=index)
        for sel, items, inv in zip(topo.round_index[1:], inputs.round_items, inputs.round_invariant):
            h = h + so2ops.assemble_blocks(diag[sel], w_node[sel], self.layout, z, items, batch, invariant=inv,
                                           index=index)
        if n_pairs:  # the reversed orientations: block (j, i), i.e. the transpose of an (i, j) estimate
            h = h + so2ops.assemble_blocks(off[n_pairs:], w_pair[n_pairs:], self.layout, z, pairs[n_pairs:], batch,
                                           invariant=inputs.no_frame, index=index)
        # + the atomic reference (invariant diagonal blocks per element)
        ref = torch.cat([self.atom_reference[elem][:, None, :],
                         x.new_zeros(n, num_coeffs(L) - 1, self.block_channels)], dim=1)
        h = h + so2ops.assemble_blocks(ref, w_node.new_zeros(n, w_node.shape[1]), self.layout, z, inputs.diag_items,
                                       batch, invariant=inputs.all_invariant, index=index)
        return h

    def _pair_readout(self, pn, xn, pairs, w_pair, pair_mod):
        """The off-diagonal readout of ``[LN(P), D x_i, D x_j]`` in the pair frames, with the
        first layer split by input (``so2ops.nn.split_so2_weight``) so that the gathers and
        rotations of ``x_i``, ``x_j`` are fused into it (``so2_gather_linear``): no
        ``[2P, K, Cp + 2C]`` concatenation.  The same function as the readout module on the
        concatenation.  Shapes: ``pn[2P, K, Cp]``, ``xn[N, K, C]``, ``pairs[2P, 2]``,
        ``w_pair[2P, W]``, ``pair_mod[2P, num_mod, Cp + 2C]`` or None -> ``[2P, K, Cb]``."""
        L, C, Cp = self.config.lmax, self.config.channels, self.config.pair_channels
        gated = isinstance(self.pair_readout, GatedReadout)
        first = self.pair_readout.lin1 if gated else self.pair_readout
        cout = first.out_channels
        w_p, w_i, w_j = split_so2_weight(first.weight, L, L, (Cp, C, C), cout)
        mod_p = mod_i = mod_j = None
        if pair_mod is not None:
            mod_p, mod_i, mod_j = (t.contiguous() for t in pair_mod.split([Cp, C, C], dim=2))
        y = so2ops.so2_linear(pn, w_p, L, L, cout, mod_p)
        y = y + so2ops.so2_gather_linear(xn, w_pair, pairs[:, 0], w_i, L, L, cout, mod_i)
        y = y + so2ops.so2_gather_linear(xn, w_pair, pairs[:, 1], w_j, L, L, cout, mod_j)
        return self.pair_readout.after_first(y) if gated else y

    def forward(self, atomic_numbers: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The network output ``[n_ao, n_ao]`` (PySCF AO order, Hartree) of one molecule, a torch tensor.

        Differentiable with respect to the parameters and ``positions`` (Angstrom).  It is
        what the network learned: the full Hamiltonian for target ``full``, but only the
        residual ``H - H_base`` for a ``core`` / ``minao`` checkpoint (``self.target``);
        ``predict`` adds the base back and returns the full Kohn-Sham H as NumPy.
        """
        h, index = self.forward_batch(torch.as_tensor(atomic_numbers), torch.as_tensor(positions))
        return index.unpack(h)[0]

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(self, atomic_numbers, positions_angstrom, charge: int = 0, full: bool = True,
                check_domain: bool = True, refine: bool = False) -> np.ndarray:
        """The full Kohn-Sham ``H[n_ao, n_ao]`` of one molecule: float64 NumPy, Hartree, PySCF AO order.

        See :meth:`predict_many` (``charge`` matters only for a ``minao`` target).
        """
        return self.predict_many([atomic_numbers], [positions_angstrom], charges=[charge], full=full,
                                 check_domain=check_domain, refine=refine)[0]

    @torch.no_grad()
    def predict_many(self, atomic_numbers: Sequence, positions: Sequence, batch_size: int = 32,
                     charges: Optional[Sequence[int]] = None, full: bool = True,
                     check_domain: bool = True, refine: bool = False) -> List[np.ndarray]:
        """Full Kohn-Sham Hamiltonians of many molecules (float64 NumPy, Hartree, PySCF AO order), batched.

        Args:
            atomic_numbers: one ``[n_atoms]`` array per molecule.
            positions: one ``[n_atoms, 3]`` array per molecule, Angstrom.
            batch_size: molecules per forward pass.
            charges: total charges (default 0); they matter only for the ``minao`` base.
            full: ``True``: the full H whatever the training target: for a ``core`` /
                ``minao`` model the base Hamiltonian (``qhnetv2.baseline``, PySCF, with the
                checkpoint's SCF ``settings``) is added to the network output.  ``False``:
                the network output only, as ``model(...)`` gives it.
            check_domain: a ``qhnetv2.domain.DomainWarning`` for each molecule outside the
                training domain recorded in the checkpoint (see :meth:`check_domain`).
            refine: return ``F[D(H)]`` instead, one Fock build (the checkpoint's functional,
                PySCF) from the closed-shell density of the prediction
                (:mod:`qhnetv2.consistency`): the first SCF iteration started from it, whose
                virtual spectrum a small error along a poorly conditioned overlap direction
                cannot spoil.  Open-shell molecules keep the prediction (a warning says so).
        """
        from ..inference import full_hamiltonians

        if len(atomic_numbers) != len(positions):
            raise ValueError(f"atomic_numbers has {len(atomic_numbers)} molecules but positions has {len(positions)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if check_domain:
            from ..inference import domain_flags

            domain_flags(self, None, atomic_numbers, positions)
        dev = self.embedding.weight.device
        dtype = self.embedding.weight.dtype
        out: List[np.ndarray] = []
        for s in range(0, len(atomic_numbers), batch_size):
            zs = [torch.as_tensor(np.asarray(z), dtype=torch.long) for z in atomic_numbers[s : s + batch_size]]
            ps = [torch.as_tensor(np.asarray(p, dtype=np.float64), dtype=dtype) for p in positions[s : s + batch_size]]
            batch = torch.cat([torch.full((len(z),), i, dtype=torch.long) for i, z in enumerate(zs)])
            h, index = self.forward_batch(torch.cat(zs).to(dev), torch.cat(ps).to(dev), batch.to(dev))
            out.extend(m.double().cpu().numpy() for m in index.unpack(h))
        if not full:
            if refine:
                raise ValueError("refine=True needs full=True (the refinement acts on the full Hamiltonian)")
            return out
        hs = full_hamiltonians(self, self.target, self.settings, atomic_numbers, positions, out, charges)
        if not refine:
            return hs
        import warnings

        from ..consistency import check_predictions
        from ..inference import base_settings

        if not (self.settings or {}).get("xc"):
            raise ValueError("refine=True needs the functional the labels were made with; this model carries "
                             "no SCF settings (load a trained checkpoint, or set model.settings = {'xc': ...})")
        checks = check_predictions(hs, atomic_numbers, positions, base_settings(self, {"settings": self.settings}),
                                   charges=charges)
        refined = []
        for k, (c, h) in enumerate(zip(checks, hs)):
            if c["refined"] is None:
                warnings.warn(f"molecule {k}: {c['reason']}; returning the unrefined prediction", stacklevel=2)
            refined.append(h if c["refined"] is None else c["refined"])
        return refined

    def check_domain(self, atomic_numbers, positions_angstrom, margin: Optional[float] = None,
                     rel_margin: Optional[float] = None) -> Tuple[bool, List[str]]:
        """``(ok, reasons)``: is the molecule inside the training domain, and if not, why.

        ``reasons`` are sentences such as ``"element F not in the training set ..."`` or
        ``"C-O distance 1.20 A below the trained range [1.35, 2.56]"`` (see
        :mod:`qhnetv2.domain`; ``margin`` / ``rel_margin`` override the distance tolerance,
        0.05 Angstrom / 3 %).  A model without a recorded domain (built directly, or an
        old checkpoint) returns ``(True, [])`` and notes once that nothing was checked.
        """
        from .. import domain as dom
        from ..inference import _n_ao

        if self.domain is None:
            if self.from_trained_checkpoint:  # an old checkpoint: say once that nothing is checked
                dom.note_no_domain(self.checkpoint_path)
            return True, []
        z = np.asarray(atomic_numbers).reshape(-1)
        kw = {k: v for k, v in (("margin", margin), ("rel_margin", rel_margin)) if v is not None}
        reasons = dom.domain_reasons(self.domain, z, positions_angstrom, n_ao=_n_ao(self, z), **kw)
        return not reasons, reasons

    # ------------------------------------------------------------------ atomic reference
    @torch.no_grad()
    def fit_atom_reference(self, molecules) -> None:
        """Set ``atom_reference`` to the mean invariant part of each element's diagonal blocks.

        ``molecules``: iterable of dicts with ``atomic_numbers`` and ``hamiltonian`` (PySCF order);
        for every equal-degree shell pair ``(s1, s2)`` of an atom, ``trace(H_s1s2) / (2l + 1)``
        averaged over the atoms of that element (the rotation-invariant part of the block).
        """
        tables = block_tables(self.layout, self.config.lmax, self.block_channels, torch.float64, "cpu")
        sums = torch.zeros(len(self.config.elements), self.block_channels, dtype=torch.float64)
        counts = torch.zeros(len(self.config.elements), dtype=torch.float64)
        for mol in molecules:
            zs = torch.as_tensor(mol["atomic_numbers"]).long()
            h = torch.as_tensor(np.asarray(mol["hamiltonian"]), dtype=torch.float64)
            ao = 0
            for z in zs.tolist():
                e = int(self.z_index[z])
                t = tables.types[(z, z, True)]
                for s in range(int(tables.sp_start[t]), int(tables.sp_start[t + 1])):
                    l1, l2, r0, c0, sym, _ = (int(v) for v in tables.sp_info[s])
                    q = int(tables.inv_src[s])
                    if q >= 0:
                        n1 = 2 * l1 + 1
                        blk = h[ao + r0 : ao + r0 + n1, ao + c0 : ao + c0 + n1]
                        sums[e, q] += torch.trace(blk) / n1
                counts[e] += 1
                ao += self.layout.n_ao(z)
        mean = sums / counts.clamp_min(1)[:, None]
        self.atom_reference.copy_(mean.to(self.atom_reference))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, extra: Optional[Dict] = None) -> Dict:
        """The checkpoint dict (``torch.save``-able, ``weights_only`` loadable).

        ``extra`` starts from what the model carries (``target``, ``settings``, ``domain``,
        when not the defaults of a model built directly), so re-saving a loaded model keeps
        them; keys of ``extra`` override.
        """
        carried = {}
        if self.target != "full":
            carried["target"] = self.target
        if self.settings:
            carried["settings"] = dict(self.settings)
        if self.domain is not None:
            carried["domain"] = self.domain
        return {"format": CHECKPOINT_FORMAT, "version": 1, "config": self.config.to_dict(),
                "layout": self.layout.to_dict(), "state_dict": self.state_dict(), "extra": {**carried, **(extra or {})},
                "dtype": str(self.embedding.weight.dtype).replace("torch.", "")}

    def save(self, path: str, extra: Optional[Dict] = None) -> None:
        """Write a checkpoint atomically (temporary file + rename)."""
        save_atomic(self.checkpoint(extra), path)

    @classmethod
    def from_checkpoint(cls, ckpt: Dict) -> "QHNetV2":
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a qhnetv2 checkpoint (missing format tag)")
        cfg = dict(ckpt["config"])
        # written before these keys existed: the model it was trained as (per-degree norm;
        # its node_frame is always saved)
        cfg.setdefault("norm", "separate")
        layout = BasisLayout.from_dict(ckpt["layout"])
        basis, elements = cfg.pop("basis"), cfg.pop("elements")
        model = cls(basis=basis, elements=elements, layout=layout, **cfg)
        dtype = {"float32": torch.float32, "float64": torch.float64}.get(ckpt.get("dtype", "float32"))
        if dtype is None:
            raise ValueError(f"checkpoint has an unsupported dtype {ckpt.get('dtype')!r}")
        model = model.to(dtype)
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint weights do not fit its own configuration: {exc}") from None
        model._take_training_info(ckpt.get("extra") or {})
        return model

    def _take_training_info(self, extra: Dict) -> None:
        """``target``, ``settings`` and ``domain`` from a checkpoint's ``extra``."""
        import warnings

        from ..baseline import check_target
        from ..domain import check_domain_record

        self.target = check_target(extra.get("target") or "full")
        self.settings = dict(extra.get("settings") or extra.get("scf_settings") or {}) or None
        domain = extra.get("domain")
        if domain is not None:
            try:
                domain = check_domain_record(domain)
            except ValueError as exc:  # predictions still work; only the check is lost
                warnings.warn(f"checkpoint: ignoring its training domain: {exc}", stacklevel=3)
                domain = None
        self.domain = domain
        self.from_trained_checkpoint = True

    @classmethod
    def load(cls, path: str, map_location="cpu") -> "QHNetV2":
        """A trained model from a checkpoint file: basis, elements, sizes, weights, and
        ``target``, ``settings``, ``domain`` (so ``predict`` returns the full H, checked
        against the training domain)."""
        model = cls.from_checkpoint(load_checkpoint(path, map_location))
        model.checkpoint_path = str(path)
        return model

    @classmethod
    def from_preset(cls, name: str, basis: str = "def2-svp", elements: Sequence[int] = (1, 6, 7, 8, 9),
                    **overrides) -> "QHNetV2":
        cfg = preset(name, **overrides).to_dict()
        cfg.pop("basis"), cfg.pop("elements")
        return cls(basis=basis, elements=elements, **cfg)


def save_atomic(obj, path: str) -> None:
    """``torch.save`` to ``path`` atomically: never a half-written checkpoint."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: str, map_location="cpu") -> Dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as f:
            data = f.read()
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, ...
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
