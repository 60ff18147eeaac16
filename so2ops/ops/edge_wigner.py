"""``so2ops.edge_wigner``: packed Wigner-D blocks of each edge frame (custom op)."""
from __future__ import annotations

import torch

from .. import reference
from ..dispatch import current_backend, register_impl, select, use_backend
from ..layout import LMAX_SUPPORTED, wigner_size
from ..validation import check_edge_vec_values, check_float, check_int, check_tensor
from ..wigner_tables import wigner_tables
from ._common import autocast_inputs, autograd_backward, extension_loaded, register_fp32_autocast


@torch.library.custom_op("so2ops::edge_wigner", mutates_args=())
def _edge_wigner(edge_vec: torch.Tensor, lmax: int) -> torch.Tensor:
    check_edge_vec_values(edge_vec)
    return select("edge_wigner", edge_vec.device).forward(edge_vec, lmax)


@_edge_wigner.register_fake
def _(edge_vec, lmax):
    return edge_vec.new_empty(edge_vec.shape[0], wigner_size(lmax))


@torch.library.custom_op("so2ops::edge_wigner_backward", mutates_args=())
def _edge_wigner_backward(grad: torch.Tensor, edge_vec: torch.Tensor, lmax: int) -> torch.Tensor:
    return select("edge_wigner", edge_vec.device).backward(grad.contiguous(), edge_vec, lmax)


@_edge_wigner_backward.register_fake
def _(grad, edge_vec, lmax):
    return torch.empty_like(edge_vec)


def _setup(ctx, inputs, output):
    # Backward may run on an autograd worker thread, which does not see the
    # caller's use_backend() context: remember the choice made at forward time.
    ctx.backend = current_backend()
    ctx.save_for_backward(inputs[0])
    ctx.lmax = inputs[1]


def _backward(ctx, grad):
    with use_backend(ctx.backend):
        (edge_vec,) = ctx.saved_tensors
        return _edge_wigner_backward(grad, edge_vec, ctx.lmax), None


_edge_wigner.register_autograd(_backward, setup_context=_setup)
register_fp32_autocast(_edge_wigner)
register_fp32_autocast(_edge_wigner_backward)  # a backward run inside the autocast block


def edge_wigner(edge_vec: torch.Tensor, lmax: int) -> torch.Tensor:
    """Wigner-D blocks of each edge frame, packed.

    Args:
        edge_vec: ``[E, 3]`` float, ``pos[target] - pos[source]``; finite, nonzero.
        lmax: largest degree, ``0 <= lmax <= LMAX_SUPPORTED``.
    Returns:
        ``[E, wigner_size(lmax)]``: per degree the block ``D^l(R_e)`` row-major,
        ``R_e`` the edge frame (``R_e u_e = +y``); differentiable in ``edge_vec``.
        Under ``torch.autocast`` always float32 (float64 for float64 input).
    """
    check_int("lmax", lmax, 0, LMAX_SUPPORTED)
    if isinstance(edge_vec, torch.Tensor):
        (edge_vec,) = autocast_inputs(edge_vec.device, edge_vec)
    check_tensor("edge_vec", edge_vec, (None, 3))
    check_float("edge_vec", edge_vec)
    return _edge_wigner(edge_vec.contiguous(), lmax)


# ------------------------------------------------------------------ backends
def _ref_forward(edge_vec, lmax):
    return reference.edge_wigner(edge_vec, lmax)


def _ref_backward(grad, edge_vec, lmax):
    (g,) = autograd_backward(lambda v: reference.edge_wigner(v, lmax), [edge_vec], [True], grad)
    return g


register_impl("edge_wigner", "reference", _ref_forward, _ref_backward)


def _table_dtype(dtype):
    # half-precision edges still get float32 tables: the kernels compute in float32
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _cxx_forward(edge_vec, lmax):
    points, pinv = wigner_tables(lmax, _table_dtype(edge_vec.dtype), edge_vec.device)
    return torch.ops.so2ops_C.edge_wigner_forward(edge_vec, points, pinv, lmax)


def _cxx_backward(grad, edge_vec, lmax):
    points, pinv = wigner_tables(lmax, _table_dtype(edge_vec.dtype), edge_vec.device)
    return torch.ops.so2ops_C.edge_wigner_backward(grad, edge_vec, points, pinv, lmax)


if extension_loaded():
    for _b in ("cpu", "cuda"):
        register_impl("edge_wigner", _b, _cxx_forward, _cxx_backward)
