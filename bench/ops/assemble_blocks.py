"""``assemble_blocks``: Hamiltonians (def2-SVP, H/C/N/O) from local-frame SO(2) features.

Two entries:

* ``assemble_blocks``: the op alone (slot features ``[I, 25, block_channels]``
  of every item -> flat Hamiltonians), every so2ops backend against the
  ``reference``; gradient w.r.t. the features (the Wigner blocks need none
  without autograd forces).
* ``assemble_blocks_head``: the whole feature -> Hamiltonian head from the
  same hidden features ``[I, 25, C]`` (global frame, ``C x (0e..4e)``):
  so2ops route ``rotate`` into the item frame, one ``so2_linear`` to
  ``block_channels``, ``assemble_blocks`` (each so2ops backend), against the
  QHNet-style Clebsch-Gordan route (``bench.baselines.cg_blocks``: e3nn
  ``o3.Linear`` to the block irreps, CG expansion, scatter).  Gradients w.r.t.
  the hidden features and the linear weights.

Workload: a batch of QM9-size molecules (8 x 18 atoms at the headline), random
geometry, random H/C/N/O composition (fixed by the shape, about half H), all
atom pairs and every atom's diagonal as items.  The basis is def2-SVP
hard-coded (``H: s s p``, ``C/N/O: s s s p p d``, PySCF's shell order; the
same as ``qhnetv2.data.basis.element_shells('def2-svp', Z)``), so the bench
needs no PySCF.  Pair items use the pair axis as frame, diagonal items a random
direction (a model would use e.g. its nearest neighbour).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, Tuple

import torch

import so2ops
from so2ops import BasisLayout, HamiltonianIndex
from so2ops.block_tables import item_shell_pairs
from so2ops.layout import num_coeffs, weight_size, wigner_size

from .. import inputs as inp
from ..baselines import cg_blocks, e3nn_tp
from ..counts import Count, combine
from ..registry import Entry, Impl, Shape, Workload, register, standard_cases
from ..so2_backends import backend_impls, leaves
from .rotate import rotate_count
from .so2_linear import linear_count

#: def2-SVP shell degrees in PySCF order (one entry per contracted radial function).
DEF2_SVP = {1: (0, 0, 1), 6: (0, 0, 0, 1, 1, 2), 7: (0, 0, 0, 1, 1, 2), 8: (0, 0, 0, 1, 1, 2)}
LAYOUT = BasisLayout(DEF2_SVP, name="def2-svp")
#: QM9-like element frequencies (H, C, N, O).
_ELEMENTS, _FREQ = (1, 6, 7, 8), (0.51, 0.35, 0.06, 0.08)
LMAX = 4  # features degree: 2 x the largest shell degree (d)


@lru_cache(maxsize=None)
def composition(molecules: int, atoms: int) -> Tuple[Tuple[int, ...], ...]:
    """Atomic numbers of each molecule: a function of the shape alone (the counts depend on it)."""
    g = inp.generator(7919 * molecules + atoms)
    idx = torch.multinomial(torch.tensor(_FREQ), molecules * atoms, replacement=True, generator=g)
    zs = torch.tensor(_ELEMENTS)[idx].view(molecules, atoms)
    # at least one heavy atom per molecule
    zs[:, 0] = torch.where(zs[:, 0] == 1, 6, zs[:, 0])
    return tuple(tuple(int(z) for z in row) for row in zs)


def batch_items(molecules: int, atoms: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(atomic_numbers[N], batch[N], items[I, 2])``: every molecule's diagonals and pairs ``i < j``."""
    zs = composition(molecules, atoms)
    z = torch.tensor([a for row in zs for a in row], dtype=torch.int64)
    batch = torch.arange(molecules, dtype=torch.int64).repeat_interleave(atoms)
    iu = torch.triu_indices(atoms, atoms)  # diagonal included
    items = torch.cat([iu.T + b * atoms for b in range(molecules)])
    return z, batch, items


def geometry(molecules: int, atoms: int, items: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Frame axis of every item ``[I, 3]``: pair axes of random positions, random node axes for diagonals."""
    side = 1.6 * atoms ** (1 / 3)  # about a bond length between neighbours
    pos = torch.rand(molecules * atoms, 3, generator=g, dtype=torch.float64) * side
    vec = pos[items[:, 1]] - pos[items[:, 0]]
    diag = items[:, 0] == items[:, 1]
    vec[diag] = torch.randn(int(diag.sum()), 3, generator=g, dtype=torch.float64)
    return vec


def reference_args(features: torch.Tensor, wigner: torch.Tensor, z: torch.Tensor, batch: torch.Tensor,
                   items: torch.Tensor) -> tuple:
    """The positional arguments of ``so2ops.reference.assemble_blocks`` (what the op wrapper passes)."""
    from so2ops.block_tables import block_tables

    tables = block_tables(LAYOUT, LMAX, features.shape[2], features.dtype, features.device)
    index = HamiltonianIndex.build(LAYOUT, z, batch)
    item_type = tables.type_lut[tables.z_index[z[items[:, 0]]], tables.z_index[z[items[:, 1]]],
                                (items[:, 0] == items[:, 1]).long()]
    invariant = torch.zeros(items.shape[0], dtype=torch.bool, device=features.device)
    lsh = LAYOUT.lmax_shell
    return (features, wigner[:, : wigner_size(lsh)].contiguous(), items, item_type, invariant, index.atom_ao,
            index.atom_mol, index.mol_offset, index.mol_nao, tables.sp_start, tables.sp_info, tables.entry_src,
            tables.entry_coef, tables.inv_src, tables.basis_change, lsh, index.total)


def _shape_dims(shape: Dict) -> Tuple[int, int, int, int]:
    """``(items, n_atoms, total, block channels)``."""
    z, batch, items = batch_items(shape["B"], shape["A"])
    index = HamiltonianIndex.build(LAYOUT, z, batch)
    return items.shape[0], z.shape[0], index.total, so2ops.block_channels(LAYOUT, LMAX)


@lru_cache(maxsize=None)
def assemble_macs(molecules: int, atoms: int) -> int:
    """Multiply-adds of the reference's contractions over the batch.

    Per item and shell pair ``(n1, n2) = (2l1+1, 2l2+1)``: ``M_l = U_l D_l^T``
    for both shells (``n1^3 + n2^3``) and ``M1 B M2^T`` (``n1^2 n2 + n1 n2^2``).
    A kernel that forms ``M_l`` once per item and degree does less than this.
    The table step (each block entry is one or two signed feature entries) is
    element-wise and not counted.
    """
    z, _, items = batch_items(molecules, atoms)
    per_type: Dict[Tuple[int, int, bool], int] = {}
    total = 0
    for i, j in items.tolist():
        key = (int(z[i]), int(z[j]), i == j)
        if key not in per_type:
            macs = 0
            for l1, l2, *_ in item_shell_pairs(LAYOUT, *key):
                n1, n2 = 2 * l1 + 1, 2 * l2 + 1
                macs += n1 ** 3 + n2 ** 3 + n1 * n1 * n2 + n1 * n2 * n2
            per_type[key] = macs
        total += per_type[key]
    return total


@lru_cache(maxsize=None)
def assemble_bwd_macs(molecules: int, atoms: int) -> int:
    """Backward (features only): ``M1^T G M2`` per shell pair, ``n1^2 n2 + n1 n2^2``."""
    z, _, items = batch_items(molecules, atoms)
    total = 0
    for i, j in items.tolist():
        for l1, l2, *_ in item_shell_pairs(LAYOUT, int(z[i]), int(z[j]), i == j):
            n1, n2 = 2 * l1 + 1, 2 * l2 + 1
            total += n1 * n1 * n2 + n1 * n2 * n2
    return total


def assemble_count(shape: Dict, itemsize: int) -> Tuple[Count, Count]:
    """``(fwd, bwd)`` of ``assemble_blocks`` (see ``bench.counts``); gradient of the features only."""
    n_items, _, total, cb = _shape_dims(shape)
    feats = n_items * num_coeffs(LMAX) * cb
    wig = n_items * wigner_size(LAYOUT.lmax_shell)
    fwd = Count(2 * assemble_macs(shape["B"], shape["A"]), itemsize * (feats + wig + total) + 16 * n_items)
    bwd = Count(2 * assemble_bwd_macs(shape["B"], shape["A"]), itemsize * (total + wig + feats) + 16 * n_items)
    return fwd, bwd


def shapes(quick: bool, gpu: bool) -> Shape:
    """Headline 8 molecules x 18 atoms (``--quick``: 2 x 9); sweeps: molecules per batch, atoms per molecule (QM9 9..29)."""
    sh = Shape()
    if quick:
        # the reference loops over item types x shell pairs in Python: CI-sized
        sh.add("headline", B=2, A=9)
        return sh
    sh.add("headline", B=8, A=18)
    for b in ((1, 8, 32, 128) if gpu else (1, 8, 32)):
        sh.add("molecules", B=b, A=18)
    for a in (9, 18, 29):
        sh.add("atoms", B=8, A=a)
    return sh


def _common_inputs(shape, dtype, device, g, wigner_lmax):
    z, batch, items = batch_items(shape["B"], shape["A"])
    vec = geometry(shape["B"], shape["A"], items, g)
    return {
        "atomic_numbers": z.to(device), "batch": batch.to(device), "items": items.to(device),
        "wigner": inp.wigner_of(vec, wigner_lmax, dtype, device),
    }


class AssembleBlocks(Entry):
    name = "assemble_blocks"
    kind = "op"
    bound = "bytes"
    description = "Hamiltonian blocks (def2-SVP, H/C/N/O) from local-frame slot features: table, rotate to global, PySCF basis, scatter"

    def cases(self, quick, device):
        return standard_cases(shapes(quick, device.type == "cuda"), quick, (torch.float64,))

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        t = _common_inputs(shape, dtype, device, g, LAYOUT.lmax_shell)
        n_items, _, _, cb = _shape_dims(shape)
        t["features"] = inp.randn((n_items, num_coeffs(LMAX), cb), g, dtype, device)
        return t

    def impls(self, device):
        def bind(inputs, shape):
            t = leaves(inputs, ("features",))
            # built once per batch, as a data loader would (host-side bookkeeping)
            index = HamiltonianIndex.build(LAYOUT, t["atomic_numbers"], t["batch"])

            def fwd():
                return so2ops.assemble_blocks(t["features"], t["wigner"], LAYOUT, t["atomic_numbers"], t["items"],
                                              t["batch"], index=index)

            return fwd, [t["features"]]

        return backend_impls("assemble_blocks", device, bind)

    def count(self, shape, mode, itemsize):
        f, b = assemble_count(shape, itemsize)
        return combine(f, b, mode)

    def mem_estimate(self, shape, itemsize):
        n_items, _, total, cb = _shape_dims(shape)
        # the reference keeps per shell pair gathered entries and per-item blocks, and copies the buffer per index_add
        return itemsize * (8 * n_items * num_coeffs(LMAX) * cb + 200 * n_items * 25 + 6 * total)


# ------------------------------------------------------------------ the whole head, against the CG route
def head_count(shape: Dict, itemsize: int) -> Tuple[Count, Count]:
    """``(fwd, bwd)`` of rotate + so2_linear + assemble_blocks (grads: hidden features, linear weight)."""
    n_items, _, total, cb = _shape_dims(shape)
    c = shape["C"]
    rf, rb = rotate_count(LMAX, c, n_items, n_items, itemsize)
    lf, lb = linear_count(LMAX, LMAX, c, cb, n_items, itemsize)
    af, ab = assemble_count(shape, itemsize)
    # compulsory traffic of the head alone: hidden features, Wigner, weights in; Hamiltonians out
    k = num_coeffs(LMAX)
    w = weight_size(LMAX, LMAX, c, cb)
    ins = n_items * k * c + n_items * wigner_size(LMAX) + w
    fwd = Count(rf.flops + lf.flops + af.flops, itemsize * (ins + total) + 16 * n_items)
    bwd = Count(rb.flops + lb.flops + ab.flops, itemsize * (total + ins + n_items * k * c + w) + 16 * n_items)
    return fwd, bwd


def _cg_count(shape, mode, itemsize):
    n_items, _, total, _ = _shape_dims(shape)
    f, b = cg_blocks.count(LAYOUT, n_items, shape["C"], LMAX, total, itemsize)
    return combine(f, b, mode)


class AssembleBlocksHead(Entry):
    name = "assemble_blocks_head"
    kind = "op"
    bound = "flops"
    description = ("hidden features (global frame) -> Hamiltonians: rotate + so2_linear + assemble_blocks "
                   "vs the QHNet-style CG route (o3.Linear + CG expansion)")

    def cases(self, quick, device):
        def shapes_c(quick, gpu):
            sh = Shape()
            for s, tags in shapes(quick, gpu).items:
                for tag in tags:
                    sh.add(tag, C=128, **s)
            return sh

        # --quick: float32 only (the float64 path of the op is exercised by the assemble_blocks entry)
        return standard_cases(shapes_c(quick, device.type == "cuda"), quick, () if quick else (torch.float64,))

    def make_inputs(self, shape, dtype, device, seed):
        g = inp.generator(seed)
        t = _common_inputs(shape, dtype, device, g, LMAX)
        n_items, _, _, cb = _shape_dims(shape)
        c = shape["C"]
        t["hidden"] = inp.randn((n_items, num_coeffs(LMAX), c), g, dtype, device)
        t["weight"] = inp.randn((weight_size(LMAX, LMAX, c, cb),), g, dtype, device, scale=((LMAX + 1) * c) ** -0.5)
        return t

    def impls(self, device):
        grad = ("hidden", "weight")

        def bind(inputs, shape):
            t = leaves(inputs, grad)
            index = HamiltonianIndex.build(LAYOUT, t["atomic_numbers"], t["batch"])
            cb = so2ops.block_channels(LAYOUT, LMAX)

            def fwd():
                local = so2ops.rotate(t["hidden"], t["wigner"], LMAX)
                y = so2ops.so2_linear(local, t["weight"], LMAX, LMAX, cb)
                return so2ops.assemble_blocks(y, t["wigner"], LAYOUT, t["atomic_numbers"], t["items"], t["batch"],
                                              index=index)

            return fwd, [t[k] for k in grad]

        impls = backend_impls("assemble_blocks", device, bind)
        reason = e3nn_tp.available()
        impls.append(Impl(
            "cg_blocks", "baseline", _cg_build, same_math=False, is_baseline=True, count=_cg_count,
            skip=lambda shape, dtype: reason,
            note="QHNet style: e3nn o3.Linear to the block irreps + CG expansion (wigner_3j) + scatter",
        ))
        return impls

    def count(self, shape, mode, itemsize):
        f, b = head_count(shape, itemsize)
        return combine(f, b, mode)

    def mem_estimate(self, shape, itemsize):
        n_items, _, total, cb = _shape_dims(shape)
        return itemsize * (10 * n_items * num_coeffs(LMAX) * max(shape["C"], cb) + 200 * n_items * 25 + 6 * total)


def _cg_build(inputs, shape):
    fwd, grads = cg_blocks.build(inputs, shape, LAYOUT, LMAX)
    return Workload(forward=fwd, grad_inputs=grads)


ENTRY = register(AssembleBlocks())
HEAD = register(AssembleBlocksHead())
