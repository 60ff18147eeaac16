"""Triton ``so2_layer_norm``: matches ``so2ops.reference.so2_layer_norm``.

One program per tile of ``BLOCK_N`` rows holding every channel of them
(``BLOCK_C = next_pow2(C)``: the statistics of a row reduce over all its
channels), walking the degrees one at a time with a
``[BLOCK_N, pow2(2l+1), BLOCK_C]`` tile per degree (shapes spelled from the
static degree, as in ``rotate``).  Math: ``csrc/include/so2ops/so2_norm_gate.h``.

* forward: the degree-0 mean / variance, the per-degree sums of squares
  (``separate``: each degree is written as soon as its RMS is known;
  ``joint``: a second sweep writes the degrees once their common RMS is known);
* backward: one sweep for the sums of squares and the per-degree
  ``A_l = sum g w x``, one sweep writing ``grad_x`` and the program's share of
  the weight / bias gradient into ``part[program, lmax + 2, C]``, which the
  launcher sums over programs (``part.sum(0)``: a fixed-order reduction, no
  atomics, deterministic).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import register_impl
from ._launch import on_device
from .rotate import _pow2, acc_dtype, tl_acc


@triton.jit
def _degree_tile(ptr, rows, c, C, mn, mc, K: tl.constexpr, l: tl.constexpr, ACC: tl.constexpr):
    """``[BLOCK_N, pow2(2l+1), BLOCK_C]`` entries of degree ``l`` (zeros outside), and their mask / offsets."""
    a = tl.arange(0, _pow2(2 * l + 1))
    off = rows[:, None, None] * (K * C) + ((l * l + a) * C)[None, :, None] + c[None, None, :]
    msk = mn[:, None, None] & (a < 2 * l + 1)[None, :, None] & mc[None, None, :]
    return tl.load(ptr + off, mask=msk, other=0.0).to(ACC), off, msk


@triton.jit
def _row0_stats(x_ptr, rows, c, C, mn, mc, eps, K: tl.constexpr, ACC: tl.constexpr):
    """Degree 0 of a row tile: ``x0`` ``[BLOCK_N, BLOCK_C]``, ``xhat``, ``rstd`` ``[BLOCK_N]``."""
    m2 = mn[:, None] & mc[None, :]
    x0 = tl.load(x_ptr + rows[:, None] * (K * C) + c[None, :], mask=m2, other=0.0).to(ACC)
    mean = tl.sum(x0, axis=1) / C
    d = tl.where(m2, x0 - mean[:, None], 0.0)
    rstd = _rsqrt(tl.sum(d * d, axis=1) / C + eps, mn)
    return x0, d * rstd[:, None], rstd


@triton.jit
def _degree_weight(l: tl.constexpr, LMAX: tl.constexpr, JOINT: tl.constexpr, C, ACC: tl.constexpr):
    """``alpha_l`` (so2_norm_gate.h): weight of degree ``l``'s sum of squares in its group's mean square."""
    if JOINT:
        return 1.0 / (C.to(ACC) * ((2 * l + 1) * LMAX))
    else:
        return 1.0 / (C.to(ACC) * (2 * l + 1))


@triton.jit
def _rsqrt(v, mn):
    """``1 / sqrt(v)`` on the tile's real rows, 0 on its padding rows (no inf * 0 there when eps = 0)."""
    return tl.where(mn, 1.0 / tl.sqrt(v), 0.0)


@triton.jit
def _ln_forward_kernel(x_ptr, w_ptr, b_ptr, out_ptr, N, C, eps,
                       LMAX: tl.constexpr, JOINT: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    c = tl.arange(0, BLOCK_C).to(tl.int64)
    mn, mc = rows < N, c < C
    m2 = mn[:, None] & mc[None, :]
    x0, xhat, rstd = _row0_stats(x_ptr, rows, c, C, mn, mc, eps, K, ACC)
    w0 = tl.load(w_ptr + c, mask=mc, other=0.0).to(ACC)
    b = tl.load(b_ptr + c, mask=mc, other=0.0).to(ACC)
    tl.store(out_ptr + rows[:, None] * (K * C) + c[None, :], (xhat * w0[None, :] + b[None, :]).to(out_ptr.dtype.element_ty),
             mask=m2)
    ms = tl.zeros((BLOCK_N,), ACC)
    for l in tl.static_range(1, LMAX + 1):
        xl, off, msk = _degree_tile(x_ptr, rows, c, C, mn, mc, K, l, ACC)
        ss = tl.sum(tl.sum(xl * xl, axis=2), axis=1)
        wl = tl.load(w_ptr + l * C + c, mask=mc, other=0.0).to(ACC)
        if JOINT:
            ms += ss * _degree_weight(l, LMAX, JOINT, C, ACC)
        else:
            r = _rsqrt(ss * _degree_weight(l, LMAX, JOINT, C, ACC) + eps, mn)
            y = xl * r[:, None, None] * wl[None, None, :]
            tl.store(out_ptr + off, y.to(out_ptr.dtype.element_ty), mask=msk)
    if JOINT:
        r = _rsqrt(ms + eps, mn)
        for l in tl.static_range(1, LMAX + 1):
            xl, off, msk = _degree_tile(x_ptr, rows, c, C, mn, mc, K, l, ACC)
            wl = tl.load(w_ptr + l * C + c, mask=mc, other=0.0).to(ACC)
            y = xl * r[:, None, None] * wl[None, None, :]
            tl.store(out_ptr + off, y.to(out_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _ln_backward_kernel(g_ptr, x_ptr, w_ptr, gx_ptr, part_ptr, N, C, eps,
                        LMAX: tl.constexpr, JOINT: tl.constexpr, NEED_X: tl.constexpr, NEED_PART: tl.constexpr,
                        ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    c = tl.arange(0, BLOCK_C).to(tl.int64)
    mn, mc = rows < N, c < C
    m2 = mn[:, None] & mc[None, :]
    part_row = part_ptr + pid.to(tl.int64) * ((LMAX + 2) * C)
    # degree 0: the layer-norm backward
    x0, xhat, rstd = _row0_stats(x_ptr, rows, c, C, mn, mc, eps, K, ACC)
    g0 = tl.load(g_ptr + rows[:, None] * (K * C) + c[None, :], mask=m2, other=0.0).to(ACC)
    w0 = tl.load(w_ptr + c, mask=mc, other=0.0).to(ACC)
    gh = g0 * w0[None, :]
    mg = tl.sum(gh, axis=1) / C
    mgx = tl.sum(gh * xhat, axis=1) / C
    if NEED_X:
        gx0 = rstd[:, None] * (gh - mg[:, None] - xhat * mgx[:, None])
        tl.store(gx_ptr + rows[:, None] * (K * C) + c[None, :], gx0.to(gx_ptr.dtype.element_ty), mask=m2)
    if NEED_PART:
        tl.store(part_row + c, tl.sum(g0 * xhat, axis=0), mask=mc)
        tl.store(part_row + (LMAX + 1) * C + c, tl.sum(g0, axis=0), mask=mc)
    # degrees l > 0, sweep 1: sums of squares and A_l = sum g w x (joint: summed over the degrees)
    ms = tl.zeros((BLOCK_N,), ACC)
    acc_a = tl.zeros((BLOCK_N,), ACC)
    for l in tl.static_range(1, LMAX + 1):
        xl, off, msk = _degree_tile(x_ptr, rows, c, C, mn, mc, K, l, ACC)
        gl = tl.load(g_ptr + off, mask=msk, other=0.0).to(ACC)
        wl = tl.load(w_ptr + l * C + c, mask=mc, other=0.0).to(ACC)
        alpha = _degree_weight(l, LMAX, JOINT, C, ACC)
        ss = tl.sum(tl.sum(xl * xl, axis=2), axis=1)
        a = tl.sum(tl.sum(gl * xl * wl[None, None, :], axis=2), axis=1)
        if JOINT:
            ms += alpha * ss
            acc_a += a
        else:
            # separate: this degree is its own group, finish it now
            r = _rsqrt(alpha * ss + eps, mn)
            coef = r * r * r * alpha * a
            if NEED_X:
                gxl = r[:, None, None] * gl * wl[None, None, :] - coef[:, None, None] * xl
                tl.store(gx_ptr + off, gxl.to(gx_ptr.dtype.element_ty), mask=msk)
            if NEED_PART:
                tl.store(part_row + l * C + c, tl.sum(tl.sum(gl * xl, axis=1) * r[:, None], axis=0), mask=mc)
    if JOINT:
        r = _rsqrt(ms + eps, mn)
        for l in tl.static_range(1, LMAX + 1):
            xl, off, msk = _degree_tile(x_ptr, rows, c, C, mn, mc, K, l, ACC)
            gl = tl.load(g_ptr + off, mask=msk, other=0.0).to(ACC)
            wl = tl.load(w_ptr + l * C + c, mask=mc, other=0.0).to(ACC)
            coef = r * r * r * _degree_weight(l, LMAX, JOINT, C, ACC) * acc_a
            if NEED_X:
                gxl = r[:, None, None] * gl * wl[None, None, :] - coef[:, None, None] * xl
                tl.store(gx_ptr + off, gxl.to(gx_ptr.dtype.element_ty), mask=msk)
            if NEED_PART:
                tl.store(part_row + l * C + c, tl.sum(tl.sum(gl * xl, axis=1) * r[:, None], axis=0), mask=mc)


def _tiles(device: torch.device, lmax: int, c: int):
    """(BLOCK_N, BLOCK_C, num_warps): every channel of a row in one tile; fat row tiles for the
    interpreter (fewer programs), a few rows per program on a GPU (the degree tile
    ``[BLOCK_N, pow2(2l+1), BLOCK_C]`` stays register-sized up to C = 128 at lmax 8)."""
    bc = triton.next_power_of_2(max(c, 1))
    if device.type == "cpu":
        return 16, bc, 4
    return (2 if lmax <= 4 else 1), bc, (4 if bc <= 128 else 8)


def layer_norm_forward(x, weight, bias, lmax, eps, joint):
    """``[N, K, C]`` -> ``[N, K, C]`` (``so2ops.reference.so2_layer_norm``)."""
    n, c = x.shape[0], x.shape[2]
    out = torch.empty_like(x)
    if n == 0:
        return out
    bn, bc, nw = _tiles(x.device, lmax, c)
    with on_device(x):
        _ln_forward_kernel[(triton.cdiv(n, bn),)](
            x, weight, bias, out, n, c, float(eps),
            LMAX=lmax, JOINT=bool(joint), ACC=tl_acc(x.dtype), BLOCK_N=bn, BLOCK_C=bc, num_warps=nw,
        )
    return out


def layer_norm_backward(grad, x, weight, lmax, eps, joint, need_x, need_weight, need_bias):
    """``(grad_x [N, K, C], grad_weight [lmax+1, C], grad_bias [C])``; ``[0]`` tensors where not needed."""
    n, c = x.shape[0], x.shape[2]
    empty = grad.new_empty(0)
    need_part = need_weight or need_bias
    gx = torch.empty_like(x) if need_x else empty
    if n == 0 or not (need_x or need_part):
        gw = torch.zeros_like(weight) if need_weight else grad.new_empty(0)
        gb = weight.new_zeros(c) if need_bias else grad.new_empty(0)
        return gx, gw, gb
    bn, bc, nw = _tiles(x.device, lmax, c)
    programs = triton.cdiv(n, bn)
    part = torch.empty(programs if need_part else 1, lmax + 2, c, dtype=acc_dtype(x.dtype), device=x.device)
    with on_device(x):
        _ln_backward_kernel[(programs,)](
            grad, x, weight, gx if need_x else grad, part, n, c, float(eps),
            LMAX=lmax, JOINT=bool(joint), NEED_X=bool(need_x), NEED_PART=bool(need_part), ACC=tl_acc(x.dtype),
            BLOCK_N=bn, BLOCK_C=bc, num_warps=nw,
        )
    # two separate sums: outputs of a custom op may not alias each other
    gw = part[:, : lmax + 1].sum(0).to(x.dtype) if need_weight else grad.new_empty(0)
    gb = part[:, lmax + 1].sum(0).to(x.dtype) if need_bias else grad.new_empty(0)
    return gx, gw, gb


register_impl("so2_layer_norm", "triton", layer_norm_forward, layer_norm_backward)
