"""Triton ``rotate``: matches ``so2ops.reference.rotate``.

Two kernels, both table-free (every index is derived from the row number and
the constexpr ``lmax``) and vectorised over a tile of edges x rows x channels:

* ``_rotate_kernel``: ``out[dst(e), (l,m), c] = sum_j D_l[e][m, j] x[src(e), (l,j), c]``
  (``D_l^T`` when transposed), with an optional fused gather ``src = index[e]``
  and an optional atomic scatter ``dst = index[e]`` (grad of the gather);
  while ``torch.are_deterministic_algorithms_enabled()`` the gather's gradient
  is instead rotated per edge and summed by ``segment_sum`` over the edges
  sorted by index (fixed order, no atomics: bitwise reproducible).
  A program owns a tile of edges x channels and walks the degrees one at a
  time (a ``[BLOCK_E, pow2(2l+1), BLOCK_C]`` accumulator per degree).
* ``_rotate_grad_wigner_kernel``: ``gD[e, (l,m,m')] = sum_c A[a(e),(l,m),c] B[b(e),(l,m'),c]``
  over channel tiles, one program per (edge tile, packed-Wigner tile): a plain
  reduction, no atomics, so it is deterministic.

``so2_message``'s backward reuses both through ``rotate_apply`` and ``rotate_grad_wigner``.
Index entries outside the indexed tensor's rows read zeros and receive nothing
(no out-of-bounds access even with value checks off); the launchers raise an
``IndexError`` naming the argument when value checks are on.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..dispatch import register_impl
from ..layout import num_coeffs, wigner_size
from ._launch import check_rows, on_device


@triton.constexpr_function
def _woff(l):
    return l * (2 * l - 1) * (2 * l + 1) // 3


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64, float32 otherwise (fp16/bf16 included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.constexpr_function
def _pow2(n):
    """Smallest power of two ``>= n`` (builtins only: see ``so2_message._pow2``)."""
    p = 1
    while p < n:
        p *= 2
    return p


@triton.jit
def _rotate_kernel(
    x_ptr, w_ptr, src_ptr, dst_ptr, out_ptr, E, C, N_SRC, N_DST,
    LMAX: tl.constexpr, GATHER: tl.constexpr, SCATTER: tl.constexpr, TRANSPOSE: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``out[dst(e), (l, a), c] = sum_j D_l[e][a, j] x[src(e), (l, j), c]`` (``D_l^T`` if ``TRANSPOSE``).

    One program per (edge tile, channel tile), one degree at a time: the
    ``[BLOCK_E, pow2(2l+1), BLOCK_C]`` accumulator of degree ``l`` is built from
    ``2l+1`` two-dimensional ``[BLOCK_E, BLOCK_C]`` row loads and stored before
    the next degree.  (The former layout, one program per tile of rows of any
    degree looping over ``2*lmax+1`` masked columns with 3-D int64 address
    tensors, spilled 5-12 KB per thread on sm_90 at lmax 4-8.)
    An index outside ``[0, N_SRC)`` / ``[0, N_DST)`` reads zeros / writes nothing.
    """
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    P: tl.constexpr = _woff(LMAX + 1)
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    me, mc = e < E, c < C
    mx = me
    if GATHER:
        src = tl.load(src_ptr + e, mask=me, other=0)
        ok = (src >= 0) & (src < N_SRC)
        mx = me & ok
        src = tl.where(ok, src, 0)
    else:
        src = e
    mo = me
    if SCATTER:
        dst = tl.load(dst_ptr + e, mask=me, other=0)
        ok = (dst >= 0) & (dst < N_DST)
        mo = me & ok
        dst = tl.where(ok, dst, 0)
    else:
        dst = e
    x_row = x_ptr + src[:, None] * (K * C) + c[None, :]  # [BLOCK_E, BLOCK_C]: row (0, 0) of each edge
    m_x = mx[:, None] & mc[None, :]
    o_row = out_ptr + (dst[:, None] * (K * C) + c[None, :])[:, None, :]
    m_o = (mo[:, None] & mc[None, :])[:, None, :]
    w_row = w_ptr + e * P
    for l in tl.static_range(LMAX + 1):
        # shapes spelled from the static index (see so2_message._degree_message for why)
        a = tl.arange(0, _pow2(2 * l + 1))
        ma = a < 2 * l + 1
        m_d = me[:, None] & ma[None, :]
        acc = tl.zeros((BLOCK_E, _pow2(2 * l + 1), BLOCK_C), ACC)
        for j in tl.static_range(2 * l + 1):
            if TRANSPOSE:
                widx = _woff(l) + j * (2 * l + 1) + a
            else:
                widx = _woff(l) + a * (2 * l + 1) + j
            d = tl.load(w_row[:, None] + widx[None, :], mask=m_d, other=0.0).to(ACC)
            xv = tl.load(x_row + (l * l + j) * C, mask=m_x, other=0.0).to(ACC)
            acc += d[:, :, None] * xv[:, None, :]
        ptr = o_row + ((l * l + a) * C)[None, :, None]
        msk = m_o & ma[None, :, None]
        if SCATTER:
            tl.atomic_add(ptr, acc.to(out_ptr.dtype.element_ty), mask=msk)
        else:
            tl.store(ptr, acc.to(out_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _rotate_grad_wigner_kernel(
    a_ptr, a_idx_ptr, b_ptr, b_idx_ptr, out_ptr, E, C, NA, NB,
    LMAX: tl.constexpr, A_GATHER: tl.constexpr, B_GATHER: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    P: tl.constexpr = _woff(LMAX + 1)
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    me, mp = e < E, p < P
    e64 = e.to(tl.int64)
    # an index outside [0, NA) / [0, NB) reads zeros (the edge's gradient is 0), never out of bounds
    ma = me
    if A_GATHER:
        ia = tl.load(a_idx_ptr + e64, mask=me, other=0)
        ok = (ia >= 0) & (ia < NA)
        ma = me & ok
        ia = tl.where(ok, ia, 0)
    else:
        ia = e64
    mb = me
    if B_GATHER:
        ib = tl.load(b_idx_ptr + e64, mask=me, other=0)
        ok = (ib >= 0) & (ib < NB)
        mb = me & ok
        ib = tl.where(ok, ib, 0)
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
    m_ap = ma[:, None, None] & mp[None, :, None]
    m_bp = mb[:, None, None] & mp[None, :, None]
    acc = tl.zeros((BLOCK_E, BLOCK_P), ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        mc = (c < C)[None, None, :]
        av = tl.load(a_ptr + ia[:, None, None] * (K * C) + (row_a * C)[None, :, None] + c[None, None, :],
                     mask=m_ap & mc, other=0.0)
        bv = tl.load(b_ptr + ib[:, None, None] * (K * C) + (row_b * C)[None, :, None] + c[None, None, :],
                     mask=m_bp & mc, other=0.0)
        acc += tl.sum(av.to(ACC) * bv.to(ACC), axis=2)
    tl.store(out_ptr + e64[:, None] * P + p[None, :], acc.to(out_ptr.dtype.element_ty), mask=me[:, None] & mp[None, :])


def _tiles(device: torch.device, lmax: int, c: int):
    """(BLOCK_E, BLOCK_C, num_warps) of ``_rotate_kernel``: fat tiles for the interpreter, register-sized
    ones on a GPU.  sm_90, fp32, lmax 4, C 128 (``python -m bench.triton_aot --all --only rotate``):
    [4, 32] at 4 warps needs <= 168 registers and no spills in every variant; [8, 32] needed 255 and
    spilled in the atomic scatter, [8, 16] 253; at lmax 6 [4, 32] reaches 255 and spills 16 B, so lmax >= 5
    takes 16 channels (lmax 8: 128 registers)."""
    if device.type == "cpu":
        return 32, min(triton.next_power_of_2(c), 64), 4
    return 4, min(triton.next_power_of_2(c), 32 if lmax <= 4 else 16), 4


def _grad_wigner_tiles(device: torch.device, p: int, c: int):
    """(BLOCK_E, BLOCK_P, BLOCK_C) of ``_rotate_grad_wigner_kernel``."""
    if device.type == "cpu":
        return 32, min(triton.next_power_of_2(p), 128), min(triton.next_power_of_2(c), 64)
    # [8, 32, 8] tiles: <= 211 registers and no spills on sm_90 (fp32 and fp64); the former
    # [16, 32, 16] needed 255 registers + 0.8 KB (fp32) / 4.8 KB (fp64) of spills per thread
    return 8, min(triton.next_power_of_2(p), 32), min(triton.next_power_of_2(c), 8)


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
    Index entries outside ``[0, rows)`` read zeros / write nothing (the callers validate them).
    """
    e = wigner.shape[0]
    k, c = num_coeffs(lmax), x.shape[2]
    if scatter is not None:
        out = torch.zeros(num_out, k, c, dtype=acc_dtype(x.dtype), device=x.device)
    else:
        out = torch.empty(e, k, c, dtype=x.dtype, device=x.device)
    if e == 0 or out.numel() == 0:
        return out.to(x.dtype)
    be, bc, nw = _tiles(x.device, lmax, c)
    grid = (triton.cdiv(e, be), triton.cdiv(c, bc))
    dummy = wigner  # never dereferenced when the matching flag is off
    with on_device(x):
        _rotate_kernel[grid](
            x, wigner, gather if gather is not None else dummy, scatter if scatter is not None else dummy, out, e, c,
            x.shape[0], num_out,
            LMAX=lmax, GATHER=gather is not None, SCATTER=scatter is not None, TRANSPOSE=bool(transpose),
            ACC=tl_acc(x.dtype), BLOCK_E=be, BLOCK_C=bc, num_warps=nw,
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
    be, bp, bc = _grad_wigner_tiles(a.device, p, c)
    grid = (triton.cdiv(num_edges, be), triton.cdiv(p, bp))
    with on_device(a):
        _rotate_grad_wigner_kernel[grid](
            a, a_index if a_index is not None else a, b, b_index if b_index is not None else b, out, num_edges, c,
            a.shape[0], b.shape[0],
            LMAX=lmax, A_GATHER=a_index is not None, B_GATHER=b_index is not None, ACC=tl_acc(a.dtype),
            BLOCK_E=be, BLOCK_P=bp, BLOCK_C=bc,
        )
    return out


# ------------------------------------------------------------------ registry
def rotate_forward(x, wigner, lmax, index, inverse):
    """``[N, K, C]`` -> ``[E, K, C]``: ``D_e x[index[e]]`` (``D_e^T`` if ``inverse``)."""
    check_rows("index", index, x.shape[0])
    return rotate_apply(x, wigner, lmax, gather=index, transpose=inverse)


def rotate_backward(grad, x, wigner, lmax, index, inverse, need_x, need_wigner):
    """``(grad_x [N, K, C], grad_wigner [E, P])``; ``[0]`` tensors where not needed."""
    check_rows("index", index, x.shape[0])
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
