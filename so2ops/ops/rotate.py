"""``so2ops.rotate``: per-edge block-diagonal rotation with fused gather (custom op)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from ..dispatch import current_backend, register_impl, select, use_backend
from ..layout import LMAX_SUPPORTED, num_coeffs, wigner_size
from ..validation import check_float, check_index, check_index_range, check_int, check_tensor
from ._common import (autocast_inputs, autograd_backward, distinct_outputs, empty_or, extension_loaded, none_if_empty,
                      register_fp32_autocast)


@torch.library.custom_op("so2ops::rotate", mutates_args=())
def _rotate(x: torch.Tensor, wigner: torch.Tensor, lmax: int, index: Optional[torch.Tensor], inverse: bool) -> torch.Tensor:
    if index is not None:
        check_index_range("index", index, x.shape[0])
    return select("rotate", x.device).forward(x, wigner, lmax, index, inverse)


@_rotate.register_fake
def _(x, wigner, lmax, index, inverse):
    return x.new_empty(wigner.shape[0], x.shape[1], x.shape[2])


@torch.library.custom_op("so2ops::rotate_backward", mutates_args=())
def _rotate_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    wigner: torch.Tensor,
    lmax: int,
    index: Optional[torch.Tensor],
    inverse: bool,
    need_x: bool,
    need_wigner: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    impl = select("rotate", x.device)
    outs = impl.backward(grad.contiguous(), x, wigner, lmax, index, inverse, need_x, need_wigner)
    return distinct_outputs(outs, (need_x, need_wigner), grad)


@_rotate_backward.register_fake
def _(grad, x, wigner, lmax, index, inverse, need_x, need_wigner):
    return empty_or(need_x, x, grad), empty_or(need_wigner, wigner, grad)


def _setup(ctx, inputs, output):
    # Backward may run on an autograd worker thread, which does not see the
    # caller's use_backend() context: remember the choice made at forward time.
    ctx.backend = current_backend()
    x, wigner, lmax, index, inverse = inputs
    ctx.save_for_backward(x, wigner, index)
    ctx.lmax, ctx.inverse = lmax, inverse


def _backward(ctx, grad):
    with use_backend(ctx.backend):
        x, wigner, index = ctx.saved_tensors
        nx, nw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx, gw = _rotate_backward(grad, x, wigner, ctx.lmax, index, ctx.inverse, nx, nw)
        return none_if_empty(nx, gx), none_if_empty(nw, gw), None, None, None


_rotate.register_autograd(_backward, setup_context=_setup)
register_fp32_autocast(_rotate)
register_fp32_autocast(_rotate_backward)  # a backward run inside the autocast block


def rotate(
    x: torch.Tensor,
    wigner: torch.Tensor,
    lmax: int,
    index: Optional[torch.Tensor] = None,
    inverse: bool = False,
) -> torch.Tensor:
    """Rotate irreps features by per-edge Wigner-D blocks.

    ``out[e] = D_e @ x[index[e]]`` (``D_e^T`` if ``inverse``), each degree
    block separately.

    Args:
        x: ``[N, (lmax+1)**2, C]`` (``N == E`` when ``index`` is None).
        wigner: ``[E, wigner_size(lmax)]`` from ``edge_wigner``.
        lmax: largest degree.
        index: optional ``[E]`` int64 rows of ``x`` to gather (fused).
        inverse: apply the transposed blocks (edge frame -> global frame).
    Returns:
        ``[E, (lmax+1)**2, C]`` (float32 under ``torch.autocast``).
    """
    check_int("lmax", lmax, 0, LMAX_SUPPORTED)
    if isinstance(x, torch.Tensor):
        x, wigner = autocast_inputs(x.device, x, wigner)
    check_tensor("x", x, (None, num_coeffs(lmax), None))
    check_float("x", x)
    check_tensor("wigner", wigner, (None, wigner_size(lmax)), dtype=x.dtype, device=x.device)
    if x.shape[2] == 0:
        raise ValueError("x has 0 channels; expected at least 1")
    if index is None:
        if x.shape[0] != wigner.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but wigner has {wigner.shape[0]} edges; pass index to gather")
    else:
        check_index("index", index, (wigner.shape[0],), x.device)
        index = index.contiguous()
    return _rotate(x.contiguous(), wigner.contiguous(), lmax, index, bool(inverse))


# ------------------------------------------------------------------ backends
def _ref_backward(grad, x, wigner, lmax, index, inverse, need_x, need_wigner):
    fn = lambda xx, ww: reference.rotate(xx, ww, lmax, index, inverse)  # noqa: E731
    gx, gw = autograd_backward(fn, [x, wigner], [need_x, need_wigner], grad)
    return gx, gw


register_impl("rotate", "reference", reference.rotate, _ref_backward)


def _cxx_forward(x, wigner, lmax, index, inverse):
    return torch.ops.so2ops_C.rotate_forward(x, wigner, index, lmax, inverse)


def _cxx_backward(grad, x, wigner, lmax, index, inverse, need_x, need_wigner):
    return tuple(torch.ops.so2ops_C.rotate_backward(grad, x, wigner, index, lmax, inverse, need_x, need_wigner))


if extension_loaded():
    for _b in ("cpu", "cuda"):
        register_impl("rotate", _b, _cxx_forward, _cxx_backward)
