"""Triton ``so2_grid_product``: the fused grid stage of ``so2_tensor_product``.

Matches ``so2ops.reference.so2_tensor_product.grid_product``: for every node
``n`` and hidden channel ``h`` the ``nu`` circle functions
``f_k(theta) = sum_s basis_s(theta) spectral[n, k, s, h]`` are evaluated on
``grid`` uniform angles, multiplied into running products ``p_1 = f_1``,
``p_k = p_{k-1} f_k``, combined as ``g = sum_k coeffs[n, k, h] p_k`` and
projected back: ``out[n, s, h] = scale_s sum_j basis_s(theta_j) g(theta_j)``
(``scale = 1/grid`` for the constant row ``s = mmax``, ``2/grid`` otherwise).

One program owns ``BLOCK`` consecutive ``(n, h)`` positions (flattened, so the
loads are contiguous along ``h``), keeps their ``[nu, 2*mmax+1]`` coefficients
in registers and loops over the grid points: nothing of size ``[N, grid, H]``
ever exists in memory.  The basis values ``cos(m theta_j)`` / ``sin(m theta_j)``
come from a small host table (``reference.grid_basis``, float64 rounded to the
accumulation dtype), so the kernel evaluates exactly the reference's basis.

Backward (``_grid_bwd_kernel``) recomputes ``f`` and the products at every grid
point: with ``gg_j = sum_s scale_s basis_s(theta_j) grad[n, s, h]``,

* ``d coeffs_k = sum_j gg_j p_k(theta_j)``;
* reverse sweep ``a_nu = gg c_nu``, ``a_k = gg c_k + a_{k+1} f_{k+1}`` (``a_k =
  d loss / d p_k``), then ``d f_k = a_k p_{k-1}`` (``p_0 = 1``) and
  ``d spectral[k, s] = sum_j d f_k(theta_j) basis_s(theta_j)``.

No division by ``f`` anywhere, so zeros of the factors are harmless.  Each
program writes its own outputs: no atomics, deterministic.  Body orders up to
``MAX_BODY_ORDER`` (constexpr ``NU``, unrolled) and any ``mmax`` (constexpr).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import register_impl
from ..layout import spectral_size
from ..reference.so2_tensor_product import grid_basis
from ._launch import on_device
from .rotate import acc_dtype, tl_acc


@triton.jit
def _col(t, kidx, i):
    """Column ``i`` of a ``[BLOCK, NUP]`` tile as a ``[BLOCK]`` vector (0 if ``i`` is out of range)."""
    return tl.sum(tl.where(kidx[None, :] == i, t, 0.0), axis=1)


@triton.jit
def _load_inputs(spec_ptr, coef_ptr, pid, NH, H, NU: tl.constexpr, S: tl.constexpr,
                 NUP: tl.constexpr, SP: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pos = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mp = pos < NH
    n = pos // H
    h = pos % H
    k = tl.arange(0, NUP).to(tl.int64)
    s = tl.arange(0, SP).to(tl.int64)
    mk = k < NU
    ms = s < S
    # spectral[n, k, s, h]
    off = ((n[:, None, None] * NU + k[None, :, None]) * S + s[None, None, :]) * H + h[:, None, None]
    msk = mp[:, None, None] & mk[None, :, None] & ms[None, None, :]
    spec = tl.load(spec_ptr + off, mask=msk, other=0.0).to(ACC)
    # coeffs[n, k, h]
    coff = (n[:, None] * NU + k[None, :]) * H + h[:, None]
    coef = tl.load(coef_ptr + coff, mask=mp[:, None] & mk[None, :], other=0.0).to(ACC)
    return pos, mp, n, h, k, s, mk, ms, off, msk, coff, spec, coef


@triton.jit
def _grid_fwd_kernel(
    spec_ptr, coef_ptr, basis_ptr, scale_ptr, out_ptr, NH, H, G,
    NU: tl.constexpr, S: tl.constexpr, NUP: tl.constexpr, SP: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pos, mp, n, h, k, s, mk, ms, off, msk, coff, spec, coef = _load_inputs(
        spec_ptr, coef_ptr, tl.program_id(0), NH, H, NU, S, NUP, SP, ACC, BLOCK)
    acc = tl.zeros((BLOCK, SP), ACC)
    for j in range(G):
        b = tl.load(basis_ptr + j * S + s, mask=ms, other=0.0)  # [SP] basis_s(theta_j)
        f = tl.sum(spec * b[None, None, :], axis=2)  # [BLOCK, NUP] f_k(theta_j)
        p = _col(f, k, 0)
        g = _col(coef, k, 0) * p
        for i in tl.static_range(1, NU):
            p = p * _col(f, k, i)
            g += _col(coef, k, i) * p
        acc += g[:, None] * b[None, :]
    scale = tl.load(scale_ptr + s, mask=ms, other=0.0)
    acc = acc * scale[None, :]
    # out[n, s, h]
    ooff = (n[:, None] * S + s[None, :]) * H + h[:, None]
    tl.store(out_ptr + ooff, acc.to(out_ptr.dtype.element_ty), mask=mp[:, None] & ms[None, :])


@triton.jit
def _grid_bwd_kernel(
    grad_ptr, spec_ptr, coef_ptr, basis_ptr, scale_ptr, gspec_ptr, gcoef_ptr, NH, H, G,
    NU: tl.constexpr, S: tl.constexpr, NUP: tl.constexpr, SP: tl.constexpr,
    NEED_S: tl.constexpr, NEED_C: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pos, mp, n, h, k, s, mk, ms, off, msk, coff, spec, coef = _load_inputs(
        spec_ptr, coef_ptr, tl.program_id(0), NH, H, NU, S, NUP, SP, ACC, BLOCK)
    scale = tl.load(scale_ptr + s, mask=ms, other=0.0)
    goff = (n[:, None] * S + s[None, :]) * H + h[:, None]
    gr = tl.load(grad_ptr + goff, mask=mp[:, None] & ms[None, :], other=0.0).to(ACC) * scale[None, :]
    gs = tl.zeros((BLOCK, NUP, SP), ACC)
    gc = tl.zeros((BLOCK, NUP), ACC)
    for j in range(G):
        b = tl.load(basis_ptr + j * S + s, mask=ms, other=0.0)
        f = tl.sum(spec * b[None, None, :], axis=2)  # [BLOCK, NUP]
        gg = tl.sum(gr * b[None, :], axis=1)  # [BLOCK] d loss / d g(theta_j)
        # running products P[:, i] = p_i and the previous ones PP[:, i] = p_{i-1} (p_{-1} = 1)
        p = _col(f, k, 0)
        P = tl.where(k[None, :] == 0, p[:, None], 0.0)
        PP = tl.where(k[None, :] == 0, 1.0, tl.zeros((BLOCK, NUP), ACC))
        for i in tl.static_range(1, NU):
            PP = tl.where(k[None, :] == i, p[:, None], PP)
            p = p * _col(f, k, i)
            P = tl.where(k[None, :] == i, p[:, None], P)
        if NEED_C:
            gc += gg[:, None] * P
        if NEED_S:
            # reverse sweep: a_i = d loss / d p_i
            a = gg * _col(coef, k, NU - 1)
            A = tl.where(k[None, :] == NU - 1, a[:, None], 0.0)
            for q in tl.static_range(1, NU):
                a = gg * _col(coef, k, NU - 1 - q) + a * _col(f, k, NU - q)
                A = tl.where(k[None, :] == NU - 1 - q, a[:, None], A)
            gs += (A * PP)[:, :, None] * b[None, None, :]
    if NEED_S:
        tl.store(gspec_ptr + off, gs.to(gspec_ptr.dtype.element_ty), mask=msk)
    if NEED_C:
        tl.store(gcoef_ptr + coff, gc.to(gcoef_ptr.dtype.element_ty), mask=mp[:, None] & mk[None, :])


# ------------------------------------------------------------------ host side
_TABLES: dict = {}


def _tables(mmax: int, grid: int, dtype: torch.dtype, device: torch.device):
    """``(basis [grid, S], scale [S])`` in the accumulation dtype, cached per device."""
    key = (mmax, grid, dtype, str(device))
    t = _TABLES.get(key)
    if t is None:
        basis = grid_basis(mmax, grid, torch.float64, device).to(dtype).contiguous()
        scale = torch.full((spectral_size(mmax),), 2.0 / grid, dtype=torch.float64)
        scale[mmax] = 1.0 / grid
        t = _TABLES[key] = (basis, scale.to(dtype=dtype, device=device))
    return t


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _block(device: torch.device, nh: int, nup: int, sp: int, backward: bool, dtype: torch.dtype) -> tuple:
    """``(BLOCK, num_warps)``: fat programs for the interpreter, register-sized ones on a GPU.

    A program holds ``BLOCK x NUP x SP`` coefficients (in the backward also as
    many gradient accumulators).  On a GPU the tile gets ``T`` values per thread
    (4 warps; ``BLOCK = 8`` at 8 warps when that leaves ``BLOCK <= 8``): ``T`` = 16 (fp32
    accumulation) or 8 (fp64) forward, 4 backward.  With these, ptxas (Triton
    3.8, sm_90) reports no spills for nu <= 8, mmax <= 8, fp16/fp32/fp64.
    """
    if device.type == "cpu":
        return max(1, min(256, _pow2(nh))), 4
    per_thread = 4 if backward else (8 if dtype == torch.float64 else 16)
    block = per_thread * 128 // (nup * sp)
    if block <= 8:
        return 8, 8
    return min(128, block), 4


def _launch_args(spectral: torch.Tensor):
    n, nu, s, h = spectral.shape
    return n * h, h, nu, s, _pow2(nu), _pow2(s)


def so2_grid_product_forward(spectral: torch.Tensor, coeffs: torch.Tensor, mmax: int, grid: int) -> torch.Tensor:
    """``[N, nu, S, H]``, ``[N, nu, H]`` -> ``[N, S, H]`` (``S = 2*mmax+1``)."""
    spectral = spectral.contiguous()
    coeffs = coeffs.contiguous()
    n, nu, s, h = spectral.shape
    out = torch.empty(n, s, h, dtype=spectral.dtype, device=spectral.device)
    if out.numel() == 0:
        return out
    if nu == 0:
        return out.zero_()
    basis, scale = _tables(mmax, grid, acc_dtype(spectral.dtype), spectral.device)
    nh, hh, nu, s, nup, sp = _launch_args(spectral)
    block, nw = _block(spectral.device, nh, nup, sp, False, spectral.dtype)
    with on_device(spectral):
        _grid_fwd_kernel[(triton.cdiv(nh, block),)](
            spectral, coeffs, basis, scale, out, nh, hh, grid,
            NU=nu, S=s, NUP=nup, SP=sp, ACC=tl_acc(spectral.dtype), BLOCK=block, num_warps=nw,
        )
    return out


def so2_grid_product_backward(grad, spectral, coeffs, mmax, grid, need_spectral, need_coeffs):
    """``(grad_spectral [N, nu, S, H], grad_coeffs [N, nu, H])``; ``[0]`` tensors where not needed."""
    gs = grad.new_empty(0)
    gc = grad.new_empty(0)
    if not (need_spectral or need_coeffs):
        return gs, gc
    grad = grad.contiguous()
    spectral = spectral.contiguous()
    coeffs = coeffs.contiguous()
    if need_spectral:
        gs = torch.empty_like(spectral)
    if need_coeffs:
        gc = torch.empty_like(coeffs)
    n, nu, s, h = spectral.shape
    if n * h == 0 or nu == 0:
        return (gs.zero_() if need_spectral else gs), (gc.zero_() if need_coeffs else gc)
    basis, scale = _tables(mmax, grid, acc_dtype(spectral.dtype), spectral.device)
    nh, hh, nu, s, nup, sp = _launch_args(spectral)
    block, nw = _block(spectral.device, nh, nup, sp, True, spectral.dtype)
    with on_device(spectral):
        _grid_bwd_kernel[(triton.cdiv(nh, block),)](
            grad, spectral, coeffs, basis, scale, gs if need_spectral else grad, gc if need_coeffs else grad,
            nh, hh, grid, NU=nu, S=s, NUP=nup, SP=sp, NEED_S=bool(need_spectral), NEED_C=bool(need_coeffs),
            ACC=tl_acc(spectral.dtype), BLOCK=block, num_warps=nw,
        )
    return gs, gc


register_impl("so2_grid_product", "triton", so2_grid_product_forward, so2_grid_product_backward)
