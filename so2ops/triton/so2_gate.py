"""Triton ``so2_gate``: matches ``so2ops.reference.so2_gate``.

Elementwise, one program per tile of ``BLOCK_N`` rows x ``BLOCK_C`` channels,
walking the degrees with a ``[BLOCK_N, pow2(2l+1), BLOCK_C]`` tile per degree:
the sigmoid of each gate logit is computed once and applied to the degree's
``2l+1`` rows; the backward sums ``g * x`` over them for the logit's gradient
(within the program: no atomics).  Math: ``csrc/include/so2ops/so2_norm_gate.h``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import register_impl
from ._launch import on_device
from .rotate import _pow2, tl_acc


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _gate_kernel(x_ptr, z_ptr, g_ptr, out_ptr, gz_ptr, N, C,
                 LMAX: tl.constexpr, BACKWARD: tl.constexpr, NEED_X: tl.constexpr, NEED_Z: tl.constexpr,
                 ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Forward (``out`` = the gated x) or backward (``out`` = grad_x, ``gz`` = grad of the logits)."""
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    mn, mc = rows < N, c < C
    m2 = mn[:, None] & mc[None, :]
    o0 = rows[:, None] * (K * C) + c[None, :]
    x0 = tl.load(x_ptr + o0, mask=m2, other=0.0).to(ACC)
    s0 = _sigmoid(x0)
    if BACKWARD:
        if NEED_X:
            g0 = tl.load(g_ptr + o0, mask=m2, other=0.0).to(ACC)
            tl.store(out_ptr + o0, (g0 * (s0 + x0 * s0 * (1.0 - s0))).to(out_ptr.dtype.element_ty), mask=m2)
    else:
        tl.store(out_ptr + o0, (x0 * s0).to(out_ptr.dtype.element_ty), mask=m2)
    for l in tl.static_range(1, LMAX + 1):
        zo = (rows[:, None] * LMAX + (l - 1)) * C + c[None, :]
        s = _sigmoid(tl.load(z_ptr + zo, mask=m2, other=0.0).to(ACC))
        a = tl.arange(0, _pow2(2 * l + 1))
        off = rows[:, None, None] * (K * C) + ((l * l + a) * C)[None, :, None] + c[None, None, :]
        msk = mn[:, None, None] & (a < 2 * l + 1)[None, :, None] & mc[None, None, :]
        if BACKWARD:
            gl = tl.load(g_ptr + off, mask=msk, other=0.0).to(ACC)
            if NEED_X:
                tl.store(out_ptr + off, (gl * s[:, None, :]).to(out_ptr.dtype.element_ty), mask=msk)
            if NEED_Z:
                xl = tl.load(x_ptr + off, mask=msk, other=0.0).to(ACC)
                gz = tl.sum(gl * xl, axis=1) * s * (1.0 - s)
                tl.store(gz_ptr + zo, gz.to(gz_ptr.dtype.element_ty), mask=m2)
        else:
            xl = tl.load(x_ptr + off, mask=msk, other=0.0).to(ACC)
            tl.store(out_ptr + off, (xl * s[:, None, :]).to(out_ptr.dtype.element_ty), mask=msk)


def _tiles(device: torch.device, lmax: int, c: int):
    """(BLOCK_N, BLOCK_C, num_warps): fat tiles for the interpreter, register-sized ones on a GPU."""
    if device.type == "cpu":
        return 16, min(triton.next_power_of_2(c), 128), 4
    return (4 if lmax <= 4 else 2), min(triton.next_power_of_2(c), 64), 4


def _launch(x, logits, grad, out, gz, backward, need_x, need_z):
    n, c = x.shape[0], x.shape[2]
    lmax = logits.shape[1]
    bn, bc, nw = _tiles(x.device, lmax, c)
    with on_device(x):
        _gate_kernel[(triton.cdiv(n, bn), triton.cdiv(c, bc))](
            x, logits if lmax > 0 else x, grad, out, gz, n, c,  # lmax 0: the logits are never read
            LMAX=lmax, BACKWARD=backward, NEED_X=need_x, NEED_Z=need_z, ACC=tl_acc(x.dtype),
            BLOCK_N=bn, BLOCK_C=bc, num_warps=nw,
        )


def gate_forward(x, logits):
    """``[N, K, C]`` -> ``[N, K, C]`` (``so2ops.reference.so2_gate``)."""
    out = torch.empty_like(x)
    if x.shape[0] > 0:
        _launch(x, logits, x, out, out, False, True, False)  # grad / gz: never dereferenced
    return out


def gate_backward(grad, x, logits, need_x, need_logits):
    """``(grad_x [N, K, C], grad_logits [N, lmax, C])``; ``[0]`` tensors where not needed."""
    gx = torch.empty_like(x) if need_x else grad.new_empty(0)
    gz = torch.empty_like(logits) if need_logits else grad.new_empty(0)
    if x.shape[0] > 0 and (need_x or need_logits):
        _launch(x, logits, grad, gx if need_x else grad, gz if need_logits else grad, True, bool(need_x),
                bool(need_logits))
    return gx, gz


register_impl("so2_gate", "triton", gate_forward, gate_backward)
