"""``so2ops.so2_linear``: SO(2) convolution in the edge frame (custom op)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from ..dispatch import current_backend, register_impl, select, use_backend
from ..layout import LMAX_SUPPORTED, num_coeffs, num_mod, weight_size
from ..validation import check_float, check_int, check_tensor
from ._common import (autocast_inputs, autograd_backward, distinct_outputs, empty_or, extension_loaded, none_if_empty,
                      register_fp32_autocast)


@torch.library.custom_op("so2ops::so2_linear", mutates_args=())
def _so2_linear(
    x: torch.Tensor, weight: torch.Tensor, modulation: Optional[torch.Tensor], lmax: int, mmax: int, out_channels: int
) -> torch.Tensor:
    return select("so2_linear", x.device).forward(x, weight, modulation, lmax, mmax, out_channels)


@_so2_linear.register_fake
def _(x, weight, modulation, lmax, mmax, out_channels):
    return x.new_empty(x.shape[0], x.shape[1], out_channels)


@torch.library.custom_op("so2ops::so2_linear_backward", mutates_args=())
def _so2_linear_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    modulation: Optional[torch.Tensor],
    lmax: int,
    mmax: int,
    out_channels: int,
    need_x: bool,
    need_weight: bool,
    need_mod: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = select("so2_linear", x.device)
    outs = impl.backward(grad.contiguous(), x, weight, modulation, lmax, mmax, out_channels, need_x, need_weight, need_mod)
    return distinct_outputs(outs, (need_x, need_weight, need_mod), grad)


@_so2_linear_backward.register_fake
def _(grad, x, weight, modulation, lmax, mmax, out_channels, need_x, need_weight, need_mod):
    return empty_or(need_x, x, grad), empty_or(need_weight, weight, grad), empty_or(need_mod, modulation, grad)


def _setup(ctx, inputs, output):
    # Backward may run on an autograd worker thread, which does not see the
    # caller's use_backend() context: remember the choice made at forward time.
    ctx.backend = current_backend()
    x, weight, modulation, lmax, mmax, out_channels = inputs
    ctx.save_for_backward(x, weight, modulation)
    ctx.args = (lmax, mmax, out_channels)


def _backward(ctx, grad):
    with use_backend(ctx.backend):
        x, weight, modulation = ctx.saved_tensors
        n = ctx.needs_input_grad
        nm = bool(n[2]) and modulation is not None
        gx, gw, gm = _so2_linear_backward(grad, x, weight, modulation, *ctx.args, n[0], n[1], nm)
        return none_if_empty(n[0], gx), none_if_empty(n[1], gw), none_if_empty(nm, gm), None, None, None


_so2_linear.register_autograd(_backward, setup_context=_setup)
register_fp32_autocast(_so2_linear)
register_fp32_autocast(_so2_linear_backward)  # a backward run inside the autocast block


def check_so2_args(lmax, mmax, in_channels, out_channels, weight, modulation, num_edges, like):
    """Shared metadata checks of ``so2_linear`` and ``so2_message``."""
    check_int("lmax", lmax, 0, LMAX_SUPPORTED)
    check_int("mmax", mmax, 0, lmax)
    check_int("out_channels", out_channels, 1, 1 << 20)
    if in_channels == 0:
        raise ValueError("x has 0 channels; expected at least 1")
    check_tensor("weight", weight, (weight_size(lmax, mmax, in_channels, out_channels),), dtype=like.dtype, device=like.device)
    if modulation is not None:
        check_tensor("modulation", modulation, (num_edges, num_mod(lmax, mmax), in_channels), dtype=like.dtype, device=like.device)


def so2_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    lmax: int,
    mmax: int,
    out_channels: int,
    modulation: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SO(2)-equivariant linear layer on edge-frame features.

    Args:
        x: ``[E, (lmax+1)**2, C_in]`` features in the edge frames.
        weight: ``[weight_size(lmax, mmax, C_in, out_channels)]`` packed (see ``so2ops.layout``).
        lmax, mmax: degrees kept; orders ``|m| > mmax`` give zero output rows.
        out_channels: ``C_out``.
        modulation: optional ``[E, num_mod(lmax, mmax), C_in]`` per-edge radial scaling of ``(m, l, c)``.
    Returns:
        ``[E, (lmax+1)**2, C_out]`` (float32 under ``torch.autocast``).
    """
    check_int("lmax", lmax, 0, LMAX_SUPPORTED)
    if isinstance(x, torch.Tensor):
        x, weight, modulation = autocast_inputs(x.device, x, weight, modulation)
    check_tensor("x", x, (None, num_coeffs(lmax), None))
    check_float("x", x)
    check_so2_args(lmax, mmax, x.shape[2], out_channels, weight, modulation, x.shape[0], x)
    mod = None if modulation is None else modulation.contiguous()
    return _so2_linear(x.contiguous(), weight.contiguous(), mod, lmax, mmax, out_channels)


# ------------------------------------------------------------------ backends
def _ref_forward(x, weight, modulation, lmax, mmax, out_channels):
    return reference.so2_linear(x, weight, lmax, mmax, out_channels, modulation)


def _ref_backward(grad, x, weight, modulation, lmax, mmax, out_channels, need_x, need_weight, need_mod):
    fn = lambda xx, ww, mm: reference.so2_linear(xx, ww, lmax, mmax, out_channels, mm)  # noqa: E731
    return tuple(autograd_backward(fn, [x, weight, modulation], [need_x, need_weight, need_mod], grad))


register_impl("so2_linear", "reference", _ref_forward, _ref_backward)


def _cxx_forward(x, weight, modulation, lmax, mmax, out_channels):
    return torch.ops.so2ops_C.so2_linear_forward(x, weight, modulation, lmax, mmax, out_channels)


def _cxx_backward(grad, x, weight, modulation, lmax, mmax, out_channels, need_x, need_weight, need_mod):
    return tuple(
        torch.ops.so2ops_C.so2_linear_backward(
            grad, x, weight, modulation, lmax, mmax, out_channels, need_x, need_weight, need_mod
        )
    )


if extension_loaded():
    for _b in ("cpu", "cuda"):
        register_impl("so2_linear", _b, _cxx_forward, _cxx_backward)
