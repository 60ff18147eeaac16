"""``so2ops.so2_message``: the fused SO(2) message-passing op (custom op)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from ..dispatch import current_backend, register_impl, select, use_backend
from ..layout import LMAX_SUPPORTED, num_coeffs, wigner_size
from ..validation import check_float, check_index, check_index_range, check_int, check_tensor
from ._common import (autocast_inputs, autograd_backward, distinct_outputs, empty_or, extension_loaded, none_if_empty,
                      register_fp32_autocast, want_deterministic)
from .so2_linear import check_so2_args


@torch.library.custom_op("so2ops::so2_message", mutates_args=())
def _so2_message(
    x: torch.Tensor,
    wigner: torch.Tensor,
    edge_index: torch.Tensor,
    weight: torch.Tensor,
    modulation: Optional[torch.Tensor],
    lmax: int,
    mmax: int,
    out_channels: int,
    deterministic: bool,
) -> torch.Tensor:
    check_index_range("edge_index", edge_index, x.shape[0])
    impl = select("so2_message", x.device)
    return impl.forward(x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels,
                        want_deterministic(deterministic))


@_so2_message.register_fake
def _(x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic):
    return x.new_empty(x.shape[0], x.shape[1], out_channels)


@torch.library.custom_op("so2ops::so2_message_backward", mutates_args=())
def _so2_message_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    wigner: torch.Tensor,
    edge_index: torch.Tensor,
    weight: torch.Tensor,
    modulation: Optional[torch.Tensor],
    lmax: int,
    mmax: int,
    out_channels: int,
    deterministic: bool,
    need_x: bool,
    need_wigner: bool,
    need_weight: bool,
    need_mod: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = select("so2_message", x.device)
    outs = impl.backward(
        grad.contiguous(), x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels,
        want_deterministic(deterministic),
        need_x, need_wigner, need_weight, need_mod,
    )
    return distinct_outputs(outs, (need_x, need_wigner, need_weight, need_mod), grad)


@_so2_message_backward.register_fake
def _(grad, x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic,
      need_x, need_wigner, need_weight, need_mod):
    return (
        empty_or(need_x, x, grad),
        empty_or(need_wigner, wigner, grad),
        empty_or(need_weight, weight, grad),
        empty_or(need_mod, modulation, grad),
    )


def _setup(ctx, inputs, output):
    # Backward may run on an autograd worker thread, which does not see the
    # caller's use_backend() context: remember the choice made at forward time.
    ctx.backend = current_backend()
    x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic = inputs
    # Only the inputs are saved: every [E, K, C] intermediate is recomputed in backward.
    ctx.save_for_backward(x, wigner, edge_index, weight, modulation)
    ctx.args = (lmax, mmax, out_channels, deterministic)


def _backward(ctx, grad):
    with use_backend(ctx.backend):
        x, wigner, edge_index, weight, modulation = ctx.saved_tensors
        n = ctx.needs_input_grad
        nm = bool(n[4]) and modulation is not None
        gx, gwig, gw, gm = _so2_message_backward(grad, x, wigner, edge_index, weight, modulation, *ctx.args, n[0], n[1], n[3], nm)
        return (none_if_empty(n[0], gx), none_if_empty(n[1], gwig), None, none_if_empty(n[3], gw),
                none_if_empty(nm, gm), None, None, None, None)


_so2_message.register_autograd(_backward, setup_context=_setup)
register_fp32_autocast(_so2_message)
register_fp32_autocast(_so2_message_backward)  # a backward run inside the autocast block


def so2_message(
    x: torch.Tensor,
    wigner: torch.Tensor,
    edge_index: torch.Tensor,
    weight: torch.Tensor,
    lmax: int,
    mmax: int,
    out_channels: int,
    modulation: Optional[torch.Tensor] = None,
    deterministic: bool = False,
) -> torch.Tensor:
    """Fused SO(2) message passing.

    ``out[t] = sum_{e = (s -> t)} D_e^T SO2Linear(D_e x[s] (.) modulation_e)``
    without storing any ``[E, (lmax+1)**2, C]`` tensor for the backward.

    Args:
        x: ``[N, (lmax+1)**2, C_in]`` node features.
        wigner: ``[E, wigner_size(lmax)]`` from ``edge_wigner``.
        edge_index: ``[2, E]`` int64 (source, target).
        weight: packed SO(2) weights, ``[weight_size(lmax, mmax, C_in, out_channels)]``.
        lmax, mmax, out_channels: as in ``so2_linear``.
        modulation: optional ``[E, num_mod(lmax, mmax), C_in]``.
        deterministic: segmented (sorted) reduction instead of atomics:
            bitwise-identical results run to run.  Forced on while
            ``torch.are_deterministic_algorithms_enabled()``.
    Returns:
        ``[N, (lmax+1)**2, out_channels]`` (float32 under ``torch.autocast``).
    """
    check_int("lmax", lmax, 0, LMAX_SUPPORTED)
    if isinstance(x, torch.Tensor):
        x, wigner, weight, modulation = autocast_inputs(x.device, x, wigner, weight, modulation)
    check_tensor("x", x, (None, num_coeffs(lmax), None))
    check_float("x", x)
    check_tensor("wigner", wigner, (None, wigner_size(lmax)), dtype=x.dtype, device=x.device)
    check_index("edge_index", edge_index, (2, wigner.shape[0]), x.device)
    check_so2_args(lmax, mmax, x.shape[2], out_channels, weight, modulation, wigner.shape[0], x)
    mod = None if modulation is None else modulation.contiguous()
    return _so2_message(
        x.contiguous(), wigner.contiguous(), edge_index.contiguous(), weight.contiguous(), mod,
        lmax, mmax, out_channels, want_deterministic(deterministic),
    )


# ------------------------------------------------------------------ backends
def _ref_forward(x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic):
    return reference.so2_message(x, wigner, edge_index, weight, lmax, mmax, out_channels, modulation)


def _ref_backward(grad, x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic,
                  need_x, need_wigner, need_weight, need_mod):
    fn = lambda xx, wg, ww, mm: reference.so2_message(xx, wg, edge_index, ww, lmax, mmax, out_channels, mm)  # noqa: E731
    return tuple(autograd_backward(fn, [x, wigner, weight, modulation], [need_x, need_wigner, need_weight, need_mod], grad))


register_impl("so2_message", "reference", _ref_forward, _ref_backward)


def _cxx_forward(x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic):
    return torch.ops.so2ops_C.so2_message_forward(x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic)


def _cxx_backward(grad, x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic,
                  need_x, need_wigner, need_weight, need_mod):
    return tuple(
        torch.ops.so2ops_C.so2_message_backward(
            grad, x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic,
            need_x, need_wigner, need_weight, need_mod,
        )
    )


if extension_loaded():
    for _b in ("cpu", "cuda"):
        register_impl("so2_message", _b, _cxx_forward, _cxx_backward)
