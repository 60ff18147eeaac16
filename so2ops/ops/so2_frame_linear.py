"""``so2ops.so2_gather_linear`` / ``so2ops.so2_linear_scatter``: one side of ``so2_message``
fused with its SO(2) layer (custom op ``so2ops::so2_frame_linear``).

The edgewise blocks of eSCN-MD / UMA / EquiformerV2 put a gate between two SO(2)
convolutions, so ``so2_message`` (one conv between the gather and the scatter)
cannot fuse them.  These two ops fuse each end instead:

* ``so2_gather_linear`` (producer): ``out[e] = s_e (SO2Lin(mod_e * D_e x[index[e]]) + bias)``;
  the rotated ``[E, K, C_in]`` features are never built.
* ``so2_linear_scatter`` (consumer): ``out[index[e]] += s_e D_e^T (SO2Lin(mod_e * h[e]) + bias)``;
  the ``[E, K, C_out]`` messages are never built.

Both run on the tiled driver of ``so2_message`` (cpu / cuda backends): the
backward recomputes per tile and keeps nothing but the inputs.  The triton
backend composes the Triton ``rotate`` and ``so2_linear`` kernels (not fused).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from ..dispatch import current_backend, register_impl, select, use_backend
from ..layout import LMAX_SUPPORTED, num_coeffs, wigner_size
from ..reference.so2_frame_linear import compose
from ..validation import check_float, check_index, check_index_range, check_int, check_tensor
from ._common import (autocast_inputs, autograd_backward, distinct_outputs, empty_or, extension_loaded, none_if_empty,
                      register_fp32_autocast, want_deterministic)
from .so2_linear import check_so2_args


@torch.library.custom_op("so2ops::so2_frame_linear", mutates_args=())
def _so2_frame_linear(
    x: torch.Tensor,
    wigner: torch.Tensor,
    index: torch.Tensor,
    weight: torch.Tensor,
    modulation: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    scale: Optional[torch.Tensor],
    lmax: int,
    mmax: int,
    out_channels: int,
    num_nodes: int,
    to_nodes: bool,
    deterministic: bool,
) -> torch.Tensor:
    check_index_range("index", index, num_nodes if to_nodes else x.shape[0])
    impl = select("so2_frame_linear", x.device)
    return impl.forward(x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes,
                        to_nodes, want_deterministic(deterministic))


@_so2_frame_linear.register_fake
def _(x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes, to_nodes,
      deterministic):
    return x.new_empty(num_nodes if to_nodes else wigner.shape[0], x.shape[1], out_channels)


@torch.library.custom_op("so2ops::so2_frame_linear_backward", mutates_args=())
def _so2_frame_linear_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    wigner: torch.Tensor,
    index: torch.Tensor,
    weight: torch.Tensor,
    modulation: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    scale: Optional[torch.Tensor],
    lmax: int,
    mmax: int,
    out_channels: int,
    num_nodes: int,
    to_nodes: bool,
    deterministic: bool,
    need_x: bool,
    need_wigner: bool,
    need_weight: bool,
    need_mod: bool,
    need_bias: bool,
    need_scale: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = select("so2_frame_linear", x.device)
    needs = (need_x, need_wigner, need_weight, need_mod and modulation is not None, need_bias and bias is not None,
             need_scale and scale is not None)
    outs = impl.backward(grad.contiguous(), x, wigner, index, weight, modulation, bias, scale, lmax, mmax,
                         out_channels, num_nodes, to_nodes, want_deterministic(deterministic), *needs)
    return distinct_outputs(outs, needs, grad)


@_so2_frame_linear_backward.register_fake
def _(grad, x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes, to_nodes,
      deterministic, need_x, need_wigner, need_weight, need_mod, need_bias, need_scale):
    return (empty_or(need_x, x, grad), empty_or(need_wigner, wigner, grad), empty_or(need_weight, weight, grad),
            empty_or(need_mod, modulation, grad), empty_or(need_bias, bias, grad), empty_or(need_scale, scale, grad))


def _setup(ctx, inputs, output):
    ctx.backend = current_backend()  # backward may run on another thread: keep the forward's choice
    x, wigner, index, weight, modulation, bias, scale = inputs[:7]
    ctx.save_for_backward(x, wigner, index, weight, modulation, bias, scale)
    ctx.args = tuple(inputs[7:])


def _backward(ctx, grad):
    with use_backend(ctx.backend):
        x, wigner, index, weight, modulation, bias, scale = ctx.saved_tensors
        n = ctx.needs_input_grad
        needs = (n[0], n[1], n[3], n[4] and modulation is not None, n[5] and bias is not None,
                 n[6] and scale is not None)
        gx, gwig, gw, gm, gb, gs = _so2_frame_linear_backward(grad, x, wigner, index, weight, modulation, bias, scale,
                                                              *ctx.args, *needs)
        return (none_if_empty(needs[0], gx), none_if_empty(needs[1], gwig), None, none_if_empty(needs[2], gw),
                none_if_empty(needs[3], gm), none_if_empty(needs[4], gb), none_if_empty(needs[5], gs)) + (None,) * 6


_so2_frame_linear.register_autograd(_backward, setup_context=_setup)
register_fp32_autocast(_so2_frame_linear)
register_fp32_autocast(_so2_frame_linear_backward)


def _check_and_call(x, wigner, index, weight, lmax, mmax, out_channels, num_nodes, to_nodes, modulation, bias, scale,
                    deterministic):
    check_int("lmax", lmax, 0, LMAX_SUPPORTED)
    if isinstance(x, torch.Tensor):
        x, wigner, weight, modulation, bias, scale = autocast_inputs(x.device, x, wigner, weight, modulation, bias,
                                                                     scale)
    check_tensor("x", x, (None, num_coeffs(lmax), None))
    check_float("x", x)
    check_tensor("wigner", wigner, (None, wigner_size(lmax)), dtype=x.dtype, device=x.device)
    e = wigner.shape[0]
    if to_nodes:
        check_int("num_nodes", num_nodes, 0, 1 << 62)
        check_tensor("x", x, (e, num_coeffs(lmax), None))
    check_index("index", index, (e,), x.device)
    check_so2_args(lmax, mmax, x.shape[2], out_channels, weight, modulation, e, x)
    if bias is not None:
        check_tensor("bias", bias, (lmax + 1, out_channels), dtype=x.dtype, device=x.device)
    if scale is not None:
        check_tensor("scale", scale, (e,), dtype=x.dtype, device=x.device)
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    return _so2_frame_linear(x.contiguous(), wigner.contiguous(), index.contiguous(), weight.contiguous(),
                             c(modulation), c(bias), c(scale), lmax, mmax, out_channels, num_nodes if to_nodes else 0,
                             to_nodes, want_deterministic(deterministic))


def so2_gather_linear(
    x: torch.Tensor,
    wigner: torch.Tensor,
    index: torch.Tensor,
    weight: torch.Tensor,
    lmax: int,
    mmax: int,
    out_channels: int,
    modulation: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[torch.Tensor] = None,
    deterministic: bool = False,
) -> torch.Tensor:
    """Gather, rotate into the edge frame and SO(2) linear layer, fused.

    ``out[e] = scale_e (SO2Linear(modulation_e * D_e x[index[e]]) + bias)``, i.e.
    ``so2_linear(rotate(x, wigner, lmax, index=index), ...)`` without the rotated
    ``[E, K, C_in]`` tensor.

    Args:
        x: ``[N, (lmax+1)**2, C_in]`` node features.
        wigner: ``[E, wigner_size(lmax)]`` from ``edge_wigner``.
        index: ``[E]`` int64 in ``[0, N)``: the node each edge reads.
        weight, lmax, mmax, out_channels, modulation: as in ``so2_linear``.
        bias: optional ``[lmax + 1, out_channels]`` added to the rows ``(l, 0)``.
        scale: optional ``[E]`` per-edge factor (e.g. an envelope).
        deterministic: a segmented (sorted) reduction in the backward's scatter
            into ``x``'s gradient (forced on under ``torch.use_deterministic_algorithms``).
    Returns:
        ``[E, (lmax+1)**2, out_channels]`` edge-frame features (rows ``|m| > mmax`` zero;
        float32 under ``torch.autocast``).
    """
    return _check_and_call(x, wigner, index, weight, lmax, mmax, out_channels, 0, False, modulation, bias, scale,
                           deterministic)


def so2_linear_scatter(
    x: torch.Tensor,
    wigner: torch.Tensor,
    index: torch.Tensor,
    weight: torch.Tensor,
    num_nodes: int,
    lmax: int,
    mmax: int,
    out_channels: int,
    modulation: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[torch.Tensor] = None,
    deterministic: bool = False,
) -> torch.Tensor:
    """SO(2) linear layer, rotation back to the global frame and sum at the targets, fused.

    ``out[n] = sum_{e: index[e] = n} scale_e D_e^T (SO2Linear(modulation_e * x[e]) + bias)``
    without the ``[E, K, C_out]`` messages.

    Args:
        x: ``[E, (lmax+1)**2, C_in]`` edge-frame features (rows ``|m| > mmax`` are not read).
        wigner: ``[E, wigner_size(lmax)]``.
        index: ``[E]`` int64 in ``[0, num_nodes)``: the node each edge writes.
        num_nodes: rows of the output.
        weight, lmax, mmax, out_channels, modulation, bias, scale: as in ``so2_gather_linear``.
        deterministic: segmented (sorted) reduction instead of atomics on the GPU
            (the CPU backend always is).
    Returns:
        ``[num_nodes, (lmax+1)**2, out_channels]``.
    """
    return _check_and_call(x, wigner, index, weight, lmax, mmax, out_channels, num_nodes, True, modulation, bias,
                           scale, deterministic)


# ------------------------------------------------------------------ backends
def _ref_forward(x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes, to_nodes,
                 deterministic):
    return reference.so2_frame_linear(x, wigner, index, weight, lmax, mmax, out_channels, num_nodes, to_nodes,
                                      modulation, bias, scale)


def _ref_backward(grad, x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes,
                  to_nodes, deterministic, *needs):
    fn = lambda xx, wg, ww, mm, bb, ss: reference.so2_frame_linear(  # noqa: E731
        xx, wg, index, ww, lmax, mmax, out_channels, num_nodes, to_nodes, mm, bb, ss)
    return tuple(autograd_backward(fn, [x, wigner, weight, modulation, bias, scale], list(needs), grad))


register_impl("so2_frame_linear", "reference", _ref_forward, _ref_backward)


def _cxx_forward(*args):
    return torch.ops.so2ops_C.so2_frame_linear_forward(*args)


def _cxx_backward(*args):
    return tuple(torch.ops.so2ops_C.so2_frame_linear_backward(*args))


if extension_loaded():
    for _b in ("cpu", "cuda"):
        register_impl("so2_frame_linear", _b, _cxx_forward, _cxx_backward)


def unfused_frame_linear(x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels, num_nodes,
                         to_nodes):
    """The op as the composition of the ``rotate`` and ``so2_linear`` custom ops (each with
    double backward, on the backend in effect): the triton backend and the double backward."""
    ops = torch.ops.so2ops
    rot = lambda t, w, l, idx, inv: ops.rotate(t, w, l, idx, inv)  # noqa: E731
    return compose(rot, ops.so2_linear, x, wigner, index, weight, modulation, bias, scale, lmax, mmax, out_channels,
                   num_nodes, to_nodes)
