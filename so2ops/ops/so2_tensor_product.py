"""``so2ops.so2_tensor_product``: the continuous SO(2) tensor product (custom op).

The op is three stages (``so2ops.reference.so2_tensor_product``): an SO(2)
mixing into hidden circle functions (GEMMs per order m), the fused grid product
(to-grid, products up to body order nu, per-node combination, from-grid), and
an SO(2) mixing back to degrees (GEMMs per order m).  The GEMMs, forward and
hand-written backward (``_tp_gemm``: one GEMM per product and order, no autograd
inside the backward), are shared by every backend (torch matmul: MKL / cuBLAS);
the backends differ in the fused grid kernel ``so2_grid_product``, which never
materialises the ``[N, grid, H]`` tensor, and whose backward recomputes it.
Nothing of grid size is saved for the backward: the op saves only its inputs.
The reference backend of the whole op is checked against
``so2ops.reference.so2_tensor_product`` (the readable oracle) by the tests.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from ..dispatch import current_backend, register_impl, select, use_backend
from ..layout import LMAX_SUPPORTED, num_coeffs, spectral_size, tp_grid_size, tp_in_size, tp_out_size
from ..validation import check_float, check_finite_values, check_int, check_tensor
from . import _tp_gemm
from ._common import (autocast_inputs, autograd_backward, distinct_outputs, empty_or, extension_loaded, none_if_empty,
                      register_fp32_autocast)

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
    s = _tp_gemm.to_spectral(x, w_in.contiguous(), lmax, mmax, hidden)
    return _tp_gemm.from_spectral(_grid(s, coeffs, mmax, grid), w_out.contiguous(), lmax, mmax, out_channels)


@_so2_tensor_product.register_fake
def _(x, w_in, coeffs, w_out, lmax, mmax, out_channels, grid):
    return x.new_empty(x.shape[0], x.shape[1], out_channels)


@torch.library.custom_op("so2ops::so2_tensor_product_backward", mutates_args=())
def _so2_tensor_product_backward(
    grad: torch.Tensor, x: torch.Tensor, w_in: torch.Tensor, coeffs: torch.Tensor, w_out: torch.Tensor,
    lmax: int, mmax: int, out_channels: int, grid: int,
    need_x: bool, need_w_in: bool, need_coeffs: bool, need_w_out: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients asked for by ``need_*``, a ``[0]`` placeholder for the others.

    Chain: ``out = from_spectral(q, w_out)``, ``q = grid(s, coeffs)``, ``s = to_spectral(x, w_in)``.
    The GEMM stages have hand-written backward formulas (``_tp_gemm``), the grid stage
    the backend's fused backward; ``s`` (and ``q``, for the ``w_out`` gradient only:
    ``from_spectral`` is linear in ``q``) are recomputed, since the op saves only its inputs.
    A stage whose gradient no requested output depends on is not run.
    """
    hidden = coeffs.shape[2]
    w_in, w_out = w_in.contiguous(), w_out.contiguous()
    need_s = need_x or need_w_in  # the gradient of the circle functions s
    need_q = need_s or need_coeffs  # the gradient of the grid stage's output q
    g_x = g_w_in = g_c = g_w_out = None
    if need_q or need_w_out:
        impl = select("so2_grid_product", x.device)
        s, gathered = _tp_gemm.to_spectral_gathered(x, w_in, lmax, mmax, hidden)
        q = impl.forward(s, coeffs.contiguous(), mmax, grid) if need_w_out else None
        gq, g_w_out = _tp_gemm.from_spectral_backward(grad, q, w_out, lmax, mmax, hidden, need_q, need_w_out)
        if need_q:
            gs, gc = impl.backward(gq, s, coeffs.contiguous(), mmax, grid, need_s, need_coeffs)
            g_c = gc if need_coeffs else None
            if need_s:
                g_x, g_w_in = _tp_gemm.to_spectral_backward(gs, x, w_in, lmax, mmax, need_x, need_w_in,
                                                               gathered)
    outs = [t.contiguous() if n else grad.new_empty(0)
            for t, n in zip((g_x, g_w_in, g_c, g_w_out), (need_x, need_w_in, need_coeffs, need_w_out))]
    return distinct_outputs(outs, (need_x, need_w_in, need_coeffs, need_w_out), grad)


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
