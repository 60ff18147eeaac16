"""``so2ops.so2_gate``: the equivariant gate over all degrees, one kernel each way (custom op)."""
from __future__ import annotations

import torch

from .. import reference
from ..dispatch import current_backend, register_impl, select, use_backend
from ..layout import LMAX_SUPPORTED, num_coeffs
from ..validation import check_float, check_tensor
from ._common import (autocast_inputs, autograd_backward, distinct_outputs, empty_or, none_if_empty,
                      register_compiled, register_fp32_autocast)
from .double_backward import _common_setup, _gg, vjp_double_backward


@torch.library.custom_op("so2ops::so2_gate", mutates_args=())
def _so2_gate(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return select("so2_gate", x.device).forward(x, logits)


@_so2_gate.register_fake
def _(x, logits):
    return torch.empty_like(x)


@torch.library.custom_op("so2ops::so2_gate_backward", mutates_args=())
def _so2_gate_backward(
    grad: torch.Tensor, x: torch.Tensor, logits: torch.Tensor, need_x: bool, need_logits: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    impl = select("so2_gate", x.device)
    outs = impl.backward(grad.contiguous(), x, logits, need_x, need_logits)
    return distinct_outputs(outs, (need_x, need_logits), grad)


@_so2_gate_backward.register_fake
def _(grad, x, logits, need_x, need_logits):
    return empty_or(need_x, x, grad), empty_or(need_logits, logits, grad)


def _setup(ctx, inputs, output):
    # Backward may run on an autograd worker thread, which does not see the
    # caller's use_backend() context: remember the choice made at forward time.
    ctx.backend = current_backend()
    x, logits = inputs
    ctx.save_for_backward(x, logits)


def _backward(ctx, grad):
    with use_backend(ctx.backend):
        x, logits = ctx.saved_tensors
        n = ctx.needs_input_grad
        gx, gl = _so2_gate_backward(grad, x, logits, n[0], n[1])
        return none_if_empty(n[0], gx), none_if_empty(n[1], gl)


_so2_gate.register_autograd(_backward, setup_context=_setup)
register_fp32_autocast(_so2_gate)
register_fp32_autocast(_so2_gate_backward)  # a backward run inside the autocast block


# ------------------------------------------------------------------ double backward
# silu and sigmoid are not multilinear: the vjp of the reference is differentiated.
def _bb_setup(ctx, inputs, output):
    _common_setup(ctx)
    grad, x, logits, need_x, need_logits = inputs
    ctx.save_for_backward(grad, x, logits)
    ctx.computed = (need_x, need_logits)


def _bb(ctx, ggx, ggl):
    grad, x, logits = ctx.saved_tensors
    n = ctx.needs_input_grad
    g_grad, (x_grad, l_grad) = vjp_double_backward(
        reference.so2_gate, grad, [x, logits], [True, True], _gg([ggx, ggl], ctx.computed), n[0], [n[1], n[2]])
    return g_grad, x_grad, l_grad, None, None


_so2_gate_backward.register_autograd(_bb, setup_context=_bb_setup)


def so2_gate(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Gated non-linearity of irreps features (``so2ops.nn.Gate`` without its linear layer), fused.

    ``out[:, 0] = silu(x[:, 0])``; every row of degree ``l > 0``:
    ``out[:, (l, m)] = x[:, (l, m)] * sigmoid(logits[:, l-1])``.  The op takes the
    gate *logits* and applies the sigmoid itself (in the kernel, not as a separate
    elementwise op).  Equivariant when the logits are invariant (e.g. computed from
    ``x[:, 0]``).  Definition: ``so2ops.reference.so2_gate``; backward: docs/math.md,
    section 9.

    Args:
        x: ``[N, (lmax+1)**2, C]``.
        logits: ``[N, lmax, C]`` (x's dtype and device); ``lmax`` is read from its shape.
    Returns:
        ``[N, (lmax+1)**2, C]`` (float32 under ``torch.autocast``).
    """
    if isinstance(x, torch.Tensor):
        x, logits = autocast_inputs(x.device, x, logits)
    check_tensor("x", x, (None, None, None))
    check_float("x", x)
    if x.shape[2] == 0:
        raise ValueError("x has 0 channels; expected at least 1")
    check_tensor("logits", logits, (x.shape[0], None, x.shape[2]), dtype=x.dtype, device=x.device)
    lmax = logits.shape[1]
    if lmax > LMAX_SUPPORTED:
        raise ValueError(f"logits has {lmax} degrees (lmax={lmax}) but the compiled maximum is "
                         f"LMAX_SUPPORTED={LMAX_SUPPORTED}")
    if x.shape[1] != num_coeffs(lmax):
        raise ValueError(f"x has {x.shape[1]} coefficient rows but logits has lmax={lmax} degrees: "
                         f"x must have (lmax+1)**2 = {num_coeffs(lmax)} rows")
    return _so2_gate(x.contiguous(), logits.contiguous())


# ------------------------------------------------------------------ backends
def _ref_backward(grad, x, logits, need_x, need_logits):
    return tuple(autograd_backward(reference.so2_gate, [x, logits], [need_x, need_logits], grad))


register_impl("so2_gate", "reference", reference.so2_gate, _ref_backward)


def _cxx_forward(x, logits):
    return torch.ops.so2ops_C.so2_gate_forward(x, logits)


def _cxx_backward(grad, x, logits, need_x, need_logits):
    return tuple(torch.ops.so2ops_C.so2_gate_backward(grad, x, logits, need_x, need_logits))


register_compiled("so2_gate", _cxx_forward, _cxx_backward, "so2_gate_forward")
