"""Triton ``rotate``: matches ``so2ops.reference.rotate``.

Two kernels, both table-free (every index is derived from the row number and
the constexpr ``lmax``) and vectorised over a tile of edges x rows x channels:

* ``_rotate_kernel``: ``out[dst(e), (l,m), c] = sum_j D_l[e][m, j] x[src(e), (l,j), c]``
  (``D_l^T`` when transposed), with an optional fused gather ``src = index[e]``
  and an optional atomic scatter ``dst = index[e]`` (grad of the gather);
  while ``torch.are_deterministic_algorithms_enabled()`` the gather's gradient
  is instead rotated per edge and summed by ``segment_sum`` over the edges
  sorted by index (fixed order, no atomics: bitwise reproducible).
  Each output row loops over the ``2*lmax+1`` possible columns of its degree
  block with masks, so one program covers rows of different degrees.
* ``_rotate_grad_wigner_kernel``: ``gD[e, (l,m,m')] = sum_c A[a(e),(l,m),c] B[b(e),(l,m'),c]``
  over channel tiles, one program per (edge tile, packed-Wigner tile): a plain
  reduction, no atomics, so it is deterministic.

``so2_message``'s backward reuses both through ``rotate_apply`` and ``rotate_grad_wigner``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..dispatch import register_impl
from ..layout import num_coeffs, wigner_size


@triton.constexpr_function
def _woff(l):
    return l * (2 * l - 1) * (2 * l + 1) // 3


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64, float32 otherwise (fp16/bf16 included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _degree_of_row(r, LMAX: tl.constexpr):
    """Degree ``l`` of l-major row ``r`` (``l*l <= r < (l+1)**2``), for ``r`` a tensor."""
    l = tl.zeros(r.shape, tl.int64)
    for k in tl.static_range(1, LMAX + 1):
        l += (r >= k * k).to(tl.int64)
    return l


@triton.jit
def _rotate_kernel(
    x_ptr, w_ptr, src_ptr, dst_ptr, out_ptr, E, C,
    LMAX: tl.constexpr, GATHER: tl.constexpr, SCATTER: tl.constexpr, TRANSPOSE: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    P: tl.constexpr = _woff(LMAX + 1)
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    me, mr, mc = e < E, r < K, c < C
    e64 = e.to(tl.int64)
    if GATHER:
        src = tl.load(src_ptr + e64, mask=me, other=0)
    else:
        src = e64
    l = _degree_of_row(r, LMAX)
    n = 2 * l + 1
    a = r - l * l  # m + l
    off = l * (2 * l - 1) * (2 * l + 1) // 3
    x_base = src[:, None, None] * (K * C) + c[None, None, :]
    m_ec = me[:, None, None] & mc[None, None, :]
    acc = tl.zeros((BLOCK_E, BLOCK_R, BLOCK_C), ACC)
    for j in tl.static_range(2 * LMAX + 1):
        valid = mr & (j < n)
        if TRANSPOSE:
            widx = off + j * n + a
        else:
            widx = off + a * n + j
        d = tl.load(w_ptr + e64[:, None] * P + widx[None, :], mask=me[:, None] & valid[None, :], other=0.0)
        xrow = l * l + j
        xv = tl.load(x_ptr + x_base + (xrow * C)[None, :, None], mask=m_ec & valid[None, :, None], other=0.0)
        acc += d.to(ACC)[:, :, None] * xv.to(ACC)
    m_out = m_ec & mr[None, :, None]
    if SCATTER:
        dst = tl.load(dst_ptr + e64, mask=me, other=0)
        ptr = out_ptr + dst[:, None, None] * (K * C) + (r * C)[None, :, None] + c[None, None, :]
        tl.atomic_add(ptr, acc.to(out_ptr.dtype.element_ty), mask=m_out)
    else:
        ptr = out_ptr + e64[:, None, None] * (K * C) + (r * C)[None, :, None] + c[None, None, :]
        tl.store(ptr, acc.to(out_ptr.dtype.element_ty), mask=m_out)


@triton.jit
def _rotate_grad_wigner_kernel(
    a_ptr, a_idx_ptr, b_ptr, b_idx_ptr, out_ptr, E, C,
    LMAX: tl.constexpr, A_GATHER: tl.constexpr, B_GATHER: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    P: tl.constexpr = _woff(LMAX + 1)
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    me, mp = e < E, p < P
    e64 = e.to(tl.int64)
    if A_GATHER:
        ia = tl.load(a_idx_ptr + e64, mask=me, other=0)
    else:
        ia = e64
    if B_GATHER:
        ib = tl.load(b_idx_ptr + e64, mask=me, other=0)
    else:
        ib = e64
    # packed index p -> (l, m+l, m'+l)
    l = tl.zeros(p.shape, tl.int64)
    for k in tl.static_range(1, LMAX + 1):
        l += (p >= _woff(k)).to(tl.int64)
    n = 2 * l + 1
    q = p - l * (2 * l - 1) * (2 * l + 1) // 3
    row_a = l * l + q // n
    row_b = l * l + q % n
    m_ep = me[:, None, None] & mp[None, :, None]
    acc = tl.zeros((BLOCK_E, BLOCK_P), ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        msk = m_ep & (c < C)[None, None, :]
        av = tl.load(a_ptr + ia[:, None, None] * (K * C) + (row_a * C)[None, :, None] + c[None, None, :], mask=msk, other=0.0)
        bv = tl.load(b_ptr + ib[:, None, None] * (K * C) + (row_b * C)[None, :, None] + c[None, None, :], mask=msk, other=0.0)
        acc += tl.sum(av.to(ACC) * bv.to(ACC), axis=2)
    tl.store(out_ptr + e64[:, None] * P + p[None, :], acc.to(out_ptr.dtype.element_ty), mask=me[:, None] & mp[None, :])


def _tiles(device: torch.device, k: int, c: int):
    """(BLOCK_E, BLOCK_R, BLOCK_C): fat tiles for the interpreter, register-sized ones on GPU."""
    if device.type == "cpu":
        return 32, min(triton.next_power_of_2(k), 64), min(triton.next_power_of_2(c), 64)
    return 8, min(triton.next_power_of_2(k), 16), min(triton.next_power_of_2(c), 32)


def rotate_apply(
    x: torch.Tensor,
    wigner: torch.Tensor,
    lmax: int,
    gather: Optional[torch.Tensor] = None,
    scatter: Optional[torch.Tensor] = None,
    num_out: int = 0,
    transpose: bool = False,
) -> torch.Tensor:
    """``y[e] = D_e x[gather[e]]`` (``D_e^T`` if ``transpose``) -> ``[E, K, C]``.

    With ``scatter`` (``[E]`` int64), instead ``out[scatter[e]] += D_e x[e]`` into a
    ``[num_out, K, C]`` tensor (atomics, accumulated in float32/float64).
    """
    e = wigner.shape[0]
    k, c = num_coeffs(lmax), x.shape[2]
    if scatter is not None:
        out = torch.zeros(num_out, k, c, dtype=acc_dtype(x.dtype), device=x.device)
    else:
        out = torch.empty(e, k, c, dtype=x.dtype, device=x.device)
    if e == 0 or out.numel() == 0:
        return out.to(x.dtype)
    be, br, bc = _tiles(x.device, k, c)
    grid = (triton.cdiv(e, be), triton.cdiv(k, br), triton.cdiv(c, bc))
    dummy = wigner  # never dereferenced when the matching flag is off
    _rotate_kernel[grid](
        x, wigner, gather if gather is not None else dummy, scatter if scatter is not None else dummy, out, e, c,
        LMAX=lmax, GATHER=gather is not None, SCATTER=scatter is not None, TRANSPOSE=bool(transpose),
        ACC=tl_acc(x.dtype), BLOCK_E=be, BLOCK_R=br, BLOCK_C=bc,
    )
    return out.to(x.dtype)


def rotate_grad_wigner(
    a: torch.Tensor,
    b: torch.Tensor,
    lmax: int,
    num_edges: int,
    a_index: Optional[torch.Tensor] = None,
    b_index: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``gD[e, (l,m,m')] = sum_c a[a_index[e], (l,m), c] * b[b_index[e], (l,m'), c]`` -> ``[E, P]``."""
    p = wigner_size(lmax)
    out = torch.empty(num_edges, p, dtype=a.dtype, device=a.device)
    if num_edges == 0:
        return out
    c = a.shape[2]
    if a.device.type == "cpu":
        be, bp, bc = 32, min(triton.next_power_of_2(p), 128), min(triton.next_power_of_2(c), 64)
    else:
        # [8, 32, 8] tiles: <= 211 registers and no spills on sm_90 (fp32 and fp64); the former
        # [16, 32, 16] needed 255 registers + 0.8 KB (fp32) / 4.8 KB (fp64) of spills per thread
        be, bp, bc = 8, min(triton.next_power_of_2(p), 32), min(triton.next_power_of_2(c), 8)
    grid = (triton.cdiv(num_edges, be), triton.cdiv(p, bp))
    _rotate_grad_wigner_kernel[grid](
        a, a_index if a_index is not None else a, b, b_index if b_index is not None else b, out, num_edges, c,
        LMAX=lmax, A_GATHER=a_index is not None, B_GATHER=b_index is not None, ACC=tl_acc(a.dtype),
        BLOCK_E=be, BLOCK_P=bp, BLOCK_C=bc,
    )
    return out


# ------------------------------------------------------------------ registry
def rotate_forward(x, wigner, lmax, index, inverse):
    """``[N, K, C]`` -> ``[E, K, C]``: ``D_e x[index[e]]`` (``D_e^T`` if ``inverse``)."""
    return rotate_apply(x, wigner, lmax, gather=index, transpose=inverse)


def rotate_backward(grad, x, wigner, lmax, index, inverse, need_x, need_wigner):
    """``(grad_x [N, K, C], grad_wigner [E, P])``; ``[0]`` tensors where not needed."""
    gx = grad.new_empty(0)
    gw = grad.new_empty(0)
    if need_x:
        if index is None:
            gx = rotate_apply(grad, wigner, lmax, transpose=not inverse)
        elif torch.are_deterministic_algorithms_enabled():
            from .so2_message import segment_sum  # circular import at module level

            gx = segment_sum(rotate_apply(grad, wigner, lmax, transpose=not inverse), index, x.shape[0])
        else:
            gx = rotate_apply(grad, wigner, lmax, scatter=index, num_out=x.shape[0], transpose=not inverse)
    if need_wigner:
        e = wigner.shape[0]
        if inverse:  # out = D^T x  ->  gD[m, m'] = sum_c x[m] grad[m']
            gw = rotate_grad_wigner(x, grad, lmax, e, a_index=index)
        else:  # out = D x  ->  gD[m, m'] = sum_c grad[m] x[m']
            gw = rotate_grad_wigner(grad, x, lmax, e, b_index=index)
    return gx, gw


register_impl("rotate", "triton", rotate_forward, rotate_backward)
