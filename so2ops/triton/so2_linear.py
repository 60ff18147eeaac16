"""Triton ``so2_linear``: matches ``so2ops.reference.so2_linear``.

For every order ``m`` the op is a GEMM on stacked ``(l, channel)`` vectors:
``y_{+m} = W1 x_{+m} - W2 x_{-m}``, ``y_{-m} = W2 x_{+m} + W1 x_{-m}`` (``y_0 = W0 x_0``).

* ``_so2_apply_kernel``: one program per (edge tile, output (l, c) tile, m);
  the reduction over the input ``(l', c')`` axis uses ``tl.dot`` on tiles
  (``input_precision="ieee"`` so float32 stays float32-accurate; float16 and
  bfloat16 multiply on tensor cores and accumulate in float32; float64 uses
  Triton's FMA lowering).  With ``TRANS`` the same kernel applies the
  transposed map, which is the gradient wrt the input; it then also applies
  the modulation to its output and produces the modulation gradient.
* ``_so2_grad_weight_kernel``: ``dW = sum_e g_e x_e^T`` per block, a reduction
  over edges split in ``SPLIT`` chunks whose partial sums are added in a fixed
  order on the host: deterministic, no atomics.

``m = 0`` (one real GEMM) and ``m >= 1`` (the complex-like pair) are two
launches of the same kernels (constexpr ``PAIR``).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl

from ..dispatch import register_impl
from ..layout import mod_offset, num_coeffs, num_mod, weight_blocks, weight_size
from ._launch import on_device
from .rotate import acc_dtype, tl_acc


@lru_cache(maxsize=None)
def _block_offsets_cpu(lmax: int, mmax: int, cin: int, cout: int) -> torch.Tensor:
    """``[mmax+1]`` int64: offset of ``W0`` (m = 0) or ``W1_m`` in the packed weights."""
    offs = [off for m, kind, off, _, _ in weight_blocks(lmax, mmax, cin, cout) if kind in ("w0", "w1")]
    return torch.tensor(offs, dtype=torch.int64)


_OFFSETS: dict = {}


def block_offsets(lmax: int, mmax: int, cin: int, cout: int, device: torch.device) -> torch.Tensor:
    key = (lmax, mmax, cin, cout, str(device))
    t = _OFFSETS.get(key)
    if t is None:
        t = _OFFSETS[key] = _block_offsets_cpu(lmax, mmax, cin, cout).to(device)
    return t


@triton.jit
def _so2_apply_kernel(
    in_ptr, w_ptr, woff_ptr, mod_ptr, out_ptr, x_ptr, gmod_ptr,
    E, CIN, COUT, CW, NM,
    LMAX: tl.constexpr, M0: tl.constexpr, PAIR: tl.constexpr, TRANS: tl.constexpr,
    MOD_IN: tl.constexpr, MOD_OUT: tl.constexpr, NEED_OUT: tl.constexpr, NEED_GMOD: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``out_{+-m}[e, (l, co)] = sum_{(l', ci)} A[(l, co), (l', ci)] in_{+-m}[e, (l', ci)]``.

    ``in``: ``[E, K, CIN]``, ``out``: ``[E, K, COUT]``; ``CW`` is the column
    channel count of the stored weights (``CIN`` forward, ``COUT`` transposed).
    Forward (``TRANS=False``): ``A`` is ``[[W1, -W2], [W2, W1]]``; transposed:
    ``[[W1^T, W2^T], [-W2^T, W1^T]]``.  ``mod`` is ``[E, NM, CW]``.
    """
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    SGN: tl.constexpr = 1.0 if TRANS else -1.0
    m = tl.program_id(2) + M0
    L = LMAX - m + 1
    pid_n = tl.program_id(1)
    if pid_n * BLOCK_N < L * COUT:
        e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
        me = e < E
        e64 = e.to(tl.int64)
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        mn = n < L * COUT
        lo = m + n // COUT
        co = n % COUT
        woff1 = tl.load(woff_ptr + m)
        woff2 = woff1 + (L * L).to(tl.int64) * CIN * COUT  # int64: the block can exceed 2^31 entries
        moff = m * (LMAX + 1) - m * (m - 1) // 2  # mod_offset(LMAX, m)
        lcw = L * CW
        acc_p = tl.zeros((BLOCK_E, BLOCK_N), ACC)
        acc_n = tl.zeros((BLOCK_E, BLOCK_N), ACC)
        for k0 in range(0, L * CIN, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            mk = k < L * CIN
            li = m + k // CIN
            ci = k % CIN
            m_ek = me[:, None] & mk[None, :]
            in_base = in_ptr + e64[:, None] * (K * CIN) + ci[None, :]
            a_p = tl.load(in_base + ((li * li + li + m) * CIN)[None, :], mask=m_ek, other=0.0)
            if MOD_IN:
                s = tl.load(mod_ptr + e64[:, None] * (NM * CIN) + (moff * CIN + k)[None, :], mask=m_ek, other=0.0)
                a_p = (a_p.to(ACC) * s.to(ACC)).to(in_ptr.dtype.element_ty)
            m_kn = mk[:, None] & mn[None, :]
            if TRANS:
                widx = k[:, None] * lcw + n[None, :]
            else:
                widx = n[None, :] * lcw + k[:, None]
            b1 = tl.load(w_ptr + woff1 + widx, mask=m_kn, other=0.0)
            acc_p += tl.dot(a_p, b1, input_precision="ieee").to(ACC)
            if PAIR:
                a_n = tl.load(in_base + ((li * li + li - m) * CIN)[None, :], mask=m_ek, other=0.0)
                if MOD_IN:
                    a_n = (a_n.to(ACC) * s.to(ACC)).to(in_ptr.dtype.element_ty)
                b2 = tl.load(w_ptr + woff2 + widx, mask=m_kn, other=0.0)
                acc_p += SGN * tl.dot(a_n, b2, input_precision="ieee").to(ACC)
                acc_n += tl.dot(a_n, b1, input_precision="ieee").to(ACC) - SGN * tl.dot(a_p, b2, input_precision="ieee").to(ACC)
        m_en = me[:, None] & mn[None, :]
        row_p = ((lo * lo + lo + m) * COUT)[None, :]
        row_n = ((lo * lo + lo - m) * COUT)[None, :]
        out_base = e64[:, None] * (K * COUT) + co[None, :]
        if MOD_OUT:
            scale = tl.load(mod_ptr + e64[:, None] * (NM * COUT) + (moff * COUT + n)[None, :], mask=m_en, other=0.0).to(ACC)
        if NEED_GMOD:
            # d loss / d mod[(m, l), c] = sum over +-m of (A^T g)[(l, +-m), c] * x[(l, +-m), c]
            xv = tl.load(x_ptr + out_base + row_p, mask=m_en, other=0.0).to(ACC)
            gm = acc_p * xv
            if PAIR:
                xv = tl.load(x_ptr + out_base + row_n, mask=m_en, other=0.0).to(ACC)
                gm += acc_n * xv
            tl.store(gmod_ptr + e64[:, None] * (NM * COUT) + (moff * COUT + n)[None, :],
                     gm.to(gmod_ptr.dtype.element_ty), mask=m_en)
        if NEED_OUT:
            if MOD_OUT:
                acc_p = acc_p * scale
                acc_n = acc_n * scale
            tl.store(out_ptr + out_base + row_p, acc_p.to(out_ptr.dtype.element_ty), mask=m_en)
            if PAIR:
                tl.store(out_ptr + out_base + row_n, acc_n.to(out_ptr.dtype.element_ty), mask=m_en)


@triton.jit
def _so2_grad_weight_kernel(
    g_ptr, x_ptr, mod_ptr, woff_ptr, part_ptr,
    E, CI, CO, NM, WSIZE, SPLIT, CHUNK,
    LMAX: tl.constexpr, M0: tl.constexpr, PAIR: tl.constexpr, MOD_IN: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Partial ``dW1 = sum_e g_{+m} x_{+m}^T + g_{-m} x_{-m}^T``, ``dW2 = sum_e g_{-m} x_{+m}^T - g_{+m} x_{-m}^T``
    over the edges of chunk ``s`` (``dW0 = sum_e g_0 x_0^T`` for ``m = 0``), into ``part[s, :]``."""
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    pid2 = tl.program_id(2)
    m = M0 + pid2 // SPLIT
    s = pid2 % SPLIT
    L = LMAX - m + 1
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    if (pid_n * BLOCK_N < L * CO) & (pid_k * BLOCK_K < L * CI):
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
        mn = n < L * CO
        mk = k < L * CI
        lo = m + n // CO
        co = n % CO
        li = m + k // CI
        ci = k % CI
        moff = m * (LMAX + 1) - m * (m - 1) // 2
        acc1 = tl.zeros((BLOCK_N, BLOCK_K), ACC)
        acc2 = tl.zeros((BLOCK_N, BLOCK_K), ACC)
        e_lo = s * CHUNK
        e_hi = tl.minimum(e_lo + CHUNK, E)
        for e0 in range(e_lo, e_hi, BLOCK_E):
            e = e0 + tl.arange(0, BLOCK_E).to(tl.int64)
            me = e < e_hi
            e64 = e.to(tl.int64)
            m_ne = mn[:, None] & me[None, :]
            m_ek = me[:, None] & mk[None, :]
            g_base = g_ptr + e64[None, :] * (K * CO) + co[:, None]
            x_base = x_ptr + e64[:, None] * (K * CI) + ci[None, :]
            gp = tl.load(g_base + ((lo * lo + lo + m) * CO)[:, None], mask=m_ne, other=0.0)  # [BN, BE]
            xp = tl.load(x_base + ((li * li + li + m) * CI)[None, :], mask=m_ek, other=0.0)  # [BE, BK]
            if MOD_IN:
                sc = tl.load(mod_ptr + e64[:, None] * (NM * CI) + (moff * CI + k)[None, :], mask=m_ek, other=0.0)
                xp = (xp.to(ACC) * sc.to(ACC)).to(x_ptr.dtype.element_ty)
            acc1 += tl.dot(gp, xp, input_precision="ieee").to(ACC)
            if PAIR:
                gn = tl.load(g_base + ((lo * lo + lo - m) * CO)[:, None], mask=m_ne, other=0.0)
                xn = tl.load(x_base + ((li * li + li - m) * CI)[None, :], mask=m_ek, other=0.0)
                if MOD_IN:
                    xn = (xn.to(ACC) * sc.to(ACC)).to(x_ptr.dtype.element_ty)
                acc1 += tl.dot(gn, xn, input_precision="ieee").to(ACC)
                acc2 += tl.dot(gn, xp, input_precision="ieee").to(ACC) - tl.dot(gp, xn, input_precision="ieee").to(ACC)
        woff1 = tl.load(woff_ptr + m)
        widx = n[:, None] * (L * CI) + k[None, :]
        m_nk = mn[:, None] & mk[None, :]
        base = part_ptr + s.to(tl.int64) * WSIZE + woff1
        tl.store(base + widx, acc1, mask=m_nk)
        if PAIR:
            tl.store(base + (L * L).to(tl.int64) * CI * CO + widx, acc2, mask=m_nk)


def _clamp_pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def _apply_tiles(dev: torch.device, lmax: int, k_in: int, k_out: int, dtype: torch.dtype):
    """``(BLOCK_E, BLOCK_N, BLOCK_K, num_warps)`` of ``_so2_apply_kernel``.

    Every ``tl.dot`` operand dimension is >= 16 (a GPU requirement the
    interpreter does not check).  The GPU sizes were chosen from the register
    use ptxas reports for sm_90 (Triton 3.6): fp32 ``ieee`` dots lower to FMAs
    and with the +-m pair the larger tiles spilled heavily.
    """
    if dev.type == "cpu":  # interpreter: few, fat programs
        return 64, _clamp_pow2((lmax + 1) * k_out, 16, 64), _clamp_pow2((lmax + 1) * k_in, 16, 64), 4
    return _gpu_tiles(lmax, k_in, k_out, dtype)


def _gpu_tiles(lmax: int, k_in: int, k_out: int, dtype: torch.dtype):
    # sm_90, lmax 4, 64 channels: the former (32, 64, 32) tiles at 4 warps spilled 5-6 KB/thread in
    # fp32 and ~400 B in fp64; these use <= 192 registers and no spills (fp16: <= 200, no spills).
    if dtype in (torch.float16, torch.bfloat16):  # tensor-core dots: bigger tiles, 8 warps
        return 32, _clamp_pow2((lmax + 1) * k_out, 16, 64), _clamp_pow2((lmax + 1) * k_in, 16, 32), 8
    return 16, _clamp_pow2((lmax + 1) * k_out, 16, 32), 16, 4


def _grad_weight_tiles(dev: torch.device, lmax: int, cin: int, cout: int, dtype: torch.dtype):
    """``(BLOCK_E, BLOCK_N, BLOCK_K, num_warps)`` of ``_so2_grad_weight_kernel`` (see ``_apply_tiles``)."""
    if dev.type == "cpu":
        return 64, _clamp_pow2((lmax + 1) * cout, 16, 64), _clamp_pow2((lmax + 1) * cin, 16, 64), 4
    # gp [BLOCK_N, BLOCK_E] x xp [BLOCK_E, BLOCK_K]: same shapes as the forward, (E, N, K) roles swapped
    return _gpu_tiles(lmax, cin, cout, dtype)


def so2_apply(inp, weight, modulation, lmax, mmax, cin, cout, transpose=False, x=None, need_out=True, need_gmod=False):
    """The SO(2) map (``transpose=False``: forward, ``[E,K,cin] -> [E,K,cout]``) or its
    transpose (the input gradient, ``[E,K,cout] -> [E,K,cin]``).

    Transposed, ``modulation`` scales the result and, with ``need_gmod``, the
    modulation gradient ``[E, num_mod, cin]`` is formed against ``x``.
    Returns ``(out or None, gmod or None)``; rows ``|m| > mmax`` of ``out`` are 0.
    """
    e = inp.shape[0]
    k_in, k_out = (cout, cin) if transpose else (cin, cout)
    dev = inp.device
    out = None
    if need_out:
        alloc = torch.zeros if mmax < lmax else torch.empty
        out = alloc(e, num_coeffs(lmax), k_out, dtype=inp.dtype, device=dev)
    gmod = torch.empty(e, num_mod(lmax, mmax), cin, dtype=inp.dtype, device=dev) if need_gmod else None
    if e == 0:
        return out, gmod
    woff = block_offsets(lmax, mmax, cin, cout, dev)
    be, bn, bk, nw = _apply_tiles(dev, lmax, k_in, k_out, inp.dtype)
    mod = modulation if modulation is not None else inp
    dummy = inp
    common = dict(
        LMAX=lmax, TRANS=bool(transpose), MOD_IN=modulation is not None and not transpose,
        MOD_OUT=modulation is not None and transpose, NEED_OUT=need_out, NEED_GMOD=need_gmod,
        ACC=tl_acc(inp.dtype), BLOCK_E=be, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw,
    )
    nm = num_mod(lmax, mmax)
    for m0, nms, pair in ((0, 1, False), (1, mmax, True)):
        if nms == 0:
            continue
        grid = (triton.cdiv(e, be), triton.cdiv((lmax + 1 - m0) * k_out, bn), nms)
        with on_device(inp):
            _so2_apply_kernel[grid](
                inp, weight, woff, mod, out if out is not None else dummy, x if x is not None else dummy,
                gmod if gmod is not None else dummy, e, k_in, k_out, cin, nm, M0=m0, PAIR=pair, **common,
            )
    return out, gmod


def so2_grad_weight(grad, x, modulation, lmax, mmax, cin, cout):
    """``d loss / d weight`` ``[weight_size]`` from ``grad [E,K,cout]`` and the input ``x [E,K,cin]``."""
    e = x.shape[0]
    dev = x.device
    wsize = weight_size(lmax, mmax, cin, cout)
    adt = acc_dtype(x.dtype)
    if e == 0:
        return torch.zeros(wsize, dtype=x.dtype, device=dev)
    woff = block_offsets(lmax, mmax, cin, cout, dev)
    be, bn, bk, nw = _grad_weight_tiles(dev, lmax, cin, cout, x.dtype)
    tiles = triton.cdiv((lmax + 1) * cout, bn) * triton.cdiv((lmax + 1) * cin, bk) * (mmax + 1)
    if dev.type == "cpu":
        split = 1
    else:
        # enough programs to fill the GPU, bounded partial-sum memory (<= 32M elements)
        split = max(1, min(triton.cdiv(e, 4 * be), triton.cdiv(528, tiles), (1 << 25) // max(wsize, 1)))
    chunk = triton.cdiv(triton.cdiv(e, split), be) * be
    split = triton.cdiv(e, chunk)
    part = torch.empty(split, wsize, dtype=adt, device=dev)
    mod = modulation if modulation is not None else x
    for m0, nms, pair in ((0, 1, False), (1, mmax, True)):
        if nms == 0:
            continue
        grid = (triton.cdiv((lmax + 1 - m0) * cout, bn), triton.cdiv((lmax + 1 - m0) * cin, bk), nms * split)
        with on_device(x):
            _so2_grad_weight_kernel[grid](
                grad, x, mod, woff, part, e, cin, cout, num_mod(lmax, mmax), wsize, split, chunk,
                LMAX=lmax, M0=m0, PAIR=pair, MOD_IN=modulation is not None, ACC=tl_acc(x.dtype),
                BLOCK_E=be, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw,
            )
    return part.sum(0).to(x.dtype)


# ------------------------------------------------------------------ registry
def so2_linear_forward(x, weight, modulation, lmax, mmax, out_channels):
    """``[E, K, C_in] -> [E, K, C_out]``."""
    out, _ = so2_apply(x, weight, modulation, lmax, mmax, x.shape[2], out_channels)
    return out


def so2_linear_grads(grad, x, weight, modulation, lmax, mmax, cin, out_channels, need_x, need_weight, need_mod):
    """``(grad_x, grad_weight, grad_modulation)`` of ``y = Lin(x)``, ``[0]`` tensors where not needed.

    The one copy of the SO(2) layer's backward, shared by :func:`so2_linear_backward` and the
    Triton ``so2_frame_linear`` backward (which calls it on its edge-frame input).

    Args:
        grad: ``[E, K, out_channels]`` gradient wrt ``y``.
        x: ``[E, K, cin]`` the layer's input; only read for ``need_weight`` / ``need_mod``, so it may
            be ``None`` when neither is asked (hence ``cin`` is passed, not read from ``x``).
    Returns ``grad_x [E, K, cin]``, ``grad_weight [weight_size]``, ``grad_modulation`` (the shape of
    ``modulation``; ``[0]`` when it is ``None``).
    """
    need_mod = need_mod and modulation is not None
    gx, gw, gm = (grad.new_empty(0) for _ in range(3))  # distinct: outputs may not alias
    if need_x or need_mod:
        out, gmod = so2_apply(grad, weight, modulation, lmax, mmax, cin, out_channels, transpose=True, x=x,
                              need_out=need_x, need_gmod=need_mod)
        if need_x:
            gx = out
        if need_mod:
            gm = gmod
    if need_weight:
        gw = so2_grad_weight(grad, x, modulation, lmax, mmax, cin, out_channels)
    return gx, gw, gm


def so2_linear_backward(grad, x, weight, modulation, lmax, mmax, out_channels, need_x, need_weight, need_mod):
    """``(grad_x, grad_weight, grad_modulation)``, ``[0]`` tensors where not needed."""
    return so2_linear_grads(grad, x, weight, modulation, lmax, mmax, x.shape[2], out_channels, need_x,
                            need_weight, need_mod)


register_impl("so2_linear", "triton", so2_linear_forward, so2_linear_backward)
