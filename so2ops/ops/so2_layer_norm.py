"""``so2ops.so2_layer_norm``: equivariant layer norm over all degrees, one kernel each way (custom op)."""
from __future__ import annotations

import numbers

import torch

from .. import reference
from ..dispatch import current_backend, register_impl, select, use_backend
from ..layout import LMAX_SUPPORTED, num_coeffs
from ..validation import check_float, check_int, check_tensor
from ._common import (autocast_inputs, autograd_backward, distinct_outputs, empty_or, none_if_empty,
                      register_compiled, register_fp32_autocast)
from .double_backward import _common_setup, _gg, vjp_double_backward


@torch.library.custom_op("so2ops::so2_layer_norm", mutates_args=())
def _so2_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, lmax: int, eps: float,
                    joint: bool) -> torch.Tensor:
    return select("so2_layer_norm", x.device).forward(x, weight, bias, lmax, eps, joint)


@_so2_layer_norm.register_fake
def _(x, weight, bias, lmax, eps, joint):
    return torch.empty_like(x)


# The backward needs no bias: it only shifts the output, and its gradient is sum_n grad[n, 0].
@torch.library.custom_op("so2ops::so2_layer_norm_backward", mutates_args=())
def _so2_layer_norm_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    lmax: int,
    eps: float,
    joint: bool,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = select("so2_layer_norm", x.device)
    outs = impl.backward(grad.contiguous(), x, weight, lmax, eps, joint, need_x, need_weight, need_bias)
    return distinct_outputs(outs, (need_x, need_weight, need_bias), grad)


@_so2_layer_norm_backward.register_fake
def _(grad, x, weight, lmax, eps, joint, need_x, need_weight, need_bias):
    return empty_or(need_x, x, grad), empty_or(need_weight, weight, grad), empty_or(need_bias, weight[0], grad)


def _setup(ctx, inputs, output):
    # Backward may run on an autograd worker thread, which does not see the
    # caller's use_backend() context: remember the choice made at forward time.
    ctx.backend = current_backend()
    x, weight, bias, lmax, eps, joint = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (lmax, eps, joint)


def _backward(ctx, grad):
    with use_backend(ctx.backend):
        x, weight = ctx.saved_tensors
        n = ctx.needs_input_grad
        gx, gw, gb = _so2_layer_norm_backward(grad, x, weight, *ctx.args, n[0], n[1], n[2])
        return none_if_empty(n[0], gx), none_if_empty(n[1], gw), none_if_empty(n[2], gb), None, None, None


_so2_layer_norm.register_autograd(_backward, setup_context=_setup)
register_fp32_autocast(_so2_layer_norm)
register_fp32_autocast(_so2_layer_norm_backward)  # a backward run inside the autocast block


# ------------------------------------------------------------------ double backward
# Not multilinear (an RMS and a variance): the vjp of the reference is differentiated
# (plain PyTorch speed; only force training / Hessian-vector products pay it).
def _bb_setup(ctx, inputs, output):
    _common_setup(ctx)
    grad, x, weight, lmax, eps, joint, need_x, need_weight, need_bias = inputs
    ctx.save_for_backward(grad, x, weight)
    ctx.args = (lmax, eps, joint)
    ctx.computed = (need_x, need_weight, need_bias)


def _bb(ctx, ggx, ggw, ggb):
    grad, x, weight = ctx.saved_tensors
    lmax, eps, joint = ctx.args
    n = ctx.needs_input_grad
    fn = lambda a, w, b: reference.so2_layer_norm(a, w, b, lmax, eps, joint)  # noqa: E731
    bias = weight.new_zeros(weight.shape[1])  # the vjp does not depend on the bias' value
    g_grad, (x_grad, w_grad, _) = vjp_double_backward(
        fn, grad, [x, weight, bias], [True, True, True], _gg([ggx, ggw, ggb], ctx.computed), n[0], [n[1], n[2], False])
    return g_grad, x_grad, w_grad, None, None, None, None, None, None


_so2_layer_norm_backward.register_autograd(_bb, setup_context=_bb_setup)


def so2_layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    lmax: int,
    eps: float = 1e-6,
    joint: bool = True,
) -> torch.Tensor:
    """Layer norm of irreps features that commutes with rotations (``SO2LayerNorm``'s math), fused.

    Degree 0: ``(x0 - mean_c) / sqrt(var_c + eps) * weight[0] + bias``.  Degrees
    ``l > 0``: ``x_l * rsqrt(ms + eps) * weight[l]`` (no bias), where the mean square
    ``ms`` is one per row, ``sum_{l>0} mean_{m,c}(x_l^2) / lmax``, when ``joint``, and
    one per row and degree, ``mean_{m,c}(x_l^2)``, otherwise ("separate").  Full
    definition: ``so2ops.reference.so2_layer_norm``; backward: docs/math.md, section 8.

    Args:
        x: ``[N, (lmax+1)**2, C]``.
        weight: ``[lmax+1, C]`` (x's dtype and device).
        bias: ``[C]``.
        lmax: largest degree.
        eps: added to the variance / mean square (>= 0).
        joint: one RMS for all degrees ``l > 0`` (True) or one per degree (False).
    Returns:
        ``[N, (lmax+1)**2, C]`` (float32 under ``torch.autocast``).
    """
    check_int("lmax", lmax, 0, LMAX_SUPPORTED)
    if isinstance(x, torch.Tensor):
        x, weight, bias = autocast_inputs(x.device, x, weight, bias)
    check_tensor("x", x, (None, num_coeffs(lmax), None))
    check_float("x", x)
    if x.shape[2] == 0:
        raise ValueError("x has 0 channels; expected at least 1")
    check_tensor("weight", weight, (lmax + 1, x.shape[2]), dtype=x.dtype, device=x.device)
    check_tensor("bias", bias, (x.shape[2],), dtype=x.dtype, device=x.device)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"eps must be a real number >= 0, got {eps!r}")
    if not isinstance(joint, bool):
        raise TypeError(f"joint must be a bool, got {type(joint).__name__}")
    return _so2_layer_norm(x.contiguous(), weight.contiguous(), bias.contiguous(), lmax, float(eps), joint)


# ------------------------------------------------------------------ backends
def _ref_backward(grad, x, weight, lmax, eps, joint, need_x, need_weight, need_bias):
    fn = lambda xx, ww, bb: reference.so2_layer_norm(xx, ww, bb, lmax, eps, joint)  # noqa: E731
    bias = weight.new_zeros(weight.shape[1])
    return tuple(autograd_backward(fn, [x, weight, bias], [need_x, need_weight, need_bias], grad))


register_impl("so2_layer_norm", "reference", reference.so2_layer_norm, _ref_backward)


def _cxx_forward(x, weight, bias, lmax, eps, joint):
    return torch.ops.so2ops_C.so2_layer_norm_forward(x, weight, bias, lmax, eps, joint)


def _cxx_backward(grad, x, weight, lmax, eps, joint, need_x, need_weight, need_bias):
    return tuple(torch.ops.so2ops_C.so2_layer_norm_backward(grad, x, weight, lmax, eps, joint, need_x, need_weight,
                                                            need_bias))


register_compiled("so2_layer_norm", _cxx_forward, _cxx_backward, "so2_layer_norm_forward")
