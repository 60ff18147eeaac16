"""Triton ``edge_wigner``: matches ``so2ops.reference.edge_wigner``.

Forward: one program per block of ``BLOCK_E`` edges.  It builds the edge frame
``R(u)`` (the two charts of ``so2ops.reference.frames``), rotates the
``K = 3*lmax+3`` sample points of ``so2ops.wigner_tables`` (vectorised over the
points axis), evaluates the real spherical harmonics by the polynomial
recurrences of ``so2ops.reference.spherical_harmonics`` (unrolled at trace time
for the constexpr ``lmax``) and contracts them with the pseudo-inverse table:
``D^l[m, m'] = sum_k Y^l_m(R p_k) pinv[k, l*l+l+m']``.

Backward: the op is small (a few hundred flops per edge), so the gradient is
the reference autograd of the frame/SH construction (exactly the derivative
of the same polynomials); half-precision inputs are differentiated in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from ..dispatch import register_impl
from ..layout import wigner_size
from ..ops._common import autograd_backward
from ..wigner_tables import num_points, wigner_tables
from ._launch import on_device


@triton.constexpr_function
def _pow2(n):
    """Smallest power of two ``>= n``.  Builtins only: calling ``triton.next_power_of_2``
    (itself a constexpr function in Triton >= 3.5) from here fails when compiling for a GPU."""
    p = 1
    while p < n:
        p *= 2
    return p


@triton.constexpr_function
def _sh_norm(l, m):
    """``sqrt((2 - delta_m0) (2l+1) (l-m)! / (l+m)!)``, the factor of ``so2ops.reference.sh_norms``.

    Written with builtins only: when compiling for a GPU, Triton hashes every
    global a constexpr function references and refuses plain Python callables
    (``sh_norms`` is an ``lru_cache`` wrapper), which the interpreter never checks.
    Evaluated in Python float64 and folded as an exact fp64 literal.
    """
    f = 2.0 * l + 1.0
    for k in range(l - m + 1, l + m + 1):  # (l-m)!/(l+m)! = 1 / prod_{k=l-m+1}^{l+m} k
        f = f / k
    return (2.0 * f if m > 0 else f) ** 0.5


@triton.constexpr_function
def _woff(l):
    return l * (2 * l - 1) * (2 * l + 1) // 3


@triton.jit
def _store_row(out_ptr, row_base, y, pinv_ptr, k, mk, L: tl.constexpr, M: tl.constexpr, NCOEF: tl.constexpr,
               me, NPM: tl.constexpr):
    """``out[e, woff(l) + (m+l)*(2l+1) + m'] = sum_k y[e, k] * pinv[k, l*l+l+m']`` for all ``m'``."""
    n: tl.constexpr = 2 * L + 1
    j = tl.arange(0, NPM).to(tl.int64)
    mj = j < n
    b = tl.load(pinv_ptr + k[:, None] * NCOEF + L * L + j[None, :], mask=mk[:, None] & mj[None, :], other=0.0)
    row = tl.sum(y[:, :, None] * b[None, :, :].to(y.dtype), axis=1)  # [BE, NPM]
    col = _woff(L) + (M + L) * n + j
    tl.store(out_ptr + row_base[:, None] + col[None, :], row.to(out_ptr.dtype.element_ty), mask=me[:, None] & mj[None, :])


@triton.jit
def _edge_wigner_fwd_kernel(
    vec_ptr, pts_ptr, pinv_ptr, out_ptr, E,
    LMAX: tl.constexpr, NPTS: tl.constexpr, P: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr,
):
    KP: tl.constexpr = _pow2(NPTS)
    NCOEF: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    NPM: tl.constexpr = _pow2(2 * LMAX + 1)
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
    me = e < E
    e64 = e.to(tl.int64)
    # masked lanes read (0, 1, 0): a valid unit vector, so no 0/0 anywhere
    vx = tl.load(vec_ptr + e64 * 3 + 0, mask=me, other=0.0).to(ACC)
    vy = tl.load(vec_ptr + e64 * 3 + 1, mask=me, other=1.0).to(ACC)
    vz = tl.load(vec_ptr + e64 * 3 + 2, mask=me, other=0.0).to(ACC)
    nrm = tl.sqrt(vx * vx + vy * vy + vz * vz)
    ux, uy, uz = vx / nrm, vy / nrm, vz / nrm
    # frame R(u), chart chosen by the sign of u_y (so2ops/reference/frames.py)
    sign = tl.where(uy < 0, -1.0, 1.0).to(ACC)
    a = ux * sign
    c = uy * sign
    b = uz
    inv = 1.0 / (1.0 + c)
    r00 = (c + b * b * inv) * sign
    r01 = -a * sign
    r02 = -a * b * inv
    r10 = a * sign
    r11 = c * sign
    r12 = b
    r20 = -a * b * inv * sign
    r21 = -b * sign
    r22 = c + a * a * inv
    # rotated sample points R p_k: [BLOCK_E, KP]
    k = tl.arange(0, KP).to(tl.int64)
    mk = k < NPTS
    px = tl.load(pts_ptr + k * 3 + 0, mask=mk, other=0.0).to(ACC)[None, :]
    py = tl.load(pts_ptr + k * 3 + 1, mask=mk, other=0.0).to(ACC)[None, :]
    pz = tl.load(pts_ptr + k * 3 + 2, mask=mk, other=0.0).to(ACC)[None, :]
    x = r00[:, None] * px + r01[:, None] * py + r02[:, None] * pz
    y = r10[:, None] * px + r11[:, None] * py + r12[:, None] * pz
    z = r20[:, None] * px + r21[:, None] * py + r22[:, None] * pz
    row_base = e64 * P
    # spherical harmonics by recurrence, consumed one coefficient at a time
    cm = tl.full(x.shape, 1.0, ACC)
    sm = tl.zeros(x.shape, ACC)
    q_mm = tl.full(x.shape, 1.0, ACC)
    for m in tl.static_range(LMAX + 1):
        if m > 0:
            cm, sm = z * cm - x * sm, x * cm + z * sm
            q_mm = q_mm * (2 * m - 1)
        q_prev = tl.zeros(x.shape, ACC)
        q_cur = q_mm
        for l in tl.static_range(m, LMAX + 1):
            if l == m + 1:
                q_prev, q_cur = q_cur, (2 * m + 1) * y * q_cur
            elif l > m + 1:
                q_prev, q_cur = q_cur, ((2 * l - 1) * y * q_cur - (l + m - 1) * q_prev) / (l - m)
            nq = _sh_norm(l, m) * q_cur
            if m == 0:
                _store_row(out_ptr, row_base, nq, pinv_ptr, k, mk, l, 0, NCOEF, me, NPM)
            else:
                _store_row(out_ptr, row_base, nq * cm, pinv_ptr, k, mk, l, m, NCOEF, me, NPM)
                _store_row(out_ptr, row_base, nq * sm, pinv_ptr, k, mk, l, -m, NCOEF, me, NPM)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block_e(device: torch.device, lmax: int) -> int:
    """``BLOCK_E`` of ``_edge_wigner_fwd_kernel``."""
    return 64 if device.type == "cpu" else (32 if lmax <= 4 else 16)


def edge_wigner_forward(edge_vec: torch.Tensor, lmax: int) -> torch.Tensor:
    """``[E, 3] -> [E, wigner_size(lmax)]`` (dtype of ``edge_vec``)."""
    e = edge_vec.shape[0]
    p = wigner_size(lmax)
    out = torch.empty(e, p, dtype=edge_vec.dtype, device=edge_vec.device)
    if e == 0:
        return out
    cdt = _compute_dtype(edge_vec.dtype)
    points, pinv = wigner_tables(lmax, cdt, edge_vec.device)
    block_e = _block_e(edge_vec.device, lmax)
    grid = (triton.cdiv(e, block_e),)
    with on_device(edge_vec):
        _edge_wigner_fwd_kernel[grid](
            edge_vec.contiguous(), points, pinv, out, e,
            LMAX=lmax, NPTS=num_points(lmax), P=p, ACC=tl.float64 if cdt == torch.float64 else tl.float32,
            BLOCK_E=block_e,
        )
    return out


def edge_wigner_backward(grad: torch.Tensor, edge_vec: torch.Tensor, lmax: int) -> torch.Tensor:
    """``d loss / d edge_vec`` ``[E, 3]`` by autograd of the reference construction."""
    cdt = _compute_dtype(edge_vec.dtype)
    (g,) = autograd_backward(
        lambda v: reference.edge_wigner(v, lmax), [edge_vec.to(cdt)], [True], grad.to(cdt)
    )
    return g.to(edge_vec.dtype)


register_impl("edge_wigner", "triton", edge_wigner_forward, edge_wigner_backward)
