"""Reference ``assemble_blocks``: Hamiltonian blocks from local-frame features.

For every item (an atom: diagonal block; an unordered atom pair: off-diagonal
block) and every shell pair of its type (``so2ops.block_tables``):

    B_loc = table(features)                       local block, e3nn basis, frame axis = y
    H_blk = U_{l1} D^{l1}(R)^T B_loc D^{l2}(R) U_{l2}^T   global frame, PySCF basis

written at ``H[i-shell, j-shell]`` and its transpose at ``H[j-shell, i-shell]``
(symmetrised ``(H_blk + H_blk^T) / 2`` for a diagonal item's shell with itself).
An invariant-only item (no frame) takes ``D = I`` and ``B_loc = c I`` (``l1 == l2``)
or 0, with ``c`` its order-0 ``(0, 0)`` slot.  Output: every molecule's
``n_ao x n_ao`` matrix row-major, one after the other in a flat buffer.
"""
from __future__ import annotations

import torch

from ..layout import wigner_offset


def _blocks(wigner: torch.Tensor, l: int) -> torch.Tensor:
    n = 2 * l + 1
    o = wigner_offset(l)
    return wigner[:, o : o + n * n].reshape(-1, n, n)


def assemble_blocks(
    features: torch.Tensor,
    wigner: torch.Tensor,
    item_atoms: torch.Tensor,
    item_type: torch.Tensor,
    invariant: torch.Tensor,
    atom_ao: torch.Tensor,
    atom_mol: torch.Tensor,
    mol_offset: torch.Tensor,
    mol_nao: torch.Tensor,
    sp_start: torch.Tensor,
    sp_info: torch.Tensor,
    entry_src: torch.Tensor,
    entry_coef: torch.Tensor,
    inv_src: torch.Tensor,
    basis_change: torch.Tensor,
    lmax_shell: int,
    total: int,
) -> torch.Tensor:
    """See the module docstring; shapes are those of ``so2ops.ops.assemble_blocks``.

    Returns:
        ``[total]`` flat Hamiltonians (``total = sum_b mol_nao[b]**2``).
    """
    n_items = features.shape[0]
    flat = features.reshape(n_items, features.shape[1] * features.shape[2])  # not -1: I may be 0
    # a zero column for the "-1" (no term) table entries
    flat = torch.cat([flat, flat.new_zeros(n_items, 1)], dim=1)
    zero_col = flat.shape[1] - 1
    out = features.new_zeros(total)
    if n_items == 0:
        return out
    inv = invariant.to(torch.bool)
    eye_dtype = dict(dtype=features.dtype, device=features.device)
    for t in torch.unique(item_type).tolist():
        sel = torch.nonzero(item_type == t).flatten()
        x = flat.index_select(0, sel)
        inv_t = inv.index_select(0, sel)
        ai, aj = item_atoms[sel, 0], item_atoms[sel, 1]
        mol = atom_mol.index_select(0, ai)
        nao = mol_nao.index_select(0, mol)
        base = mol_offset.index_select(0, mol)
        ao_i, ao_j = atom_ao.index_select(0, ai), atom_ao.index_select(0, aj)
        d_sel = wigner.index_select(0, sel)
        for s in range(int(sp_start[t]), int(sp_start[t + 1])):
            l1, l2, r0, c0, sym, e0 = (int(v) for v in sp_info[s])
            n1, n2 = 2 * l1 + 1, 2 * l2 + 1
            src = entry_src[e0 : e0 + n1 * n2].clone()
            src[src < 0] = zero_col
            b = (x[:, src] * entry_coef[e0 : e0 + n1 * n2]).sum(-1).view(-1, n1, n2)
            if bool(inv_t.any()):
                if l1 == l2 and int(inv_src[s]) >= 0:
                    b_inv = x[:, int(inv_src[s])][:, None, None] * torch.eye(n1, **eye_dtype)
                else:
                    b_inv = torch.zeros_like(b)
                b = torch.where(inv_t[:, None, None], b_inv, b)
            u1 = basis_change[wigner_offset(l1) : wigner_offset(l1) + n1 * n1].view(n1, n1)
            u2 = basis_change[wigner_offset(l2) : wigner_offset(l2) + n2 * n2].view(n2, n2)
            d1 = torch.where(inv_t[:, None, None], torch.eye(n1, **eye_dtype), _blocks(d_sel, l1))
            d2 = torch.where(inv_t[:, None, None], torch.eye(n2, **eye_dtype), _blocks(d_sel, l2))
            m1 = u1 @ d1.transpose(1, 2)  # [n, n1, n1]
            m2 = u2 @ d2.transpose(1, 2)
            h = m1 @ b @ m2.transpose(1, 2)  # [n, n1, n2]
            rows = (ao_i + r0)[:, None] + torch.arange(n1, device=h.device)[None]  # [n, n1]
            cols = (ao_j + c0)[:, None] + torch.arange(n2, device=h.device)[None]  # [n, n2]
            if sym:
                h = 0.5 * (h + h.transpose(1, 2))
                idx = base[:, None, None] + rows[:, :, None] * nao[:, None, None] + cols[:, None, :]
                out = out.index_add(0, idx.reshape(-1), h.reshape(-1))
            else:
                idx = base[:, None, None] + rows[:, :, None] * nao[:, None, None] + cols[:, None, :]
                idx_t = base[:, None, None] + cols[:, :, None] * nao[:, None, None] + rows[:, None, :]
                out = out.index_add(0, idx.reshape(-1), h.reshape(-1))
                out = out.index_add(0, idx_t.reshape(-1), h.transpose(1, 2).reshape(-1))
    return out
