"""Double backward: autograd formulas of the ``so2ops::*_backward`` ops.

Every public op's autograd formula calls a separate custom op
``so2ops::<op>_backward``.  This module registers autograd formulas on those
backward ops, so second (and higher) derivatives work: ``create_graph=True``
training (forces ``F = -dE/dpos``, a loss on ``F``, ``.backward()``), Hessian-
vector products, ``gradgradcheck``.  The math is in docs/math.md, section
"Double backward".  Three strategies:

* multilinear ops (``rotate``: bilinear in ``(x, wigner)``; ``so2_linear``:
  trilinear in ``(x, weight, modulation)``): the second derivative is written
  with the op's own forward and backward custom ops, so it runs on the fast
  backend that was chosen at forward time and is itself differentiable to any
  order;
* ``so2_message`` (quadratic in ``wigner``) and ``so2_frame_linear`` (affine,
  with its bias): the vjp is recomputed through the unfused composition of fast
  ops (``rotate`` with ``index=src``, ``so2_linear``, ``rotate`` inverse,
  ``index_add``) and differentiated;
* ``edge_wigner``, ``so2_tensor_product`` (its fused grid stage) and
  ``assemble_blocks``: the vjp of the reference implementation
  (``so2ops.reference``) is differentiated: correct on every backend, plain
  PyTorch speed.

Formulas run above the Autograd dispatch keys (the autograd engine calls them
like any ``autograd.Function.backward``), so the ops they call record a graph
whenever grad mode is on, i.e. under ``create_graph=True``.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from .. import reference
from ..dispatch import current_backend, use_backend
from ..layout import num_coeffs
from ._common import autograd_enabled
from .so2_frame_linear import unfused_frame_linear

_ops = torch.ops.so2ops


def _add(acc: Optional[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    return t if acc is None else acc + t


def _c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _gg(grads, flags) -> List[Optional[torch.Tensor]]:
    """Incoming grad-of-grads, None where the backward op did not compute that gradient
    (its output was a ``[0]`` placeholder: the grad is None or an empty zero tensor)."""
    return [_c(g) if (f and g is not None) else None for g, f in zip(grads, flags)]


# ------------------------------------------------------------------ multilinear ops
def multilinear_double_backward(
    fwd: Callable[..., torch.Tensor],
    bwd: Callable[..., Sequence[torch.Tensor]],
    grad: torch.Tensor,
    args: Sequence[Optional[torch.Tensor]],
    ggs: Sequence[Optional[torch.Tensor]],
    need_grad: bool,
    need_args: Sequence[bool],
):
    """Derivatives of a multilinear op's backward, by the op's forward and backward.

    For ``f`` multilinear in ``a_1..a_k`` with backward ``B(g, a) = (g_1..g_k)``
    and grad-of-grads ``gg_j`` of ``g_j`` (None: zero), the backward's vjp is

    * wrt ``g``:   ``sum_j f(a with a_j -> gg_j)``
    * wrt ``a_i``: ``sum_{j != i} [B(g, a with a_j -> gg_j)]_i``

    Args:
        fwd: ``fwd(*a) -> out``.
        bwd: ``bwd(g, *a, needs) -> (g_1..g_k)`` (entries not needed may be placeholders).
        need_grad, need_args: which of ``g``, ``a_i`` want a gradient.
    Returns:
        ``(grad wrt g or None, [grad wrt a_i or None])``.
    """
    k = len(args)
    g_grad: Optional[torch.Tensor] = None
    a_grads: List[Optional[torch.Tensor]] = [None] * k
    for j in range(k):
        if ggs[j] is None or args[j] is None:
            continue
        a = list(args)
        a[j] = ggs[j]
        if need_grad:
            g_grad = _add(g_grad, fwd(*a))
        needs = [bool(need_args[i]) and i != j and args[i] is not None for i in range(k)]
        if any(needs):
            outs = bwd(grad, *a, needs)
            for i in range(k):
                if needs[i]:
                    a_grads[i] = _add(a_grads[i], outs[i])
    return g_grad, a_grads


# ------------------------------------------------------------------ by differentiating a vjp
def vjp_double_backward(
    fn: Callable[..., torch.Tensor],
    grad: torch.Tensor,
    primals: Sequence[Optional[torch.Tensor]],
    computed: Sequence[bool],
    ggs: Sequence[Optional[torch.Tensor]],
    need_grad: bool,
    need_primals: Sequence[bool],
):
    """Derivatives of ``B(g, p) = vjp of fn at p`` by differentiating that vjp.

    ``fn(*p)`` is recomputed under autograd, its vjp taken with
    ``create_graph=True`` wrt the primals ``B`` computed (``computed``), and the
    scalar ``sum_i <gg_i, vjp_i>`` differentiated wrt ``g`` and the primals that
    ``need_primals``.  Under ``create_graph`` (grad mode on at entry) the result
    stays attached to the inputs' graphs, so this is differentiable again.

    Returns:
        ``(grad wrt g or None, [grad wrt p_i or None])``.
    """
    k = len(primals)
    none = (None, [None] * k)
    active = [i for i in range(k) if computed[i] and ggs[i] is not None and primals[i] is not None]
    if not active or not (need_grad or any(need_primals)):
        return none
    create = torch.is_grad_enabled()

    def leaf(t, flag):
        if t is None:
            return None
        if not flag:
            return t.detach()
        # an alias keeps the caller's graph (higher orders) and separates inputs passed twice
        return t.view_as(t) if (create and t.requires_grad) else t.detach().requires_grad_(True)

    with autograd_enabled():
        ps = [leaf(p, i in active or bool(need_primals[i])) for i, p in enumerate(primals)]
        g = leaf(grad, need_grad)
        out = fn(*ps)
        if not out.requires_grad:  # output independent of the primals (e.g. D^0 = 1)
            return none
        first = torch.autograd.grad(out, [ps[i] for i in active], g, create_graph=True, allow_unused=True)
        pairs = [(f, ggs[i]) for f, i in zip(first, active) if f is not None and f.requires_grad]
        wrt_idx = [i for i in range(k) if need_primals[i] and primals[i] is not None]
        wrt = ([g] if need_grad else []) + [ps[i] for i in wrt_idx]
        if not pairs:
            return none
        res = list(torch.autograd.grad([f for f, _ in pairs], wrt, [gg for _, gg in pairs],
                                       create_graph=create, allow_unused=True))
    g_grad = res.pop(0) if need_grad else None
    p_grads: List[Optional[torch.Tensor]] = [None] * k
    for i, r in zip(wrt_idx, res):
        p_grads[i] = r
    return g_grad, p_grads


# ------------------------------------------------------------------ edge_wigner
def _common_setup(ctx):
    # Backward may run on an autograd worker thread, which does not see the
    # caller's use_backend() context: remember the choice made at forward time.
    ctx.backend = current_backend()
    # Outputs off the differentiated path get None, not materialised zeros: their
    # terms are skipped (e.g. the weight gradient computed, and unused, while forces
    # are taken, or gradcheck's one-output-at-a-time vjps).
    ctx.set_materialize_grads(False)


def _edge_wigner_setup(ctx, inputs, output):
    _common_setup(ctx)
    grad, edge_vec, lmax = inputs
    ctx.save_for_backward(grad, edge_vec)
    ctx.lmax = lmax


def _edge_wigner_bb(ctx, gg):
    grad, edge_vec = ctx.saved_tensors
    n = ctx.needs_input_grad
    fn = lambda v: reference.edge_wigner(v, ctx.lmax)  # noqa: E731
    g_grad, (v_grad,) = vjp_double_backward(fn, grad, [edge_vec], [True], _gg([gg], [True]), n[0], [n[1]])
    return g_grad, v_grad, None


# ------------------------------------------------------------------ rotate (bilinear)
def _rotate_setup(ctx, inputs, output):
    _common_setup(ctx)
    grad, x, wigner, lmax, index, inverse, need_x, need_wigner = inputs
    ctx.save_for_backward(grad, x, wigner, index)
    ctx.args = (lmax, inverse)
    ctx.computed = (need_x, need_wigner)


def _rotate_bb(ctx, ggx, ggw):
    with use_backend(ctx.backend):
        grad, x, wigner, index = ctx.saved_tensors
        lmax, inverse = ctx.args
        n = ctx.needs_input_grad
        fwd = lambda a, w: _ops.rotate(a, w, lmax, index, inverse)  # noqa: E731
        bwd = lambda g, a, w, needs: _ops.rotate_backward(g, a, w, lmax, index, inverse, *needs)  # noqa: E731
        g_grad, (x_grad, w_grad) = multilinear_double_backward(
            fwd, bwd, grad, [x, wigner], _gg([ggx, ggw], ctx.computed), n[0], [n[1], n[2]])
    return g_grad, x_grad, w_grad, None, None, None, None, None


# ------------------------------------------------------------------ so2_linear (trilinear)
def _so2_linear_setup(ctx, inputs, output):
    _common_setup(ctx)
    grad, x, weight, modulation, lmax, mmax, out_channels, need_x, need_weight, need_mod = inputs
    ctx.save_for_backward(grad, x, weight, modulation)
    ctx.args = (lmax, mmax, out_channels)
    ctx.computed = (need_x, need_weight, need_mod and modulation is not None)


def _so2_linear_bb(ctx, ggx, ggw, ggm):
    with use_backend(ctx.backend):
        grad, x, weight, modulation = ctx.saved_tensors
        args = ctx.args
        n = ctx.needs_input_grad
        fwd = lambda a, w, m: _ops.so2_linear(a, w, m, *args)  # noqa: E731
        bwd = lambda g, a, w, m, needs: _ops.so2_linear_backward(g, a, w, m, *args, *needs)  # noqa: E731
        g_grad, (x_grad, w_grad, m_grad) = multilinear_double_backward(
            fwd, bwd, grad, [x, weight, modulation], _gg([ggx, ggw, ggm], ctx.computed),
            n[0], [n[1], n[2], n[3] and modulation is not None])
    return (g_grad, x_grad, w_grad, m_grad) + (None,) * 6


# ------------------------------------------------------------------ so2_message (quadratic in wigner)
def unfused_message(x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels):
    """``so2_message`` as the composition of the fast custom ops (each with double backward).

    Stores the ``[E, (lmax+1)**2, C]`` intermediates the fused op avoids: used
    only by the double backward.
    """
    local = _ops.rotate(x, wigner, lmax, edge_index[0].contiguous(), False)
    msg = _ops.so2_linear(local, weight, _c(modulation), lmax, mmax, out_channels)
    back = _ops.rotate(msg, wigner, lmax, None, True)
    out = back.new_zeros(x.shape[0], num_coeffs(lmax), out_channels)
    return out.index_add(0, edge_index[1], back)


def _so2_message_setup(ctx, inputs, output):
    _common_setup(ctx)
    (grad, x, wigner, edge_index, weight, modulation, lmax, mmax, out_channels, deterministic,
     need_x, need_wigner, need_weight, need_mod) = inputs
    ctx.save_for_backward(grad, x, wigner, edge_index, weight, modulation)
    ctx.args = (lmax, mmax, out_channels)
    ctx.computed = (need_x, need_wigner, need_weight, need_mod and modulation is not None)


def _so2_message_bb(ctx, ggx, ggwig, ggw, ggm):
    with use_backend(ctx.backend):
        grad, x, wigner, edge_index, weight, modulation = ctx.saved_tensors
        n = ctx.needs_input_grad
        fn = lambda a, d, w, m: unfused_message(a, d, edge_index, w, m, *ctx.args)  # noqa: E731
        g_grad, (x_grad, d_grad, w_grad, m_grad) = vjp_double_backward(
            fn, grad, [x, wigner, weight, modulation], ctx.computed, _gg([ggx, ggwig, ggw, ggm], ctx.computed),
            n[0], [n[1], n[2], n[4], n[5] and modulation is not None])
    return (g_grad, x_grad, d_grad, None, w_grad, m_grad) + (None,) * 8


# ------------------------------------------------------------------ so2_frame_linear (affine: bias, scale)
def _frame_setup(ctx, inputs, output):
    _common_setup(ctx)
    grad, x, wigner, index, weight, modulation, bias, scale = inputs[:8]
    ctx.save_for_backward(grad, x, wigner, index, weight, modulation, bias, scale)
    ctx.args = tuple(inputs[8:13])  # lmax, mmax, out_channels, num_nodes, to_nodes
    need = inputs[14:20]
    ctx.computed = (need[0], need[1], need[2], need[3] and modulation is not None, need[4] and bias is not None,
                    need[5] and scale is not None)


def _frame_bb(ctx, *ggs):
    with use_backend(ctx.backend):
        grad, x, wigner, index, weight, modulation, bias, scale = ctx.saved_tensors
        n = ctx.needs_input_grad
        fn = lambda a, d, w, m, b, s: unfused_frame_linear(a, d, index, w, m, b, s, *ctx.args)  # noqa: E731
        g_grad, (x_grad, d_grad, w_grad, m_grad, b_grad, s_grad) = vjp_double_backward(
            fn, grad, [x, wigner, weight, modulation, bias, scale], ctx.computed, _gg(ggs, ctx.computed), n[0],
            [n[1], n[2], n[4], n[5] and modulation is not None, n[6] and bias is not None, n[7] and scale is not None])
    return (g_grad, x_grad, d_grad, None, w_grad, m_grad, b_grad, s_grad) + (None,) * 12


# ------------------------------------------------------------------ so2_tensor_product (reference grid stage)
def _tp_setup(ctx, inputs, output):
    _common_setup(ctx)
    grad, x, w_in, coeffs, w_out, lmax, mmax, out_channels, grid = inputs[:9]
    ctx.save_for_backward(grad, x, w_in, coeffs, w_out)
    ctx.args = (lmax, mmax, out_channels, grid)
    ctx.computed = tuple(inputs[9:13])


def _tp_bb(ctx, *ggs):
    grad, x, w_in, coeffs, w_out = ctx.saved_tensors
    n = ctx.needs_input_grad
    fn = lambda a, b, c, d: reference.so2_tensor_product(a, b, c, d, *ctx.args)  # noqa: E731
    g_grad, p_grads = vjp_double_backward(fn, grad, [x, w_in, coeffs, w_out], ctx.computed,
                                          _gg(ggs, ctx.computed), n[0], list(n[1:5]))
    return (g_grad, *p_grads) + (None,) * 8


# ------------------------------------------------------------------ assemble_blocks (reference)
def _ab_setup(ctx, inputs, output):
    _common_setup(ctx)
    ctx.save_for_backward(*inputs[:16])  # grad, features, wigner, 13 index / table tensors
    ctx.args = tuple(inputs[16:18])  # lmax_shell, total
    ctx.computed = tuple(inputs[18:20])


def _ab_bb(ctx, ggf, ggw):
    grad, features, wigner, *rest = ctx.saved_tensors
    n = ctx.needs_input_grad
    fn = lambda f, w: reference.assemble_blocks(f, w, *rest, *ctx.args)  # noqa: E731
    g_grad, (f_grad, w_grad) = vjp_double_backward(fn, grad, [features, wigner], ctx.computed,
                                                   _gg([ggf, ggw], ctx.computed), n[0], [n[1], n[2]])
    return (g_grad, f_grad, w_grad) + (None,) * 17


_FORMULAS = {
    "so2ops::edge_wigner_backward": (_edge_wigner_bb, _edge_wigner_setup),
    "so2ops::rotate_backward": (_rotate_bb, _rotate_setup),
    "so2ops::so2_linear_backward": (_so2_linear_bb, _so2_linear_setup),
    "so2ops::so2_message_backward": (_so2_message_bb, _so2_message_setup),
    "so2ops::so2_frame_linear_backward": (_frame_bb, _frame_setup),
    "so2ops::so2_tensor_product_backward": (_tp_bb, _tp_setup),
    "so2ops::assemble_blocks_backward": (_ab_bb, _ab_setup),
}

for _name, (_bw, _setup) in _FORMULAS.items():
    torch.library.register_autograd(_name, _bw, setup_context=_setup)

__all__ = ["multilinear_double_backward", "unfused_message", "vjp_double_backward"]
