"""Triton ``assemble_blocks``: matches ``so2ops.reference.assemble_blocks``.

Work units: one per (item, shell pair of the item's type), listed with a few
torch ops per call (``_units``: items in order, each item's shell pairs
contiguous) without a host synchronisation: the lists and the launch grid are
sized by a host-side bound (items x the most shell pairs of one item type, read
once per block table) and the kernels read the true count on the device.  A
program handles ``BU`` consecutive units (``BU = 1`` on a GPU for ``g`` shells,
more for smaller tiles), each on ``NP x NP`` register tiles,
``NP = next_pow2(2 * lmax_shell + 1)`` (<= 16), masked to the shell sizes
``n1 = 2 l1 + 1``, ``n2 = 2 l2 + 1``:

* ``B`` (``n1 x n2``): each entry is ``coef0 x[src0] + coef1 x[src1]`` from the
  sparse table (``entry_src`` / ``entry_coef``); an invariant item takes
  ``B = x[inv_src] I`` (``l1 == l2``, ``inv_src >= 0``) or 0, and ``D = I``;
* ``M_l = U_l D_l^T``, ``H = M1 B M2^T`` as broadcast-and-sum products (the
  tiles are far below ``tl.dot``'s 16 x 16 minimum);
* ``H`` (symmetrised ``(H + H^T)/2`` for a diagonal item's shell with itself)
  is stored at ``H[i-shell, j-shell]`` and, unless symmetric, transposed at
  ``H[j-shell, i-shell]``.  Items never overlap, so plain stores into a zeroed
  buffer suffice.

Backward, same units (``_assemble_bwd_kernel``): ``G`` = gradient of the
block (``grad[idx] + grad[idx^T]``, or ``(G + G^T)/2`` when symmetric),

* ``dB = M1^T G M2``, scattered to the features with ``tl.atomic_add`` into a
  float32/float64 buffer: every feature slot of an item receives at most two
  terms, both from the same shell pair, so ``0 + a + b == 0 + b + a`` and the
  result is bitwise deterministic;
* ``dD1 = (G M2 B^T)^T U1``, ``dD2 = (G^T M1 B)^T U2`` (0 for invariant items)
  are written per unit into a compact buffer (``n1^2 + n2^2`` values per unit,
  the size of the unit's output blocks), and ``_wigner_reduce_kernel`` (one
  program per (item, degree ``l``)) adds an item's unit contributions of
  degree ``l`` in unit order: no atomics, deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.utils.weak import WeakIdKeyDictionary

from ..dispatch import register_impl
from ._launch import on_device
from .rotate import acc_dtype, tl_acc


@triton.jit
def _mm(a, b):
    """Batched ``a @ b`` of ``[BU, NP, NP]`` tiles."""
    return tl.sum(a[:, :, :, None] * b[:, None, :, :], axis=2)


@triton.jit
def _mm_nt(a, b):
    """Batched ``a @ b^T``."""
    return tl.sum(a[:, :, None, :] * b[:, None, :, :], axis=3)


@triton.jit
def _mm_tn(a, b):
    """Batched ``a^T @ b``."""
    return tl.sum(a[:, :, :, None] * b[:, :, None, :], axis=1)


@triton.jit
def _t(a):
    """Batched transpose of ``[BU, NP, NP]``."""
    return tl.permute(a, (0, 2, 1))


@triton.jit
def _woff(l):
    """Offset of degree ``l``'s block in packed Wigner / basis-change storage."""
    return l * (2 * l - 1) * (2 * l + 1) // 3


@triton.jit
def _unit(
    feat_ptr, wig_ptr, unit_item_ptr, unit_sp_ptr, atoms_ptr, inv_ptr, atom_ao_ptr, atom_mol_ptr,
    mol_off_ptr, mol_nao_ptr, sp_info_ptr, esrc_ptr, ecoef_ptr, inv_src_ptr, basis_ptr,
    W_ptr, KC, PW, NP: tl.constexpr, BU: tl.constexpr, ACC: tl.constexpr,
):
    """Everything ``BU`` work units need: local blocks, both ``M``, output addresses (``[BU, NP, NP]`` tiles).

    ``W_ptr`` points at the number of units (read on the device: the launch covers a host-side bound).
    """
    u = tl.program_id(0).to(tl.int64) * BU + tl.arange(0, BU).to(tl.int64)
    mu = u < tl.load(W_ptr)
    item = tl.load(unit_item_ptr + u, mask=mu, other=0)
    sp = tl.load(unit_sp_ptr + u, mask=mu, other=0)
    info = sp_info_ptr + sp * 6
    l1 = tl.load(info + 0, mask=mu, other=0)
    l2 = tl.load(info + 1, mask=mu, other=0)
    r0 = tl.load(info + 2, mask=mu, other=0)
    c0 = tl.load(info + 3, mask=mu, other=0)
    sym = (tl.load(info + 4, mask=mu, other=0) != 0)[:, None, None]
    e0 = tl.load(info + 5, mask=mu, other=0)
    inv1 = tl.load(inv_ptr + item, mask=mu, other=0) != 0
    inv = inv1[:, None, None]
    n1 = (2 * l1 + 1)[:, None, None]
    n2 = (2 * l2 + 1)[:, None, None]
    a = tl.arange(0, NP).to(tl.int64)
    ra = a[None, :, None]
    cb = a[None, None, :]
    mu3 = mu[:, None, None]
    m11 = mu3 & (ra < n1) & (cb < n1)
    m12 = mu3 & (ra < n1) & (cb < n2)
    m22 = mu3 & (ra < n2) & (cb < n2)
    eye = ra == cb
    xoff = item * KC  # [BU]
    xb = feat_ptr + xoff[:, None, None]
    # local block from the sparse table
    ent = (e0[:, None, None] + ra * n2 + cb) * 2
    tab = m12 & (~inv)
    s0 = tl.load(esrc_ptr + ent, mask=tab, other=-1)
    s1 = tl.load(esrc_ptr + ent + 1, mask=tab, other=-1)
    k0 = tl.load(ecoef_ptr + ent, mask=tab, other=0.0).to(ACC)
    k1 = tl.load(ecoef_ptr + ent + 1, mask=tab, other=0.0).to(ACC)
    v0 = tl.load(xb + s0, mask=tab & (s0 >= 0), other=0.0).to(ACC)
    v1 = tl.load(xb + s1, mask=tab & (s1 >= 0), other=0.0).to(ACC)
    B = k0 * v0 + k1 * v1
    # invariant item: B = c I (equal degrees, c = x[inv_src]) or 0
    isrc = tl.load(inv_src_ptr + sp, mask=mu, other=-1)
    iok = mu & inv1 & (isrc >= 0) & (l1 == l2)  # [BU]
    isrc = tl.maximum(isrc, 0)
    c = tl.load(feat_ptr + xoff + isrc, mask=iok, other=0.0).to(ACC)
    B = tl.where(inv, tl.where(eye & m12, c[:, None, None], 0.0), B)
    # M_l = U_l D_l^T (D = I for invariant items)
    o1 = _woff(l1)[:, None, None]
    o2 = _woff(l2)[:, None, None]
    U1 = tl.load(basis_ptr + o1 + ra * n1 + cb, mask=m11, other=0.0).to(ACC)
    U2 = tl.load(basis_ptr + o2 + ra * n2 + cb, mask=m22, other=0.0).to(ACC)
    wb = wig_ptr + (item * PW)[:, None, None]
    D1 = tl.load(wb + o1 + ra * n1 + cb, mask=m11 & (~inv), other=0.0).to(ACC)
    D2 = tl.load(wb + o2 + ra * n2 + cb, mask=m22 & (~inv), other=0.0).to(ACC)
    D1 = tl.where(inv & eye & m11, 1.0, D1)
    D2 = tl.where(inv & eye & m22, 1.0, D2)
    M1 = _mm_nt(U1, D1)
    M2 = _mm_nt(U2, D2)
    # output addresses: H[i-shell, j-shell] and its transpose
    ai = tl.load(atoms_ptr + item * 2, mask=mu, other=0)
    aj = tl.load(atoms_ptr + item * 2 + 1, mask=mu, other=0)
    mol = tl.load(atom_mol_ptr + ai, mask=mu, other=0)
    base = tl.load(mol_off_ptr + mol, mask=mu, other=0)[:, None, None]
    nao = tl.load(mol_nao_ptr + mol, mask=mu, other=0)[:, None, None]
    rows = (tl.load(atom_ao_ptr + ai, mask=mu, other=0) + r0)[:, None, None] + ra
    cols = (tl.load(atom_ao_ptr + aj, mask=mu, other=0) + c0)[:, None, None] + cb
    idx = base + rows * nao + cols
    idx_t = base + cols * nao + rows
    return (u, mu, inv, sym, n1, n2, ra, cb, m11, m12, m22, eye, xoff, tab, s0, s1, k0, k1, iok, isrc,
            B, U1, U2, M1, M2, idx, idx_t)


@triton.jit
def _assemble_fwd_kernel(
    feat_ptr, wig_ptr, unit_item_ptr, unit_sp_ptr, atoms_ptr, inv_ptr, atom_ao_ptr, atom_mol_ptr,
    mol_off_ptr, mol_nao_ptr, sp_info_ptr, esrc_ptr, ecoef_ptr, inv_src_ptr, basis_ptr, out_ptr,
    W_ptr, KC, PW, NP: tl.constexpr, BU: tl.constexpr, ACC: tl.constexpr,
):
    if tl.program_id(0).to(tl.int64) * BU >= tl.load(W_ptr):
        return  # past the last unit (the grid covers a host-side bound)
    (u, mu, inv, sym, n1, n2, ra, cb, m11, m12, m22, eye, xoff, tab, s0, s1, k0, k1, iok, isrc,
     B, U1, U2, M1, M2, idx, idx_t) = _unit(
        feat_ptr, wig_ptr, unit_item_ptr, unit_sp_ptr, atoms_ptr, inv_ptr, atom_ao_ptr, atom_mol_ptr,
        mol_off_ptr, mol_nao_ptr, sp_info_ptr, esrc_ptr, ecoef_ptr, inv_src_ptr, basis_ptr, W_ptr, KC, PW, NP, BU,
        ACC)
    H = _mm_nt(_mm(M1, B), M2)
    H = tl.where(sym, 0.5 * (H + _t(H)), H)
    Ho = H.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + idx, Ho, mask=m12)
    tl.store(out_ptr + idx_t, Ho, mask=m12 & (~sym))


@triton.jit
def _assemble_bwd_kernel(
    grad_ptr, feat_ptr, wig_ptr, unit_item_ptr, unit_sp_ptr, atoms_ptr, inv_ptr, atom_ao_ptr, atom_mol_ptr,
    mol_off_ptr, mol_nao_ptr, sp_info_ptr, esrc_ptr, ecoef_ptr, inv_src_ptr, basis_ptr,
    gfeat_ptr, part_ptr, part_off_ptr, W_ptr, KC, PW,
    NEED_F: tl.constexpr, NEED_W: tl.constexpr, NP: tl.constexpr, BU: tl.constexpr, ACC: tl.constexpr,
):
    if tl.program_id(0).to(tl.int64) * BU >= tl.load(W_ptr):
        return  # past the last unit (the grid covers a host-side bound)
    (u, mu, inv, sym, n1, n2, ra, cb, m11, m12, m22, eye, xoff, tab, s0, s1, k0, k1, iok, isrc,
     B, U1, U2, M1, M2, idx, idx_t) = _unit(
        feat_ptr, wig_ptr, unit_item_ptr, unit_sp_ptr, atoms_ptr, inv_ptr, atom_ao_ptr, atom_mol_ptr,
        mol_off_ptr, mol_nao_ptr, sp_info_ptr, esrc_ptr, ecoef_ptr, inv_src_ptr, basis_ptr, W_ptr, KC, PW, NP, BU,
        ACC)
    G = tl.load(grad_ptr + idx, mask=m12, other=0.0).to(ACC)
    Gt = tl.load(grad_ptr + idx_t, mask=m12 & (~sym), other=0.0).to(ACC)
    G = tl.where(sym, 0.5 * (G + _t(G)), G + Gt)
    if NEED_F:
        dB = _mm(_mm_tn(M1, G), M2)
        gb = gfeat_ptr + xoff[:, None, None]
        tl.atomic_add(gb + s0, k0 * dB, mask=tab & (s0 >= 0))
        tl.atomic_add(gb + s1, k1 * dB, mask=tab & (s1 >= 0))
        tr = tl.sum(tl.sum(tl.where(eye & m12, dB, 0.0), axis=2), axis=1)  # [BU]
        tl.atomic_add(gfeat_ptr + xoff + isrc, tr, mask=iok)
    if NEED_W:
        dM1 = _mm_nt(_mm(G, M2), B)  # G M2 B^T   [n1, n1]
        dM2 = _mm(_mm_tn(G, M1), B)  # G^T M1 B   [n2, n2]
        dD1 = tl.where(inv, 0.0, _mm_tn(dM1, U1))
        dD2 = tl.where(inv, 0.0, _mm_tn(dM2, U2))
        pb = part_ptr + tl.load(part_off_ptr + u, mask=mu, other=0)[:, None, None]
        tl.store(pb + ra * n1 + cb, dD1, mask=m11)
        tl.store(pb + n1 * n1 + ra * n2 + cb, dD2, mask=m22)


@triton.jit
def _wigner_reduce_kernel(
    part_ptr, part_off_ptr, unit_start_ptr, unit_sp_ptr, sp_info_ptr, gw_ptr, PW,
    NP: tl.constexpr, BU: tl.constexpr, ACC: tl.constexpr,
):
    """``gw[item, D_l] = sum`` over the item's units of their ``dD`` of degree ``l``, in a fixed order."""
    item = tl.program_id(0).to(tl.int64)
    l = tl.program_id(1).to(tl.int64)
    n = 2 * l + 1
    a = tl.arange(0, NP).to(tl.int64)
    ra = a[None, :, None]
    cb = a[None, None, :]
    mn = (ra < n) & (cb < n)
    acc = tl.zeros((NP, NP), ACC)
    u_lo = tl.load(unit_start_ptr + item)
    u_hi = tl.load(unit_start_ptr + item + 1)
    for u0 in range(u_lo, u_hi, BU):
        u = u0 + tl.arange(0, BU).to(tl.int64)
        mu = u < u_hi
        sp = tl.load(unit_sp_ptr + u, mask=mu, other=0)
        l1 = tl.load(sp_info_ptr + sp * 6, mask=mu, other=-1)
        l2 = tl.load(sp_info_ptr + sp * 6 + 1, mask=mu, other=-1)
        n1 = (2 * l1 + 1)[:, None, None]
        pb = part_ptr + tl.load(part_off_ptr + u, mask=mu, other=0)[:, None, None]
        v = tl.load(pb + ra * n + cb, mask=mn & (l1 == l)[:, None, None], other=0.0)
        v += tl.load(pb + n1 * n1 + ra * n + cb, mask=mn & (l2 == l)[:, None, None], other=0.0)
        acc += tl.sum(v, axis=0)
    m2 = (a[:, None] < n) & (a[None, :] < n)
    tl.store(gw_ptr + item * PW + _woff(l) + a[:, None] * n + a[None, :], acc.to(gw_ptr.dtype.element_ty), mask=m2)


# ------------------------------------------------------------------ host side
#: block table ``sp_start`` -> (its version, the most shell pairs of one item type, the most
#: partial-gradient values of one item type): host ints read once per table (one synchronisation,
#: normally at the first, uncaptured call), not once per call
_BOUNDS = WeakIdKeyDictionary()


def _bounds(sp_start: torch.Tensor, sp_info: torch.Tensor) -> tuple:
    """``(pairs, part)``: per item type, the most shell pairs and the most ``dD`` values
    (``(2 l1 + 1)^2 + (2 l2 + 1)^2`` per pair) of any type."""
    version = None if sp_start.is_inference() else sp_start._version  # inference tensors have no counter
    hit = _BOUNDS.get(sp_start)
    if hit is None or hit[0] != version:
        start = sp_start.tolist()
        info = sp_info[:, :2].tolist()
        size = [(2 * a + 1) ** 2 + (2 * b + 1) ** 2 for a, b in info]
        pairs = max((start[t + 1] - start[t] for t in range(len(start) - 1)), default=0)
        part = max((sum(size[start[t]:start[t + 1]]) for t in range(len(start) - 1)), default=0)
        hit = (version, pairs, part)
        _BOUNDS[sp_start] = hit
    return hit[1], hit[2]


def _units(item_type: torch.Tensor, sp_start: torch.Tensor, max_pairs: int):
    """``(unit_item [Wb], unit_sp [Wb], unit_start [I+1])``: the (item, shell pair) work units.

    No host synchronisation: the unit lists are sized by the host-side bound
    ``Wb = items x max_pairs`` (the most shell pairs of one item type, ``_bounds``); the true
    count ``W = unit_start[I]`` stays on the device and the kernels read it (positions ``>= W``
    hold item ``I - 1`` and shell pair 0: valid addresses, never used).
    """
    n_items = item_type.shape[0]
    dev = item_type.device
    first = sp_start.index_select(0, item_type)
    cnt = sp_start.index_select(0, item_type + 1) - first
    unit_start = torch.zeros(n_items + 1, dtype=torch.int64, device=dev)
    torch.cumsum(cnt, 0, out=unit_start[1:])
    wb = n_items * max_pairs
    pos = torch.arange(wb, device=dev)
    unit_item = torch.searchsorted(unit_start[1:], pos, right=True).clamp_(max=max(n_items - 1, 0))
    unit_sp = first.index_select(0, unit_item) + pos - unit_start.index_select(0, unit_item)
    unit_sp = torch.where(pos < unit_start[-1], unit_sp, torch.zeros_like(unit_sp))
    return unit_item.contiguous(), unit_sp.contiguous(), unit_start


def _tile(lmax_shell: int, device: torch.device, dtype: torch.dtype):
    """``(NP, BU, num_warps)``: tile side, units per program, warps.

    The broadcast-product temporaries hold ``BU * NP**3`` values.  The
    interpreter gets fat programs (its cost is per program and operation); a
    GPU gets ``BU`` for about 16 (fp32 accumulation) or 8 (fp64) such values per
    thread at 4 warps, 8 warps for fp64 ``g`` shells: ptxas (Triton 3.8, sm_90)
    then reports no spills in either kernel for ``lmax_shell`` 0..4.
    """
    np_ = max(4, triton.next_power_of_2(2 * lmax_shell + 1))
    if device.type == "cpu":
        return np_, 32, 4
    per_thread = 8 if dtype == torch.float64 else 16
    cube = np_ ** 3
    return np_, max(1, per_thread * 128 // cube), (8 if cube > 2 * per_thread * 128 else 4)


def _common(features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset, mol_nao,
            sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change):
    features = features.contiguous()
    wigner = wigner.contiguous()
    inv = invariant.contiguous()
    if inv.dtype == torch.bool:
        inv = inv.view(torch.uint8)
    max_pairs, max_part = _bounds(sp_start, sp_info)
    unit_item, unit_sp, unit_start = _units(item_type.contiguous(), sp_start.contiguous(), max_pairs)
    tensors = (features, wigner, unit_item, unit_sp, item_atoms.contiguous(), inv, atom_ao.contiguous(),
               atom_mol.contiguous(), mol_offset.contiguous(), mol_nao.contiguous(), sp_info.contiguous(),
               entry_src.contiguous(), entry_coef.contiguous(), inv_src.contiguous(), basis_change.contiguous())
    kc = features.shape[1] * features.shape[2]
    return tensors, unit_start, kc, wigner.shape[1], max_part


def assemble_blocks_forward(features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol, mol_offset,
                            mol_nao, sp_start, sp_info, entry_src, entry_coef, inv_src, basis_change,
                            lmax_shell, total):
    """Flat ``[total]`` Hamiltonians (see the module docstring)."""
    out = torch.zeros(total, dtype=features.dtype, device=features.device)
    if features.shape[0] == 0 or total == 0:
        return out
    tensors, unit_start, kc, pw, _ = _common(features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol,
                                          mol_offset, mol_nao, sp_start, sp_info, entry_src, entry_coef, inv_src,
                                          basis_change)
    wb = tensors[2].shape[0]  # host-side bound of the unit count
    if wb == 0:
        return out
    np_, bu, nw = _tile(lmax_shell, features.device, features.dtype)
    with on_device(features):
        _assemble_fwd_kernel[(triton.cdiv(wb, bu),)](*tensors, out, unit_start[-1:], kc, pw, NP=np_, BU=bu,
                                                      ACC=tl_acc(features.dtype), num_warps=nw)
    return out


def assemble_blocks_backward(grad, features, wigner, item_atoms, item_type, invariant, atom_ao, atom_mol,
                             mol_offset, mol_nao, sp_start, sp_info, entry_src, entry_coef, inv_src,
                             basis_change, lmax_shell, total, need_features, need_wigner):
    """``(grad_features, grad_wigner)``; ``[0]`` tensors where not needed."""
    gf = grad.new_empty(0)
    gw = grad.new_empty(0)
    if not (need_features or need_wigner):
        return gf, gw
    dev = features.device
    adt = acc_dtype(features.dtype)
    n_items = features.shape[0]
    gf_acc = torch.zeros(features.shape, dtype=adt, device=dev) if need_features else None
    gw_out = torch.zeros(wigner.shape, dtype=wigner.dtype, device=dev) if need_wigner else None
    if n_items and total:
        tensors, unit_start, kc, pw, max_part = _common(features, wigner, item_atoms, item_type, invariant, atom_ao,
                                              atom_mol, mol_offset, mol_nao, sp_start, sp_info, entry_src,
                                              entry_coef, inv_src, basis_change)
        unit_sp = tensors[3]
        wb = unit_sp.shape[0]  # host-side bound of the unit count
        if wb:
            np_, bu, nw = _tile(lmax_shell, dev, features.dtype)
            if need_wigner:
                info = sp_info.index_select(0, unit_sp)
                size = (2 * info[:, 0] + 1) ** 2 + (2 * info[:, 1] + 1) ** 2
                size = torch.where(torch.arange(wb, device=dev) < unit_start[-1], size, torch.zeros_like(size))
                part_off = torch.cumsum(size, 0) - size
                # sized by the bound (items x the most dD values of one item type): no host read of the sum
                part = torch.empty(n_items * max_part, dtype=adt, device=dev)
            else:
                part_off = part = unit_sp  # never dereferenced
            with on_device(features):
                _assemble_bwd_kernel[(triton.cdiv(wb, bu),)](
                    grad.contiguous(), *tensors, gf_acc if need_features else grad, part, part_off, unit_start[-1:], kc,
                    pw,
                    NEED_F=bool(need_features), NEED_W=bool(need_wigner), NP=np_, BU=bu, ACC=tl_acc(features.dtype),
                    num_warps=nw,
                )
                if need_wigner:
                    _wigner_reduce_kernel[(n_items, lmax_shell + 1)](
                        part, part_off, unit_start, unit_sp, tensors[10], gw_out, pw,
                        NP=np_, BU=bu, ACC=tl_acc(features.dtype), num_warps=nw,
                    )
    if need_features:
        gf = gf_acc.to(features.dtype)
    if need_wigner:
        gw = gw_out
    return gf, gw


register_impl("assemble_blocks", "triton", assemble_blocks_forward, assemble_blocks_backward)
