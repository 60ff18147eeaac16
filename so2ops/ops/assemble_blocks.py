"""``so2ops.assemble_blocks``: Hamiltonian blocks from local-frame features, any basis (custom op).

Output layout: a flat buffer holding every molecule's ``n_ao x n_ao`` matrix
row-major, one after the other (``HamiltonianIndex.mol_offset``); no padding,
so the MAE/MSE loss over all entries is a plain mean over the buffer, and
``HamiltonianIndex.unpack`` gives per-molecule matrices for the metrics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch

from .. import reference
from ..basis_layout import BasisLayout
from ..block_tables import BlockTables, block_channels, block_tables, check_block_lmax
from ..dispatch import current_backend, register_impl, select, use_backend
from ..layout import wigner_size
from ..validation import check_finite_values, check_float, check_index, check_tensor, check_values_enabled
from ._common import (autocast_inputs, autograd_backward, distinct_outputs, empty_or, extension_loaded, none_if_empty,
                      register_fp32_autocast)


@dataclass
class HamiltonianIndex:
    """Where each molecule's Hamiltonian lives in the flat buffer.

    ``build`` reads ``atomic_numbers`` and ``batch`` on the host: one device
    synchronisation per batch (and one copy back).  Build it once per batch and
    pass it as ``assemble_blocks(..., index=...)``, e.g. outside a CUDA graph or a
    compiled region; ``assemble_blocks`` itself then reads nothing on the host
    (value checks aside, docs/conventions.md).

    Attributes:
        mol_offset: ``[B]`` int64 start of molecule ``b``'s ``n_ao x n_ao`` block.
        mol_nao: ``[B]`` int64 number of AOs of each molecule.
        atom_ao: ``[N_atoms]`` int64 first AO of each atom inside its molecule.
        atom_mol: ``[N_atoms]`` int64 molecule of each atom (= ``batch``).
        total: ``sum(mol_nao ** 2)``.
    """

    mol_offset: torch.Tensor
    mol_nao: torch.Tensor
    atom_ao: torch.Tensor
    atom_mol: torch.Tensor
    total: int

    @classmethod
    def build(cls, layout: BasisLayout, atomic_numbers: torch.Tensor, batch: Optional[torch.Tensor] = None,
              num_molecules: Optional[int] = None) -> "HamiltonianIndex":
        """Index of a batch: ``atomic_numbers[N_atoms]``, ``batch[N_atoms]`` (sorted molecule ids)."""
        check_index("atomic_numbers", atomic_numbers, (None,), atomic_numbers.device)
        device = atomic_numbers.device
        if batch is None:
            batch = torch.zeros_like(atomic_numbers)
        check_index("batch", batch, (atomic_numbers.shape[0],), device)
        # the one host synchronisation: the index is built on the host, once per batch
        host = torch.stack([atomic_numbers, batch]).cpu()
        zs = host[0].tolist()
        counts = torch.tensor([layout.n_ao(z) for z in zs], dtype=torch.int64)  # raises for unknown elements
        b = host[1]
        if b.numel() and (bool((b[1:] < b[:-1]).any()) or int(b.min()) < 0):
            raise ValueError("batch must be non-negative and sorted (atoms of a molecule contiguous)")
        nb = (int(b.max()) + 1 if b.numel() else 0) if num_molecules is None else int(num_molecules)
        if b.numel() and int(b.max()) >= nb:
            raise ValueError(f"batch has molecule index {int(b.max())} but num_molecules={nb}")
        mol_nao = torch.zeros(nb, dtype=torch.int64).index_add_(0, b, counts)
        ends = torch.cumsum(counts, 0)
        mol_start = torch.cumsum(mol_nao, 0) - mol_nao
        atom_ao = ends - counts - mol_start[b] if b.numel() else counts
        sq = mol_nao * mol_nao
        mol_offset = torch.cumsum(sq, 0) - sq
        # one host-to-device copy for the three tables
        nb_, na_ = mol_offset.shape[0], atom_ao.shape[0]
        packed = torch.cat([mol_offset, mol_nao, atom_ao]).to(device)
        return cls(packed[:nb_], packed[nb_ : 2 * nb_], packed[2 * nb_ : 2 * nb_ + na_], batch, int(sq.sum()))

    def unpack(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """Per-molecule ``[n_ao, n_ao]`` views of a flat buffer."""
        out = []
        for off, n in zip(self.mol_offset.tolist(), self.mol_nao.tolist()):
            out.append(flat[off : off + n * n].view(n, n))
        return out


def _tables_args(t: BlockTables):
    return (t.sp_start, t.sp_info, t.entry_src, t.entry_coef, t.inv_src, t.basis_change)


@torch.library.custom_op("so2ops::assemble_blocks", mutates_args=())
def _assemble_blocks(
    features: torch.Tensor, wigner: torch.Tensor, item_atoms: torch.Tensor, item_type: torch.Tensor,
    invariant: torch.Tensor, atom_ao: torch.Tensor, atom_mol: torch.Tensor, mol_offset: torch.Tensor,
    mol_nao: torch.Tensor, sp_start: torch.Tensor, sp_info: torch.Tensor, entry_src: torch.Tensor,
    entry_coef: torch.Tensor, inv_src: torch.Tensor, basis_change: torch.Tensor, lmax_shell: int, total: int,
) -> torch.Tensor:
    check_finite_values("features", features)
    impl = select("assemble_blocks", features.device)
    return impl.forward(features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset,
                        mol_nao, sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change, lmax_shell, total)


@_assemble_blocks.register_fake
def _(features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset, mol_nao,
      sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change, lmax_shell, total):
    return features.new_empty(total)


@torch.library.custom_op("so2ops::assemble_blocks_backward", mutates_args=())
def _assemble_blocks_backward(
    grad: torch.Tensor, features: torch.Tensor, wigner: torch.Tensor, item_atoms: torch.Tensor,
    item_type: torch.Tensor, invariant: torch.Tensor, atom_ao: torch.Tensor, atom_mol: torch.Tensor,
    mol_offset: torch.Tensor, mol_nao: torch.Tensor, sp_start: torch.Tensor, sp_info: torch.Tensor,
    entry_src: torch.Tensor, entry_coef: torch.Tensor, inv_src: torch.Tensor, basis_change: torch.Tensor,
    lmax_shell: int, total: int, need_features: bool, need_wigner: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    impl = select("assemble_blocks", features.device)
    outs = impl.backward(grad.contiguous(), features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol,
                         mol_offset, mol_nao, sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change,
                         lmax_shell, total, need_features, need_wigner)
    return distinct_outputs(outs, (need_features, need_wigner), grad)


@_assemble_blocks_backward.register_fake
def _(grad, features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset, mol_nao,
      sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change, lmax_shell, total, need_features, need_wigner):
    return empty_or(need_features, features, grad), empty_or(need_wigner, wigner, grad)


def _setup(ctx, inputs, output):
    # Backward may run on an autograd worker thread, which does not see the
    # caller's use_backend() context: remember the choice made at forward time.
    ctx.backend = current_backend()
    ctx.save_for_backward(*inputs[:15])
    ctx.args = inputs[15:]


def _backward(ctx, grad):
    with use_backend(ctx.backend):
        saved = ctx.saved_tensors
        nf, nw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gf, gw = _assemble_blocks_backward(grad.contiguous(), *saved, *ctx.args, nf, nw)
        return (none_if_empty(nf, gf), none_if_empty(nw, gw)) + (None,) * 15


_assemble_blocks.register_autograd(_backward, setup_context=_setup)
register_fp32_autocast(_assemble_blocks)
register_fp32_autocast(_assemble_blocks_backward)  # a backward run inside the autocast block


def _feature_lmax(features: torch.Tensor) -> int:
    check_tensor("features", features, (None, None, None))
    k = features.shape[1]
    lmax = int(round(math.sqrt(k))) - 1
    if (lmax + 1) ** 2 != k:
        raise ValueError(f"features must have (lmax+1)**2 rows, got {k}")
    return lmax


def assemble_blocks(
    features: torch.Tensor,
    wigner: torch.Tensor,
    layout: BasisLayout,
    atomic_numbers: torch.Tensor,
    items: torch.Tensor,
    batch: Optional[torch.Tensor] = None,
    invariant: Optional[torch.Tensor] = None,
    index: Optional[HamiltonianIndex] = None,
) -> torch.Tensor:
    """Assemble Hamiltonians (PySCF AO order) from SO(2) features in local frames.

    Args:
        features: ``[I, (lmax+1)**2, C]`` per item, in that item's local frame, in the
            slot layout of ``so2ops.block_tables`` (``lmax >= 2 * largest shell degree``,
            ``C >= so2ops.block_channels(layout, lmax)``).
        wigner: ``[I, wigner_size(L)]``, ``L >= layout.lmax_shell``: the packed
            ``edge_wigner`` of each item's frame axis (only degrees ``<= lmax_shell`` are read).
        layout: the basis (``BasisLayout``).
        atomic_numbers: ``[N_atoms]`` int64.
        items: ``[I, 2]`` int64 atom indices; ``(i, i)`` is atom ``i``'s diagonal block,
            ``(i, j)`` the block ``H[i, j]`` (and ``H[j, i]`` = its transpose).  Each
            block at most once; blocks of no item are zero.
        batch: ``[N_atoms]`` int64 sorted molecule index (default: one molecule).
        invariant: optional ``[I]`` bool: items without a frame (an isolated atom),
            whose block is built from rotation-invariant parts only.
        index: a prebuilt ``HamiltonianIndex`` of ``(atomic_numbers, batch)`` to reuse.
    Returns:
        ``[index.total]`` flat buffer of the molecules' ``n_ao x n_ao`` Hamiltonians
        (``HamiltonianIndex.build(layout, atomic_numbers, batch).unpack(H)``); float32
        under ``torch.autocast``.

    Host synchronisation: building the ``HamiltonianIndex`` reads ``atomic_numbers``
    and ``batch`` on the host (once per batch: pass ``index`` to reuse it, e.g. inside a
    CUDA graph or ``torch.compile``); the value checks of ``items`` (on by default on
    CPU only, docs/conventions.md) read it too.  Nothing else syncs in this wrapper.
    """
    if isinstance(features, torch.Tensor):
        features, wigner = autocast_inputs(features.device, features, wigner)
    lmax = _feature_lmax(features)
    check_block_lmax(layout, lmax)
    check_float("features", features)
    n_items, c = features.shape[0], features.shape[2]
    need_c = block_channels(layout, lmax)
    if c < need_c:
        raise ValueError(f"features have {c} channels but the basis needs {need_c} at lmax={lmax}")
    device = features.device
    check_index("items", items, (None, 2), device)
    if items.shape[0] != n_items:
        raise ValueError(f"items has {items.shape[0]} rows but features has {n_items} items")
    check_tensor("wigner", wigner, (n_items, None), dtype=features.dtype, device=device)
    lsh = layout.lmax_shell
    if wigner.shape[1] < wigner_size(lsh):
        raise ValueError(f"wigner has {wigner.shape[1]} columns; the basis needs wigner_size({lsh}) = {wigner_size(lsh)}")
    check_index("atomic_numbers", atomic_numbers, (None,), device)
    if index is None:
        index = HamiltonianIndex.build(layout, atomic_numbers, batch)
    n_atoms = atomic_numbers.shape[0]
    if index.atom_ao.shape[0] != n_atoms:
        raise ValueError(f"index has {index.atom_ao.shape[0]} atoms but atomic_numbers has {n_atoms}")
    if invariant is None:
        invariant = torch.zeros(n_items, dtype=torch.bool, device=device)
    check_tensor("invariant", invariant, (n_items,), device=device)
    tables = block_tables(layout, lmax, c, features.dtype, device)
    # value checks read data on the host: skipped while compiling / capturing, off by default on GPU
    checking = check_values_enabled(device)
    if n_items and checking:
        lo, hi = int(items.min()), int(items.max())
        if lo < 0 or hi >= n_atoms:
            raise IndexError(f"items has atom indices in [{lo}, {hi}] but must lie in [0, {n_atoms})")
        if bool((index.atom_mol[items[:, 0]] != index.atom_mol[items[:, 1]]).any()):
            raise ValueError("items pairs atoms of different molecules")
        key = torch.minimum(items[:, 0], items[:, 1]) * n_atoms + torch.maximum(items[:, 0], items[:, 1])
        if torch.unique(key).numel() != n_items:
            raise ValueError("items lists a block twice ((i, j) and (j, i) are the same block)")
    if n_items:
        zi = atomic_numbers[items[:, 0]]
        zj = atomic_numbers[items[:, 1]]
        top = tables.z_index.numel() - 1
        ei, ej = tables.z_index[zi.clamp(0, top)], tables.z_index[zj.clamp(0, top)]
        if checking:
            bad = (ei < 0) | (ej < 0) | (zi > top) | (zj > top)
            if bool(bad.any()):
                raise ValueError(f"atomic_numbers: an element is not in the basis layout "
                                 f"(elements {list(layout.elements)})")
        item_type = tables.type_lut[ei, ej, (items[:, 0] == items[:, 1]).long()]
    else:
        item_type = items.new_empty(0)
    w = wigner[:, : wigner_size(lsh)].contiguous()
    return _assemble_blocks(features.contiguous(), w, items.contiguous(), item_type.contiguous(),
                            invariant.to(torch.bool).contiguous(), index.atom_ao, index.atom_mol, index.mol_offset,
                            index.mol_nao, *_tables_args(tables), lsh, index.total)


# ------------------------------------------------------------------ backends
def _ref_backward(grad, features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset, mol_nao,
                  sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change, lmax_shell, total,
                  need_features, need_wigner):
    rest = (item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset, mol_nao, sp_start, sp_info,
            entry_src, entry_coef, inv_src, basis_change, lmax_shell, total)
    fn = lambda f, w: reference.assemble_blocks(f, w, *rest)  # noqa: E731
    return tuple(autograd_backward(fn, [features, wigner], [need_features, need_wigner], grad))


register_impl("assemble_blocks", "reference", reference.assemble_blocks, _ref_backward)


def _cxx_forward(*args):
    return torch.ops.so2ops_C.assemble_blocks_forward(*args)


def _cxx_backward(*args):
    return tuple(torch.ops.so2ops_C.assemble_blocks_backward(*args))


if extension_loaded() and hasattr(torch.ops.so2ops_C, "assemble_blocks_forward"):
    for _b in ("cpu", "cuda"):
        register_impl("assemble_blocks", _b, _cxx_forward, _cxx_backward)

__all__ = ["HamiltonianIndex", "assemble_blocks"]
