"""``so2ops.so2_tensor_product``: the continuous SO(2) tensor product (custom op).

The op is three stages (``so2ops.reference.so2_tensor_product``): an SO(2)
mixing into hidden circle functions (GEMMs per order m), the fused grid product
(to-grid, products up to body order nu, per-node combination, from-grid), and
an SO(2) mixing back to degrees (GEMMs per order m).  The GEMMs are shared by
every backend (torch matmul: MKL / cuBLAS); the backends differ in the fused
grid kernel ``so2_grid_product``, which never materialises the ``[N, grid, H]``
tensor, and whose backward recomputes it.  Nothing of grid size is saved for
the backward: the op saves only its inputs.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from ..dispatch import current_backend, register_impl, select, use_backend
from ..layout import LMAX_SUPPORTED, num_coeffs, spectral_size, tp_grid_size, tp_in_size, tp_out_size
from ..reference.so2_tensor_product import from_spectral, to_spectral
from ..validation import check_float, check_finite_values, check_int, check_tensor
from ._common import (autocast_inputs, autograd_backward, autograd_enabled, distinct_outputs, empty_or, extension_loaded,
                      none_if_empty, register_fp32_autocast)

MAX_BODY_ORDER = 8


def _grid(spectral, coeffs, mmax, grid):
    return select("so2_grid_product", spectral.device).forward(spectral.contiguous(), coeffs.contiguous(), mmax, grid)


@torch.library.custom_op("so2ops::so2_tensor_product", mutates_args=())
def _so2_tensor_product(
    x: torch.Tensor, w_in: torch.Tensor, coeffs: torch.Tensor, w_out: torch.Tensor,
    lmax: int, mmax: int, out_channels: int, grid: int,
) -> torch.Tensor:
    check_finite_values("x", x)
    hidden = coeffs.shape[2]
    s = to_spectral(x, w_in, lmax, mmax, hidden)
    return from_spectral(_grid(s, coeffs, mmax, grid), w_out, lmax, mmax, out_channels)


@_so2_tensor_product.register_fake
def _(x, w_in, coeffs, w_out, lmax, mmax, out_channels, grid):
    return x.new_empty(x.shape[0], x.shape[1], out_channels)


@torch.library.custom_op("so2ops::so2_tensor_product_backward", mutates_args=())
def _so2_tensor_product_backward(
    grad: torch.Tensor, x: torch.Tensor, w_in: torch.Tensor, coeffs: torch.Tensor, w_out: torch.Tensor,
    lmax: int, mmax: int, out_channels: int, grid: int,
    need_x: bool, need_w_in: bool, need_coeffs: bool, need_w_out: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = select("so2_grid_product", x.device)
    hidden = coeffs.shape[2]
    needs = (need_x, need_w_in, need_coeffs, need_w_out)
    zeros = [torch.zeros_like(t) for t in (x, w_in, coeffs, w_out)]
    with autograd_enabled():
        # the two GEMM stages by autograd; the grid stage by the backend's fused backward
        xl = x.detach().requires_grad_(need_x)
        wil = w_in.detach().requires_grad_(need_w_in)
        s = to_spectral(xl, wil, lmax, mmax, hidden)
        # from_spectral is linear in q: its value only matters for the w_out gradient
        if need_w_out:
            q = impl.forward(s.detach().contiguous(), coeffs.contiguous(), mmax, grid)
        else:
            q = s.new_zeros(s.shape[0], s.shape[2], hidden)
        q.requires_grad_(True)
        wol = w_out.detach().requires_grad_(need_w_out)
        out = from_spectral(q, wol, lmax, mmax, out_channels)
        wrt = [q] + ([wol] if need_w_out else [])
        g = torch.autograd.grad(out, wrt, grad, allow_unused=True)
        gq = g[0] if g[0] is not None else torch.zeros_like(q)
        g_w_out = (g[1] if g[1] is not None else zeros[3]) if need_w_out else None
        need_s = need_x or need_w_in
        gs, gc = impl.backward(gq.contiguous(), s.detach().contiguous(), coeffs.contiguous(), mmax, grid, need_s, need_coeffs)
        g_x = g_w_in = None
        if need_s and s.requires_grad:
            lin = [t for t, n in ((xl, need_x), (wil, need_w_in)) if n]
            gl = list(torch.autograd.grad(s, lin, gs, allow_unused=True))
            if need_x:
                g_x = gl.pop(0)
            if need_w_in:
                g_w_in = gl.pop(0)
    outs = []
    for t, n, z in zip((g_x, g_w_in, gc if need_coeffs else None, g_w_out), needs, zeros):
        outs.append((z if t is None else t.contiguous()) if n else grad.new_empty(0))
    return distinct_outputs(outs, needs, grad)


@_so2_tensor_product_backward.register_fake
def _(grad, x, w_in, coeffs, w_out, lmax, mmax, out_channels, grid, need_x, need_w_in, need_coeffs, need_w_out):
    return (empty_or(need_x, x, grad), empty_or(need_w_in, w_in, grad),
            empty_or(need_coeffs, coeffs, grad), empty_or(need_w_out, w_out, grad))


def _setup(ctx, inputs, output):
    # Backward may run on an autograd worker thread, which does not see the
    # caller's use_backend() context: remember the choice made at forward time.
    ctx.backend = current_backend()
    x, w_in, coeffs, w_out, lmax, mmax, out_channels, grid = inputs
    ctx.save_for_backward(x, w_in, coeffs, w_out)
    ctx.args = (lmax, mmax, out_channels, grid)


def _backward(ctx, grad):
    with use_backend(ctx.backend):
        x, w_in, coeffs, w_out = ctx.saved_tensors
        n = ctx.needs_input_grad
        outs = _so2_tensor_product_backward(grad.contiguous(), x, w_in, coeffs, w_out, *ctx.args, n[0], n[1], n[2], n[3])
        return tuple(none_if_empty(f, g) for f, g in zip(n[:4], outs)) + (None, None, None, None)


_so2_tensor_product.register_autograd(_backward, setup_context=_setup)
register_fp32_autocast(_so2_tensor_product)
register_fp32_autocast(_so2_tensor_product_backward)  # a backward run inside the autocast block


def so2_tensor_product(
    x: torch.Tensor,
    w_in: torch.Tensor,
    coeffs: torch.Tensor,
    w_out: torch.Tensor,
    lmax: int,
    mmax: int,
    out_channels: int,
    grid: Optional[int] = None,
) -> torch.Tensor:
    """Continuous SO(2) tensor product of local-frame node features.

    Per node and hidden channel ``h``: ``f_k = SO2Mix_k(x)`` are ``nu`` functions
    on the circle (orders ``|m| <= mmax``); ``g = sum_k coeffs[:, k] * f_1 ... f_{k+1}``
    (body orders 1..nu, a per-node combination like MACE's symmetric
    contraction); the result is ``SO2Mix_out(g)`` truncated to ``|m| <= mmax``.
    Exactly equivariant to rolls about the frame's polar axis (docs/math.md section 5).

    Args:
        x: ``[N, (lmax+1)**2, C]`` features in each node's local frame (rows ``|m| > mmax`` unused).
        w_in: ``[nu, tp_in_size(lmax, mmax, C, H)]``: one SO(2) mixing per factor.
        coeffs: ``[N, nu, H]`` invariant per-node weights of the ``nu`` products.
        w_out: ``[tp_out_size(lmax, mmax, H, out_channels)]``.
        lmax, mmax: degrees of the features, orders kept.
        out_channels: ``C_out``.
        grid: number of uniform angles; default and minimum ``tp_grid_size(mmax, nu)``.
    Returns:
        ``[N, (lmax+1)**2, out_channels]`` (rows ``|m| > mmax`` zero; float32 under ``torch.autocast``).
    """
    check_int("lmax", lmax, 0, LMAX_SUPPORTED)
    if isinstance(x, torch.Tensor):
        x, w_in, coeffs, w_out = autocast_inputs(x.device, x, w_in, coeffs, w_out)
    check_int("mmax", mmax, 0, lmax)
    check_int("out_channels", out_channels, 1, 1 << 20)
    check_tensor("x", x, (None, num_coeffs(lmax), None))
    check_float("x", x)
    if x.shape[2] == 0:
        raise ValueError("x has 0 channels; expected at least 1")
    check_tensor("coeffs", coeffs, (x.shape[0], None, None), dtype=x.dtype, device=x.device)
    nu, hidden = coeffs.shape[1], coeffs.shape[2]
    check_int("body order (coeffs.shape[1])", nu, 1, MAX_BODY_ORDER)
    if hidden == 0:
        raise ValueError("coeffs has 0 hidden channels; expected at least 1")
    check_tensor("w_in", w_in, (nu, tp_in_size(lmax, mmax, x.shape[2], hidden)), dtype=x.dtype, device=x.device)
    check_tensor("w_out", w_out, (tp_out_size(lmax, mmax, hidden, out_channels),), dtype=x.dtype, device=x.device)
    need = tp_grid_size(mmax, nu)
    if grid is None:
        grid = need
    check_int("grid", grid, need, 1 << 16)
    return _so2_tensor_product(x.contiguous(), w_in.contiguous(), coeffs.contiguous(), w_out.contiguous(),
                               lmax, mmax, out_channels, int(grid))


# ------------------------------------------------------------------ backends of the fused grid stage
def _ref_backward(grad, spectral, coeffs, mmax, grid, need_s, need_c):
    fn = lambda s, c: reference.grid_product(s, c, mmax, grid)  # noqa: E731
    return tuple(autograd_backward(fn, [spectral, coeffs], [need_s, need_c], grad))


register_impl("so2_grid_product", "reference",
              lambda s, c, mmax, grid: reference.grid_product(s, c, mmax, grid), _ref_backward)


def _cxx_forward(spectral, coeffs, mmax, grid):
    return torch.ops.so2ops_C.so2_grid_product_forward(spectral, coeffs, mmax, grid)


def _cxx_backward(grad, spectral, coeffs, mmax, grid, need_s, need_c):
    return tuple(torch.ops.so2ops_C.so2_grid_product_backward(grad, spectral, coeffs, mmax, grid, need_s, need_c))


if extension_loaded() and hasattr(torch.ops.so2ops_C, "so2_grid_product_forward"):
    for _b in ("cpu", "cuda"):
        register_impl("so2_grid_product", _b, _cxx_forward, _cxx_backward)

__all__ = ["so2_tensor_product", "spectral_size"]
